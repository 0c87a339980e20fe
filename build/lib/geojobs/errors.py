"""The error tree of geojobs.

The runner maps each class to what happens to the job: errors that retrying cannot fix
(``retryable = False``) fail the job at once; anything else is retried with backoff.
The class docstring is the default message.
"""

from __future__ import annotations


class GeojobsError(Exception):
    """A geojobs job failed."""

    retryable = False

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
        self.field = field

    def __str__(self) -> str:
        message = super().__str__()
        if self.field and not message.startswith(f"{self.field}:"):
            return f"{self.field}: {message}"
        return message


class InvalidParams(GeojobsError):
    """The job's parameters are invalid."""


class InputLayerMissing(GeojobsError):
    """An input table or column named in the parameters does not exist."""


class InvalidInput(GeojobsError):
    """The input layer cannot be analysed as it is (no SRID, wrong geometry type, empty...)."""


class OutputExists(GeojobsError):
    """The output already exists and the job was not asked to overwrite it."""


class AnalysisFailed(GeojobsError):
    """The analysis rejected its input."""


class ResultWriteFailed(GeojobsError):
    """Writing the result table failed."""

    retryable = True


class JobInterrupted(Exception):
    """The job must stop now: it was cancelled or its lease was lost. Not an error of the job."""
