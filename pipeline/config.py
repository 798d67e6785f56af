"""Training/scoring configuration: one frozen dataclass, resolved and validated once, and
saved as JSON in the store's attrs for provenance."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field

from scorebank.pipeline.datasets import DATASETS
from scorebank.pipeline.models import MODELS
from scorebank.pipeline.robust import OPTIMIZERS
from scorebank.stores.errors import InvalidArgumentError

# Fields that do not change what is computed, so they may differ between invocations on
# the same store.
NON_IDENTITY_FIELDS = frozenset({"data_dir", "download"})


@dataclass(frozen=True)
class Schedule:
    """Learning-rate schedule over epochs: ``constant`` or ``multistep:E1,E2,...:FACTOR``.

    With multistep the learning rate of (1-based) epoch e is ``lr * FACTOR**k`` where k is
    the number of milestones E_i with E_i < e, i.e. it drops after epoch E_i completes
    (torch's MultiStepLR convention)."""

    kind: str = "constant"
    milestones: tuple[int, ...] = ()
    factor: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "Schedule":
        if text == "constant":
            return cls()
        m = re.fullmatch(r"multistep:([0-9]+(?:,[0-9]+)*):([0-9.eE+-]+)", text or "")
        bad = InvalidArgumentError(
            f"bad --schedule {text!r}; use 'constant' or 'multistep:E1,E2,...:FACTOR' "
            "with increasing positive epochs and FACTOR > 0, e.g. multistep:60,120,160:0.2")
        if not m:
            raise bad
        milestones = tuple(int(x) for x in m.group(1).split(","))
        try:
            factor = float(m.group(2))
        except ValueError:
            raise bad from None
        if (not math.isfinite(factor) or factor <= 0 or milestones[0] < 1
                or any(b <= a for a, b in zip(milestones, milestones[1:]))):
            raise bad
        return cls("multistep", milestones, factor)

    def __str__(self) -> str:
        if self.kind == "constant":
            return "constant"
        return f"multistep:{','.join(map(str, self.milestones))}:{self.factor:g}"

    def lr_at(self, base_lr: float, epoch: int) -> float:
        """Learning rate used during (1-based) ``epoch``."""
        k = sum(1 for e in self.milestones if e < epoch)
        return base_lr * self.factor ** k


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0-9"``, ``"0,3,5"`` or ``"0-3,7"`` -> sorted unique seeds (non-negative ints)."""
    seeds: list[int] = []
    for part in (text or "").split(","):
        m = re.fullmatch(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise InvalidArgumentError(
                f"bad seed list {text!r}; use non-negative integers and ranges like 0-9 or 0,3,5-7")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        seeds.extend(range(lo, hi + 1))
    if len(seeds) > 100_000:
        raise InvalidArgumentError(f"seed list {text!r} names {len(seeds)} runs; at most 100000")
    return tuple(sorted(set(seeds)))


def parse_epoch_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise InvalidArgumentError(f"bad {option} {text!r}; give comma-separated epochs like 0,1,2,5,10") from None
    if not values or min(values) < 0:
        raise InvalidArgumentError(f"bad {option} {text!r}; give comma-separated non-negative epochs")
    return tuple(sorted(set(values)))


@dataclass(frozen=True)
class ScoreConfig:
    """Everything that determines a scoring run's values, except the seed.

    Build it with :func:`resolve_config` (validates every field)."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = True
    limit: int | None = None
    label_noise: float = 0.0
    label_noise_seed: int = 0
    model: str = "mlp"
    batchnorm: bool = True
    init_std: float | None = None
    width: int | None = None
    optimizer: str = "sgd"
    clip_count: int = 0
    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "constant"
    augment: bool = False
    record_epochs: tuple[int, ...] = field(default=())  # clean-pass epochs
    grand_epochs: tuple[int, ...] = field(default=())
    eval_batch_size: int = 1024

    # ---------------------------------------------------------------- derived
    @property
    def parsed_schedule(self) -> Schedule:
        return Schedule.parse(self.schedule)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ScoreConfig":
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        raw = {k: v for k, v in raw.items() if k in known}
        for k in ("record_epochs", "grand_epochs"):
            if k in raw:
                raw[k] = tuple(raw[k])
        return cls(**raw)

    def identity(self) -> dict:
        """The fields that must match for two invocations to write into one store."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in NON_IDENTITY_FIELDS}

    def identity_hash(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def differences(self, other: "ScoreConfig") -> dict[str, tuple]:
        a, b = self.identity(), other.identity()
        return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}

    @property
    def features(self) -> frozenset[str]:
        from scorebank.stores import schema as S

        out = set()
        if self.grand_epochs:
            out.add(S.FEATURE_GRAND)
        if self.label_noise > 0:
            out.add(S.FEATURE_LABEL_NOISE)
        return frozenset(out)


def resolve_config(*, record_every: int | None = None, record_epochs: str | tuple[int, ...] | None = None,
                   grand_epochs: str | tuple[int, ...] | None = None, **fields) -> ScoreConfig:
    """Validate user-facing values and build a :class:`ScoreConfig`.

    ``record_every=K`` records the clean pass at epochs 0, K, 2K, ... and the last epoch;
    ``record_epochs`` lists them explicitly; neither means every epoch."""
    cfg = ScoreConfig(**fields)
    _check(cfg.dataset in DATASETS[:-1] or (cfg.dataset.startswith("imagefolder:") and len(cfg.dataset) > 12),
           f"unknown data set {cfg.dataset!r}; choose one of {', '.join(DATASETS)}")
    _check(cfg.model in MODELS, f"unknown model {cfg.model!r}; choose one of {', '.join(MODELS)}")
    _check(cfg.optimizer in OPTIMIZERS,
           f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    _check(_int(cfg.epochs) and 0 <= cfg.epochs <= 100_000, f"--epochs must be an integer >= 0, got {cfg.epochs!r}")
    _check(_int(cfg.batch_size) and cfg.batch_size >= 1, f"--batch-size must be an integer >= 1, got {cfg.batch_size!r}")
    _check(_int(cfg.eval_batch_size) and cfg.eval_batch_size >= 1,
           f"--eval-batch-size must be an integer >= 1, got {cfg.eval_batch_size!r}")
    check_sgd_settings(cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay)
    _check(math.isfinite(cfg.label_noise) and 0 <= cfg.label_noise <= 1,
           f"--label-noise must be a fraction in [0, 1], got {cfg.label_noise!r}")
    _check(cfg.limit is None or (_int(cfg.limit) and cfg.limit >= 1), f"--limit must be an integer >= 1, got {cfg.limit!r}")
    _check(cfg.init_std is None or (math.isfinite(cfg.init_std) and cfg.init_std > 0),
           f"--init-std must be a positive number, got {cfg.init_std!r}")
    _check(cfg.width is None or (_int(cfg.width) and cfg.width >= 1), f"--width must be an integer >= 1, got {cfg.width!r}")
    _check(_int(cfg.clip_count) and cfg.clip_count >= 0, f"--clip-count must be an integer >= 0, got {cfg.clip_count!r}")
    _check(cfg.optimizer != "m3" or cfg.batch_size % 3 == 0,
           f"--optimizer m3 splits each minibatch into 3 micro-batches: --batch-size must be divisible by 3, got {cfg.batch_size!r}")
    _check(cfg.optimizer == "winsorized" or cfg.clip_count == 0,
           f"--clip-count {cfg.clip_count!r} applies only to --optimizer winsorized, not {cfg.optimizer!r}")
    _check(_int(cfg.label_noise_seed) and cfg.label_noise_seed >= 0,
           f"--label-noise-seed must be an integer >= 0, got {cfg.label_noise_seed!r}")
    _check(cfg.optimizer != "winsorized" or 2 * (cfg.clip_count + 1) <= cfg.batch_size,
           f"--clip-count {cfg.clip_count!r} clips 2*(s+1) values per coordinate; it needs --batch-size >= {2 * (cfg.clip_count + 1)}")
    schedule = Schedule.parse(cfg.schedule)

    if record_every is not None and record_epochs is not None:
        raise InvalidArgumentError("give either --record-every or --record-epochs, not both")
    if record_every is not None:
        _check(_int(record_every) and record_every >= 1, f"--record-every must be an integer >= 1, got {record_every!r}")
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


def check_sgd_settings(lr: float, momentum: float, nesterov: bool, weight_decay: float) -> None:
    """Validate the SGD hyperparameters every training command shares (InvalidArgumentError)."""
    _check(_real(lr) and math.isfinite(lr) and lr > 0, f"--lr must be a positive number, got {lr!r}")
    _check(_real(momentum) and math.isfinite(momentum) and 0 <= momentum < 1,
           f"--momentum must be in [0, 1), got {momentum!r}")
    _check(not nesterov or momentum > 0, f"--nesterov needs --momentum > 0, got --momentum {momentum!r}")
    _check(_real(weight_decay) and math.isfinite(weight_decay) and weight_decay >= 0,
           f"--weight-decay must be >= 0, got {weight_decay!r}")


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidArgumentError(message)
