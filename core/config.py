"""Training/scoring configuration: one frozen dataclass, resolved and validated once
(:func:`scorebank.pipeline.config.resolve_config`, which knows the registries), saved as JSON
in the store's attrs and read back typed (:meth:`ScoreConfig.from_json`) by every layer.

The dataclass's field defaults are the one set of defaults: the CLI's options take theirs
from :data:`DEFAULTS`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import re
from dataclasses import dataclass, field

from scorebank.core.errors import InvalidArgumentError

# Optional store features a configuration enables (scorebank.stores.schema re-exports them).
FEATURE_GRAND = "grand"
FEATURE_LABEL_NOISE = "label_noise"
FEATURE_THRESHOLD_SAMPLES = "threshold_samples"

# Fields that do not change what is computed, so they may differ between invocations on
# the same store.
NON_IDENTITY_FIELDS = frozenset({"data_dir", "download", "compile"})

#: Training precisions (``--precision``): fp32, or bf16 autocast for the training forward and
#: backward passes (the clean pass, test evaluation and GraNd stay float32).
PRECISIONS = ("fp32", "bf16")


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


#: Largest seed accepted (retraining adds an offset of 10**6 to it; every seed fits int64).
MAX_SEED = 2**31 - 1
#: Most runs one seed list may name.
MAX_SEEDS = 100_000


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0-9"``, ``"0,3,5"`` or ``"0-3,7"`` -> sorted unique seeds (integers 0..MAX_SEED).

    Each range is bounded before it is expanded: at most :data:`MAX_SEEDS` seeds in all."""
    seeds: set[int] = set()
    for part in (text or "").split(","):
        m = re.fullmatch(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", part)
        if m and max(len(g) for g in m.groups("")) > len(str(MAX_SEED)):  # int() of 5000 digits fails
            raise InvalidArgumentError(f"seed list {text!r} names a seed above {MAX_SEED}; seeds go up to {MAX_SEED}")
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise InvalidArgumentError(
                f"bad seed list {text!r}; use non-negative integers and ranges like 0-9 or 0,3,5-7")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi > MAX_SEED:
            raise InvalidArgumentError(f"seed list {text!r} names seed {hi!r}; seeds go up to {MAX_SEED}")
        if hi - lo + 1 + len(seeds) > MAX_SEEDS:
            raise InvalidArgumentError(
                f"seed list {text!r} names more than {MAX_SEEDS} runs; give at most {MAX_SEEDS} seeds")
        seeds.update(range(lo, hi + 1))
    return tuple(sorted(seeds))


#: Upper bounds of the integer options, so an absurd value is refused before anything is
#: allocated (each message states its bound).
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 1_000_000
MAX_WIDTH = 16_384
MAX_LIMIT = 100_000_000
MAX_CLIP_COUNT = MAX_BATCH_SIZE // 2


def check_seeds(seeds, example: str = "0-2") -> tuple[int, ...]:
    """Seeds given as a sequence (the library's callers): a non-empty tuple of integers in
    0..:data:`MAX_SEED`, at most :data:`MAX_SEEDS` of them, in the given order."""
    out = tuple(seeds)
    if not out:
        raise InvalidArgumentError(f"no seeds given; pass e.g. --seeds {example}")
    bad = [s for s in out if isinstance(s, bool) or not isinstance(s, numbers.Integral) or not 0 <= s <= MAX_SEED]
    if bad:
        raise InvalidArgumentError(f"seed {bad[0]!r} is not an integer in 0..{MAX_SEED}")
    if len(out) > MAX_SEEDS:
        raise InvalidArgumentError(f"{len(out)} seeds given; at most {MAX_SEEDS}")
    return tuple(int(s) for s in out)


def parse_epoch_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise InvalidArgumentError(f"bad {option} {text!r}; give comma-separated epochs like 0,1,2,5,10") from None
    if not values or min(values) < 0:
        raise InvalidArgumentError(f"bad {option} {text!r}; give comma-separated non-negative epochs")
    return tuple(sorted(set(values)))


def parse_flip_map(text: str) -> dict[int, int]:
    """``"0:1,1:2,2:0"`` -> ``{0: 1, 1: 2, 2: 0}``: class-conditional label flips (a label y
    with an entry becomes map[y]); classes are integers >= 0, each source at most once, never
    mapped to itself."""
    bad = (f"bad --flip-map {text!r}; give comma-separated SOURCE:TARGET class pairs, each source once and "
           "different from its target, e.g. 0:1,1:2,2:0")
    out: dict[int, int] = {}
    for part in (text or "").split(","):
        m = re.fullmatch(r"\s*([0-9]{1,9})\s*:\s*([0-9]{1,9})\s*", part)
        if not m:
            raise InvalidArgumentError(bad)
        a, b = int(m.group(1)), int(m.group(2))
        if a == b or a in out:
            raise InvalidArgumentError(bad)
        out[a] = b
    return out


#: Field metadata key marking what a run records (epoch lists), as opposed to how it trains:
#: networks that only train (retrain, easy-hard) clear these fields (:func:`recording_fields`).
RECORDING = "recording"

#: Field metadata key marking a field added after stores were first written: while at its
#: default it is left out of :meth:`ScoreConfig.to_json` and :meth:`ScoreConfig.identity`, so
#: every configuration that predates it keeps its stored text and identity hash.
ADDED_LATER = "added_later"


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
    epochs: int = 20
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "constant"
    augment: bool = False
    record_epochs: tuple[int, ...] = field(default=(), metadata={RECORDING: True})  # clean-pass epochs
    grand_epochs: tuple[int, ...] = field(default=(), metadata={RECORDING: True})
    eval_batch_size: int = 1024
    cifar_stem: bool = field(default=False, metadata={ADDED_LATER: True})  # torchvision ResNets: 3x3 stem
    label_noise_kind: str = field(default="uniform", metadata={ADDED_LATER: True})  # LABEL_NOISE_KINDS entry
    flip_map: str = field(default="", metadata={ADDED_LATER: True})  # flip noise: "0:1,1:2,..." (y -> map[y])
    # fp32, or bf16 autocast for the training passes (every stored score from float32 logits)
    precision: str = field(default="fp32", metadata={ADDED_LATER: True})
    compile: bool = field(default=False, metadata={ADDED_LATER: True})  # torch.compile the training forward
    # AUM's threshold samples (Pleiss et al. 2020): N // (C+1) seeded examples moved to a fake class C
    threshold_samples: bool = field(default=False, metadata={ADDED_LATER: True})

    # ---------------------------------------------------------------- derived
    @property
    def parsed_schedule(self) -> Schedule:
        return Schedule.parse(self.schedule)

    def _fields(self) -> dict:
        """``asdict`` without the :data:`ADDED_LATER` fields that are at their default."""
        late = {f.name: f.default for f in dataclasses.fields(self) if f.metadata.get(ADDED_LATER)}
        return {k: v for k, v in dataclasses.asdict(self).items() if not (k in late and v == late[k])}

    def to_json(self) -> str:
        return json.dumps(self._fields(), sort_keys=True)

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
        return {k: v for k, v in self._fields().items() if k not in NON_IDENTITY_FIELDS}

    def identity_hash(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def differences(self, other: "ScoreConfig") -> dict[str, tuple]:
        a, b = self.identity(), other.identity()  # an ADDED_LATER field at its default is absent from one
        return {k: (getattr(self, k), getattr(other, k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}

    def describe_differences(self, other: "ScoreConfig", mine: str = "store has", theirs: str = "asked") -> str:
        """``"epochs: store has 20, asked 50; record_epochs: store has 0..20 (21), asked 0..50 (51)"``:
        the differing identity fields, long lists shortened by :func:`short_value`."""
        return "; ".join(f"{k}: {mine} {short_value(a)}, {theirs} {short_value(b)}"
                         for k, (a, b) in self.differences(other).items())

    @property
    def features(self) -> frozenset[str]:
        out = set()
        if self.grand_epochs:
            out.add(FEATURE_GRAND)
        if self.label_noise > 0:
            out.add(FEATURE_LABEL_NOISE)
        if self.threshold_samples:
            out.add(FEATURE_THRESHOLD_SAMPLES)
        return frozenset(out)


def short_value(value) -> str:
    """A configuration value for a message: ``repr`` for scalars and short lists; a list or
    tuple of more than 6 integers as ``0..20 (21)`` when consecutive, else
    ``0,1,2,...,50 (21)``."""
    if isinstance(value, (list, tuple)) and len(value) > 6:
        items = list(value)
        if all(_int(v) for v in items):
            if items == list(range(items[0], items[0] + len(items))):
                return f"{items[0]}..{items[-1]} ({len(items)})"
            return f"{','.join(map(str, items[:3]))},...,{items[-1]} ({len(items)})"
        return f"{len(items)} values starting {items[:3]!r}"
    return repr(value)


def recording_fields() -> frozenset[str]:
    """The :class:`ScoreConfig` fields that say what is recorded (metadata :data:`RECORDING`)."""
    return frozenset(f.name for f in dataclasses.fields(ScoreConfig) if f.metadata.get(RECORDING))


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


#: The default of every configuration field (what the CLI's options default to).
DEFAULTS = ScoreConfig()
