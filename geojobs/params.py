"""Parameter models shared by the job types, and turning validation errors into messages.

Every job type declares a pydantic ``Params`` model deriving from :class:`JobParams`: unknown
fields are rejected (so typos surface), and every error names the field as ``params.<path>``.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from geojobs.config import output_schemas
from geojobs.errors import InvalidParams

__all__ = ["JobParams", "OutputParams", "DistributedParams", "WeightsParams",
           "BinaryWeightsParams", "GridParams",
           "InputTable", "OutputTable", "ColumnName", "OutputOf", "validate_params",
           "IDENTIFIER", "MAX_CELL_SIZE", "parse_set", "bad_set", "set_dotted"]

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
MAX_IDENTIFIER = 63
_FORBIDDEN_SCHEMAS = {"pg_catalog", "information_schema", "pg_toast", "public"}


def _check_input_table(value: str) -> str:
    parts = value.split(".")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ValueError("must be a table name, 'table' or 'schema.table'")
    if any(len(p) > MAX_IDENTIFIER or "\x00" in p for p in parts):
        raise ValueError(f"each part must be at most {MAX_IDENTIFIER} characters")
    return value


def _check_output_table(value: str) -> str:
    parts = value.split(".")
    if len(parts) > 2 or not all(IDENTIFIER.match(p) and len(p) <= MAX_IDENTIFIER for p in parts):
        raise ValueError(
            "must be 'name' or 'schema.name' where each part matches [a-z_][a-z0-9_]* "
            f"and has at most {MAX_IDENTIFIER} characters"
        )
    schema = parts[0] if len(parts) == 2 else output_schemas()[0]
    allowed = output_schemas()
    if schema in _FORBIDDEN_SCHEMAS or schema.startswith("pg_") or schema not in allowed:
        raise ValueError(f"schema {schema!r} is not an output schema; use one of {list(allowed)}")
    if parts[-1] in {"background_jobs", "geojobs_migrations"}:
        raise ValueError(f"{parts[-1]!r} is reserved for the job queue")
    return value if len(parts) == 2 else f"{schema}.{value}"


def _check_column(value: str) -> str:
    if not value or len(value) > MAX_IDENTIFIER or "\x00" in value:
        raise ValueError(f"must be a column name of 1 to {MAX_IDENTIFIER} characters")
    return value


class OutputOf(BaseModel):
    """A reference to another job's result table, resolved when the job is claimed."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="output_of")

    output_of: Annotated[int, Field(ge=1)] | Annotated[str, Field(min_length=1, max_length=63)] = (
        Field(description="Id of a job among depends_on, or a step name inside a pipeline spec."))


def _input_table_or_reference(value: Any, handler: ValidatorFunctionWrapHandler,
                              info: ValidationInfo) -> str:
    """A table name; or, when submitting (context ``references``), an ``output_of`` reference.

    A submitted reference validates as the placeholder ``output_of:<ref>``; at run time the
    queue has replaced it by the table, so one still there names a job without a table.
    """
    if isinstance(value, dict) and "output_of" in value:
        if info.context and info.context.get("references"):
            return f"output_of:{OutputOf.model_validate(value).output_of}"
        raise ValueError(f"output_of {value['output_of']!r} did not resolve to a table: that job "
                         "is not a completed dependency with an output_table in its result")
    return _check_input_table(handler(value))


InputTable = Annotated[str, WrapValidator(_input_table_or_reference,
                                          json_schema_input_type=str | OutputOf)]
"""An existing table or view, 'table' or 'schema.table' (looked up in the catalog later), or
``{"output_of": <job id>}``: the output table of a job this one depends on."""
OutputTable = Annotated[str, AfterValidator(_check_output_table)]
"""A table the job creates: plain identifiers, in an output schema (default ``results``)."""
ColumnName = Annotated[str, AfterValidator(_check_column)]
"""A column of an input table (looked up in the catalog later)."""


class JobParams(BaseModel):
    """Base of every job type's parameters: strict, immutable, no unknown fields, finite numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


P = TypeVar("P", bound=JobParams)


class OutputParams(JobParams):
    """Parameters of jobs that write one result table."""

    output_table: OutputTable | None = Field(
        default=None, description="Result table; default results.<job_type>_<job id>."
    )
    overwrite: bool = Field(default=False, description="Replace the output table if it exists.")


_SCHEDULER = re.compile(r"^(tcp|tls)://[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")


def _check_scheduler(value: str | None) -> str | None:
    if value is not None and not _SCHEDULER.match(value):
        raise ValueError("must be a Dask scheduler address such as 'tcp://host:8786'")
    return value


class DistributedParams(OutputParams):
    """Parameters of the job types that can run partitioned on a Dask cluster (docs/scale.md)."""

    scheduler: Annotated[str | None, AfterValidator(_check_scheduler)] = Field(
        default=None, max_length=255,
        description="Dask scheduler to spread a large input over, 'tcp://host:8786'; default "
                    "GEOJOBS_DASK_SCHEDULER. Inputs of at most GEOJOBS_DASK_MIN_ROWS rows run "
                    "in the worker.")


class WeightsParams(JobParams):
    """``weights``: how neighbours are defined; every key optional (defaults per geometry).

    Distances are in the units of the CRS the analysis works in: the layer's own when it is
    projected, metres when geographic input is projected to UTM first.
    """

    type: Literal["queen", "rook", "knn", "distance_band"] | None = Field(
        default=None, description="Default: queen for polygons, distance_band for points, lines "
                                  "and grid cells.")
    k: int | None = Field(default=None, ge=1, le=1000, description="knn: neighbours (8).")
    threshold: float | None = Field(
        default=None, gt=0, description="distance_band: distance in the projected CRS's units; "
                                        "default the smallest that gives every feature a "
                                        "neighbour.")
    transform: Literal["B", "R"] | None = Field(
        default=None, description="B binary (hotspot default) or R row-standardised "
                                  "(outlier default).")


class BinaryWeightsParams(WeightsParams):
    """``weights`` of a statistic defined on binary weights only (the space-time Gi*)."""

    transform: Literal["B"] | None = Field(
        default=None, description="Only B (binary): the statistic is defined on binary weights.")


MAX_CELL_SIZE = 1e7
"""The largest grid cell, in CRS units: 10,000 km, a quarter of the Earth's circumference. A UTM
zone is about 670 km wide at the equator, so a larger cell holds every incident of a zone in
one cell (no statistic can be computed) and only loses floating-point precision. The smallest
cell is bounded by the number of cells it makes (:func:`analysis.grid.make_grid`)."""


class GridParams(JobParams):
    """``grid``: count point incidents per cell of a regular grid and analyse the counts."""

    shape: Literal["square", "hexagon"] = Field(default="square", description="Cell shape.")
    cell_size: float | None = Field(
        default=None, gt=0, le=MAX_CELL_SIZE,
        description="Distance between adjacent cell centres, in the units of the projected CRS "
                    "(metres for geographic input, which is projected to UTM); default derived "
                    "from the points' spacing and recorded in the result.")


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the field as ``params.<path>``."""
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"])
        where = f"params.{path}" if path else "params"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "; ".join(lines)


def validate_params(model: type[P], raw: Any, *, references: bool = False) -> P:
    """Validate raw job parameters (parsed JSON) or raise :class:`InvalidParams`.

    ``references`` accepts ``{"output_of": ...}`` where a table is expected (at submission,
    before the queue resolves them at claim time).
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidParams(f"params: must be a JSON object, got {type(raw).__name__}")
    try:
        return model.model_validate(raw, context={"references": references})
    except ValidationError as exc:
        raise InvalidParams(format_validation_error(exc)) from None


def bad_set(item: str, why: str, *, flag: str = "--set") -> InvalidParams:
    """The error for a ``--set`` that cannot be applied, naming its key: one wording for every
    command that takes ``--set`` (``jobs rerun``, ``pipeline submit``, ``pipeline rerun``)."""
    return InvalidParams(f"{flag} {item!r}: bad key {item.partition('=')[0]!r}: {why}")


def parse_set(item: str, *, flag: str = "--set") -> tuple[list[str], Any]:
    """``key.sub=value`` as (``["key", "sub"]``, value): the value is JSON when it parses,
    else the text as a string."""
    key, sep, text = item.partition("=")
    parts = key.split(".")
    if not sep or not all(parts):
        raise bad_set(item, "must be key=value (a dotted key sets a nested parameter: a.b=value)",
                      flag=flag)
    try:
        value: Any = json.loads(text)
    except json.JSONDecodeError:
        value = text
    return parts, value


def set_dotted(params: dict[str, Any], path: list[str], value: Any, *, item: str,
               flag: str = "--set") -> None:
    """Set ``params[path[0]][path[1]]... = value``, making missing objects on the way; a value
    on the way that is not an object is an error, never replaced."""
    node = params
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(path[: depth + 1])
            raise bad_set(item, f"params.{where} is not an object (it is {json.dumps(child)})",
                          flag=flag)
        node = child
    node[path[-1]] = value
