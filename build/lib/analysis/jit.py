"""esda's numba kernels: cached on disk and compiled before the first job.

esda compiles its conditional-permutation kernels (``esda.crand``) with numba on first use,
which takes 10 to 30 s per process; they are not marked ``cache=True``. Turning numba's
on-disk cache on for them (``Dispatcher.enable_caching``, numba's public API) lets a new
worker process load most of the machine code instead; :mod:`analysis.warmup` compiles what
remains before a worker claims its first job, so no job pays for compilation.
"""

from __future__ import annotations

import logging

import esda.crand
import esda.getisord
import esda.moran
import esda.significance

__all__ = ["enable_esda_cache"]

log = logging.getLogger("geojobs.analysis")
_MODULES = (esda.crand, esda.getisord, esda.moran, esda.significance)
_enabled = False
_UNCACHEABLE = {"compute_chunk"}
"""Kernels taking a kernel as argument: numba's cache index pickles the argument's type, which
can fail ("underlying object has vanished") while a job runs; they are compiled in memory."""


def enable_esda_cache() -> int:
    """Cache esda's numba kernels on disk (``NUMBA_CACHE_DIR`` or next to esda); returns how
    many kernels. Idempotent; a kernel that numba cannot cache is left as it is."""
    global _enabled
    count = 0
    for module in _MODULES:
        for name, obj in vars(module).items():
            enable = getattr(obj, "enable_caching", None)
            if callable(enable) and hasattr(obj, "py_func") and name not in _UNCACHEABLE:
                if not _enabled:
                    try:
                        enable()
                    except Exception as exc:  # noqa: BLE001 - caching is an optimisation only
                        log.debug("numba cannot cache %s: %s", obj, exc)
                        continue
                count += 1
    _enabled = True
    return count
