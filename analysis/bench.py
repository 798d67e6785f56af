"""Benchmark of the analysis stage on a synthetic store larger than a few chunks.

:func:`build_synthetic_store` writes a store of R runs x E epochs x N examples through the
real store layout (:func:`scorebank.stores.zarrstore.create_store`), one run and a few
epochs at a time, so it never holds more than one block of the store in memory.
:func:`run_benchmark` times forgetting, one Spearman matrix and one smallest-margin overlap
curve with the scheduler the caller passes (``scorebank analyze-bench``: Dask's threaded
scheduler, the analyses' default, unless ``--scheduler`` names another, e.g. ``local`` for a
LocalCluster), reporting seconds, peak memory and MB/s of score data read.  :func:`run_series` does that
at several example counts (``analyze-bench --examples 50000,320000,1281167``, ImageNet's
1,281,167 training images last), one store at a time, so that throughput and linear scaling
in N are read side by side (:class:`BenchSeries`).

The synthetic scores follow a simple model of training: each example has a difficulty
shared by all runs plus a run-specific offset; margins grow with the epoch towards a
positive value set by both, with noise that shrinks as training converges, so every run
separates the data part-way through; ``train_correct`` is the in-flight (noisier) version
of ``correct``, so forgetting events happen; EL2N and loss are the binary-logistic
functions of the margin; GraNd at initialisation follows the difficulty.  Values are
realistic in shape, not in detail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from scorebank.core.config import ScoreConfig
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError, StoreExistsError, StoreNotFoundError

#: Name of the synthetic store inside the benchmark directory.
BENCH_STORE = "bench.zarr"


def _epoch_blocks(n_epochs: int, n_examples: int, budget: int = 16 * 2**20) -> list[tuple[int, int]]:
    per = max(1, min(n_epochs, budget // max(1, 4 * n_examples)))
    return [(e, min(n_epochs, e + per)) for e in range(0, n_epochs, per)]


def binary_el2n(margin: np.ndarray) -> np.ndarray:
    """EL2N of a two-logit softmax with logit margin m: the error on the label is
    ``1 - sigmoid(m)`` on both entries, so ``sqrt(2) * sigmoid(-m)`` (float32).  Computed
    with ``scipy.special.expit``, which never overflows (``exp(m)`` does for m > 88 in
    float32, as margins of an ImageNet-sized synthetic store reach)."""
    from scipy.special import expit

    return (np.sqrt(2.0) * expit(-np.asarray(margin, dtype=np.float64))).astype(np.float32)


def build_synthetic_store(path: str | os.PathLike, *, runs: int = 10, epochs: int = 200,
                          examples: int = 50_000, classes: int = 10, grand: bool = True,
                          label_noise: float = 0.0, seed: int = 0) -> Path:
    """Write a complete synthetic store at ``path`` (which must not exist) and return it.

    ``epochs`` counts training epochs, so the store holds epochs 0..epochs.  Every epoch is
    completed and recorded; GraNd (when ``grand``) is recorded at epoch 0 only, like
    ``scorebank score --grand-only``.  ``label_noise`` corrupts that fraction of labels
    (and their examples learn as if their difficulty were high).  Memory: O(examples x a
    few epochs), never the whole store."""
    import zarr

    from scorebank.stores.zarrstore import consolidate, create_store

    path = Path(path)
    rng = np.random.default_rng(seed)
    n, e_total = int(examples), int(epochs) + 1
    true_labels = rng.integers(0, classes, n).astype(np.int64)
    labels = true_labels.copy()
    corrupted = np.zeros(n, dtype=bool)
    if label_noise > 0:
        k = int(round(label_noise * n))
        pick = rng.choice(n, k, replace=False)
        labels[pick] = (true_labels[pick] + rng.integers(1, classes, k)) % classes
        corrupted[pick] = True
    features = set()
    if grand:
        features.add(S.FEATURE_GRAND)
    if label_noise > 0:
        features.add(S.FEATURE_LABEL_NOISE)
    cfg = ScoreConfig(dataset="synthetic", epochs=int(epochs), record_epochs=tuple(range(e_total)),
                      grand_epochs=(0,) if grand else (), label_noise=float(label_noise))
    seeds = tuple(range(runs))
    create_store(path, n_epochs=int(epochs), labels=labels, true_labels=true_labels,
                 original_index=np.arange(n, dtype=np.int64), seeds=seeds, features=frozenset(features),
                 attrs={S.ATTR_CONFIG: cfg.to_json(), S.ATTR_DATASET: "synthetic",
                        S.ATTR_FINGERPRINT: f"synthetic-{seed}-{n}-{classes}-{label_noise}",
                        S.ATTR_CLASS_NAMES: [f"class{i}" for i in range(classes)]})
    root = zarr.open_group(path, mode="r+", zarr_format=3, use_consolidated=False)
    difficulty = rng.standard_normal(n).astype(np.float32)
    difficulty[corrupted] += 3.0
    tau = max(1.0, epochs / 8)
    per_epoch = {k: np.full((runs, e_total), np.nan) for k in
                 (S.TRAIN_ACCURACY, S.TRAIN_LOSS, S.TEST_ACCURACY, S.TEST_LOSS, S.NORM_PRODUCT)}
    for r in seeds:
        rr = np.random.default_rng([seed, r])
        offset = (0.5 * rr.standard_normal(n)).astype(np.float32)
        target = 0.5 + 6.0 * np.exp(-0.5 * (difficulty + offset))
        for e0, e1 in _epoch_blocks(e_total, n):
            ep = np.arange(e0, e1, dtype=np.float32)[:, None]
            progress = 1.0 - np.exp(-ep / tau)
            sigma = 0.4 * (1.0 - progress) + 0.03
            margin = (progress * target - 0.3 * (1.0 - progress)
                      + sigma * rr.standard_normal((e1 - e0, n), dtype=np.float32))
            inflight = margin + 0.6 * rr.standard_normal((e1 - e0, n), dtype=np.float32)
            train_correct = inflight > 0
            if e0 == 0:
                train_correct[0] = False  # no presentation before the first epoch
            loss = np.logaddexp(0.0, -margin).astype(np.float32)
            el2n = binary_el2n(margin)
            correct = margin > 0
            root[S.MARGIN][r, e0:e1, :] = margin
            root[S.EL2N][r, e0:e1, :] = el2n
            root[S.LOSS][r, e0:e1, :] = loss
            root[S.CORRECT][r, e0:e1, :] = correct
            root[S.TRAIN_CORRECT][r, e0:e1, :] = train_correct
            if grand and e0 == 0:
                noise = 0.5 * rr.standard_normal(n, dtype=np.float32)
                root[S.GRAND][r, 0, :] = np.logaddexp(0.0, difficulty + offset + noise).astype(np.float32)
            per_epoch[S.TRAIN_ACCURACY][r, e0:e1] = correct.mean(axis=1)
            per_epoch[S.TRAIN_LOSS][r, e0:e1] = loss.mean(axis=1)
            per_epoch[S.TEST_ACCURACY][r, e0:e1] = np.clip(correct.mean(axis=1) - 0.1, 0, 1)
            per_epoch[S.TEST_LOSS][r, e0:e1] = loss.mean(axis=1) + 0.2
            per_epoch[S.NORM_PRODUCT][r, e0:e1] = (1.0 + 0.05 * ep[:, 0]) * (1.0 + 0.1 * r)
    for name, values in per_epoch.items():
        root[name][:] = values.astype(root[name].dtype)
    root[S.COMPLETED][:] = np.ones((runs, e_total), dtype=bool)
    root[S.RECORDED][:] = np.ones((runs, e_total), dtype=bool)
    root.attrs[S.ATTR_RUNS] = {str(r): {"status": S.RUN_COMPLETE, "failed_epoch": None} for r in seeds}
    consolidate(path)
    return path


# ------------------------------------------------------------------------------ lifecycle
@dataclass(frozen=True)
class BenchStore:
    """The store a benchmark times: ``path``; ``build_seconds`` it took to build (None when
    an existing store is reused); ``built`` whether this benchmark built it."""

    path: Path
    build_seconds: float | None
    built: bool


def check_bench_size(*, runs: int, epochs: int, examples: int, classes: int) -> None:
    """InvalidArgumentError unless runs >= 2, classes >= 2, epochs >= 1 and examples >= 1."""
    for name, v, least in (("runs", runs, 2), ("epochs", epochs, 1), ("examples", examples, 1),
                           ("classes", classes, 2)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < least:
            raise InvalidArgumentError(
                f"--{name} {v!r} is too small (runs >= 2, classes >= 2, epochs >= 1, examples >= 1)")


@contextlib.contextmanager
def bench_store(directory: str | os.PathLike | None = None, *, runs: int = 10, epochs: int = 200,
                examples: int = 50_000, classes: int = 10, keep: bool = False,
                reuse: bool = False) -> Iterator[BenchStore]:
    """The synthetic store of ``scorebank analyze-bench``, for the duration of a ``with``.

    * ``directory=None``: built in a new temporary directory, removed on exit (``keep``
      does not apply: there is nowhere to keep it).
    * ``directory=D``: built at ``D/bench.zarr`` (D is created if needed), removed on exit
      unless ``keep``.  An existing ``D/bench.zarr`` is never touched: it is refused
      (:class:`StoreExistsError`) before anything is written.
    * ``reuse=True`` (needs ``directory``): the existing ``D/bench.zarr`` is timed as it
      is and never removed (:class:`StoreNotFoundError` if absent).

    Only a store this call built is ever removed, also when building or the body fails."""
    check_bench_size(runs=runs, epochs=epochs, examples=examples, classes=classes)
    if reuse and directory is None:
        raise InvalidArgumentError("--reuse needs --dir (where bench.zarr was kept)")
    if directory is not None and Path(directory).exists() and not Path(directory).is_dir():
        raise InvalidArgumentError(f"--dir {os.fspath(directory)!r} is not a directory")
    if reuse:
        path = Path(directory) / BENCH_STORE
        if not path.exists():
            raise StoreNotFoundError(
                f"no benchmark store at {str(path)!r} to reuse; run without --reuse (and with --keep) "
                "to build one")
        yield BenchStore(path, None, False)
        return
    if directory is not None:
        path = Path(directory) / BENCH_STORE
        if path.exists() or path.is_symlink():
            raise StoreExistsError(f"{str(path)!r} exists; remove it or pass --reuse")
        Path(directory).mkdir(parents=True, exist_ok=True)
        ours = path
    else:
        ours = Path(tempfile.mkdtemp(prefix="scorebank-bench-"))
        path = ours / BENCH_STORE
    try:
        t0 = time.perf_counter()
        build_synthetic_store(path, runs=runs, epochs=epochs, examples=examples, classes=classes)
        build_seconds = time.perf_counter() - t0
    except StoreExistsError:  # someone else made it meanwhile: theirs, not ours to remove
        if directory is None:
            shutil.rmtree(ours, ignore_errors=True)
        raise
    except BaseException:  # a half-built store is removed even with keep
        shutil.rmtree(ours, ignore_errors=True)
        raise
    try:
        yield BenchStore(path, build_seconds, True)
    finally:
        if directory is None or not keep:
            shutil.rmtree(ours, ignore_errors=True)


# ------------------------------------------------------------------------------ timing
class Monitor:
    """Samples the resident memory of this process and its children (the worker processes
    of a LocalCluster) every ``interval`` seconds in a thread: ``peak`` is the largest sum
    seen.  ``cpu_seconds`` is the user + system CPU time they used meanwhile (children
    that exit in between are not counted).  The list of children (costly to read from
    /proc) is refreshed once a second, so sampling costs well under 1% of a core."""

    def __init__(self, interval: float = 0.02, refresh: float = 1.0):
        import psutil

        self._proc = psutil.Process()
        self.interval, self.refresh = interval, refresh
        self.peak = 0
        self.cpu_seconds = 0.0
        self._cpu0 = 0.0
        self._procs = [self._proc]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _refresh(self) -> None:
        import psutil

        try:
            self._procs = [self._proc, *self._proc.children(recursive=True)]
        except psutil.Error:
            self._procs = [self._proc]

    def _sum(self, fn) -> float:
        import psutil

        total = 0
        for p in self._procs:
            try:
                total += fn(p)
            except psutil.Error:
                pass
        return total

    def _rss(self) -> int:
        return int(self._sum(lambda p: p.memory_info().rss))

    def _cpu(self) -> float:
        return float(self._sum(lambda p: sum(p.cpu_times()[:2])))

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - last > self.refresh:
                self._refresh()
                last = time.monotonic()
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> "Monitor":
        self._refresh()
        self.peak = self._rss()
        self._cpu0 = self._cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._refresh()
        self.peak = max(self.peak, self._rss())
        self.cpu_seconds = self._cpu() - self._cpu0


@dataclass(frozen=True)
class Timing:
    """One timed analysis: wall seconds, bytes of score data it reads, peak resident
    memory (this process and its children) and the CPU seconds they used."""

    name: str
    seconds: float
    bytes_read: int
    peak_memory_bytes: int
    cpu_seconds: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_read / 1e6 / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class BenchResult:
    runs: int
    epochs: int
    examples: int
    store_bytes_on_disk: int
    build_seconds: float | None
    timings: tuple[Timing, ...] = field(default_factory=tuple)
    cpu_count: int = 0
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)  # of the machine, at the start

    @property
    def total_seconds(self) -> float:
        return sum(t.seconds for t in self.timings)

    @property
    def total_bytes(self) -> int:
        return sum(t.bytes_read for t in self.timings)

    @property
    def peak_memory_bytes(self) -> int:
        return max((t.peak_memory_bytes for t in self.timings), default=0)

    @property
    def mb_per_s(self) -> float:
        return self.total_bytes / 1e6 / self.total_seconds if self.total_seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["timings"] = [dict(asdict(t), mb_per_s=t.mb_per_s) for t in self.timings]
        out.update(total_seconds=self.total_seconds, total_bytes=self.total_bytes,
                   peak_memory_bytes=self.peak_memory_bytes, mb_per_s=self.mb_per_s)
        return out


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_benchmark(path: str | os.PathLike, *, scheduler=None, spearman_specs: tuple[str, ...] | None = None,
                  overlap_k: tuple[int, ...] = (20, 100, 200), build_seconds: float | None = None
                  ) -> BenchResult:
    """Time three analyses on the store at ``path`` with ``scheduler`` (never creates one):

    * forgetting over all epochs (reads ``train_correct`` at epochs 1..E: R x E x N bytes),
    * one Spearman matrix of ``spearman_specs`` (default ``el2n@E/10``, ``loss@E/10``,
      ``margin@E``, ``nmargin@E``, ``grand@0`` if present, ``forgetting@E``),
    * one overlap curve of the ``overlap_k`` smallest normalised margins between runs at
      every epoch (reads ``margin`` at every recorded epoch: R x (E + 1) x N x 4 bytes);
      sizes larger than N are left out (N itself when none is left), so a store of a few
      examples is timed too.

    MB/s is the decoded bytes of score data an analysis needs over its wall seconds: every
    (variable, run, epoch) slab of N values it reads, at the variable's itemsize (1 byte
    for booleans), counted once even where two scores read the same slab (``margin@E``
    and ``nmargin@E``, read once); per-epoch values (rho, completion) are not counted.

    Peak memory is the resident memory of this process plus its child processes (so it
    includes the interpreter and libraries, about 0.3 GB, not only the analysis)."""
    from scorebank.analysis import access
    from scorebank.analysis.correlation import spearman_matrix
    from scorebank.analysis.forgetting import forgetting
    from scorebank.analysis.overlap import pairwise_overlap
    from scorebank.analysis.scores import parse_score

    path = Path(path)
    ds = access.open_store(path)
    r, e_total, n = (int(ds.sizes[d]) for d in (S.RUN, S.EPOCH, S.EXAMPLE))
    last = int(access.epochs(ds)[-1])

    def slab_bytes(name: str, n_epochs: int) -> int:
        """Decoded bytes of ``n_epochs`` epochs of variable ``name`` in every run (its
        values without an epoch or run dimension once)."""
        dims = S.BY_NAME[name].dims
        return ((r if S.RUN in dims else 1) * (n_epochs if S.EPOCH in dims else 1) * n
                * np.dtype(S.BY_NAME[name].dtype).itemsize)

    if spearman_specs is None:
        early = max(0, last // 10)
        specs = [f"el2n@{early}", f"loss@{early}", f"margin@{last}", f"nmargin@{last}"]
        if S.GRAND in ds:
            specs.append("grand@0")
        specs.append(f"forgetting@{last}" if last >= 1 else "forgetting")
        spearman_specs = tuple(specs)

    def spearman_bytes(specs: tuple[str, ...]) -> int:
        """Bytes of the per-example variables the registry says ``specs`` read, each
        (variable, epoch) counted once however many scores read it (``margin@E`` and
        ``nmargin@E`` read one slab): one epoch for a score at one epoch, epochs 1..E (or
        all) for the others."""
        reads: dict[str, set[int]] = {}
        for spec in specs:
            s = parse_score(spec)
            epochs = {s.epoch} if s.kind.at_epoch else set(range(1, (s.epoch if s.epoch is not None else last) + 1))
            for v in s.kind.variables:
                if S.EXAMPLE in S.BY_NAME[v].dims:
                    reads.setdefault(v, set()).update(epochs)
        return sum(slab_bytes(v, len(eps)) for v, eps in reads.items())

    timings = []
    load = tuple(round(x, 2) for x in os.getloadavg())

    def timed(name: str, nbytes: int, fn) -> None:
        with Monitor() as mon:
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
        timings.append(Timing(name, dt, nbytes, mon.peak, mon.cpu_seconds))

    timed("forgetting", slab_bytes(S.TRAIN_CORRECT, last),
          lambda: forgetting(ds, scheduler=scheduler))
    timed("spearman matrix (" + ", ".join(spearman_specs) + ")", spearman_bytes(spearman_specs),
          lambda: spearman_matrix(ds, list(spearman_specs), scheduler=scheduler))
    overlap_k = tuple(k for k in overlap_k if k <= n) or (n,)
    margin_epochs = access.margin_epochs(ds, access.completed_runs(ds))[0]
    timed(f"overlap curve (k={','.join(map(str, overlap_k))})", slab_bytes(S.MARGIN, margin_epochs.size),
          lambda: pairwise_overlap(ds, k=overlap_k, scheduler=scheduler))
    return BenchResult(runs=r, epochs=e_total - 1, examples=n, store_bytes_on_disk=_disk_bytes(path),
                       build_seconds=build_seconds, timings=tuple(timings), cpu_count=os.cpu_count() or 0,
                       load_average=load)


# ------------------------------------------------------------------------------ several sizes
def parse_sizes(text: str) -> tuple[int, ...]:
    """``"50000,320000,1281167"`` -> ``(50000, 320000, 1281167)`` (the ``--examples``
    option): positive integers (``_`` separators allowed), sorted, each once."""
    sizes = []
    for part in str(text).split(","):
        try:
            value = int(part.strip())
        except ValueError:
            value = 0
        if value < 1:
            raise InvalidArgumentError(
                f"--examples {text!r} is not a list of example counts; give positive integers, "
                "comma-separated, e.g. 50000,320000,1281167")
        sizes.append(value)
    return tuple(sorted(set(sizes)))


def series_directory(directory: str | os.PathLike | None, examples: int, several: bool) -> Path | None:
    """Where the store of ``examples`` examples is built (or reused): ``directory`` itself
    for a single size, ``directory/<examples>`` when several sizes are timed (None: a
    temporary directory)."""
    if directory is None:
        return None
    return Path(directory) / str(int(examples)) if several else Path(directory)


@dataclass(frozen=True)
class BenchSeries:
    """:func:`run_benchmark` at several example counts (ascending), same runs and epochs."""

    results: tuple[BenchResult, ...]

    def scaling(self, i: int, j: int) -> float:
        """Linearity of analysis ``j`` at size ``i``: its seconds over the smallest size's,
        divided by the ratio of example counts (1.0: linear; above 1: worse than linear)."""
        first, this = self.results[0], self.results[i]
        t0, t = first.timings[j].seconds, this.timings[j].seconds
        if t0 <= 0:
            return float("nan")
        return (t / t0) / (this.examples / first.examples)

    def to_dict(self) -> dict:
        """``examples`` (the sizes), ``results`` (each :meth:`BenchResult.to_dict`, its
        timings with ``scaling``: :meth:`scaling`)."""
        out = []
        for i, res in enumerate(self.results):
            doc = res.to_dict()
            for j, t in enumerate(doc["timings"]):
                t["scaling"] = self.scaling(i, j)
            out.append(doc)
        return {"examples": [r.examples for r in self.results], "results": out}


def run_series(directory: str | os.PathLike | None = None, *, runs: int = 10, epochs: int = 200,
               examples: tuple[int, ...] = (50_000,), classes: int = 10, keep: bool = False,
               reuse: bool = False, scheduler=None, warm_up: bool = True,
               progress: Callable[[str], None] | None = None) -> BenchSeries:
    """:func:`run_benchmark` on a synthetic store of each size in ``examples``, one after
    another: each store is built (or reused) by :func:`bench_store` in
    :func:`series_directory`, timed, and removed (unless ``keep``) before the next is built,
    so the disk holds one store at a time.  Every size's directory is checked before
    anything is built (a missing store to reuse, an existing one not to overwrite).  With
    ``warm_up`` and several sizes, the smallest store is timed twice and the first pass
    discarded (imports, the first tasks of a new cluster), so that the scaling it anchors
    compares work, not start-up.  ``progress`` is told what is being done."""
    sizes = tuple(sorted(set(int(n) for n in examples)))
    if not sizes:
        raise InvalidArgumentError("no --examples given; e.g. 50000,320000,1281167")
    for n in sizes:
        check_bench_size(runs=runs, epochs=epochs, examples=n, classes=classes)
    several = len(sizes) > 1
    if directory is not None and several:
        paths = [series_directory(directory, n, True) / BENCH_STORE for n in sizes]
        missing = [str(p) for p in paths if not p.exists()] if reuse else []
        if missing:
            raise StoreNotFoundError(f"no benchmark store at {missing!r} to reuse; run without --reuse "
                                     "(and with --keep) to build them")
        present = [str(p) for p in paths if p.exists() or p.is_symlink()] if not reuse else []
        if present:
            raise StoreExistsError(f"{present!r} exist; remove them or pass --reuse")
    results = []
    for n in sizes:
        if progress is not None:
            progress(f"{'timing' if reuse else 'building'} {runs} runs x {epochs} epochs x {n} examples")
        with bench_store(series_directory(directory, n, several), runs=runs, epochs=epochs, examples=n,
                         classes=classes, keep=keep, reuse=reuse) as bench:
            if progress is not None:
                progress(f"timing {n} examples")
            if warm_up and several and not results:
                run_benchmark(bench.path, scheduler=scheduler)
            results.append(run_benchmark(bench.path, scheduler=scheduler, build_seconds=bench.build_seconds))
    return BenchSeries(tuple(results))
