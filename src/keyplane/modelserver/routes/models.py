"""``GET /v1/models`` and ``GET /v1/models/{id}``: the configured models (any id, if none is)."""

from __future__ import annotations

from typing import Any, Final

from keyplane.modelserver.http import HTTPError, encode
from keyplane.modelserver.state import ServerState

__all__ = ["MODEL_CREATED", "list_models", "retrieve_model"]

MODEL_CREATED: Final = 1_735_689_600  # 2025-01-01T00:00:00Z; a fixed "created" keeps lists stable


def _model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": MODEL_CREATED, "owned_by": "keyplane"}


def list_models(state: ServerState) -> bytes:
    return encode({
        "object": "list",
        "data": [_model_object(model) for model in state.config.models],
    })  # fmt: skip


def retrieve_model(state: ServerState, model: str) -> bytes:
    models = state.config.models
    if not model or (models and model not in models):
        raise HTTPError(
            404, f"The model '{model}' does not exist.", param="model", code="model_not_found"
        )
    return encode(_model_object(model))
