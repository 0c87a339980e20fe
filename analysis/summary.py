"""What an analysis did, as a job's ``result``: one convention for every analysis.

Each analysis returns its counts, choices and warnings as a dataclass deriving from
:class:`Summary`; the job merges ``summary.to_dict()`` into its result next to the output
table's name, rows and SRID. A field declared with ``field(metadata=FLATTEN)`` holds a dict
whose keys go to the top level of the result (what depends on the input's shape, say),
overriding the fields before it. ``to_dict`` makes the values JSON-ready, because the result is
stored as ``jsonb``: numpy scalars become Python numbers, tuples lists, and a float that JSON
cannot hold (NaN, an infinity) its name as a string ("nan", "inf", "-inf").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

__all__ = ["FLATTEN", "Summary", "json_ready"]

FLATTEN = {"flatten": True}
"""Field metadata: merge this dict field's keys into the summary's top level."""


class Summary:
    """Mixin of an analysis's summary dataclass: :meth:`to_dict` for the job's result."""

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (see the module docstring)."""
        assert dataclasses.is_dataclass(self), "a Summary is a dataclass"
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = json_ready(getattr(self, f.name))
            if f.metadata.get("flatten"):
                out.update(value)
            else:
                out[f.name] = value
        return out


def json_ready(value: Any) -> Any:
    """``value`` with numpy scalars, tuples and non-finite floats turned into JSON values."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        number = float(value)
        return number if math.isfinite(number) else str(number)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_ready(dataclasses.asdict(value))
    return value
