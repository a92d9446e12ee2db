"""A poison batch ends: a frame the control plane refuses (400) is narrowed down to, kept in the
gateway's dead-letter directory, counted in its metrics and logged once; the records around it
are counted and the shipper moves on (a real gateway and control plane on loopback)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx2
import msgspec
import pytest

from keyplane.gateway.server import gateway_dir
from keyplane.usage.record import UsageRecord, frame
from keyplane.usage.spool import DEAD_LETTER
from tests.support.gateway import stop_stack
from tests.support.procs import OPERATOR, Deployment, wait_for
from tests.support.usage import counted

CLUSTER = "us-east-1"
GOOD_BEFORE, GOOD_AFTER = 60, 40
TEAM = "00000000-0000-4000-8000-00000000beef"


def good(i: int) -> bytes:
    return frame(UsageRecord(1_800_000_000_000 + i, TEAM, "key-1", "m", "chat", 200, 1, 2, 3))


def poison() -> bytes:
    """Whole and checksummed, so the gateway ships it; not a record, so ingest refuses it."""
    payload = msgspec.msgpack.encode(["not", "a", "usage", "record"])
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


@pytest.fixture
def dep(tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(
        tmp_path, clusters=[CLUSTER], extra_config="[usage]\nship_interval = 0.05\n"
    )
    yield deployment
    stop_stack(deployment)


def test_a_refused_frame_is_quarantined_and_the_rest_is_counted(dep: Deployment) -> None:
    bad = poison()
    spool = gateway_dir(dep.settings(), CLUSTER, 0) / "usage"
    spool.mkdir(parents=True)
    (spool / "000000000001.spool").write_bytes(
        b"".join(good(i) for i in range(GOOD_BEFORE))
        + bad
        + b"".join(good(GOOD_BEFORE + i) for i in range(GOOD_AFTER))
    )
    dep.start_control()
    gateway = dep.start_gateway(CLUSTER)

    def all_good_counted() -> bool:
        requests = counted(dep, TEAM).requests
        assert requests <= GOOD_BEFORE + GOOD_AFTER
        return requests == GOOD_BEFORE + GOOD_AFTER

    wait_for(all_good_counted, timeout=30.0, what="the good records counted")
    dead = spool / DEAD_LETTER
    files = wait_for(lambda: sorted(dead.glob("*.spool")), what="a dead-letter file")
    assert [f.read_bytes() for f in files] == [bad]
    assert files[0].stat().st_mode & 0o777 == 0o600
    page = httpx2.get(gateway.url + "/metrics", headers=OPERATOR, timeout=5.0).text
    assert "keyplane_usage_quarantined_batches_total 1.0" in page
    assert f"keyplane_usage_quarantined_bytes_total {float(len(bad))}" in page
    # The shipper has moved on: the cursor is past everything, and it was logged once.
    wait_for(
        lambda: (
            (spool / "cursor").exists()
            and (spool / "cursor").read_text().split()
            == ["1", str(GOOD_BEFORE * len(good(0)) + len(bad) + GOOD_AFTER * len(good(0)))]
        ),
        what="the cursor past the segment",
    )
    assert gateway.log_path.read_text().count("usage_batch_quarantined") == 1
