"""Printing benchmark rows as a table and saving them as JSON, with the run's context."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

__all__ = ["format_table", "print_table", "write_json", "machine", "package_versions"]

_PACKAGES = ("geopandas", "shapely", "pandas", "numpy", "psycopg", "psycopg-binary",
             "procrastinate", "pgqueuer", "asyncpg", "SQLAlchemy", "GeoAlchemy2")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value == 0 or abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows as a Markdown table; columns default to every key, in first-seen order."""
    if not rows:
        return "(no rows)"
    cols = list(columns or dict.fromkeys(k for row in rows for k in row))
    cells = [[_cell(row.get(c)) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    line = "| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(v.rjust(w) if v[:1].isdigit() or v[:1] == "-" else v.ljust(w)
                              for v, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join([line, rule, *body])


def print_table(title: str, rows: Sequence[dict[str, Any]],
                columns: Sequence[str] | None = None) -> None:
    """Print a titled table and flush, so long runs show progress."""
    print(f"\n### {title}\n\n{format_table(rows, columns)}\n", flush=True)


def package_versions(names: Iterable[str] = _PACKAGES) -> dict[str, str]:
    """Installed versions of the packages a benchmark depends on."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine() -> dict[str, Any]:
    """Cores, memory, CPU model and load: the context every figure needs."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "cpu": model or platform.processor(), "kernel": platform.release(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def report(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
           json_path: str | Path | None = None) -> int:
    """The end of a benchmark's ``main``: print the rows, save them when ``--json`` asks;
    the exit status (0)."""
    print_table(title, rows, columns)
    if json_path:
        write_json(json_path, rows)
    return 0


def write_json(path: str | Path, rows: Sequence[dict[str, Any]], **context: Any) -> None:
    """Save rows with the date, command, machine and versions."""
    payload = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
               "command": " ".join(sys.argv), "machine": machine(),
               "versions": package_versions(), **context, "rows": list(rows)}
    Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")
