import json
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A kernel spec that runs this interpreter with this checkout on its path (a fresh CI venv has no other)."""
    spec = tmp_path / "jupyter" / "kernels" / "csfl-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "csfl test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return "csfl-test"


def test_every_notebook_is_tested():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_custom_selector.ipynb",
                                          "03_memory_callbacks.ipynb", "04_reading_a_comparison.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_committed_executed(path):
    # A reader on GitHub sees the numbers and plots: `python bench/regenerate_readme.py --notebooks` keeps them.
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in cells)
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1))  # top to bottom, in one go
    assert any(c.outputs for c in cells)
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_end_to_end(path, kernel, tmp_path):
    nb = nbformat.read(path, as_version=4)
    # Runs in tmp_path, so its run directories land there; any failing cell raises CellExecutionError.
    NotebookClient(nb, kernel_name=kernel, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
    assert not errors
