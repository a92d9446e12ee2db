"""The feed's wire format, shared by the control plane (producer) and gateways (consumer).

``GET /internal/v1/snapshot`` streams NDJSON: a header line ``{"revision": N}``, then one key view
per line (``keyplane.domain.model.enforcement_view``). ``GET /internal/v1/changes?after=N`` answers
``{"revision": M, "changes": [{"revision", "op", "view"}], "snapshotRequired": bool}``; ``after``
doubles as the gateway's ack: everything through N is applied. Gateways authenticate with
``Authorization: Bearer <cluster credential>`` and name themselves with ``x-keyplane-gateway``.
"""

from __future__ import annotations

SNAPSHOT_PATH = "/internal/v1/snapshot"
CHANGES_PATH = "/internal/v1/changes"
GATEWAY_HEADER = "x-keyplane-gateway"
CREDENTIAL_PREFIX = "kpgw-"
#: Longest a changes request waits for something new before answering with nothing.
MAX_WAIT_SECONDS = 30.0
#: Changes in one answer; a gateway further behind asks again at once.
MAX_BATCH = 2000
