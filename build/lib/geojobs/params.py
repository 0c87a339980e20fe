"""Parameter models shared by the job types, and turning validation errors into messages.

Every job type declares a pydantic ``Params`` model deriving from :class:`JobParams`: unknown
fields are rejected (so typos surface), and every error names the field as ``params.<path>``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from geojobs.config import output_schemas
from geojobs.errors import InvalidParams

__all__ = ["JobParams", "OutputParams", "InputTable", "OutputTable", "ColumnName",
           "validate_params", "IDENTIFIER"]

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


InputTable = Annotated[str, AfterValidator(_check_input_table)]
"""An existing table or view, 'table' or 'schema.table' (looked up in the catalog later)."""
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


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the field as ``params.<path>``."""
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"])
        where = f"params.{path}" if path else "params"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "; ".join(lines)


def validate_params(model: type[P], raw: Any) -> P:
    """Validate raw job parameters (parsed JSON) or raise :class:`InvalidParams`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidParams(f"params: must be a JSON object, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidParams(format_validation_error(exc)) from None
