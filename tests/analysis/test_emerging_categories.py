"""The 17-category classifier on hand-made series, one per category, and its edges.

Each series is written from the category's definition in ArcGIS
Pro's "How Emerging Hot Spot Analysis works" ("H" a significant hot step, "C" cold, "." not significant).
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis.emerging_categories import CATEGORY_CODES, CATEGORY_NAMES, category_name, classify

UP, DOWN, FLAT = 1, -1, 0


def bins(pattern: str) -> np.ndarray:
    return np.array([{"H": 1, "C": -1, ".": 0}[c] for c in pattern], dtype=np.int8)


def mirror(pattern: str) -> str:
    return pattern.translate(str.maketrans("HC", "CH"))


# (series of 10 steps, trend, category): one per hot category
HOT_CASES = [
    ("........HH", FLAT, "Consecutive Hot Spot"),
    (".........H", FLAT, "New Hot Spot"),
    ("HHHHHHHHHH", UP, "Intensifying Hot Spot"),
    ("HHHHHHHHHH", FLAT, "Persistent Hot Spot"),
    ("HHHHHHHHHH", DOWN, "Diminishing Hot Spot"),
    ("H..H....HH", FLAT, "Sporadic Hot Spot"),
    ("C....H...H", FLAT, "Oscillating Hot Spot"),
    ("HHHHHHHHH.", FLAT, "Historical Hot Spot"),
]


def test_codes_follow_arcgis_numbering() -> None:
    assert len(CATEGORY_CODES) == 17
    order = ["New", "Consecutive", "Intensifying", "Persistent", "Diminishing", "Sporadic",
             "Oscillating", "Historical"]  # fmt: skip
    for code, pattern in enumerate(order, start=1):
        assert CATEGORY_NAMES[code] == f"{pattern} Hot Spot"
        assert CATEGORY_NAMES[-code] == f"{pattern} Cold Spot"
    assert category_name(0) == "No Pattern Detected"


@pytest.mark.parametrize(("pattern", "trend", "expected"), HOT_CASES)
def test_hot_category(pattern: str, trend: int, expected: str) -> None:
    assert category_name(classify(bins(pattern), trend)) == expected


@pytest.mark.parametrize(("pattern", "trend", "expected"), HOT_CASES)
def test_cold_mirror(pattern: str, trend: int, expected: str) -> None:
    # hot and cold swapped, and the trend's direction too
    got = category_name(classify(bins(mirror(pattern)), -trend))
    assert got == expected.replace("Hot Spot", "Cold Spot")


def test_no_pattern() -> None:
    assert category_name(classify(bins(".H.C..H..."), FLAT)) == "No Pattern Detected"


def test_all_seventeen_at_once() -> None:
    patterns = [p for p, _, _ in HOT_CASES] + [mirror(p) for p, _, _ in HOT_CASES] + [".........."]
    trends = [t for _, t, _ in HOT_CASES] + [-t for _, t, _ in HOT_CASES] + [0]
    codes = classify(np.stack([bins(p) for p in patterns]), np.array(trends))
    names = {category_name(c) for c in codes}
    assert names == set(CATEGORY_CODES)


# --- boundaries ----------------------------------------------------------


def test_exactly_ninety_percent_is_persistent() -> None:
    assert category_name(classify(bins(".HHHHHHHHH"), FLAT)) == "Persistent Hot Spot"
    # 9 of 10 with a rising trend is intensifying
    assert category_name(classify(bins("H.HHHHHHHH"), UP)) == "Intensifying Hot Spot"


def test_below_ninety_percent_is_not_persistent() -> None:
    # 17 of 20 = 85 %, one run ending at the last step, nothing earlier
    assert category_name(classify(bins("..." + "H" * 17), UP)) == "Consecutive Hot Spot"
    # 18 of 20 = 90 %
    assert category_name(classify(bins(".." + "H" * 18), UP)) == "Intensifying Hot Spot"


def test_exactly_ninety_percent_historical() -> None:
    assert category_name(classify(bins("HHHHHHHHH."), UP)) == "Historical Hot Spot"
    assert category_name(classify(bins("HHHHHHHH.."), UP)) == "No Pattern Detected"


def test_run_of_one_after_earlier_hot_is_sporadic() -> None:
    assert category_name(classify(bins("HH.......H"), FLAT)) == "Sporadic Hot Spot"


def test_run_of_one_with_nothing_before_is_new() -> None:
    assert category_name(classify(bins(".........H"), UP)) == "New Hot Spot"


def test_run_of_two_at_the_end_with_earlier_hot_is_sporadic() -> None:
    assert category_name(classify(bins("H.......HH"), FLAT)) == "Sporadic Hot Spot"


def test_significant_trend_on_a_non_hot_series_is_no_pattern() -> None:
    assert category_name(classify(bins(".........."), UP)) == "No Pattern Detected"
    assert category_name(classify(bins(".........."), DOWN)) == "No Pattern Detected"


def test_trend_does_not_matter_below_ninety_percent() -> None:
    for trend in (UP, DOWN, FLAT):
        assert category_name(classify(bins("......HHHH"), trend)) == "Consecutive Hot Spot"


def test_ninety_percent_hot_with_a_cold_step_first() -> None:
    # persistence wins over oscillation (partition order)
    assert category_name(classify(bins("C" + "H" * 9), FLAT)) == "Persistent Hot Spot"


def test_mostly_hot_but_cold_at_the_end_is_oscillating_cold() -> None:
    # historical needs a last step that is not significant at all
    assert category_name(classify(bins("H" * 9 + "C"), FLAT)) == "Oscillating Cold Spot"


def test_oscillating_needs_hot_last_step() -> None:
    assert category_name(classify(bins("HC.....H.."), FLAT)) == "No Pattern Detected"


def test_classify_accepts_a_matrix_and_broadcasts_the_trend() -> None:
    codes = classify(np.stack([bins("HHHHHHHHHH"), bins("CCCCCCCCCC")]), UP)
    assert codes.tolist() == [3, -5]


def test_rejects_empty_series() -> None:
    with pytest.raises(ValueError):
        classify(np.zeros((2, 0)), 0)
