"""Plain-text tables the CLI and the demo print: jobs, and job types with their parameters."""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Sequence
from typing import Any

from geojobs.jobtype import JobType

__all__ = ["print_jobs", "describe_types", "format_type"]


def print_jobs(jobs: list[dict[str, Any]]) -> None:
    """A table of jobs: id, type, status, attempts, duration, result table or error."""
    print(f"{'id':>6}  {'type':<18} {'status':<10} {'try':>5} {'seconds':>8}  result / error")
    for job in jobs:
        seconds = ""
        if job["started_at"] and job["finished_at"]:
            seconds = f"{(job['finished_at'] - job['started_at']).total_seconds():.2f}"
        outcome = (job["result"] or {}).get("output_table") or (job["result"] or {}).get(
            "output_view") or (job["result"] or {}).get("output_raster") or ""
        if job["result"] and "rows" in job["result"]:
            outcome += f" ({job['result']['rows']} rows)"
        if job["error"]:
            outcome = job["error"][:80]
        tries = f"{job['attempts']}/{job['max_attempts']}"
        print(f"{job['id']:>6}  {job['job_type']:<18} {job['status']:<10} {tries:>5} "
              f"{seconds:>8}  {outcome}")


def describe_types(jobtypes: Sequence[JobType], width: int | None = None) -> str:
    """Every job type: its summary, a table of its parameters and its example."""
    width = width or max(80, min(140, shutil.get_terminal_size((100, 24)).columns))
    return "\n\n".join(format_type(jobtype, width) for jobtype in jobtypes) + "\n"


def format_type(jobtype: JobType, width: int = 100) -> str:
    """One job type as plain text: ``name: summary``, the parameter table, the example."""
    lines = textwrap.wrap(f"{jobtype.JOB_TYPE}: {jobtype.summary}", width,
                          subsequent_indent="    ")
    rows = [(p.name, p.type, "required" if p.required else json.dumps(p.default), p.description)
            for p in jobtype.parameters()]
    if rows:
        header = ("parameter", "type", "default", "description")
        name_w, type_w, default_w = (max(len(r[i]) for r in [header, *rows]) for i in range(3))
        type_w = min(type_w, 32)
        default_w = min(default_w, 16)
        left = 2 + name_w + 2 + type_w + 2 + default_w + 2
        desc_w = max(30, width - left)
        for i, (name, kind, default, description) in enumerate([header, *rows]):
            cells = [textwrap.wrap(kind, type_w) or [""], textwrap.wrap(default, default_w) or [""],
                     textwrap.wrap(description, desc_w) or [""]]
            for j in range(max(map(len, cells))):
                parts = [c[j] if j < len(c) else "" for c in cells]
                lead = name if j == 0 else ""
                lines.append(f"  {lead:<{name_w}}  {parts[0]:<{type_w}}  {parts[1]:<{default_w}}  "
                             f"{parts[2]}".rstrip())
            if i == 0:
                lines.append(f"  {'-' * name_w}  {'-' * type_w}  {'-' * default_w}  "
                             f"{'-' * min(desc_w, 11)}")
    lines.extend(textwrap.wrap(f"example: {json.dumps(jobtype.EXAMPLE)}", width, initial_indent="  ",
                               subsequent_indent="    ", break_on_hyphens=False))
    return "\n".join(lines)
