"""keyplane.usage: what inference requests consume, and the caps on it.

Two sides in one room, cut by process:
- gateway side (``meter``, ``spool``, ``shipper``, ``record``): a finished request becomes one
  framed record appended to the gateway's spool file; the shipper posts spool ranges to the
  control plane. These import only ``keyplane.catalog``, ``propagation.wire`` and each other.
- control side (``ingest``, ``store``, ``query``, ``billing``, ``limits``, ``budgets``,
  ``routes``, ``housekeeping``, ``report``): idempotent ingest into per-minute/hour/day rollups,
  the hosted usage analytics query, spending limits and per-key budgets, which block through the
  change feed.
Shared: ``wire`` (the ingest format), ``schema`` (the usage RPC's request model), ``periods``.
"""

__all__: list[str] = []
