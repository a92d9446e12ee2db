"""``keyplane admin usage``: per-team and per-key tables of what was used and spent."""

from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner

from keyplane.cli import main
from keyplane.usage.record import UsageRecord
from tests.support.procs import Deployment, admin_context
from tests.support.usage import ingest_batch


def run(dep: Deployment, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env={"KEYPLANE_CONFIG": str(dep.config)})
    return result.exit_code, result.output


def test_usage_per_team_and_per_key(tmp_path: Path) -> None:
    dep = Deployment(tmp_path)
    team_id, _ = dep.create_team("acme")
    other_id, _ = dep.create_team("globex")
    now_ms = int(time.time() * 1000)
    records = [
        UsageRecord(now_ms, team_id, "key-1", "grok-4", "chat", 200, 10, 20, 10 * 2000 + 20 * 10000)
    ] * 3 + [UsageRecord(now_ms, other_id, "key-9", "grok-4", "chat", 429, 0, 0, 0)]
    with admin_context(dep) as ctx:
        ingest_batch(ctx, records, cluster="us-east-1")
    code, out = run(dep, "admin", "usage", "--json")
    assert code == 0, out
    rows = {r["name"]: r for r in json.loads(out[out.index("[") :])}
    assert (rows["acme"]["requests"], rows["acme"]["prompt_tokens"]) == (3, 30)
    assert rows["acme"]["usd"] == round(3 * 220000 / 10**10, 6)
    assert rows["globex"]["requests"] == 1
    code, out = run(dep, "admin", "usage", "--team", "acme")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("Reading usage")
    assert lines[1].split()[:3] == ["KEY", "NAME", "REQUESTS"]
    assert lines[2].split()[:3] == ["key-1", "(deleted)", "3"]


def test_an_unknown_team_is_a_clean_error(tmp_path: Path) -> None:
    dep = Deployment(tmp_path)
    code, out = run(dep, "admin", "usage", "--team", "nobody")
    assert code == 1
    assert "Error: no team with id or name 'nobody'" in out
