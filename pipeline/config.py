"""Resolving a :class:`~scorebank.core.config.ScoreConfig` from user-facing values: the
validation that needs the registries (data set kinds, models, optimizers).  The dataclass
itself and the registry-free parsers live in :mod:`scorebank.core.config` and are
re-exported here."""

from __future__ import annotations

import dataclasses
import math

from scorebank.core.config import (DEFAULTS, MAX_BATCH_SIZE, MAX_CLIP_COUNT, MAX_EPOCHS,  # noqa: F401
                                   MAX_LIMIT, MAX_SEED, MAX_WIDTH, NON_IDENTITY_FIELDS, PRECISIONS, Schedule,
                                   ScoreConfig, _check, _int, _real, check_seeds, check_sgd_settings,
                                   parse_epoch_list, parse_flip_map, parse_seeds)
from scorebank.core.errors import InvalidArgumentError
from scorebank.pipeline.datasets import DATASETS, LABEL_NOISE_KINDS
from scorebank.pipeline.models import MODELS, check_cifar_stem, model_builder
from scorebank.pipeline.robust import OPTIMIZERS, make_estimator


def resolve_config(*, record_every: int | None = None, record_epochs: str | tuple[int, ...] | None = None,
                   grand_epochs: str | tuple[int, ...] | None = None, **fields) -> ScoreConfig:
    """Validate user-facing values and build a :class:`ScoreConfig`.

    ``record_every=K`` records the clean pass at epochs 0, K, 2K, ... and the last epoch;
    ``record_epochs`` lists them explicitly; neither means every epoch."""
    cfg = ScoreConfig(**fields)
    _check(isinstance(cfg.dataset, str) and cfg.dataset in DATASETS,
           f"unknown data set {cfg.dataset!r}; --dataset takes {DATASETS.choices()}")
    _check(isinstance(cfg.model, str) and cfg.model in MODELS,
           f"unknown model {cfg.model!r}; --model takes {MODELS.choices()}")
    model_builder(cfg.model)  # torchvision:NAME and package.module:factory: the name, import and signature
    _check(isinstance(cfg.cifar_stem, bool), f"--cifar-stem must be true or false, got {cfg.cifar_stem!r}")
    _check(isinstance(cfg.threshold_samples, bool),
           f"--threshold-samples must be true or false, got {cfg.threshold_samples!r}")
    if cfg.cifar_stem:
        check_cifar_stem(cfg.model)
    _check(isinstance(cfg.optimizer, str) and cfg.optimizer in OPTIMIZERS,
           f"unknown optimizer {cfg.optimizer!r}; --optimizer takes {OPTIMIZERS.choices()}")
    _check(_int(cfg.epochs) and 0 <= cfg.epochs <= MAX_EPOCHS,
           f"--epochs must be an integer >= 0, got {cfg.epochs!r}; the maximum is {MAX_EPOCHS}")
    _check(_int(cfg.batch_size) and 1 <= cfg.batch_size <= MAX_BATCH_SIZE,
           f"--batch-size must be an integer >= 1, got {cfg.batch_size!r}; the maximum is {MAX_BATCH_SIZE}")
    _check(_int(cfg.eval_batch_size) and 1 <= cfg.eval_batch_size <= MAX_BATCH_SIZE,
           f"--eval-batch-size must be an integer >= 1, got {cfg.eval_batch_size!r}; the maximum is {MAX_BATCH_SIZE}")
    check_sgd_settings(cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay)
    _check(_real(cfg.label_noise) and math.isfinite(cfg.label_noise) and 0 <= cfg.label_noise <= 1,
           f"--label-noise must be a fraction in [0, 1], got {cfg.label_noise!r}")
    _check(cfg.limit is None or (_int(cfg.limit) and 1 <= cfg.limit <= MAX_LIMIT),
           f"--limit must be an integer >= 1, got {cfg.limit!r}; the maximum is {MAX_LIMIT}")
    _check(cfg.init_std is None or (_real(cfg.init_std) and math.isfinite(cfg.init_std) and cfg.init_std > 0),
           f"--init-std must be a positive number, got {cfg.init_std!r}")
    _check(cfg.width is None or (_int(cfg.width) and 1 <= cfg.width <= MAX_WIDTH),
           f"--width must be an integer >= 1, got {cfg.width!r}; the maximum is {MAX_WIDTH}")
    _check(_int(cfg.clip_count) and 0 <= cfg.clip_count <= MAX_CLIP_COUNT,
           f"--clip-count must be an integer >= 0, got {cfg.clip_count!r}; the maximum is {MAX_CLIP_COUNT}")
    _check(cfg.optimizer != "m3" or cfg.batch_size % 3 == 0,
           f"--optimizer m3 splits each minibatch into 3 micro-batches: --batch-size must be divisible by 3, got {cfg.batch_size!r}")
    takers = " or ".join(e.name for e in OPTIMIZERS.entries() if e.value.clip_count)
    _check(OPTIMIZERS.get(cfg.optimizer).clip_count or cfg.clip_count == 0,
           f"--clip-count {cfg.clip_count!r} applies only to --optimizer {takers}, not {cfg.optimizer!r}")
    _check(isinstance(cfg.label_noise_kind, str) and cfg.label_noise_kind in LABEL_NOISE_KINDS,
           f"unknown label noise kind {cfg.label_noise_kind!r}; --label-noise-kind takes {LABEL_NOISE_KINDS.choices()}")
    _check(isinstance(cfg.flip_map, str) and (cfg.flip_map == "") == (cfg.label_noise_kind != "flip"),
           f"--flip-map {cfg.flip_map!r} goes with --label-noise-kind flip (and flip needs one, e.g. 0:1,1:2), "
           f"got --label-noise-kind {cfg.label_noise_kind!r}")
    if cfg.flip_map:
        parse_flip_map(cfg.flip_map)
    _check(_int(cfg.label_noise_seed) and 0 <= cfg.label_noise_seed <= MAX_SEED,
           f"--label-noise-seed must be an integer >= 0, got {cfg.label_noise_seed!r}; the maximum is {MAX_SEED}")
    _check(cfg.optimizer != "winsorized" or 2 * (cfg.clip_count + 1) <= cfg.batch_size,
           f"--clip-count {cfg.clip_count!r} clips 2*(s+1) values per coordinate; it needs --batch-size >= {2 * (cfg.clip_count + 1)}")
    make_estimator(cfg.optimizer, batch_size=cfg.batch_size, clip_count=cfg.clip_count)  # the entry's own checks
    _check(cfg.precision in PRECISIONS, f"unknown --precision {cfg.precision!r}; choose {' or '.join(PRECISIONS)}")
    _check(isinstance(cfg.compile, bool), f"--compile is a flag, got {cfg.compile!r}")
    schedule = Schedule.parse(cfg.schedule)

    if record_every is not None and record_epochs is not None:
        raise InvalidArgumentError("give either --record-every or --record-epochs, not both")
    if record_every is not None:
        _check(_int(record_every) and 1 <= record_every <= MAX_EPOCHS,
               f"--record-every must be an integer >= 1, got {record_every!r}; the maximum is {MAX_EPOCHS}")
        rec = tuple(sorted(set(range(0, cfg.epochs + 1, record_every)) | {cfg.epochs}))
    elif record_epochs is not None:
        rec = parse_epoch_list(record_epochs, "--record-epochs") if isinstance(record_epochs, str) else tuple(sorted(set(record_epochs)))
    elif cfg.record_epochs:
        rec = tuple(sorted(set(cfg.record_epochs)))
    else:
        rec = tuple(range(cfg.epochs + 1))
    _check(all(0 <= e <= cfg.epochs for e in rec),
           f"--record-epochs {','.join(map(str, rec))!r} names epochs outside 0..{cfg.epochs} (--epochs {cfg.epochs})")
    if grand_epochs is None:
        gr = tuple(sorted(set(cfg.grand_epochs)))
    else:
        gr = parse_epoch_list(grand_epochs, "--grand-epochs") if isinstance(grand_epochs, str) else tuple(sorted(set(grand_epochs)))
    _check(all(0 <= e <= cfg.epochs for e in gr),
           f"--grand-epochs {','.join(map(str, gr))!r} names epochs outside 0..{cfg.epochs} (--epochs {cfg.epochs})")
    return dataclasses.replace(cfg, record_epochs=rec, grand_epochs=gr, schedule=str(schedule))
