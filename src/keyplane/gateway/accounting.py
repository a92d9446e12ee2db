"""What a request costs, and where it is written down: its tokens, charged to the ``tpm`` limits
that admitted it, and its usage record, handed to the meter (``keyplane.usage.meter``).

Tokens are read from the upstream's own ``usage`` (a whole answer's, or a stream's usage event);
a stream cut short before it is charged what the client received, the prompt estimated from the
body's size. Every call to the meter is in this module: ``Account.ending`` records a relayed
request as its answer's last bytes are about to go out, ``close`` records any other (refused, cut
short, or answered by the gateway itself) — each sender on a metered route calls one of them
before its last bytes, nothing wraps ``send``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from keyplane.usage.meter import Meter, Tally

__all__ = ["Account", "Usage", "close"]


class Usage(msgspec.Struct):
    """An upstream's ``usage``: chat and completions' names, or the Responses API's."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        if self.total_tokens:
            return self.total_tokens
        return self.prompt_tokens + self.completion_tokens + self.input_tokens + self.output_tokens


class _WithUsage(msgspec.Struct):
    usage: Usage | None = None


class _StreamEvent(msgspec.Struct):
    usage: Usage | None = None
    choices: list[Any] | None = None
    response: _WithUsage | None = None


_with_usage = msgspec.json.Decoder(_WithUsage)
_event = msgspec.json.Decoder(_StreamEvent)


class Account:
    """One forwarded request's tokens: counted from what the upstream says, charged once."""

    __slots__ = (
        "_charge",
        "_settled",
        "events_sent",
        "final_usage",
        "meter",
        "prompt_estimate",
        "tally",
        "usage",
    )

    def __init__(
        self,
        *,
        prompt_estimate: int,
        charge: Callable[[int], Awaitable[None]] | None = None,
        tally: Tally | None = None,
        meter: Meter | None = None,
    ) -> None:
        self.prompt_estimate = prompt_estimate
        #: The request's usage record, and where it goes (both or neither: metering is on).
        self.tally = tally
        self.meter = meter
        self.usage: Usage | None = None
        #: Stream events relayed to the client.
        self.events_sent = 0
        #: The stream's total usage has been seen (not a running count).
        self.final_usage = False
        self._charge = charge
        self._settled = False

    def tokens(self) -> int:
        if self.usage is not None:
            return self.usage.total
        if self.events_sent:
            # Cut short before the usage chunk: charge what the client received, the prompt
            # estimated from the body's size.
            return self.prompt_estimate + self.events_sent
        return 0

    def token_counts(self) -> tuple[int, int]:
        """``tokens()`` split into (prompt, completion): what usage records are charged."""
        usage = self.usage
        if usage is None:
            if self.events_sent:
                return self.prompt_estimate, self.events_sent
            return 0, 0
        prompt = usage.prompt_tokens + usage.input_tokens
        completion = usage.completion_tokens + usage.output_tokens
        total = usage.total
        if prompt + completion != total:  # only a total, or parts that disagree with it
            completion = min(completion, total)
            prompt = total - completion
        return prompt, completion

    async def settle(self) -> None:
        """Charge the call's tokens, once.

        Called as soon as the final usage is known, before the client can see the end of the
        answer (a client that got its answer and sends the next request must find it charged),
        and again when the call ends, for calls cut short before that.
        """
        if self._settled:
            return
        self._settled = True
        tally = self.tally
        if tally is None:
            if self._charge is not None:
                await self._charge(self.tokens())
            return
        # Metered: the split is counted once, and its sum is what ``tokens()`` would say.
        prompt, completion = tally.prompt_tokens, tally.completion_tokens = self.token_counts()
        if self._charge is not None:
            await self._charge(prompt + completion)

    def started(self, status: int) -> None:
        """The answer's head goes out with ``status``: what the request is metered with, also
        if it is cut short before ``ending``."""
        if self.tally is not None:
            self.tally.status = status

    def ending(self, status: int) -> None:
        """The answer (head sent with ``status``) is about to send its last bytes: record the
        request's usage now, so a client that has its whole answer has been counted even if the
        gateway dies right after. Once: a no-op if it is recorded already."""
        tally, meter = self.tally, self.meter
        if tally is not None and meter is not None and not tally.finished:
            tally.status = status
            meter.finish(tally)

    def read_whole(self, data: bytes) -> None:
        """Take the usage of a whole (successful) answer."""
        if b'"usage"' in data:
            try:
                self.usage = _with_usage.decode(data).usage
            except msgspec.MsgspecError:
                self.usage = None
        if self.tally is not None and self.tally.endpoint == "image":
            # Priced per image (usage.record.Prices): one "b64_json" or "url" field each.
            self.tally.images = data.count(b'"b64_json"') + data.count(b'"url"')

    def read_event(self, event: bytes) -> bool:
        """Take the usage a stream event carries; True if it is the stream's total with no
        choices (the usage chunk a client that did not ask for usage must not see)."""
        occurrences = event.count(b'"usage"')
        if not occurrences or occurrences == event.count(b'"usage":null'):
            return False  # none, or all null (OpenAI's chunks before the last): nothing to read
        data = event.strip()
        if data.startswith(b"event:"):  # Responses API: "event: name\ndata: {...}"
            data = data.split(b"\n", 1)[-1].strip()
        if not data.startswith(b"data:"):
            return False
        try:
            parsed = _event.decode(data[5:].strip())
        except msgspec.MsgspecError:
            return False
        usage = parsed.usage or (parsed.response.usage if parsed.response else None)
        if usage is None:
            return False
        self.usage = usage
        # Usage in an event without choices is the stream's total (a chat or completions usage
        # chunk, or a Responses API terminal event), not a running count.
        total = not parsed.choices
        self.final_usage = self.final_usage or total
        return total


def close(tally: Tally | None, meter: Meter | None) -> None:
    """Record a request that did not end through ``Account.ending`` (refused, cut short, or
    answered by the gateway itself: call it before that answer goes out), once."""
    if tally is not None and meter is not None and not tally.finished:
        meter.finish(tally)
