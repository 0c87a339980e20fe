"""The one error tree of geojobs, rooted here so that ``analysis`` can raise into it.

``analysis`` imports nothing of the platform, so the root lives in this module and
:mod:`geojobs.errors` adds the platform's own classes beneath it. The runner handles
:class:`GeojobsError` alone: ``retryable = False`` fails the job at once (no retry can fix
bad input), ``True`` retries it with backoff; any exception outside the tree is retried.
Each error carries a message a GIS analyst can act on and, where one parameter is at fault,
its name in ``field``, printed first. A class's docstring is its default message.
"""

from __future__ import annotations

__all__ = ["GeojobsError", "AnalysisError", "EmptyInput", "TooFewFeatures", "GeometryTypeError"]


class GeojobsError(Exception):
    """A geojobs job failed."""

    retryable = False

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
        self.field = field

    def __reduce__(self) -> tuple[object, ...]:
        """Pickle with ``field`` (Dask sends a partition's error back to the job process)."""
        return (_rebuild, (type(self), super().__str__(), self.field))

    def __str__(self) -> str:
        message = super().__str__()
        if self.field and not message.startswith(f"{self.field}:"):
            return f"{self.field}: {message}"
        return message


def _rebuild(cls: type[GeojobsError], message: str, field: str | None) -> GeojobsError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.field = field
    return error


class AnalysisError(GeojobsError, ValueError):
    """The analysis cannot run on this input; retrying will not help."""


class EmptyInput(AnalysisError):
    """The input holds no usable feature."""


class TooFewFeatures(AnalysisError):
    """Fewer features than the statistic needs."""


class GeometryTypeError(AnalysisError):
    """The input's geometry type does not suit the analysis."""
