"""erase benchmark: see :mod:`bench.overlay_cases` (``python -m bench.jobs erase``)."""

from __future__ import annotations

from typing import Any

from bench.overlay_cases import COLUMNS, SIZES, SMOKE_SIZES, run_overlay_bench

__all__ = ["COLUMNS", "SIZES", "SMOKE_SIZES", "run"]


def run(sizes: list[int], database_url: str) -> list[dict[str, Any]]:
    """One row per case and size."""
    return run_overlay_bench("erase", sizes, database_url)
