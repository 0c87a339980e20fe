"""``geojobs warm`` builds numba's on-disk cache, so a worker started afterwards compiles less."""

from __future__ import annotations

import pytest

from tests.conftest import WarmRun


@pytest.mark.slow
@pytest.mark.timeout(900)  # the shared run (tests/conftest.py: warm_run) may be this test's own
def test_warm_writes_the_numba_cache(warm_run: WarmRun) -> None:
    assert warm_run.returncode == 0, warm_run.stderr
    assert "outlier: warm in" in warm_run.stdout and "hotspot: warm in" in warm_run.stdout
    assert "noop" not in warm_run.stdout
    index_files = list(warm_run.cache.rglob("*.nbi"))
    assert index_files, "no numba cache index was written"
