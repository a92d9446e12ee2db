"""What every route of the model server shares: its error (OpenAI's shape), the reply a handler
returns, and the checks of request parameters that answer OpenAI's 400s.

A handler is a function of the request body that returns a ``Reply`` or raises ``HTTPError``; the
app (:mod:`keyplane.modelserver.app`) delivers either, paced and watched
(:mod:`keyplane.modelserver.delivery`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import msgspec

__all__ = [
    "HTTPError",
    "Reply",
    "decode",
    "encode",
    "failure",
    "not_allowed",
    "one_of",
    "require_model",
    "split_inputs",
    "unknown_url",
    "within",
]

_T = TypeVar("_T")
_AT_PATH: Final = re.compile(r"at `\$\.([^`\[]+)")

encode = msgspec.json.Encoder().encode


class HTTPError(Exception):
    """An error answer in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = headers or []

    def body(self) -> bytes:
        return encode(
            {
                "error": {
                    "message": self.message,
                    "type": self.error_type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )


def not_allowed(method: str, path: str, allow: bytes) -> HTTPError:
    return HTTPError(
        405,
        f"Method {method} is not allowed for {path}.",
        code="method_not_allowed",
        headers=[(b"allow", allow)],
    )


def unknown_url(method: str, path: str) -> HTTPError:
    return HTTPError(404, f"Unknown request URL: {method} {path}.", code="unknown_url")


def failure(status: int) -> HTTPError:
    """The error an ``x-keyplane-fail-status`` header asks for, typed the way OpenAI types it."""
    if status == 429:
        return HTTPError(
            429,
            "Rate limit reached (injected by x-keyplane-fail-status).",
            error_type="requests",
            code="rate_limit_exceeded",
        )
    if status >= 500:
        return HTTPError(
            status,
            "The server had an error (injected by x-keyplane-fail-status).",
            error_type="server_error",
        )
    return HTTPError(status, "Request failed (injected by x-keyplane-fail-status).")


@dataclass(slots=True)
class Reply:
    """What a handler decided to answer; the app delivers it, paced and watched.

    Exactly one of ``body`` (a whole JSON document) and ``chunks`` (a stream) is set. Each chunk
    comes with a flag saying whether it carries a generated token, i.e. is paced by token latency.
    """

    body: bytes | None = None
    chunks: Iterable[tuple[bytes, bool]] | None = None
    status: int = 200


def decode(body: bytes, decoder: msgspec.json.Decoder[_T]) -> _T:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        found = _AT_PATH.search(str(exc))
        raise HTTPError(
            400, f"Invalid request body: {exc}", param=found.group(1) if found else None
        ) from None
    except msgspec.DecodeError:
        raise HTTPError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        ) from None


def require_model(model: str) -> None:
    if not model:
        raise HTTPError(400, "you must provide a model parameter", param="model")


def within(value: int, top: int, param: str) -> int:
    """``value`` if it lies in 1..``top``, else OpenAI's 400 for that parameter."""
    if not 1 <= value <= top:
        raise HTTPError(
            400,
            f"Invalid '{param}': must be between 1 and {top}.",
            param=param,
            code="invalid_value",
        )
    return value


def one_of(value: str, allowed: tuple[str, ...], param: str) -> str:
    if value not in allowed:
        expected = " or ".join(f"'{a}'" for a in allowed)
        raise HTTPError(
            400, f"Invalid '{param}': expected {expected}.", param=param, code="invalid_value"
        )
    return value


def _is_token_array(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def split_inputs(value: Any, param: str) -> list[str | list[int]]:
    """OpenAI's polymorphic ``prompt``/``input``: a string, strings, token ids, or lists of ids."""
    invalid = HTTPError(
        400, f"'$.{param}' is invalid. Please check the API reference.", param=param
    )
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise invalid
    if all(isinstance(v, str) for v in value):
        return list(value)
    if _is_token_array(value):
        return [value]
    if all(_is_token_array(v) for v in value):
        return list(value)
    raise invalid
