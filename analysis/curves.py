"""Training curves: the per-(run, epoch) summaries a store records, with label noise split
into pristine and corrupt examples (Coherent Gradients, Chatterjee 2020, Fig. 3).

Quantities (the store's variables, :mod:`scorebank.stores.schema`):

``train_accuracy``, ``train_loss``
    accuracy and mean cross-entropy on the whole training set in the *clean pass* run after
    the epoch: every training example, un-augmented, BatchNorm in eval mode (running
    statistics), no parameter update.  These are the numbers behind the per-example scores
    and behind the margins paper's data separation (the first epoch with
    ``train_accuracy == 1``), not the in-flight minibatch statistics of training.
``pristine_accuracy``, ``pristine_loss``
    the same clean pass restricted to the examples whose label label noise left unchanged
    (stores made with ``--label-noise`` only).
``corrupt_accuracy``, ``corrupt_loss``
    the same on the examples whose label was corrupted, measured against the *corrupted*
    training label: a corrupt accuracy of 1 means the network has memorised every wrong
    label.  Coherent Gradients (Fig. 3) shows pristine examples learned first and fast,
    corrupt ones memorised later and slowly, with test accuracy falling as memorisation
    sets in.
``test_accuracy``, ``test_loss``
    accuracy and mean cross-entropy on the test set in eval mode, measured at every
    completed epoch (also where the clean pass was not recorded).

Clean-pass quantities exist where the epoch is completed and ``recorded``; the test ones
where it is completed; everything else is NaN.  Only the small per-(run, epoch) arrays are
read (never the per-example scores), so this is cheap for any store size.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xarray as xr

from scorebank.analysis import access
from scorebank.stores import schema as S

#: Clean-pass quantities (values where the epoch is completed and recorded), display order.
CLEAN_PASS = (S.TRAIN_ACCURACY, S.TRAIN_LOSS)
#: Clean-pass quantities split by label noise (stores made with --label-noise only).
NOISE_SPLIT = (S.PRISTINE_ACCURACY, S.PRISTINE_LOSS, S.CORRUPT_ACCURACY, S.CORRUPT_LOSS)
#: Test-set quantities (values where the epoch is completed).
TEST = (S.TEST_ACCURACY, S.TEST_LOSS)
#: Every quantity :func:`training_curves` may return, in display order.
QUANTITIES = CLEAN_PASS + NOISE_SPLIT + TEST


def training_curves(store: access.StoreLike, runs: Iterable[int] | None = None, scheduler=None) -> xr.Dataset:
    """The training curves of the chosen runs (default: every completed run) as a Dataset
    over (run, epoch):

    * ``train_accuracy``, ``train_loss``, ``test_accuracy``, ``test_loss`` and, for stores
      with label noise, ``pristine_accuracy``, ``pristine_loss``, ``corrupt_accuracy``,
      ``corrupt_loss`` (float64; see the module docstring), NaN where the epoch was not
      completed or, for the clean-pass quantities, not recorded;
    * ``completed`` (the epoch finished) and ``recorded`` (it finished and the clean pass
      ran), bool.

    attrs: ``runs``; ``label_noise`` (bool); with label noise ``n_corrupted`` and
    ``n_examples``.  ``scheduler`` is accepted for uniformity and not needed (only small
    per-(run, epoch) arrays are read)."""
    del scheduler
    ds = access.open_store(store)
    seeds = access.resolve_runs(ds, runs)
    completed = access.completed_mask(ds, seeds)
    recorded = access.recorded_mask(ds, seeds)
    noisy = all(name in ds for name in NOISE_SPLIT)
    dims = (S.RUN, S.EPOCH)
    data = {}
    for name in QUANTITIES:
        if name not in ds:
            continue
        values = access.per_epoch(ds, name, seeds).astype(np.float64)
        where = completed if name in TEST else recorded
        data[name] = (dims, np.where(where, values, np.nan), {"description": S.BY_NAME[name].description})
    data[S.COMPLETED] = (dims, completed)
    data[S.RECORDED] = (dims, recorded)
    out = xr.Dataset(data, coords={S.RUN: np.asarray(seeds, dtype=np.int64), S.EPOCH: access.epochs(ds)})
    out.attrs.update(runs=list(seeds), label_noise=noisy)
    if noisy and S.CORRUPTED in ds:
        out.attrs.update(n_corrupted=int(np.asarray(ds[S.CORRUPTED].values).sum()),
                         n_examples=int(ds.sizes[S.EXAMPLE]))
    return out
