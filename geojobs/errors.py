"""The error tree of geojobs: the root and the analysis errors from :mod:`analysis.errors`,
and the platform's own classes beneath the same root.

The runner handles :class:`GeojobsError` alone and reads its ``retryable`` flag; see
:mod:`analysis.errors` for why the root lives there.
"""

from __future__ import annotations

from analysis.errors import (
    AnalysisError,
    EmptyInput,
    GeojobsError,
    GeometryTypeError,
    TooFewFeatures,
)

__all__ = [
    "GeojobsError",
    "AnalysisError",
    "EmptyInput",
    "TooFewFeatures",
    "GeometryTypeError",
    "InvalidParams",
    "InputLayerMissing",
    "InvalidInput",
    "OutputExists",
    "JobInterrupted",
]


class InvalidParams(GeojobsError):
    """The job's parameters are invalid."""


class InputLayerMissing(GeojobsError):
    """An input table or column named in the parameters does not exist."""


class InvalidInput(GeojobsError):
    """The input layer cannot be analysed as it is (no SRID, wrong geometry type, empty...)."""


class OutputExists(GeojobsError):
    """The output already exists and the job was not asked to overwrite it."""


class JobInterrupted(Exception):
    """The job must stop now: it was cancelled or its lease was lost. Not an error of the job."""
