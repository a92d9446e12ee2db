"""ACLs at their edges: each part checked on its own, extra colons kept in the last part, the
length limit, and the field every refusal names (written against mutants mutation testing left
alive)."""

from __future__ import annotations

import pytest

from keyplane.domain.acl import (
    ENDPOINTS,
    MAX_ACL_LENGTH,
    MAX_ACLS,
    RPCS,
    CompiledAcls,
    normalize_api_key_acls,
    parse_management_acl,
)
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
    assert message == f"acls: unknown RPC 'DropEverything'; known: {', '.join(RPCS)}, or *"


def api_key_refusal(value: object, field: str = "apiKey.acls") -> str:
    with pytest.raises(InvalidArgument) as caught:
        normalize_api_key_acls(value, field=field)
    assert caught.value.field == field
    return str(caught.value)


def test_api_key_acl_refusals_name_the_callers_field() -> None:
    assert api_key_refusal([7]) == "apiKey.acls: each ACL must be a string"
    assert api_key_refusal("api-key:endpoint:*") == "apiKey.acls: must be a list of ACL strings"
    too_many = [f"api-key:model:m{i}" for i in range(MAX_ACLS + 1)]
    assert f"at most {MAX_ACLS} ACLs per key" in api_key_refusal(too_many)
    assert "is not an ACL" in api_key_refusal(["nonsense"])
    with pytest.raises(InvalidArgument) as caught:
        normalize_api_key_acls({"not": "a list"})
    assert caught.value.field == "acls"  # the default field


def test_an_acl_of_exactly_the_length_limit_is_judged_on_its_grammar() -> None:
    at_limit = "api-key:model:" + "m" * (MAX_ACL_LENGTH - len("api-key:model:"))
    assert len(at_limit) == MAX_ACL_LENGTH
    assert "is not a model name" in api_key_refusal([at_limit])
    assert f"ACL is longer than {MAX_ACL_LENGTH} characters" in api_key_refusal([at_limit + "m"])


def test_an_unknown_endpoint_lists_the_known_ones() -> None:
    message = api_key_refusal(["api-key:endpoint:teleport"])
    assert "known endpoints: " + ", ".join(sorted(ENDPOINTS)) + ", or *" in message


def test_compiled_acls_keep_colons_in_model_names() -> None:
    compiled = CompiledAcls.compile(["api-key:model:llama3:8b"])
    assert compiled.allows_model("llama3:8b", "llama3:8b")
    assert not compiled.allows_model("llama3", "llama3")


def test_compiled_acls_skip_what_they_do_not_understand_and_read_on() -> None:
    compiled = CompiledAcls.compile(
        ["garbage", "team-token:endpoint:chat", "x:endpoint:embed", "api-key:endpoint:sample"]
    )
    assert compiled.allows_endpoint("sample")
    assert not compiled.allows_endpoint("chat")
    assert not compiled.allows_endpoint("embed")
