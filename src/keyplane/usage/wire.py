"""The usage feed's wire format, shared by gateways (producers) and the control plane (ingest).

``POST /internal/v1/usage?segment=S&start=A&end=B`` carries the raw frames in bytes ``[A, B)`` of
spool segment ``S`` of the gateway named by ``x-keyplane-gateway`` (see ``usage.record`` for the
frame format), authenticated like the change feed. The answer is
``{"accepted": n, "duplicates": m}``; only a 200 moves the gateway's cursor.
"""

from __future__ import annotations

INGEST_PATH = "/internal/v1/usage"
#: The largest batch a gateway sends and the control plane reads.
MAX_BATCH_BYTES = 1024 * 1024
