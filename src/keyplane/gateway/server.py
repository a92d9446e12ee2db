"""Running one gateway process: its data directory, identity, credential, replica and feed.

``keyplane serve gateway --cluster NAME [--replica N]`` lands here. The replica is loaded from
local disk before the port opens, so a restarted gateway enforces its last state at once.
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
from keyplane.private_files import write_private
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


def make_limiter(settings: Settings, cluster: str, replica_index: int = 0) -> Limiter:
    """The limiter of one gateway. In-memory limits are refused for a second replica of a
    cluster (each would enforce the full limit) unless ``allow_unshared_replicas``."""
    config = settings.limiter
    limiter: Limiter
    if config.backend == "redis":
        limiter = RedisLimiter.from_url(
            config.redis_url,
            RedisLimiterSettings(
                policy=FailurePolicy(config.failure_policy),
                replicas=config.replicas,
                # Limits count per cluster: clusters sharing one Redis must not share counters.
                prefix=f"keyplane:rl:{cluster}:",
                timeout=config.redis_timeout,
            ),
        )
    elif (config.replicas > 1 or replica_index > 0) and not config.allow_unshared_replicas:
        raise SystemExit(
            "several gateway replicas of one cluster with in-memory limits would each enforce "
            "the full limit; use limiter.backend = 'redis', or set limiter.allow_unshared_replicas"
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

    def __init__(self, settings: Settings, cluster: str, replica_index: int = 0) -> None:
        settings.cluster(cluster)  # unknown cluster: KeyError before anything starts
        self.directory = gateway_dir(settings, cluster, replica_index)
        self.identity = gateway_identity(self.directory, cluster)
        credential = read_credential(self.directory)
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
        self.limiter = make_limiter(settings, cluster, replica_index)
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
