"""The feed's snapshot rows (one streamed join, ``keyplane.storage.snapshot``) say exactly what
``enforcement_view`` says of each key, on every store: rotated keys with two secrets, expiries,
disabled keys, and keys without limits; and a snapshot resumed ``after`` an id holds the rest."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import text

from keyplane.domain.model import enforcement_view, row_to_view
from keyplane.domain.timefmt import format_micros
from keyplane.propagation import feed
from keyplane.services import keys
from keyplane.services.context import Context
from keyplane.storage import snapshot
from tests.contract.test_storage import create, principal_of


def _keys_of_every_kind(ctx: Context, *, plain_name: str = "plain") -> tuple[Any, list[Any], str]:
    """A disabled key, one with limits, one that expires and one rotated (two secrets): the
    principal, the keys made and the rotated key's id."""
    p = principal_of(ctx)
    made = [
        create(ctx, p, name=plain_name),
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
    return p, made, rotated


def test_snapshot_rows_are_the_enforcement_views(ctx: Context) -> None:
    p, made, rotated = _keys_of_every_kind(ctx)
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


def test_snapshot_json_rows_are_the_rows(ctx: Context) -> None:
    """``format=rows`` is written by the store (``snapshot_json``): each line decodes to the row
    ``snapshot_rows`` makes of the same key, resumed ``after`` an id too."""
    p, _, rotated = _keys_of_every_kind(ctx, plain_name='plain \u00e9"\\\n')
    keys.rotate_key(ctx, principal=p, api_key_id=rotated, body={})  # the oldest one is dropped

    def rows(after: str | None) -> list[list[Any]]:
        out = []
        for row in feed.snapshot_rows(ctx, after=after):
            if isinstance(row, list):
                row[14] = json.loads(row[14])
                out.append(row)
        return out

    def json_rows(after: str | None) -> list[list[Any]]:
        items = list(feed.snapshot_json(ctx, after=after))
        assert items[0] == feed.current_revision(ctx)
        return [json.loads(line) for part in items[1:] if isinstance(part, list) for line in part]

    every = rows(None)
    assert json_rows(None) == every
    assert [len(r[1]) for r in every if r[0] == rotated] == [2]  # newest first, compared above
    after = sorted(r[0] for r in every)[1]
    assert json_rows(after) == rows(after) == every[2:]


@pytest.mark.parametrize(
    "micros",
    [
        0,
        1,
        999_999,
        1_000_000,
        -1,
        -999_999,
        -1_000_001,
        1_764_000_000_123_456,
        4_070_908_800_000_000,
        -62_135_596_800_000_000,
        253_402_300_799_999_999,
    ],
)
def test_the_stores_time_format_is_format_micros(ctx: Context, micros: int) -> None:
    sql = snapshot._time_sql("CAST(:v AS BIGINT)", sqlite=ctx.db.is_sqlite)
    with ctx.db.read() as conn:
        got = conn.execute(text(f"SELECT {sql}"), {"v": micros}).scalar_one()
    assert got == format_micros(micros)
