"""Chaos on the production layout: what the clients saw, recorded for the invariants.

``Load`` sends inference requests from many keys through every gateway replica; ``Mutator``
creates, updates, rotates and deletes keys through either control plane, retrying each change
until it is acknowledged, as a careful client would; ``LimiterWatch`` finds every stretch a
gateway replica spent on its Redis failure policy. Each keeps its own record; the test judges.
"""

from __future__ import annotations

import bisect
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2

from tests.support.load import metric
from tests.support.procs import OPERATOR, wait_for
from tests.support.trial import Trial

WILDCARD = ["api-key:endpoint:*", "api-key:model:*"]
#: A model without team x model limits, so that a key's own limit is the only one.
CHAT = {"model": "grok-3-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def error_kind(error: BaseException) -> str:
    return type(error).__name__


def unanswered_may_be_served(kind: str) -> bool:
    """A request that failed this way may have reached its server (only a refused connection
    certainly did not)."""
    return kind not in ("ConnectError", "ConnectTimeout")


@dataclass(frozen=True, slots=True)
class Hit:
    """One inference request as its client saw it (``status`` -1: no answer, see ``error``)."""

    key: int
    gateway: str
    sent: float
    received: float
    status: int
    error: str = ""


class Load:
    """``clients`` threads, client i on gateway i mod n, each request on a key drawn from a
    seeded random; bounded by ``max_requests`` and by ``stop()``."""

    def __init__(
        self,
        gateways: dict[str, str],
        secrets: Sequence[str],
        *,
        clients: int,
        seed: int,
        max_requests: int = 40_000,
    ) -> None:
        self.gateways, self.secrets = gateways, list(secrets)
        self.hits: list[Hit] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._budget = max_requests
        names = list(gateways)
        self._threads = [
            threading.Thread(target=self._client, args=(names[i % len(names)], seed + i))
            for i in range(clients)
        ]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Hit]:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=30)
        return self.hits

    def _take(self) -> bool:
        with self._lock:
            self._budget -= 1
            return self._budget >= 0

    def _client(self, name: str, seed: int) -> None:
        rng = random.Random(seed)
        mine: list[Hit] = []
        with httpx2.Client(base_url=self.gateways[name], timeout=10) as http:
            while not self._stopping.is_set() and self._take():
                key = rng.randrange(len(self.secrets))
                auth = {"Authorization": f"Bearer {self.secrets[key]}"}
                sent = time.monotonic()
                try:
                    status = http.post("/v1/chat/completions", json=CHAT, headers=auth).status_code
                    error = ""
                except httpx2.HTTPError as failure:
                    status, error = -1, error_kind(failure)
                mine.append(Hit(key, name, sent, time.monotonic(), status, error))
                if status == -1:
                    self._stopping.wait(0.05)  # the replica is down: a client's pause, no spin
        with self._lock:
            self.hits.extend(mine)


def most_in_a_window(
    hits: Sequence[Hit], window: float, bound: Callable[[float, float], int]
) -> list[tuple[float, int, int]]:
    """Every window [t, t + window) starting at an admitted send time whose 200s, counted only
    when their whole [sent, received] lies inside it (so certainly admitted in it), exceed
    ``bound(t, t + window)``: (t, admitted, bound)."""
    admitted = sorted((h.sent, h.received) for h in hits if h.status == 200)
    sends = [s for s, _ in admitted]
    over = []
    for i, (start, _) in enumerate(admitted):
        end = start + window
        stop = bisect.bisect_left(sends, end)
        inside = sum(1 for _, received in admitted[i:stop] if received < end)
        limit = bound(start, end)
        if inside > limit:
            over.append((start, inside, limit))
    return over


class LimiterWatch(threading.Thread):
    """Polls each gateway replica's limiter transition counters, to find every stretch a replica
    may have spent on its failure policy (the Redis faults, and any slow reply on a loaded
    machine). Counters that moved between two reads of one process, or a replica down on Redis
    now, make the span from the start of the earlier read to the end of the later one a stretch,
    widened by ``timeout`` (a decision may wait that long before switching). A replica restarted
    in between (another process start time): its old process's span ends where its port was
    first found closed, and its new process is judged by its own counters."""

    def __init__(self, urls: Sequence[str], timeout: float) -> None:
        super().__init__(daemon=True)
        self.urls, self.timeout = list(urls), timeout
        self.stopping = threading.Event()
        self.stretches: list[tuple[float, float]] = []

    def _read(self, url: str) -> tuple[float, float, float] | str:
        """(process start time, transitions down, transitions up), or the error's kind."""
        try:
            page = httpx2.get(url + "/metrics", headers=OPERATOR, timeout=5).text
        except httpx2.HTTPError as failure:
            return error_kind(failure)
        return (
            metric(page, "process_start_time_seconds"),
            metric(page, 'keyplane_ratelimit_transitions_total{to="down"}'),
            metric(page, 'keyplane_ratelimit_transitions_total{to="up"}'),
        )

    def run(self) -> None:
        started = time.monotonic()
        last: dict[str, tuple[float, tuple[float, float, float]]] = {}
        closed: dict[str, float] = {}  # when the port was first found closed since the last read
        while True:
            for url in self.urls:
                began = time.monotonic()
                now = self._read(url)
                at = time.monotonic()
                if isinstance(now, str):
                    if now == "ConnectError":
                        closed.setdefault(url, at)
                    continue
                since, before = last.get(url, (started, (now[0], 0.0, 0.0)))
                if now[0] != before[0]:  # a new process: the old one's span, then its own
                    died = closed.get(url, at)
                    self.stretches.append((since - self.timeout, died))
                    if now[1:] != (0.0, 0.0):
                        self.stretches.append((died - self.timeout, at))
                elif now != before or now[1] > now[2]:
                    self.stretches.append((since - self.timeout, at))
                last[url] = (began, now)
                closed.pop(url, None)
            if self.stopping.wait(0.1):
                return

    def overlaps(self, start: float, end: float) -> bool:
        return any(start < hi and end > lo for lo, hi in self.stretches)


@dataclass
class Expected:
    """What the acknowledged mutations of one key left: the test's model of the store."""

    key_id: str
    secret: str
    name: str
    qps: int
    deleted: bool = False
    acks: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One Management API request as its client saw it (``status`` -1: no answer)."""

    op: str
    control: int
    sent: float
    received: float
    status: int
    error: str = ""


class Mutator(threading.Thread):
    """Changes keys through either control plane, each change retried (the same request; an
    Idempotency-Key on creates) until a control plane acknowledges it, within ``patience``."""

    def __init__(
        self,
        control_urls: Sequence[str],
        secret: str,
        team: str,
        *,
        seed: int,
        patience: float = 60.0,
        max_keys: int = 12,
    ) -> None:
        super().__init__(daemon=True)
        self.urls, self.team, self.patience, self.max_keys = (
            list(control_urls),
            team,
            patience,
            max_keys,
        )
        self.rng = random.Random(seed)
        self.auth = {"Authorization": f"Bearer {secret}"}
        self.keys: dict[str, Expected] = {}
        self.attempts: list[Attempt] = []
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        self._made = 0

    def run(self) -> None:
        try:
            with httpx2.Client(timeout=10) as http:
                while not self.stopping.is_set():
                    self._one(http)
                    self.stopping.wait(self.rng.uniform(0.05, 0.3))  # a client's pace
        except BaseException as failure:  # handed to the test by finish()
            self.failure = failure

    def finish(self) -> dict[str, Expected]:
        self.stopping.set()
        self.join(timeout=self.patience + 30)
        if self.failure is not None:
            raise self.failure
        return self.keys

    def acknowledged(self) -> int:
        return sum(len(k.acks) for k in self.keys.values())

    def _one(self, http: httpx2.Client) -> None:
        live = [k for k in self.keys.values() if not k.deleted]
        if len(live) < 3 or (len(live) < self.max_keys and self.rng.random() < 0.3):
            self._create(http)
            return
        key = self.rng.choice(live)
        op = self.rng.choices(["update", "rotate", "delete"], weights=[5, 3, 1])[0]
        if op == "update":
            name, qps = f"{key.name.split('~')[0]}~{len(key.acks)}", self.rng.randint(1, 500)
            body = {"apiKey": {"name": name, "qps": qps}, "fieldMask": "name,qps"}
            self._send(http, "update", "PUT", f"/auth/api-keys/{key.key_id}", body)
            key.name, key.qps = name, qps
        elif op == "rotate":
            answer = self._send(http, "rotate", "POST", f"/auth/api-keys/{key.key_id}/rotate", {})
            key.secret = answer["apiKey"]
        else:
            self._send(http, "delete", "DELETE", f"/auth/api-keys/{key.key_id}", None)
            key.deleted = True
        key.acks.append(op)

    def _create(self, http: httpx2.Client) -> None:
        self._made += 1
        name, qps = f"chaos-{self._made}", self.rng.randint(1, 500)
        body = {"name": name, "acls": WILDCARD, "qps": qps}
        answer = self._send(
            http,
            "create",
            "POST",
            f"/auth/teams/{self.team}/api-keys",
            body,
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        key = Expected(answer["apiKeyId"], answer["apiKey"], name, qps, acks=["create"])
        self.keys[key.key_id] = key

    def _send(
        self,
        http: httpx2.Client,
        op: str,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """The answer of the first control plane to acknowledge; a DELETE answered 404 after an
        attempt that got no answer was acknowledged by that attempt."""
        deadline = time.monotonic() + self.patience
        control = self.rng.randrange(len(self.urls))
        unanswered = False
        while True:
            sent = time.monotonic()
            try:
                response = http.request(
                    method,
                    self.urls[control] + path,
                    json=body,
                    headers={**self.auth, **(headers or {})},
                )
            except httpx2.HTTPError as failure:
                self.attempts.append(
                    Attempt(op, control, sent, time.monotonic(), -1, error_kind(failure))
                )
                unanswered = unanswered or unanswered_may_be_served(error_kind(failure))
            else:
                self.attempts.append(
                    Attempt(op, control, sent, time.monotonic(), response.status_code)
                )
                if response.status_code == 200:
                    return response.json()
                if op == "delete" and response.status_code == 404 and unanswered:
                    return None
                if response.status_code < 500:
                    raise AssertionError((op, path, response.status_code, response.text))
                unanswered = True  # a 5xx may come after the commit (an answer lost)
            assert time.monotonic() < deadline, f"{op} {path} unacknowledged for {self.patience}s"
            control = (control + 1) % len(self.urls)  # the other control plane next
            time.sleep(0.1)  # a client's backoff between attempts


#: The kinds of fault, and what "back" means for each: a process serving again, a store usable.
FAULT_KINDS = ("control plane", "gateway replica", "Redis", "PostgreSQL")


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    target: str
    killed: float
    back: float  # serving again: its health check, or (stores) its clients use it again

    @property
    def downtime(self) -> float:
        return self.back - self.killed


def postgres_answers(trial: Trial) -> bool:
    import psycopg

    try:
        with psycopg.connect(
            host="127.0.0.1",
            port=trial.pg_port,
            user="postgres",
            dbname="keyplane",
            connect_timeout=2,
        ) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def healthy(url: str) -> dict[str, Any] | None:
    response = httpx2.get(url + "/healthz", timeout=5)
    return dict(response.json()) if response.status_code == 200 else None


def kill_and_recover(trial: Trial, kind: str, rng: random.Random) -> Fault:
    """SIGKILL one child of ``kind`` (which one drawn from ``rng``), let the supervisor restart
    it, and wait until it serves again."""
    sup = trial.supervised
    if kind == "control plane":
        index = rng.randrange(len(trial.ports.control))
        target, url = f"control plane {index}", trial.control_url(index)
    elif kind == "gateway replica":
        target = rng.choice(sorted(trial.gateways))
        url = trial.gateways[target]
    else:
        target, url = kind, ""
    killed = time.monotonic()
    old = sup.kill(target)
    sup.wait_restarted(target, old, timeout=90)
    if kind == "Redis":
        urls = list(trial.gateways.values())
        wait_for(
            lambda: all((healthy(u) or {}).get("limiter") == "ok" for u in urls),
            timeout=60,
            what="every gateway back on Redis",
        )
    elif kind == "PostgreSQL":
        wait_for(lambda: postgres_answers(trial), timeout=90, what="PostgreSQL answering")
    else:
        wait_for(lambda: healthy(url), timeout=90, what=f"{target} serving")
    return Fault(kind, target, killed, time.monotonic())
