"""The relay's stream path against a model of how it split and read events one by one: whatever
the events and wherever the upstream's reads cut them, the client gets the same bytes, the same
usage chunk is dropped, and the same tokens are charged and counted. (The relay reads only the
events whose ``"usage"`` is not null, counts events with ``bytes.count`` and sends the answer's
last events with its end when the upstream says the body is over.)"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import msgspec
from hypothesis import example, given, settings
from hypothesis import strategies as st

from keyplane.asgi import Message
from keyplane.gateway import accounting
from keyplane.gateway.accounting import Account
from keyplane.gateway.relay import Relay
from keyplane.usage.meter import Tally
from tests.unit.gateway.test_inference_upstream import Answer, FakeUpstream

EVENTS = [
    b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n',
    b'data: {"choices":[{"delta":{"content":"\\"usage\\":{}"}}],"usage":null}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}\n\n',
    b'data: {"choices":[{"delta":{}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n',
    b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n',
    b'data: {"type":"usage","usage":null}\n\n',
    b'data: {"usage":{"total_tokens":4},"usage":null}\n\n',
    b'data: {"usage": {"total_tokens": 9}}\n\n',
    b'data: {"usage":nul\n\n',
    b"event: response.completed\n"
    b'data: {"response":{"usage":{"input_tokens":2,"output_tokens":7}}}\n\n',
    b'event: response.created\ndata: {"response":{"usage":null}}\n\n',
    b"data: [DONE]\n\n",
    b"\n",
    b": keep-alive\n\n",
    b'data: {"choices":[]',
]


def _model(chunks: list[bytes], strip: bool) -> tuple[bytes, Account, list[int]]:
    """The relay as it was: each read's events split one by one at each blank line, each one
    read; charged once a read brings the final usage, or at the end."""
    account = Account(prompt_estimate=11)
    out: list[bytes] = []
    charged: list[int] = []
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while (end := buffer.find(b"\n\n")) >= 0:
            event, buffer = buffer[: end + 2], buffer[end + 2 :]
            if not (_read_event_model(account, event) and strip):
                out.append(event)
                account.events_sent += 1
        if account.final_usage and not charged:
            charged.append(account.tokens())
    if not charged:
        charged.append(account.tokens())
    return b"".join(out) + buffer, account, charged


def _read_event_model(account: Account, event: bytes) -> bool:
    """``Account.read_event`` without its shortcut for null usage: every event with "usage" in
    it decoded."""
    data = event.strip()
    if data.startswith(b"event:"):
        data = data.split(b"\n", 1)[-1].strip()
    parsed = None
    if b'"usage"' in event and data.startswith(b"data:"):
        with contextlib.suppress(msgspec.MsgspecError):
            parsed = accounting._event.decode(data[5:].strip())
    if parsed is None:
        return False
    usage = parsed.usage or (parsed.response and parsed.response.usage)
    if not usage:
        return False
    account.usage = usage
    account.final_usage = account.final_usage or not parsed.choices
    return not parsed.choices


async def _relay(
    chunks: list[bytes], strip: bool, knows_end: bool
) -> tuple[bytes, Account, list[int], int]:
    charged: list[int] = []

    async def charge(tokens: int) -> None:
        charged.append(tokens)

    account = Account(prompt_estimate=11, charge=charge)
    messages: list[Message] = []

    async def send(message: Message) -> None:
        messages.append(message)

    async def receive() -> Message:
        await asyncio.Event().wait()
        raise AssertionError

    relay = Relay(send, account, strip_usage=strip, extra_headers=[])
    upstream = FakeUpstream(Answer(chunks, stream=True, end_known=knows_end))
    await relay.run(upstream, "http://m/v1", b"{}", {}, receive)
    assert messages[0]["type"] == "http.response.start"
    bodies = messages[1:]
    assert all(m["more_body"] for m in bodies[:-1])
    assert not bodies[-1]["more_body"]
    return b"".join(m["body"] for m in bodies), account, charged, len(bodies)


@settings(max_examples=300, deadline=None)
@example(  # a blank line before the usage chunk: it is dropped with the chunk, as before
    events=[EVENTS[0], b"\n", EVENTS[2], EVENTS[11]], cuts=[], strip=True, knows_end=True
)
@example(events=[EVENTS[0], b"\n", EVENTS[2], b"\n"], cuts=[], strip=True, knows_end=True)
@given(
    events=st.lists(st.sampled_from(EVENTS), max_size=14),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
    strip=st.booleans(),
    knows_end=st.booleans(),
)
def test_stream_relayed_as_split_one_by_one(
    events: list[bytes], cuts: list[int], strip: bool, knows_end: bool
) -> None:
    data = b"".join(events)
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in itertools.pairwise(points) if b > a]
    sent, account, charged, _ = asyncio.run(_relay(list(chunks), strip, knows_end))
    want, model, model_charged = _model(chunks, strip)
    assert sent == want
    assert account.usage == model.usage
    assert account.final_usage == model.final_usage
    assert account.events_sent == model.events_sent
    assert charged == model_charged


def test_stream_end_sent_with_the_last_events() -> None:
    """An answer whose last read ends it: its last events and its end go out in one send."""
    chunks = [EVENTS[0] * 3, EVENTS[2] + EVENTS[11]]
    sent, account, charged, sends = asyncio.run(_relay(list(chunks), True, True))
    assert sent == EVENTS[0] * 3 + EVENTS[11]
    assert (sends, charged, account.events_sent) == (2, [8], 4)
    _, _, _, sends = asyncio.run(_relay(list(chunks), True, False))
    assert sends == 3  # not known to be over: the end on its own, as before


_counts = st.integers(min_value=0, max_value=10**9)


@settings(max_examples=200, deadline=None)
@given(
    usage=st.none()
    | st.builds(
        accounting.Usage,
        prompt_tokens=_counts,
        completion_tokens=_counts,
        total_tokens=_counts,
        input_tokens=_counts,
        output_tokens=_counts,
    ),
    events_sent=st.integers(min_value=0, max_value=1000),
    prompt_estimate=st.integers(min_value=0, max_value=10**6),
)
def test_settle_charges_the_same_metered_or_not(
    usage: accounting.Usage | None, events_sent: int, prompt_estimate: int
) -> None:
    """A metered request is charged what an unmetered one is (``tokens()``), and its record's
    prompt and completion tokens add up to that charge: the split is counted once."""
    charged: dict[str, int] = {}

    def account(label: str, tally: Tally | None) -> Account:
        async def charge(tokens: int) -> None:
            charged[label] = tokens

        result = Account(prompt_estimate=prompt_estimate, charge=charge, tally=tally)
        result.usage, result.events_sent = usage, events_sent
        return result

    tally = Tally("chat")
    plain, metered = account("plain", None), account("metered", tally)
    asyncio.run(plain.settle())
    asyncio.run(metered.settle())
    assert charged["metered"] == charged["plain"] == plain.tokens()
    assert tally.prompt_tokens + tally.completion_tokens == charged["plain"]
    assert (tally.prompt_tokens, tally.completion_tokens) == metered.token_counts()
