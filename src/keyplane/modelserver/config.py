"""``ModelServerConfig``: what the built-in model server serves and how fast it pretends to be."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from keyplane.modelserver.embeddings import MAX_DIMENSIONS

DEFAULT_MODELS: Final = ("keyplane-mini", "keyplane-large", "keyplane-embed", "keyplane-image")


@dataclass(frozen=True, slots=True)
class ModelServerConfig:
    """Settings of one model server.

    ``models`` is what ``GET /v1/models`` lists; when empty, ``GET /v1/models/{id}`` answers for any
    id. Inference routes echo whatever model a request names either way, so a gateway in front can
    route any model name here.
    """

    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    latency_s: float = 0.0
    """Delay before the first byte of every inference response (time to first token)."""
    token_latency_s: float = 0.0
    """Delay before each streamed token (the simulated model's generation speed)."""
    embedding_dims: int = 256
    """Vector size when a request does not pass ``dimensions``."""
    default_max_tokens: int = 16
    """Output length when a request sets no ``max_tokens``; such outputs end with "stop"."""
    max_output_tokens: int = 131_072
    """Largest ``max_tokens`` accepted; more is a 400, like a model's context limit."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Larger request bodies get 413."""
    max_head_bytes: int = 64 * 1024
    """A larger request line plus headers gets 431 before more is read."""
    max_headers: int = 100
    """More headers than this get 431."""
    stats_token: str | None = None
    """If set, ``/_stats`` requires ``Authorization: Bearer <stats_token>`` (404 otherwise).
    ``keyplane serve models`` always sets it; None (open) is for in-process tests."""
    api_key: str | None = None
    """If set, ``/v1/*`` requires ``Authorization: Bearer <api_key>`` (401 otherwise), so a test can
    check that a gateway swaps the client's key for the upstream's."""

    def __post_init__(self) -> None:
        if self.latency_s < 0 or self.token_latency_s < 0:
            raise ValueError("latencies must be >= 0")
        if not 1 <= self.embedding_dims <= MAX_DIMENSIONS:
            raise ValueError(f"embedding_dims must be in 1..{MAX_DIMENSIONS}")
        if not 1 <= self.default_max_tokens <= self.max_output_tokens:
            raise ValueError("default_max_tokens must be in 1..max_output_tokens")
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be >= 1")
