"""Every job type, by name, and the module that implements it.

A job type module declares ``JOB_TYPE``, a pydantic ``Params`` model, an ``EXAMPLE`` of its
parameters and ``run(ctx, params) -> dict``. Adding a job type = one line here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from geojobs.errors import InvalidParams

__all__ = ["JOB_TYPES", "load", "names"]

JOB_TYPES: dict[str, str] = {
    "noop": "workers.noop",
    "dissolve": "workers.dissolve",
    "hotspot": "workers.hotspot",
    "outlier": "workers.outlier",
    "clip": "workers.clip",
    "erase": "workers.erase",
    "create_view": "workers.create_view",
    "nearest": "workers.nearest",
    "raster_clip": "workers.raster_clip",
    "hotspot_timeseries": "workers.hotspot_timeseries",
}


def names() -> list[str]:
    """The job types, in registry order."""
    return list(JOB_TYPES)


def load(job_type: str) -> ModuleType:
    """Import the module of ``job_type``; unknown types raise :class:`InvalidParams`."""
    try:
        path = JOB_TYPES[job_type]
    except KeyError:
        raise InvalidParams(f"job_type: unknown job type {job_type!r}; known: {names()}") from None
    module = importlib.import_module(path)
    for attr in ("JOB_TYPE", "Params", "EXAMPLE", "run"):
        if not hasattr(module, attr):
            raise TypeError(f"{path} does not define {attr}")
    return module
