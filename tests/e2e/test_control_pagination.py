"""ListApiKeys, page by page: every key exactly once while others are being written, and
``aclFilters`` agreeing with a brute-force answer — against a real control plane."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.management import connect
from tests.support.procs import Deployment, admin_context, create_team_in, wait_for


@pytest.fixture(scope="module")
def admin(module_deployment: Deployment) -> Iterator[Any]:
    with admin_context(module_deployment) as ctx:
        yield ctx


def new_team(dep: Deployment, admin: Any) -> tuple[str, str]:
    return create_team_in(admin, f"pages-{uuid.uuid4()}")


def create(client: httpx2.Client, team_id: str, **fields: Any) -> dict[str, Any]:
    r = client.post(f"/auth/teams/{team_id}/api-keys", json={"name": "k", **fields})
    assert r.status_code == 200, r.text
    created: dict[str, Any] = r.json()
    return created


def pages(
    client: httpx2.Client, team_id: str, params: dict[str, Any], between: Any = None
) -> Iterator[list[dict[str, Any]]]:
    token = ""
    while True:
        r = client.get(
            f"/auth/teams/{team_id}/api-keys", params={**params, "paginationToken": token}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        yield body["apiKeys"]
        token = body.get("paginationToken")
        if not token:
            return
        if between is not None:
            between()


class Writer(threading.Thread):
    """Creates keys in a team (up to ``creates``: every page waits for a write, and new keys
    land at the end of the list, so unbounded creates would make the listing endless) and
    updates old ones, until told to stop."""

    def __init__(
        self, dep: Deployment, team_id: str, secret: str, old: list[str], creates: int
    ) -> None:
        super().__init__(daemon=True)
        self.creates = creates
        self.client = connect(dep.control_url, secret)
        self.team_id = team_id
        self.old = old
        self.created: list[str] = []
        self.writes = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        rnd = random.Random(7)
        try:
            with self.client:
                while not self.stop.is_set():
                    if len(self.created) < self.creates:
                        created = create(self.client, self.team_id, name="new")
                        self.created.append(created["apiKeyId"])
                    key_id = rnd.choice(self.old)
                    r = self.client.put(
                        f"/auth/api-keys/{key_id}",
                        json={"apiKey": {"qps": rnd.randint(1, 100)}, "fieldMask": "qps"},
                    )
                    assert r.status_code == 200, r.text
                    self.writes += 1
        except BaseException as error:  # reported by the test thread
            self.error = error


@pytest.mark.parametrize("page_size", [1, 4, 25])
def test_every_key_appears_exactly_once_while_others_are_written(
    module_deployment: Deployment, admin: Any, page_size: int
) -> None:
    team_id, secret = new_team(module_deployment, admin)
    with connect(module_deployment.control_url, secret) as client:
        before = [create(client, team_id, name=f"old {i}")["apiKeyId"] for i in range(30)]
        writer = Writer(module_deployment, team_id, secret, before, creates=20)
        writer.start()
        try:
            wait_for(lambda: writer.writes >= 1, timeout=10, what="the writer to start")

            def let_the_writer_write() -> None:
                # Between two pages, at least one more write lands.
                seen = writer.writes
                wait_for(lambda: writer.writes > seen or writer.error, what="another write")

            listed = [
                key
                for page in pages(client, team_id, {"pageSize": page_size}, let_the_writer_write)
                for key in page
            ]
        finally:
            writer.stop.set()
            writer.join(timeout=10)
        assert writer.error is None, writer.error

        ids = [k["apiKeyId"] for k in listed]
        assert len(ids) == len(set(ids)), "a key appeared twice"
        assert set(before) <= set(ids), "a key created before the listing began was missed"
        order = [(k["createTime"], k["apiKeyId"]) for k in listed]
        assert order == sorted(order), "pages are in (createTime, apiKeyId) order"
        assert len(writer.created) >= min(20, len(before) // page_size - 1), "writes interleaved"
        everything = {k["apiKeyId"] for k in next(pages(client, team_id, {}))}
        assert set(ids) <= everything
        assert set(before) | set(writer.created) == everything


UNIVERSE = [
    "api-key:endpoint:chat",
    "api-key:endpoint:image",
    "api-key:endpoint:*",
    "api-key:model:grok-4",
    "api-key:model:grok-3",
    "api-key:model:*",
]
key_specs = st.lists(
    st.tuples(st.lists(st.sampled_from(UNIVERSE), unique=True, max_size=4), st.booleans()),
    max_size=9,
)


@settings(max_examples=12, deadline=None)
@given(
    specs=key_specs,
    filters=st.lists(st.sampled_from(UNIVERSE), max_size=3),
    page_size=st.none() | st.integers(1, 4),
    active_only=st.booleans(),
)
def test_acl_filters_match_the_brute_force_answer(
    module_deployment: Deployment,
    admin: Any,
    specs: list[tuple[list[str], bool]],
    filters: list[str],
    page_size: int | None,
    active_only: bool,
) -> None:
    team_id, secret = new_team(module_deployment, admin)
    with connect(module_deployment.control_url, secret) as client:
        keys = []
        for acls, expired in specs:
            fields: dict[str, Any] = {"acls": acls}
            if expired:
                fields["expireTime"] = "2020-01-01T00:00:00Z"
            keys.append(create(client, team_id, **fields))
        params: dict[str, Any] = {"aclFilters": filters, "activeOnly": str(active_only).lower()}
        if page_size is not None:
            params["pageSize"] = page_size

        got = [k["apiKeyId"] for page in pages(client, team_id, params) for k in page]

    # A key matches when it holds every filter, as written (no wildcard expansion).
    expected = [
        k["apiKeyId"]
        for k in keys
        if set(filters) <= set(k["aclStrings"]) and not (active_only and "expireTime" in k)
    ]
    assert got == expected
