"""Re-run a job: queue a copy of it with some parameters changed (``geojobs jobs rerun``).

The copy keeps the job type, priority, attempts, limits and dependencies of the job it re-runs,
and names it in ``rerun_of`` (migration 0008); its ``result.provenance`` names it too. The new
parameters are validated like any submission before anything is inserted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import psycopg

from geojobs import queue, registry
from geojobs.errors import GeojobsError, InvalidParams
from geojobs.params import parse_set, set_dotted, validate_params

__all__ = ["apply_sets", "rerun"]


def apply_sets(params: Any, sets: Iterable[str]) -> dict[str, Any]:
    """A copy of ``params`` with each ``key=value`` of ``sets`` applied."""
    result: dict[str, Any] = json.loads(json.dumps(params or {}))
    for item in sets:
        path, value = parse_set(item)
        set_dotted(result, path, value, item=item)
    return result


def _blame(message: str, sets: list[str]) -> str:
    """Prefix a validation message with the ``--set`` it is about, when one is."""
    for item in sets:
        key = item.partition("=")[0]
        if f"params.{key}:" in message or f"params.{key}." in message:
            return f"--set {item!r}: {message}"
    return message


def rerun(conn: psycopg.Connection[Any], job_id: int, sets: Iterable[str] = ()) -> int:
    """Queue a copy of job ``job_id`` with ``sets`` applied; return the new job's id.

    Errors (nothing inserted): no such job, a malformed ``--set``, or parameters the job type
    refuses (an unknown key, a bad value), each naming the key.
    """
    sets = list(sets)
    job = queue.get(conn, job_id)
    if job is None:
        raise GeojobsError(f"no job {job_id}", field="ID")
    params = apply_sets(job["params"], sets)
    jobtype = registry.load(job["job_type"])
    try:
        validate_params(jobtype.Params, params, references=bool(job["depends_on"]))
    except InvalidParams as exc:
        raise InvalidParams(_blame(str(exc), sets)) from None
    try:
        return queue.insert_rerun(conn, job, params)
    except psycopg.errors.DataError as exc:  # the insert trigger's checks (0005_pipelines)
        raise InvalidParams(str(exc.diag.message_primary or exc)) from None
