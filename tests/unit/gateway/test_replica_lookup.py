"""Replica.lookup over its bounded cache of hot keys: a secret's own death time, eviction;
Replica.cached, the same among the hot keys only."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from keyplane.gateway.replica import Change, Replica


def _raw(name: str) -> bytes:
    """The digest (raw bytes, as the gateway looks it up) of a secret named ``name``."""
    return hashlib.sha256(name.encode()).digest()


def _view(kid: str, revision: int, secrets: list[tuple[str, str | None]]) -> dict[str, Any]:
    return {
        "apiKeyId": kid,
        "teamId": "t1",
        "secrets": [{"digest": _raw(d).hex(), "expireTime": e} for d, e in secrets],
        "revision": revision,
    }


DIES = "2030-01-01T00:00:00Z"
DIES_AT = 1893456000.0  # DIES in epoch seconds


def test_each_secret_of_a_key_lives_until_its_own_expiry_cached_or_not() -> None:
    replica = Replica()
    replica.apply([Change(1, "upsert", _view("k1", 1, [("old", DIES), ("new", None)]))])
    for _ in range(2):  # the first lookup loads the key, the second hits the cache
        before, after = (
            replica.lookup(_raw("old"), DIES_AT - 1),
            replica.lookup(_raw("old"), DIES_AT),
        )
        assert before is not None
        assert before.api_key_id == "k1"
        assert after is None
        assert replica.lookup(_raw("new"), DIES_AT + 10**6) is before
        assert replica.lookup(_raw("other"), 0.0) is None


def test_an_evicted_key_is_found_again_and_a_changed_one_is_reloaded() -> None:
    replica = Replica(cache_keys=1)
    replica.apply(
        [
            Change(1, "upsert", _view("k1", 1, [("a", None)])),
            Change(2, "upsert", _view("k2", 2, [("b", DIES)])),
        ]
    )
    a = replica.lookup(_raw("a"), 0.0)
    b = replica.lookup(_raw("b"), 0.0)  # evicts k1
    assert a is not None
    assert a.api_key_id == "k1"
    assert b is not None
    assert b.api_key_id == "k2"
    assert replica.lookup(_raw("a"), 0.0) == a  # loaded again, evicting k2
    assert replica.lookup(_raw("b"), DIES_AT) is None
    replica.apply([Change(3, "upsert", _view("k1", 3, [("a", DIES)]))])
    assert replica.lookup(_raw("a"), DIES_AT) is None
    renewed = replica.lookup(_raw("a"), 0.0)
    assert renewed is not None
    assert renewed.revision == 3


def test_a_cached_key_s_new_revision_replaces_every_secret_it_had() -> None:
    replica = Replica()
    replica.apply([Change(1, "upsert", _view("k1", 1, [("a", None), ("b", None)]))])
    assert replica.lookup(_raw("a"), 0.0) is not None  # k1 cached under both secrets
    replica.apply([Change(2, "upsert", _view("k1", 2, [("b", DIES), ("c", None)]))])
    assert replica.lookup(_raw("a"), 0.0) is None  # rotated away
    assert replica.lookup(_raw("b"), DIES_AT) is None  # now mortal
    renewed = replica.lookup(_raw("c"), 0.0)
    assert renewed is not None
    assert renewed.revision == 2


def test_cached_answers_from_the_hot_keys_only_as_lookup_would() -> None:
    replica = Replica()
    replica.apply([Change(1, "upsert", _view("k1", 1, [("old", DIES), ("new", None)]))])
    assert replica.cached(_raw("new"), _clock(0.0)) is None  # in the store, not loaded: no read
    loaded = replica.lookup(_raw("new"), 0.0)
    assert loaded is not None
    for name, now in (("new", DIES_AT + 1), ("old", DIES_AT - 1), ("old", DIES_AT)):
        assert replica.cached(_raw(name), _clock(now)) is replica.lookup(_raw(name), now)
    assert replica.cached(_raw("old"), _clock(DIES_AT - 1)) is loaded
    assert replica.cached(_raw("old"), _clock(DIES_AT)) is None
    assert replica.cached(_raw("other"), _clock(0.0)) is None


def test_cached_reads_the_clock_only_for_a_secret_that_can_die() -> None:
    replica = Replica()
    replica.apply([Change(1, "upsert", _view("k1", 1, [("old", DIES), ("new", None)]))])
    assert replica.lookup(_raw("new"), 0.0) is not None
    reads: list[float] = []

    def clock() -> float:
        reads.append(DIES_AT)
        return DIES_AT

    assert replica.cached(_raw("new"), clock) is not None
    assert reads == []
    assert replica.cached(_raw("old"), clock) is None
    assert reads == [DIES_AT]


def _clock(now: float) -> Callable[[], float]:
    return lambda: now
