"""``list_api_keys`` follows paginationToken over 250 keys while other keys are being created."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from keyplane.client import Client
from tests.client.conftest import TeamCreds
from tests.support.procs import wait_for


def test_iterating_250_keys_while_others_are_created(client: Client, team: TeamCreds) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        first = list(pool.map(lambda i: client.create_api_key(f"k{i:03}").api_key_id, range(250)))
    before = [k.api_key_id for k in client.list_api_keys(page_size=1000)]
    assert sorted(before) == sorted(first)

    stop = threading.Event()
    made: list[str] = []

    def create_more() -> None:
        with team.client() as writer:
            deadline = time.monotonic() + 30
            while not stop.is_set() and len(made) < 100 and time.monotonic() < deadline:
                made.append(writer.create_api_key("late").api_key_id)

    writer = threading.Thread(target=create_more)
    writer.start()
    try:
        wait_for(lambda: made, timeout=15, what="the writer's first key")
        at_start = len(made)
        seen = [k.api_key_id for k in client.list_api_keys(page_size=7)]
        at_end = len(made)
    finally:
        stop.set()
        writer.join(timeout=60)
    assert at_end > at_start, "no key was created during the listing"
    # Every key that existed is seen once, in the stable order; keys made meanwhile may follow,
    # in creation order (they sort after the existing ones), but never twice, never one skipped.
    assert seen[:250] == before
    late = seen[250:]
    assert late == made[: len(late)]
    assert len(set(seen)) == len(seen)
    after = [k.api_key_id for k in client.list_api_keys(page_size=1000)]
    assert after == before + made
