"""The feed's snapshot rows (one streamed join, ``keyplane.storage.snapshot``) say exactly what
``enforcement_view`` says of each key, on every store: rotated keys with two secrets, expiries,
disabled keys, and keys without limits; and a snapshot resumed ``after`` an id holds the rest."""

from __future__ import annotations

import json

from keyplane.domain.model import enforcement_view, row_to_view
from keyplane.propagation import feed
from keyplane.services import keys
from keyplane.services.context import Context
from tests.contract.test_storage import create, principal_of


def test_snapshot_rows_are_the_enforcement_views(ctx: Context) -> None:
    p = principal_of(ctx)
    made = [
        create(ctx, p, name="plain"),
        create(ctx, p, name="limits", qps=3, qpm=40, tpm=5000, acls=["api-key:model:*"]),
        create(ctx, p, name="expiring", expireTime="2099-01-02T03:04:05.678901Z"),
        create(ctx, p, name="rotated", acls=["api-key:endpoint:chat", "api-key:model:grok-4"]),
    ]
    rotated = made[3].key.api_key_id
    keys.rotate_key(ctx, principal=p, api_key_id=rotated, body={})  # the old one dies later
    keys.update_key(
        ctx,
        principal=p,
        api_key_id=made[0].key.api_key_id,
        patch={"disabled": True},
        field_mask="disabled",
    )
    expected = {
        m.key.api_key_id: enforcement_view(
            keys.get_key(ctx, principal=p, api_key_id=m.key.api_key_id)
        )
        for m in made
    }
    assert len(expected[rotated]["secrets"]) == 2

    lines = list(feed.snapshot_lines(ctx))
    assert lines[0] == {"revision": 6}
    assert {str(v["apiKeyId"]): v for v in lines[1:]} == expected

    ids = sorted(expected)
    rest = list(feed.snapshot_rows(ctx, after=ids[1]))
    assert rest[0] == 6
    got = {}
    for row in rest[1:]:
        assert isinstance(row, list)
        row[14] = json.loads(row[14])
        got[row[0]] = row_to_view(row)
    assert got == {i: expected[i] for i in ids[2:]}
