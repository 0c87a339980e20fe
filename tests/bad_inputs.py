"""Bad inputs for every job type: what each must fail on, at once, naming the field.

Generic cases are derived from each job type's ``Params`` model and ``EXAMPLE`` (so a new job
type gets them by being registered); the cases that need knowledge of one job type are listed
under its name in ``SPECIFIC``. ``FIXTURE_SQL`` makes the awkward tables the cases point at.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pydantic.fields import FieldInfo

from geojobs import registry

__all__ = ["Case", "cases", "all_cases", "FIXTURE_SQL", "derived_tables_sql", "CANARY"]

CANARY = "public.canary"
_DROP = "; DROP TABLE public.canary; --"


@dataclass(frozen=True)
class Case:
    """One bad job: its params, the field its error must start with, what the error must say."""

    job_type: str
    name: str
    params: Any
    field: str
    says: str  # a regular expression the error must contain (case-insensitive)
    setup: tuple[str, ...] = field(default=())  # SQL run as the admin before the case

    @property
    def id(self) -> str:
        return f"{self.job_type}-{self.name}"


# Tables every case database has besides the samples (made by the admin, readable by the worker
# through the default privileges of migration 0002, except private.*).
FIXTURE_SQL = [
    "CREATE TABLE public.canary (a int); INSERT INTO public.canary VALUES (1)",
    "CREATE TABLE public.no_geom AS SELECT fid, area, state_name, sub_region FROM public.us_states",
    "CREATE TABLE public.srid_zero AS SELECT fid, area, state_name, sub_region, "
    "ST_SetSRID(geom, 0)::geometry AS geom FROM public.us_states",
    "CREATE TABLE public.mixed_geoms (fid int PRIMARY KEY, area float8, sub_region text, "
    "geom geometry(Geometry, 4326)); INSERT INTO public.mixed_geoms VALUES "
    "(1, 1, 'a', 'SRID=4326;POINT(0 0)'), (2, 2, 'a', 'SRID=4326;LINESTRING(0 0, 1 1)'), "
    "(3, 3, 'a', 'SRID=4326;POLYGON((0 0, 1 0, 1 1, 0 0))')",
    "CREATE SCHEMA private",
    "CREATE TABLE private.states AS SELECT * FROM public.us_states",
    "CREATE TABLE results.taken AS SELECT 1 AS a",
    "CREATE VIEW results.taken_view AS SELECT 1 AS a",
    "CREATE TABLE public.lines_layer AS SELECT fid, areakey, "
    "ST_Multi(ST_Boundary(geom))::geometry(MultiLineString, 26916) AS geom "
    "FROM public.georgia_counties",
    "CREATE TABLE public.inf_values AS SELECT * FROM public.georgia_counties",
    "UPDATE public.inf_values SET pctpov = 'Infinity' WHERE fid = (SELECT min(fid) FROM public.inf_values)",
    "CREATE TABLE public.nc_inf AS SELECT * FROM public.nc_counties",
    "UPDATE public.nc_inf SET sid79 = '-Infinity' WHERE fid = (SELECT min(fid) FROM public.nc_inf)",
]


def derived_tables_sql(example_input: str) -> list[str]:
    """Copies of a job type's example input: empty, and with NaN / infinite coordinates."""
    from psycopg import sql

    source = sql.Identifier(*example_input.split("."))
    empty = sql.SQL("CREATE TABLE public.empty_input AS SELECT * FROM {} WHERE false")
    bad = sql.SQL("CREATE TABLE public.{} AS SELECT * FROM {}")
    return [
        empty.format(source).as_string(None),
        bad.format(sql.Identifier("nan_coords"), source).as_string(None),
        bad.format(sql.Identifier("inf_coords"), source).as_string(None),
    ]


def _output_cases(job_type: str, example: dict[str, Any]) -> list[Case]:
    def out(name: str, table: Any, says: str) -> Case:
        return Case(job_type, f"output_table-{name}", {**example, "output_table": table},
                    "output_table", says)

    not_output = "not an output schema"
    shape = "must be 'name' or 'schema.name'"
    return [
        out("pg_catalog", "pg_catalog.evil", not_output),
        out("information_schema", "information_schema.evil", not_output),
        out("queue_schema", "public.evil", not_output),
        out("queue_table", "results.background_jobs", "reserved for the job queue"),
        out("pg_toast", "pg_toast.evil", not_output),
        out("sql_injection", f"results.x{_DROP}", shape),
        out("quoted_injection", 'results."x"; DROP TABLE public.canary; --', shape),
        out("three_parts", "geojobs.results.evil", shape),
        out("unicode", "results.résultat_ß", shape),
        out("too_long", "results." + "a" * 64, shape),
        out("upper_case", "results.Evil", shape),
        out("not_a_string", 42, "valid string"),
        out("exists_without_overwrite", "results.taken", "already exists"),
        Case(job_type, "overwrite-not_a_bool", {**example, "overwrite": "sometimes"},
             "overwrite", "valid boolean"),
    ]


def _input_cases(job_type: str, example: dict[str, Any]) -> list[Case]:
    def inp(name: str, table: Any, says: str, field: str = "input_table") -> Case:
        return Case(job_type, f"input_table-{name}", {**example, "input_table": table}, field, says)

    missing = "does not exist"
    return [
        inp("unknown", "public.no_such_table", missing),
        inp("unknown_schema", "nowhere.us_states", missing),
        inp("sql_injection", f"us_states{_DROP}", missing),
        inp("quoted_injection", 'public."us_states"; DROP TABLE public.canary; --',
            f"{missing}|must be a table name"),
        inp("schema_injection", "public; DROP TABLE public.canary; --.us_states",
            f"{missing}|must be a table name"),
        inp("unicode", "public.états_ünïcødé", missing),
        inp("too_long", "public." + "t" * 64, "at most 63 characters"),
        inp("empty_string", "", "must be a table name"),
        inp("four_parts", "a.b.c.d", "must be a table name"),
        inp("no_geometry", "public.no_geom", "has no geometry column"),
        inp("srid_zero", "public.srid_zero", "no SRID"),
        inp("not_readable", "private.states", "may not read it"),
        inp("empty", "public.empty_input", "(no|empty|zero).*(feature|row)|empty"),
        inp("nan_coordinates", "public.nan_coords", "NaN or infinite coordinates|cannot be read"),
        inp("infinite_coordinates", "public.inf_coords", "NaN or infinite coordinates"),
        inp("pg_catalog", "pg_catalog.pg_authid", "has no geometry column|may not read"),
    ]


# The generic cases that only exercise shared validators (OutputTable, InputTable,
# validate_params) run for these job types only; every job type gets the rest.
FULL_GENERIC = {"noop", "dissolve"}
_VALIDATOR_ONLY = {"params-string", "params-number", "output_table-information_schema",
                   "output_table-pg_toast", "output_table-quoted_injection",
                   "output_table-three_parts", "output_table-unicode", "output_table-too_long",
                   "output_table-upper_case", "output_table-not_a_string",
                   "overwrite-not_a_bool", "input_table-unknown_schema",
                   "input_table-quoted_injection", "input_table-schema_injection",
                   "input_table-unicode", "input_table-too_long", "input_table-empty_string",
                   "input_table-four_parts", "geometry_column-attribute"}
# Generic cases that do not apply to a job type, and why.
SKIP: dict[str, dict[str, str]] = {
    "clip": {"input_table-empty": "clipping an empty layer gives an empty result, by design"},
    "erase": {"input_table-empty": "erasing from an empty layer gives an empty result, by design"},
    "create_view": {**{name: "a view reads no geometry: an empty or geometry-less table is fine"
                       for name in ("input_table-no_geometry", "input_table-empty",
                                    "input_table-nan_coordinates",
                                    "input_table-infinite_coordinates", "input_table-srid_zero")},
                    "output_table-exists_without_overwrite":
                        "results.taken is a table, which a view never replaces: see is_a_table"},
}
# Where a job type's error for a generic case names another field than the generic one.
FIELD: dict[tuple[str, str], str] = {
    ("hotspot", "input_table-empty"): "input_table|value_column",
    ("outlier", "input_table-empty"): "input_table|value_column",
}


# Valid params on the sample tables where neither DEMO nor EXAMPLE gives them.
BASE: dict[str, dict[str, Any]] = {
    "create_view": {"input_table": "public.us_states", "output_table": "results.south_atlantic",
                    "filter": [{"column": "sub_region", "op": "=", "value": "S Atl"}]},
    "raster_clip": {"raster": "georgia_dem.tif", "clip_table": "public.georgia_counties",
                    "clip_filter": [{"column": "areakey", "op": "=", "value": 13121}]},
}


def base_params(job_type: str) -> dict[str, Any]:
    """Valid params on the sample tables: the first DEMO job (else EXAMPLE), output fields off."""
    if job_type in BASE:
        return copy.deepcopy(BASE[job_type])
    jobtype = registry.load(job_type)
    demo = list(jobtype.DEMO) or [jobtype.EXAMPLE]
    return {k: v for k, v in copy.deepcopy(demo[0]).items()
            if k not in ("output_table", "overwrite", "replace", "output_raster")}


def _required(fields: dict[str, FieldInfo]) -> list[str]:
    return [name for name, info in fields.items() if info.is_required()]


def generic_cases(job_type: str) -> list[Case]:
    """The cases every job type must pass, from its Params model and EXAMPLE."""
    jobtype = registry.load(job_type)
    example = base_params(job_type)
    fields: dict[str, FieldInfo] = jobtype.Params.model_fields
    found = [
        Case(job_type, "params-list", [example], "params", "must be a JSON object"),
        Case(job_type, "params-string", "input_table", "params", "must be a JSON object"),
        Case(job_type, "params-number", 42, "params", "must be a JSON object"),
        Case(job_type, "params-typo", {**example, "overwite": True}, "params.overwite",
             "extra inputs are not permitted"),
    ]
    found += [Case(job_type, f"missing-{name}", {k: v for k, v in example.items() if k != name},
                   name, "field required") for name in _required(fields)]
    if "output_table" in fields:
        found += _output_cases(job_type, example)
    if "input_table" in fields and isinstance(example.get("input_table"), str):
        found += _input_cases(job_type, example)
    if "geometry_column" in fields and "input_table" in example:
        found += [
            Case(job_type, "geometry_column-unknown", {**example, "geometry_column": "shape"},
                 "geometry_column", "no geometry column 'shape'"),
            Case(job_type, "geometry_column-injection",
                 {**example, "geometry_column": f'geom"{_DROP}'}, "geometry_column",
                 "no geometry column"),
            Case(job_type, "geometry_column-attribute", {**example, "geometry_column": "fid"},
                 "geometry_column", "no geometry column 'fid'"),
        ]
    skip = SKIP.get(job_type, {})
    if job_type not in FULL_GENERIC:
        skip = {**skip, **dict.fromkeys(_VALIDATOR_ONLY, "shared validator")}
    return [dataclasses.replace(c, field=FIELD.get((job_type, c.name), c.field))
            for c in found if c.name not in skip]


_YEARS = [f"y{year}" for year in range(1990, 2010)]
_INCOME = {"input_table": "public.us_income", "value_columns": _YEARS,
           "output_table": "results.income_trends"}

# Cases that need knowledge of one job type. Keep every job type's list here.
SPECIFIC: dict[str, list[Case]] = {
    "noop": [
        Case("noop", "sleep_seconds-nan", {"sleep_seconds": "NaN"}, "sleep_seconds",
             "finite number"),
        Case("noop", "sleep_seconds-infinite", {"sleep_seconds": "Infinity"}, "sleep_seconds",
             "finite number"),
        Case("noop", "sleep_seconds-negative", {"sleep_seconds": -1}, "sleep_seconds",
             "greater than or equal to 0"),
        Case("noop", "sleep_seconds-huge", {"sleep_seconds": 1e9}, "sleep_seconds",
             "less than or equal to 3600"),
        Case("noop", "steps-huge", {"steps": 10**9}, "steps", "less than or equal to 10000"),
        Case("noop", "steps-fraction", {"steps": 2.5}, "steps", "valid integer"),
        Case("noop", "allocate_mb-huge", {"allocate_mb": 10**7}, "allocate_mb",
             "less than or equal to 4096"),
        Case("noop", "raise_error-long", {"raise_error": "x" * 501}, "raise_error",
             "at most 500 characters"),
    ],
    "dissolve": [
        Case("dissolve", "by-unknown_column", {"input_table": "public.us_states", "by": ["region"]},
             "by", "column 'region' does not exist"),
        Case("dissolve", "by-sql_injection",
             {"input_table": "public.us_states", "by": [f'sub_region"{_DROP}']}, "by",
             "does not exist"),
        Case("dissolve", "by-unicode", {"input_table": "public.us_states", "by": ["région"]},
             "by", "does not exist"),
        Case("dissolve", "by-too_long", {"input_table": "public.us_states", "by": ["c" * 64]},
             "by", "1 to 63 characters"),
        Case("dissolve", "by-too_many", {"input_table": "public.us_states",
                                         "by": ["sub_region"] * 33}, "by", "at most 32 items"),
        Case("dissolve", "by-not_a_list", {"input_table": "public.us_states", "by": "sub_region"},
             "by", "valid list"),
        Case("dissolve", "aggregates-unknown_function",
             {"input_table": "public.us_states", "aggregates": {"area": "median"}},
             "aggregates.area", "'sum', 'mean'"),
        Case("dissolve", "aggregates-sum_of_text",
             {"input_table": "public.us_states", "aggregates": {"state_name": "sum"}},
             "aggregates.state_name", "is text, not a number"),
        Case("dissolve", "aggregates-unknown_column",
             {"input_table": "public.us_states", "aggregates": {"income": "max"}},
             "aggregates", "column 'income' does not exist"),
        Case("dissolve", "aggregates-injected_column",
             {"input_table": "public.us_states", "aggregates": {f'area"{_DROP}': "max"}},
             "aggregates", "does not exist"),
        Case("dissolve", "aggregates-not_an_object",
             {"input_table": "public.us_states", "aggregates": ["area", "sum"]},
             "aggregates", "valid dictionary"),
        Case("dissolve", "input_table-mixed_geometry_types",
             {"input_table": "public.mixed_geoms", "by": ["sub_region"]}, "input_table",
             "mixes points, lines and polygons"),
    ],
    "hotspot_timeseries": [
        Case("hotspot_timeseries", "value_columns-unknown",
             {**_INCOME, "value_columns": [*_YEARS, "y2010"]}, "value_columns",
             "column 'y2010' does not exist"),
        Case("hotspot_timeseries", "value_columns-injection",
             {**_INCOME, "value_columns": [*_YEARS, f'y2009"{_DROP}']}, "value_columns",
             "does not exist"),
        Case("hotspot_timeseries", "value_columns-text",
             {**_INCOME, "value_columns": [*_YEARS, "state_name"]}, "value_columns",
             "not a number"),
        Case("hotspot_timeseries", "value_columns-too_few_steps",
             {**_INCOME, "value_columns": _YEARS[:6]}, "value_columns", "only 6 time steps"),
        Case("hotspot_timeseries", "value_columns-empty", {**_INCOME, "value_columns": []},
             "value_columns", "at least 1 item"),
        Case("hotspot_timeseries", "time_step-with_wide_input",
             {**_INCOME, "time_step": "1 month"}, "time_step", "takes no time_step"),
        Case("hotspot_timeseries", "time_column-not_a_time",
             {"input_table": "public.us_income", "time_column": "y1990", "time_step": "1 month"},
             "time_column", "not a date or timestamp"),
        Case("hotspot_timeseries", "shape-missing", {"input_table": "public.us_income"},
             "value_column", "say how time is laid out"),
        Case("hotspot_timeseries", "weights-row_standardised",
             {**_INCOME, "weights": {"transform": "R"}}, "weights.transform", "'B'"),
        Case("hotspot_timeseries", "neighborhood_time_step-too_large",
             {**_INCOME, "neighborhood_time_step": 20}, "neighborhood_time_step",
             "smaller than the number of time steps"),
        Case("hotspot_timeseries", "alpha-out_of_range", {**_INCOME, "alpha": 1.5}, "alpha",
             "less than 1"),
        Case("hotspot_timeseries", "slices_table-same_as_output",
             {**_INCOME, "slices_table": _INCOME["output_table"]}, "slices_table",
             "must differ from output_table"),
        Case("hotspot_timeseries", "slices_table-exists",
             {**_INCOME, "slices_table": "results.taken"}, "slices_table", "already exists"),
    ],
}

_GA = {"input_table": "public.georgia_counties", "value_column": "pctpov"}
_NC = {"input_table": "public.nc_counties", "value_column": "sid79"}


def _local(job_type: str, base: dict[str, Any], text: dict[str, str]) -> list[Case]:
    """hotspot and outlier: the value column, weights, permutations (a NaN value is missing, as
    NULL is, and left out by design; an infinite one fails)."""
    def c(name: str, change: dict[str, Any], field: str, says: str) -> Case:
        return Case(job_type, name, {**base, **change}, field, says)

    return [
        c("value_column-text", text, "value_column", "not a number"),
        c("value_column-unknown", {"value_column": "income"}, "value_column", "does not exist"),
        c("value_column-sql_injection", {"value_column": f'pctpov"{_DROP}'}, "value_column",
          "does not exist"),
        c("permutations-huge", {"permutations": 10**6}, "permutations", "less than or equal"),
        c("permutations-negative", {"permutations": -1}, "permutations", "greater than or equal"),
        c("weights-unknown_type", {"weights": {"type": "gabriel"}}, "weights.type",
          "'queen', 'rook'"),
        c("weights-knn_k_huge", {"weights": {"type": "knn", "k": 10**6}}, "weights.k",
          "less than or equal"),
        c("weights-negative_threshold", {"weights": {"type": "distance_band", "threshold": -5}},
          "weights.threshold", "greater than 0"),
        c("weights-infinite_threshold",
          {"weights": {"type": "distance_band", "threshold": "Infinity"}}, "weights.threshold",
          "finite"),
        c("weights-not_an_object", {"weights": "queen"}, "weights", "valid dictionary|object"),
        c("seed-negative", {"seed": -1}, "seed", "greater than or equal"),
    ]


def _overlay(how: str, base: dict[str, Any], column: str) -> list[Case]:
    """clip and erase: the other table, its filter (identifiers and values)."""
    table, filt = f"{how}_table", f"{how}_filter"

    def c(name: str, change: dict[str, Any], field: str, says: str) -> Case:
        return Case(how, name, {**base, **change}, field, says)

    return [
        c(f"{table}-unknown", {table: "public.nowhere"}, table, "does not exist"),
        c(f"{table}-sql_injection", {table: f"us_states{_DROP}"}, table, "does not exist"),
        c(f"{table}-no_geometry", {table: "public.no_geom"}, table, "no geometry column"),
        c(f"{table}-srid_zero", {table: "public.srid_zero"}, table, "no SRID"),
        c(f"{filt}-unknown_column", {filt: [{"column": "nope", "op": "=", "value": 1}]}, filt,
          "nope"),
        c(f"{filt}-column_injection",
          {filt: [{"column": f'{column}"{_DROP}', "op": "=", "value": 1}]}, filt, "does not exist|column"),
        c(f"{filt}-op_injection",
          {filt: [{"column": column, "op": "= 1; DROP TABLE public.canary; --", "value": 1}]},
          filt, "'='"),
        c(f"{filt}-value_injection_on_number",
          {filt: [{"column": "area", "op": ">", "value": f"0{_DROP}"}]}, filt, "number|numeric"),
        c(f"{filt}-bbox_nan", {filt: {"bbox": ["NaN", 0, 1, 1]}}, filt, "finite|number"),
        c(f"{filt}-bbox_reversed", {filt: {"bbox": [10, 10, 0, 0]}}, filt, "xmin|min|order"),
    ]


SPECIFIC.update({
    "hotspot": _local("hotspot", _GA, {"input_table": "public.nc_counties", "value_column": "name"}) + [
        Case("hotspot", "value_column-infinite", {**_GA, "input_table": "public.inf_values"},
             "value_column|input_table", "infinite"),
        Case("hotspot", "grid-negative_cell_size", {**_GA, "value_column": None,
                                                    "grid": {"cell_size": -1}},
             "grid.cell_size", "greater than 0"),
        Case("hotspot", "grid-on_polygons", {**_GA, "value_column": None,
                                             "grid": {"cell_size": 1000}},
             "grid|input_table", "point"),
    ],
    "outlier": _local("outlier", _NC, {"value_column": "name"}) + [
        Case("outlier", "value_column-infinite", {**_NC, "input_table": "public.nc_inf"},
             "value_column|input_table", "infinite"),
        Case("outlier", "weights-unknown_transform", {**_NC, "weights": {"transform": "X"}},
             "weights.transform", "'B'"),
    ],
    "clip": _overlay("clip", base_params("clip") if "clip" in registry.JOB_TYPES else {}, "state_name"),
    "erase": _overlay("erase", base_params("erase") if "erase" in registry.JOB_TYPES else {}, "totpop90"),
    "create_view": [
        Case("create_view", f"view_name-{name}",  # the older name of output_table
             {"input_table": "public.us_states", "view_name": view}, "view_name|output_table",
             says)
        for name, view, says in [
            ("pg_catalog", "pg_catalog.evil", "not an output schema"),
            ("information_schema", "information_schema.evil", "not an output schema"),
            ("queue_schema", "public.evil", "not an output schema"),
            ("sql_injection", f"results.v{_DROP}", "must be 'name' or 'schema.name'"),
            ("unicode", "results.vüe", "must be 'name' or 'schema.name'"),
            ("too_long", "results." + "v" * 64, "must be 'name' or 'schema.name'"),
            ("exists_without_overwrite", "results.taken_view", "already exists"),
            ("is_a_table", "results.taken", "already exists|not a view|table"),
        ]
    ] + [
        Case("create_view", name, {"input_table": "public.us_states", "view_name": "results.v",
                                   **change}, field, says)
        for name, change, field, says in [
            ("filter-unknown_column", {"filter": [{"column": "nope", "op": "=", "value": 1}]},
             "filter", "nope"),
            ("filter-column_injection",
             {"filter": [{"column": f'sub_region"{_DROP}', "op": "=", "value": 1}]}, "filter",
             "does not exist|column"),
            ("filter-op_injection", {"filter": [{"column": "area", "op": "> 0 OR true",
                                                  "value": 1}]}, "filter", "'='"),
            ("filter-value_injection_on_number",
             {"filter": [{"column": "area", "op": ">", "value": f"0{_DROP}"}]}, "filter",
             "number|numeric"),
            ("columns-unknown", {"columns": ["fid", "population"]}, "columns", "population"),
            ("columns-sql_injection", {"columns": [f'fid"{_DROP}']}, "columns", "does not exist"),
            ("bbox-nan", {"bbox": ["NaN", 0, 1, 1]}, "bbox", "finite"),
            ("bbox-reversed", {"bbox": [10, 10, 0, 0]}, "bbox", "xmin|min|order"),
            ("bbox_srid-negative", {"bbox": [0, 0, 1, 1], "bbox_srid": -4326}, "bbox_srid",
             "greater than 0"),
            ("refresh-with_input", {"refresh": True}, "params", "refresh takes only output_table"),
            ("input_table-missing", {"input_table": None}, "params",
             "input_table is required"),
            ("input_table-unknown", {"input_table": "public.nowhere"}, "input_table",
             "does not exist"),
            ("input_table-sql_injection", {"input_table": f"us_states{_DROP}"}, "input_table",
             "does not exist"),
            ("input_table-not_readable", {"input_table": "private.states"}, "input_table",
             "may not read"),
        ]
    ],
    "nearest": [
        Case("nearest", name, {**base, **change}, field, says)
        for base in [{"input_table": "public.georgia_counties",
                      "near_table": "public.georgia_counties", "k": 3}]
        for name, change, field, says in [
            ("k-huge", {"k": 10**6}, "k", "less than or equal to 1000"),
            ("k-zero", {"k": 0}, "k", "greater than or equal to 1"),
            ("search_radius-negative", {"search_radius": -1}, "search_radius",
             "greater than or equal to 0"),
            ("search_radius-infinite", {"search_radius": "Infinity"}, "search_radius", "finite"),
            ("search_radius-nan", {"search_radius": "NaN"}, "search_radius", "finite"),
            ("method-unknown", {"method": "manhattan"}, "method", "'planar'"),
            ("near_table-unknown", {"near_table": "public.nowhere"}, "near_table",
             "does not exist"),
            ("near_table-sql_injection", {"near_table": f"georgia_counties{_DROP}"}, "near_table",
             "does not exist"),
            ("near_table-srid_zero", {"near_table": "public.srid_zero"}, "near_table", "no SRID"),
            ("near_key-unknown", {"near_key": "nope"}, "near_key", "does not exist"),
            ("near_key-sql_injection", {"near_key": f'fid"{_DROP}'}, "near_key", "does not exist"),
            ("near_filter-value_injection_on_number",
             {"near_filter": [{"column": "area", "op": ">", "value": f"0{_DROP}"}]},
             "near_filter", "number|numeric"),
        ]
    ],
    "raster_clip": [
        Case("raster_clip", name, {**BASE["raster_clip"], **change}, field, says)
        for name, change, field, says in [
            ("raster-path_traversal", {"raster": "../../../../etc/passwd"}, "raster",
             r"outside|escape|within|under|\.\."),
            ("raster-absolute_path", {"raster": "/etc/passwd"}, "raster",
             "absolute|outside|relative"),
            ("raster-unknown", {"raster": "nowhere.tif"}, "raster", "no file"),
            ("raster-not_a_raster", {"raster": "notes.txt"}, "raster", "raster|read|format"),
            ("raster-empty_name", {"raster": ""}, "raster", "."),
            ("output_raster-path_traversal", {"output_raster": "../escaped.tif"}, "output_raster",
             r"outside|escape|within|under|\.\."),
            ("output_raster-absolute_path", {"output_raster": "/tmp/evil.tif"}, "output_raster",
             "absolute|outside|relative"),
            ("output_raster-exists_without_overwrite", {"output_raster": "taken.tif"},
             "output_raster", "exists"),
            ("clip_table-lines", {"clip_table": "public.lines_layer"}, "clip_table", "polygon"),
            ("clip_table-unknown", {"clip_table": "public.nowhere"}, "clip_table",
             "does not exist"),
            ("clip_table-sql_injection", {"clip_table": f"georgia_counties{_DROP}"}, "clip_table",
             "does not exist"),
            ("clip_filter-value_injection_on_number",
             {"clip_filter": [{"column": "areakey", "op": "=", "value": f"1{_DROP}"}]},
             "clip_filter", "number|numeric|integer"),
            ("nodata-infinite", {"nodata": "Infinity"}, "nodata", "finite"),
        ]
    ],
    "hotspot_timeseries": [
        Case("hotspot_timeseries", name, {**base_params("hotspot_timeseries"), **change}
             if "hotspot_timeseries" in registry.JOB_TYPES else change, field, says)
        for name, change, field, says in [
            ("value_columns-unknown", {"value_columns": ["y1929", "y3000", "y1931"]},
             "value_columns", "y3000"),
            ("value_columns-sql_injection", {"value_columns": ["y1929", f'y1930"{_DROP}']},
             "value_columns", "does not exist"),
            ("value_columns-text", {"value_columns": ["state_name"] * 12}, "value_columns",
             "not a number|numeric"),
            ("value_columns-too_few_steps", {"value_columns": ["y1929", "y1930", "y1931"]},
             "value_columns|min_time_steps", "time steps"),
            ("min_time_steps-too_small", {"min_time_steps": 2}, "min_time_steps",
             "greater than or equal to 3"),
            ("neighborhood_time_step-huge", {"neighborhood_time_step": 10**6},
             "neighborhood_time_step", "less than or equal to 100"),
            ("alpha-out_of_range", {"alpha": 1.5}, "alpha", "less than 1"),
            ("alpha-nan", {"alpha": "NaN"}, "alpha", "finite"),
            ("weights-unknown_type", {"weights": {"type": "gabriel"}}, "weights.type", "'queen'"),
            ("slices_table-pg_catalog", {"slices_table": "pg_catalog.evil"}, "slices_table",
             "not an output schema"),
            ("slices_table-sql_injection", {"slices_table": f"results.s{_DROP}"}, "slices_table",
             "must be 'name' or 'schema.name'"),
            ("grid-negative_cell_size", {"grid": {"cell_size": -5}}, "grid.cell_size",
             "greater than 0"),
        ]
    ],
})


def cases(job_type: str) -> list[Case]:
    """Every bad-input case of one job type."""
    return generic_cases(job_type) + SPECIFIC.get(job_type, [])


def all_cases() -> list[Case]:
    """Every case of every registered job type, grouped by job type."""
    return [case for name in registry.names() for case in cases(name)]
