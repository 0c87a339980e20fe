"""Compile esda's permutation kernels before a worker claims its first job.

A worker calls :func:`warm_up` once at start, so that no job pays numba's compilation
(10 to 30 s per process; see :mod:`analysis.jit`, which caches most of it on disk).
"""

from __future__ import annotations

import time
from typing import Literal

import geopandas as gpd
import numpy as np
import shapely

from analysis.hotspot import hotspot
from analysis.outlier import outlier

__all__ = ["warm_up"]


def warm_up(statistic: Literal["hotspot", "outlier"]) -> float:
    """Run the kernels of ``"hotspot"`` (Gi*) or ``"outlier"`` (Local Moran's I) on a tiny
    input with the argument types of a typical job; returns the seconds it took."""
    started = time.perf_counter()
    # a 3 x 3 grid of squares with queen weights
    x, y = np.meshgrid(np.arange(3.0), np.arange(3.0))
    squares = shapely.box(x.ravel(), y.ravel(), x.ravel() + 1, y.ravel() + 1)
    tiny = gpd.GeoDataFrame({"v": np.arange(1.0, 10.0) ** 2}, geometry=squares)
    run = hotspot if statistic == "hotspot" else outlier
    run(tiny, "v", permutations=9)
    return time.perf_counter() - started
