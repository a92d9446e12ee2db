"""Field masks of UpdateApiKey: which fields of the sent ApiKey to apply.

Paths may be camelCase or snake_case; ``acls`` is an alias of ``aclStrings``. A mask may come as
``"name,qpm"``, as a list of paths, or as ``{"paths": [...]}`` (the protobuf JSON form).
"""

from __future__ import annotations

import re

from keyplane.domain.errors import InvalidArgument

MASKABLE: tuple[str, ...] = (
    "name",
    "aclStrings",
    "qps",
    "qpm",
    "tpm",
    "disabled",
    "expireTime",
    "budget",  # keyplane's own (keyplane.usage)
)
OUTPUT_ONLY: tuple[str, ...] = (
    "apiKeyId",
    "teamId",
    "userId",
    "redactedApiKey",
    "apiKey",
    "createTime",
    "modifyTime",
    "modifiedBy",
)
_ALIASES = {"acls": "aclStrings"}
_MAX_MASK_LENGTH = 1024


def _camel(path: str) -> str:
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), path)


def parse_field_mask(mask: object) -> frozenset[str]:
    """Return the canonical (camelCase) paths of a mask, or raise ``InvalidArgument``."""
    if isinstance(mask, dict):
        mask = mask.get("paths")
    if isinstance(mask, str):
        if len(mask) > _MAX_MASK_LENGTH:
            raise InvalidArgument("field mask is too long", field="fieldMask")
        raw = [p.strip() for p in mask.split(",")]
    elif isinstance(mask, list) and all(isinstance(p, str) for p in mask):
        if len(mask) > len(MASKABLE) * 4:
            raise InvalidArgument("field mask has too many paths", field="fieldMask")
        raw = [p.strip() for p in mask]
    elif mask is None:
        raw = []
    else:
        raise InvalidArgument("must be a comma-separated string of paths", field="fieldMask")
    paths = [p for p in raw if p]
    if not paths:
        raise InvalidArgument(
            f"field mask is empty; name the fields to update, from: {', '.join(MASKABLE)}",
            field="fieldMask",
        )
    result: set[str] = set()
    for path in paths:
        canonical = _ALIASES.get(path) or _ALIASES.get(_camel(path)) or _camel(path)
        if canonical in OUTPUT_ONLY:
            raise InvalidArgument(
                f"{path!r} is output only and cannot be updated", field="fieldMask"
            )
        if canonical not in MASKABLE:
            raise InvalidArgument(
                f"unknown path {path!r}; maskable paths: {', '.join(MASKABLE)}", field="fieldMask"
            )
        result.add(canonical)
    return frozenset(result)
