"""The usage room's HTTP surface on the control plane.

``ingest_router``: ``POST /internal/v1/usage`` for gateways (their feed credential; kept out of
/openapi.json). ``billing_router``: the hosted billing RPCs (usage analytics, spending limits).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from starlette.concurrency import run_in_threadpool

from keyplane.control.lenient import read_capped
from keyplane.domain.errors import InvalidArgument
from keyplane.propagation import feed
from keyplane.propagation.wire import GATEWAY_HEADER
from keyplane.services.context import Context
from keyplane.settings import Settings
from keyplane.usage import ingest
from keyplane.usage.wire import INGEST_PATH, MAX_BATCH_BYTES

_INT63 = 2**63 - 1


def ingest_router(ctx: Context, settings: Settings) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    hard = settings.usage.hard_spending_limit_cents or None

    @router.post(INGEST_PATH)
    async def ingest_usage(
        request: Request,
        segment: Annotated[int, Query(ge=0, le=_INT63)],
        start: Annotated[int, Query(ge=0, le=_INT63)],
        end: Annotated[int, Query(ge=0, le=_INT63)],
        authorization: Annotated[str | None, Header()] = None,
        gateway: Annotated[str | None, Header(alias=GATEWAY_HEADER)] = None,
    ) -> dict[str, Any]:
        cluster = await run_in_threadpool(feed.authenticate_gateway, ctx, authorization)
        if not gateway or len(gateway) > 128 or not gateway.isprintable():
            raise InvalidArgument(
                "a gateway id of 1-128 characters is required", field=GATEWAY_HEADER
            )
        data = await read_capped(request, MAX_BATCH_BYTES)
        result = await run_in_threadpool(
            ingest.ingest,
            ctx,
            gateway_id=gateway,
            cluster=cluster,
            segment=segment,
            start=start,
            end=end,
            data=data,
            hard_limit_cents=hard,
        )
        return {"accepted": result.accepted, "duplicates": result.duplicates}

    return router
