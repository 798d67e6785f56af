"""Merging score stores and archives of the same examples into one store.

``merge_stores([A, B, ...], OUT)`` concatenates the runs of every source along ``run``
into a new writable-layout store ``OUT`` (a directory; archives and URLs are accepted as
sources, see :mod:`scorebank.stores.location`).

Refused, with nothing written (:class:`MergeError`), when the sources differ in data set
fingerprint, number of examples, ``original_index``, ``label``, ``true_label``,
``corrupted`` or class names.  Different configurations (architecture, optimizer, epochs,
recorded epochs, GraNd) are fine: that is the point.  Sources of different store formats
merge into a store of the oldest of them (:func:`scorebank.stores.schema.store_format`):
variables a source's format predates are left out, never filled in.

Epochs
    The merged ``epoch`` coordinate is the union of the sources' epochs.  Where a source
    has no record (it trained fewer epochs), float variables are NaN and ``recorded`` /
    ``completed`` / boolean scores are False, exactly like an unrecorded epoch of a
    single store, so analyses that honour ``recorded``/``completed`` need nothing special.

Runs, seeds and provenance
    ``run`` stays unique (xarray selection, the ``runs`` attribute and ``scorebank info``
    need that) and equals the seed whenever the seed is not already taken by an earlier
    run of the merge.  A later run with an already-used seed (the same seed trained with
    another configuration, or a duplicate kept with ``allow_duplicates``) gets the next
    free id above the largest seed.  Four coordinates on ``run`` record where every run
    came from:

    ``seed`` (int64)            the training seed (== ``run`` unless renumbered);
    ``source`` (string)         the source's name (archive file or store directory name,
                                made unique with ``#2``, ``#3``, ... when names repeat);
    ``source_creator`` (string) the creator recorded in the source archive ('' if none);
    ``config_hash`` (string)    the run's :meth:`ScoreConfig.identity_hash`.

    A run is a *duplicate* of an earlier one when both seed and configuration hash are
    equal (e.g. the same archive merged twice); duplicates are refused
    (:class:`DuplicateRunsError`) unless ``allow_duplicates``.

Attributes of the merged store
    Every attribute the schema requires, with ``config`` = the first source's ``config``
    verbatim (so tools reading one configuration see a valid one) and ``sources`` = a list,
    one entry per source name, of ``{"name", "location", "creator", "license",
    "config_hash", "config", "dataset_fingerprint", "scorebank_version", "created",
    "runs"}`` (``config`` is that source's configuration JSON, ``runs`` the merged run ids
    it contributed).  ``runs`` maps each run id to its source status plus ``seed`` and
    ``source``.  Merging merged stores carries their per-run provenance over.

A merged store is for analysis: do not extend it with ``scorebank score`` (score into a
separate store and merge again); ``groups`` such as manifests/retrain/compress and
checkpoints are not carried over.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from scorebank.stores import schema as S
from scorebank.stores.arrays import create_array
from scorebank.stores.archive import BLOCK_BYTES, Progress, config_hash
from scorebank.stores.errors import InvalidArgumentError, ScorebankError, StoreExistsError
from scorebank.stores.location import reading
from scorebank.stores.partial import clean_stale, partial_path
from scorebank.stores.remote import require_local_output
# ATTR_SOURCES is re-exported: callers import it from here (pipeline/scoring.py)
from scorebank.stores.schema import ATTR_SOURCES, CONFIG_HASH, RUN_COORDS, SEED, SOURCE, SOURCE_CREATOR  # noqa: F401


class MergeError(ScorebankError, ValueError):
    """The sources cannot be merged (different examples, labels, ...)."""


class DuplicateRunsError(MergeError):
    """The same run (seed + configuration hash) appears twice."""


@dataclass
class _Run:
    source: "_Source"
    position: int  # index along the source's run dimension
    seed: int
    config_hash: str
    provenance: dict  # the entry of the merged store's `sources` list this run belongs to
    status: dict


@dataclass
class _Source:
    shown: str
    group: zarr.Group
    attrs: dict
    epochs: np.ndarray
    runs: list[_Run] = field(default_factory=list)

    def read(self, name: str, sel=slice(None)) -> np.ndarray:
        """``group[name][sel]``; undecodable chunks raise a scorebank error naming the array."""
        return _read(self.group, self.shown, name, sel)


def _read(group, shown: str, name: str, sel=slice(None)) -> np.ndarray:
    with reading(shown, name):
        return np.asarray(group[name][sel])


@dataclass(frozen=True)
class MergeResult:
    path: Path
    runs: tuple[dict, ...]  # {"run", "seed", "source", "config_hash"} in merged order
    sources: tuple[str, ...]
    epochs: tuple[int, ...]


def _strings(group, shown: str, name: str, n: int) -> list[str] | None:
    if name not in group:
        return None
    values = _read(group, shown, name).tolist()
    if len(values) != n:
        raise MergeError(f"coordinate {name!r} has {len(values)} values for {n} runs")
    return [str(v) for v in values]


def _load_source(location, storage_options, names: dict[str, int]) -> _Source:
    from scorebank.stores.location import open_group

    group, where = open_group(location, storage_options=storage_options, complete=True)
    attrs = dict(group.attrs)
    run_values = _read(group, where.shown, S.RUN).astype(np.int64).tolist()
    n = len(run_values)
    src = _Source(where.shown, group, attrs, _read(group, where.shown, S.EPOCH).astype(np.int64))
    runs_attr = attrs.get(S.ATTR_RUNS) or {}
    manifest = where.archive.manifest if where.archive is not None else {}

    def unique(name: str) -> str:
        names[name] = names.get(name, 0) + 1
        return name if names[name] == 1 else f"{name}#{names[name]}"

    inner_sources = attrs.get(ATTR_SOURCES)
    seeds = src.read(SEED).astype(np.int64).tolist() if SEED in group else run_values
    inner_names = _strings(group, where.shown, SOURCE, n)
    if isinstance(inner_sources, list) and inner_names is not None:
        # A merged store: keep each run's original provenance.
        hashes = _strings(group, where.shown, CONFIG_HASH, n) or [config_hash(attrs.get(S.ATTR_CONFIG))] * n
        by_name = {e.get("name"): e for e in inner_sources if isinstance(e, dict)}
        renamed: dict[str, dict] = {}
        for i, run in enumerate(run_values):
            old = inner_names[i]
            if old not in renamed:
                entry = dict(by_name.get(old) or {"name": old, "creator": None, "config_hash": hashes[i]})
                entry["name"] = unique(str(old))
                entry["runs"] = []
                renamed[old] = entry
            status = dict(runs_attr.get(str(run)) or {"status": S.RUN_PENDING})
            status.pop(SEED, None)
            status.pop(SOURCE, None)
            src.runs.append(_Run(src, i, int(seeds[i]), hashes[i], renamed[old], status))
        return src
    text = attrs.get(S.ATTR_CONFIG)
    chash = config_hash(text)
    entry = {"name": unique(where.name or where.shown), "location": where.shown,
             "creator": manifest.get("creator"), "license": manifest.get("license"),
             "config_hash": chash, "config": text,
             "dataset_fingerprint": attrs.get(S.ATTR_FINGERPRINT),
             "scorebank_version": attrs.get(S.ATTR_VERSION), "created": attrs.get(S.ATTR_CREATED), "runs": []}
    for i, run in enumerate(run_values):
        status = dict(runs_attr.get(str(run)) or {"status": S.RUN_PENDING})
        src.runs.append(_Run(src, i, int(seeds[i]), chash, entry, status))
    return src


def _check_compatible(first: _Source, other: _Source) -> None:
    def refuse(what: str, a, b, hint: str) -> None:
        raise MergeError(f"cannot merge {other.shown!r} with {first.shown!r}: {what} differ "
                         f"({a!r} vs {b!r}); {hint}")

    same_data = "only stores of the same examples (same data set, --limit and label noise) can be merged"
    attr = S.ATTR_FINGERPRINT
    a, b = first.attrs.get(attr), other.attrs.get(attr)
    if a is None or b is None:
        missing = first if a is None else other
        raise MergeError(f"cannot merge: {missing.shown!r} has no {attr!r} attribute; "
                         "only scorebank stores that record it can be merged")
    if a != b:
        refuse(f"{attr!r} attributes", a, b, same_data)
    na, nb = first.group[S.EXAMPLE].shape[0], other.group[S.EXAMPLE].shape[0]
    if na != nb:
        refuse("example counts", na, nb, same_data)
    for name in (S.ORIGINAL_INDEX, S.LABEL, S.TRUE_LABEL, S.CORRUPTED):
        if (name in first.group) != (name in other.group):
            refuse(f"{name!r} arrays (present)", name in first.group, name in other.group, same_data)
        if name not in first.group:
            continue
        a, b = first.read(name), other.read(name)
        diff = np.flatnonzero(a != b)
        if diff.size:
            i = int(diff[0])
            raise MergeError(
                f"cannot merge {other.shown!r} with {first.shown!r}: {name!r} differs at {diff.size} "
                f"example(s), first at example {i} ({a[i].item()!r} vs {b[i].item()!r}); {same_data}")
    a, b = first.attrs.get(S.ATTR_CLASS_NAMES), other.attrs.get(S.ATTR_CLASS_NAMES)
    if a != b:
        refuse("class names", a, b, same_data)


def merge_stores(sources: Sequence[str | os.PathLike], out: str | os.PathLike, *, allow_duplicates: bool = False,
                 progress: Progress | None = None, storage_options: dict | None = None) -> MergeResult:
    """Merge ``sources`` (two or more store locations) into a new store directory ``out``
    (module docstring).  Everything is checked before anything is written; the store is
    written to a temporary sibling and renamed onto ``out``."""
    from scorebank.stores.zarrstore import consolidate, now_iso, scorebank_version

    if len(sources) < 2:
        raise InvalidArgumentError(f"merge needs at least two stores, got {[os.fspath(s) for s in sources]!r}")
    out_path = Path(require_local_output(out, "--out"))
    if out_path.exists() or out_path.is_symlink():
        raise StoreExistsError(f"{str(out)!r} already exists; choose a new --out path")
    if not out_path.parent.is_dir():
        raise InvalidArgumentError(f"folder {str(out_path.parent)!r} of --out does not exist")
    names: dict[str, int] = {}
    loaded = [_load_source(s, storage_options, names) for s in sources]
    first = loaded[0]
    for other in loaded[1:]:
        _check_compatible(first, other)

    runs = [r for s in loaded for r in s.runs]
    seen: dict[tuple[int, str], _Run] = {}
    for r in runs:
        key = (r.seed, r.config_hash)
        if key in seen and not allow_duplicates:
            prev = seen[key]
            raise DuplicateRunsError(
                f"seed {r.seed} with configuration {r.config_hash!r} is in both {prev.source.shown!r} and "
                f"{r.source.shown!r}: the same seed and configuration train the same run, so these are "
                f"copies (both stores scored with the default --seeds 0-2?); score one store with other "
                f"seeds (e.g. 'scorebank score ... --seeds 3-5') before merging, or pass "
                f"--allow-duplicates to keep both copies")
        seen.setdefault(key, r)
    next_id = max(r.seed for r in runs) + 1 if runs else 0
    used: set[int] = set()
    ids = []
    for r in runs:
        if r.seed in used:
            rid, next_id = next_id, next_id + 1
        else:
            rid = r.seed
        used.add(rid)
        ids.append(rid)
        r.provenance["runs"].append(rid)

    epochs = np.unique(np.concatenate([s.epochs for s in loaded])).astype(np.int64)
    features = sorted({f for s in loaded for f in (s.attrs.get(S.ATTR_FEATURES) or [])})
    fmt = min([S.FORMAT_VERSION] + [S.store_format(s.attrs) for s in loaded])  # the oldest source's
    n = int(first.group[S.EXAMPLE].shape[0])
    entries: list[dict] = []
    for r in runs:
        if not any(e is r.provenance for e in entries):
            entries.append(r.provenance)

    clean_stale(out_path)
    tmp = partial_path(out_path)
    try:
        _write(tmp, loaded, runs, ids, epochs, features, n, progress, fmt)
        root = zarr.open_group(tmp, mode="r+", zarr_format=3, use_consolidated=False)
        root.attrs.update({
            **S.format_attrs(),
            S.ATTR_WRITER_FORMAT: fmt,
            S.ATTR_VERSION: scorebank_version(),
            S.ATTR_CREATED: now_iso(),
            S.ATTR_RUNS: {str(rid): {**r.status, SEED: r.seed, SOURCE: r.provenance["name"]}
                          for rid, r in zip(ids, runs)},
            S.ATTR_FEATURES: features,
            S.ATTR_CONFIG: first.attrs.get(S.ATTR_CONFIG),
            S.ATTR_DATASET: first.attrs.get(S.ATTR_DATASET),
            S.ATTR_FINGERPRINT: first.attrs.get(S.ATTR_FINGERPRINT),
            S.ATTR_CLASS_NAMES: first.attrs.get(S.ATTR_CLASS_NAMES),
            ATTR_SOURCES: entries,
        })
        consolidate(tmp)
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return MergeResult(out_path,
                       tuple({"run": rid, "seed": r.seed, "source": r.provenance["name"],
                              "config_hash": r.config_hash} for rid, r in zip(ids, runs)),
                       tuple(e["name"] for e in entries), tuple(int(e) for e in epochs))


def _write(path: Path, loaded: list[_Source], runs: list[_Run], ids: list[int], epochs: np.ndarray,
           features: list[str], n: int, progress: Progress | None, fmt: int) -> None:
    first = loaded[0]
    root = zarr.open_group(path, mode="w", zarr_format=3)
    n_runs, n_epochs = len(runs), len(epochs)
    shapes = {S.RUN: n_runs, S.EPOCH: n_epochs, S.EXAMPLE: n}

    def coord(name, values, dim, dtype, fill, attributes=None):
        values = np.asarray(values, dtype=dtype)
        create_array(root, name, dims=(dim,), data=values, dtype=dtype,
                     chunks=(max(1, min(len(values), S.PER_EXAMPLE_CHUNK)),), fill_value=fill,
                     attributes=attributes)

    coord(S.RUN, ids, S.RUN, "int64", 0)
    coord(S.EPOCH, epochs, S.EPOCH, "int64", 0)
    coord(S.EXAMPLE, first.read(S.EXAMPLE), S.EXAMPLE, "int64", 0)
    coord(S.ORIGINAL_INDEX, first.read(S.ORIGINAL_INDEX), S.EXAMPLE, "int64", 0,
          dict(first.group[S.ORIGINAL_INDEX].attrs))
    coord(SEED, [r.seed for r in runs], S.RUN, "int64", 0, {"description": "training seed of the run"})
    coord(SOURCE, [r.provenance["name"] for r in runs], S.RUN, str, "",
          {"description": "name of the store or archive the run came from (see the 'sources' attribute)"})
    coord(SOURCE_CREATOR, [r.provenance.get("creator") or "" for r in runs], S.RUN, str, "",
          {"description": "creator recorded in the source archive ('' if none)"})
    coord(CONFIG_HASH, [r.config_hash for r in runs], S.RUN, str, "",
          {"description": "identity hash of the run's configuration (ScoreConfig.identity_hash)"})

    run_rows: dict[int, list[tuple[int, _Run]]] = {}
    for row, r in enumerate(runs):
        run_rows.setdefault(id(r.source), []).append((row, r))
    epoch_pos = {id(s): np.searchsorted(epochs, s.epochs) for s in loaded}

    arrays = {}
    for var in S.variables(frozenset(features), fmt):
        attributes = dict(var.attrs)
        linked = [S.ORIGINAL_INDEX] if S.EXAMPLE in var.dims else []
        if S.RUN in var.dims:
            linked += list(RUN_COORDS)
        if linked:
            attributes["coordinates"] = " ".join(linked)
        arrays[var.name] = create_array(
            root, var.name, dims=var.dims, shape=tuple(shapes[d] for d in var.dims), dtype=var.dtype,
            chunks=S.chunks_for(var, n_epochs, n), fill_value=var.fill_value, attributes=attributes)

    # per-example arrays of the data set: from the first source (checked equal)
    for var in S.variables(frozenset(features), fmt):
        if var.dims == (S.EXAMPLE,) and var.name in first.group:
            arrays[var.name][:] = first.read(var.name)

    # per-(run, epoch) arrays: assembled in memory (runs x epochs values)
    for var in S.variables(frozenset(features), fmt):
        if var.dims != (S.RUN, S.EPOCH):
            continue
        full = np.full((n_runs, n_epochs), var.fill_value, dtype=var.dtype)
        for s in loaded:
            if var.name not in s.group:
                continue
            values = s.read(var.name)
            for row, r in run_rows[id(s)]:
                full[row, epoch_pos[id(s)]] = values[r.position]
        arrays[var.name][:] = full

    # per-example scores: block by block, each destination chunk written once
    width = max(1, min(n, S.PER_EXAMPLE_CHUNK))
    jobs = []
    for var in S.variables(frozenset(features), fmt):
        if var.dims != (S.RUN, S.EPOCH, S.EXAMPLE):
            continue
        itemsize = np.dtype(var.dtype).itemsize
        for s in loaded:
            if var.name not in s.group:
                continue
            e_s = len(s.epochs)
            step = max(1, min(e_s, BLOCK_BYTES // (width * itemsize)))
            for row, r in run_rows[id(s)]:
                for e0 in range(0, e_s, step):
                    for x0 in range(0, n, width):
                        jobs.append((var.name, s, row, r.position, e0, min(e0 + step, e_s), x0, min(x0 + width, n)))
    for done, (name, s, row, pos, e0, e1, x0, x1) in enumerate(jobs, 1):
        values = s.read(name, (pos, slice(e0, e1), slice(x0, x1)))
        target = epoch_pos[id(s)][e0:e1]
        if target.size and np.all(np.diff(target) == 1):
            arrays[name][row, int(target[0]):int(target[-1]) + 1, x0:x1] = values
        else:
            arrays[name].oindex[row, target, x0:x1] = values
        if progress:
            progress("merging", done, len(jobs))
