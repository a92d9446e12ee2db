"""Each public package says what it exports, and ``__all__`` is exactly that (as httpx checks its
own): every public name a package defines is listed once, and every listed name exists (ruff's
RUF022 keeps the lists sorted).

Submodules are not members: importing ``keyplane.services.keys`` anywhere sets it as an attribute
of ``keyplane.services``, so they are left out of the comparison.
"""

from __future__ import annotations

import importlib
import types

import pytest

PACKAGES = [
    "keyplane.domain",
    "keyplane.storage",
    "keyplane.services",
    "keyplane.control",
    "keyplane.propagation",
    "keyplane.gateway",
    "keyplane.ratelimit",
    "keyplane.modelserver",
    "keyplane.usage",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_public_members_are_exported(name: str) -> None:
    package = importlib.import_module(name)
    exported: list[str] = package.__all__
    public = [
        member
        for member, value in vars(package).items()
        if not member.startswith("_")
        and not isinstance(value, types.ModuleType)
        and member not in ("annotations", "TYPE_CHECKING")
    ]
    assert len(set(exported)) == len(exported), f"{name}: __all__ lists a name twice"
    assert sorted(exported) == sorted(public), f"{name}: __all__ and its public names differ"
