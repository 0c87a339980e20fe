"""Structured row filters turned into safe SQL.

Front ends never send SQL text.  They send a list of ``{"column", "op",
"value"}`` conditions joined by AND and an optional bounding box; this module
checks every column against the table and every value against the column's
PostgreSQL type, and only then composes a WHERE clause out of
``psycopg.sql.Identifier`` and ``psycopg.sql.Literal`` pieces.  Literals (not
bind parameters) are used because the clause must also work inside
``CREATE VIEW``, which takes no parameters.  Anything that does not check out
raises :class:`~analysis.errors.AnalysisError` naming the offending field,
before any SQL runs.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, Literal

import psycopg
from psycopg import sql
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from analysis.errors import AnalysisError

__all__ = [
    "BBox",
    "Condition",
    "FilterSpec",
    "check_bbox",
    "Op",
    "compose_where",
    "parse_filter",
    "require_srid",
    "table_columns",
]

Op = Literal[
    "=",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "in",
    "not_in",
    "like",
    "ilike",
    "is_null",
    "is_not_null",
    "between",
]
Scalar = bool | int | float | str


def _json_value(value: Any) -> Any:
    """A JSON scalar or a flat list of them; anything else is refused outright."""
    if value is None or isinstance(value, Scalar):
        return value
    if isinstance(value, list) and all(isinstance(v, Scalar) for v in value):
        return value
    raise ValueError("must be a string, a number, true/false, or a list of those")


BBox = tuple[float, float, float, float]
MAX_LIST = 1000
MAX_TEXT = 10_000
_INT_RANGE = {"smallint": 2**15, "integer": 2**31, "bigint": 2**63}


class Condition(BaseModel):
    """One ``column op value`` test."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: StrictStr = Field(min_length=1, max_length=63)
    op: Op
    value: Annotated[Any, BeforeValidator(_json_value)] = None


def _list_or_object(schema: dict[str, Any]) -> None:
    """JSON Schema of FilterSpec: the object form, or a bare list of conditions."""
    as_object = dict(schema)
    where = as_object["properties"]["where"]
    schema.clear()
    schema.update(
        title=as_object.pop("title"),
        description=as_object.pop("description"),
        anyOf=[{"type": "array", "items": where["items"], "maxItems": where["maxItems"]}, as_object],
    )


class FilterSpec(BaseModel):
    """Conditions joined by AND, and an optional bounding box.

    A bare list of conditions is accepted as ``{"where": [...]}``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_list_or_object)

    where: list[Condition] = Field(default_factory=list, max_length=100)
    bbox: BBox | None = None
    bbox_srid: int | None = Field(default=None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, data: Any) -> Any:
        return {"where": data} if isinstance(data, list) else data

    @field_validator("bbox")
    @classmethod
    def _ordered(cls, bbox: BBox | None) -> BBox | None:
        return check_bbox(bbox)


def check_bbox(bbox: BBox | None) -> BBox | None:
    """A bbox must be four finite numbers with xmin < xmax and ymin < ymax."""
    if bbox is None:
        return None
    if not all(math.isfinite(v) for v in bbox):
        raise ValueError("bbox values must be finite numbers")
    xmin, ymin, xmax, ymax = bbox
    if xmin >= xmax or ymin >= ymax:
        raise ValueError("bbox must be [xmin, ymin, xmax, ymax] with xmin < xmax, ymin < ymax")
    return bbox


def parse_filter(raw: Any, *, field: str = "filter") -> FilterSpec:
    """Validate a filter from a job's params; errors name the field at fault."""
    try:
        return FilterSpec.model_validate(raw if raw is not None else [])
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        if isinstance(raw, list) and loc[:1] == ["where"]:
            loc = loc[1:]
        raise AnalysisError(err["msg"], field=_path(field, loc)) from None


def _path(field: str, loc: list[Any]) -> str:
    out = field
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def compose_where(
    spec: FilterSpec,
    columns: Mapping[str, str],
    *,
    geometry_column: str | None = None,
    srid: int | None = None,
    table_alias: str | None = None,
    field: str = "filter",
    bbox_field: str | None = None,
) -> sql.Composed:
    """The WHERE condition (without the keyword) for ``spec`` on a table.

    ``columns`` maps each column of the table to its PostgreSQL type as
    ``format_type`` prints it (see :func:`table_columns`).  ``srid`` is the
    SRID of ``geometry_column``, needed only for a bbox.  An empty spec gives
    ``TRUE``.
    """
    parts: list[sql.Composable] = []
    for i, cond in enumerate(spec.where):
        parts.append(_condition(cond, columns, table_alias, f"{field}[{i}]"))
    if spec.bbox is not None:
        where = bbox_field or f"{field}.bbox"
        parts.append(_bbox(spec, columns, geometry_column, srid, table_alias, where))
    if not parts:
        return sql.Composed([sql.SQL("TRUE")])
    return sql.Composed([sql.SQL(" AND ").join(parts)])


def _column(name: str, alias: str | None) -> sql.Identifier:
    return sql.Identifier(alias, name) if alias else sql.Identifier(name)


_COMPARE = {"=", "!=", "<", "<=", ">", ">="}
_SQL_OPS = {op: sql.SQL(op) for op in _COMPARE - {"!="}} | {
    "!=": sql.SQL("<>"),
    "like": sql.SQL("LIKE"),
    "ilike": sql.SQL("ILIKE"),
    "in": sql.SQL("IN"),
    "not_in": sql.SQL("NOT IN"),
}


def _condition(
    cond: Condition, columns: Mapping[str, str], alias: str | None, where: str
) -> sql.Composable:
    if cond.column not in columns:
        known = ", ".join(sorted(columns))
        raise AnalysisError(
            f"no column {cond.column!r} in the table; columns are: {known}",
            field=f"{where}.column",
        )
    pgtype = columns[cond.column]
    kind = _kind(pgtype)
    col = _column(cond.column, alias)
    vfield = f"{where}.value"

    if cond.op in ("is_null", "is_not_null"):
        if cond.value is not None:
            raise AnalysisError(f"{cond.op} takes no value", field=vfield)
        return sql.SQL("({} IS NULL)" if cond.op == "is_null" else "({} IS NOT NULL)").format(col)
    if kind is None:
        raise AnalysisError(
            f"column {cond.column!r} has type {pgtype}, which can only be tested with "
            "is_null or is_not_null"
            + (
                " (use bbox for a spatial filter)"
                if _base(pgtype) in ("geometry", "geography")
                else ""
            ),
            field=f"{where}.op",
        )
    if cond.op in ("like", "ilike") and kind != "text":
        raise AnalysisError(
            f"{cond.op} needs a text column; {cond.column!r} is {pgtype}", field=f"{where}.op"
        )

    if cond.op in _COMPARE or cond.op in ("like", "ilike"):
        if isinstance(cond.value, list) or cond.value is None:
            raise AnalysisError(f"{cond.op} takes one value, not a list or null", field=vfield)
        lit = _literal(cond.value, kind, pgtype, vfield)
        return sql.SQL("({} {} {})").format(col, _SQL_OPS[cond.op], lit)

    values = cond.value
    if not isinstance(values, list):
        raise AnalysisError(f"{cond.op} takes a list of values", field=vfield)
    if cond.op == "between":
        if len(values) != 2:
            raise AnalysisError("between takes a list of two values [low, high]", field=vfield)
        low, high = (_literal(v, kind, pgtype, f"{vfield}[{j}]") for j, v in enumerate(values))
        return sql.SQL("({} BETWEEN {} AND {})").format(col, low, high)
    if not 1 <= len(values) <= MAX_LIST:
        raise AnalysisError(f"{cond.op} takes 1 to {MAX_LIST} values", field=vfield)
    lits = sql.SQL(", ").join(
        _literal(v, kind, pgtype, f"{vfield}[{j}]") for j, v in enumerate(values)
    )
    return sql.SQL("({} {} ({}))").format(col, _SQL_OPS[cond.op], lits)


def _base(pgtype: str) -> str:
    """``character varying(20)`` -> ``character varying``; arrays keep ``[]``."""
    return re.sub(r"\(.*?\)", "", pgtype).strip().lower()


_KINDS = {
    "smallint": "int",
    "integer": "int",
    "bigint": "int",
    "real": "float",
    "double precision": "float",
    "numeric": "numeric",
    "text": "text",
    "character varying": "text",
    "character": "text",
    "citext": "text",
    "name": "text",
    "boolean": "bool",
    "date": "date",
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamp",
    "uuid": "uuid",
}


def _kind(pgtype: str) -> str | None:
    return _KINDS.get(_base(pgtype))


def _literal(value: Any, kind: str, pgtype: str, field: str) -> sql.Literal:
    """``value`` checked against the column type and wrapped as a literal."""

    def bad(expect: str) -> AnalysisError:
        return AnalysisError(
            f"{value!r} is not {expect}, as the column's type {pgtype} needs", field=field
        )

    if kind in ("int", "float", "numeric"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise bad("a finite number")
        limit = _INT_RANGE.get(_base(pgtype), 2**63)
        if isinstance(value, int) and not -limit <= value < limit:
            raise bad(f"a number within ±2^{limit.bit_length() - 1}")
        if kind == "numeric" and isinstance(value, float):
            return sql.Literal(Decimal(repr(value)))
        return sql.Literal(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return sql.Literal(value)
    if not isinstance(value, str):
        raise bad("a string")
    if "\x00" in value or len(value) > MAX_TEXT:
        raise bad(f"a string without NUL characters of at most {MAX_TEXT} characters")
    if kind == "text":
        return sql.Literal(value)
    try:
        if kind == "date":
            return sql.Literal(dt.date.fromisoformat(value))
        if kind == "timestamp":
            return sql.Literal(dt.datetime.fromisoformat(value))
        return sql.Literal(uuid.UUID(value))
    except ValueError:
        raise bad(f"an ISO {kind}" if kind != "uuid" else "a UUID") from None


def _bbox(
    spec: FilterSpec,
    columns: Mapping[str, str],
    geometry_column: str | None,
    srid: int | None,
    alias: str | None,
    field: str,
) -> sql.Composable:
    geoms = [c for c, t in columns.items() if _base(t).startswith("geometry")]
    if geometry_column is None and len(geoms) == 1:
        geometry_column = geoms[0]
    if geometry_column not in geoms:
        raise AnalysisError(
            "a bbox needs exactly one geometry column to test; the table has "
            + (", ".join(geoms) or "none"),
            field=field,
        )
    if not srid:
        raise AnalysisError(
            f"geometry column {geometry_column!r} has no SRID, so a bbox cannot be placed",
            field=field,
        )
    assert spec.bbox is not None
    envelope = sql.SQL("ST_MakeEnvelope({}, {}, {}, {}, {})").format(
        *(sql.Literal(float(v)) for v in spec.bbox), sql.Literal(spec.bbox_srid or srid)
    )
    if spec.bbox_srid and spec.bbox_srid != srid:
        envelope = sql.SQL("ST_Transform({}, {})").format(envelope, sql.Literal(srid))
    return sql.SQL("ST_Intersects({}, {})").format(_column(geometry_column, alias), envelope)


def table_columns(conn: psycopg.Connection[Any], schema: str, table: str) -> dict[str, str]:
    """Each column of ``schema.table`` and its type as ``format_type`` prints it."""
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod)"
        " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY a.attnum",
        (schema, table),
    ).fetchall()
    return {name: pgtype for name, pgtype in rows}


def require_srid(conn: psycopg.Connection[Any], srid: int | None, *, field: str) -> None:
    """Fail naming ``field`` when ``srid`` (a bbox's) is not in ``spatial_ref_sys``.

    Checked before reading, so an unknown SRID is a parameter error, not a failed query.
    """
    if srid is None:
        return
    if conn.execute("SELECT 1 FROM spatial_ref_sys WHERE srid = %s", (srid,)).fetchone() is None:
        raise AnalysisError(f"SRID {srid} is not in spatial_ref_sys", field=field)
