"""``keyplane trial`` (the production layout on one machine) is an init system too: SIGKILL of a
control plane (each alone, then both), a gateway replica, Redis or PostgreSQL restarts that child
alone; the gateways answer known keys throughout, a gateway restarted while both control planes
are down serves from its replica, and everything reads ``true`` again once the control planes are
back (both take writes again after PostgreSQL returns, every replica decides through Redis again
after it returns).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import httpx2
import pytest

from tests.support.procs import wait_for
from tests.support.supervised import alive, port_held, whoami
from tests.support.trial import Trial, running_trial

pytestmark = pytest.mark.slow


@pytest.fixture
def trial(tmp_path: Path) -> Iterator[Trial]:
    with running_trial(tmp_path / "console") as running:
        yield running


def on_redis(url: str) -> bool:
    return bool(httpx2.get(url + "/healthz").json()["limiter"] == "ok")


def test_trial_restarts_each_child_alone_and_gateways_keep_serving(trial: Trial) -> None:
    sup = trial.supervised
    assert set(sup.pids()) == {
        "PostgreSQL",
        "Redis",
        "control plane 0",
        "control plane 1",
        "model server",
        *trial.gateways,
    }
    _, first = trial.create_key(0)
    trial.answering([first])

    # One control plane: the other takes writes at once, the killed one comes back.
    old = sup.kill("control plane 0")
    trial.answering([first])
    _, second = trial.create_key(1)
    sup.wait_restarted("control plane 0", old)
    trial.answering([first, second])

    # The other one alone: the gateways that moved to it move back; writes go on through the first.
    old = sup.kill("control plane 1")
    _, other = trial.create_key(0)
    trial.answering([first, second, other])
    sup.wait_restarted("control plane 1", old)

    # Both control planes down (ports held so their restarts fail), a gateway replica killed
    # meanwhile: it comes back serving from its replica; the others never stopped.
    olds = [sup.kill("control plane 0"), sup.kill("control plane 1")]
    with ExitStack() as held:
        for port in trial.ports.control:
            held.enter_context(port_held(port))
        trial.answering([first, second])
        old = sup.kill("gateway us-east-1/0")
        sup.wait_restarted("gateway us-east-1/0", old)
        url = trial.gateways["gateway us-east-1/0"]
        # A process start, like the other restarts here: slow on a loaded machine.
        wait_for(lambda: whoami(url, second) == 200, timeout=60, what="restarted gateway serving")
        assert httpx2.get(url + "/healthz").json()["synced"] is False
        trial.answering([first, second])
    for index, old in enumerate(olds):
        sup.wait_restarted(f"control plane {index}", old)
    _, third = trial.create_key(0)  # every gateway, the restarted one too, reads true
    trial.answering([first, second, third])

    # Redis: limits fall back to the failure policy; keys keep being served; Redis comes back,
    # and every replica decides through it again.
    old = sup.kill("Redis")
    trial.answering([first, second, third])
    sup.wait_restarted("Redis", old)
    for name, url in trial.gateways.items():
        wait_for(partial(on_redis, url), timeout=30, what=f"{name} back on Redis")

    # PostgreSQL: gateways serve on; the control planes take writes again once it is back.
    old = sup.kill("PostgreSQL")
    trial.answering([first, second, third])
    sup.wait_restarted("PostgreSQL", old)
    _, fourth = trial.create_key(1)
    _, fifth = trial.create_key(0)  # both control planes take writes again
    trial.answering([first, second, third, fourth, fifth])

    children = sup.child_pids()
    before = len(sup.console())
    assert sup.stop(signal.SIGINT) == 0
    console = sup.console()[before:]  # a child's crash may print one; the shutdown must not
    assert "Traceback" not in console, console
    assert "keyplane stopped" in console
    assert not [p for p in children if alive(p)], "a child outlived the trial"
