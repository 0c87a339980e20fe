"""The column encoder of binary COPY against psycopg's row dumpers and a PostgreSQL round trip.

Oracle 1: psycopg's own ``write_row`` formatter, fed the same rows as Python values, must
produce the same bytes. Oracle 2: PostgreSQL reads the stream back into a table whose values
(NULLs, NaN, non-ASCII text, extremes) equal the inputs.
"""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import psycopg
import pytest
import shapely
from psycopg import sql
from psycopg.adapt import Transformer

from geojobs.copy_binary import bytes_column, copy_order, encode, fixed_column
from geojobs.layers import _copy_columns, _pg_type, write_layer


def _psycopg_bytes(types: list[str], rows: list[tuple[Any, ...]]) -> bytes:
    from psycopg._copy_base import BinaryFormatter  # psycopg's own row encoder

    tx = Transformer()
    tx.set_dumper_types([psycopg.postgres.types[t].oid for t in types], psycopg.pq.Format.BINARY)
    formatter = BinaryFormatter(tx)
    out = bytearray()
    for row in rows:
        out += formatter.write_row(row)
    out += formatter.end()
    return bytes(out)


def test_same_bytes_as_psycopg_write_row() -> None:
    rng = np.random.default_rng(5)
    n = 1000
    ints = rng.integers(-2**62, 2**62, n)
    small = rng.integers(-30000, 30000, n).astype(np.int16)
    floats = rng.standard_normal(n) * 1e6
    flags = rng.random(n) < 0.5
    nullable = rng.standard_normal(n)
    null_at = rng.random(n) < 0.2
    text = [None if i % 7 == 0 else f"é{i}ü" * (i % 5) for i in range(n)]
    blobs = [None if i % 11 == 0 else bytes(rng.integers(0, 256, i % 40, dtype=np.uint8))
             for i in range(n)]
    columns = [fixed_column("int8", ints), fixed_column("int2", small),
               fixed_column("float8", floats), fixed_column("bool", flags),
               fixed_column("float8", nullable, null_at),
               bytes_column("text", [None if t is None else t.encode() for t in text]),
               bytes_column("bytea", blobs)]
    assert copy_order(columns) == list(range(len(columns)))
    ours = b"".join(encode(columns, n, chunk_rows=333))
    rows = [(int(ints[i]), int(small[i]), float(floats[i]), bool(flags[i]),
             None if null_at[i] else float(nullable[i]), text[i], blobs[i]) for i in range(n)]
    theirs = _psycopg_bytes(["int8", "int2", "float8", "bool", "float8", "text", "bytea"], rows)
    assert ours == theirs


def test_fixed_columns_refuse_values_that_do_not_fit() -> None:
    with pytest.raises(TypeError):
        fixed_column("int8", np.array([2**63], dtype=np.uint64))
    with pytest.raises(TypeError):
        fixed_column("int4", np.array([True]))


@pytest.mark.db
def test_write_layer_round_trip(conn: psycopg.Connection[Any]) -> None:
    """NULLs in every column kind, NaN as NULL, nullable integers, text, a second geometry."""
    n = 70_000  # more than one block of rows
    rng = np.random.default_rng(1)
    value = rng.standard_normal(n)
    value[::13] = np.nan
    count = pd.array(rng.integers(0, 100, n), dtype="Int32")
    count[::17] = pd.NA
    flag = pd.array(rng.random(n) < 0.5, dtype="boolean")
    flag[::19] = pd.NA
    label = pd.Series([None if i % 23 == 0 else f"ñ{i}" for i in range(n)], dtype=object)
    pts = shapely.points(rng.uniform(0, 1000, (n, 2)))
    line = np.asarray(shapely.linestrings(np.stack([shapely.get_coordinates(pts),
                                                    shapely.get_coordinates(pts) + 1], axis=1)),
                      dtype=object)
    line[::29] = None
    frame = gpd.GeoDataFrame({"big": np.arange(n, dtype=np.int64) * 3_000_000_000,
                              "value": value, "count": count, "flag": flag, "label": label,
                              "link": gpd.GeoSeries(line, crs=3857)},
                             geometry=gpd.GeoSeries(pts, crs=3857), crs=3857)
    attrs = ["big", "value", "count", "flag", "label", "link"]
    assert _copy_columns(frame, attrs, {c: _pg_type(frame[c]) for c in attrs}, [], 3857
                         ) is not None, "every column takes the column encoder"
    with conn.transaction():
        assert write_layer(conn, frame, "public.round_trip", srid=3857) == n
    got = conn.execute(sql.SQL(
        "SELECT fid, big, value, count, flag, label, ST_AsBinary(link), ST_SRID(link), "
        "ST_X(geom), ST_Y(geom), ST_SRID(geom) FROM public.round_trip ORDER BY fid")).fetchall()
    assert [r[0] for r in got] == list(range(1, n + 1))
    for i in (0, 1, 12, 13, 16, 17, 19, 22, 23, 29, 30, n - 1):
        row = got[i]
        assert row[1] == i * 3_000_000_000
        assert (row[2] is None) if np.isnan(value[i]) else row[2] == value[i]
        assert row[3] == (None if count[i] is pd.NA else int(count[i]))
        assert row[4] == (None if flag[i] is pd.NA else bool(flag[i]))
        assert row[5] == label[i]
        assert (row[6] is None) if line[i] is None else (
            bytes(row[6]) == shapely.to_wkb(line[i]) and row[7] == 3857)
        assert (row[8], row[9], row[10]) == (shapely.get_x(pts[i]), shapely.get_y(pts[i]), 3857)
    nulls = conn.execute("SELECT count(*) FILTER (WHERE value IS NULL), "
                         "count(*) FILTER (WHERE count IS NULL), count(*) FILTER "
                         "(WHERE flag IS NULL), count(*) FILTER (WHERE label IS NULL), "
                         "count(*) FILTER (WHERE link IS NULL) FROM public.round_trip").fetchone()
    assert nulls == (int(np.isnan(value).sum()), int(count.isna().sum()),
                     int(flag.isna().sum()), int(label.isna().sum()),
                     sum(v is None for v in line))
