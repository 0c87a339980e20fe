"""Every job type, by name, and the module that implements it.

Modules are named by string and imported only when a job type is loaded, so the platform never
imports ``workers`` itself. A module follows the contract of :mod:`geojobs.jobtype`. Adding a
job type = one line here.
"""

from __future__ import annotations

import importlib

from geojobs.errors import InvalidParams
from geojobs.jobtype import JobType, from_module

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


def load(job_type: str) -> JobType:
    """The job type ``job_type``, checked against the contract; unknown types raise
    :class:`InvalidParams`, a module that breaks the contract :class:`TypeError`."""
    try:
        path = JOB_TYPES[job_type]
    except KeyError:
        raise InvalidParams(f"job_type: unknown job type {job_type!r}; known: {names()}") from None
    return from_module(importlib.import_module(path), job_type)
