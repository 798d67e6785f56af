"""Data maps (Swayamdipta et al. 2020, "Dataset Cartography"): every training example
placed by its training dynamics over epochs 1..E, from the clean pass's probability of the
training label ``p_e = exp(-loss)`` at the end of each epoch e:

* **confidence** ``mu = (1/E) sum_e p_e``;
* **variability** ``sigma = sqrt((1/E) sum_e (p_e - mu)^2)`` (population standard deviation,
  ``np.std`` as in allenai/cartography);
* **correctness**: the fraction of epochs 1..E whose clean pass classified it correctly.

Each is computed per run (registry entries ``confidence@E``, ``variability@E``,
``correctness@E``) and averaged over runs.  The regions follow the paper's selections
(Sec. 3, 33% of the training set each, as allenai/cartography's ``--metric``/``--worst``
filtering): **easy-to-learn** = the 33% most confident, **hard-to-learn** = the 33% least
confident, **ambiguous** = the 33% most variable.  Easy and hard are disjoint; an ambiguous
example may also be in one of them (the overlaps are reported).  Ties at a cut are broken by
example index, lower first.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import xarray as xr

from scorebank.analysis import access
from scorebank.analysis.scores import average_scores
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError

#: Fraction of the training set in each region (the paper's 33%).
REGION_FRACTION = 0.33
#: Region names, in display order.
REGIONS = ("easy-to-learn", "ambiguous", "hard-to-learn")


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` largest values (ties by lower index first)."""
    order = np.lexsort((np.arange(values.size), -values))
    mask = np.zeros(values.size, dtype=bool)
    mask[order[:k]] = True
    return mask


def data_map(store: access.StoreLike, epoch: int | None = None, *, runs: Iterable[int] | None = None,
             fraction: float = REGION_FRACTION, scheduler=None) -> xr.Dataset:
    """The data map over epochs 1..``epoch`` (default: the store's last epoch), averaged over
    ``runs`` (default: every completed run).

    Returns a Dataset over ``example`` with ``confidence``, ``variability``, ``correctness``,
    one boolean per region (``easy-to-learn``, ``ambiguous``, ``hard-to-learn``) and
    ``corrupted`` when the store has label noise; attrs ``epoch``, ``runs``, ``fraction``."""
    ds = access.open_store(store)
    if epoch is None:
        epoch = int(access.epochs(ds).max())
    if not (isinstance(fraction, float | int) and 0 < fraction <= 0.5):
        raise InvalidArgumentError(f"region fraction {fraction!r} must be in (0, 0.5]")
    specs = [f"confidence@{epoch}", f"variability@{epoch}", f"correctness@{epoch}"]
    avg = average_scores(ds, specs, runs=runs, scheduler=scheduler)
    conf, var, corr = (np.asarray(avg[s].values, dtype=np.float64) for s in specs)
    k = int(round(fraction * conf.size))
    out = xr.Dataset({"confidence": (S.EXAMPLE, conf), "variability": (S.EXAMPLE, var),
                      "correctness": (S.EXAMPLE, corr),
                      "easy-to-learn": (S.EXAMPLE, _top(conf, k)),
                      "ambiguous": (S.EXAMPLE, _top(var, k)),
                      "hard-to-learn": (S.EXAMPLE, _top(-conf, k))},
                     coords={S.EXAMPLE: np.arange(conf.size)})
    corrupted = np.asarray(ds[S.CORRUPTED].values, dtype=bool) if S.CORRUPTED in ds else np.zeros(0, bool)
    if corrupted.any():  # a label-noise store
        out[S.CORRUPTED] = (S.EXAMPLE, corrupted)
    out.attrs.update(epoch=int(epoch), runs=list(avg.attrs["runs"]), fraction=float(fraction))
    return out


def region_summary(result: xr.Dataset) -> list[dict]:
    """One row per region: its size, the mean confidence / variability / correctness of its
    examples, and (label-noise stores) how many of them are corrupted."""
    rows = []
    for name in REGIONS:
        mask = result[name].values
        row = {"region": name, "examples": int(mask.sum()),
               **{q: float(result[q].values[mask].mean()) if mask.any() else float("nan")
                  for q in ("confidence", "variability", "correctness")}}
        if S.CORRUPTED in result:
            row["corrupted"] = int(result[S.CORRUPTED].values[mask].sum())
        rows.append(row)
    return rows


def plot_data_map(result: xr.Dataset, path: str | os.PathLike) -> Path:
    """Variability (x) against confidence (y), one dot per example coloured by correctness
    (the fraction of epochs correct, in 6 bins as the paper's figure); corrupted examples of a
    label-noise store circled in red; the region cuts dashed and labelled.  Right: histograms of the
    three coordinates."""
    from matplotlib import colormaps
    from matplotlib.colors import BoundaryNorm
    from matplotlib.figure import Figure

    from scorebank.analysis.plots import _save

    conf, var, corr = (result[q].values for q in ("confidence", "variability", "correctness"))
    fig = Figure(figsize=(11, 6), layout="constrained")
    grid = fig.add_gridspec(3, 2, width_ratios=(2.2, 1))
    ax = fig.add_subplot(grid[:, 0])
    bounds = np.linspace(0, 1, 7)
    cmap = colormaps["viridis"].resampled(6)
    size = float(np.clip(20000 / max(1, conf.size), 3, 30))
    dots = ax.scatter(var, conf, c=corr, cmap=cmap, norm=BoundaryNorm(bounds, cmap.N), s=size, alpha=0.8,
                      linewidths=0)
    if S.CORRUPTED in result and result[S.CORRUPTED].values.any():
        c = result[S.CORRUPTED].values
        ax.scatter(var[c], conf[c], s=size * 2.2, facecolors="none", edgecolors="red", linewidths=0.6,
                   label=f"corrupted label ({int(c.sum())})")
        ax.legend(loc="upper left", fontsize=9)
    fig.colorbar(dots, ax=ax, label="correctness (fraction of epochs correct)", ticks=bounds)
    easy, hard, amb = (result[n].values for n in ("easy-to-learn", "hard-to-learn", "ambiguous"))
    box = dict(boxstyle="round,pad=0.25", fc="white", alpha=0.85)
    right = ax.get_xaxis_transform()  # x in data, y in axes fraction
    if easy.any():
        ax.axhline(conf[easy].min(), color="tab:orange", ls="--", lw=1.2)
        ax.annotate(f"easy-to-learn above ({int(easy.sum())})", (0.99, conf[easy].min()), xycoords=("axes fraction",
                    "data"), xytext=(0, 4), textcoords="offset points", ha="right", va="bottom", color="tab:orange",
                    bbox=box)
    if hard.any():
        ax.axhline(conf[hard].max(), color="tab:blue", ls="--", lw=1.2)
        ax.annotate(f"hard-to-learn below ({int(hard.sum())})", (0.99, conf[hard].max()), xycoords=("axes fraction",
                    "data"), xytext=(0, -4), textcoords="offset points", ha="right", va="top", color="tab:blue",
                    bbox=box)
    if amb.any():
        ax.axvline(var[amb].min(), color="black", ls="--", lw=1.2)
        ax.text(var[amb].min(), 0.02, f"ambiguous: right of the line ({int(amb.sum())})", transform=right,
                ha="left", va="bottom", bbox=box)
    ax.set(xlabel="variability (std of p(y|x) over epochs)", ylabel="confidence (mean p(y|x) over epochs)",
           ylim=(-0.02, 1.02), xlim=(0, max(0.05, float(var.max()) * 1.05)),
           title=f"data map, epochs 1..{result.attrs['epoch']}, mean over runs {result.attrs['runs']}")
    ax.grid(alpha=0.3)
    for i, (q, colour) in enumerate((("confidence", "tab:purple"), ("variability", "tab:cyan"),
                                     ("correctness", "tab:green"))):
        h = fig.add_subplot(grid[i, 1])
        h.hist(result[q].values, bins=30, color=colour)
        h.set(xlabel=q, ylabel="examples")
    return _save(fig, path)
