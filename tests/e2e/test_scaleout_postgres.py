"""Scale-out on PostgreSQL: two control-plane processes on one database, gateways following one.

Clients create keys through both control planes at once; the change log stays gap-free and in
order, both clusters' gateways converge, and propagation reports true everywhere, whichever
replica is asked.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx2
import psycopg
import pytest

from tests.support.management import connect
from tests.support.postgres import PostgresServer, require_postgres
from tests.support.procs import OPERATOR, Deployment, free_port, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, str]]:
    server = PostgresServer(require_postgres()).start()
    url = server.create_database("keyplane")
    dep = Deployment(tmp_path_factory.mktemp("pg"), top_config=f'database_url = "{url}"')
    try:
        yield dep, server.dsn("keyplane")
    finally:
        dep.stop_all()
        server.stop()


def test_two_control_planes_one_database(pg_deployment: tuple[Deployment, str]) -> None:
    dep, dsn = pg_deployment
    first = dep.start_control()
    second_port = free_port()
    second = dep.start_control(port=second_port)
    for cluster in dep.clusters:
        dep.start_gateway(cluster)
    team, mgmt = dep.create_team("acme")

    created: list[dict[str, str]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def writer(url: str, n: int) -> None:
        with connect(url, mgmt) as c:
            for i in range(n):
                r = c.post(f"/auth/teams/{team}/api-keys", json={"name": f"k{i}"})
                with lock:
                    if r.status_code == 200:
                        created.append(r.json())
                    else:
                        failures.append(r.text)

    threads = [
        threading.Thread(target=writer, args=(url, 40))
        for url in (first.url, second.url)
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures
    assert len(created) == 240

    with psycopg.connect(dsn) as conn:
        revisions = [
            r for (r,) in conn.execute("SELECT revision FROM change_log ORDER BY revision")
        ]
        (counter,) = conn.execute("SELECT value FROM revision_counter").fetchone() or (None,)
    assert revisions == list(range(1, 241))
    assert counter == 240

    # Every gateway converges; ask either replica about propagation.
    def converged() -> bool:
        for cluster in dep.clusters:
            health = httpx2.get(dep.gateway_url(cluster) + "/healthz", headers=OPERATOR).json()
            if health["revision"] != 240:
                return False
        return True

    wait_for(converged, timeout=30, what="gateways at revision 240")
    with connect(second.url, mgmt) as c2, connect(first.url, mgmt) as c1:
        for i, key in enumerate(created[::20]):
            client = c1 if i % 2 else c2
            status = client.get(f"/auth/api-keys/{key['apiKeyId']}/propagation").json()
            assert all(status["icPropagation"].values()), status
    for cluster in dep.clusters:
        r = httpx2.get(
            dep.gateway_url(cluster) + "/v1/api-key",
            headers={"Authorization": f"Bearer {created[-1]['apiKey']}"},
        )
        assert r.status_code == 200


def test_a_change_through_one_replica_wakes_followers_of_the_other(
    pg_deployment: tuple[Deployment, str],
) -> None:
    """Gateways follow replica one; a key created through replica two still reaches them."""
    dep, _ = pg_deployment
    dep.start_control()
    second = dep.start_control(port=free_port())
    dep.start_gateway("us-east-1")
    team, mgmt = dep.create_team("acme")
    with connect(second.url, mgmt) as c:
        key = c.post(f"/auth/teams/{team}/api-keys", json={"name": "via two"}).json()
    wait_for(
        lambda: (
            httpx2.get(
                dep.gateway_url("us-east-1") + "/v1/api-key",
                headers={"Authorization": f"Bearer {key['apiKey']}"},
            ).status_code
            == 200
        ),
        timeout=10,
        what="key created on replica two to reach a gateway following replica one",
    )
