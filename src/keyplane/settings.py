"""One ``Settings`` object, built once at start and passed down explicitly.

Sources, strongest first: keyword arguments, environment variables (``KEYPLANE_...``, nested with
``__``, e.g. ``KEYPLANE_CONTROL__PORT=9000``), the TOML file named by ``KEYPLANE_CONFIG`` (or
``--config``), then the built-in defaults. With no file at all the defaults describe a working
deployment: SQLite under ``./.keyplane``, two local clusters, and a catalog of built-in models.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ModelKind = Literal["language", "image", "embedding"]
Modality = Literal["TEXT", "IMAGE", "EMBEDDING"]


class Endpoint(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class ClusterSettings(BaseModel):
    """One inference cluster: its public name and host, and where its gateway listens."""

    name: str
    host: str
    gateway: Endpoint


class Prices(BaseModel):
    prompt_text_token_price: str | None = None
    completion_text_token_price: str | None = None
    image_price: str | None = None


class ModelSettings(BaseModel):
    """A model of the catalog: what teams see in ListModels and where gateways forward it."""

    name: str
    kind: ModelKind = "language"
    version: str = "1.0.0"
    aliases: list[str] = Field(default_factory=list)
    input_modalities: list[Modality] = Field(default_factory=lambda: list[Modality](["TEXT"]))
    output_modalities: list[Modality] = Field(default_factory=lambda: list[Modality](["TEXT"]))
    #: OpenAI-compatible base URL (ending in /v1). None = the built-in model server.
    upstream_url: str | None = None
    #: Name of the environment variable holding the upstream's bearer token, if it needs one.
    upstream_api_key_env: str | None = None
    #: Clusters serving this model; empty = every cluster.
    clusters: list[str] = Field(default_factory=list)
    #: Team × model limits; 0 = none.
    rps: int = Field(default=0, ge=0)
    rpm: int = Field(default=0, ge=0)
    tpm: int = Field(default=0, ge=0)
    prices: Prices = Field(default_factory=Prices)


def _default_clusters() -> list[ClusterSettings]:
    return [
        ClusterSettings(
            name="us-east-1",
            host="us-east-1.api.keyplane.local",
            gateway=Endpoint(port=8101),
        ),
        ClusterSettings(
            name="eu-west-1",
            host="eu-west-1.api.keyplane.local",
            gateway=Endpoint(port=8102),
        ),
    ]


def _default_models() -> list[ModelSettings]:
    text_prices = Prices(prompt_text_token_price="2000", completion_text_token_price="10000")
    return [
        ModelSettings(
            name="grok-4",
            version="0709",
            aliases=["grok-4-0709", "grok-4-latest"],
            input_modalities=["TEXT", "IMAGE"],
            rps=50,
            rpm=3000,
            tpm=2_000_000,
            prices=text_prices,
        ),
        ModelSettings(
            name="grok-3",
            version="1.0.0",
            aliases=["grok-3-latest", "grok-3-beta"],
            rps=100,
            rpm=6000,
            prices=text_prices,
        ),
        ModelSettings(
            name="grok-3-mini",
            version="1.0.0",
            aliases=["grok-3-mini-latest"],
            prices=Prices(prompt_text_token_price="300", completion_text_token_price="500"),
        ),
        ModelSettings(
            name="grok-code-fast-1",
            version="1.0.0",
            aliases=["grok-code-fast"],
            clusters=["us-east-1"],
        ),
        ModelSettings(
            name="grok-2-image",
            kind="image",
            version="1212",
            aliases=["grok-2-image-1212", "grok-2-image-latest"],
            input_modalities=["TEXT"],
            output_modalities=["IMAGE"],
            rpm=300,
            prices=Prices(image_price="700000000"),
        ),
        ModelSettings(
            name="grok-embed-1",
            kind="embedding",
            version="1.0.0",
            aliases=["v1-embedding"],
            input_modalities=["TEXT"],
            output_modalities=["EMBEDDING"],
        ),
    ]


class LimiterSettings(BaseModel):
    """Where a cluster's gateways keep their rate-limit counters."""

    #: memory: in each gateway process (one replica per cluster); redis: shared by the replicas.
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: What a gateway does while Redis is unreachable: admit everything, refuse everything,
    #: enforce each limit divided by ``replicas`` in its own memory at once (local), or only once
    #: a full window has passed since Redis was lost (local-strict, never over a limit).
    failure_policy: Literal["allow", "deny", "local", "local-strict"] = "local"
    #: The longest a decision waits on Redis (seconds) before the failure policy decides.
    redis_timeout: float = Field(default=0.25, gt=0, le=10)
    #: Multiplies every limit window; tests and demos only (0.1: a "minute" of 6 s).
    window_scale: float = Field(default=1.0, gt=0, le=1)
    #: Gateway replicas per cluster (the ``local`` policy divides every limit by this).
    replicas: int = Field(default=1, ge=1)
    #: Several replicas with in-memory limits each enforce the full limit; refuse unless set.
    allow_unshared_replicas: bool = False


class UsageSettings(BaseModel):
    """Usage metering (gateways), rollup retention (control plane). See ``keyplane.usage``."""

    #: Gateways meter every inference request; off only to measure what metering costs.
    metering: bool = True
    #: Seconds between a gateway's shipments of its usage spool (sooner when much is waiting).
    ship_interval: float = Field(default=0.2, gt=0, le=60)
    #: Days each rollup resolution is kept; the usage RPC answers from the finest one still held.
    minute_retention_days: int = Field(default=14, ge=1)
    hour_retention_days: int = Field(default=400, ge=1)
    day_retention_days: int = Field(default=3660, ge=1)
    #: Days the control plane remembers a gateway spool's ingest marks (for deduplication).
    ingest_mark_retention_days: int = Field(default=30, ge=1)
    #: The operator's hard monthly spending limit for every team, in USD cents; 0 = none.
    hard_spending_limit_cents: int = Field(default=0, ge=0)


class ControlSettings(Endpoint):
    port: int = Field(default=8100, ge=0, le=65535)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KEYPLANE_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    #: Where the control plane keeps its SQLite file and secrets; gateways keep theirs below it.
    data_dir: Path = Path(".keyplane")
    #: SQLAlchemy URL; empty = SQLite at ``data_dir/keyplane.db``.
    database_url: str = ""
    #: The deployment secret (64 hex digits; ``KEYPLANE_SERVER_SECRET``): it seals idempotent
    #: answers and signs tokens. None: kept in ``server_secret_file``, made on first start.
    server_secret: SecretStr | None = None
    #: The secret before the last rotation, still accepted for 24 h.
    server_secret_previous: SecretStr | None = None
    #: Where the secret is kept when not in the environment; None = ``<data_dir>.secret``,
    #: beside the data directory (so a copy of the directory does not carry it).
    server_secret_file: Path | None = None
    #: SQLite only. NORMAL (WAL): commits survive a crash of the process, not a power loss.
    #: FULL: they survive both, at one fsync per commit.
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    control: ControlSettings = Field(default_factory=ControlSettings)
    #: Where gateways follow the change feed: every control-plane replica, tried in turn when
    #: one fails. Empty = the control plane above.
    feed_urls: list[str] = Field(default_factory=list)
    clusters: list[ClusterSettings] = Field(default_factory=_default_clusters)
    models: list[ModelSettings] = Field(default_factory=_default_models)
    #: Where the built-in model server listens (the upstream of models with no upstream_url).
    model_server: Endpoint = Field(default_factory=lambda: Endpoint(port=8199))
    limiter: LimiterSettings = Field(default_factory=LimiterSettings)
    usage: UsageSettings = Field(default_factory=UsageSettings)
    #: Seconds a gateway waits for a model server's next bytes (a stream may run longer).
    upstream_timeout: float = Field(default=300.0, gt=0)
    api_key_prefix: str = "xai-"
    management_key_prefix: str = "xai-mgmt-"
    #: Largest request body the Management API reads.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    #: Largest request line plus headers any keyplane server reads (431 beyond), and the most
    #: headers one request may carry; control plane, gateways and model server alike.
    max_head_bytes: int = Field(default=64 * 1024, ge=4096)
    max_header_count: int = Field(default=100, ge=16)
    #: Changes kept in the log for gateways to catch up from; one further behind takes a snapshot.
    change_log_retention: int = Field(default=1_000_000, ge=0)
    #: Where the control plane keeps the seed file it serves fresh gateways (a ready-made replica
    #: file, rebuilt in the background); None = ``<data_dir>/seed``.
    seed_dir: Path | None = None
    #: Serve fresh gateways a seed file (else they always take the row snapshot).
    seed_enabled: bool = True
    #: A seed is first built once the store holds this many keys: below it, the row snapshot
    #: reaches a fresh gateway as quickly, without a builder process and a file to keep.
    seed_min_keys: int = Field(default=20_000, ge=0)
    #: The seed is rebuilt once it is this many revisions behind (or 5 % of its keys, if more).
    seed_rebuild_changes: int = Field(default=10_000, ge=1)
    #: Longest a gateway's feed long-poll waits for news: it polls at least this often.
    feed_poll_seconds: float = Field(default=5.0, gt=0, le=30)
    #: A gateway silent for longer is not live: its cluster's propagation reads false until a live
    #: gateway has applied the change. At least twice ``feed_poll_seconds``.
    gateway_liveness_seconds: float = Field(default=15.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: Bearer token for the operators' views: a gateway's ``/metrics`` and detailed ``/healthz``,
    #: the model server's ``/_stats``. None: those answer 404 (plain ``/healthz`` stays open).
    metrics_token: SecretStr | None = None
    #: Forward clients' ``x-keyplane-*`` headers (the built-in model server's test knobs) to
    #: upstreams. For tests and demos only: by default a gateway strips them.
    forward_test_headers: bool = False

    @field_validator("api_key_prefix", "management_key_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        if not value or len(value) > 32 or not value.endswith("-"):
            raise ValueError("a key prefix is 1-32 characters ending in '-'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.api_key_prefix.startswith(self.management_key_prefix) or (
            self.management_key_prefix.startswith(self.api_key_prefix)
            and self.management_key_prefix[len(self.api_key_prefix) :].isalnum()
        ):
            raise ValueError("API keys and management keys must not be able to pass for each other")
        if self.gateway_liveness_seconds < 2 * self.feed_poll_seconds:
            raise ValueError("gateway_liveness_seconds must be at least twice feed_poll_seconds")
        names = [c.name for c in self.clusters]
        if len(set(names)) != len(names):
            raise ValueError("cluster names must be unique")
        seen: set[str] = set()
        for model in self.models:
            for name in (model.name, *model.aliases):
                if name in seen:
                    raise ValueError(f"model name or alias {name!r} appears twice in the catalog")
                seen.add(name)
            unknown = set(model.clusters) - set(names)
            if unknown:
                raise ValueError(f"model {model.name!r} names unknown clusters {sorted(unknown)}")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'keyplane.db').resolve()}"

    def cluster(self, name: str) -> ClusterSettings:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        raise KeyError(name)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config = os.environ.get("KEYPLANE_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config)))
        return tuple(sources)


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; ``config`` names a TOML file (else ``KEYPLANE_CONFIG``, else none)."""
    if config is not None:
        if not config.is_file():
            raise FileNotFoundError(f"config file not found: {config}")
        os.environ["KEYPLANE_CONFIG"] = str(config)
    return Settings(**overrides)
