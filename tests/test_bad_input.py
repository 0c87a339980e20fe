"""Bad input: every case fails its job at once, names the field, changes nothing.

Each job type gets one database (a copy of the template plus the awkward tables of
``tests/bad_inputs.py``) and one worker logged in as ``geojobs_worker``. For each case: a
snapshot of the catalog, every table's content and the output and raster directories; the job
queued and run by the worker (the real runner, in this process); then the job must be
``failed`` after one attempt with an error that starts with the field, and the snapshot must
be unchanged.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from psycopg import sql

from geojobs import queue, registry
from geojobs.runner import Worker, WorkerSettings
from tests.bad_inputs import (
    CANARY,
    FIXTURE_SQL,
    Case,
    all_cases,
    base_params,
    cases,
    derived_tables_sql,
)
from tests.conftest import _create, _drop
from tests.snapshot import diff, snapshot
from tests.support import as_role, job_row

pytestmark = pytest.mark.db

ALL = all_cases()
# One feature of the copy gets NaN or infinite coordinates.
_SPOIL = sql.SQL("UPDATE {table} SET geom = ST_Translate(geom, %s::float8, 0) "
                 "WHERE ctid = (SELECT min(ctid) FROM {table})")
_HAS_GEOM = ("SELECT 1 FROM information_schema.columns WHERE table_schema = 'public' "
             "AND table_name = %s AND column_name = 'geom'")
_CANARY_ROWS = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*CANARY.split(".")))


class _Databases:
    """One prepared database and worker per job type, made on first use."""

    def __init__(self, template: str, root: Path) -> None:
        self.template = template
        self.root = root
        self.made: dict[str, SimpleNamespace] = {}

    def get(self, job_type: str) -> SimpleNamespace:
        if job_type not in self.made:
            self.close()  # cases come grouped by job type: one database open at a time
            self.made[job_type] = self._make(job_type)
        return self.made[job_type]

    def _make(self, job_type: str) -> SimpleNamespace:
        name = f"geojobs_test_{uuid.uuid4().hex[:12]}"
        url = _create(name, template=self.template)
        admin = psycopg.connect(url, autocommit=True)
        statements = list(FIXTURE_SQL)
        base = base_params(job_type)
        if isinstance(base.get("input_table"), str):
            statements += derived_tables_sql(base["input_table"])
        with admin.transaction():
            for statement in statements:
                admin.execute(statement)
            for table, value in (("nan_coords", "NaN"), ("inf_coords", "Infinity")):
                if admin.execute(_HAS_GEOM, (table,)).fetchone() is not None:
                    admin.execute(_SPOIL.format(table=sql.Identifier("public", table)), (value,))
            extent = admin.execute("SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM "
                                   "(SELECT ST_Extent(geom) AS e FROM public.georgia_counties) s"
                                   ).fetchone()
        _write_dem(self.root / "rasters" / "georgia_dem.tif", extent)
        # The worker runs inside the test process, which other modules' tests have grown (and whose
        # job processes, forked from it, count it again): its memory cap would end its runs, and
        # this module reuses it for every case. Caps are tested with worker processes elsewhere.
        worker = Worker(WorkerSettings(job_type=job_type, database_url=as_role(url),
                                       memory_cap_mb=1e9))
        return SimpleNamespace(name=name, url=url, admin=admin, worker=worker)

    def close(self) -> None:
        for made in self.made.values():
            made.admin.close()
            _drop(made.name)
        self.made.clear()


def _write_dem(path: Path, extent: tuple[float, float, float, float]) -> None:
    """A small elevation-like raster over Georgia (UTM 16N, the sample's SRID)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_bounds

    if path.exists():
        return
    data = np.arange(64 * 64, dtype="float32").reshape(64, 64)
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="float32",
                       crs="EPSG:26916", transform=from_bounds(*extent, 64, 64)) as dst:
        dst.write(data, 1)


@pytest.fixture(scope="module")
def databases(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Databases]:
    root = tmp_path_factory.mktemp("bad_input")
    with pytest.MonkeyPatch.context() as patch:
        for variable, sub in (("GEOJOBS_OUTPUT_DIR", "outputs"), ("GEOJOBS_RASTER_DIR", "rasters")):
            (root / sub).mkdir()
            patch.setenv(variable, str(root / sub))
        (root / "rasters" / "notes.txt").write_text("not a raster\n")
        (root / "outputs" / "taken.tif").write_bytes(b"an earlier output")
        made = _Databases(template_db, root)
        try:
            yield made
        finally:
            made.close()


def _names_field(error: str, field: str) -> bool:
    """The error starts with the field (or one of 'a|b'), as ``params.x: ...`` or ``x: ...``."""
    names = "|".join(re.escape(f) for f in field.split("|"))
    return re.match(rf"(params\.)?({names})([.:\s\[]|$)", error) is not None


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_bad_input_fails_at_once_and_changes_nothing(databases: _Databases, case: Case) -> None:
    env = databases.get(case.job_type)
    for statement in case.setup:
        env.admin.execute(statement)
    before = snapshot(env.admin, [databases.root])
    job_id = queue.enqueue(env.admin, case.job_type, case.params)
    assert env.worker.run(drain=True) == 0
    row = job_row(env.admin, job_id)
    assert (row["status"], row["attempts"]) == ("failed", 1), row["error"]
    assert _names_field(row["error"], case.field), row["error"]
    assert re.search(case.says, row["error"], re.IGNORECASE), row["error"]
    assert row["result"] is None
    assert diff(before, snapshot(env.admin, [databases.root])) == {}
    assert env.admin.execute(_CANARY_ROWS).fetchone() == (1,)


def test_there_are_at_least_forty_cases() -> None:
    assert len(ALL) >= 40
    for name in registry.names():
        assert len(cases(name)) >= 4, name  # every registered type gets the generic ones


def test_the_snapshot_sees_every_kind_of_change(databases: _Databases) -> None:
    """The 'nothing changed' check above can fail: each kind of change shows in the diff."""
    env = databases.get("noop")
    before = snapshot(env.admin, [databases.root])
    changes = {
        "relations": "CREATE TABLE results.new_table (a int)",
        "views": "CREATE VIEW results.new_view AS SELECT 1 AS a",
        "functions": "CREATE FUNCTION results.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "namespaces": "CREATE SCHEMA new_schema",
        "contents": "UPDATE public.us_states SET area = area + 1 WHERE fid = 1",
    }
    with pytest.raises(psycopg.errors.QueryCanceled), env.admin.transaction():
        for part, statement in changes.items():
            env.admin.execute(statement)
            assert part in diff(before, snapshot(env.admin, [databases.root])), part
        (databases.root / "outputs" / "stray.tif").write_bytes(b"x")
        assert set(diff(before, snapshot(env.admin, [databases.root]))) == {*changes, "files"}
        (databases.root / "outputs" / "stray.tif").unlink()
        raise psycopg.errors.QueryCanceled("roll the changes back")
    assert diff(before, snapshot(env.admin, [databases.root])) == {}


def test_non_finite_numbers_are_refused_except_where_meaningful() -> None:
    """Params refuse NaN/Infinity (JobParams), but NaN stays a valid raster nodata."""
    from geojobs.errors import InvalidParams
    from geojobs.params import validate_params

    raster_clip = registry.load("raster_clip")
    base = {"raster": "a.tif", "clip_table": "public.georgia_counties"}
    assert math.isnan(validate_params(raster_clip.Params, {**base, "nodata": "NaN"}).nodata)
    with pytest.raises(InvalidParams, match="params.nodata"):
        validate_params(raster_clip.Params, {**base, "nodata": "-Infinity"})
    with pytest.raises(InvalidParams, match="params.sleep_seconds: Input should be a finite number"):
        validate_params(registry.load("noop").Params, {"sleep_seconds": "NaN"})
