"""``geojobs warm`` builds numba's on-disk cache, so a worker started afterwards compiles less."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT


@pytest.mark.slow
def test_warm_writes_the_numba_cache(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "geojobs.cli", "warm", "noop", "outlier"],
                          env=env, cwd=ROOT, text=True, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "outlier: warm in" in done.stdout and "noop" not in done.stdout
    index_files = list(tmp_path.rglob("*.nbi"))
    assert index_files, "no numba cache index was written"
