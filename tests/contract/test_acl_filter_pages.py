"""ListApiKeys with aclFilters pages the same whichever way the store finds the page: through the
team's keys in order (a filter many keys match) or from the ACL's own index (a rare one). A tiny
probe window forces both paths, on every store."""

from __future__ import annotations

import pytest

from keyplane.services import keys
from keyplane.services.context import Context
from keyplane.storage import api_keys
from tests.contract.test_storage import create, principal_of

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
        seen: list[str] = []
        token = None
        while True:
            page = keys.list_keys(
                ctx,
                principal=p,
                team_id=p.team_id,
                page_size=3,
                page_token=token,
                acl_filters=filters,
            )
            seen += [k.name for k in page.keys]
            token = page.next_token
            if token is None:
                break
        expected = sorted(n for n, acls in held.items() if set(filters) <= set(acls))
        assert seen == expected, filters
