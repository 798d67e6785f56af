"""Format evolution: readers open every format from 1 to the current one, require only the
variables a store's format has, and refuse newer formats in one line (stores/schema.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from scorebank.stores import schema as S
from scorebank.stores.create import consolidate
from scorebank.stores.location import (MissingVariableError, NewerFormatError, open_group, open_scores,
                                       require_variables)
from scorebank.stores.merge import merge_stores

FORMAT1 = Path(__file__).resolve().parents[1] / "data" / "format1.scorebank.zip"
CURRENT = S.FORMAT_VERSION  # this release's format
NEW = CURRENT + 1  # a hypothetical next format
TOY = S.Variable("toy_score", (S.RUN, S.EPOCH, S.EXAMPLE), "float32", "a hypothetical next-format score",
                 since=NEW)


@pytest.fixture
def format2(monkeypatch):
    """The schema as the next release, which adds TOY in format NEW, would declare it."""
    monkeypatch.setattr(S, "VARIABLES", S.VARIABLES + (TOY,))
    monkeypatch.setattr(S, "BY_NAME", {**S.BY_NAME, TOY.name: TOY})
    monkeypatch.setattr(S, "FORMAT_VERSION", NEW)
    return monkeypatch


def _like_format1(path: Path, seeds=(7,)) -> Path:
    """A new, empty store of the format-1 archive's examples (so the two can be merged)."""
    from scorebank.stores.create import create_store

    ref = open_scores(FORMAT1)
    create_store(path, n_epochs=3, labels=ref[S.LABEL].values, true_labels=ref[S.TRUE_LABEL].values,
                 original_index=ref[S.ORIGINAL_INDEX].values, seeds=seeds,
                 features=frozenset(ref.attrs[S.ATTR_FEATURES]),
                 attrs={k: ref.attrs[k] for k in (S.ATTR_CONFIG, S.ATTR_DATASET, S.ATTR_FINGERPRINT,
                                                  S.ATTR_CLASS_NAMES)})
    return path


def test_schema_variables_by_format(format2):
    assert TOY not in S.variables(format_version=CURRENT)
    assert TOY in S.variables()
    for version in range(1, NEW + 1):
        assert S.variables(format_version=version) == tuple(v for v in S.VARIABLES
                                                            if v.since <= version and v.feature is None)
    assert {S.MARGIN, S.EL2N, S.LOSS, S.CORRECT, S.LABEL} <= {v.name for v in S.variables(format_version=1)}


def test_format1_archive_opens_with_a_format2_reader_and_lacks_the_new_variable(format2):
    ds = open_scores(FORMAT1)
    assert TOY.name not in ds.variables
    assert S.store_format(ds.attrs) == 1
    with pytest.raises(MissingVariableError) as exc:
        require_variables(ds, [S.MARGIN, TOY.name], "analyze toy")
    assert str(exc.value) == ("analyze toy needs 'toy_score', but store format 1 has no 'toy_score' "
                              f"(added in format {NEW}): re-score with a newer scorebank")
    require_variables(ds, [S.MARGIN, S.GRAND], "analyze toy")  # present: no error
    group, _ = open_group(FORMAT1)
    assert TOY.name not in group


def test_a_new_store_has_the_new_variable_and_records_both_formats(format2, tmp_path):
    path = _like_format1(tmp_path / "new.zarr")
    attrs = zarr.open_group(path, mode="r").attrs
    assert (attrs[S.ATTR_FORMAT], attrs[S.ATTR_WRITER_FORMAT]) == (S.READER_FORMAT, NEW)
    ds = open_scores(path)
    assert ds[TOY.name].dims == TOY.dims and ds[TOY.name].dtype == np.float32
    assert np.isnan(ds[TOY.name].values).all()
    require_variables(ds, [TOY.name], "analyze toy")


def test_a_next_format_store_opens_in_this_reader(format2, tmp_path):
    path = _like_format1(tmp_path / "new.zarr")
    format2.undo()  # back to this release's schema
    assert S.FORMAT_VERSION == CURRENT and TOY.name not in S.BY_NAME
    ds = open_scores(path)
    assert {v.name for v in S.variables(frozenset(ds.attrs[S.ATTR_FEATURES]))} <= set(ds.variables)
    assert TOY.name in ds.variables  # an array it does not know is simply extra


def test_a_format2_store_missing_its_format2_variable_is_refused(format2, tmp_path):
    path = _like_format1(tmp_path / "new.zarr")
    root = zarr.open_group(path, mode="r+")
    del root[TOY.name]
    consolidate(path)
    with pytest.raises(Exception, match=r"lacks the array\(s\) \['toy_score'\]"):
        open_scores(path)


def test_a_store_for_newer_readers_is_refused_in_one_line(tmp_path):
    path = _like_format1(tmp_path / "future.zarr")
    root = zarr.open_group(path, mode="r+")
    root.attrs.update({S.ATTR_FORMAT: S.FORMAT_VERSION + 1, S.ATTR_WRITER_FORMAT: S.FORMAT_VERSION + 2})
    consolidate(path)
    with pytest.raises(NewerFormatError) as exc:
        open_scores(path)
    message = str(exc.value)
    assert "\n" not in message
    assert message.endswith(f"was written by scorebank format {S.FORMAT_VERSION + 2}; this version reads "
                            f"formats 1..{S.FORMAT_VERSION}; upgrade scorebank")


def test_merging_formats_gives_the_oldest_format_without_the_newer_variable(format2, tmp_path):
    new = _like_format1(tmp_path / "new.zarr")
    out = merge_stores([FORMAT1, new], tmp_path / "merged.zarr")
    ds = open_scores(out.path)
    assert TOY.name not in ds.variables
    assert (ds.attrs[S.ATTR_FORMAT], ds.attrs[S.ATTR_WRITER_FORMAT]) == (1, 1)
    assert ds.sizes[S.RUN] == 3


def test_a_feature_variable_missing_is_explained(tmp_path):
    from scorebank.stores.create import create_store

    path = tmp_path / "plain.zarr"
    create_store(path, n_epochs=1, labels=np.zeros(4, dtype=np.int64), true_labels=np.zeros(4, dtype=np.int64),
                 original_index=np.arange(4), seeds=(0,), features=frozenset(), attrs={})
    with pytest.raises(MissingVariableError, match="the store has no 'grand': it is recorded only in stores "
                                                   "made with the 'grand' feature"):
        require_variables(open_scores(path), [S.GRAND], "analyze noise grand@0")


def test_an_archive_manifest_names_the_written_and_the_reader_format(format2, tmp_path):
    from scorebank.stores.archive import ArchiveStore, export_archive

    path = _like_format1(tmp_path / "new.zarr")
    archive = export_archive(path, tmp_path / "new.scorebank.zip").path
    manifest = ArchiveStore(archive).manifest
    assert (manifest["store_format"], manifest["reader_format"]) == (NEW, S.READER_FORMAT)
    assert TOY.name in manifest["recorded"]["variables"]
