"""The structured filter: legit specs run on a real table, injection attempts are refused.

The oracle for legit specs is the same test evaluated in Python over the rows
the test inserted; every composed clause is executed by PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from geojobs.errors import AnalysisError, GeojobsError
from geojobs.filters import FilterSpec, compose_where, filter_clause
from geojobs.layers import Layer, describe_layer
from geojobs.params import JobParams, validate_params
from tests.conftest import _create, _drop

pytestmark = pytest.mark.db

WEIRD = 'Odd "Name"; --'
ROWS: list[dict[str, Any]] = [
    {
        "id": 1,
        "name": "Fulton",
        "code": "A1",
        "pop": 920581,
        "ratio": 0.5,
        "price": 10.25,
        "flag": True,
        "day": dt.date(2020, 1, 1),
        WEIRD: "x",
        "lon": -84.4,
        "lat": 33.8,
    },
    {
        "id": 2,
        "name": "DeKalb",
        "code": "B2",
        "pop": 691893,
        "ratio": 1.5,
        "price": 3.5,
        "flag": False,
        "day": dt.date(2021, 6, 30),
        WEIRD: "y",
        "lon": -84.2,
        "lat": 33.7,
    },
    {
        "id": 3,
        "name": "O'Brien",
        "code": None,
        "pop": 14000,
        "ratio": None,
        "price": None,
        "flag": None,
        "day": None,
        WEIRD: None,
        "lon": -95.6,
        "lat": 43.1,
    },
    {
        "id": 4,
        "name": "fulton hills",
        "code": "A2",
        "pop": 5,
        "ratio": -2.0,
        "price": 0,
        "flag": True,
        "day": dt.date(2019, 12, 31),
        WEIRD: "x",
        "lon": 2.35,
        "lat": 48.85,
    },
]


@pytest.fixture(scope="module")
def conn(template_db: str) -> Iterator[psycopg.Connection[Any]]:
    """One fresh database for this module, holding the table ``places``."""
    name = f"geojobs_test_filters_{uuid.uuid4().hex[:10]}"
    url = _create(name, template=template_db)
    try:
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(
                sql.SQL(
                    "CREATE TABLE places (id integer PRIMARY KEY, name text, code varchar(4),"
                    " pop bigint, ratio double precision, price numeric(10,2), flag boolean,"
                    " day date, {} text, tags text[], geom geometry(Point, 4326))"
                ).format(sql.Identifier(WEIRD))
            )
            for r in ROWS:
                db.execute(
                    sql.SQL(
                        "INSERT INTO places VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
                        " ARRAY['a'], ST_SetSRID(ST_MakePoint(%s, %s), 4326))"
                    ),
                    [
                        r[k]
                        for k in (
                            "id",
                            "name",
                            "code",
                            "pop",
                            "ratio",
                            "price",
                            "flag",
                            "day",
                            WEIRD,
                            "lon",
                            "lat",
                        )
                    ],
                )
            yield db
    finally:
        _drop(name)


class _Params(JobParams):
    """A job type's parameters holding a filter, as every job type that filters declares it."""

    filter: FilterSpec | None = None


def _spec(raw: Any) -> FilterSpec | None:
    return validate_params(_Params, {"filter": raw}).filter


@pytest.fixture(scope="module")
def layer(conn: psycopg.Connection[Any]) -> Layer:
    return describe_layer(conn, "public.places")


@pytest.fixture(scope="module")
def columns(layer: Layer) -> dict[str, str]:
    return layer.type_names


def _ids(conn: psycopg.Connection[Any], where: sql.Composable) -> set[int]:
    query = sql.SQL("SELECT id FROM places WHERE {}").format(where)
    return {row[0] for row in conn.execute(query)}


def _run(conn, layer, raw: Any) -> set[int]:
    where = filter_clause(conn, _spec(raw), layer, field="filter")
    assert where is not None
    return _ids(conn, where)


def _expect(test: Callable[[dict[str, Any]], bool]) -> set[int]:
    return {r["id"] for r in ROWS if test(r)}


def test_the_layer_gives_each_column_type_as_format_type_prints_it(columns):
    assert columns["code"] == "character varying(4)"
    assert columns["geom"] == "geometry(Point,4326)"
    assert columns[WEIRD] == "text"


@pytest.mark.parametrize(
    ("spec", "oracle"),
    [
        ([{"column": "name", "op": "=", "value": "Fulton"}], lambda r: r["name"] == "Fulton"),
        ([{"column": "name", "op": "!=", "value": "Fulton"}], lambda r: r["name"] != "Fulton"),
        ([{"column": "pop", "op": ">", "value": 14000}], lambda r: r["pop"] > 14000),
        ([{"column": "pop", "op": ">=", "value": 14000}], lambda r: r["pop"] >= 14000),
        ([{"column": "pop", "op": "<", "value": 14000.5}], lambda r: r["pop"] < 14000.5),
        (
            [{"column": "ratio", "op": "<=", "value": 0.5}],
            lambda r: r["ratio"] is not None and r["ratio"] <= 0.5,
        ),
        ([{"column": "price", "op": "=", "value": 10.25}], lambda r: r["price"] == 10.25),
        ([{"column": "flag", "op": "=", "value": True}], lambda r: r["flag"] is True),
        (
            [{"column": "day", "op": "between", "value": ["2020-01-01", "2021-12-31"]}],
            lambda r: r["day"] is not None and dt.date(2020, 1, 1) <= r["day"] <= dt.date(2021, 12, 31),
        ),
        (
            [{"column": "code", "op": "in", "value": ["A1", "A2", "ZZ"]}],
            lambda r: r["code"] in ("A1", "A2", "ZZ"),
        ),
        ([{"column": "id", "op": "not_in", "value": [1, 2]}], lambda r: r["id"] not in (1, 2)),
        (
            [{"column": "name", "op": "like", "value": "Ful%"}],
            lambda r: r["name"].startswith("Ful"),
        ),
        (
            [{"column": "name", "op": "ilike", "value": "ful%"}],
            lambda r: r["name"].lower().startswith("ful"),
        ),
        ([{"column": "code", "op": "is_null"}], lambda r: r["code"] is None),
        ([{"column": "ratio", "op": "is_not_null"}], lambda r: r["ratio"] is not None),
        ([{"column": WEIRD, "op": "=", "value": "x"}], lambda r: r[WEIRD] == "x"),
        ([{"column": "name", "op": "=", "value": "O'Brien"}], lambda r: r["name"] == "O'Brien"),
        # An injection-shaped value is only ever a value: it matches no row.
        ([{"column": "name", "op": "=", "value": "x' OR '1'='1"}], lambda r: False),
        (
            [{"column": "name", "op": "like", "value": "%'); DROP TABLE places; --"}],
            lambda r: False,
        ),
        (
            [
                {"column": "flag", "op": "=", "value": True},
                {"column": "pop", "op": "<", "value": 10},
            ],
            lambda r: r["flag"] is True and r["pop"] < 10,
        ),
        ([], lambda r: True),
    ],
)
def test_legit_specs_select_the_rows_python_selects(conn, layer, spec, oracle):
    assert _run(conn, layer, spec) == _expect(oracle)


def test_no_filter_is_no_clause(conn, layer):
    assert filter_clause(conn, None, layer, field="filter") is None
    assert validate_params(_Params, {}).filter is None


def test_bbox_in_the_table_srid_and_in_another(conn, layer):
    georgia = {"bbox": [-86.0, 30.0, -80.0, 35.5]}
    in_georgia = _expect(lambda r: -86 <= r["lon"] <= -80 and 30 <= r["lat"] <= 35.5)
    assert _run(conn, layer, georgia) == in_georgia == {1, 2}
    # The same box in web mercator metres, transformed to the table's SRID.
    mercator = {
        "bbox": [-9573476.0, 3503549.0, -8905559.0, 4229466.0],
        "bbox_srid": 3857,
        "where": [{"column": "pop", "op": ">", "value": 700000}],
    }
    assert _run(conn, layer, mercator) == {1}


def test_composed_clause_is_made_of_identifiers_and_literals(conn, columns):
    where = compose_where(
        FilterSpec.model_validate([{"column": WEIRD, "op": "in", "value": ["a'b", "c"]}]),
        columns,
        table_alias="t",
    )
    text = where.as_string(conn)
    assert text == '("t"."Odd ""Name""; --" IN (\'a\'\'b\', \'c\'))'


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        # refused with the job's parameters, before any work: params.<field>.<path>
        ([{"column": "name", "op": "= 'x' OR 1=1 --", "value": "x"}], "params.filter.0.op"),
        ([{"column": "name", "op": "=", "value": {"sql": "1=1"}}], "params.filter.0.value"),
        ([{"column": "name", "op": "=", "value": "x", "sql": "OR 1=1"}], "params.filter.0.sql"),
        ({"where": [{"column": "name", "op": "~", "value": "x"}]}, "params.filter.where.0.op"),
        ({"bbox": ["0); DROP TABLE places; --", 0, 1, 1]}, "params.filter.bbox.0"),
        ({"bbox": [1, 0, 0, 1]}, "params.filter.bbox"),
        ({"bbox": [0, 0, 1, 1], "bbox_srid": "4326); DROP TABLE places"}, "params.filter.bbox_srid"),
        ([{"column": "x", "op": "="}] * 101, "params.filter"),
        # refused against the layer's columns and types, before any SQL runs
        ({"bbox": [0, 0, 1, 1], "bbox_srid": 999999}, "filter.bbox_srid"),
        ([{"column": "name; DROP TABLE places; --", "op": "=", "value": "x"}], "filter[0].column"),
        ([{"column": 'name" = name OR "id', "op": "=", "value": "x"}], "filter[0].column"),
        ([{"column": "pop", "op": "=", "value": "1 OR 1=1"}], "filter[0].value"),
        (
            [{"column": "pop", "op": "in", "value": [1, "2); DROP TABLE places; --"]}],
            "filter[0].value[1]",
        ),
        (
            [{"column": "day", "op": "=", "value": "2020-01-01'::date OR true --"}],
            "filter[0].value",
        ),
        ([{"column": "flag", "op": "=", "value": "true OR 1=1"}], "filter[0].value"),
        ([{"column": "geom", "op": "=", "value": "POINT(0 0)"}], "filter[0].op"),
        ([{"column": "tags", "op": "=", "value": "{a}"}], "filter[0].op"),
        ([{"column": "pop", "op": "like", "value": "%"}], "filter[0].op"),
        ([{"column": "pop", "op": "between", "value": [1]}], "filter[0].value"),
        ([{"column": "pop", "op": "is_null", "value": "1=1"}], "filter[0].value"),
        ([{"column": "name", "op": "=", "value": "nul\x00byte"}], "filter[0].value"),
        ([{"column": "pop", "op": "=", "value": 2**70}], "filter[0].value"),
        ([{"column": "ratio", "op": "<", "value": float("nan")}], "filter[0].value"),
    ],
)
def test_injection_and_bad_specs_raise_naming_the_field(conn, layer, raw, field):
    before = conn.execute("SELECT count(*) FROM places").fetchone()
    with pytest.raises(GeojobsError) as err:
        filter_clause(conn, _spec(raw), layer, field="filter")
    assert str(err.value).startswith(f"{field}:"), str(err.value)
    assert conn.execute("SELECT count(*) FROM places").fetchone() == before


def test_bbox_needs_a_geometry_and_an_srid(columns):
    spec = FilterSpec(bbox=(0, 0, 1, 1))
    no_geom = {k: v for k, v in columns.items() if k != "geom"}
    with pytest.raises(AnalysisError) as err:
        compose_where(spec, no_geom, srid=4326, bbox_field="bbox")
    assert err.value.field == "bbox"
    with pytest.raises(AnalysisError) as err:
        compose_where(spec, columns, srid=0)
    assert err.value.field == "filter.bbox"
