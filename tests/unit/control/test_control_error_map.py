"""The control plane's own error map: every kind of error the domain defines has its status here,
a subclass's own entry wins over its base's, and the bare 500 is keyplane's error shape."""

from __future__ import annotations

import json

from keyplane.asgi import Message
from keyplane.control.errors import STATUS, http_status, send_internal_error
from keyplane.domain import errors as domain_errors
from keyplane.domain.errors import InvalidArgument, KeyplaneError, NotFound, PayloadTooLarge


def test_every_kind_of_error_the_domain_defines_has_a_status() -> None:
    kinds = {
        value
        for value in vars(domain_errors).values()
        if isinstance(value, type) and issubclass(value, KeyplaneError)
    }
    assert kinds - set(STATUS) == {KeyplaneError}
    assert http_status(KeyplaneError("unexpected")) == 500


def test_the_nearest_entry_along_the_class_hierarchy_decides() -> None:
    class Gone(NotFound):
        pass

    assert http_status(PayloadTooLarge(10)) == 413
    assert http_status(InvalidArgument("x", field="name")) == 400
    assert http_status(Gone("x")) == 404


async def test_an_escaped_exception_is_answered_with_the_bare_500() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await send_internal_error(send)
    start, body = sent
    assert start["status"] == 500
    assert json.loads(body["body"]) == {"code": "internal", "error": "Internal error."}
