"""The ASGI helpers every keyplane server shares: what they send, byte for byte."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from keyplane.asgi import Message, error_body, header, send_json


@given(st.text(), st.text())
def test_error_body_is_keyplanes_shape_for_any_text(code: str, message: str) -> None:
    assert json.loads(error_body(code, message)) == {"code": code, "error": message}


async def test_send_json_sends_a_whole_answer_with_its_length() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await send_json(send, 201, {"a": [1, "é"]}, [(b"x-extra", b"1")])
    start, body = sent
    payload = body["body"]
    assert json.loads(payload) == {"a": [1, "é"]}
    assert start == {
        "type": "http.response.start",
        "status": 201,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-extra", b"1"),
        ],
    }
    assert body == {"type": "http.response.body", "body": payload}


def test_header_finds_the_first_value_of_a_lower_case_name() -> None:
    scope = {"headers": [(b"a", b"1"), (b"b", b"caf\xe9"), (b"b", b"2")]}
    assert header(scope, b"b") == "café"
    assert header(scope, b"c") is None
