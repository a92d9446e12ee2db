"""Metering on the gateway's hot path: a ``Tally`` per request, one spool append when it ends.

The gateway creates a ``Tally`` for each request to a metered route and fills it as it learns
(key, model, status, tokens); ``Meter.finish`` turns it into a framed record and appends it to
the spool. That is all the hot path pays: an object, an encode and a copy into the spool's
memory map.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import msgspec
import structlog

from keyplane.catalog import CatalogModel
from keyplane.usage.record import Prices, payload_into
from keyplane.usage.spool import Spool

log = structlog.get_logger("keyplane.usage")


class Tally(msgspec.Struct, gc=False):
    """What one request did, as far as usage is concerned. A struct the garbage collector does
    not track (strings and numbers only), built in C: no Python call per request."""

    endpoint: str
    team_id: str = ""
    api_key_id: str = ""
    model: str = ""
    status: int = 200
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    finished: bool = False


class Meter:
    """Turns finished tallies into spooled records, priced from the catalog."""

    def __init__(self, spool: Spool, models: Iterable[CatalogModel]) -> None:
        self.spool = spool
        # (prompt, completion, image) prices by model: a tuple, no method call per record.
        prices = {m.name: Prices.of(m) for m in models}
        self._prices = {name: (p.prompt, p.completion, p.image) for name, p in prices.items()}
        self._payload = bytearray()
        self.failed = 0

    def finish(self, tally: Tally) -> None:
        tally.finished = True
        prompt_price, completion_price, image_price = self._prices.get(tally.model, _FREE)
        prompt, completion = tally.prompt_tokens, tally.completion_tokens
        completion_cost = completion * completion_price
        image_cost = tally.images * image_price
        payload = self._payload
        # The record's fields as ``UsageRecord`` orders them, ``cost`` the whole request's (the
        # part not in ``completion_cost`` or ``image_cost`` is the prompt's), encoded into one
        # reused buffer and framed in the spool's map: no record, payload or frame object.
        payload_into(
            (
                _time_ns() // 1_000_000,
                tally.team_id,
                tally.api_key_id,
                tally.model,
                tally.endpoint,
                tally.status,
                prompt,
                completion,
                prompt * prompt_price + completion_cost + image_cost,
                completion_cost,
                image_cost,
            ),
            payload,
        )
        try:
            self.spool.append_payload(payload)
        except OSError as error:
            # The request is answered already; count the loss loudly rather than fail it.
            self.failed += 1
            log.error("usage_spool_write_failed", error=str(error))


_FREE = (0, 0, 0)
_time_ns = time.time_ns
