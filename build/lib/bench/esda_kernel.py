"""esda's local statistics alone, with or without numba, in a fresh process.

``python -m bench.esda_kernel gi 100000 [--no-numba]`` prints JSON: the seconds of the first
call on a tiny input (numba compilation, or nothing without numba) and of the statistic with
999 permutations on a square grid of ``n`` cells with queen weights. ``--no-numba`` hides numba
from esda, which then runs the same kernels as plain Python and NumPy (its fallback when numba
is not installed); ``NUMBA_DISABLE_JIT`` cannot be used, esda fails under it.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from typing import Any

__all__ = ["measure", "main"]


def measure(statistic: str, n: int, *, numba: bool = True) -> dict[str, Any]:
    """Compile and run time of Gi* (``"gi"``) or Local Moran (``"lisa"``) on ``n`` cells."""
    if not numba:
        sys.modules["numba"] = None  # type: ignore[assignment]
    import numpy as np
    from esda.getisord import G_Local
    from esda.moran import Moran_Local
    from libpysal.graph import Graph

    from bench.data import square_grid

    def stat(y: np.ndarray, graph: Graph) -> object:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if statistic == "gi":
                return G_Local(y, graph, transform="B", star=True, permutations=999,
                               keep_simulations=False, n_jobs=1, seed=1)
            return Moran_Local(y, graph, transformation="r", permutations=999,
                               keep_simulations=False, n_jobs=1, seed=1)

    tiny = square_grid(9, seed=2)
    started = time.perf_counter()
    stat(tiny["value"].to_numpy() + 10, Graph.build_contiguity(tiny.geometry, rook=False))
    compile_s = time.perf_counter() - started
    gdf = square_grid(n, seed=1)
    graph = Graph.build_contiguity(gdf.geometry, rook=False)
    started = time.perf_counter()
    stat(gdf["value"].to_numpy() + 10, graph)
    return {"statistic": statistic, "n": n, "numba": numba, "compile_s": compile_s,
            "run_s": time.perf_counter() - started}


def main() -> None:
    statistic, n = sys.argv[1], int(sys.argv[2])
    print(json.dumps(measure(statistic, n, numba="--no-numba" not in sys.argv)))


if __name__ == "__main__":
    main()
