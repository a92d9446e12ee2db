"""Deterministic embedding vectors and their two wire encodings (JSON floats and base64).

A vector is a pure function of ``(model, input, dimensions)``: pseudo-random components from an
extendable-output hash, normalised to unit length. Components are rounded to float32 *before*
leaving this module, so ``encoding_format="float"`` and ``"base64"`` carry exactly the same numbers.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import sys
from array import array
from collections.abc import Sequence
from typing import Final

MAX_DIMENSIONS: Final = 8192

_TO_UNIT: Final = 2.0 / 4294967296.0  # maps a uint32 onto [0, 2)


def embed(model: str, text: str, dimensions: int) -> list[float]:
    """A unit-norm vector of ``dimensions`` float32-exact components for ``text``."""
    return _vector(
        b"t\x00" + model.encode() + b"\x00" + text.encode("utf-8", "surrogatepass"), dimensions
    )


def embed_token_ids(model: str, ids: Sequence[int], dimensions: int) -> list[float]:
    """The vector for an input given as token ids (OpenAI accepts those in place of text)."""
    material = b"i\x00" + model.encode() + b"\x00" + ",".join(map(str, ids)).encode()
    return _vector(material, dimensions)


def _vector(material: bytes, dimensions: int) -> list[float]:
    if not 1 <= dimensions <= MAX_DIMENSIONS:
        raise ValueError(f"dimensions must be in 1..{MAX_DIMENSIONS}, got {dimensions}")
    # shake_256 gives as many bytes as asked in one C call; far cheaper than a Python PRNG loop.
    raw = hashlib.shake_256(material + dimensions.to_bytes(4, "little")).digest(4 * dimensions)
    comps = [u * _TO_UNIT - 1.0 for u in struct.unpack(f"<{dimensions}I", raw)]
    norm = math.sqrt(math.fsum(c * c for c in comps)) or 1.0
    # array("f") rounds to float32; tolist() gives those values back as Python floats.
    return array("f", [c / norm for c in comps]).tolist()


def to_base64(vector: Sequence[float]) -> str:
    """OpenAI's ``encoding_format="base64"``: the little-endian float32 bytes, base64-encoded."""
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def from_base64(encoded: str) -> list[float]:
    """The inverse of :func:`to_base64`, for tests and clients that want floats back."""
    unpacked = array("f")
    unpacked.frombytes(base64.b64decode(encoded))
    if sys.byteorder != "little":
        unpacked.byteswap()
    return unpacked.tolist()
