"""The README's "Record from your own training loop" example runs verbatim and writes a
store that scorebank's analyses read.

The example lives in docs/record-your-loop.py; the README section quotes it.  Once the
README has the section, its python block must equal the file (so the README shows what
this test runs); until then the file alone is run."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import xarray as xr

ROOT = Path(__file__).resolve().parents[2]
HEADING = "## Record from your own training loop"
EXAMPLE = ROOT / "docs" / "record-your-loop.py"


def example_code() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code = EXAMPLE.read_text(encoding="utf-8")
    if HEADING in readme:
        section = readme.split(HEADING, 1)[1]
        block = re.search(r"```python\n(.*?)```", section, re.S)
        assert block, f"no ```python block after {HEADING!r} in README.md"
        assert block.group(1) == code, "README's example differs from docs/record-your-loop.py"
        return block.group(1)
    return code


def test_readme_recorder_example_runs(tmp_path, monkeypatch, capsys):
    code = example_code()
    assert len(code.splitlines()) <= 40
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(EXAMPLE), "exec"), {"__name__": "__main__"})
    ds = xr.open_zarr(tmp_path / "mine.zarr")
    assert dict(ds.sizes) == {"run": 1, "epoch": 6, "example": 1400}
    assert ds.completed.values.all() and ds.recorded.values.all()
    assert ds.attrs["runs"]["0"]["status"] == "complete"
    assert np.isfinite(ds.margin.values).all()
    printed = capsys.readouterr().out
    np.testing.assert_allclose(np.array(printed.strip(" []\n").split(), dtype=float),
                               ds.test_accuracy.sel(run=0).values, rtol=1e-6)
    # the store works with the analyses the example points to
    from typer.testing import CliRunner

    from scorebank.cli.main import app

    result = CliRunner().invoke(app, ["analyze", "mine.zarr", "forgetting", "--json"])
    assert result.exit_code == 0, result.output
