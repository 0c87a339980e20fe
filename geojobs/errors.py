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
    "JobFailed",
    "JobCancelled",
    "JobNotFinished",
    "JobInterrupted",
    "DaskUnavailable",
    "DaskWorkerLost",
]


class InvalidParams(GeojobsError):
    """The job's parameters are invalid."""


class InputLayerMissing(GeojobsError):
    """An input table or column named in the parameters does not exist."""


class InvalidInput(GeojobsError):
    """The input layer cannot be analysed as it is (no SRID, wrong geometry type, empty...)."""


class OutputExists(GeojobsError):
    """The output already exists and the job was not asked to overwrite it."""


class JobFailed(GeojobsError):
    """The job failed."""

    def __init__(self, job_id: int, job_type: str, error: str | None, *, status: str = "failed") -> None:
        self.job_id, self.job_type, self.error, self.status = job_id, job_type, error, status
        super().__init__(f"job {job_id} ({job_type}) {status}: {error or 'no error recorded'}")


class JobCancelled(JobFailed):
    """The job was cancelled before it completed."""

    def __init__(self, job_id: int, job_type: str, error: str | None) -> None:
        super().__init__(job_id, job_type, error, status="cancelled")


class JobNotFinished(GeojobsError):
    """The job has no result yet: it is still queued or running."""


class JobInterrupted(Exception):
    """The job must stop now: it was cancelled or its lease was lost. Not an error of the job."""


class DaskUnavailable(GeojobsError):
    """The Dask cluster named for this job cannot be used: its scheduler does not answer, or its
    workers cannot connect to the database."""


class DaskWorkerLost(GeojobsError):
    """A Dask worker left the cluster while it held a part of the job; the job is retried."""

    retryable = True
