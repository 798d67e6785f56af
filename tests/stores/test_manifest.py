import json
import os

import numpy as np
import pytest

from scorebank.stores import schema as S
from scorebank.stores.errors import (ConfigMismatchError, InvalidArgumentError, StoreExistsError,
                                     StoreNotFoundError)
from scorebank.stores.manifest import (Manifest, read_manifest, read_store_manifest, read_store_manifests,
                                       record_manifest, store_manifest_names, write_manifest)


def make_manifest(**changes) -> Manifest:
    fields = dict(name="keep-highest-el2n@20", store="/x/s.zarr", dataset="toy", dataset_fingerprint="fp-1",
                  n_examples=10, score="el2n@20", runs=(0, 1), strategy="keep-highest",
                  parameters={"fraction": 0.3, "class_balanced": False}, indices=np.array([1, 4, 7]),
                  counts_per_class={"0": 2, "1": 1}, class_names=("a", "b"), created="2026-01-01T00:00:00+00:00",
                  scorebank_version="0.1.0")
    fields.update(changes)
    return Manifest(**fields)


def test_roundtrip(tmp_path):
    man = make_manifest()
    path = write_manifest(tmp_path / "sub" / "m.json", man)
    doc = json.loads(path.read_text())
    assert doc["format"] == "scorebank-manifest" and doc["format_version"] == 1
    assert doc["indices"] == [1, 4, 7] and doc["n_kept"] == 3 and doc["runs"] == [0, 1]
    back = read_manifest(path, expected_fingerprint="fp-1", n_examples=10)
    assert back.indices.tolist() == [1, 4, 7] and back.to_dict() == man.to_dict()
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["m.json"]  # no temporary left


@pytest.mark.parametrize("edit,error,match", [
    (lambda d: d.update(indices=[1, 4, 4]), InvalidArgumentError, "index 4 appears more than once"),
    (lambda d: d.update(indices=[1, 4, 10]), InvalidArgumentError, r"index 10 is out of range.*0..9"),
    (lambda d: d.update(indices=[-1, 4, 7]), InvalidArgumentError, "index -1 is out of range"),
    (lambda d: d.update(indices=[4, 1, 7]), InvalidArgumentError, "sorted ascending"),
    (lambda d: d.update(n_kept=5), InvalidArgumentError, "n_kept is 5 but there are 3 indices"),
    (lambda d: d.update(format="other"), InvalidArgumentError, "not a scorebank manifest"),
    (lambda d: d.update(format_version=2), InvalidArgumentError, "format_version 2"),
    (lambda d: d.pop("dataset_fingerprint"), InvalidArgumentError, "lacks the field 'dataset_fingerprint'"),
    (lambda d: d.update(n_examples="ten"), InvalidArgumentError, "field 'n_examples' is 'ten'"),
    (lambda d: d.update(counts_per_class={"0": 1}), InvalidArgumentError, "counts_per_class sums to 1"),
])
def test_invalid_documents(tmp_path, edit, error, match):
    doc = make_manifest().to_dict()
    edit(doc)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(error, match=match):
        read_manifest(path)


def test_mismatching_data_set(tmp_path):
    path = write_manifest(tmp_path / "m.json", make_manifest())
    with pytest.raises(ConfigMismatchError, match="fingerprint 'fp-1'.*'fp-2'"):
        read_manifest(path, expected_fingerprint="fp-2")
    with pytest.raises(ConfigMismatchError, match="10 examples but is applied to one of 12"):
        read_manifest(path, n_examples=12)
    with pytest.raises(InvalidArgumentError, match="no manifest file"):
        read_manifest(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InvalidArgumentError, match="not valid JSON"):
        read_manifest(tmp_path / "bad.json")


def _store(tmp_path):
    """A small, empty store with the full schema, made by the writer itself (no training)."""
    from scorebank.stores.zarrstore import create_store

    path = tmp_path / "s.zarr"
    labels = np.zeros(10, np.int64)
    create_store(path, n_epochs=1, labels=labels, true_labels=labels, original_index=np.arange(10),
                 seeds=(0,), features=frozenset(),
                 attrs={S.ATTR_CONFIG: json.dumps({"record_epochs": [0, 1]}), S.ATTR_DATASET: "toy",
                        S.ATTR_FINGERPRINT: "fp-1", S.ATTR_CLASS_NAMES: ["a", "b"]})
    return path


def test_record_in_store(tmp_path):
    path = _store(tmp_path)
    man = make_manifest()
    assert record_manifest(path, man) == f"{S.MANIFESTS_GROUP}/keep-highest-el2n@20"
    assert store_manifest_names(path) == ["keep-highest-el2n@20"]
    back = read_store_manifest(path, "keep-highest-el2n@20", expected_fingerprint="fp-1")
    assert back.to_dict() == man.to_dict()
    assert sorted(os.listdir(path / S.MANIFESTS_GROUP)) == ["keep-highest-el2n@20", "zarr.json"]
    meta = json.loads((path / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    assert f"{S.MANIFESTS_GROUP}/keep-highest-el2n@20/indices" in meta
    from scorebank.stores.location import open_scores

    assert open_scores(path)[S.LABEL].size == 10  # the store still opens
    with pytest.raises(StoreExistsError, match="already has a manifest named"):
        record_manifest(path, man)
    with pytest.raises(InvalidArgumentError, match="name '../x' is not accepted"):
        record_manifest(path, make_manifest(name="../x"))
    with pytest.raises(InvalidArgumentError, match="has no manifest 'other'"):
        read_store_manifest(path, "other")
    assert store_manifest_names(path) == ["keep-highest-el2n@20"]


def test_manifests_read_from_an_exported_archive(tmp_path):
    from scorebank.stores.archive import export_archive

    path = _store(tmp_path)
    record_manifest(path, make_manifest())
    record_manifest(path, make_manifest(name="a-random", score=None, strategy="random", indices=np.array([0, 9]),
                                        counts_per_class={"0": 2}))
    out = tmp_path / "s.scorebank.zip"
    export_archive(path, out)
    assert store_manifest_names(out) == ["a-random", "keep-highest-el2n@20"]
    back = read_store_manifest(out, "keep-highest-el2n@20", expected_fingerprint="fp-1")
    assert back.to_dict() == make_manifest().to_dict()
    assert [m.to_dict() for m in read_store_manifests(out)] == [m.to_dict() for m in read_store_manifests(path)]
    assert read_store_manifests(out)[0].indices.tolist() == [0, 9]
    with pytest.raises(InvalidArgumentError, match=r"has no manifest 'other'.*\['a-random', 'keep-highest-el2n@20'\]"):
        read_store_manifest(out, "other")


def test_no_manifests_and_no_store(tmp_path):
    path = _store(tmp_path)
    assert store_manifest_names(path) == [] and read_store_manifests(path) == []
    for missing in (tmp_path / "missing.zarr", tmp_path / "missing.zip"):
        with pytest.raises(StoreNotFoundError, match="no scorebank store at"):
            read_store_manifests(missing)
        with pytest.raises(StoreNotFoundError):
            store_manifest_names(missing)
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreNotFoundError):
        read_store_manifests(tmp_path / "plain")
