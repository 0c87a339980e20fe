"""``create_view`` job type: a view or materialised view of a table, from a structured spec.

Params: ``input_table``, ``view_name`` (``schema.name``, default schema ``results``),
``columns`` (default all), ``filter`` (``[{column, op, value}]`` joined by AND), ``bbox``
with ``bbox_srid``, ``materialized``, ``replace``; or ``refresh: true`` with ``view_name`` to
refresh a materialised view. Never SQL text: see docs/job_types/create_view.md.
"""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
from psycopg import sql
from pydantic import AfterValidator, Field, model_validator

from geojobs import layer_sql, worker_cli
from geojobs import view_sql as q
from geojobs.context import JobContext
from geojobs.errors import InvalidInput, OutputExists
from geojobs.filters import BBox, Condition, FilterSpec, check_bbox, compose_where, require_srid
from geojobs.layers import Layer, describe_layer, split_name
from geojobs.params import ColumnName, InputTable, JobParams, OutputTable

JOB_TYPE = "create_view"

_TYPES = {
    "POINT": "Point",
    "LINESTRING": "LineString",
    "POLYGON": "Polygon",
    "MULTIPOINT": "MultiPoint",
    "MULTILINESTRING": "MultiLineString",
    "MULTIPOLYGON": "MultiPolygon",
    "GEOMETRYCOLLECTION": "GeometryCollection",
}
_MULTI = {"Point": "MultiPoint", "LineString": "MultiLineString", "Polygon": "MultiPolygon"}


class Params(JobParams):
    """Parameters of ``create_view``."""

    view_name: OutputTable = Field(
        description="The view, 'schema.name' (plain identifiers); default schema results."
    )
    input_table: InputTable | None = Field(
        default=None, description="Table (or view) to show; required unless refresh is true."
    )
    columns: list[ColumnName] | None = Field(
        default=None, max_length=1600, description="Columns to show, in order; default all."
    )
    filter: list[Condition] = Field(
        default_factory=list, max_length=100, description="[{column, op, value}] joined by AND."
    )
    bbox: Annotated[BBox | None, AfterValidator(check_bbox)] = Field(
        default=None, description="[xmin, ymin, xmax, ymax]: rows whose geometry meets it."
    )
    bbox_srid: int | None = Field(default=None, gt=0, description="SRID of bbox; default the table's.")
    materialized: bool = Field(default=False, description="A materialised view (indexed).")
    replace: bool = Field(default=False, description="Replace an existing view of that name.")
    refresh: bool = Field(default=False, description="Refresh the materialised view view_name; nothing else.")

    @model_validator(mode="after")
    def _refresh_alone(self) -> Params:
        if self.refresh:
            given = [
                name
                for name in ("input_table", "columns", "bbox", "bbox_srid")
                if getattr(self, name) is not None
            ] + (["filter"] if self.filter else [])
            if given:
                raise ValueError(f"refresh takes only view_name; remove {', '.join(given)}")
        elif self.input_table is None:
            raise ValueError("input_table is required unless refresh is true")
        return self


EXAMPLE: dict[str, Any] = {
    "input_table": "public.nc_counties",
    "view_name": "results.nc_high_sids",
    "columns": ["fid", "name", "sid74", "bir74", "geom"],
    "filter": [{"column": "sid74", "op": ">=", "value": 10}],
    "materialized": True,
}

# `make demo` reloads the sample tables, and a view would pin the table it reads (DROP TABLE
# fails while a view depends on it), so the demo makes no view: see EXAMPLE and the docs.
DEMO: list[dict[str, Any]] = []


def run(ctx: JobContext, params: Params) -> dict[str, Any]:
    """Create (or refresh) the view; return its name and row count."""
    if params.refresh:
        return _refresh(ctx.conn, params.view_name)
    assert params.input_table is not None
    layer = describe_layer(ctx.conn, params.input_table, require_geometry=False)
    columns = _columns(layer, params.columns)
    spec = FilterSpec(where=params.filter, bbox=params.bbox, bbox_srid=params.bbox_srid)
    where = compose_where(
        spec,
        layer.type_names,
        geometry_column=layer.geometry_column,
        srid=layer.srid,
        field="filter",
        bbox_field="bbox",
    )
    require_srid(ctx.conn, params.bbox_srid, field="bbox_srid")
    warnings: list[str] = []
    key = layer.key
    if params.materialized and key is not None and key not in columns:
        columns.insert(0, key)
        warnings.append(f"added the key column {key!r} so the view can be refreshed concurrently")
    if params.materialized and key is None:
        warnings.append(
            f"{layer.qualified_name} has no single-column primary key: the materialised view "
            "has no unique index and is refreshed without CONCURRENTLY"
        )
    select, geometry_type = _select_list(ctx.conn, layer, columns)

    schema, name = split_name(params.view_name)
    assert schema is not None
    view = sql.Identifier(schema, name)
    if (schema, name) == (layer.schema, layer.name):
        raise InvalidInput("a view cannot replace its own input table", field="view_name")
    _make_room(ctx.conn, schema, name, replace=params.replace)

    statement = q.CREATE_MATERIALIZED if params.materialized else q.CREATE_VIEW
    ctx.conn.execute(statement.format(view=view, columns=select, table=layer.identifier, where=where))
    ctx.progress(0.8)
    geometry_column = layer.geometry_column if layer.geometry_column in columns else None
    if params.materialized:
        if geometry_column is not None:
            ctx.conn.execute(
                q.GIST_INDEX.format(
                    name=sql.Identifier(f"{name[:55]}_geom_gix"),
                    view=view,
                    geom=sql.Identifier(geometry_column),
                )
            )
        if key is not None:
            ctx.conn.execute(
                q.UNIQUE_INDEX.format(
                    name=sql.Identifier(f"{name[:55]}_key_uix"), view=view, key=sql.Identifier(key)
                )
            )
    rows = _count(ctx.conn, view)
    return {
        "view_name": params.view_name,
        "output_table": params.view_name,
        "rows": rows,
        "materialized": params.materialized,
        "columns": columns,
        "geometry_column": geometry_column,
        "geometry_type": geometry_type if geometry_column else None,
        "srid": layer.srid if geometry_column else None,
        "warnings": warnings,
    }


def _columns(layer: Layer, requested: list[str] | None) -> list[str]:
    """The columns to show, each checked to exist, no duplicates."""
    if requested is None:
        return list(layer.columns)
    for i, column in enumerate(requested):
        layer.require_column(column, field=f"columns[{i}]")
    if len(set(requested)) != len(requested):
        raise InvalidInput("a column is listed twice", field="columns")
    if not requested:
        raise InvalidInput("list at least one column, or leave columns out for all", field="columns")
    return list(requested)


def _select_list(
    conn: psycopg.Connection[Any], layer: Layer, columns: list[str]
) -> tuple[sql.Composable, str | None]:
    """The SELECT list: geometry columns cast to their type and SRID, others as they are.

    A column already typed (``geometry(MultiPolygon,4326)``) keeps its typmod in the view.
    An untyped one is profiled: one type and one SRID give that cast; Polygon mixed with
    MultiPolygon (or the line/point pairs) is promoted with ST_Multi; anything else stays
    ``geometry(Geometry, srid)``.  Returns the list and the main geometry's type.
    """
    items: list[sql.Composable] = []
    main_type: str | None = None
    for column in columns:
        ident = sql.Identifier(column)
        if layer.columns[column] != "geometry":
            items.append(ident)
            continue
        typed = layer.type_names[column].lower() != "geometry"
        if typed:
            items.append(ident)
            gtype = layer.geometry_type if column == layer.geometry_column else None
        else:
            item, gtype = _cast(conn, layer, column)
            items.append(item)
        if column == layer.geometry_column:
            main_type = gtype
    return sql.SQL(", ").join(items), main_type


def _cast(conn: psycopg.Connection[Any], layer: Layer, column: str) -> tuple[sql.Composable, str]:
    ident = sql.Identifier(column)
    row = conn.execute(q.GEOMETRY_PROFILE.format(geom=ident, table=layer.identifier)).fetchone()
    types = {_TYPES.get(t, "Geometry") for t in (row[0] if row and row[0] else [])}
    srids = set(row[1] if row and row[1] else [])
    if len(srids) > 1 or 0 in srids:
        raise InvalidInput(
            f"column {column!r} of {layer.qualified_name} mixes SRIDs {sorted(srids)}; "
            "a view column needs one",
            field="input_table",
        )
    srid = srids.pop() if srids else layer.srid
    if not srid:
        raise InvalidInput(f"column {column!r} has no SRID", field="input_table")
    multis = {_MULTI.get(t, t) for t in types}
    if len(types) == 1:
        gtype = types.pop()
        template = q.TYPED_GEOMETRY
    elif len(multis) == 1 and multis <= set(_MULTI.values()):
        gtype = multis.pop()
        template = q.MULTI_GEOMETRY
    else:
        gtype, template = "Geometry", q.TYPED_GEOMETRY
    # gtype is one of the fixed names above, never text from the request.
    return template.format(geom=ident, type=sql.SQL(gtype), srid=sql.Literal(int(srid))), gtype


def _make_room(conn: psycopg.Connection[Any], schema: str, name: str, *, replace: bool) -> None:
    """Drop an existing view of that name when asked to; never drop a table."""
    row = conn.execute(layer_sql.RELATION_EXISTS, {"schema": schema, "name": name}).fetchone()
    if row is None:
        return
    kind = row[0]
    if kind not in q.DROP:
        raise OutputExists(
            f"{schema}.{name} exists and is not a view; choose another view_name",
            field="view_name",
        )
    if not replace:
        raise OutputExists(
            f"{schema}.{name} already exists; set replace to true to replace it", field="view_name"
        )
    try:
        with conn.transaction():
            conn.execute(q.DROP[kind].format(view=sql.Identifier(schema, name)))
    except psycopg.errors.DependentObjectsStillExist as exc:
        raise InvalidInput(
            f"{schema}.{name} cannot be replaced: other objects depend on it ({exc.diag.message_detail})",
            field="view_name",
        ) from None


def _refresh(conn: psycopg.Connection[Any], view_name: str) -> dict[str, Any]:
    schema, name = split_name(view_name)
    row = conn.execute(layer_sql.RELATION_EXISTS, {"schema": schema, "name": name}).fetchone()
    if row is None or row[0] != "m":
        what = "does not exist" if row is None else "is not a materialised view"
        raise InvalidInput(f"{view_name} {what}; nothing to refresh", field="view_name")
    view = sql.Identifier(schema or "", name)
    unique = conn.execute(q.HAS_UNIQUE_INDEX, {"schema": schema, "name": name}).fetchone()
    concurrently = bool(unique and unique[0])
    conn.execute((q.REFRESH_CONCURRENTLY if concurrently else q.REFRESH).format(view=view))
    return {
        "view_name": view_name,
        "output_table": view_name,
        "rows": _count(conn, view),
        "refreshed": True,
        "concurrently": concurrently,
        "warnings": [] if concurrently else ["no unique index: refreshed without CONCURRENTLY"],
    }


def _count(conn: psycopg.Connection[Any], view: sql.Identifier) -> int:
    row = conn.execute(q.COUNT_ROWS.format(view=view)).fetchone()
    return int(row[0]) if row else 0


if __name__ == "__main__":
    raise SystemExit(worker_cli.main(JOB_TYPE))
