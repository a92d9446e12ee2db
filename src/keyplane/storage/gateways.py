"""Gateways and their cluster credentials: which cluster a feed credential speaks for, which
gateway it is bound to, and what each gateway was served and has acknowledged (the ground of
propagation status)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from keyplane.domain.timefmt import from_micros, to_micros
from keyplane.storage import driver
from keyplane.storage import tables as t
from keyplane.storage.changelog import current_revision


def insert_cluster_credential(
    conn: Connection, *, digest: str, cluster: str, now: datetime
) -> None:
    conn.execute(
        insert(t.cluster_credentials).values(
            digest=digest, cluster=cluster, create_time=to_micros(now), revoke_time=None
        )
    )


def cluster_of_credential(conn: Connection, digest: str) -> str | None:
    row = conn.execute(
        select(t.cluster_credentials.c.cluster).where(
            t.cluster_credentials.c.digest == digest,
            t.cluster_credentials.c.revoke_time.is_(None),
        )
    ).first()
    return None if row is None else str(row.cluster)


def credential_binding(conn: Connection, digest: str) -> tuple[str, str | None] | None:
    """``(cluster, bound gateway id)`` of a live credential."""
    row = driver.first(conn, _BINDING, {"digest": digest})
    return None if row is None else (str(row.cluster), row.gateway_id)


# Built once, read by the driver on SQLite: every usage post checks its credential, and building
# and executing the select through SQLAlchemy cost ~170 µs of the ~200 (the read itself ~20).
_BINDING = select(t.cluster_credentials.c.cluster, t.cluster_credentials.c.gateway_id).where(
    t.cluster_credentials.c.digest == bindparam("digest"),
    t.cluster_credentials.c.revoke_time.is_(None),
)


def bind_credential(
    conn: Connection, *, digest: str, gateway_id: str, silent_before: datetime
) -> bool:
    """Bind the credential to ``gateway_id`` unless it speaks for another gateway seen since
    ``silent_before``; a gateway silent longer is replaced (and forgotten). False: refused."""
    c = t.cluster_credentials.c
    bound = conn.execute(select(c.gateway_id).where(c.digest == digest)).scalar_one_or_none()
    if bound == gateway_id:
        return True
    if bound is not None:
        seen = conn.execute(
            select(t.gateways.c.last_seen).where(t.gateways.c.gateway_id == bound)
        ).scalar_one_or_none()
        if seen is not None and seen >= to_micros(silent_before):
            return False
        conn.execute(delete(t.gateways).where(t.gateways.c.gateway_id == bound))
    taken = conn.execute(
        select(c.digest).where(c.gateway_id == gateway_id, c.digest != digest)
    ).first()
    if taken is not None:
        return False  # another credential's gateway: one id, one credential
    conn.execute(
        update(t.cluster_credentials).where(c.digest == digest).values(gateway_id=gateway_id)
    )
    return True


@dataclass(frozen=True, slots=True)
class GatewayState:
    gateway_id: str
    cluster: str
    applied_revision: int
    first_seen: datetime
    last_seen: datetime


def record_ack(
    conn: Connection, *, gateway_id: str, cluster: str, revision: int, now: datetime
) -> int:
    """The gateway says it has applied ``revision``: believed up to what it was served and the
    head. Returns the applied revision recorded."""
    now_us = to_micros(now)
    g = t.gateways.c
    row = conn.execute(
        select(g.applied_revision, g.served_revision).where(g.gateway_id == gateway_id)
    ).first()
    served = 0 if row is None else int(row.served_revision)
    believed = revision <= min(served, current_revision(conn))
    applied = revision if believed else (0 if row is None else int(row.applied_revision))
    if row is None:
        conn.execute(
            insert(t.gateways).values(
                gateway_id=gateway_id,
                cluster=cluster,
                applied_revision=applied,
                first_seen=now_us,
                last_seen=now_us,
                served_revision=0,
            )
        )
    else:
        conn.execute(
            update(t.gateways)
            .where(g.gateway_id == gateway_id)
            .values(cluster=cluster, applied_revision=applied, last_seen=now_us)
        )
    return applied


def record_served(
    conn: Connection, *, gateway_id: str, cluster: str, revision: int, now: datetime
) -> None:
    """The control plane sent ``gateway_id`` everything up to ``revision`` (a snapshot or a batch
    of changes); a gateway's first snapshot registers it."""
    updated = conn.execute(
        update(t.gateways)
        .where(t.gateways.c.gateway_id == gateway_id)
        .values(served_revision=revision)
    )
    if updated.rowcount == 0:
        now_us = to_micros(now)
        conn.execute(
            insert(t.gateways).values(
                gateway_id=gateway_id,
                cluster=cluster,
                applied_revision=0,
                first_seen=now_us,
                last_seen=now_us,
                served_revision=revision,
            )
        )


def list_gateways(conn: Connection) -> list[GatewayState]:
    rows = conn.execute(select(t.gateways).order_by(t.gateways.c.cluster, t.gateways.c.gateway_id))
    return [
        GatewayState(
            gateway_id=r.gateway_id,
            cluster=r.cluster,
            applied_revision=int(r.applied_revision),
            first_seen=from_micros(r.first_seen),
            last_seen=from_micros(r.last_seen),
        )
        for r in rows
    ]


def forget_gateways(conn: Connection, *, last_seen_before: datetime) -> None:
    conn.execute(delete(t.gateways).where(t.gateways.c.last_seen < to_micros(last_seen_before)))
