"""Path safety: a job's relative path can only reach files inside its base directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from analysis.errors import AnalysisError
from analysis.safe_paths import resolve_input, resolve_output, resolve_under


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    base = tmp_path / "rasters"
    (base / "dem").mkdir(parents=True)
    (base / "dem" / "srtm.tif").write_bytes(b"x")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "passwd.tif").write_bytes(b"y")
    return base, outside


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "/etc/passwd", "//server/share/x.tif", "C:\\data\\x.tif", "\\\\host\\x.tif",
     "../secret/passwd.tif", "dem/../../secret/passwd.tif", "dem/..", "..", "dem\\..\\..\\x.tif",
     "a\x00b.tif", "."],
)
def test_refuses_escapes(dirs, bad):
    base, _ = dirs
    with pytest.raises(AnalysisError) as err:
        resolve_under(base, bad, field="raster")
    assert err.value.field == "raster"


def test_symlink_out_of_the_base_is_refused(dirs):
    base, outside = dirs
    os.symlink(outside / "passwd.tif", base / "innocent.tif")
    os.symlink(outside, base / "dem" / "more")
    for relative in ("innocent.tif", "dem/more/passwd.tif", "dem/more/new.tif"):
        with pytest.raises(AnalysisError, match="outside"):
            resolve_under(base, relative, field="raster")
    with pytest.raises(AnalysisError, match="outside"):
        resolve_output(base, "dem/more/new.tif", field="output_raster")
    assert not (outside / "new.tif").exists()


def test_symlink_inside_the_base_is_followed(dirs):
    base, _ = dirs
    os.symlink(base / "dem" / "srtm.tif", base / "alias.tif")
    assert resolve_input(base, "alias.tif", field="raster") == (base / "dem" / "srtm.tif").resolve()


def test_input_must_exist_and_be_a_file(dirs):
    base, _ = dirs
    assert resolve_input(base, "dem/srtm.tif", field="raster").read_bytes() == b"x"
    for missing in ("dem/none.tif", "dem"):
        with pytest.raises(AnalysisError, match="no file") as err:
            resolve_input(base, missing, field="raster")
        assert err.value.field == "raster"


def test_output_rules(dirs):
    base, _ = dirs
    target = resolve_output(base, "jobs/7/clip.tif", field="output_raster")
    assert target == (base / "jobs" / "7" / "clip.tif").resolve()
    assert target.parent.is_dir()
    with pytest.raises(AnalysisError, match="must end in"):
        resolve_output(base, "jobs/clip.png", field="output_raster")
    with pytest.raises(AnalysisError, match="already exists"):
        resolve_output(base, "dem/srtm.tif", field="output_raster")
    assert resolve_output(base, "dem/srtm.tif", field="output_raster", overwrite=True).is_file()
