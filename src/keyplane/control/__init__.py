"""The control room: the Management API over HTTP (FastAPI).

Owns the routes (``routes``: one module-level router per family of RPCs), what they share
(``routing``: dependencies on the app's context, the authenticated-first capped body route class,
the principal checks, ``Rpcs``), the access log (``middleware``), the request and response schemas
(``schemas``), rendering domain objects as JSON (``render``), lenient body reading (``lenient``)
and the control plane's one error map (``errors``: domain errors to HTTP status codes and
bodies). Routes parse, call a use case in ``keyplane.services`` and render; no SQL and no rules
here, and no route imports ``keyplane.storage`` (an import contract).

May import: ``keyplane.domain``, ``keyplane.services``, ``keyplane.storage`` (for wiring only),
``keyplane.propagation`` (to mount the feed), ``keyplane.catalog`` and ``keyplane.settings``.

The app factory is ``keyplane.control.app.create_app``; this ``__init__`` imports nothing, so the
rooms that reuse a piece of the control plane (the console's rendering, usage's body reading) do
not load the whole app, nor loop back into themselves through it.
"""

__all__: list[str] = []
