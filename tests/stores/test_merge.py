"""Merging stores and archives: equality with a single store, provenance, refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from scorebank.stores import schema as S
from scorebank.stores.archive import export_archive
from scorebank.stores.errors import InvalidArgumentError, StoreExistsError
from scorebank.stores.location import open_scores
from scorebank.stores.merge import DuplicateRunsError, MergeError, merge_stores
from scorebank.stores.summary import summarize


def _config(**overrides):
    from scorebank.pipeline.config import resolve_config

    fields = dict(dataset="digits", limit=120, model="mlp", width=8, epochs=2, batch_size=32)
    fields.update(overrides)
    return resolve_config(**fields)


LONGER = dict(epochs=3, width=4, record_epochs="0,2,3")


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    from scorebank.pipeline.scoring import score

    root = tmp_path_factory.mktemp("merge")
    made = {}
    for name, config, seeds in (("a", _config(), (0, 1)), ("b", _config(), (2,)), ("full", _config(), (0, 1, 2)),
                                ("longer", _config(**LONGER), (0,)), ("subset", _config(limit=100), (5,)),
                                ("noisy", _config(label_noise=0.2), (5,))):
        made[name] = root / f"{name}.zarr"
        score(config, seeds, made[name], device="cpu")
    return made


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_merge_of_two_stores_equals_one_store_with_all_seeds(stores, tmp_path):
    out = merge_stores([stores["a"], stores["b"]], tmp_path / "merged.zarr")
    merged, full = open_scores(out.path), open_scores(stores["full"])
    assert sorted(merged.data_vars) == sorted(full.data_vars)
    for name in full.data_vars:
        assert merged[name].dtype == full[name].dtype, name
        assert merged[name].dims == full[name].dims, name
        np.testing.assert_array_equal(merged[name].values, full[name].values, err_msg=name)
    for name in (S.RUN, S.EPOCH, S.EXAMPLE, S.ORIGINAL_INDEX):
        np.testing.assert_array_equal(merged[name].values, full[name].values)
    assert merged["seed"].values.tolist() == [0, 1, 2]
    assert merged["source"].values.tolist() == ["a.zarr", "a.zarr", "b.zarr"]
    assert merged["config_hash"].values.tolist() == [_config().identity_hash()] * 3
    for key in (S.ATTR_FORMAT, S.ATTR_CONFIG, S.ATTR_DATASET, S.ATTR_FINGERPRINT, S.ATTR_CLASS_NAMES, "features"):
        assert merged.attrs[key] == full.attrs[key], key
    assert {k: v["status"] for k, v in merged.attrs[S.ATTR_RUNS].items()} == {"0": "complete", "1": "complete",
                                                                             "2": "complete"}
    assert [(e["name"], e["runs"], e["config"]) for e in merged.attrs["sources"]] == [
        ("a.zarr", [0, 1], full.attrs[S.ATTR_CONFIG]), ("b.zarr", [2], full.attrs[S.ATTR_CONFIG])]
    assert [dataclasses.replace(r, source=None) for r in summarize(merged).runs] == list(summarize(full).runs)
    assert [r.source for r in summarize(merged).runs] == ["a.zarr", "a.zarr", "b.zarr"]


def test_merge_reads_archives_and_records_their_creator(stores, tmp_path):
    archive = tmp_path / "lab-b.scorebank.zip"
    export_archive(stores["b"], archive, creator="Lab B", license="CC0-1.0")
    merged = open_scores(merge_stores([stores["a"], archive], tmp_path / "merged.zarr").path)
    full = open_scores(stores["full"])
    for name in full.data_vars:
        np.testing.assert_array_equal(merged[name].values, full[name].values, err_msg=name)
    assert merged["source"].values.tolist() == ["a.zarr", "a.zarr", "lab-b.scorebank.zip"]
    assert merged["source_creator"].values.tolist() == ["", "", "Lab B"]
    entry = merged.attrs["sources"][1]
    assert (entry["creator"], entry["license"], entry["location"]) == ("Lab B", "CC0-1.0", str(archive))


def test_runs_recorded_at_different_epochs_merge_with_nan_and_false(stores, tmp_path):
    from scorebank.analysis.scores import average_score

    merged = open_scores(merge_stores([stores["a"], stores["longer"]], tmp_path / "merged.zarr").path)
    a, longer = open_scores(stores["a"]), open_scores(stores["longer"])
    assert merged[S.EPOCH].values.tolist() == [0, 1, 2, 3]
    # seed 0 trained with another configuration is not a duplicate: it gets run id 2
    assert merged[S.RUN].values.tolist() == [0, 1, 2]
    assert merged["seed"].values.tolist() == [0, 1, 0]
    assert merged["config_hash"].values.tolist() == [_config().identity_hash()] * 2 + [
        _config(**LONGER).identity_hash()]
    assert merged[S.COMPLETED].values.tolist() == [[True, True, True, False]] * 2 + [[True, True, True, True]]
    assert merged[S.RECORDED].values.tolist() == [[True, True, True, False]] * 2 + [[True, False, True, True]]
    for name in (S.MARGIN, S.LOSS, S.TEST_ACCURACY, S.NORM_PRODUCT):
        assert np.isnan(merged[name].sel(run=[0, 1], epoch=3).values).all(), name
        np.testing.assert_array_equal(merged[name].sel(run=[0, 1], epoch=[0, 1, 2]).values, a[name].values)
        np.testing.assert_array_equal(merged[name].sel(run=2).values, longer[name].sel(run=0).values)
    assert not merged[S.CORRECT].sel(run=[0, 1], epoch=3).values.any()
    assert [r.last_epoch for r in summarize(merged).runs] == [2, 2, 3]
    # the analysis honours `recorded`: margin@3 exists only in run 2
    with pytest.raises(InvalidArgumentError, match=r"not recorded at epoch 3 in run\(s\) \[0, 1\]"):
        average_score(merged, "margin@3")
    np.testing.assert_array_equal(average_score(merged, "margin@3", runs=[2]).values,
                                  longer[S.MARGIN].sel(run=0, epoch=3).values.astype(np.float64))


@pytest.mark.parametrize("other, fragment", [
    ("subset", "'dataset_fingerprint' attributes differ"),
    ("noisy", "'label' differs at"),
])
def test_merging_different_examples_is_refused_and_writes_nothing(stores, tmp_path, other, fragment):
    before = listing(tmp_path)
    with pytest.raises(MergeError) as exc:
        merge_stores([stores["a"], stores[other]], tmp_path / "merged.zarr")
    assert fragment in str(exc.value) and "\n" not in str(exc.value)
    assert listing(tmp_path) == before


def test_fingerprint_message_quotes_both_fingerprints(stores, tmp_path):
    fa = open_scores(stores["a"]).attrs[S.ATTR_FINGERPRINT]
    fb = open_scores(stores["subset"]).attrs[S.ATTR_FINGERPRINT]
    with pytest.raises(MergeError) as exc:
        merge_stores([stores["a"], stores["subset"]], tmp_path / "merged.zarr")
    assert f"({fa!r} vs {fb!r})" in str(exc.value)


def test_the_same_archive_twice_is_refused_unless_duplicates_allowed(stores, tmp_path):
    archive = tmp_path / "a.scorebank.zip"
    export_archive(stores["a"], archive)
    with pytest.raises(DuplicateRunsError, match="seed 0 with configuration"):
        merge_stores([archive, archive], tmp_path / "twice.zarr")
    assert not (tmp_path / "twice.zarr").exists()
    merged = open_scores(merge_stores([archive, archive], tmp_path / "twice.zarr", allow_duplicates=True).path)
    assert merged[S.RUN].values.tolist() == [0, 1, 2, 3]
    assert merged["seed"].values.tolist() == [0, 1, 0, 1]
    assert merged["source"].values.tolist() == ["a.scorebank.zip"] * 2 + ["a.scorebank.zip#2"] * 2
    np.testing.assert_array_equal(merged[S.MARGIN].sel(run=[2, 3]).values, merged[S.MARGIN].sel(run=[0, 1]).values)
    assert [(r.run, r.seed, r.source) for r in summarize(merged).runs] == [
        (0, 0, "a.scorebank.zip"), (1, 1, "a.scorebank.zip"), (2, 0, "a.scorebank.zip#2"), (3, 1, "a.scorebank.zip#2")]


def test_merged_stores_merge_again_keeping_provenance_and_catching_duplicates(stores, tmp_path):
    first = merge_stores([stores["a"], stores["longer"]], tmp_path / "first.zarr").path
    exported = tmp_path / "first.scorebank.zip"
    export_archive(first, exported, creator="Lab C")
    again = open_scores(merge_stores([exported, stores["b"]], tmp_path / "again.zarr").path)
    # run id = seed unless taken; the second seed 0 gets the next id above the largest seed (2)
    assert again[S.RUN].values.tolist() == [0, 1, 3, 2]
    assert again["seed"].values.tolist() == [0, 1, 0, 2]
    assert again["source"].values.tolist() == ["a.zarr", "a.zarr", "longer.zarr", "b.zarr"]
    assert [e["name"] for e in again.attrs["sources"]] == ["a.zarr", "longer.zarr", "b.zarr"]
    assert json.loads(again.attrs["sources"][1]["config"])["epochs"] == 3
    with pytest.raises(DuplicateRunsError, match="seed 0 with configuration .* is in both .*again.zarr.* and .*full.zarr"):
        merge_stores([tmp_path / "again.zarr", stores["full"]], tmp_path / "dup.zarr")


def test_merge_argument_checks(stores, tmp_path):
    with pytest.raises(InvalidArgumentError, match="at least two stores"):
        merge_stores([stores["a"]], tmp_path / "one.zarr")
    with pytest.raises(InvalidArgumentError, match="remote locations are read-only"):
        merge_stores([stores["a"], stores["b"]], "http://127.0.0.1:9/merged.zarr")
    (tmp_path / "taken.zarr").mkdir()
    with pytest.raises(StoreExistsError, match="already exists"):
        merge_stores([stores["a"], stores["b"]], tmp_path / "taken.zarr")
    assert listing(tmp_path) == ["taken.zarr"]


def test_plain_xarray_reads_the_provenance_coordinates(stores, tmp_path):
    out = merge_stores([stores["a"], stores["b"]], tmp_path / "merged.zarr").path
    ds = xr.open_zarr(out)
    assert set(ds[S.MARGIN].coords) == {S.RUN, S.EPOCH, S.EXAMPLE, S.ORIGINAL_INDEX, "seed", "source",
                                        "source_creator", "config_hash"}
    assert ds.sel(run=2)["source"].values.tolist() == "b.zarr"


def test_scoring_more_seeds_into_a_merged_store_is_refused_and_changes_nothing(stores, tmp_path):
    from scorebank.pipeline.scoring import MergedStoreError, score

    out = merge_stores([stores["a"], stores["b"]], tmp_path / "merged.zarr").path
    before = {p: p.read_bytes() for p in Path(out).rglob("*") if p.is_file()}
    with pytest.raises(MergedStoreError, match=r"merged\.zarr'.*scorebank merge"):
        score(_config(), (7,), out, device="cpu")
    assert {p: p.read_bytes() for p in Path(out).rglob("*") if p.is_file()} == before


def test_provenance_names_are_the_schema_s(stores, tmp_path):
    from scorebank.stores import merge

    assert merge.ATTR_SOURCES is S.ATTR_SOURCES and merge.RUN_COORDS is S.RUN_COORDS  # merge.ATTR_SOURCES stays importable
    out = merge_stores([stores["a"], stores["b"]], tmp_path / "merged.zarr")
    root = json.loads((out.path / "zarr.json").read_text())
    meta = root["consolidated_metadata"]["metadata"]
    assert {name: meta[name]["data_type"] for name in S.RUN_COORDS} == S.RUN_COORD_DTYPES
    assert isinstance(root["attributes"][S.ATTR_SOURCES], list) and S.ATTR_FEATURES in root["attributes"]


def test_merging_two_default_stores_says_how_to_fix_it(tmp_path):
    """The README's merge example on two stores scored with the default seeds 0-2."""
    from scorebank.stores.create import create_store

    config = _config().to_json()
    for name in ("lab-a.zarr", "lab-b.zarr"):
        create_store(tmp_path / name, n_epochs=1, labels=np.arange(8) % 2, true_labels=np.arange(8) % 2,
                     original_index=np.arange(8), seeds=(0, 1, 2), features=frozenset(),
                     attrs={S.ATTR_CONFIG: config, S.ATTR_FINGERPRINT: "fp"})
    with pytest.raises(DuplicateRunsError) as exc:
        merge_stores([tmp_path / "lab-a.zarr", tmp_path / "lab-b.zarr"], tmp_path / "both.zarr")
    message = str(exc.value)
    assert message.startswith(f"seed 0 with configuration {_config().identity_hash()!r} is in both "
                              f"{str(tmp_path / 'lab-a.zarr')!r} and {str(tmp_path / 'lab-b.zarr')!r}")
    assert "score one store with other seeds (e.g. 'scorebank score ... --seeds 3-5')" in message
    assert "--allow-duplicates" in message and "\n" not in message
    assert not (tmp_path / "both.zarr").exists()
