"""The first release's archive (tests/data/format1.scorebank.zip, store format 1) reads the
same forever: every reading command and plain xarray give exactly the answers captured in
tests/data/format1-expected.json when this test was written.

Capture (once; see tests/data/README.md):  python tests/stores/test_format1_archive.py --capture
A later version may ADD keys to a JSON answer; every captured key must keep its exact value.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
ARCHIVE = DATA / "format1.scorebank.zip"
EXPECTED = DATA / "format1-expected.json"
ARC, OUT = "{archive}", "{out}"  # placeholders in the arguments and the answers
VOLATILE = ("created",)  # keys whose value is the time a command ran


def cases() -> dict[str, list[str]]:
    """``{case id: scorebank arguments}``; a case writing ``{out}/NAME`` also compares that file.
    ``select --keep`` was ``--fraction`` when the answers were captured (renamed, same values)."""
    keep = "--keep"
    analyze = ["analyze", ARC]
    out = {
        "inspect": ["inspect", ARC, "--json"],
        "inspect-verify": ["inspect", ARC, "--verify", "--json"],
        "info": ["info", ARC, "--json"],
        "forgetting": analyze + ["forgetting", "--json"],
        "forgetting-e2-top": analyze + ["forgetting", "--epoch", "2", "--top", "10", "--never-learned", "inf",
                                        "--json"],
        "scores": analyze + ["scores", "el2n@1", "margin@3", "loss@0", "grand@0", "grand@3", "forgetting",
                             "--out", f"{OUT}/scores.csv", "--json"],
        "scores-sum-run1": analyze + ["scores", "el2n@1", "--reduce", "sum", "--runs", "1", "--json"],
        "correlation": analyze + ["correlation", "el2n@1", "grand@0", "forgetting", "margin@3", "loss@1",
                                  "--json"],
        "sensitivity": analyze + ["sensitivity", "el2n@1", "--json"],
        "separation": analyze + ["separation", "--json"],
        "overlap": analyze + ["overlap", "--k", "5,20", "--json"],
        "margins": analyze + ["margins", "--by-class", "--json"],
        "difficulty": analyze + ["difficulty", "--json"],
        "noise": analyze + ["noise", "el2n@1", "loss@3", "forgetting", "grand@3", "--json"],
        "curves": analyze + ["curves", "--json"],
        "manifests": analyze + ["manifests", "--json"],
    }
    for strategy, extra in {"keep-highest": ["--score", "el2n@1", keep, "0.5"],
                            "keep-lowest": ["--score", "forgetting", keep, "0.3", "--class-balanced"],
                            "window": ["--score", "grand@0", keep, "0.4", "--offset", "0.1"],
                            "random": [keep, "0.2", "--seed", "3"],
                            "smallest-margin": ["--score", "nmargin@3", "--count", "17"],
                            "stratified": ["--score", "el2n@1", keep, "0.5", "--bins", "4"]}.items():
        out[f"select-{strategy}"] = ["select", ARC, "--strategy", strategy, *extra, "--name", f"f1-{strategy}",
                                     "--no-record", "--out", f"{OUT}/{strategy}.json", "--json"]
    return out


def run_case(args: list[str], out_dir: Path) -> dict:
    """Run one case in-process; its answer with paths replaced by the placeholders."""
    from scorebank.cli.main import app
    from typer.testing import CliRunner

    real = [a.replace(ARC, str(ARCHIVE)).replace(OUT, str(out_dir)) for a in args]
    result = CliRunner().invoke(app, real, terminal_width=200)
    answer: dict = {"exit_code": result.exit_code}
    try:
        answer["json"] = _normalise(json.loads(result.stdout), out_dir)
    except json.JSONDecodeError:
        answer["stdout"] = result.stdout
    files = {}
    for a in args:
        if a.startswith(OUT + "/"):
            path = out_dir / a[len(OUT) + 1:]
            text = path.read_text(encoding="utf-8") if path.exists() else None
            files[a] = _normalise(json.loads(text), out_dir) if a.endswith(".json") and text else text
    if files:
        answer["files"] = files
    return answer


def _normalise(doc, out_dir: Path):
    if isinstance(doc, dict):
        return {k: _normalise(v, out_dir) for k, v in doc.items() if k not in VOLATILE}
    if isinstance(doc, list):
        return [_normalise(v, out_dir) for v in doc]
    if isinstance(doc, str):
        return doc.replace(str(ARCHIVE), ARC).replace(str(out_dir), OUT)
    return doc


def xarray_answer() -> dict:
    """What plain ``xr.open_zarr(zarr.storage.ZipStore(...))`` reads: for every variable and
    coordinate its dims, dtype, attributes and the sha256 of its values' bytes (exact)."""
    import xarray as xr
    import zarr

    ds = xr.open_zarr(zarr.storage.ZipStore(ARCHIVE, mode="r"))
    out = {"dims": {k: int(v) for k, v in ds.sizes.items()}, "attrs": _jsonable(dict(ds.attrs)),
           "coords": sorted(ds.coords), "variables": {}}
    for name, var in {**ds.coords, **ds.data_vars}.items():
        values = np.ascontiguousarray(var.values)
        out["variables"][name] = {"dims": list(var.dims), "dtype": str(values.dtype),
                                  "attrs": _jsonable(dict(var.attrs)),
                                  "sha256": hashlib.sha256(values.tobytes()).hexdigest()}
    return out


def _jsonable(doc):
    return json.loads(json.dumps(doc, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _contains(expected, got, where: str) -> None:
    """``got`` answers everything ``expected`` does, exactly (floats: equal, NaN == NaN)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict), f"{where}: {got!r} is not an object"
        for k, v in expected.items():
            assert k in got, f"{where}: key {k!r} is gone"
            _contains(v, got[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), f"{where}: {got!r} != {expected!r}"
        for i, (e, g) in enumerate(zip(expected, got)):
            _contains(e, g, f"{where}[{i}]")
    elif isinstance(expected, float) and isinstance(got, float) and math.isnan(expected):
        assert math.isnan(got), f"{where}: {got!r} != nan"
    else:
        assert got == expected and type(got) is type(expected), f"{where}: {got!r} != {expected!r}"


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(EXPECTED.read_text(encoding="utf-8"))


def test_every_case_was_captured(expected):
    assert set(expected["cases"]) == set(cases())


@pytest.mark.parametrize("case", sorted(cases()))
def test_command_answers_as_the_first_release_did(case, expected, tmp_path):
    args = cases()[case]
    want = expected["cases"][case]
    assert want["exit_code"] == 0
    _contains(want, run_case(args, tmp_path), case)


def test_plain_xarray_reads_the_same(expected):
    _contains(expected["xarray"], xarray_answer(), "xarray")


def capture() -> None:
    import tempfile

    answers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case, args in cases().items():
            (Path(tmp) / case).mkdir()
            answers[case] = run_case(args, Path(tmp) / case)
            assert answers[case]["exit_code"] == 0, (case, answers[case], args)
    doc = {"note": "outputs of the first release on format1.scorebank.zip; made by "
                   "`python tests/stores/test_format1_archive.py --capture`",
           "cases": answers, "xarray": xarray_answer()}
    EXPECTED.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__" and sys.argv[1:] == ["--capture"]:
    capture()
