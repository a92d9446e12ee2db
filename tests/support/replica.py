"""A gateway replica holding one key, for in-process gateways (unit tests and the benches)."""

from __future__ import annotations

from collections.abc import Sequence

from keyplane.domain import keysecrets
from keyplane.gateway.replica import Change, Replica

#: Every endpoint and every model.
EVERYTHING = ("api-key:endpoint:*", "api-key:model:*")


def one_key_replica(
    secret: str,
    *,
    acls: Sequence[str] = EVERYTHING,
    qps: int | None = None,
    qpm: int | None = None,
    tpm: int | None = None,
) -> Replica:
    """A replica that knows one key, ``k1`` of team ``t1``, whose secret is ``secret``."""
    replica = Replica()
    view = {
        "apiKeyId": "k1",
        "teamId": "t1",
        "redactedApiKey": "xai-...abcd",
        "acls": list(acls),
        "qps": qps,
        "qpm": qpm,
        "tpm": tpm,
        "secrets": [{"digest": keysecrets.digest(secret), "expireTime": None}],
        "revision": 1,
    }
    replica.apply([Change(1, "upsert", view)])
    return replica
