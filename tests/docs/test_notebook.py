"""docs/querying-a-store.ipynb runs headless against a small store and prints what the
store says."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "querying-a-store.ipynb"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from scorebank.pipeline.config import resolve_config
    from scorebank.pipeline.scoring import score

    path = tmp_path_factory.mktemp("notebook") / "scores.zarr"
    score(resolve_config(dataset="digits", limit=120, model="mlp", width=8, epochs=2, batch_size=32),
          (0, 1), path, device="cpu")
    return path


def _execute(store: Path, workdir: Path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client import KernelManager

    monkeypatch.setenv("SCOREBANK_STORE", str(store))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # IPC sockets (absolute path, short enough for AF_UNIX): no network port at all
    with tempfile.TemporaryDirectory(prefix="sbnb-") as sockets:
        km = KernelManager(kernel_name="python3", transport="ipc", ip=os.path.join(sockets, "k"))
        # the timeout only guards against a hung kernel (per cell); no time limit is tested
        nbclient.NotebookClient(nb, timeout=300, km=km, resources={"metadata": {"path": str(workdir)}}).execute()
        return nb


def test_notebook_executes_and_reports_the_store(store, tmp_path, monkeypatch):
    from scipy.stats import spearmanr

    nb = _execute(store, tmp_path, monkeypatch)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert not [o for o in outputs if o.output_type == "error"]
    assert len(images) == 2  # sorted normalised margins; the 20 images

    ds = xr.open_zarr(store)
    margin = ds.margin.sel(run=0, epoch=2).values
    assert (f"run 0, epoch 2: mean margin {margin.mean():.4f}; {int((margin > 0).sum())} of 120 examples "
            "classified correctly") in text

    final = (ds.margin / ds.norm_product).sel(epoch=2).mean("run").values
    expected = np.argsort(final, kind="stable")[:20].tolist()
    shown = re.search(r"20 smallest normalised margins at epoch 2: \[([0-9, ]+)\]", text)
    assert shown is not None, text
    assert [int(x) for x in shown.group(1).split(",")] == expected

    el2n = ds.el2n.sel(epoch=1).mean("run").values
    rho_expected = float(spearmanr(el2n, final).statistic)
    m = re.search(r"Spearman rho\(el2n@1, normalised margin@2\) = (\S+) \(scipy: (\S+)\)", text)
    assert m is not None, text
    assert float(m.group(2)) == rho_expected
    assert float(m.group(1)) == pytest.approx(rho_expected, abs=1e-12)
