"""The 17 emerging hot spot categories of ArcGIS Pro, as a partition.

ArcGIS Pro's "How Emerging Hot Spot Analysis works" defines eight hot spot
patterns, their eight cold mirrors and "No Pattern Detected". Its
definitions overlap at the edges, so they are applied here in a fixed order
(the first rule that holds wins), for hot spots:

1. the last step is a significant hot spot and at least 90 % of the steps are:
   ``Intensifying`` if the Mann-Kendall trend of the z-scores is significant and
   rising, ``Diminishing`` if significant and falling, else ``Persistent``;
2. the last step is a significant hot spot, fewer than 90 % are, and some step
   was a significant cold spot: ``Oscillating``;
3. the last step is a significant hot spot (and no step was cold): ``New`` if
   no earlier step was significant, ``Consecutive`` if the hot steps form one
   run of at least two steps that ends at the last step, else ``Sporadic``;
4. the last step is not significant and at least 90 % of the steps were
   significant hot spots: ``Historical``;

and the same rules with hot and cold (and the trend's direction) swapped.
Whatever is left is ``No Pattern Detected``. Codes follow ArcGIS: 1 to 8 for
hot (new, consecutive, intensifying, persistent, diminishing, sporadic,
oscillating, historical), -1 to -8 for the cold mirrors, 0 for no pattern.

The classifier only needs the per-step significance bins (+1 hot, -1 cold,
0 not significant) and the trend (+1 rising, -1 falling, 0 none), so it is a
pure function, testable on hand-made series.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["CATEGORY_CODES", "CATEGORY_NAMES", "classify", "category_name"]

_PATTERNS = (
    "New",
    "Consecutive",
    "Intensifying",
    "Persistent",
    "Diminishing",
    "Sporadic",
    "Oscillating",
    "Historical",
)

#: ArcGIS-style code of each of the 17 categories.
CATEGORY_CODES: dict[str, int] = {"No Pattern Detected": 0}
for _code, _pattern in enumerate(_PATTERNS, start=1):
    CATEGORY_CODES[f"{_pattern} Hot Spot"] = _code
    CATEGORY_CODES[f"{_pattern} Cold Spot"] = -_code

#: Category name of each code.
CATEGORY_NAMES: dict[int, str] = {code: name for name, code in CATEGORY_CODES.items()}

_NEW, _CONSECUTIVE, _INTENSIFYING, _PERSISTENT, _DIMINISHING = 1, 2, 3, 4, 5
_SPORADIC, _OSCILLATING, _HISTORICAL = 6, 7, 8


def category_name(code: int) -> str:
    """The category name of an ArcGIS-style code (-8..8)."""
    return CATEGORY_NAMES[int(code)]


def _trailing_run(flags: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """Length of the run of True that ends at the last column, per row."""
    n_steps = flags.shape[1]
    first_false_from_end = np.argmax(~flags[:, ::-1], axis=1)
    return np.where(flags.all(axis=1), n_steps, first_false_from_end).astype(np.int64)


def _one_side(
    mine: npt.NDArray[np.bool_],
    other: npt.NDArray[np.bool_],
    rising: npt.NDArray[np.bool_],
    falling: npt.NDArray[np.bool_],
) -> npt.NDArray[np.int64]:
    """Codes 1..8 (0 where no rule holds) for one side, ``mine`` being its bins."""
    n_steps = mine.shape[1]
    n_mine = mine.sum(axis=1)
    last = mine[:, -1]
    # "at least 90 %" in integers, so that exactly 90 % is never lost to rounding
    mostly = 10 * n_mine >= 9 * n_steps
    ever_other = other.any(axis=1)
    run = _trailing_run(mine)

    conditions = [
        last & mostly & rising,
        last & mostly & falling,
        last & mostly,
        last & ever_other,
        last & (n_mine == 1),
        last & (run >= 2) & (run == n_mine),
        last,
        mostly & ~other[:, -1],
    ]
    choices = [
        _INTENSIFYING,
        _DIMINISHING,
        _PERSISTENT,
        _OSCILLATING,
        _NEW,
        _CONSECUTIVE,
        _SPORADIC,
        _HISTORICAL,
    ]
    return np.select(conditions, choices, default=0).astype(np.int64)


def classify(
    bins: npt.ArrayLike,
    trend: npt.ArrayLike,
) -> npt.NDArray[np.int64]:
    """ArcGIS-style category codes of locations from their bins and trend.

    ``bins``: shape (locations, steps) or (steps,), time in order; > 0 is a
    significant hot spot, < 0 a significant cold spot, 0 not significant.
    ``trend``: per location, > 0 a significant rising Mann-Kendall trend of the
    z-scores, < 0 a significant falling one, 0 no significant trend.
    Returns the codes (-8..8), one per location (a scalar array for one series).
    """
    b = np.asarray(bins)
    single = b.ndim == 1
    b = np.atleast_2d(b)
    if b.ndim != 2 or b.shape[1] == 0:
        raise ValueError("bins must be a (locations, steps) array with at least one step")
    t = np.broadcast_to(np.asarray(trend), (b.shape[0],))
    hot, cold = b > 0, b < 0
    up, down = t > 0, t < 0
    hot_codes = _one_side(hot, cold, up, down)
    # the cold mirror: hot and cold swapped, and the trend's direction too
    cold_codes = _one_side(cold, hot, down, up)
    # a side has a code only if its last step is significant, or if no last
    # step is and 90 % of its steps are: never both sides
    codes = np.where(hot_codes != 0, hot_codes, -cold_codes)
    return codes[0] if single else codes
