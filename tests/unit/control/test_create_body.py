"""CreateApiKey's fast path reads the usual body without pydantic
(``api_keys._plain_create_body``): whatever it takes, it gives exactly the fields pydantic's model
gives (``model_validate`` then ``model_dump(by_alias=True, exclude_unset=True)``); what it does
not take goes to pydantic as before."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from keyplane.control import schemas
from keyplane.control.routes import api_keys

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**70)
    | st.floats()
    | st.text(max_size=6)
)
_values = _scalars | st.lists(_scalars, max_size=3) | st.dictionaries(st.text(max_size=5), _scalars)
#: The wire's names, the other spellings pydantic takes, a budget, an unknown field.
_names = st.sampled_from(
    [
        "name",
        "acls",
        "aclStrings",
        "acl_strings",
        "qps",
        "qpm",
        "tpm",
        "expireTime",
        "expire_time",
        "budget",
        "bogus",
        "Name",
    ]
)
_bodies = st.dictionaries(_names, _values | st.lists(st.text(max_size=6), max_size=3), max_size=6)


def _pydantic(data: Any) -> dict[str, Any] | None:
    try:
        body = schemas.CreateApiKeyRequest.model_validate(data, from_attributes=True)
    except ValidationError:
        return None
    return body.model_dump(by_alias=True, exclude_unset=True)


@given(_bodies | _values)
def test_what_it_takes_it_reads_as_pydantic_does(data: Any) -> None:
    plain = api_keys._plain_create_body(data)
    if plain is not None:
        theirs = _pydantic(data)
        assert theirs is not None
        assert plain == theirs
        assert {k: type(v) for k, v in plain.items()} == {k: type(v) for k, v in theirs.items()}


def test_it_takes_the_usual_body() -> None:
    body = {
        "name": "n",
        "acls": ["api-key:endpoint:chat"],
        "qps": 10,
        "qpm": 1.5,
        "tpm": "100",
        "expireTime": None,
    }
    assert api_keys._plain_create_body(body) == _pydantic(body) == body
    others: list[Any] = [
        {"aclStrings": []},
        {"budget": None},
        {"bogus": 1},
        {"qps": True},
        [],
        None,
    ]
    for other in others:
        assert api_keys._plain_create_body(other) is None
