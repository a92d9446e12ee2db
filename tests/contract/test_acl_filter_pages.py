"""ListApiKeys with aclFilters pages the same whichever way the store finds the page: through the
team's keys in order (a filter many keys match) or from the ACL's own index (a rare one). A tiny
probe window forces both paths, on every store."""

from __future__ import annotations

import pytest
from alembic import command

from keyplane.services import keys
from keyplane.services.auth import Principal
from keyplane.services.context import Context
from keyplane.storage import api_keys
from tests.contract.test_storage import create, principal_of
from tests.support import migrations

CHAT, GROK, RARE = "api-key:endpoint:chat", "api-key:model:grok-4", "api-key:model:grok-rare"


@pytest.mark.parametrize("probe", [4, 4000])
def test_filtered_pages_match_the_filter_in_list_order(
    ctx: Context, probe: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_keys, "ACL_PROBE", probe)
    p = principal_of(ctx)
    other = principal_of(ctx, "other")
    held: dict[str, list[str]] = {}
    for i in range(24):
        acls = [CHAT] + ([GROK] if i % 3 == 0 else []) + ([RARE] if i in (5, 17) else [])
        held[f"k{i:02}"] = acls
        create(ctx, p, name=f"k{i:02}", acls=acls)
        create(ctx, other, name=f"o{i:02}", acls=acls)  # another team's keys never show
    for filters in ([CHAT], [GROK], [RARE], [GROK, CHAT], [RARE, GROK]):
        expected = sorted(n for n, acls in held.items() if set(filters) <= set(acls))
        assert listed(ctx, p, filters) == expected, filters


def listed(ctx: Context, p: Principal, filters: list[str]) -> list[str]:
    """The names of the team's keys that ``filters`` pick, page (of 3) after page."""
    seen: list[str] = []
    token = None
    while True:
        page = keys.list_keys(
            ctx, principal=p, team_id=p.team_id, page_size=3, page_token=token, acl_filters=filters
        )
        seen += [k.name for k in page.keys]
        token = page.next_token
        if token is None:
            return seen


def test_keys_made_before_the_acl_list_index_page_by_acl_after_it(ctx: Context) -> None:
    p = principal_of(ctx)
    for i in range(7):
        create(ctx, p, name=f"k{i}", acls=[CHAT] + ([RARE] if i % 2 else []))
    cfg = migrations.config()
    with ctx.db.writer.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0008_usage_units")  # ACL rows without their key's team and time
    ctx.db.migrate()
    assert listed(ctx, p, [RARE]) == ["k1", "k3", "k5"]
    assert listed(ctx, p, [CHAT]) == [f"k{i}" for i in range(7)]
