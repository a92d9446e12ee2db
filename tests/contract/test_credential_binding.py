"""The feed credential's lookup on every usage post and feed poll (``gateways.credential_binding``,
a prebuilt statement the driver reads on SQLite): a live credential names its cluster and bound
gateway; an unknown or revoked one is refused at once, on both engines."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import update

from keyplane.services.context import Context
from keyplane.storage import gateways
from keyplane.storage import tables as t


def test_a_live_credential_is_found_and_a_revoked_one_at_once_no_longer(ctx: Context) -> None:
    now = datetime(2026, 12, 8, tzinfo=UTC)
    with ctx.db.write() as conn:
        gateways.insert_cluster_credential(conn, digest="d1", cluster="eu-west-1", now=now)
        gateways.insert_cluster_credential(conn, digest="d2", cluster="us-east-1", now=now)
    with ctx.db.read() as conn:
        assert gateways.credential_binding(conn, "d1") == ("eu-west-1", None)
        assert gateways.credential_binding(conn, "d2") == ("us-east-1", None)
        assert gateways.credential_binding(conn, "d3") is None
    with ctx.db.write() as conn:
        conn.execute(
            update(t.cluster_credentials)
            .where(t.cluster_credentials.c.digest == "d1")
            .values(revoke_time=1)
        )
    with ctx.db.read() as conn:
        assert gateways.credential_binding(conn, "d1") is None
        assert gateways.credential_binding(conn, "d2") == ("us-east-1", None)
