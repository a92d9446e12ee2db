"""Field masks: every spelling of the maskable paths means the same set; anything else is a 400."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from keyplane.domain.errors import InvalidArgument
from keyplane.domain.fieldmask import MASKABLE, OUTPUT_ONLY, parse_field_mask

SPELLINGS = {
    "name": ["name"],
    "aclStrings": ["aclStrings", "acl_strings", "acls"],
    "qps": ["qps"],
    "qpm": ["qpm"],
    "tpm": ["tpm"],
    "disabled": ["disabled"],
    "expireTime": ["expireTime", "expire_time"],
    "budget": ["budget"],
}
PADDING = st.sampled_from(["", " ", "  ", "\t"])


def test_the_spellings_cover_every_maskable_path() -> None:
    assert set(SPELLINGS) == set(MASKABLE)


@given(st.lists(st.sampled_from(MASKABLE), min_size=1, max_size=20), st.data())
def test_any_order_spelling_and_form_parses_to_the_canonical_set(
    paths: list[str], data: st.DataObject
) -> None:
    spelled = [
        data.draw(PADDING) + data.draw(st.sampled_from(SPELLINGS[p])) + data.draw(PADDING)
        for p in paths
    ]
    form = data.draw(st.sampled_from(["csv", "csv-extra-commas", "list", "paths"]))
    mask: object
    if form == "csv":
        mask = ",".join(spelled)
    elif form == "csv-extra-commas":
        mask = ",".join(["", *spelled, ""])
    elif form == "list":
        mask = spelled
    else:
        mask = {"paths": spelled}

    assert parse_field_mask(mask) == frozenset(paths)


garbage = st.one_of(
    st.text(max_size=40),
    st.lists(st.text(max_size=15), max_size=6),
    st.lists(st.sampled_from([*MASKABLE, *OUTPUT_ONLY, "x", 5, None]), max_size=6),
    st.dictionaries(st.sampled_from(["paths", "path", "x"]), st.text(max_size=10) | st.integers()),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
)


@given(garbage)
@example("")
@example(" , ,")
@example([])
@example({"paths": []})
@example("QPS")
@example("Name")
@example("expire__time")
@example("acl_Strings")
@example("qps," * 500)
@example(["qps"] * 29)
def test_anything_else_is_invalid_argument_and_nothing_else(mask: object) -> None:
    try:
        paths = parse_field_mask(mask)
    except InvalidArgument as error:
        assert error.field == "fieldMask"  # noqa: PT017 - the exception is the outcome under test
    else:
        assert paths
        assert paths <= set(MASKABLE)


@pytest.mark.parametrize("path", [*OUTPUT_ONLY, "create_time", "api_key_id", "redacted_api_key"])
def test_an_output_only_path_is_refused_by_name(path: str) -> None:
    with pytest.raises(InvalidArgument, match="output only"):
        parse_field_mask(f"name,{path}")


@pytest.mark.parametrize("path", ["foo", "apiKeys", "acl", "expire", "secrets", "revision"])
def test_an_unknown_path_is_refused_with_the_maskable_ones_listed(path: str) -> None:
    with pytest.raises(InvalidArgument, match="unknown path") as refused:
        parse_field_mask(path)
    assert all(p in refused.value.message for p in MASKABLE)


EMPTY = (
    "fieldMask: field mask is empty; name the fields to update, from: "
    "name, aclStrings, qps, qpm, tpm, disabled, expireTime, budget"
)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (None, EMPTY),
        ({}, EMPTY),
        ("", EMPTY),
        ([], EMPTY),
        (5, "fieldMask: must be a comma-separated string of paths"),
        (["qps", 5], "fieldMask: must be a comma-separated string of paths"),
        ("qps" + "," * 1022, "fieldMask: field mask is too long"),
        (["qps"] * 33, "fieldMask: field mask has too many paths"),
        ("apiKey", "fieldMask: 'apiKey' is output only and cannot be updated"),
        (
            "qps,foo",
            "fieldMask: unknown path 'foo'; maskable paths: "
            "name, aclStrings, qps, qpm, tpm, disabled, expireTime, budget",
        ),
    ],
)
def test_each_refusal_says_why_in_so_many_words(mask: object, message: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        parse_field_mask(mask)
    assert (refused.value.message, refused.value.field) == (message, "fieldMask")


def test_the_longest_mask_and_the_most_paths_are_accepted() -> None:
    """1,024 characters, and 32 paths (four spellings of each maskable path), are the bounds."""
    assert parse_field_mask("qps" + "," * 1021) == {"qps"}
    assert parse_field_mask(["qps"] * 32) == {"qps"}
