"""Management ACLs at their edges: each part checked on its own, extra colons kept in the RPC part,
and the field every refusal names (written against mutants mutation testing left alive)."""

from __future__ import annotations

import pytest

from keyplane.domain.acl import parse_management_acl
from keyplane.domain.errors import InvalidArgument


def refusal(text: str) -> str:
    with pytest.raises(InvalidArgument) as caught:
        parse_management_acl(text)
    assert caught.value.field == "acls"
    return str(caught.value)


@pytest.mark.parametrize(
    "text", ["api-key:endpoint:*", "team-token:model:*", "team-token:endpoint", "team-token"]
)
def test_namespace_and_key_are_each_required(text: str) -> None:
    assert "is not a management ACL; expected team-token:endpoint:<RPC>" in refusal(text)


def test_a_colon_after_the_key_belongs_to_the_rpc_part() -> None:
    message = refusal("team-token:endpoint:ListApiKeys:extra")
    assert "unknown RPC 'ListApiKeys:extra'" in message


def test_an_unknown_rpc_names_itself_and_the_known_ones() -> None:
    message = refusal("team-token:endpoint:DropEverything")
    assert "unknown RPC 'DropEverything'; known: " in message
    assert "ListApiKeys" in message
