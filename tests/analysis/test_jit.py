"""Our cached ``compute_chunk`` against esda's own: the same pseudo p-values and simulations.

Oracle: esda's ``compute_chunk`` (restored for the reference run), on the same weights, data
and seed; Gi* (binary, self-weight 1) and local Moran's I (row-standardised), with islands.
"""

from __future__ import annotations

import warnings
from typing import Any

import esda.crand
import libpysal
import numpy as np
import pytest
from esda.getisord import G_Local
from esda.moran import Moran_Local

from analysis import jit
from tests.conftest import WarmRun


def _weights() -> libpysal.weights.W:
    w = libpysal.weights.lat2W(12, 12, rook=False)
    neighbors = dict(w.neighbors)
    neighbors[200] = []  # an island
    return libpysal.weights.W(neighbors, silence_warnings=True)


def _both(monkeypatch: pytest.MonkeyPatch, run: Any) -> tuple[Any, Any]:
    jit.enable_esda_cache()
    assert esda.crand.compute_chunk is jit.compute_chunk
    esda_own = jit._ESDA_COMPUTE_CHUNK

    def not_ours(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("esda's compute_chunk ran, not the cached kernel")

    monkeypatch.setattr(jit, "_ESDA_COMPUTE_CHUNK", not_ours)
    ours = run()
    monkeypatch.setattr(esda.crand, "compute_chunk", esda_own)
    theirs = run()
    return ours, theirs


@pytest.mark.parametrize("statistic", ["gi_star", "moran"])
def test_same_results_as_esda_compute_chunk(monkeypatch: pytest.MonkeyPatch,
                                            statistic: str) -> None:
    w = _weights()
    y = np.random.default_rng(4).lognormal(size=w.n)
    y[:20] += 5  # a cluster

    def run() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if statistic == "gi_star":
                w.transform = "B"
                stat = G_Local(y, w, star=True, permutations=199, keep_simulations=True,
                               n_jobs=1, seed=7)
            else:
                w.transform = "R"
                stat = Moran_Local(y, w, permutations=199, keep_simulations=True, n_jobs=1,
                                   seed=7)
        return stat.p_sim.copy(), np.array(stat.sim, copy=True)

    (p_ours, sims_ours), (p_esda, sims_esda) = _both(monkeypatch, run)
    assert np.array_equal(p_ours, p_esda)
    assert np.array_equal(sims_ours, sims_esda, equal_nan=True)
    assert (p_ours < 0.05).any() and (p_ours > 0.2).any()  # not a degenerate case
    assert jit._chunk_kernel.signatures, "the cached kernel was not the one that ran"


@pytest.mark.slow
@pytest.mark.timeout(900)  # the shared run (tests/conftest.py: warm_run) may be this test's own
def test_compute_chunk_is_cached_on_disk(warm_run: WarmRun) -> None:
    """``geojobs warm hotspot outlier`` (and noop) into an empty cache writes our kernel's index."""
    assert warm_run.returncode == 0, warm_run.stderr
    names = {p.name for p in warm_run.cache.rglob("*.nbi")}
    assert any("_chunk_kernel" in n for n in names), names
