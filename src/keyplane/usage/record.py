"""One usage record, how it is framed on the gateway's spool and on the wire, and what it costs.

Money: the catalog states prices in USD cents per 100 million tokens (and per image, in the same
unit). A record's ``cost`` is tokens × price, an integer in **1e-8 USD cents** (``COST_SCALE``
units per cent), so sums are exact on every engine and a dollar is ``10**10`` units.

A frame is ``<length u32 LE><crc32 u32 LE><msgpack payload>``: the length finds the next frame,
the checksum tells a torn tail (power loss, a process killed mid-copy) from a record. A length of
0 is never a record (a record's payload is at least its msgpack array's first byte): it is where
the data ends. The gateway's spool is a memory-mapped, zero-filled segment, and a zero header
would otherwise read as a valid empty frame, since ``crc32(b"") == 0``. Every frame any version
wrote has a nonzero length, so older spool files read the same.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from collections.abc import Iterator
from typing import Annotated

import msgspec

from keyplane.catalog import CatalogModel

#: Cost units per USD cent (prices are per 100 million tokens).
COST_SCALE = 100_000_000
#: Cost units per US dollar.
COST_PER_USD = 100 * COST_SCALE
#: A frame's header: its payload's length and crc32.
HEADER = _HEADER = struct.Struct("<II")
HEADER_SIZE = _HEADER.size
#: No single record is anywhere near this; a larger length is a torn or foreign frame.
MAX_FRAME = 4096


_Id = Annotated[str, msgspec.Meta(max_length=36)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=2**62)]


class UsageRecord(msgspec.Struct, array_like=True, frozen=True):
    """One finished inference request, as the gateway saw it. Bounds are checked on decode."""

    time_ms: _Count
    team_id: _Id
    api_key_id: _Id
    model: Annotated[str, msgspec.Meta(max_length=128)]
    endpoint: Annotated[str, msgspec.Meta(max_length=32)]
    status: Annotated[int, msgspec.Meta(ge=0, le=999)]
    prompt_tokens: _Count
    completion_tokens: _Count
    cost: _Count  # 1e-8 USD cents
    # Of ``cost``, what completion tokens and images were charged (the rest is the prompt's).
    # Trailing and defaulted: frames from gateways older than these fields still decode (their
    # whole cost counts as the prompt's).
    completion_cost: _Count = 0
    image_cost: _Count = 0


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(UsageRecord).decode


def frame(record: UsageRecord) -> bytes:
    payload = _encode(record)
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


#: A record's fields in ``UsageRecord``'s order, every one given.
RecordFields = tuple[int, str, str, str, str, int, int, int, int, int, int]
#: ``payload_into(fields, buffer)``: ``UsageRecord(*fields)``'s payload written over ``buffer``
#: (an array-like record is its fields' msgpack array): no record object or payload allocated
#: per call, the gateway's hot path reuses one buffer.
payload_into = msgspec.msgpack.Encoder().encode_into


def header_into(target: bytearray | mmap.mmap, offset: int, payload: bytearray) -> None:
    """Write ``payload``'s frame header at ``offset`` of ``target`` (the payload follows it)."""
    _HEADER.pack_into(target, offset, len(payload), zlib.crc32(payload))


def iter_frames(
    data: bytes | bytearray | memoryview, base: int = 0
) -> Iterator[tuple[int, int, bytes]]:
    """``(start, end, payload)`` of each whole, intact frame from the start of ``data``; stops at
    the first torn or damaged one, or at a zero length (zero fill: the end of what was written).
    Offsets are ``base`` plus the position in ``data``."""
    view = memoryview(data)
    position = 0
    while position + HEADER_SIZE <= len(view):
        length, crc = _HEADER.unpack_from(view, position)
        end = position + HEADER_SIZE + length
        if not 0 < length <= MAX_FRAME or end > len(view):
            return
        payload = bytes(view[position + HEADER_SIZE : end])
        if zlib.crc32(payload) != crc:
            return
        yield base + position, base + end, payload
        position = end


def frames_end(data: bytes | bytearray | mmap.mmap, start: int, stop: int) -> int:
    """Where the intact frames from ``start`` end (``stop`` at most): the used length of a spool
    segment, found without copying the frames out."""
    with memoryview(data) as view:
        good = start
        for _, end, _ in iter_frames(view[start:stop], start):
            good = end
    return good


def decode(payload: bytes) -> UsageRecord:
    return _decode(payload)


class Prices(msgspec.Struct, frozen=True):
    """A model's prices, as integers in cents per 100 million tokens (per image for images)."""

    prompt: int = 0
    completion: int = 0
    image: int = 0

    @classmethod
    def of(cls, model: CatalogModel) -> Prices:
        p = model.spec.prices

        def cents(value: str | None) -> int:
            return int(value) if value else 0

        return cls(
            cents(p.prompt_text_token_price),
            cents(p.completion_text_token_price),
            cents(p.image_price),
        )


def status_class(status: int) -> str:
    """The hosted API's status groups: ``2xx``, ``4xx``, ``429``, ``5xx``."""
    if status == 429:
        return "429"
    if status >= 500:
        return "5xx"
    if status >= 400:
        return "4xx"
    return "2xx"
