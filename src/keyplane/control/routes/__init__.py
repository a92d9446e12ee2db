"""The Management API's routes, one module per family of RPCs, each a module-level router.

``ROUTERS`` is what ``create_app`` includes, in this order. Their declarations go through
``keyplane.control.routing.Rpcs``. No module here uses ``from __future__ import annotations``:
FastAPI reads the routes' annotations at definition time.
"""

from keyplane.control.routes import api_keys, audit, catalog, management_keys, propagation

ROUTERS = (
    api_keys.rpcs.router,
    catalog.rpcs.router,
    management_keys.rpcs.router,
    audit.rpcs.router,
    propagation.rpcs.router,
)

__all__ = ["ROUTERS"]
