"""keyplane's built-in model server: an OpenAI-compatible upstream with deterministic output.

It lets keyplane run with no external model service (the embedded default setup), and gives tests
and benchmarks an upstream whose answers, token counts and speed are known in advance.

- :func:`create_app` builds the ASGI application (:mod:`keyplane.modelserver.app` lists the routes
  and the ``x-keyplane-*`` test headers; each endpoint family is a module of
  :mod:`keyplane.modelserver.routes`);
- :func:`serve` runs it under uvicorn; ``python -m keyplane.modelserver`` is its command line;
- :class:`BackgroundModelServer` runs it on a thread, for in-process tests.

May import: the standard library, msgspec and uvicorn, ``keyplane.httpbounds`` (the request-head
caps every keyplane server shares), ``keyplane.asgi`` (the ASGI types and JSON answers every
keyplane server shares) and ``keyplane.modelserver`` only: it knows nothing of keys, limits or the
control plane.
"""

from keyplane.modelserver.app import ModelServerApp, create_app
from keyplane.modelserver.config import DEFAULT_MODELS, ModelServerConfig
from keyplane.modelserver.server import BackgroundModelServer, serve
from keyplane.modelserver.state import ModelServerStats

__all__ = [
    "DEFAULT_MODELS",
    "BackgroundModelServer",
    "ModelServerApp",
    "ModelServerConfig",
    "ModelServerStats",
    "create_app",
    "serve",
]
