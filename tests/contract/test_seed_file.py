"""The seed file (``keyplane.propagation.seed``) on every store: a replica file holding exactly the
snapshot's rows at the revision it was read at, each secret's digest indexed, that a gateway's
``ReplicaStore`` adopts and serves; a seed the change log no longer reaches is not served."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from keyplane.domain import keysecrets
from keyplane.gateway.replica import Replica, ReplicaStore
from keyplane.propagation import feed
from keyplane.propagation.seed import SeedKeeper, build_seed
from keyplane.propagation.wire import row_to_view, seed_revision
from keyplane.services import keys
from keyplane.services.context import Context
from tests.contract.test_storage import create, principal_of


def _rows(ctx: Context) -> dict[str, list[Any]]:
    items = list(feed.snapshot_json(ctx))
    return {
        row[0]: row for part in items[1:] if isinstance(part, list) for row in map(json.loads, part)
    }


def test_a_seed_is_the_snapshot_as_a_replica_file(ctx: Context, tmp_path: Path) -> None:
    p = principal_of(ctx)
    made = [create(ctx, p, name=f"k{i}", qps=i + 1) for i in range(5)]
    rotated = keys.rotate_key(ctx, principal=p, api_key_id=made[1].key.api_key_id, body={})
    seed = build_seed(ctx, tmp_path / "seed")
    assert seed.revision == feed.current_revision(ctx)
    assert seed.keys == 5
    assert seed.path.name.startswith(f"seed-{seed.revision}-")
    assert not list((tmp_path / "seed").glob("*.tmp"))
    assert seed_revision(seed.path) == (seed.revision, 5)

    # A change after the seed is not in it: the seed is one revision's state.
    late = create(ctx, p, name="late")
    store = ReplicaStore(tmp_path / "gw" / "replica.db")
    replica = Replica()
    store.load_into(replica)
    part = tmp_path / "gw" / "seed-x.part"
    part.write_bytes(seed.path.read_bytes())
    assert store.adopt(part) == seed.revision
    replica.loaded(store.revision)
    assert not part.exists()
    expected = {k: v for k, v in _rows(ctx).items() if k != late.key.api_key_id}
    assert store.views() == {k: row_to_view(v) for k, v in expected.items()}
    for m in made:
        record = replica.lookup(keysecrets.digest_raw(m.secret.encode()), now=0.0)
        assert record is not None
        assert record.api_key_id == m.key.api_key_id
    record = replica.lookup(keysecrets.digest_raw(rotated.secret.encode()), now=0.0)
    assert record is not None
    assert record.api_key_id == made[1].key.api_key_id
    assert replica.lookup(keysecrets.digest_raw(late.secret.encode()), now=0.0) is None
    store.close()


def test_a_seed_behind_the_change_log_is_not_served(ctx: Context, tmp_path: Path) -> None:
    p = principal_of(ctx)
    create(ctx, p, name="before")
    keeper = SeedKeeper(ctx, tmp_path / "seed", rebuild_changes=2)
    assert keeper.ready() is None
    assert keeper.due()
    first = keeper.build()
    assert keeper.ready() == first
    assert not keeper.due()
    create(ctx, p, name="one")
    assert keeper.ready() == first
    assert not keeper.due()
    create(ctx, p, name="two")
    create(ctx, p, name="three")
    assert keeper.due()  # more than rebuild_changes behind
    feed.compact(ctx, keep=1)  # the log no longer reaches back to the seed's revision
    assert keeper.ready() is None
    second = keeper.build()
    assert keeper.ready() == second
    assert second.revision == feed.current_revision(ctx)
    assert not first.path.exists()  # the older file is gone once the new one is served
    assert second.keys == 4
    keeper.close()


def test_no_seed_is_built_for_a_store_below_min_keys(ctx: Context, tmp_path: Path) -> None:
    """Below ``seed_min_keys`` the row snapshot serves fresh gateways: no builder, no file."""
    p = principal_of(ctx)
    made = [create(ctx, p, name=f"k{i}") for i in range(3)]
    keeper = SeedKeeper(ctx, tmp_path / "seed", min_keys=3, in_child=False)
    assert feed.key_count(ctx) == 3
    assert keeper.due()  # at the threshold
    keys.delete_key(ctx, principal=p, api_key_id=made[0].key.api_key_id)
    assert feed.key_count(ctx) == 2
    assert not keeper.due()
    assert keeper.ready() is None
    create(ctx, p, name="again")
    assert keeper.due()
    assert keeper.build().keys == 3
    assert not keeper.due()  # built: from now on rebuilt by how far it is behind
    keeper.close()
