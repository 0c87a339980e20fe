"""``noop``: a diagnostic job type that does nothing useful, on purpose.

Operators queue it to check that workers are alive; the tests and benchmarks use it to make
a job sleep, fail or hold memory. It writes no table.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field

from geojobs import worker_cli
from geojobs.context import JobContext
from geojobs.params import JobParams

JOB_TYPE = "noop"


class Params(JobParams):
    """Parameters of ``noop``."""

    sleep_seconds: float = Field(default=0.0, ge=0, le=3600, description="Seconds to sleep.")
    steps: int = Field(default=1, ge=1, le=10_000, description="Progress reports while sleeping.")
    raise_error: str | None = Field(default=None, max_length=500,
                                    description="Raise RuntimeError with this message.")
    allocate_mb: int = Field(default=0, ge=0, le=4096,
                             description="Megabytes to allocate and keep (tests the memory cap).")


EXAMPLE: dict[str, Any] = {"sleep_seconds": 0.1}

_held: list[bytearray] = []  # allocations kept on purpose until the worker exits


def run(ctx: JobContext, params: Params) -> dict[str, Any]:
    """Sleep in steps (reporting progress), then fail or allocate as asked."""
    for step in range(params.steps):
        if params.sleep_seconds:
            time.sleep(params.sleep_seconds / params.steps)
        ctx.progress((step + 1) / params.steps)
    if params.allocate_mb:
        block = bytearray(params.allocate_mb * 2**20)
        block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page so it is resident
        _held.append(block)
    if params.raise_error is not None:
        raise RuntimeError(params.raise_error)
    return {"slept": params.sleep_seconds}


if __name__ == "__main__":
    raise SystemExit(worker_cli.main(JOB_TYPE))
