"""Every notebook runs from top to bottom against a fresh test database and shows its maps."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, db_url: str) -> None:
    notebook = nbformat.read(path, as_version=4)
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
