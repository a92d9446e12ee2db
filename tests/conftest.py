"""Fixtures shared by every suite: real processes on loopback, each test with its own data."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support import million
from tests.support.procs import Deployment

# Under mutation testing (scripts/mutants) every call is traced and the machine is busy: a
# hypothesis deadline would fail the clean run on timing alone.
settings.register_profile("mutants", deadline=None)
if "MUTANT_UNDER_TEST" in os.environ:
    settings.load_profile("mutants")


@pytest.hookimpl(tryfirst=True)  # the million marks go on before ``-m`` selects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The ``million`` group is the tests of ``million.MODULES``, run again on a million keys.

    Under ``scripts/mutants``, only the unit tests that target the package being mutated run
    (``KEYPLANE_MUTANT_TESTS``: test paths, space-separated); mutmut's own selection is all of
    tests/unit, and a slow test that merely passes through the code would dominate each mutant."""
    root = Path(str(config.rootpath))
    modules = {root / m for m in million.MODULES}
    expression = str(config.getoption("markexpr") or "")
    at_scale = "million" in expression and "not million" not in expression
    for item in items:
        if item.path in modules:
            item.add_marker(pytest.mark.million)
            if at_scale:  # each fresh gateway snapshots a million keys before the test proper
                item.add_marker(pytest.mark.timeout(1800))
    only = tuple(os.environ.get("KEYPLANE_MUTANT_TESTS", "").split())
    if not only:
        return
    kept = [item for item in items if item.nodeid.startswith(only)]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    dep = Deployment(tmp_path)
    yield dep
    dep.stop_all()


@pytest.fixture(scope="module")
def module_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One control plane for a whole module, for tests that only read or make their own teams."""
    dep = Deployment(tmp_path_factory.mktemp("deployment"))
    dep.start_control()
    yield dep
    dep.stop_all()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under ``-m million``, every Deployment starts from a store holding a million keys. Built
    here, before any test, so the load (minutes) counts against no test's timeout."""
    expression = str(session.config.getoption("markexpr") or "")
    if "million" not in expression or "not million" in expression:
        return
    count = int(os.environ.get(million.KEYS_ENV, "1000000"))
    given = million.template()
    path = given or Path(tempfile.gettempdir()) / f"keyplane-million-{count}-{os.getpid()}.db"
    million.build_template(path, count)
    os.environ[million.PRELOAD_ENV] = str(path)
    if given is None:
        session.config.add_cleanup(lambda: path.unlink(missing_ok=True))
