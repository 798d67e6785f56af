"""AUM's threshold samples (Pleiss, Zhang, Elenberg & Weinberger 2020, "Identifying mislabeled
data using the area under the margin ranking", Sec. 3).

With ``score --threshold-samples`` (``ScoreConfig.threshold_samples``), ``N // (C + 1)``
training examples, drawn uniformly at random without replacement (as ``torch.randperm`` in
the reference code, ``asappresearch/aum``, ``examples/paper_replication/runner.py``; not
stratified by class), are assigned the fake class ``C`` (one past the data set's classes
``0..C-1``): mislabelled by construction.  The network gets ``C + 1`` outputs; their AUM
gives the cut-off below which a real example is flagged (:mod:`scorebank.analysis.aum`).
The count follows the paper's ``N/(C+1)`` (the size of one class once the fake class is
added); the reference code takes ``N // C``.

The draw is seeded by ``label_noise_seed`` (the store's data seed: the same examples for every
run, as the paper's single set of threshold samples), on a stream of its own, and made after
label noise: a threshold sample that label noise had changed is a threshold sample.

How the extra logit enters everything recorded: every per-example variable (in-flight
``train_margin``/``train_correct``, clean-pass margin, EL2N, loss, correctness, GraNd) is
computed on all ``C + 1`` logits against the assigned label (``C`` for threshold samples), so
the margin of a real example is ``f_y - max_{j != y} f_j`` over the real classes and the fake
one (AUM's margin, Pleiss et al. Eq. 1, over every logit of the network).  Test accuracy is
the argmax over all ``C + 1`` logits (a test image predicted as the fake class is an error).
The store's ``label`` holds ``C`` for threshold samples, so ``corrupted`` (label != true label)
is True for them and the clean-pass corrupt accuracy counts them; the noise analyses leave them
out (``threshold_sample``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from scorebank.core.errors import InvalidArgumentError

#: Mixed into the seed so the threshold samples are drawn on a stream of their own, not the
#: label noise's (which ``default_rng(label_noise_seed)`` draws).
STREAM = 0x7A5


def threshold_count(n_examples: int, num_classes: int) -> int:
    """``N // (C + 1)``: how many examples become threshold samples (Pleiss et al. Sec. 3)."""
    return int(n_examples) // (int(num_classes) + 1)


def choose_threshold_samples(n_examples: int, num_classes: int, seed: int) -> np.ndarray:
    """``(N,)`` bool: the threshold samples, ``N // (C + 1)`` examples drawn uniformly at
    random without replacement by ``np.random.default_rng([seed, STREAM])``."""
    mask = np.zeros(int(n_examples), dtype=bool)
    m = threshold_count(n_examples, num_classes)
    if m > 0:
        rng = np.random.default_rng([int(seed), STREAM])
        mask[rng.choice(int(n_examples), size=m, replace=False)] = True
    return mask


def threshold_mask(config, n_examples: int, num_classes: int) -> np.ndarray | None:
    """The threshold samples ``config`` asks for, or None without ``threshold_samples``."""
    flag = getattr(config, "threshold_samples", False)
    if not isinstance(flag, bool):
        raise InvalidArgumentError(f"--threshold-samples is a flag (true or false), got {flag!r}")
    if not flag:
        return None
    return choose_threshold_samples(n_examples, num_classes, config.label_noise_seed)


def assign_fake_class(labels: np.ndarray, mask: np.ndarray | None, num_classes: int) -> np.ndarray:
    """The training labels with the threshold samples (``mask``) moved to the fake class
    ``num_classes`` (a copy; ``labels`` unchanged)."""
    out = np.asarray(labels, dtype=np.int64).copy()
    if mask is not None:
        out[mask] = int(num_classes)
    return out


def with_fake_class(device_data, mask: np.ndarray | None):
    """``device_data`` (a :class:`~scorebank.pipeline.training.DeviceData` whose labels already
    hold the fake class) with ``num_classes`` one larger when there are threshold samples, so
    the model gets the fake class's output."""
    if mask is None:
        return device_data
    return dataclasses.replace(device_data, num_classes=device_data.num_classes + 1)


def fake_class_name(class_names) -> str:
    """A name for the fake class that no real class has: ``threshold``, else ``threshold-2``, ..."""
    names, k, name = set(class_names), 1, "threshold"
    while name in names:
        k += 1
        name = f"threshold-{k}"
    return name
