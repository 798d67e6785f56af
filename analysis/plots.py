"""Figures of the analyses, drawn with matplotlib's Agg renderer into PNG (or any format
matplotlib writes, by the file's suffix).  Uses ``matplotlib.figure.Figure`` directly, so
it never touches pyplot's global state or the notebook's backend.

Each function takes the result of the matching analysis function and a path, and returns
the path written.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from scorebank.stores import schema as S


def _figure(ncols: int = 1, width: float = 6.0, height: float = 4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_overlaps(result: xr.Dataset, path: str | os.PathLike) -> Path:
    """The result of :func:`scorebank.analysis.overlap.margin_overlaps`: left, mean
    pairwise overlap of the k smallest-margin sets between runs (band: min to max over
    pairs; margins paper Fig. 6); right, fraction of the final k-set present at each epoch,
    mean over runs, with the runs' data-separation epochs dotted (Figs. 8-9)."""
    panels = 2 if "pairwise_mean" in result else 1
    fig, axes = _figure(panels)
    ep = result[S.EPOCH].values
    ax = axes[0]
    if panels == 2:
        for k in result["k"].values:
            sel = result.sel(k=k)
            line = ax.plot(ep, sel["pairwise_mean"].values, marker=".", label=f"k = {k}")[0]
            ax.fill_between(ep, sel["pairwise_min"].values, sel["pairwise_max"].values,
                            color=line.get_color(), alpha=0.2)
        ax.set(title="k smallest normalised margins: overlap between runs", xlabel="epoch",
               ylabel="|A ∩ B| / k", ylim=(0, 1.02))
        ax.legend()
        ax = axes[1]
    for k in result["k"].values:
        ret = result["retention"].sel(k=k)
        with np.errstate(all="ignore"):
            mean = np.nanmean(np.where(np.isfinite(ret.values), ret.values, np.nan), axis=0) \
                if np.isfinite(ret.values).any() else np.full(ep.size, np.nan)
        ax.plot(ep, mean, marker=".", label=f"k = {k}")
    for sep in result["separation_epoch"].values:
        if sep >= 0:
            ax.axvline(sep, color="grey", linestyle=":", linewidth=1)
    ax.set(title="final-epoch k-set present at each epoch (mean over runs)", xlabel="epoch",
           ylabel="fraction of final k-set", ylim=(0, 1.02))
    ax.legend()
    return _save(fig, path)


def plot_sensitivity(curve: xr.Dataset, path: str | os.PathLike) -> Path:
    """The result of :func:`scorebank.analysis.correlation.sensitivity_curve` (Data Diet
    Figs. 9-10, left): Spearman correlation with the all-run average vs runs averaged."""
    fig, (ax,) = _figure()
    k = curve["k"].values
    ax.errorbar(k, curve["mean"].values, yerr=curve["std"].values, marker="o", capsize=3, label="mean ± std")
    ax.fill_between(k, curve["min"].values, curve["max"].values, alpha=0.2, label="min-max")
    ax.set(title=f"sensitivity of {curve.attrs.get('spec', 'score')} to the number of runs",
           xlabel="runs averaged (k)", ylabel=f"Spearman vs average of {k.max()} runs")
    ax.set_xticks(k)
    ax.legend()
    return _save(fig, path)


def plot_margin_distribution(stats: xr.Dataset, curves: xr.DataArray | None, path: str | os.PathLike) -> Path:
    """Margins paper Figs. 2-3: left, the sorted normalised-margin curves of one run at a
    few epochs (:func:`scorebank.analysis.distribution.sorted_margins`); right, the AUC of
    the curve per run over epochs (:func:`~scorebank.analysis.distribution.margin_distribution`)."""
    panels = 1 if curves is None else 2
    fig, axes = _figure(panels)
    if curves is not None:
        from matplotlib import colormaps

        cmap = colormaps["viridis"]
        ep = curves[S.EPOCH].values
        for i, e in enumerate(ep):
            axes[0].plot(curves["position"].values, curves.sel({S.EPOCH: e}).values,
                         color=cmap(i / max(1, ep.size - 1)), label=f"epoch {e}")
        axes[0].set(title=f"sorted normalised margins, run {curves.attrs.get('run')}",
                    xlabel="fraction of examples (sorted)", ylabel="margin / rho")
        axes[0].legend(fontsize="small")
    ax = axes[-1]
    for run in stats[S.RUN].values:
        sel = stats["auc"].sel({S.RUN: run})
        ok = np.isfinite(sel.values)
        ax.plot(stats[S.EPOCH].values[ok], sel.values[ok], marker=".", label=f"run {run}")
    ax.set(title="area under the sorted normalised-margin curve", xlabel="epoch", ylabel="AUC")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_spearman(matrix: xr.DataArray, path: str | os.PathLike) -> Path:
    """A Spearman matrix (:func:`scorebank.analysis.correlation.spearman_matrix`) as a
    heat map with the values written in (Data Diet Fig. 12)."""
    names = [str(n) for n in matrix["score_a"].values]
    fig, (ax,) = _figure(width=1.2 * len(names) + 2.5, height=1.0 * len(names) + 1.5)
    im = ax.imshow(matrix.values, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            v = matrix.values[i, j]
            ax.text(j, i, "nan" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=9,
                    color="white" if np.isfinite(v) and abs(v) > 0.6 else "black")
    fig.colorbar(im, ax=ax, label="Spearman rho")
    ax.set_title("Spearman rank correlation of averaged scores")
    return _save(fig, path)


def plot_accuracy_by_difficulty(levels: xr.Dataset, path: str | os.PathLike) -> Path:
    """Training accuracy of one run per difficulty level
    (:func:`scorebank.analysis.difficulty_levels.accuracy_by_difficulty`) as bars, the
    Coherent Gradients Fig. 5a table drawn."""
    fig, (ax,) = _figure(width=5.0, height=3.2)
    ax.bar(levels["difficulty"].values, 100 * levels["accuracy"].values, color="tab:blue")
    ax.set(xlabel="difficulty (runs in which the example is hard)", ylabel="training accuracy (%)",
           title=f"run {levels.attrs['run']}, epoch {levels.attrs['epoch']}", ylim=(0, 100))
    return _save(fig, path)


def _run_band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(ok, mean, lo, hi)`` over the run axis of a (run, epoch) array, ignoring NaN;
    ``ok`` marks the epochs where at least one run has a value."""
    ok = np.isfinite(values).any(axis=0)
    v = values[:, ok]
    with np.errstate(all="ignore"):
        return ok, np.nanmean(v, axis=0), np.nanmin(v, axis=0), np.nanmax(v, axis=0)


def plot_training_curves(curves: xr.Dataset, path: str | os.PathLike) -> Path:
    """The result of :func:`scorebank.analysis.curves.training_curves` (Coherent Gradients
    Fig. 3): left, train (clean pass), pristine, corrupt (w.r.t. the corrupted label) and
    test accuracy against the epoch; right, the matching losses.  One line per quantity,
    the mean over runs, with a band from the minimum to the maximum over runs."""
    fig, axes = _figure(2)
    ep = curves[S.EPOCH].values
    panels = ((axes[0], "accuracy", (S.TRAIN_ACCURACY, S.PRISTINE_ACCURACY, S.CORRUPT_ACCURACY, S.TEST_ACCURACY)),
              (axes[1], "loss", (S.TRAIN_LOSS, S.PRISTINE_LOSS, S.CORRUPT_LOSS, S.TEST_LOSS)))
    labels = {S.TRAIN_ACCURACY: "train", S.TRAIN_LOSS: "train", S.PRISTINE_ACCURACY: "pristine",
              S.PRISTINE_LOSS: "pristine", S.CORRUPT_ACCURACY: "corrupt (memorised)",
              S.CORRUPT_LOSS: "corrupt", S.TEST_ACCURACY: "test", S.TEST_LOSS: "test"}
    styles = {"train": "-", "pristine": "--", "corrupt": ":", "test": "-."}
    runs = curves.sizes[S.RUN]
    for ax, what, names in panels:
        for name in names:
            if name not in curves:
                continue
            ok, mean, lo, hi = _run_band(np.asarray(curves[name].values, dtype=np.float64))
            label = labels[name]
            line = ax.plot(ep[ok], mean, marker=".", linestyle=styles[label.split(" ")[0]], label=label)[0]
            if runs > 1:
                ax.fill_between(ep[ok], lo, hi, color=line.get_color(), alpha=0.2)
        ax.set(xlabel="epoch", ylabel=what,
               title=f"{what} per epoch ({'mean over ' + str(runs) + ' runs, band min-max' if runs > 1 else 'one run'})")
        if what == "accuracy":
            ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize="small")
    return _save(fig, path)
