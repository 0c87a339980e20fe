"""Jobs as OGC API - Processes shows them: statusInfo, results, and the status mapping."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from geojobs.config import output_dir

__all__ = ["OGC_STATUS", "SQL_STATUS", "FINAL", "status_info", "results_document", "iso",
           "raster_path", "job_from_change"]

OGC_STATUS = {"waiting": "accepted", "queued": "accepted", "running": "running",
              "completed": "successful", "failed": "failed", "cancelled": "dismissed"}
"""Our status -> the OGC status code (waiting: for the jobs it depends on)."""
SQL_STATUS: dict[str, list[str]] = {}
for _ours, _ogc in OGC_STATUS.items():
    SQL_STATUS.setdefault(_ogc, []).append(_ours)
"""The OGC status code -> our statuses."""
FINAL = {"completed", "failed", "cancelled"}


def iso(value: datetime | None) -> str | None:
    """RFC 3339 with Z, or None."""
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


def _message(job: Mapping[str, Any]) -> str:
    if job["error"]:
        return str(job["error"])
    status, progress = job["status"], job["progress"]
    if status == "running":
        return f"running, {round(100 * (progress or 0))} %"
    return {"queued": "queued", "waiting": "waiting for the jobs it depends on",
            "completed": "completed", "cancelled": "dismissed"}.get(status, status)


def status_info(job: Mapping[str, Any], base: str, *, status: str | None = None) -> dict[str, Any]:
    """The statusInfo document of a job row (``status`` overrides the row's, e.g. after dismiss)."""
    sql_status = status or job["status"]
    progress = job["progress"]
    if sql_status == "completed":
        progress = 1.0
    info: dict[str, Any] = {
        "jobID": str(job["id"]),
        "processID": job["job_type"],
        "type": "process",
        "status": OGC_STATUS[sql_status],
        "message": _message({**job, "status": sql_status}),
        "progress": int(round(100 * (progress or 0))),
        "created": iso(job["created_at"]),
        "started": iso(job["started_at"]),
        "finished": iso(job["finished_at"]),
        "updated": iso(job["updated_at"]),
    }
    href = f"{base}/jobs/{job['id']}"
    links = [{"href": href, "rel": "self", "type": "application/json", "title": "job status"},
             {"href": f"{base}/jobs", "rel": "up", "type": "application/json", "title": "jobs"}]
    if sql_status == "completed":
        links.append({"href": f"{href}/results",
                      "rel": "http://www.opengis.net/def/rel/ogc/1.0/results",
                      "type": "application/json", "title": "results"})
    info["links"] = links
    return info


_CHANGE_FIELDS = ("id", "job_type", "status", "progress", "error", "created_at", "started_at",
                  "finished_at", "updated_at")


def _instant(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value).astimezone(UTC)


def job_from_change(change: Mapping[str, Any]) -> dict[str, Any] | None:
    """The job as :func:`status_info` needs it, from a ``geojobs_jobs`` NOTIFY payload (migration
    0012); None when the payload does not carry all of it (an error too long for a
    notification, a reconnection marker): then read the row."""
    if change.get("partial", True) or any(name not in change for name in _CHANGE_FIELDS):
        return None
    try:
        job = {name: change[name] for name in _CHANGE_FIELDS}
        for name in ("created_at", "started_at", "finished_at", "updated_at"):
            job[name] = _instant(job[name])
    except (TypeError, ValueError):
        return None
    return job


def raster_path(result: Mapping[str, Any]) -> Path | None:
    """The file a raster job wrote, if it lies inside the output directory."""
    relative = result.get("output_raster")
    if not relative:
        return None
    root = output_dir().resolve()
    path = (root / str(relative)).resolve()
    return path if path.is_relative_to(root) else None


def results_document(job: Mapping[str, Any], base: str) -> dict[str, Any]:
    """``GET /jobs/{id}/results`` of a successful job: the result, its timings and links."""
    result = dict(job["result"] or {})
    started, finished, created = job["started_at"], job["finished_at"], job["created_at"]
    result["timings"] = {
        "created": iso(created), "started": iso(started), "finished": iso(finished),
        "queued_seconds": (started - created).total_seconds() if started and created else None,
        "run_seconds": (finished - started).total_seconds() if started and finished else None,
    }
    document: dict[str, Any] = {"result": result}
    table = result.get("output_table") or result.get("output_view")
    if table:
        document["layer"] = {"href": f"{base}/collections/{table}", "rel": "data",
                             "type": "application/json", "title": f"result layer {table}"}
    if result.get("output_raster"):
        document["cog"] = {"href": f"{base}/jobs/{job['id']}/results/cog", "rel": "enclosure",
                           "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                           "title": "cloud-optimised GeoTIFF"}
    return document
