"""ACL strings: the grammar, round trips, refusals, and what a compiled set of ACLs allows."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from keyplane.domain.acl import (
    ENDPOINTS,
    MAX_ACL_LENGTH,
    MAX_ACLS,
    RPCS,
    CompiledAcls,
    management_allows,
    normalize_api_key_acls,
    parse_api_key_acl,
    parse_management_acl,
)
from keyplane.domain.errors import InvalidArgument

# The contract's grammar, written out independently of the code under test.
MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}"
ENDPOINT_NAMES = "|".join(map(re.escape, ENDPOINTS))
GRAMMAR = re.compile(rf"api-key:(endpoint:({ENDPOINT_NAMES}|\*)|model:(\*|{MODEL_NAME}))")

endpoint_acls = st.sampled_from([*ENDPOINTS, "*"]).map(lambda v: f"api-key:endpoint:{v}")
model_names = st.from_regex(MODEL_NAME, fullmatch=True)
model_acls = (st.just("*") | model_names).map(lambda v: f"api-key:model:{v}")
valid_acls = endpoint_acls | model_acls

# Near misses: the right shape with one part slightly off, and plain noise.
near_misses = st.builds(
    lambda ns, key, value: f"{ns}:{key}:{value}",
    st.sampled_from(["api-key", "api-keys", "API-KEY", "team-token", "", " api-key"])
    | st.text(max_size=8),
    st.sampled_from(["endpoint", "model", "Endpoint", "models", "", "endpoint "])
    | st.text(max_size=8),
    st.sampled_from([*ENDPOINTS, "*", "**", " chat", "CHAT", "grok 4", "-grok", ""])
    | model_names
    | st.text(max_size=20),
)


@given(valid_acls)
def test_a_valid_acl_round_trips(text: str) -> None:
    grant = parse_api_key_acl(text)

    assert str(grant) == text
    assert grant.namespace == "api-key"
    assert grant.key in ("endpoint", "model")


@given(near_misses | st.text(max_size=40))
@example("api-key:endpoint:chat\n")
@example("api-key:model:grok-4 ")
@example("api-key:model:" + "a" * 129)
@example("api-key:endpoint:" + "x" * MAX_ACL_LENGTH)
@example("api-key:model")
@example("api-key::chat")
def test_any_string_is_either_a_grammatical_acl_or_invalid_argument(text: str) -> None:
    if GRAMMAR.fullmatch(text) and len(text) <= MAX_ACL_LENGTH:
        assert str(parse_api_key_acl(text)) == text
    else:
        with pytest.raises(InvalidArgument) as refused:
            parse_api_key_acl(text)
        assert refused.value.field == "acls"


@given(st.none() | st.integers() | st.floats() | st.booleans() | st.lists(st.text(), max_size=2))
def test_a_non_string_acl_is_invalid_argument(value: object) -> None:
    with pytest.raises(InvalidArgument):
        parse_api_key_acl(value)


@given(st.lists(valid_acls, max_size=20))
def test_normalizing_keeps_the_first_of_each_in_order(acls: list[str]) -> None:
    with_repeats = acls + acls[: len(acls) // 2]

    result = normalize_api_key_acls(with_repeats)

    assert result == tuple(dict.fromkeys(acls))


@given(st.lists(valid_acls, max_size=5), near_misses.filter(lambda s: not GRAMMAR.fullmatch(s)))
def test_one_bad_acl_spoils_the_list(acls: list[str], bad: str) -> None:
    with pytest.raises(InvalidArgument):
        normalize_api_key_acls([*acls, bad])


@pytest.mark.parametrize("value", ["api-key:model:*", {"acls": []}, 5, True])
def test_acls_must_be_a_list(value: object) -> None:
    with pytest.raises(InvalidArgument):
        normalize_api_key_acls(value)


def test_at_most_so_many_acls() -> None:
    assert normalize_api_key_acls(None) == ()
    enough = [f"api-key:model:m{i}" for i in range(MAX_ACLS)]
    assert len(normalize_api_key_acls(enough)) == MAX_ACLS
    with pytest.raises(InvalidArgument):
        normalize_api_key_acls([*enough, "api-key:model:one-more"])


@given(st.lists(valid_acls, max_size=8), st.sampled_from([*ENDPOINTS, "unknown"]))
def test_compiled_acls_allow_an_endpoint_exactly_when_granted(
    acls: list[str], endpoint: str
) -> None:
    expected = "api-key:endpoint:*" in acls or f"api-key:endpoint:{endpoint}" in acls
    assert CompiledAcls.compile(acls).allows_endpoint(endpoint) is expected


@given(st.lists(valid_acls, max_size=8), model_names, model_names)
def test_compiled_acls_allow_a_model_by_its_name_or_its_alias(
    acls: list[str], requested: str, canonical: str
) -> None:
    granted = {a.split(":", 2)[2] for a in acls if a.startswith("api-key:model:")}
    expected = "*" in granted or requested in granted or canonical in granted
    assert CompiledAcls.compile(acls).allows_model(requested, canonical) is expected


@given(st.lists(st.text(max_size=30), max_size=5), st.sampled_from(list(ENDPOINTS)), model_names)
def test_deny_by_default(garbage: list[str], endpoint: str, model: str) -> None:
    # Whatever is not an api-key grant grants nothing.
    noise = [g for g in garbage if not g.startswith("api-key:")]
    compiled = CompiledAcls.compile(noise)
    assert not compiled.allows_endpoint(endpoint)
    assert not compiled.allows_model(model, model)


@given(st.sampled_from([*RPCS, "*"]))
def test_a_management_acl_round_trips(rpc: str) -> None:
    assert str(parse_management_acl(f"team-token:endpoint:{rpc}")) == f"team-token:endpoint:{rpc}"


@given(near_misses | st.text(max_size=40))
def test_a_malformed_management_acl_is_invalid_argument(text: str) -> None:
    valid = {f"team-token:endpoint:{rpc}" for rpc in (*RPCS, "*")}
    if text in valid:
        return
    with pytest.raises(InvalidArgument):
        parse_management_acl(text)


@given(st.lists(st.sampled_from([*RPCS, "*"]), max_size=4), st.sampled_from(RPCS))
def test_a_management_key_may_call_an_rpc_only_when_granted(held: list[str], rpc: str) -> None:
    acls = [f"team-token:endpoint:{r}" for r in held]
    assert management_allows(acls, rpc) is ("*" in held or rpc in held)
    # An API-key ACL or a look-alike never grants a management RPC.
    assert not management_allows(["api-key:endpoint:*", f"team-token:model:{rpc}"], rpc)
