"""Settings read from the environment, with documented defaults."""

from __future__ import annotations

import os
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

DEFAULT_DATABASE_URL = "postgresql://127.0.0.1:5432/geojobs"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The source checkout holding this package (meaningful only when :func:`in_checkout`)."""
SQL_DIR: Traversable = files("geojobs") / "sql"
"""Migrations and named queries, shipped inside the package."""


def database_url() -> str:
    """The libpq URI of the geojobs database: ``DATABASE_URL`` or the local default."""
    return os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def output_schemas() -> tuple[str, ...]:
    """Schemas where jobs may create tables and views (``GEOJOBS_OUTPUT_SCHEMAS``, comma-separated)."""
    raw = os.environ.get("GEOJOBS_OUTPUT_SCHEMAS", "results")
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def in_checkout() -> bool:
    """Whether the package runs from a source checkout (editable install or PYTHONPATH), not
    from an installed wheel."""
    return (PROJECT_ROOT / "pyproject.toml").is_file() and (PROJECT_ROOT / "geojobs").is_dir()


def data_dir() -> Path:
    """Where file inputs and outputs live unless set one by one: ``GEOJOBS_DATA_DIR``; else the
    checkout's ``data/``; else, for an installed wheel, ``$XDG_DATA_HOME/geojobs``
    (``~/.local/share/geojobs``). The systemd units set both directories explicitly."""
    if raw := os.environ.get("GEOJOBS_DATA_DIR"):
        return Path(raw)
    if in_checkout():
        return PROJECT_ROOT / "data"
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "geojobs"


def raster_dir() -> Path:
    """Where raster inputs are looked up (``GEOJOBS_RASTER_DIR``, default ``<data dir>/rasters``)."""
    return Path(os.environ.get("GEOJOBS_RASTER_DIR") or data_dir() / "rasters")


def output_dir() -> Path:
    """Where file outputs are written (``GEOJOBS_OUTPUT_DIR``, default ``<data dir>/outputs``)."""
    return Path(os.environ.get("GEOJOBS_OUTPUT_DIR") or data_dir() / "outputs")


def lease_seconds() -> float:
    """A job's lease, and how long a silent worker counts as live (``GEOJOBS_LEASE_SECONDS``, 60)."""
    return float(os.environ.get("GEOJOBS_LEASE_SECONDS") or 60)


def listen_url() -> str | None:
    """A direct connection to PostgreSQL (not through PgBouncer) for LISTEN: the wake-up, cancel
    and job-event channels (``GEOJOBS_LISTEN_URL``); None when unset."""
    return os.environ.get("GEOJOBS_LISTEN_URL") or None


def pooled_poll_interval() -> float:
    """Seconds between polls when the connection is pooled and no ``GEOJOBS_LISTEN_URL`` is set, so
    nothing announces new jobs, cancels or job changes (``GEOJOBS_POOLED_POLL_INTERVAL``, 0.5)."""
    return float(os.environ.get("GEOJOBS_POOLED_POLL_INTERVAL") or 0.5)
