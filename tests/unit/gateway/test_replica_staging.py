"""A snapshot's rows are staged by SQLite itself (``json_each``): whatever text a key's fields
hold (quotes, backslashes, control characters, any Unicode), the replica gives back the views it
was sent, and finds each key by each of its digests."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.gateway.replica import ReplicaStore
from keyplane.propagation.wire import row_to_view

texts = st.text(max_size=40)


def _view(i: int, name: str, team: str, acl: str, digests: list[str]) -> dict[str, Any]:
    row: list[Any] = [
        f"key-{i:04d}",
        [[d, None if n == 0 else "2099-01-02T03:04:05.000001Z"] for n, d in enumerate(digests)],
        team,
        "user",
        name,
        "xai-...abcd",
        "2026-12-07T00:00:00.000000Z",
        "2026-12-07T00:00:00.000001Z",
        "user",
        i % 2 == 0,
        None,
        i,
        None,
        10**12,
        [acl],
        i + 1,
        None,
        None,
    ]
    return row_to_view(row)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(texts, texts, texts, st.integers(1, 3)), min_size=1, max_size=12))
def test_staged_rows_come_back_as_sent(keys: list[tuple[str, str, str, int]]) -> None:
    views = [
        _view(i, name, team, acl, [f"{i:04d}-{n}" for n in range(secrets)])
        for i, (name, team, acl, secrets) in enumerate(keys)
    ]
    store = ReplicaStore(None)
    try:
        store.save_snapshot(7, views)
        assert store.revision == 7
        assert store.views() == {v["apiKeyId"]: v for v in views}
        for view in views:
            for secret in view["secrets"]:
                found = store.find(secret["digest"])
                assert found is not None
                assert json.loads(found)[0] == view["apiKeyId"]
        assert store.find("no such digest") is None
    finally:
        store.close()
