"""Limits and flags as the wire sends them: qps/qpm as 32-bit numbers, tpm as a 64-bit string."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from keyplane.domain.errors import InvalidArgument
from keyplane.domain.model import (
    INT32_MAX,
    INT64_MAX,
    validate_bool,
    validate_int32_limit,
    validate_int64_limit,
    validate_name,
)

LIMITS = [(validate_int32_limit, INT32_MAX), (validate_int64_limit, INT64_MAX)]


@pytest.mark.parametrize(("validate", "top"), LIMITS)
@given(data=st.data())
def test_an_integer_in_range_is_accepted_as_a_number_or_a_digit_string(
    validate: object, top: int, data: st.DataObject
) -> None:
    assert callable(validate)
    n = data.draw(st.integers(0, top))
    spelled = data.draw(st.sampled_from([n, str(n), f" {n} "]))
    assert validate(spelled, field="f") == n
    if n < 2**53:
        assert validate(float(n), field="f") == n


@pytest.mark.parametrize(("validate", "top"), LIMITS)
@given(data=st.data())
def test_out_of_range_is_refused(validate: object, top: int, data: st.DataObject) -> None:
    assert callable(validate)
    n = data.draw(st.integers(max_value=-1) | st.integers(min_value=top + 1))
    with pytest.raises(InvalidArgument):
        validate(data.draw(st.sampled_from([n, str(n)])), field="f")


@pytest.mark.parametrize(("validate", "top"), LIMITS)
@given(value=st.text(max_size=30) | st.floats() | st.booleans() | st.lists(st.integers()))
@example(value="\u00b2")  # "²": str.isdigit() says yes, int() says no
@example(value="\u0663")  # "٣": an Arabic-Indic three
@example(value="--5")
@example(value="+5")
@example(value="1_000")
@example(value="1" * 5000)
@example(value=True)
@example(value=1.5)
@example(value=float("nan"))
@example(value=float("inf"))
def test_anything_else_is_invalid_argument(validate: object, top: int, value: object) -> None:
    assert callable(validate)
    try:
        result = validate(value, field="qps")
    except InvalidArgument as error:
        assert error.field == "qps"  # noqa: PT017 - the exception is the outcome under test
        return
    assert isinstance(result, int)
    assert 0 <= result <= top
    if isinstance(value, str):
        assert value.strip().isascii()
        assert value.strip().lstrip("-").isdecimal()
    else:
        assert isinstance(value, float)
        assert value == result


@pytest.mark.parametrize(("validate", "top"), LIMITS)
def test_null_means_no_limit(validate: object, top: int) -> None:
    assert callable(validate)
    assert validate(None, field="f") is None
    assert validate(0, field="f") == 0


@given(st.booleans() | st.sampled_from(["true", "false", "TRUE", "False"]))
def test_a_flag_is_a_boolean_or_its_name(value: object) -> None:
    assert validate_bool(value, field="disabled") is (str(value).lower() == "true")


@given(st.integers() | st.none() | st.sampled_from(["yes", "1", "0", "", "on", "t"]))
def test_anything_else_is_not_a_flag(value: object) -> None:
    with pytest.raises(InvalidArgument):
        validate_bool(value, field="disabled")


@given(st.text(min_size=1, max_size=256).filter(str.strip))
def test_a_name_is_any_non_blank_text_up_to_256(name: str) -> None:
    assert validate_name(name) == name


@given(st.text(max_size=5).map(lambda s: "".join(c for c in s if c.isspace())) | st.none())
def test_a_blank_or_missing_name_is_refused(name: str | None) -> None:
    with pytest.raises(InvalidArgument):
        validate_name(name)


def test_a_name_longer_than_256_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        validate_name("n" * 257)


def test_a_name_of_exactly_256_characters_is_accepted() -> None:
    assert validate_name("n" * 256) == "n" * 256


@pytest.mark.parametrize(
    ("validate", "value", "message"),
    [
        (validate_name, 5, "name: must be a string"),
        (validate_name, " \t", "name: must not be empty"),
        (validate_name, "n" * 257, "name: must be at most 256 characters"),
        (validate_int32_limit, True, "qps: must be an integer, not a boolean"),
        (validate_int32_limit, "five", "qps: must be an integer"),
        (validate_int32_limit, -1, "qps: must not be negative"),
        (validate_int32_limit, INT32_MAX + 1, "qps: must be at most 2147483647"),
        (validate_int64_limit, False, "qps: must be an integer string, not a boolean"),
        (validate_int64_limit, "five", "qps: 'five' is not an integer string"),
        (validate_int64_limit, [5], "qps: must be an integer string"),
        (validate_int64_limit, "-1", "qps: must not be negative"),
        (validate_int64_limit, INT64_MAX + 1, "qps: must be at most 9223372036854775807"),
        (validate_bool, "yes", "qps: must be true or false"),
    ],
)
def test_each_refusal_names_the_field_and_says_why(
    validate: object, value: object, message: str
) -> None:
    """The messages a person reads in a 400, word for word; the field defaults to ``name`` for a
    name and is otherwise the one the caller gives."""
    assert callable(validate)
    kwargs = {} if validate is validate_name else {"field": "qps"}
    with pytest.raises(InvalidArgument) as refused:
        validate(value, **kwargs)
    assert refused.value.message == message
    assert refused.value.field == kwargs.get("field", "name")


def test_a_name_is_checked_under_the_field_it_is_given() -> None:
    with pytest.raises(InvalidArgument) as refused:
        validate_name("", field="displayName")
    assert (refused.value.field, refused.value.message) == (
        "displayName",
        "displayName: must not be empty",
    )
