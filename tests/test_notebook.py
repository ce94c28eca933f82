"""notebooks/quickstart.ipynb runs headless from the checkout, every cell without error, on a
short training run (the published-weights cell skips without its files)."""
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def test_the_quickstart_notebook_runs_every_cell(tmp_path, monkeypatch):
    monkeypatch.setenv("MARJAX_NOTEBOOK_STEPS", "8")  # the kernel inherits it
    notebook = nbformat.read(os.path.join(REPO, "notebooks", "quickstart.ipynb"), as_version=4)
    source = "\n".join(cell.source for cell in notebook.cells)
    notebook.cells[3].source = notebook.cells[3].source.replace('"/tmp/marjax-notebook"', repr(str(tmp_path / "run")))
    assert repr(str(tmp_path / "run")) in notebook.cells[3].source and "marjax.api.load" in source
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": REPO}}).execute()
    outputs = "".join(str(output) for cell in notebook.cells for output in cell.get("outputs", []))
    assert "image/png" in outputs and "step     8  loss" in outputs and "skipped: set MARJAX_KL16" in outputs
