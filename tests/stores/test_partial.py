"""Issue 11 #8: partials left by interrupted create, merge, export, import and manifest
writes are cleaned by the next run; a live writer's partial never is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scorebank.stores import schema as S
from scorebank.stores.partial import LEGACY_STALE_SECONDS, _host, clean_stale, is_stale, partial_path


@pytest.fixture(scope="module")
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _leftovers(final: Path, dead: int, live: int, *, folder: bool) -> dict[str, Path]:
    """Partials of ``final``: a dead writer's, a live one's, another host's, old and fresh
    old-style ones (each a folder or a file, as the writer of ``final`` makes them)."""
    names = {"dead": f".{final.name}.{_host()}-{dead}-0123abcd.partial",
             "live": f".{final.name}.{_host()}-{live}-0123abcd.partial",
             "other host": f".{final.name}.elsewhere-{dead}-0123abcd.partial",
             "legacy old": f".{final.name}.89abcdef.partial",
             "legacy fresh": f".{final.name}.fedcba98.partial",
             "other name": f".x{final.name}.{_host()}-{dead}-0123abcd.partial"}
    made = {}
    for key, name in names.items():
        path = final.parent / name
        if folder:
            (path / "sub").mkdir(parents=True)
            (path / "sub" / "chunk").write_bytes(b"x")
        else:
            path.write_bytes(b"partial")
        made[key] = path
    old = time.time() - LEGACY_STALE_SECONDS - 60
    os.utime(made["legacy old"], (old, old))
    return made


def _check_cleaned(made: dict[str, Path]) -> None:
    gone = {key for key, path in made.items() if not path.exists()}
    assert gone == {"dead", "legacy old"}, gone


def _create(path: Path, seeds=(0, 1)) -> Path:
    from scorebank.stores.create import create_store

    create_store(path, n_epochs=1, labels=np.arange(6) % 2, true_labels=np.arange(6) % 2,
                 original_index=np.arange(6), seeds=seeds, features=frozenset(),
                 attrs={S.ATTR_CONFIG: json.dumps({"record_epochs": [0, 1]}), S.ATTR_FINGERPRINT: "fp"})
    return path


def test_partial_names_carry_host_and_pid_and_our_own_is_live(tmp_path):
    path = partial_path(tmp_path / "out.zarr")
    assert path.name.startswith(f".out.zarr.{_host()}-{os.getpid()}-") and path.name.endswith(".partial")
    path.mkdir()
    assert not is_stale(path) and clean_stale(tmp_path / "out.zarr") == []


def test_create_store_cleans_stale_partials(tmp_path, dead_pid, live_pid):
    made = _leftovers(tmp_path / "s.zarr", dead_pid, live_pid, folder=True)
    _create(tmp_path / "s.zarr")
    _check_cleaned(made)


def test_merge_cleans_stale_partials(tmp_path, dead_pid, live_pid):
    from scorebank.stores.merge import merge_stores

    a, b = _create(tmp_path / "a.zarr"), _create(tmp_path / "b.zarr", seeds=(2,))
    made = _leftovers(tmp_path / "m.zarr", dead_pid, live_pid, folder=True)
    merge_stores([a, b], tmp_path / "m.zarr")
    _check_cleaned(made)


def test_export_and_import_clean_stale_partials(tmp_path, dead_pid, live_pid):
    from scorebank.stores.archive import export_archive, import_archive

    store = _create(tmp_path / "s.zarr")
    made = _leftovers(tmp_path / "s.scorebank.zip", dead_pid, live_pid, folder=False)
    export_archive(store, tmp_path / "s.scorebank.zip")
    _check_cleaned(made)
    made = _leftovers(tmp_path / "back.zarr", dead_pid, live_pid, folder=True)
    import_archive(tmp_path / "s.scorebank.zip", tmp_path / "back.zarr")
    _check_cleaned(made)


def test_manifest_writes_clean_stale_partials(tmp_path, dead_pid, live_pid):
    from scorebank.stores.manifest import Manifest, record_manifest, write_manifest

    store = _create(tmp_path / "s.zarr")
    manifest = Manifest(name="keep-all", store=str(store), dataset="toy", dataset_fingerprint="fp", n_examples=6,
                        score="el2n@1", runs=(0, 1), strategy="keep-highest", parameters={"fraction": 1.0},
                        indices=np.arange(6), counts_per_class={"0": 3, "1": 3}, class_names=["0", "1"])
    made = _leftovers(tmp_path / "keep.json", dead_pid, live_pid, folder=False)
    write_manifest(tmp_path / "keep.json", manifest)
    _check_cleaned(made)
    # an interrupted record_manifest leaves a hidden group in the store; the next one (under
    # the store's writer lock, so no one else can be writing one) removes it
    (store / S.MANIFESTS_GROUP / ".partial-0123456789ab" / "indices").mkdir(parents=True)
    record_manifest(store, manifest)
    assert sorted(p.name for p in (store / S.MANIFESTS_GROUP).iterdir() if p.is_dir()) == ["keep-all"]
