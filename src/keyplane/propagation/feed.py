"""Control-plane side of propagation: snapshots, changes after a revision, acks, and status.

A cluster has received a key's change when every *live* gateway of it (seen within
``ctx.gateway_liveness``, the ``gateway_liveness_seconds`` setting) has acknowledged — by polling
for what comes after — the key's latest revision; a cluster with no live gateway has not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from keyplane.domain import keysecrets
from keyplane.domain.errors import NotFound, PermissionDenied, Unauthenticated
from keyplane.domain.model import row_to_view
from keyplane.propagation import wire
from keyplane.propagation.wire import CREDENTIAL_PREFIX
from keyplane.services.auth import Principal
from keyplane.services.context import Context
from keyplane.services.keys import TOMBSTONE_WINDOW
from keyplane.settings import Settings
from keyplane.storage import api_keys, changelog, snapshot
from keyplane.storage import gateways as gateway_rows

#: The feed's default long-poll wait (gateways pass the ``feed_poll_seconds`` setting).
POLL_WAIT = 5.0
#: How often an ack that only refreshes "last seen" (same revision) is written, at most; never
#: less often than a quarter of the liveness window, so a live gateway never looks silent.
ACK_REFRESH = timedelta(seconds=2)
FORGET_AFTER = timedelta(days=1)


def issue_credential(ctx: Context, *, cluster: str) -> str:
    """A new credential for ``cluster``'s gateways; the secret is returned once."""
    secret = keysecrets.generate_secret(CREDENTIAL_PREFIX)
    with ctx.db.write() as conn:
        gateway_rows.insert_cluster_credential(
            conn, digest=keysecrets.digest(secret), cluster=cluster, now=ctx.clock.now()
        )
    return secret


def credential_is_valid(ctx: Context, secret: str) -> bool:
    with ctx.db.read() as conn:
        return gateway_rows.cluster_of_credential(conn, keysecrets.digest(secret)) is not None


def _credential_digest(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated.no_credentials()
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not keysecrets.looks_like(token, CREDENTIAL_PREFIX):
        raise Unauthenticated.bad_credentials()
    return keysecrets.digest(token)


def authenticate_gateway(ctx: Context, authorization: str | None) -> str:
    """The cluster a gateway's credential belongs to."""
    digest = _credential_digest(authorization)
    with ctx.db.read() as conn:
        cluster = gateway_rows.cluster_of_credential(conn, digest)
    if cluster is None:
        raise Unauthenticated.bad_credentials()
    return cluster


def authenticate_gateway_as(ctx: Context, authorization: str | None, gateway_id: str) -> str:
    """The cluster of a gateway's credential, once the credential is bound to ``gateway_id``: on
    first use it registers that gateway; another id is refused while the bound one is live. The
    gateway's worker processes (``wire.worker_id``) speak under its binding."""
    digest = _credential_digest(authorization)
    with ctx.db.read() as conn:
        found = gateway_rows.credential_binding(conn, digest)
    if found is None:
        raise Unauthenticated.bad_credentials()
    cluster, bound_to = found
    owner = wire.bound_identity(gateway_id)
    if bound_to == owner:
        return cluster
    with ctx.db.write() as conn:
        bound = gateway_rows.bind_credential(
            conn,
            digest=digest,
            gateway_id=owner,
            silent_before=ctx.clock.now() - ctx.gateway_liveness,
        )
    if not bound:
        raise PermissionDenied(
            "This feed credential belongs to another gateway; issue one per gateway."
        )
    return cluster


def current_revision(ctx: Context) -> int:
    with ctx.db.read() as conn:
        return changelog.current_revision(conn)


def snapshot_rows(ctx: Context, *, after: str | None = None) -> Iterator[int | list[Any]]:
    """A consistent snapshot from one read transaction: the revision, then each key (with an id
    greater than ``after``, if given) as a row of its view (``keyplane.domain.model.ROW_FIELDS``
    order), its ``acls`` still the stored JSON text. Streams: memory does not grow with keys."""
    with ctx.db.read() as conn:
        yield changelog.current_revision(conn)
        yield from snapshot.key_rows(conn, after=after)


def snapshot_json(ctx: Context, *, after: str | None = None) -> Iterator[int | list[str]]:
    """``snapshot_rows``, each row already JSON text (``format=rows`` as sent), in batches."""
    with ctx.db.read() as conn:
        yield changelog.current_revision(conn)
        yield from snapshot.json_rows(conn, after=after)


def snapshot_lines(ctx: Context) -> Iterator[dict[str, object]]:
    """The snapshot as views: ``{"revision": N}``, then every key's enforcement view."""
    for item in snapshot_rows(ctx):
        if isinstance(item, int):
            yield {"revision": item}
        else:
            item[14] = json.loads(item[14])
            yield row_to_view(item)


@dataclass(frozen=True, slots=True)
class ChangesAnswer:
    revision: int
    changes: list[changelog.Change]
    snapshot_required: bool


def read_changes(ctx: Context, *, after: int, limit: int) -> ChangesAnswer:
    with ctx.db.read() as conn:
        current = changelog.current_revision(conn)
        if after > current:
            # The gateway knows revisions this store never made (a restored backup): start over.
            return ChangesAnswer(current, [], True)
        if after == current:
            return ChangesAnswer(current, [], False)
        if not _log_reaches(conn, after):
            return ChangesAnswer(current, [], True)
        changes = changelog.changes_after(conn, after, limit)
    return ChangesAnswer(changes[-1].revision if changes else after, changes, False)


def _log_reaches(conn: Any, after: int) -> bool:
    """The change log still holds every change after ``after`` (below the head)."""
    oldest = changelog.oldest_retained_revision(conn)
    return oldest is not None and after >= oldest - 1


def key_count(ctx: Context) -> int:
    """How many keys a snapshot (or a seed) would hold now."""
    with ctx.db.read() as conn:
        return snapshot.key_count(conn)


def catch_up_from(ctx: Context, revision: int) -> tuple[int, bool]:
    """The head, and whether a gateway at ``revision`` can reach it through the change feed (it
    is there already, or the log still holds every change since): else it needs a snapshot."""
    with ctx.db.read() as conn:
        current = changelog.current_revision(conn)
        return current, revision == current or (revision < current and _log_reaches(conn, revision))


class AckBook:
    """Writes acks to the store, skipping writes that would change nothing but "last seen".

    An ack is believed only up to the newest revision the gateway has been served (``served``)
    and the head: an invented ``after=`` applies nothing."""

    def __init__(self) -> None:
        self._written: dict[str, tuple[int, datetime]] = {}
        self._served: dict[str, int] = {}

    def ack(self, ctx: Context, *, gateway_id: str, cluster: str, revision: int) -> None:
        now = ctx.clock.now()
        last = self._written.get(gateway_id)
        refresh = min(ACK_REFRESH, ctx.gateway_liveness / 4)
        if last is not None and last[0] == revision and now - last[1] < refresh:
            return
        with ctx.db.write() as conn:
            applied = gateway_rows.record_ack(
                conn, gateway_id=gateway_id, cluster=cluster, revision=revision, now=now
            )
        if applied == revision:
            self._written[gateway_id] = (revision, now)
        else:
            self._written.pop(gateway_id, None)  # not believed yet: ask the store next time

    def served(self, ctx: Context, *, gateway_id: str, cluster: str, revision: int) -> None:
        """``gateway_id`` was sent everything up to ``revision``."""
        if self._served.get(gateway_id) == revision:
            return
        with ctx.db.write() as conn:
            gateway_rows.record_served(
                conn, gateway_id=gateway_id, cluster=cluster, revision=revision, now=ctx.clock.now()
            )
        self._served[gateway_id] = revision


def propagation_status(
    ctx: Context, settings: Settings, *, principal: Principal, api_key_id: str
) -> dict[str, bool]:
    status = propagation_statuses(ctx, settings, principal=principal, api_key_ids=[api_key_id])
    found = status[api_key_id]
    if found is None:
        raise NotFound("Cannot find API key")
    return found


def propagation_statuses(
    ctx: Context, settings: Settings, *, principal: Principal, api_key_ids: Sequence[str]
) -> dict[str, dict[str, bool] | None]:
    """``propagation_status`` of several keys from one read (the console's table polls a page of
    them); None for a key the team does not have."""
    now = ctx.clock.now()
    with ctx.db.read() as conn:
        revisions = {
            key_id: api_keys.key_revision(
                conn, key_id, team_id=principal.team_id, since=now - TOMBSTONE_WINDOW
            )
            for key_id in api_key_ids
        }
        gateways = gateway_rows.list_gateways(conn)
    live = {
        cluster.host: [
            g.applied_revision
            for g in gateways
            if g.cluster == cluster.name and now - g.last_seen < ctx.gateway_liveness
        ]
        for cluster in settings.clusters
    }
    return {
        key_id: None
        if revision is None
        else {host: bool(applied) and min(applied) >= revision for host, applied in live.items()}
        for key_id, revision in revisions.items()
    }


@dataclass(frozen=True, slots=True)
class GatewayRow:
    cluster: str
    gateway_id: str
    applied_revision: int
    lag: int
    last_seen: datetime
    live: bool


def cluster_view(ctx: Context) -> tuple[int, list[GatewayRow]]:
    now = ctx.clock.now()
    with ctx.db.read() as conn:
        current = changelog.current_revision(conn)
        gateways = gateway_rows.list_gateways(conn)
    return current, [
        GatewayRow(
            cluster=g.cluster,
            gateway_id=g.gateway_id,
            applied_revision=g.applied_revision,
            lag=current - g.applied_revision,
            last_seen=g.last_seen,
            live=now - g.last_seen < ctx.gateway_liveness,
        )
        for g in gateways
    ]


def compact(ctx: Context, *, keep: int) -> int:
    """Drop all but the newest ``keep`` changes; followers further behind get a snapshot."""
    with ctx.db.write() as conn:
        current = changelog.current_revision(conn)
        removed = changelog.compact_change_log(conn, through_revision=current - keep)
        gateway_rows.forget_gateways(conn, last_seen_before=ctx.clock.now() - FORGET_AFTER)
    return removed
