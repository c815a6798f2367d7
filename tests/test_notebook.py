"""notebooks/quickstart.ipynb runs top to bottom on the bundled default model."""
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    import gnr

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel imports the same gnr as this test process.
    pythonpath = str(Path(gnr.__file__).resolve().parent.parent)
    nb.cells.insert(0, nbformat.v4.new_code_cell(
        f"import sys; sys.path.insert(0, {pythonpath!r}); import matplotlib; matplotlib.use('Agg')"))
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "stopped:" in outputs and "10 steps seen" in outputs
