"""The model server's routes, one module per endpoint family: each handler is a function of the
server's state and the request body that returns a ``Reply`` (``keyplane.modelserver.http``).

``chat`` (``/v1/chat/completions``, ``/v1/completions``), ``responses``, ``embeddings``,
``images``, ``tokenize``, ``models`` (``/v1/models``), ``stats`` (``/_stats``).
"""
