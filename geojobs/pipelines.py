"""Pipelines: named steps, each a job, submitted as one unit; a step may read earlier outputs.

A spec (JSON or YAML) names its steps; a step's params may hold ``{"output_of": "<step>"}``
wherever a table is expected, and ``after`` lists further steps it waits for. Submission
checks the whole spec, then inserts every step's job in one transaction, in dependency order,
with ``depends_on`` and ``output_of`` rewritten to job ids; the queue does the rest (see
docs/jobs.md#dependencies-and-pipelines).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geojobs import queue, registry
from geojobs.errors import GeojobsError, InvalidParams
from geojobs.params import bad_set, format_validation_error, parse_set, set_dotted, validate_params

__all__ = ["MAX_STEPS", "PipelineSpec", "StepSpec", "PlannedStep", "load_spec", "apply_sets",
           "plan", "submit", "rerun", "show", "status_of", "wait", "cancel", "format_tree"]

MAX_STEPS = 1000
"""A pipeline has at most this many steps (a bigger one is refused before anything is inserted)."""

STEP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
FINAL = {"completed", "failed", "cancelled"}


class StepSpec(BaseModel):
    """One step: a job of ``job_type`` with ``params``, waiting for the steps it references."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=STEP_NAME.pattern, description="Unique within the pipeline.")
    job_type: str
    params: dict[str, Any] = Field(default_factory=dict)
    after: list[str] = Field(default_factory=list,
                             description="Further steps to wait for (besides output_of ones).")
    priority: int = 0
    max_attempts: int = Field(default=4, ge=1)


class PipelineSpec(BaseModel):
    """A pipeline: a name and its steps."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200)
    steps: list[StepSpec] = Field(min_length=1)


@dataclass(frozen=True)
class PlannedStep:
    """A checked step: its position in the spec and the steps it depends on."""

    position: int
    spec: StepSpec
    depends: tuple[str, ...]


def load_spec(path: str | Path) -> dict[str, Any]:
    """Read a spec file: ``.json``, or ``.yaml``/``.yml`` (the extension decides)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidParams(f"spec: cannot read {path}: {exc.strerror}") from None
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
        elif path.suffix.lower() in {".yaml", ".yml"}:
            raw = yaml.safe_load(text)
        else:
            raise InvalidParams(f"spec: {path.name}: the extension must be .json, .yaml or .yml")
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InvalidParams(f"spec: {path.name} is not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidParams("spec: must be an object with 'steps'")
    return raw


def apply_sets(raw: dict[str, Any], sets: Iterable[str]) -> dict[str, Any]:
    """Apply ``step.key=value`` overrides to the steps' params, parsed as ``jobs rerun`` parses
    ``--set`` (``key`` may be dotted; value JSON, else a string)."""
    spec = json.loads(json.dumps(raw))
    steps = {s.get("name"): s for s in spec.get("steps") or [] if isinstance(s, dict)}
    for item in sets:
        (step_name, *path), value = parse_set(item)
        if not path:
            raise bad_set(item, "must be step.key=value (the step's name, then its parameter)")
        if step_name not in steps:
            raise bad_set(item, f"no step named {step_name!r}")
        params = steps[step_name].setdefault("params", {})
        if not isinstance(params, dict):
            raise bad_set(item, f"step {step_name!r} has params that are not an object")
        set_dotted(params, path, value, item=item)
    return spec


def _references(value: Any) -> list[Any]:
    """Every ``output_of`` target in a parameter document."""
    if isinstance(value, dict):
        if "output_of" in value:
            return [value["output_of"]]
        return [r for v in value.values() for r in _references(v)]
    if isinstance(value, list):
        return [r for v in value for r in _references(v)]
    return []


def _rewrite(value: Any, job_ids: dict[str, int]) -> Any:
    """The parameters with step names in ``output_of`` replaced by job ids."""
    if isinstance(value, dict):
        if "output_of" in value and isinstance(value["output_of"], str):
            return {**value, "output_of": job_ids[value["output_of"]]}
        return {k: _rewrite(v, job_ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, job_ids) for v in value]
    return value


def plan(raw: Any) -> tuple[PipelineSpec, list[PlannedStep]]:
    """Check a whole spec and return its steps in dependency order; errors name the field."""
    if not isinstance(raw, dict):
        raise InvalidParams("spec: must be an object with 'steps'")
    steps_raw = raw.get("steps")
    if isinstance(steps_raw, list) and len(steps_raw) > MAX_STEPS:
        raise InvalidParams(f"steps: a pipeline has at most {MAX_STEPS} steps, this one has "
                            f"{len(steps_raw)}")
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        raise InvalidParams(format_validation_error(exc).replace("params.", "")) from None
    positions: dict[str, int] = {}
    for i, step in enumerate(spec.steps):
        if step.name in positions:
            raise InvalidParams(f"steps[{i}].name: step {step.name!r} is used twice "
                                f"(also steps[{positions[step.name]}])")
        positions[step.name] = i
    planned: dict[str, PlannedStep] = {}
    for i, step in enumerate(spec.steps):
        where = f"steps[{i}] ({step.name})"
        try:
            module = registry.load(step.job_type)
            validate_params(module.Params, step.params, references=True)
        except InvalidParams as exc:
            raise InvalidParams(f"{where}.{exc}") from None
        depends: list[str] = []
        for ref in _references(step.params):
            if not isinstance(ref, str):
                raise InvalidParams(f"{where}.params: output_of {ref!r} must name a step of this "
                                    "pipeline")
            if ref not in positions:
                raise InvalidParams(f"{where}.params: output_of {ref!r} is not a step of this "
                                    "pipeline")
            depends.append(ref)
        for name in step.after:
            if name not in positions:
                raise InvalidParams(f"{where}.after: {name!r} is not a step of this pipeline")
            depends.append(name)
        if step.name in depends:
            raise InvalidParams(f"{where}: a step cannot depend on itself")
        planned[step.name] = PlannedStep(i, step, tuple(dict.fromkeys(depends)))
    return spec, _topological(planned)


def _topological(planned: dict[str, PlannedStep]) -> list[PlannedStep]:
    """Steps ordered so that each comes after its dependencies; a cycle is an error."""
    order: list[PlannedStep] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    for root in planned:
        if state.get(root):
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = []
        while stack:
            name, index = stack.pop()
            if index == 0:
                state[name] = 1
                path.append(name)
            deps = planned[name].depends
            if index < len(deps):
                stack.append((name, index + 1))
                dep = deps[index]
                if state.get(dep) == 1:
                    cycle = path[path.index(dep):] + [dep]
                    raise InvalidParams("steps: cycle between steps " + " -> ".join(cycle))
                if not state.get(dep):
                    stack.append((dep, 0))
                continue
            state[name] = 2
            path.pop()
            order.append(planned[name])
    return order


def _insert(conn: psycopg.Connection[Any], spec: PipelineSpec, steps: list[PlannedStep],
            reuse: dict[str, int], *, replaces: int | None = None,
            rerun_from: str | None = None,
            rerun_of: dict[str, int] | None = None) -> tuple[int, dict[str, int]]:
    """Insert the run and its new steps' jobs in one transaction; return (id, step -> job).

    ``rerun_of`` maps the steps of a re-run to the jobs they re-run (``background_jobs.rerun_of``).
    """
    try:
        with conn.transaction():
            pipeline_id = queue.insert_pipeline(conn, spec.name, spec.model_dump(mode="json"),
                                                replaces=replaces, rerun_from=rerun_from)
            job_ids = dict(reuse)
            for step in steps:
                if step.spec.name not in job_ids:
                    job_ids[step.spec.name] = queue.enqueue(
                        conn, step.spec.job_type, _rewrite(step.spec.params, job_ids),
                        priority=step.spec.priority, max_attempts=step.spec.max_attempts,
                        depends_on=[job_ids[d] for d in step.depends],
                        rerun_of=(rerun_of or {}).get(step.spec.name))
                queue.insert_pipeline_step(conn, pipeline_id, step.spec.name, step.position,
                                           job_ids[step.spec.name],
                                           reused=step.spec.name in reuse)
    except psycopg.errors.DataError as exc:  # the insert trigger's checks (0005_pipelines)
        raise InvalidParams(str(exc.diag.message_primary or exc)) from None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise GeojobsError(str(exc.diag.message_primary or exc)) from None
    return pipeline_id, {s.spec.name: job_ids[s.spec.name] for s in steps}


def submit(conn: psycopg.Connection[Any], raw: Any, sets: Iterable[str] = ()) -> tuple[int, dict[str, int]]:
    """Check and submit a spec; return the pipeline id and each step's job id, in spec order."""
    spec, steps = plan(apply_sets(raw, sets) if sets else raw)
    pipeline_id, job_ids = _insert(conn, spec, steps, {})
    return pipeline_id, {s.name: job_ids[s.name] for s in spec.steps}


def _downstream(steps: list[PlannedStep], start: str) -> set[str]:
    """``start`` and every step that depends on it, directly or not."""
    found = {start}
    for step in steps:  # dependency order: dependencies are seen first
        if any(d in found for d in step.depends):
            found.add(step.spec.name)
    return found


def rerun(conn: psycopg.Connection[Any], pipeline_id: int, from_step: str,
          sets: Iterable[str] = ()) -> tuple[int, dict[str, int]]:
    """Run ``from_step`` and its downstream steps again as a new run replacing ``pipeline_id``.

    Upstream steps are reused as they are (their jobs are linked, not run again). Re-run steps
    that name their output replace it (``overwrite``): the new run supersedes the old. Each new
    job's ``rerun_of`` names the job of the same step in the run replaced, and its provenance
    names both runs (``provenance.pipeline``).
    Returns the new run's id and the job ids of the steps it runs.
    """
    old = queue.get_pipeline(conn, pipeline_id)
    if old is None:
        raise InvalidParams(f"pipeline: no pipeline {pipeline_id}")
    old_jobs = {s["step"]: s["job_id"] for s in queue.pipeline_steps(conn, pipeline_id)}
    raw = apply_sets(old["spec"], sets)
    for step in raw["steps"]:
        _replace_outputs(step)
    spec, steps = plan(raw)
    if from_step not in {s.spec.name for s in steps}:
        raise InvalidParams(f"--from: no step named {from_step!r} in pipeline {pipeline_id}")
    again = _downstream(steps, from_step)
    reuse = {name: job for name, job in old_jobs.items() if name not in again}
    new_id, job_ids = _insert(conn, spec, steps, reuse, replaces=pipeline_id, rerun_from=from_step,
                              rerun_of={name: job for name, job in old_jobs.items() if name in again})
    return new_id, {s.spec.name: job_ids[s.spec.name] for s in steps if s.spec.name in again}


def _replace_outputs(step: dict[str, Any]) -> None:
    """Let a re-run step replace the output it names (the run it replaces wrote it)."""
    try:
        fields = registry.load(step["job_type"]).Params.model_fields
    except (InvalidParams, KeyError):
        return
    params = step.setdefault("params", {})
    # view_name/replace: create_view's older names of output_table/overwrite
    if ("output_table" in params or "view_name" in params) and "overwrite" in fields:
        params.pop("replace", None)
        params["overwrite"] = True


def show(conn: psycopg.Connection[Any], pipeline_id: int) -> dict[str, Any]:
    """A pipeline run and its steps (job id, status, progress, result, error)."""
    run = queue.get_pipeline(conn, pipeline_id)
    if run is None:
        raise InvalidParams(f"pipeline: no pipeline {pipeline_id}")
    run["steps"] = queue.pipeline_steps(conn, pipeline_id)
    run["status"] = status_of(run["steps"])
    return run


def status_of(steps: list[dict[str, Any]]) -> str:
    """The run's status: once every step has ended, failed (or cancelled) if one did, else
    completed; before that running, queued or waiting, the furthest any step has got."""
    statuses = {s["status"] for s in steps}
    if statuses <= FINAL:
        return next((s for s in ("failed", "cancelled") if s in statuses), "completed")
    return next(s for s in ("running", "queued", "waiting") if s in statuses)


def wait(conn: psycopg.Connection[Any], pipeline_id: int, *, timeout: float | None = None,
         interval: float = 0.2) -> dict[str, Any]:
    """Poll until every step of the run has ended; return :func:`show` of it."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        run = show(conn, pipeline_id)
        if all(s["status"] in FINAL for s in run["steps"]):
            return run
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"pipeline {pipeline_id} not finished after {timeout} s")
        time.sleep(interval)


def cancel(conn: psycopg.Connection[Any], pipeline_id: int) -> list[int]:
    """Cancel every step of the run not yet finished; return their job ids."""
    if queue.get_pipeline(conn, pipeline_id) is None:
        raise InvalidParams(f"pipeline: no pipeline {pipeline_id}")
    return queue.cancel_pipeline(conn, pipeline_id)


def format_tree(run: dict[str, Any]) -> str:
    """The run as a tree: each step under the step it depends on, with status and progress."""
    steps = run["steps"]
    by_job = {s["job_id"]: s for s in steps}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for step in steps:
        parents = [by_job[d]["step"] for d in step["depends_on"] or [] if d in by_job]
        children.setdefault(parents[-1] if parents else None, []).append(step)
    head = f"pipeline {run['id']}"
    if run["name"]:
        head += f" {run['name']!r}"
    head += f": {run['status']}"
    if run["replaces"]:
        head += f" (re-run of pipeline {run['replaces']} from step {run['rerun_from']})"
    lines = [head]

    def walk(parent: str | None, indent: str) -> None:
        kids = children.get(parent, [])
        for k, step in enumerate(kids):
            last = k == len(kids) - 1
            lines.append(indent + ("└─ " if last else "├─ ") + _step_line(step, by_job))
            walk(step["step"], indent + ("   " if last else "│  "))

    walk(None, "")
    return "\n".join(lines)


def _step_line(step: dict[str, Any], by_job: dict[int, dict[str, Any]]) -> str:
    progress = f" {100 * (step['progress'] or 0):.0f}%" if step["status"] == "running" else ""
    line = f"{step['step']}: job {step['job_id']} {step['job_type']} {step['status']}{progress}"
    if step["reused"]:
        line += " (reused)"
    also = [by_job[d]["step"] for d in (step["depends_on"] or [])[:-1] if d in by_job]
    if len(also) and len(step["depends_on"] or []) > 1:
        line += f" (also after {', '.join(also)})"
    outcome = (step["result"] or {}).get("output_table")
    if step["error"]:
        line += f": {step['error'][:100]}"
    elif outcome:
        line += f" -> {outcome}"
    return line
