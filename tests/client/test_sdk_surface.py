"""The SDK's public surface: what it exports, what it imports, and that a user's typed script
type-checks against it under mypy --strict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keyplane.client
from keyplane.client import errors

HERE = Path(__file__).parent


def test_all_is_exactly_the_public_names() -> None:
    exported = set(keyplane.client.__all__)
    public = {
        name
        for name, value in vars(keyplane.client).items()
        if not name.startswith("_") and not isinstance(value, type(sys))
    }
    assert exported == public
    assert len(keyplane.client.__all__) == len(exported)
    for name in exported:
        assert getattr(keyplane.client, name) is not None


def test_every_api_error_is_exported_and_in_the_docstring_tree() -> None:
    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.KeyplaneClientError)
    ]
    assert len(classes) >= 12
    doc = errors.__doc__ or ""
    for cls in classes:
        assert cls.__name__ in keyplane.client.__all__
        assert cls.__name__ in doc, cls.__name__


def test_the_sdk_imports_nothing_from_the_server_side() -> None:
    probe = (
        "import json, sys; import keyplane.client; "
        "print(json.dumps(sorted(m for m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    loaded = set(json.loads(out))
    ours = {m for m in loaded if m.split(".")[0] == "keyplane"}
    assert ours, "keyplane.client did not load"
    assert all(m == "keyplane" or m.startswith("keyplane.client") for m in ours), ours
    for server_side in ("fastapi", "starlette", "sqlalchemy", "uvicorn", "redis", "httpx"):
        assert server_side not in loaded, server_side


def test_a_typed_user_script_passes_mypy_strict() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--config-file",
            "/dev/null",
            str(HERE / "typed_user.py"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=HERE.parent.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_catches_a_misuse_of_the_surface(tmp_path: Path) -> None:
    """The control for the test above: the SDK's types are real, not Any."""
    wrong = tmp_path / "wrong.py"
    wrong.write_text(
        "from keyplane.client import Client\n"
        "def f(client: Client) -> str:\n"
        "    return client.get_api_key('x').qps\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(wrong)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=HERE.parent.parent,
    )
    assert result.returncode == 1
    assert "Incompatible return value type" in result.stdout
