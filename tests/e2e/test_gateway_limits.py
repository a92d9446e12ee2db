"""Rate limits end to end, with real time: qps/qpm windows, tpm, team × model limits, changes.

A module-wide stack (control plane, model server, one gateway) with a small catalog of its own:
``free`` has no team × model limits, so per-key limits are measured alone; ``tiny`` has a team ×
model limit of 5 requests a minute.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest

from tests.support.gateway import Key, Stack, Team, error_of

CATALOG = """
[[models]]
name = "free"
aliases = ["free-latest"]

[[models]]
name = "tiny"
aliases = ["tiny-latest"]
rpm = 5
"""

FREE_CHAT = ["api-key:endpoint:chat", "api-key:model:free"]
REQUEST_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
)
TOKEN_HEADERS = (
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


STACK_CONFIG = CATALOG


def chat_body(model: str = "free", prompt: str = "Count", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


def small(model: str = "free") -> dict[str, Any]:
    return chat_body(model, max_tokens=1)


def assert_429(response: httpx2.Response, *fragments: str, tokens: bool = False) -> str:
    status, code, message = error_of(response)
    assert (status, code) == (429, "resource-exhausted"), response.text
    retry_after = response.headers.get("retry-after")
    assert retry_after is not None
    assert retry_after.isdigit()
    assert int(retry_after) >= 1
    for name in TOKEN_HEADERS if tokens else REQUEST_HEADERS:
        assert name in response.headers, (name, dict(response.headers))
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- request limits under load ------------------------------------------------------------------


@dataclass
class LoadResult:
    #: (send, receive, status) of every request, times from time.monotonic().
    calls: list[tuple[float, float, int]] = field(default_factory=list)
    #: One refused answer, kept whole for its headers and body.
    refusal: httpx2.Response | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def admitted(self) -> list[tuple[float, float]]:
        return sorted((s, r) for s, r, status in self.calls if status == 200)

    def statuses(self) -> set[int]:
        return {status for _, _, status in self.calls}


def hammer(
    stack: Stack, key: Key, *, clients: int, seconds: float, per_client_max: int = 3000
) -> LoadResult:
    """``clients`` threads, each sending back-to-back requests until the deadline."""
    result = LoadResult()
    body = small()
    start = threading.Barrier(clients)

    def worker() -> None:
        calls: list[tuple[float, float, int]] = []
        with stack.client(key.secret) as client:
            client.get("/v1/api-key")  # connect before the clock starts
            start.wait(timeout=30)
            deadline = time.monotonic() + seconds
            for _ in range(per_client_max):
                sent = time.monotonic()
                if sent >= deadline:
                    break
                response = client.post("/v1/chat/completions", json=body)
                calls.append((sent, time.monotonic(), response.status_code))
                if response.status_code == 429 and result.refusal is None:
                    with result.lock:
                        result.refusal = result.refusal or response
        with result.lock:
            result.calls.extend(calls)

    with ThreadPoolExecutor(max_workers=clients) as pool:
        for future in [pool.submit(worker) for _ in range(clients)]:
            future.result()
    return result


def most_in_any_window(admitted: list[tuple[float, float]], window: float) -> int:
    """The most admissions provably inside one window: [send, recv] entirely in [t, t + window).

    The gateway admitted each request at some instant between its send and its receive, so a
    window holding more such intervals than the limit proves over-admission. Window starts are
    tried at every send and every receive time (the maximum is reached at some send time).
    """
    starts = sorted({t for pair in admitted for t in pair})
    best = 0
    for t in starts:
        inside = sum(1 for s, r in admitted if s >= t and r < t + window)
        best = max(best, inside)
    return best


@pytest.mark.slow
def test_qps_never_exceeded_in_any_second_and_nearly_reached(stack: Stack, team: Team) -> None:
    key = team.create_key(FREE_CHAT, qps=20)
    result = hammer(stack, key, clients=32, seconds=10.0)
    assert result.statuses() == {200, 429}, result.statuses()
    admitted = result.admitted()
    assert most_in_any_window(admitted, 1.0) <= 20
    # Over a 10 s run a sliding 1 s window admits 20 per second, plus at most one more window's
    # worth at the edge; under steady overload at least 95 % of 20 × 10.
    assert 190 <= len(admitted) <= 220, len(admitted)
    assert len(result.calls) > 2 * len(admitted), "the clients did not overload the key"

    assert result.refusal is not None
    message = assert_429(result.refusal, "qps limit exceeded: 20/20", key.redacted)
    assert message.startswith("Rate limit exceeded for API key")
    headers = result.refusal.headers
    assert headers["x-ratelimit-limit-requests"] == "20"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    reset = float(headers["x-ratelimit-reset-requests"].removesuffix("s"))
    assert 0 < reset <= 1.0
    assert int(headers["retry-after"]) == 1


@pytest.mark.slow
def test_qpm_never_exceeded_and_nearly_reached(stack: Stack, team: Team) -> None:
    key = team.create_key(FREE_CHAT, qpm=120)
    result = hammer(stack, key, clients=32, seconds=10.0)
    assert result.statuses() == {200, 429}, result.statuses()
    # Any 60 s window holds the whole run.
    assert 114 <= len(result.admitted()) <= 120, len(result.admitted())
    assert result.refusal is not None
    assert_429(result.refusal, "qpm limit exceeded: 120/120")
    assert result.refusal.headers["x-ratelimit-limit-requests"] == "120"
    assert 1 <= int(result.refusal.headers["retry-after"]) <= 60


# -- tpm ----------------------------------------------------------------------------------------


def remaining_tokens(response: httpx2.Response) -> int:
    assert response.headers["x-ratelimit-limit-tokens"] == "1000"
    return int(response.headers["x-ratelimit-remaining-tokens"])


def test_tpm_admits_until_the_charged_tokens_strictly_exceed_the_limit(
    stack: Stack, team: Team
) -> None:
    # A request limit that never bites, so that the 429 carries both header trios.
    key = team.create_key(FREE_CHAT, tpm="1000", qps=1000)
    charged = 0
    admitted = 0
    with stack.client(key.secret) as client:
        for _ in range(10):
            response = client.post("/v1/chat/completions", json=chat_body(max_tokens=280))
            if response.status_code != 200:
                break
            admitted += 1
            # Every earlier request's real usage has been charged before this one was admitted.
            assert remaining_tokens(response) == max(0, 1000 - charged)
            assert charged <= 1000, "admitted although the tokens charged exceeded tpm"
            usage = response.json()["usage"]
            assert usage["completion_tokens"] == 280
            charged += usage["total_tokens"]
        else:
            pytest.fail("tpm never refused a request")
    # Refused as soon as what was charged strictly exceeded 1000: 281, 562, 843, 1124 -> 4 in.
    assert charged > 1000
    assert admitted == 4
    message = assert_429(response, f"tpm limit exceeded: {charged}/1000", tokens=True)
    assert key.redacted in message
    for name in REQUEST_HEADERS:
        assert name in response.headers, name
    assert response.headers["x-ratelimit-limit-requests"] == "1000"
    assert response.headers["x-ratelimit-limit-tokens"] == "1000"
    assert response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert 55 <= int(response.headers["retry-after"]) <= 62


def test_a_stream_in_flight_is_not_cut_when_tpm_trips(stack: Stack, team: Team) -> None:
    key = team.create_key(FREE_CHAT, tpm="1000")
    events: list[tuple[float, str]] = []
    first_token = threading.Event()
    with stack.client(key.secret) as client:
        first = client.post("/v1/chat/completions", json=chat_body(max_tokens=900))
        assert first.status_code == 200, first.text
        charged = first.json()["usage"]["total_tokens"]
        assert charged <= 1000

        def stream() -> int:
            with (
                stack.client(key.secret) as streaming,
                streaming.stream(
                    "POST",
                    "/v1/chat/completions",
                    json=chat_body(max_tokens=100, stream=True),
                    headers={"x-keyplane-token-latency-ms": "20"},  # ~2 s of streaming
                ) as response,
            ):
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        events.append((time.monotonic(), line[5:].strip()))
                        if '"content":"' in line and '"content":""' not in line:
                            first_token.set()
                return response.status_code

        with ThreadPoolExecutor(max_workers=1) as pool:
            streaming = pool.submit(stream)
            assert first_token.wait(timeout=15), "the stream never started"
            # Something else finishes meanwhile and pushes the charged tokens over the limit.
            second = client.post("/v1/chat/completions", json=chat_body(max_tokens=200))
            assert second.status_code == 200, second.text
            charged += second.json()["usage"]["total_tokens"]
            refused = client.post("/v1/chat/completions", json=chat_body(max_tokens=1))
            refused_at = time.monotonic()
            assert_429(refused, f"tpm limit exceeded: {charged}/1000", tokens=True)
            assert streaming.result(timeout=30) == 200
    # The refusal came while the stream was still running, and the stream ran to its end.
    assert events[-1][1] == "[DONE]"
    assert events[-1][0] > refused_at
    chunks = [json.loads(data) for _, data in events[:-1]]
    tokens = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert len([t for t in tokens if t]) == 100
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


#: A plain answer, a stream that did not ask for usage, and one that did.
SHAPES: list[dict[str, Any]] = [
    {},
    {"stream": True},
    {"stream": True, "stream_options": {"include_usage": True}},
]


def test_an_answer_received_has_been_charged(stack: Stack, team: Team) -> None:
    """Once a client has a whole answer, its tokens count: the next request sees them.

    A key of tpm=100 per trial, one answer of ~200 tokens (plain, or streamed with or without
    usage requested), then at once another request: it must be refused. Streams of another key
    keep the gateway's event loop busy meanwhile, as real traffic would.
    """
    trials = 24
    acls = ["api-key:endpoint:*", "api-key:model:*"]
    keys = [team.create_key(acls, tpm="100", wait=False) for _ in range(trials)]
    team.wait_propagated(keys[-1].key_id)  # changes apply in revision order: all are there
    busy = team.create_key(acls)
    stop = threading.Event()

    def background() -> None:
        with stack.client(busy.secret) as client:
            for _ in range(1000):
                if stop.is_set():
                    return
                with client.stream(
                    "POST",
                    "/v1/chat/completions",
                    json=chat_body(max_tokens=50, stream=True),
                    headers={"x-keyplane-token-latency-ms": "1"},
                ) as response:
                    for _ in response.iter_lines():
                        pass

    over_admitted: list[tuple[int, dict[str, Any], int]] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        load = [pool.submit(background) for _ in range(2)]
        try:
            for i, key in enumerate(keys):
                shape = SHAPES[i % 3]
                with stack.client(key.secret) as client:
                    first = client.post(
                        "/v1/chat/completions", json=chat_body(max_tokens=200, **shape)
                    )
                    assert first.status_code == 200, first.text
                    second = client.post("/v1/chat/completions", json=small())
                    if second.status_code != 429:
                        over_admitted.append((i, shape, second.status_code))
        finally:
            stop.set()
            for future in load:
                future.result(timeout=30)
    assert over_admitted == []


# -- team × model -------------------------------------------------------------------------------


def test_team_model_limit_is_shared_by_the_team_s_keys(stack: Stack, team: Team) -> None:
    acls = ["api-key:endpoint:chat", "api-key:model:*"]
    # The first key also has a per-key limit, to see that team refusals do not count against it.
    keys = [team.create_key(acls, qpm=6), team.create_key(acls)]
    other = stack.new_team("other")
    try:
        outsider = other.create_key(acls)
        statuses: list[int] = []
        refusals: list[httpx2.Response] = []
        with stack.client() as client:
            for i in range(8):
                # Both keys, and the model by its name and by its alias: one counter.
                model = ("tiny", "tiny-latest")[i // 2 % 2]
                response = client.post(
                    "/v1/chat/completions", json=small(model), headers=keys[i % 2].auth
                )
                statuses.append(response.status_code)
                if response.status_code == 429:
                    refusals.append(response)
            # Five in a minute for the two keys together; both keys were refused afterwards.
            assert statuses == [200] * 5 + [429] * 3
            for response in refusals:
                assert_429(
                    response, f"Too many requests for team {team.team_id} and model tiny", "5/5"
                )
                assert response.headers["x-ratelimit-limit-requests"] == "5"
            # Another model of the same team is unaffected. The first key was admitted 3 times
            # and refused once by the team limit: that refusal recorded nothing in its qpm.
            free = [
                client.post("/v1/chat/completions", json=small("free"), headers=keys[0].auth)
                for _ in range(4)
            ]
            assert [r.status_code for r in free] == [200, 200, 200, 429]
            assert_429(free[-1], "qpm limit exceeded: 6/6", keys[0].redacted)
            # Another team on this model is unaffected.
            for _ in range(5):
                response = client.post(
                    "/v1/chat/completions", json=small("tiny"), headers=outsider.auth
                )
                assert response.status_code == 200, response.text
    finally:
        other.close()


# -- changes to a key's limits -----------------------------------------------------------------


def test_limit_changes_apply_with_the_revision_and_deletion_ends_access(
    stack: Stack, team: Team
) -> None:
    key = team.create_key(FREE_CHAT, qps=1000)
    with stack.client(key.secret) as client:
        before = [client.post("/v1/chat/completions", json=small()) for _ in range(10)]
        assert [r.status_code for r in before] == [200] * 10
        assert before[-1].headers["x-ratelimit-limit-requests"] == "1000"
        last_admitted = time.monotonic()

        team.update_key(key, "qps", qps=2)
        # The new limit counts admissions already recorded; let the last second of them age out.
        while time.monotonic() < last_admitted + 1.05:
            time.sleep(0.02)
        started = time.monotonic()
        burst = [client.post("/v1/chat/completions", json=small()) for _ in range(10)]
        elapsed = time.monotonic() - started
        statuses = [r.status_code for r in burst]
        # The first two fit the new limit; beyond them, at most 2 more per second the burst took
        # (on a fast machine the whole burst fits in one window: exactly 2 admitted).
        assert statuses[:2] == [200, 200]
        assert set(statuses) <= {200, 429}
        assert statuses.count(200) <= 2 * (int(elapsed) + 1), (statuses, elapsed)
        assert 429 in statuses
        assert burst[0].headers["x-ratelimit-limit-requests"] == "2"
        assert_429(burst[2], "qps limit exceeded: 2/2")

        team.delete_key(key)
        gone = client.post("/v1/chat/completions", json=small())
        status, code, message = error_of(gone)
        assert (status, code) == (400, "invalid-argument")
        assert message.startswith("Incorrect API key provided")


def test_refused_requests_do_not_count_against_the_window(stack: Stack, team: Team) -> None:
    key = team.create_key(FREE_CHAT, qps=2)
    with stack.client(key.secret) as client:
        calls: list[tuple[float, float, int]] = []
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and len(calls) < 5000:
            sent = time.monotonic()
            status = client.post("/v1/chat/completions", json=small()).status_code
            calls.append((sent, time.monotonic(), status))
            if status == 200 and len(calls) > 2:
                break
    statuses = [status for _, _, status in calls]
    assert statuses[:3] == [200, 200, 429]
    # Refused requests kept coming all along; had they been recorded, the window would never
    # have emptied. Admission resumes one second after the first admission.
    assert statuses[-1] == 200, "never admitted again"
    assert statuses[2:-1] == [429] * (len(statuses) - 3)
    assert len(statuses) > 10
    first_sent, first_recv, _ = calls[0]
    resumed_sent, resumed_recv, _ = calls[-1]
    assert resumed_recv >= first_sent + 1.0
    assert resumed_sent <= first_recv + 1.0 + 0.5
