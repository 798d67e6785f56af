"""The report: one static HTML page (and its PNG figures, side by side in one directory, no
network needed to view it) of one or more score stores and, for an experiment, its
results next to the published numbers.

Per store, each section appears only when the store has what it needs:

* training curves -- train, test and, with label noise, pristine and corrupt accuracy
  (Coherent Gradients Fig. 3; :func:`scorebank.analysis.plots.plot_training_curves`);
* margin distributions over epochs (margins paper Figs. 2-3; ``plot_margin_distribution``);
* forgetting histogram: examples by forgetting events averaged over runs (Toneva et al.);
* Spearman heat map of averaged scores (Data Diet Fig. 12; ``plot_spearman``);
* smallest-margin set overlap against the epoch (margins paper Figs. 6, 8, 9; ``plot_overlaps``);
* pruning curves with 16-84 percentile bands and the sliding-window curve (Data Diet Figs.
  1-2), from the store's retrain groups;
* noise-detection ROC curves (Data Diet Sec. 4);
* image grids of the lowest and highest scoring examples of every class.

This module reads stores only (analysis layer): what needs the pipeline -- the retrain
groups' summaries and the store's images -- comes in :class:`StoreInputs`
(:func:`scorebank.pipeline.experiment.report_inputs` builds it).  Every text taken from a
store or a results document is HTML-escaped.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scorebank.analysis import access, plots
from scorebank.core.errors import ScorebankError
from scorebank.stores import schema as S


@dataclass(frozen=True)
class RetrainCurveRow:
    """One retrain group: its selection and the final test accuracy of each completed seed."""

    group: str
    strategy: str
    score: str | None
    fraction_kept: float
    offset: float | None
    accuracies: tuple[float, ...]
    full_data_accuracy: float


@dataclass(frozen=True)
class StoreInputs:
    """A store and what the pipeline knows about it: retrain rows and a loader returning the
    training images in store order, uint8 (N, C, H, W) (None: no image grids)."""

    path: str
    retrain_rows: tuple[RetrainCurveRow, ...] = ()
    images: Callable[[], np.ndarray] | None = None


@dataclass
class _Section:
    title: str
    figure: str | None = None  # file name of the PNG
    caption: str = ""
    table: tuple[Sequence[str], Sequence[Sequence[str]]] | None = None  # (header, rows), texts unescaped


e = html.escape


# ----------------------------------------------------------------------------- helpers
def recorded_epochs(ds, seeds: Sequence[int]) -> np.ndarray:
    """Epochs whose clean pass every run in ``seeds`` recorded."""
    rec = access.recorded_mask(ds, seeds)
    return access.epochs(ds)[rec.all(axis=0)]


def early_epoch(epochs: np.ndarray) -> int:
    """The recorded epoch nearest to 10% of training (Data Diet's EL2N@20 of 200 epochs),
    at least 1 when one is recorded."""
    last = int(epochs.max())
    target = max(1, round(last / 10))
    candidates = epochs[epochs >= 1] if (epochs >= 1).any() else epochs
    return int(candidates[np.argmin(np.abs(candidates - target))])


def band(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, 16th, 84th percentile) of ``values``; NaN for none (Data Diet's bands)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    p16, p84 = np.percentile(v, [16, 84])
    return float(v.mean()), float(p16), float(p84)


def roc_curve(hardness: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) flagging examples in decreasing
    ``hardness``; ties enter together (the curve's segments are those of the ROC AUC)."""
    order = np.argsort(-hardness, kind="stable")
    h, pos = hardness[order], positive[order].astype(np.float64)
    last_of_tie = np.r_[np.flatnonzero(np.diff(h) != 0), h.size - 1]
    tp, fp = np.cumsum(pos)[last_of_tie], np.cumsum(1 - pos)[last_of_tie]
    n_pos, n_neg = max(pos.sum(), 1), max((1 - pos).sum(), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def extreme_examples(scores: np.ndarray, labels: np.ndarray, per_class: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per class: (indices of its ``per_class`` lowest scores ascending, of its highest
    descending); ties broken by example index."""
    out = {}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        order = idx[np.lexsort((idx, scores[idx]))]  # ascending score, then index
        k = min(per_class, idx.size)
        high = idx[np.lexsort((idx, -scores[idx]))][:k]
        out[int(c)] = (order[:k], high)
    return out


def _figure(ncols: int = 1, width: float = 6.0, height: float = 4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


# ----------------------------------------------------------------------------- figures drawn here
def plot_forgetting_histogram(events: np.ndarray, never: np.ndarray, path: str | os.PathLike) -> Path:
    """Histogram of forgetting events per example averaged over runs (``events`` (run,
    example)); examples never learned in every run are a separate bar at the right."""
    fig, (ax,) = _figure(height=3.6)
    mean = events.mean(axis=0)
    always_never = never.all(axis=0)
    learned = mean[~always_never]
    top = max(1.0, float(learned.max()) if learned.size else 1.0)
    bins = np.arange(0, math.ceil(top) + 2) - 0.5 if top <= 30 else 30
    ax.hist(learned, bins=bins, color="tab:blue", label="learned in some run")
    if always_never.any():
        ax.bar([math.ceil(top) + 1.5], [int(always_never.sum())], color="tab:red", width=0.8,
               label="never learned")
    ax.set(xlabel="forgetting events (mean over runs)", ylabel="examples", yscale="log",
           title=f"forgetting events, {events.shape[0]} runs")
    ax.legend()
    return _save(fig, Path(path))


def plot_pruning_curves(rows: Sequence[RetrainCurveRow], path: str | os.PathLike, *, window: bool = False) -> Path:
    """Final test accuracy against the fraction pruned (or the window's offset), one line
    per strategy and score with its 16-84 percentile band, full data dashed (Data Diet Figs.
    1-2)."""
    fig, (ax,) = _figure(height=4.0)
    groups: dict[tuple[str, str | None], list[RetrainCurveRow]] = {}
    for r in rows:
        if r.accuracies:
            groups.setdefault((r.strategy, None if r.strategy == "random" else r.score), []).append(r)
    for k, ((strategy, score), rs) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))):
        x = np.array([r.offset if window else 1 - r.fraction_kept for r in rs], dtype=np.float64)
        if window and strategy == "random":
            x = np.zeros(len(rs))
        stats = np.array([band(r.accuracies) for r in rs])
        o = np.argsort(x, kind="stable")
        label = strategy if score is None else f"{strategy} ({score})"
        line = ax.plot(x[o], stats[o, 0], "o-", color=f"C{k}", label=label)[0]
        ax.fill_between(x[o], stats[o, 1], stats[o, 2], color=line.get_color(), alpha=0.2, lw=0)
    full = [r.full_data_accuracy for r in rows if math.isfinite(r.full_data_accuracy)]
    if full:
        ax.axhline(full[0], color="k", ls="--", lw=1, label="full data")
    ax.set(xlabel="offset (fraction of lowest scores dropped)" if window else "fraction of the training set pruned",
           ylabel="final test accuracy", title="sliding window" if window else "pruning curve (mean, 16-84 band)")
    ax.legend(fontsize="small")
    return _save(fig, Path(path))


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: str | os.PathLike) -> Path:
    """ROC curves of scores flagging the corrupted labels: ``{spec: (fpr, tpr, auc)}``."""
    fig, (ax,) = _figure(width=4.6, height=4.2)
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="finding corrupted labels",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize="small")
    return _save(fig, Path(path))


def plot_image_grid(images: np.ndarray, grid: Mapping[int, tuple[np.ndarray, np.ndarray]], class_names: Sequence[str],
                    spec: str, path: str | os.PathLike) -> Path:
    """One row per class: its lowest-scoring examples (left, ascending), then its highest
    (right, descending).  ``images`` uint8 (N, C, H, W)."""
    classes = sorted(grid)
    k = max(len(lo) for lo, _ in grid.values())
    fig = _figure(width=1.0 * (2 * k + 1) + 1.2, height=0.9 * len(classes) + 0.8)[0]
    fig.clear()
    axes = fig.subplots(len(classes), 2 * k + 1, squeeze=False)
    for i, c in enumerate(classes):
        lo, hi = grid[c]
        cells = list(lo) + [None] * (k - len(lo)) + [None] + list(hi) + [None] * (k - len(hi))
        for j, idx in enumerate(cells):
            ax = axes[i, j]
            ax.set_axis_off()
            if idx is None:
                continue
            img = images[idx]  # (C, H, W) -> (H, W, C)
            img = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        name = str(class_names[c]) if c < len(class_names) else str(c)
        axes[i, 0].set_axis_on()
        axes[i, 0].set_xticks([])
        axes[i, 0].set_yticks([])
        axes[i, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"lowest (left) and highest (right) {spec} per class", fontsize=10)
    return _save(fig, Path(path))


# ----------------------------------------------------------------------------- sections
def _store_sections(inputs: StoreInputs, out: Path, prefix: str, *, score: str | None, per_class: int
                    ) -> tuple[list[_Section], dict, list[str]]:
    """The sections of one store, its summary and the sections skipped (with why)."""
    from scorebank.analysis.correlation import spearman_matrix
    from scorebank.analysis.curves import training_curves
    from scorebank.analysis.distribution import margin_distribution, sorted_margins
    from scorebank.analysis.forgetting import forgetting
    from scorebank.analysis.overlap import margin_overlaps
    from scorebank.analysis.scores import average_scores, parse_score

    ds = access.open_store(inputs.path)
    cfg = access.config(ds)
    seeds = access.completed_runs(ds)
    sections: list[_Section] = []
    skipped: list[str] = []
    summary = {"store": inputs.path, "data set": str(ds.attrs.get(S.ATTR_DATASET, "")),
               "model": "" if cfg is None else cfg.model, "epochs": "" if cfg is None else str(cfg.epochs),
               "examples": str(int(ds.sizes[S.EXAMPLE])), "completed runs": ", ".join(map(str, seeds)) or "none"}
    if not seeds:
        skipped.append("every figure: the store has no completed run")
        return sections, summary, skipped
    name = lambda what: f"{prefix}{what}.png"  # noqa: E731

    def attempt(title: str, make: Callable[[], _Section | None]) -> None:
        try:
            sec = make()
        except ScorebankError as exc:
            skipped.append(f"{title}: {exc}")
            return
        if sec is not None:
            sections.append(sec)

    def training():
        cur = training_curves(ds, runs=seeds)
        plots.plot_training_curves(cur, out / name("curves"))
        noisy = bool(cur.attrs.get("label_noise"))
        test = cur[S.TEST_ACCURACY].values
        summary["final test accuracy (mean)"] = f"{100 * np.nanmean(test[:, -1]):.2f}%"
        return _Section("Training curves" + (": pristine and corrupt examples" if noisy else ""), name("curves"),
                        "Clean-pass accuracy and loss per epoch, mean over runs with a min-max band"
                        + ("; corrupt = accuracy on the corrupted labels (memorisation)." if noisy else "."))
    attempt("training curves", training)

    rec = recorded_epochs(ds, seeds)

    def margins():
        if rec.size == 0:
            raise ScorebankError("no epoch recorded by every run")
        stats = margin_distribution(ds, runs=seeds)
        shown = np.unique(rec[np.linspace(0, rec.size - 1, min(6, rec.size)).round().astype(int)])
        curves = sorted_margins(ds, run=seeds[0], epochs=[int(x) for x in shown])
        plots.plot_margin_distribution(stats, curves, out / name("margins"))
        return _Section("Margin distributions over epochs", name("margins"),
                        "Sorted normalised margins (margin / product of weight norms) of the first run at a few "
                        "epochs, and the area under the curve per run (margins paper Figs. 2-3).")
    attempt("margin distributions", margins)

    def forgetting_hist():
        res = forgetting(ds, runs=seeds)
        plot_forgetting_histogram(np.asarray(res["events"].values), np.asarray(res["never_learned"].values),
                                  out / name("forgetting"))
        return _Section("Forgetting events", name("forgetting"),
                        "Examples by the number of forgetting events (learned, then misclassified at a later "
                        "presentation), mean over runs; never-learned examples separately.")
    attempt("forgetting", forgetting_hist)

    early = early_epoch(rec) if rec.size else None
    specs: list[str] = []
    if early is not None:
        last = int(rec.max())
        specs += [f"el2n@{early}", f"loss@{last}", f"nmargin@{last}"]
    specs.append("forgetting")
    if S.GRAND in ds:
        grand_rec = np.isfinite(np.asarray(ds[S.GRAND].isel({S.EXAMPLE: 0}).values)).all(axis=0)
        specs += [f"grand@{int(e)}" for e in access.epochs(ds)[grand_rec][:2]]

    def spearman():
        if len(specs) < 2:
            raise ScorebankError("fewer than two scores recorded")
        mat = spearman_matrix(ds, specs, runs=seeds)
        plots.plot_spearman(mat, out / name("spearman"))
        return _Section("Spearman correlations", name("spearman"),
                        f"Rank correlations of scores averaged over runs {', '.join(map(str, seeds))} "
                        "(Data Diet Fig. 12).")
    attempt("Spearman correlations", spearman)

    def overlap():
        n = int(ds.sizes[S.EXAMPLE])
        ks = sorted({k for k in (20, 100, 200) if k <= n // 2} or {max(1, n // 4)})
        res = margin_overlaps(ds, k=ks, runs=seeds)
        plots.plot_overlaps(res, out / name("overlap"))
        return _Section("Smallest-margin set overlap against the epoch", name("overlap"),
                        "Overlap of the k smallest normalised margins between runs, and the fraction of the final "
                        "k-set present at each epoch (margins paper Figs. 6, 8, 9).")
    attempt("overlap", overlap)

    curve_rows = [r for r in inputs.retrain_rows if r.strategy != "window"]
    window_rows = [r for r in inputs.retrain_rows if r.strategy == "window"]
    if any(r.accuracies for r in curve_rows):
        plot_pruning_curves(curve_rows, out / name("pruning"))
        sections.append(_Section("Pruning curves", name("pruning"),
                                 "Final test accuracy of networks retrained on the kept examples, mean and 16-84 "
                                 "percentile band over seeds (Data Diet Fig. 1).",
                                 table=_retrain_table(curve_rows)))
    if any(r.accuracies for r in window_rows):
        plot_pruning_curves(window_rows + [r for r in curve_rows if r.strategy == "random"],
                            out / name("window"), window=True)
        sections.append(_Section("Sliding window", name("window"),
                                 "Windows of the sorted scores keeping a fixed fraction (Data Diet Fig. 2).",
                                 table=_retrain_table(window_rows)))

    def noise():
        if S.CORRUPTED not in ds:
            return None
        corrupted = np.asarray(ds[S.CORRUPTED].values, dtype=bool)
        if corrupted.all() or not corrupted.any():
            return None
        avg = average_scores(ds, specs, runs=seeds)
        curves = {}
        for spec in specs:
            values = np.asarray(avg[spec].values, dtype=np.float64)
            hard = values if parse_score(spec).high_is_hard else -values
            fpr, tpr = roc_curve(hard, corrupted)
            curves[spec] = (fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)))  # trapezoid rule
        plot_roc(curves, out / name("roc"))
        return _Section("Finding the corrupted labels", name("roc"),
                        f"ROC curves of scores averaged over runs; {int(corrupted.sum())} of {corrupted.size} labels "
                        "were corrupted (Data Diet Sec. 4).")
    attempt("noise ROC", noise)

    def grid():
        if inputs.images is None:
            return None
        spec = score or (f"el2n@{early}" if early is not None else "forgetting")
        avg = average_scores(ds, [spec], runs=seeds)
        values = np.asarray(avg[str(parse_score(spec))].values, dtype=np.float64)
        images = inputs.images()
        labels = access.labels(ds)
        if images.shape[0] != labels.size:
            raise ScorebankError(f"the data set gives {images.shape[0]} images, the store has {labels.size} examples")
        plot_image_grid(images, extreme_examples(values, labels, per_class), access.class_names(ds), spec,
                        out / name("examples"))
        return _Section(f"Lowest and highest {spec} per class", name("examples"),
                        "Images from the data set, by the score averaged over runs (ties by example index).")
    attempt("image grids", grid)
    return sections, summary, skipped


def _pct(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{100 * v:.1f}"


def _retrain_table(rows: Sequence[RetrainCurveRow]):
    out = []
    for r in sorted(rows, key=lambda r: (r.strategy, r.offset or 0.0, -r.fraction_kept)):
        mean, p16, p84 = band(r.accuracies)
        out.append((r.group, r.strategy, r.score or "", f"{r.fraction_kept:.3g}",
                    "" if r.offset is None else f"{r.offset:g}", str(len(r.accuracies)), _pct(mean),
                    f"{_pct(p16)}-{_pct(p84)}", "-" if not math.isfinite(mean - r.full_data_accuracy)
                    else f"{100 * (mean - r.full_data_accuracy):+.1f}"))
    return (("group", "strategy", "score", "kept", "offset", "seeds", "acc %", "16-84 %", "vs full"), out)


def flatten(doc, prefix: str = "", *, max_list: int = 12) -> list[tuple[str, str]]:
    """``(dotted key, value)`` rows of the scalars of a JSON document; lists of at most
    ``max_list`` scalars are shown inline, longer or nested ones are left to results.json."""
    rows: list[tuple[str, str]] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            rows += flatten(v, f"{prefix}.{k}" if prefix else str(k), max_list=max_list)
    elif isinstance(doc, list):
        if len(doc) <= max_list and all(not isinstance(x, (dict, list)) for x in doc):
            rows.append((prefix, ", ".join(_fmt(x) for x in doc)))
    else:
        rows.append((prefix, _fmt(doc)))
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "null" if v is None else str(v)


# ----------------------------------------------------------------------------- page
CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.5em}
img{max-width:100%;border:1px solid #eee}table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}p.caption{color:#555;font-size:.9em}
.skipped{color:#777;font-size:.85em}"""


def _table_html(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{e(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(out: str | os.PathLike, stores: Mapping[str, StoreInputs], *, results: dict | None = None,
                 score: str | None = None, per_class: int = 6, title: str | None = None) -> Path:
    """Write ``out/index.html`` and its PNGs for ``stores`` (name -> inputs) and, for an
    experiment, its ``results`` document; returns the page's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    exp = (results or {}).get("experiment", {})
    heading = title or exp.get("title") or exp.get("name") or "scorebank report"
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(str(heading))}</title>"
             f"<style>{CSS}</style></head><body><h1>{e(str(heading))}</h1>"]
    if results is not None:
        if exp.get("reproduces"):
            parts.append(f"<p>Reproduces: {e(str(exp['reproduces']))}</p>")
        if exp.get("notes"):
            parts.append(f"<p>{e(str(exp['notes']))}</p>")
        published = flatten(results.get("published", {}))
        if published:
            parts.append("<h2>Published numbers</h2>" + _table_html(("quantity", "published"), published))
        measured = [(f"{stage}.{k}", v) for stage, d in results.get("stages", {}).items()
                    for k, v in flatten(d.get("results", {}))]
        if measured:
            parts.append("<h2>Measured</h2><p class=\"caption\">Scalars of every stage (all numbers: "
                         "results.json).</p>" + _table_html(("stage.quantity", "measured"), measured))
    for i, (sname, inputs) in enumerate(stores.items()):
        sections, summary, skipped = _store_sections(inputs, out, f"s{i}-", score=score, per_class=per_class)
        parts.append(f"<h2>Store {e(str(sname))}</h2>" + _table_html(("", ""), list(summary.items())))
        for sec in sections:
            parts.append(f"<h3>{e(sec.title)}</h3>")
            if sec.figure:
                parts.append(f"<img src=\"{e(sec.figure)}\" alt=\"{e(sec.title)}\">")
            if sec.caption:
                parts.append(f"<p class=\"caption\">{e(sec.caption)}</p>")
            if sec.table:
                parts.append(_table_html(*sec.table))
        if skipped:
            parts.append("<p class=\"skipped\">Not shown: " + "; ".join(e(s) for s in skipped) + "</p>")
    parts.append("</body></html>\n")
    page = out / "index.html"
    tmp = out / ".index.html.tmp"
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, page)
    return page
