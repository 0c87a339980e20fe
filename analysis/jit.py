"""esda's numba kernels: cached on disk and compiled before the first job.

esda compiles its conditional-permutation kernels (``esda.crand``) with numba on first use,
which takes 10 to 30 s per process; they are not marked ``cache=True``. Turning numba's
on-disk cache on for them (``Dispatcher.enable_caching``, numba's public API) lets a new
worker process load most of the machine code instead; :mod:`analysis.warmup` compiles what
remains before a worker claims its first job, so no job pays for compilation.

esda's ``compute_chunk`` takes the statistic's kernel as an argument, which numba cannot
cache, so it used to be compiled at every worker start (most of a hotspot or outlier
worker's start-up). :func:`compute_chunk` here is esda's, line for line, for the two
statistics the job types use (Gi* and local Moran's I): one kernel that calls either
statistic directly, chosen by a number, so it is cached on disk; any other kernel goes to
esda's own. The permutations
themselves are drawn before (``esda.crand.vec_permutations``), so the results are esda's,
bit for bit (``tests/analysis/test_jit.py``).
"""

from __future__ import annotations

import logging
from typing import Any

import esda.crand
import esda.getisord
import esda.moran
import esda.significance
import numpy as np
from esda.crand import _prepare_univariate  # noqa: F401  (inlined by the kernels below)
from esda.significance import _permutation_significance
from numba import njit

__all__ = ["compute_chunk", "enable_esda_cache"]

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
    if not _enabled:
        esda.crand.compute_chunk = compute_chunk  # crand() looks it up at every call
    _enabled = True
    return count


_ESDA_COMPUTE_CHUNK = esda.crand.compute_chunk
_gi_star = esda.getisord._g_local_star_crand
_moran = esda.moran._moran_local_crand


_GI_STAR, _MORAN = 0, 1
"""Which statistic :func:`_chunk_kernel` computes: a number, not the kernel itself, so that
numba can cache it (a function argument would make it uncacheable, like esda's own)."""


@njit(parallel=False, fastmath=True, cache=True)
def _chunk_kernel(statistic, chunk_start, z_chunk, z, observed, cardinalities,  # noqa: ANN001, ANN202
                  self_weights, other_weights, permuted_ids, scaling, keep, island_weight,
                  alternative):
    chunk_n = z_chunk.shape[0]
    p_sims = np.zeros((chunk_n,), dtype=np.float32)
    rlocals = np.empty((chunk_n, permuted_ids.shape[0])) if keep else np.empty((1, 1))
    wloc = 0
    for i in range(chunk_n):
        cardinality = cardinalities[i]
        if cardinality == 0:
            weights_i = np.zeros(2, dtype=other_weights.dtype)
            weights_i[1] = island_weight
        else:
            weights_i = np.zeros(cardinality + 1, dtype=other_weights.dtype)
            weights_i[0] = self_weights[i]
            weights_i[1:] = other_weights[wloc : (wloc + cardinality)]
        wloc += cardinality
        if statistic == _GI_STAR:
            rstats = _gi_star(chunk_start + i, z, permuted_ids, weights_i, scaling)
        else:
            rstats = _moran(chunk_start + i, z, permuted_ids, weights_i, scaling)
        p_sims[i] = _permutation_significance(observed[i], rstats,
                                              alternative=alternative).item()
        if keep:
            rlocals[i] = rstats
    return p_sims, rlocals


_SPECIALISED = {_gi_star: _GI_STAR, _moran: _MORAN}


def compute_chunk(chunk_start: int, z_chunk: Any, z: Any, observed: Any, cardinalities: Any,
                  self_weights: Any, other_weights: Any, permuted_ids: Any, scaling: Any,
                  keep: bool, stat_func: Any, island_weight: Any,
                  alternative: str = "two-sided") -> tuple[Any, Any]:
    """esda's ``compute_chunk`` (same arguments, same results), from the disk cache for the
    Gi* and local Moran kernels; esda's own for any other ``stat_func``."""
    statistic = _SPECIALISED.get(stat_func)
    if statistic is None:
        return _ESDA_COMPUTE_CHUNK(chunk_start, z_chunk, z, observed,
                                   cardinalities, self_weights, other_weights, permuted_ids,
                                   scaling, keep, stat_func, island_weight,
                                   alternative=alternative)
    return _chunk_kernel(statistic, chunk_start, z_chunk, z, observed, cardinalities,
                         self_weights, other_weights, permuted_ids, scaling, keep,
                         island_weight, alternative)
