"""Errors raised by the analysis functions.

Each carries a message a GIS analyst can act on and, where the problem
comes from one parameter, the name of that parameter in ``field`` so the
worker can report it as ``params.<field>``.
"""

from __future__ import annotations


class AnalysisError(ValueError):
    """The analysis cannot run on this input; retrying will not help."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __str__(self) -> str:
        message = super().__str__()
        return f"{self.field}: {message}" if self.field else message


class EmptyInput(AnalysisError):
    """The input holds no usable feature."""


class TooFewFeatures(AnalysisError):
    """Fewer features than the statistic needs."""


class GeometryTypeError(AnalysisError):
    """The input's geometry type does not suit the analysis."""
