"""Running one gateway process: its data directory, identity, credential, replica and feed.

``keyplane serve gateway --cluster NAME [--replica N]`` lands here. The replica is loaded from
local disk before the port opens, so a restarted gateway enforces its last state at once.

With ``--workers N`` (``keyplane.gateway_workers``) each of the N processes is one of these: worker
0 in the gateway's directory under its id, worker ``i`` in ``<directory>/worker-<i>`` under
``<id>/worker-<i>`` with the gateway's credential — its own replica file, feed follower and usage
spool, and the cluster's limits in Redis (docs/architecture.md, "Gateway workers").
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import secrets
import socket
from pathlib import Path
from typing import Any

import structlog

from keyplane.asgi import Receive, Scope, Send
from keyplane.catalog import Catalog
from keyplane.gateway.app import Gateway, GatewayConfig
from keyplane.gateway.inference import Inference
from keyplane.gateway.replica import Replica, ReplicaStore
from keyplane.gateway.sync import FeedFollower
from keyplane.private_files import private_dir, write_private
from keyplane.propagation.wire import worker_id
from keyplane.ratelimit import (
    FailurePolicy,
    Limiter,
    MemoryLimiter,
    RedisLimiter,
    RedisLimiterSettings,
    ScaledWindows,
)
from keyplane.settings import Settings
from keyplane.usage.meter import Meter
from keyplane.usage.shipper import Shipper
from keyplane.usage.spool import Spool

log = structlog.get_logger("keyplane.gateway")

CREDENTIAL_FILE = "feed-credential"
CREDENTIAL_ENV = "KEYPLANE_GATEWAY_CREDENTIAL"
#: The cyclic collector's gen-0 threshold once started (see ``GatewayProcess._lifespan``).
GEN0_THRESHOLD = 10_000


def gateway_dir(settings: Settings, cluster: str, replica: int) -> Path:
    suffix = "" if replica == 0 else f"-{replica}"
    return settings.data_dir / "gateways" / f"{cluster}{suffix}"


def gateway_identity(directory: Path, cluster: str) -> str:
    """A stable id for this gateway, kept in its data directory across restarts."""
    path = directory / "gateway-id"
    if path.exists():
        return path.read_text().strip()
    identity = f"{cluster}/{socket.gethostname()}-{secrets.token_hex(4)}"
    write_private(path, identity + "\n")
    return identity


def worker_dir(directory: Path, worker: int) -> Path:
    """Where worker ``worker`` of the gateway kept in ``directory`` keeps its own files."""
    return directory if worker == 0 else directory / f"worker-{worker}"


def read_credential(directory: Path) -> str:
    value = os.environ.get(CREDENTIAL_ENV)
    if value:
        return value.strip()
    path = directory / CREDENTIAL_FILE
    if path.exists():
        return path.read_text().strip()
    raise SystemExit(
        f"no feed credential: set {CREDENTIAL_ENV} or write it to {path} "
        "(issue one with `keyplane admin clusters credential --cluster NAME`)"
    )


def write_credential(directory: Path, credential: str) -> None:
    write_private(directory / CREDENTIAL_FILE, credential + "\n")


def unshared_limits(settings: Settings, replica_index: int = 0, workers: int = 1) -> str | None:
    """Why this gateway may not start with in-memory limits (each process would enforce the
    full limit), or None. ``allow_unshared_replicas`` lifts it."""
    config = settings.limiter
    if config.backend != "memory" or config.allow_unshared_replicas:
        return None
    if workers > 1:
        return (
            f"--workers {workers} with in-memory limits would let each worker enforce the full "
            "limit; use limiter.backend = 'redis' (shared by the workers), or one worker"
        )
    if config.replicas > 1 or replica_index > 0:
        return (
            "several gateway replicas of one cluster with in-memory limits would each enforce "
            "the full limit; use limiter.backend = 'redis', or set limiter.allow_unshared_replicas"
        )
    return None


def make_limiter(
    settings: Settings, cluster: str, replica_index: int = 0, workers: int = 1
) -> Limiter:
    """The limiter of one gateway process. In-memory limits are refused for a second replica or
    worker of a cluster (``unshared_limits``). With Redis each of the ``workers`` processes counts
    as a replica (the ``local`` policies' share is ``limit // (replicas * workers)``)."""
    config = settings.limiter
    limiter: Limiter
    refused = unshared_limits(settings, replica_index, workers)
    if refused is not None:
        raise SystemExit(refused)
    if config.backend == "redis":
        limiter = RedisLimiter.from_url(
            config.redis_url,
            RedisLimiterSettings(
                policy=FailurePolicy(config.failure_policy),
                replicas=config.replicas * workers,
                # Limits count per cluster: clusters sharing one Redis must not share counters.
                prefix=f"keyplane:rl:{cluster}:",
                timeout=config.redis_timeout,
            ),
        )
    else:
        limiter = MemoryLimiter()
    if config.window_scale != 1.0:
        limiter = ScaledWindows(limiter, config.window_scale)
    return limiter


def shared_limiter(limiter: Limiter) -> RedisLimiter | None:
    """The Redis limiter inside ``limiter``, if any: what ``/healthz`` reports on."""
    if isinstance(limiter, ScaledWindows):
        limiter = limiter.inner
    return limiter if isinstance(limiter, RedisLimiter) else None


class GatewayProcess:
    """The ASGI app uvicorn runs: lifespan starts the feed follower; HTTP goes to the gateway."""

    def __init__(
        self,
        settings: Settings,
        cluster: str,
        replica_index: int = 0,
        *,
        worker: int = 0,
        workers: int = 1,
    ) -> None:
        settings.cluster(cluster)  # unknown cluster: KeyError before anything starts
        home = gateway_dir(settings, cluster, replica_index)
        self.directory = private_dir(worker_dir(home, worker))
        # Every worker speaks as the gateway (its credential binds to that id), under its own name.
        self.identity = worker_id(gateway_identity(home, cluster), worker)
        credential = read_credential(home)
        self.replica = Replica()
        self.store = ReplicaStore(self.directory / "replica.db")
        self.store.load_into(self.replica)
        self.follower = FeedFollower(
            control_urls=settings.feed_urls or [settings.control.url],
            credential=credential,
            gateway_id=self.identity,
            replica=self.replica,
            store=self.store,
            poll_wait=settings.feed_poll_seconds,
        )
        self.limiter = make_limiter(settings, cluster, replica_index, workers)
        shared = self.shared = shared_limiter(self.limiter)
        self.gateway = Gateway(
            GatewayConfig(
                cluster=cluster,
                api_key_prefix=settings.api_key_prefix,
                metrics_token=(
                    None
                    if settings.metrics_token is None
                    else settings.metrics_token.get_secret_value()
                ),
                forward_test_headers=settings.forward_test_headers,
            ),
            self.replica,
            is_synced=lambda: self.follower.connected,
            limiter_ok=lambda: shared is None or shared.available,
        )
        catalog = Catalog(settings)
        self.inference = Inference(
            self.gateway,
            catalog,
            self.limiter,
            upstream_timeout=settings.upstream_timeout,
        )
        # Usage: the hot path appends to the spool; the shipper sends it to the control plane.
        self.spool = Spool(self.directory / "usage")
        self.shipper = Shipper(
            self.spool,
            control_urls=settings.feed_urls or [settings.control.url],
            credential=credential,
            gateway_id=self.identity,
            interval=settings.usage.ship_interval,
        )
        if settings.usage.metering:
            self.gateway.meter = Meter(self.spool, catalog.models)
        self._task: asyncio.Task[None] | None = None
        self._shipping: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.gateway(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: Any = await receive()
            if message["type"] == "lifespan.startup":
                log.info("gateway_starting", gateway=self.identity, revision=self.replica.revision)
                await self.inference.start()
                if self.shared is not None:
                    await self.shared.start()  # meets Redis, starts its health probe
                self._task = asyncio.create_task(self.follower.run())
                self._shipping = asyncio.create_task(self.shipper.run())
                # What start-up built (modules, settings, the loaded replica) lives as long as the
                # process: out of the cyclic collector's sight, a full collection no longer walks
                # it (in process, with a fake upstream, GC time per request fell by two thirds).
                gc.collect()
                gc.freeze()
                # A request frees nearly all it allocates, but at the default gen-0 threshold
                # (700 allocations) requests in flight together crossed it about every 100
                # requests: a ~0.1 ms pause each that found little garbage, in the added p99.
                gc.set_threshold(GEN0_THRESHOLD, *gc.get_threshold()[1:])
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in (self._task, self._shipping):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                # What is left stays in the spool for next time if the control plane is away.
                await self.shipper.flush(within=2.0)
                self.spool.close()
                await self.inference.close()
                await self.limiter.aclose()
                self.store.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
