"""Putting usage into the control plane's store and reading what it has counted, straight from
the store (test-side only)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from tests.support.procs import Deployment, admin_context, wait_for

if TYPE_CHECKING:
    from keyplane.services.context import Context
    from keyplane.usage.record import UsageRecord


def ingest_batch(ctx: Context, records: Sequence[UsageRecord], *, cluster: str) -> None:
    """Count ``records`` as the first batch of a gateway of their own in ``cluster``."""
    from keyplane.usage import ingest
    from keyplane.usage.record import frame

    data = b"".join(frame(r) for r in records)
    ingest.ingest(
        ctx,
        gateway_id=f"{cluster}/{uuid.uuid4()}",
        cluster=cluster,
        segment=1,
        start=0,
        end=len(data),
        data=data,
    )


@dataclass(frozen=True)
class Totals:
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: int


def counted(dep: Deployment, team_id: str, *, status: int | None = None) -> Totals:
    """The sums of a team's per-minute rollups (``team_id`` "" holds unauthenticated requests)."""
    from keyplane.usage.schema import ALL_KEYS
    from keyplane.usage.schema import usage_minutes as m

    query = select(
        func.coalesce(func.sum(m.c.requests), 0),
        func.coalesce(func.sum(m.c.prompt_tokens), 0),
        func.coalesce(func.sum(m.c.completion_tokens), 0),
        func.coalesce(func.sum(m.c.cost), 0),
    ).where(m.c.team_id == team_id, m.c.api_key_id != ALL_KEYS)
    if status is not None:
        query = query.where(m.c.status == status)
    with admin_context(dep) as ctx, ctx.db.read() as conn:
        row = conn.execute(query).one()
    return Totals(*(int(v) for v in row))


def wait_counted(
    dep: Deployment,
    team_id: str,
    requests: int,
    timeout: float = 20.0,
    *,
    status: int | None = None,
) -> Totals:
    """Wait until ``requests`` of the team's requests (of ``status``) are counted; fail if more
    ever are."""

    def done() -> Totals | None:
        totals = counted(dep, team_id, status=status)
        assert totals.requests <= requests, f"counted {totals.requests} > {requests}"
        return totals if totals.requests == requests else None

    totals: Totals = wait_for(done, timeout=timeout, what=f"{requests} requests counted")
    return totals
