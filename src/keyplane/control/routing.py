"""What every Management API route shares: where the app's context comes from, who is calling,
how a body is read, and how a route is declared.

The routers in ``keyplane.control.routes`` are module-level: what they need at request time (the
``Context``, the ``Settings``, the ``Catalog``) is in ``app.state``, put there by ``create_app``,
and reaches a route as a dependency. ``Rpcs`` declares a family's routes once: the family's tag
on its router, each route's summary (the RPC's name) and response model, and ``exclude_none`` on
by default.

No ``from __future__ import annotations``: FastAPI reads the annotations at definition time.
"""

import asyncio
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Path, Request

from keyplane.catalog import Catalog
from keyplane.control import errors
from keyplane.control.lenient import FAST_PATH, FastPath, FastPaths, make_route_class
from keyplane.services.auth import Principal, authenticate
from keyplane.services.context import Context
from keyplane.settings import Settings


# The dependencies do no I/O, or hop into a thread for it themselves: async, so FastAPI runs them
# on the event loop instead of sending each to a worker thread and back.
async def _context(request: Request) -> Context:
    return context_of(request)


def context_of(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


async def _settings(request: Request) -> Settings:
    return _the_settings(request)


def _the_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _catalog(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.catalog
    return catalog


AppContext = Annotated[Context, Depends(_context)]
AppSettings = Annotated[Settings, Depends(_settings)]
AppCatalog = Annotated[Catalog, Depends(_catalog)]

#: Path parameters: snake_case in Python, the contract's camelCase on the wire.
TeamId = Annotated[str, Path(alias="teamId")]
ApiKeyId = Annotated[str, Path(alias="apiKeyId")]


async def authenticated(ctx: Context, authorization: str | None) -> Principal:
    """The calling management key. On SQLite its one-row read runs on the event loop itself, on
    the loop's own WAL reader connection (a few µs; the hop into a thread cost ~80-95 µs of CPU
    and a thread wake-up); elsewhere (PostgreSQL: a read waits on the server) in a thread."""
    if ctx.reads_here:
        return authenticate(ctx, authorization, here=True)
    return await asyncio.to_thread(authenticate, ctx, authorization)


async def _authenticate_first(request: Request) -> None:
    # Before the body is read: an unauthenticated caller costs no parsing work.
    request.state.principal = await authenticated(
        context_of(request), request.headers.get("authorization")
    )


def _body_limit(request: Request) -> int:
    return _the_settings(request).max_body_bytes


#: The Management API's route class: the caller authenticated before a body is read, the body
#: capped at ``max_body_bytes`` and read leniently (``keyplane.control.lenient``).
ManagementRoute = make_route_class(_body_limit, _authenticate_first)


def fast_paths(app: Any, routes: Sequence[Any]) -> FastPaths:
    """The fast paths of ``routes`` (``fast_path``) in front of ``app``, prepared as
    ``ManagementRoute`` prepares a request, failing through the error map."""
    return FastPaths(
        app,
        routes=routes,
        limit=_body_limit,
        authenticate=_authenticate_first,
        failed=errors.keyplane_error,
    )


async def current_principal(
    request: Request,
    ctx: AppContext,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    """The calling management key (already authenticated by the route class, on a body route)."""
    known: Principal | None = getattr(request.state, "principal", None)
    if known is not None:
        return known
    return await authenticated(ctx, authorization)


# The checks do no I/O: async, so they cost no thread-pool hop.
def rpc(name: str) -> Any:
    """A dependency: the caller, holding the ACL of RPC ``name``."""

    async def check(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        principal.require(name)
        return principal

    return Depends(check)


def team_rpc(name: str) -> Any:
    """``rpc(name)``, and the team in the path must be the key's own."""

    async def check(
        team_id: TeamId, principal: Annotated[Principal, Depends(current_principal)]
    ) -> Principal:
        principal.require(name)
        principal.require_team(team_id)
        return principal

    return Depends(check)


Route = TypeVar("Route", bound=Callable[..., Any])


def fast_path(fast: FastPath) -> Callable[[Route], Route]:
    """Give a route (declared below this decorator) a fast path: ``fast(request)`` runs once the
    caller is authenticated and the body read (``fast_paths``, in front of the app), skipping
    Starlette's router and FastAPI's dependency solver; it must answer byte for byte as the
    endpoint would, and return None for anything it does not handle (the route then answers)."""

    def mark(endpoint: Route) -> Route:
        setattr(endpoint, FAST_PATH, fast)
        return endpoint

    return mark


def principal_of(request: Request) -> Principal:
    """The caller the route class authenticated before reading the body (body routes only)."""
    principal: Principal = request.state.principal
    return principal


class Rpcs:
    """A family of Management API routes: ``router`` (tagged ``tag``) and a declaration per RPC."""

    def __init__(self, tag: str) -> None:
        self.router = APIRouter(route_class=ManagementRoute, tags=[tag])

    def route(
        self,
        method: str,
        path: str,
        summary: str,
        model: type[Any],
        *,
        exclude_none: bool = True,
        **extra: Any,
    ) -> Callable[[Route], Route]:
        """Declare the route answering ``method path``: the RPC ``summary``, answering ``model``
        (``None`` fields left out unless ``exclude_none`` is False); ``extra`` as FastAPI takes."""
        return self.router.api_route(
            path,
            methods=[method],
            response_model=model,
            response_model_exclude_none=exclude_none,
            summary=summary,
            **extra,
        )
