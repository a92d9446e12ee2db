"""The services room: the Management API's use cases, one function per RPC.

Owns authentication and ACL checks of management keys (``auth``), key creation, listing, update,
rotation and deletion (``keys``), the audit log (``audit``), admin commands (``admin``) and the
per-process wiring they run with (``context``). Each use case is one unit of work
(``ctx.write()`` / ``ctx.read()``), which records its change-log row and audit event.

May import: ``keyplane.domain`` and ``keyplane.storage``. Never control, propagation or gateway,
which call it.
"""

from keyplane.services.auth import Principal, authenticate
from keyplane.services.context import Context

__all__ = [
    "Context",
    "Principal",
    "authenticate",
]
