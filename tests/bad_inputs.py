"""Bad inputs for every job type: what each must fail on, at once, naming the field.

Generic cases are derived from each job type's ``Params`` model and ``EXAMPLE`` (so a new job
type gets them by being registered); the cases that need knowledge of one job type are listed
under its name in ``SPECIFIC``. ``FIXTURE_SQL`` makes the awkward tables the cases point at.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from pydantic.fields import FieldInfo

from workers import registry

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


def _required(fields: dict[str, FieldInfo]) -> list[str]:
    return [name for name, info in fields.items() if info.is_required()]


def generic_cases(job_type: str) -> list[Case]:
    """The cases every job type must pass, from its Params model and EXAMPLE."""
    module = registry.load(job_type)
    example: dict[str, Any] = copy.deepcopy(module.EXAMPLE)
    fields: dict[str, FieldInfo] = module.Params.model_fields
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
    return found


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


def cases(job_type: str) -> list[Case]:
    """Every bad-input case of one job type."""
    return generic_cases(job_type) + SPECIFIC.get(job_type, [])


def all_cases() -> list[Case]:
    """Every case of every registered job type, grouped by job type."""
    return [case for name in registry.names() for case in cases(name)]
