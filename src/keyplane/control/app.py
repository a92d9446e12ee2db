"""The Management API: the FastAPI app factory.

``create_app`` puts the context, the settings and the catalog in ``app.state`` (where the routes'
dependencies find them), includes the routers of ``keyplane.control.routes`` (one module per
family of RPCs), the feed's, usage's and the console's, installs the error map
(``keyplane.control.errors``) and the access log (``keyplane.control.middleware``), and runs the
housekeeping tasks for the app's lifetime.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import structlog
from fastapi import FastAPI

from keyplane import __version__, console
from keyplane.catalog import Catalog
from keyplane.control import errors
from keyplane.control.middleware import AccessLog
from keyplane.control.routes import ROUTERS
from keyplane.control.routing import ManagementRoute, current_principal, fast_paths
from keyplane.propagation import feed
from keyplane.propagation.notifier import ChangeNotifier
from keyplane.propagation.routes import feed_router
from keyplane.propagation.seed import SeedKeeper
from keyplane.services import idempotency
from keyplane.services.context import Context
from keyplane.settings import Settings
from keyplane.usage import housekeeping as usage_housekeeping
from keyplane.usage.routes import billing_router, ingest_router

log = structlog.get_logger("keyplane.control")


def create_app(settings: Settings, ctx: Context, notifier: ChangeNotifier | None = None) -> FastAPI:
    """The Management API plus the internal feed. ``ctx.on_commit`` should feed ``notifier``."""
    catalog = Catalog(settings)
    notifier = notifier or ChangeNotifier()
    seeds = (
        SeedKeeper(
            ctx,
            settings.seed_dir or settings.data_dir / "seed",
            rebuild_changes=settings.seed_rebuild_changes,
            min_keys=settings.seed_min_keys,
        )
        if settings.seed_enabled
        else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        notifier.bind(asyncio.get_running_loop(), await _current_revision())
        tasks = [
            asyncio.create_task(_housekeeping()),
            asyncio.create_task(usage_housekeeping.run(ctx, settings.usage)),
        ]
        if seeds is not None:
            tasks.append(asyncio.create_task(seeds.keep()))
        if not ctx.db.is_sqlite:
            from keyplane.storage.listen import listen_for_revisions

            tasks.append(asyncio.create_task(listen_for_revisions(ctx.db.url, notifier.notify)))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if seeds is not None:
            seeds.close()

    async def _current_revision() -> int:
        return await asyncio.to_thread(feed.current_revision, ctx)

    async def _housekeeping() -> None:
        # Commits from other processes (a second replica, the admin CLI) wake followers within
        # a second; the log is compacted now and then.
        ticks = 0
        while True:
            await asyncio.sleep(1.0)
            ticks += 1
            try:
                notifier.notify(await _current_revision())
                if ticks % 600 == 0:
                    await asyncio.to_thread(feed.compact, ctx, keep=settings.change_log_retention)
                if ticks % 60 == 0:
                    await asyncio.to_thread(idempotency.purge_expired, ctx)
            except Exception as error:  # keep the loop alive through a transient store error
                log.warning("housekeeping_failed", error=type(error).__name__)

    app = FastAPI(
        lifespan=lifespan,
        title="keyplane Management API",
        version=__version__,
        description="Create, list, update, rotate and delete inference API keys; "
        "see their propagation to every cluster.",
        responses=errors.RESPONSES,
        # /docs comes from the console, with its assets packaged here instead of a CDN's.
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.settings = settings
    app.state.catalog = catalog
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(feed_router(ctx, notifier, seeds))
    app.include_router(ingest_router(ctx, settings))
    app.include_router(
        billing_router(
            ctx, settings, catalog, route_class=ManagementRoute, principal=current_principal
        )
    )
    console.install(app)

    # Inside the access log: the routes' fast paths, past the router (``keyplane.control.lenient``).
    app.add_middleware(fast_paths, routes=[r for router in ROUTERS for r in router.routes])
    app.add_middleware(AccessLog)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, less the 422 it lists everywhere: this API answers 400 for bad input."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema
