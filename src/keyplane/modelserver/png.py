"""Tiny real PNG images, built with zlib and struct alone (no imaging library).

``/v1/images/generations`` answers with these: a diagonal two-colour gradient whose colours are
derived from the prompt, so the same prompt draws the same picture and a client can decode it.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from functools import lru_cache
from typing import Final

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
IMAGE_SIZE: Final = 64
"""Images are always IMAGE_SIZE × IMAGE_SIZE: a real picture, kept small so responses stay cheap."""


def _chunk(kind: bytes, data: bytes) -> bytes:
    # A PNG chunk is length, type, data, then the CRC of type+data.
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(width: int, height: int, rows: list[bytes]) -> bytes:
    """An 8-bit RGB PNG from ``height`` rows of ``3 * width`` bytes each."""
    if len(rows) != height or any(len(row) != 3 * width for row in rows):
        raise ValueError("rows must be height rows of 3*width bytes")
    # Colour type 2 (truecolour), bit depth 8, default compression/filter, no interlace.
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    # Every scanline starts with its filter type; 0 (None) keeps the encoder trivial.
    raw = b"".join(b"\x00" + row for row in rows)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def colours_for(prompt: str, index: int = 0) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The gradient's two end colours: a stable function of the prompt and the image's index."""
    d = hashlib.blake2b(f"{index}\x00{prompt}".encode("utf-8", "surrogatepass"), digest_size=6)
    b = d.digest()
    return (b[0], b[1], b[2]), (b[3], b[4], b[5])


@lru_cache(maxsize=256)
def image_for_prompt(prompt: str, index: int = 0, size: int = IMAGE_SIZE) -> bytes:
    """The PNG for ``prompt``; ``index`` tells apart the ``n`` images of one request."""
    (r0, g0, b0), (r1, g1, b1) = colours_for(prompt, index)
    span = max(2 * (size - 1), 1)
    # One colour per diagonal (x + y); a row is then a window onto that palette.
    palette = b"".join(
        bytes(
            (
                r0 + (r1 - r0) * k // span,
                g0 + (g1 - g0) * k // span,
                b0 + (b1 - b0) * k // span,
            )
        )
        for k in range(2 * size - 1)
    )
    rows = [palette[3 * y : 3 * (y + size)] for y in range(size)]
    return encode_png(size, size, rows)
