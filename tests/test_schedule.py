"""The test run's schedule (tests/conftest.py) names real modules and splits only safe ones."""

from __future__ import annotations

import re

from tests.conftest import SLOWEST_FIRST, SPLIT_ACROSS_PROCESSES
from tests.support import ROOT


def test_the_slowest_modules_exist() -> None:
    missing = [m for m in SLOWEST_FIRST if not (ROOT / m).is_file()]
    assert not missing, f"renamed or removed: update SLOWEST_FIRST in tests/conftest.py: {missing}"
    assert len(set(SLOWEST_FIRST)) == len(SLOWEST_FIRST)


def test_split_modules_share_no_fixture_between_their_tests() -> None:
    """A module whose tests run in different processes must not set anything up once for all."""
    for module in SPLIT_ACROSS_PROCESSES:
        text = (ROOT / module).read_text()
        assert not re.search(r"scope\s*=\s*['\"](module|package|class)['\"]", text), module
