"""The OpenAPI document is a contract: its paths, operations, parameters, schemas and responses
are what tests/control/openapi.json holds, byte for byte but for the version.

The file was written from ``main`` before the control plane's routes were cut into modules (issue
#15), so a refactor that moves a route, a parameter or a schema fails here. A change of the API
on purpose rewrites it: ``KEYPLANE_WRITE_OPENAPI=1 pytest tests/control/test_openapi_unchanged.py``,
and the diff of the file is the review of the change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.inprocess import control_app

SNAPSHOT = Path(__file__).with_name("openapi.json")


def _document(root: Path) -> dict[str, Any]:
    with control_app(root) as running:
        return running.app.openapi()


def test_the_openapi_document_is_the_recorded_one(tmp_path: Path) -> None:
    document = _document(tmp_path)
    text = json.dumps(document, indent=1) + "\n"
    if os.environ.get("KEYPLANE_WRITE_OPENAPI") == "1":
        SNAPSHOT.write_text(text)
        pytest.skip("openapi.json rewritten")
    recorded = json.loads(SNAPSHOT.read_text())
    recorded["info"]["version"] = document["info"]["version"]
    assert list(document["paths"]) == list(recorded["paths"])  # the order /docs shows
    for path, operations in recorded["paths"].items():
        assert document["paths"][path] == operations, path
    assert document["components"] == recorded["components"]
    assert document == recorded
