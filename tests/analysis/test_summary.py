"""Every analysis summary becomes a job result the same way, and the result is valid JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from analysis.dissolve import DissolveSummary
from analysis.local_input import LocalSummary
from analysis.overlay import OverlaySummary
from analysis.raster_clip import ClipResult
from analysis.summary import FLATTEN, Summary


@dataclass(frozen=True)
class _Inner(Summary):
    share: float


@dataclass
class _Outer(Summary):
    n: int
    ratio: float
    flags: tuple[bool, ...]
    inner: _Inner
    by_name: dict[int, float] = field(default_factory=dict)


def test_to_dict_gives_plain_json_values() -> None:
    summary = _Outer(n=np.int64(3), ratio=np.float32(0.5), flags=(np.bool_(True), False),
                     inner=_Inner(share=float("nan")), by_name={1: -np.inf})
    assert summary.to_dict() == {"n": 3, "ratio": 0.5, "flags": [True, False],
                                 "inner": {"share": "nan"}, "by_name": {"1": "-inf"}}
    assert type(summary.to_dict()["n"]) is int


def test_every_analysis_summary_is_json_as_postgres_takes_it() -> None:
    summaries: list[Summary] = [
        DissolveSummary(groups=np.int64(2), warnings=["w"]),
        OverlaySummary(*range(12)),
        ClipResult("a.tif", 2, 2, 1, "float32", "EPSG:4326", (0.0, 0.0, 1.0, 1.0),
                   float("nan"), np.int64(3)),
        LocalSummary("gi_star", 5, 4, 1, 0, 0, [np.int64(7)], None, {"type": "queen"}, 99, 1,
                     True, fdr_cutoffs={"0.05": np.float64(0.01)}),
    ]
    for summary in summaries:
        text = json.dumps(summary.to_dict(), allow_nan=False)  # jsonb refuses NaN
        assert json.loads(text) == summary.to_dict()
    assert summaries[0].to_dict() == {"groups": 2, "skipped_empty": 0, "repaired": 0,
                                      "coverage_union_groups": 0, "warnings": ["w"]}
    assert summaries[2].to_dict()["nodata"] == "nan"
    assert summaries[2].to_dict()["bounds"] == [0.0, 0.0, 1.0, 1.0]


@dataclass
class _Flat(Summary):
    crs: str | None
    panel: dict[str, object] = field(default_factory=dict, metadata=FLATTEN)
    warnings: list[str] = field(default_factory=list)


def test_a_flattened_field_merges_its_keys_over_the_fields_before_it() -> None:
    summary = _Flat(crs="EPSG:4326", panel={"crs": "EPSG:32616", "grid": {"cells": np.int64(4)}})
    assert summary.to_dict() == {"crs": "EPSG:32616", "grid": {"cells": 4}, "warnings": []}
