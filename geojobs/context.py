"""What a job handler receives: the job's identity, its connection and its progress channel."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from geojobs.config import job_scratch_dir, output_schemas

__all__ = ["JobContext"]


@dataclass(frozen=True)
class JobContext:
    """One attempt of one job, as a handler sees it.

    ``conn`` is inside the job's transaction: everything the handler writes through it
    becomes visible only if the job completes, together with the job row. ``report`` records
    progress (0 to 1) and raises :class:`~geojobs.errors.JobInterrupted` when the job was
    cancelled or this worker lost its lease, so a handler stops at its next progress check.
    """

    job_id: int
    job_type: str
    attempt: int
    worker_id: str
    conn: psycopg.Connection[Any]
    report: Callable[[float], None]
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("geojobs.job"))
    announce_file: Callable[[str], None] = field(default=lambda path: None)
    _scratch_made: list[Path] = field(default_factory=list, repr=False, compare=False)

    def progress(self, fraction: float) -> None:
        """Record progress between 0 and 1; stop here if the job was cancelled."""
        self.report(min(max(float(fraction), 0.0), 1.0))

    def scratch_dir(self) -> Path:
        """A directory for this job's temporary files, ``GEOJOBS_OUTPUT_DIR/.partial-<id>``
        (the outputs' file system); created now. If the job does not complete (cancelled, timed
        out, killed, failed), its worker removes the directory with everything in it. What an
        earlier attempt left there (its worker killed outright) is removed first."""
        path = job_scratch_dir(self.job_id)
        if not self._scratch_made:
            shutil.rmtree(path, ignore_errors=True)
            self._scratch_made.append(path)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def wrote_file(self, path: str | os.PathLike[str]) -> None:
        """Tell the worker that ``path`` (a file output) now exists: removed by the worker if
        the job does not complete after all."""
        self.announce_file(os.fspath(path))

    def output_table(self, requested: str | None) -> str:
        """The output table, ``schema.name``: the one requested, or results.<type>_<id>."""
        if requested:
            return requested
        return f"{output_schemas()[0]}.{self.job_type}_{self.job_id}"
