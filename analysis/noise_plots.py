"""The label-noise harness's figure: ROC and precision-recall curves of every score's
hardness against the store's ``corrupted`` flags (the result of
:func:`scorebank.analysis.noise.noise_detection`), drawn with matplotlib's Agg renderer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from scorebank.analysis.noise import precision_recall_curve, roc_curve
from scorebank.analysis.plots import _figure, _save
from scorebank.stores import schema as S


def plot_noise_curves(result: xr.Dataset, path: str | os.PathLike) -> Path:
    """Left: ROC curve per score (diagonal = chance), ROC AUC in the legend.  Right:
    precision-recall curve per score (dotted = the noise rate, chance), average precision in
    the legend.  A score with its own threshold (``own_n_flagged`` not NaN: AUM's threshold
    samples, cleanlab's flags) gets a marker at that cut on both curves."""
    fig, (roc_ax, pr_ax) = _figure(ncols=2, width=5.5, height=4.5)
    corrupted = np.asarray(result[S.CORRUPTED].values, dtype=bool)
    for i, name in enumerate(result["score"].values):
        hardness = result["hardness"].values[i]
        fpr, tpr = roc_curve(hardness, corrupted)
        roc_ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {float(result['roc_auc'].values[i]):.3f})")
        precision, recall = precision_recall_curve(hardness, corrupted)
        line, = pr_ax.step(np.r_[0.0, recall], np.r_[precision[0], precision], where="pre", lw=1.5,
                           label=f"{name} (AP {float(result['average_precision'].values[i]):.3f})")
        if "own_n_flagged" in result and np.isfinite(result["own_n_flagged"].values[i]):
            fpr_own, tpr_own, p_own = own_operating_point(result, i, corrupted)
            roc_ax.plot([fpr_own], [tpr_own], marker="o", ms=6, mfc="none", color=line.get_color())
            pr_ax.plot([tpr_own], [p_own], marker="o", ms=6, mfc="none", color=line.get_color(),
                       label=f"{name}: own threshold ({int(result['own_n_flagged'].values[i])} flagged)")
    roc_ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    pr_ax.axhline(float(result["noise_rate"]), color="grey", ls=":", lw=1)
    roc_ax.set(xlabel="false positive rate (clean flagged)", ylabel="true positive rate (corrupted flagged)",
               title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    for ax in (roc_ax, pr_ax):
        ax.legend(fontsize=8, loc="lower right" if ax is roc_ax else "center left")
        ax.grid(alpha=0.3)
    fig.suptitle(f"finding {int(result['n_corrupted'])} corrupted labels "
                 f"(noise rate {float(result['noise_rate']):.3g})")
    return _save(fig, path)


def own_operating_point(result: xr.Dataset, i: int, corrupted: np.ndarray) -> tuple[float, float, float]:
    """(false positive rate, true positive rate = recall, precision) of score ``i``'s own cut."""
    n_c = int(corrupted.sum())
    flagged = float(result["own_n_flagged"].values[i])
    recall = float(result["own_recall"].values[i])
    hits = recall * n_c
    return (flagged - hits) / max(1, corrupted.size - n_c), recall, float(result["own_precision"].values[i])
