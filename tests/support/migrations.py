"""Alembic driven by a test, to take a database to an older schema and back."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

from keyplane.storage import db as db_module


def config() -> Config:
    """The Alembic configuration of keyplane's migrations; set ``attributes["connection"]``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db_module.__file__).parent / "migrations"))
    return cfg
