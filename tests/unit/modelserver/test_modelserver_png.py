"""The generated images are real PNGs: signature, IHDR, chunk CRCs, and pixel data that inflates."""

from __future__ import annotations

import struct
import zlib

import pytest

from keyplane.modelserver.png import (
    IMAGE_SIZE,
    PNG_SIGNATURE,
    colours_for,
    encode_png,
    image_for_prompt,
)


def parse_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes), checking everything a strict decoder would."""
    assert data[:8] == PNG_SIGNATURE
    pos = 8
    chunks: list[tuple[bytes, bytes]] = []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC on {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR"
    assert kinds[-1] == b"IEND"
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1]
    )
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = 1 + 3 * width
    assert len(raw) == height * stride
    rows = [raw[y * stride : (y + 1) * stride] for y in range(height)]
    assert all(row[0] == 0 for row in rows)  # filter type None on every scanline
    return width, height, [row[1:] for row in rows]


def test_generated_image_is_a_valid_png_of_the_advertised_size() -> None:
    width, height, rows = parse_png(image_for_prompt("a red fox in the snow"))
    assert (width, height) == (IMAGE_SIZE, IMAGE_SIZE)
    # The corners are the gradient's two end colours.
    start, end = colours_for("a red fox in the snow")
    assert tuple(rows[0][:3]) == start
    assert tuple(rows[-1][-3:]) == end


def test_images_are_deterministic_per_prompt_and_index() -> None:
    assert image_for_prompt("fox") == image_for_prompt("fox")
    assert image_for_prompt("fox") != image_for_prompt("dog")
    assert image_for_prompt("fox", 0) != image_for_prompt("fox", 1)


def test_encode_png_round_trips_arbitrary_pixels() -> None:
    rows = [bytes(range(y, y + 6)) for y in range(3)]
    assert parse_png(encode_png(2, 3, rows)) == (2, 3, rows)


def test_encode_png_rejects_rows_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="rows"):
        encode_png(2, 2, [b"\x00" * 6])
