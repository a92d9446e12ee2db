"""Bounds on an inference request body, checked before any decoder recurses into it.

The body is already capped in bytes (``GatewayConfig.max_body_bytes``). Here: how deep arrays and
objects nest, and how many there are. A thousand levels once made the decoder raise RecursionError
(a 500, and a traceback in the log per request); now such a body is a 400 like any other bad input.
The check is linear and runs in C but for a walk over at most ``2 * max_containers`` brackets.
"""

from __future__ import annotations

from keyplane.domain.errors import InvalidArgument

MAX_DEPTH = 64
MAX_CONTAINERS = 100_000

_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_OPENERS = frozenset(b"[{")


def check_shape(
    body: bytes, *, max_depth: int = MAX_DEPTH, max_containers: int = MAX_CONTAINERS
) -> None:
    """Raise ``InvalidArgument`` if ``body`` nests deeper than ``max_depth`` or holds more than
    ``max_containers`` arrays and objects. Says nothing of whether it is valid JSON."""
    if body.count(b"[") + body.count(b"{") <= min(max_depth, max_containers):
        return  # the common case: too few containers to nest too deep or be too many
    # Escapes go first, left to right as JSON reads them (an escaped backslash before an escaped
    # quote), so no quote left is escaped; then all but brackets and quotes.
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    shape = unescaped.translate(None, _NOT_STRUCTURE)
    # With escapes gone, quotes alternate: every other piece between them is inside a string
    # (an unterminated string's tail included).
    brackets = b"".join(shape.split(b'"')[::2])
    if len(brackets) > 2 * max_containers:
        raise InvalidArgument(
            f"The request body holds more than {max_containers} arrays and objects."
        )
    depth = 0
    for byte in brackets:
        if byte in _OPENERS:
            depth += 1
            if depth > max_depth:
                raise InvalidArgument(
                    f"The request body nests arrays and objects deeper than {max_depth} levels."
                )
        else:
            depth -= 1
