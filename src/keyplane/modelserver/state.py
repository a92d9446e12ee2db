"""What the model server's routes share at run time: its configuration, its counters, and the
ids and output lengths every generating route hands out."""

from __future__ import annotations

import itertools
import secrets

import msgspec

from keyplane.modelserver.config import ModelServerConfig
from keyplane.modelserver.http import within

__all__ = ["ModelServerStats", "ServerState"]


class ModelServerStats(msgspec.Struct):
    """Counters behind ``GET /_stats``; see :mod:`keyplane.modelserver.app` for what each counts."""

    in_flight: int = 0
    completed: int = 0
    disconnected: int = 0
    requests: int = 0
    #: Tokens in the usage of every answer made (what a gateway meters, for a full answer).
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ServerState:
    """One model server's configuration and counters, as the routes see them."""

    def __init__(self, config: ModelServerConfig) -> None:
        self.config = config
        self.stats = ModelServerStats()
        self._ids = itertools.count(1)
        # A per-process prefix keeps ids unique across restarts without a syscall per request.
        self._id_salt = secrets.token_hex(6)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{self._id_salt}{next(self._ids):010x}"

    def count_tokens(self, prompt: int, completion: int) -> None:
        self.stats.prompt_tokens += prompt
        self.stats.completion_tokens += completion

    def output_length(self, limit: int | None, param: str) -> tuple[int, str]:
        """How many tokens to generate, and the finish reason that goes with it."""
        if limit is None:
            return self.config.default_max_tokens, "stop"
        return within(limit, self.config.max_output_tokens, param), "length"
