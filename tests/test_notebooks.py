"""Every notebook runs from top to bottom against a fresh test database and shows its maps."""

from __future__ import annotations

import re
from contextlib import ExitStack, contextmanager
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.api_support import api_server

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

pytestmark = pytest.mark.db

PLOTS = re.compile(r"^\S.*(\.plot\(|plt\.subplots\(|rasterio\.plot\.show\()", re.MULTILINE)
"""A cell that draws a figure at its top level (not only in a function it defines): it must leave
an image in its outputs, a map shown inline."""


def test_notebooks_draw_inline() -> None:
    """No notebook forces a non-interactive backend, which would hide every map in Jupyter."""
    plotting = 0
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        sources = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
        assert not re.search(r"matplotlib\.use\(|MPLBACKEND", sources), path.name
        plotting += bool(PLOTS.search(sources))
    assert plotting >= 1  # the pattern still recognises how the notebooks draw


def _needs_api(notebook: nbformat.NotebookNode) -> bool:
    """A notebook that talks to the HTTP API only (it reads GEOJOBS_API_URL / _KEY)."""
    return any("GEOJOBS_API_KEY" in c.source for c in notebook.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, db_url: str, template_db: str, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = nbformat.read(path, as_version=4)
    with ExitStack() as stack:
        if _needs_api(notebook):  # a real `geojobs serve` and the workers the notebook uses
            server = stack.enter_context(contextmanager(api_server)(
                template_db, tmp_path, users={"analyst": False}, workers=("hotspot",)))
            monkeypatch.setenv("GEOJOBS_API_URL", server.url)
            monkeypatch.setenv("GEOJOBS_API_KEY", server.keys["analyst"])
        _run(notebook)


def _run(notebook: nbformat.NotebookNode) -> None:
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}})
    client.execute()  # raises CellExecutionError, with the failing cell, on any error
    errors = [o for cell in notebook.cells if cell.cell_type == "code"
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    blank = [cell.source.splitlines()[0] for cell in notebook.cells
             if cell.cell_type == "code" and PLOTS.search(cell.source)
             and not any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))]
    assert not blank, f"cells that plot but show no image/png: {blank}"
