"""Idempotency records: a create's first answer, sealed, found by an HMAC locator (the sealing
and the HMACs are ``keyplane.services.idempotency``'s; here only the rows)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, insert, select, update

from keyplane.domain.timefmt import to_micros
from keyplane.storage import tables as t


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    locator: str
    request_digest: str
    #: None once the key it created was rotated or deleted.
    sealed: bytes | None


class IdempotencyRecords:
    """The idempotency records, read and written in the transaction of ``conn``."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def find(self, *, locators: list[str], since: datetime) -> IdempotencyRecord | None:
        c = t.idempotency_keys.c
        row = self._conn.execute(
            select(c.locator, c.request_digest, c.sealed_response).where(
                c.locator.in_(locators), c.create_time >= to_micros(since)
            )
        ).first()
        if row is None:
            return None
        sealed = None if row.sealed_response is None else bytes(row.sealed_response)
        return IdempotencyRecord(row.locator, row.request_digest, sealed)

    def store(
        self,
        *,
        locator: str,
        api_key_id: str,
        request_digest: str,
        sealed: bytes,
        now: datetime,
    ) -> None:
        # A row older than the window may still sit under the same locator: replace it.
        c = t.idempotency_keys.c
        self._conn.execute(delete(t.idempotency_keys).where(c.locator == locator))
        self._conn.execute(
            insert(t.idempotency_keys).values(
                locator=locator,
                api_key_id=api_key_id,
                request_digest=request_digest,
                sealed_response=sealed,
                create_time=to_micros(now),
            )
        )

    def erase_answers(self, *, api_key_id: str) -> None:
        self._conn.execute(
            update(t.idempotency_keys)
            .where(t.idempotency_keys.c.api_key_id == api_key_id)
            .values(sealed_response=None)
        )

    def purge(self, *, before: datetime) -> None:
        self._conn.execute(
            delete(t.idempotency_keys).where(t.idempotency_keys.c.create_time < to_micros(before))
        )
