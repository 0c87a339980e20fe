"""Settings read from the environment, with documented defaults."""

from __future__ import annotations

import os
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

DEFAULT_DATABASE_URL = "postgresql://127.0.0.1:5432/geojobs"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
SQL_DIR: Traversable = files("geojobs") / "sql"
"""Migrations and named queries, shipped inside the package."""


def database_url() -> str:
    """The libpq URI of the geojobs database: ``DATABASE_URL`` or the local default."""
    return os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def output_schemas() -> tuple[str, ...]:
    """Schemas where jobs may create tables and views (``GEOJOBS_OUTPUT_SCHEMAS``, comma-separated)."""
    raw = os.environ.get("GEOJOBS_OUTPUT_SCHEMAS", "results")
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def raster_dir() -> Path:
    """Where raster inputs are looked up (``GEOJOBS_RASTER_DIR``)."""
    return Path(os.environ.get("GEOJOBS_RASTER_DIR", PROJECT_ROOT / "data" / "rasters"))


def output_dir() -> Path:
    """Where file outputs are written (``GEOJOBS_OUTPUT_DIR``)."""
    return Path(os.environ.get("GEOJOBS_OUTPUT_DIR", PROJECT_ROOT / "data" / "outputs"))
