"""The score store's schema, declared once.

Every module reads variable, dimension and attribute names from here.  A store is one
Zarr v3 group that ``xarray.open_zarr(path)`` opens as a Dataset with dimensions

``run``
    one training run; the coordinate value is the run's seed.
``epoch``
    0 = at initialisation, before any update; ``e`` = after ``e`` full epochs.
``example``
    position in the data set's fixed, documented order (see
    :mod:`scorebank.pipeline.datasets`); the ``original_index`` coordinate gives the index
    in the source data set when a ``--limit`` subset was taken.

Float variables read NaN where nothing was recorded (yet), never 0.  Boolean variables
cannot hold NaN: read them together with ``recorded`` (clean-pass variables) or
``completed`` (``train_correct``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scorebank.core.config import FEATURE_GRAND as _FEATURE_GRAND
from scorebank.core.config import FEATURE_LABEL_NOISE as _FEATURE_LABEL_NOISE
from scorebank.core.config import FEATURE_THRESHOLD_SAMPLES as _FEATURE_THRESHOLD_SAMPLES

# ---------------------------------------------------------------- dimensions
RUN = "run"
EPOCH = "epoch"
EXAMPLE = "example"
ORIGINAL_INDEX = "original_index"

# ---------------------------------------------------------------- variables
MARGIN = "margin"
EL2N = "el2n"
LOSS = "loss"
CORRECT = "correct"
TRAIN_CORRECT = "train_correct"
TRAIN_MARGIN = "train_margin"
GRAND = "grand"
NORM_PRODUCT = "norm_product"
TRAIN_ACCURACY = "train_accuracy"
TRAIN_LOSS = "train_loss"
TEST_ACCURACY = "test_accuracy"
TEST_LOSS = "test_loss"
PRISTINE_ACCURACY = "pristine_accuracy"
PRISTINE_LOSS = "pristine_loss"
CORRUPT_ACCURACY = "corrupt_accuracy"
CORRUPT_LOSS = "corrupt_loss"
COMPLETED = "completed"
RECORDED = "recorded"
LABEL = "label"
TRUE_LABEL = "true_label"
CORRUPTED = "corrupted"
INPUT_NORM = "input_norm"
THRESHOLD_SAMPLE = "threshold_sample"

# ---------------------------------------------------------------- provenance coordinates
# Coordinates on ``run`` that merged stores (:mod:`scorebank.stores.merge`) carry.
SEED = "seed"  # int64: the training seed (== run unless renumbered)
SOURCE = "source"  # string: name of the store or archive the run came from
SOURCE_CREATOR = "source_creator"  # string: creator recorded in the source archive ('' if none)
CONFIG_HASH = "config_hash"  # string: identity hash of the run's configuration
RUN_COORDS = (SEED, SOURCE, SOURCE_CREATOR, CONFIG_HASH)
#: their Zarr v3 data types
RUN_COORD_DTYPES = {SEED: "int64", SOURCE: "string", SOURCE_CREATOR: "string", CONFIG_HASH: "string"}

# ---------------------------------------------------------------- format versions
# Two integers describe a store's format, so that old readers keep opening new stores:
#
# ``scorebank_writer_format`` (ATTR_WRITER_FORMAT)
#     the format the writer wrote, FORMAT_VERSION at the time: which variables the store
#     has (every Variable with ``since`` <= it, and its features').  Absent in format-1 stores
#     (read as their ``scorebank_format``).
# ``scorebank_format`` (ATTR_FORMAT)
#     the OLDEST reader format that reads the store correctly, READER_FORMAT at the time.
#     Every release since the first refuses a store whose ``scorebank_format`` is newer than
#     the formats it reads ("upgrade scorebank"), and opens the rest.
#
# The rule for changing the format:
# * adding a variable (with ``since=FORMAT_VERSION + 1``), group or attribute that older
#   readers can ignore: bump FORMAT_VERSION only.  Older readers open the new stores and see
#   the variables they know (tests/stores/test_previous_release.py checks this against the
#   first release's reader); newer readers open older stores and treat the newer variables as
#   absent (:func:`scorebank.stores.location.require_variables`).
# * anything an older reader would misread or refuse (a changed dtype or dimension of an
#   existing variable, a removed variable, a new feature name - readers check ``features``
#   against the names they know): bump FORMAT_VERSION and set READER_FORMAT to it.
ATTR_FORMAT = "scorebank_format"  # the oldest reader format that reads the store
ATTR_WRITER_FORMAT = "scorebank_writer_format"  # the format the store was written in
FORMAT_VERSION = 2  # the format this version writes; it reads every store whose ATTR_FORMAT <= this
READER_FORMAT = 1  # written as ATTR_FORMAT: the oldest reader format that reads what we write
MIN_FORMAT = 1  # the oldest format this version reads (every format ever written)

# ---------------------------------------------------------------- attributes
ATTR_VERSION = "scorebank_version"
ATTR_CONFIG = "config"
ATTR_DATASET = "dataset"
ATTR_FINGERPRINT = "dataset_fingerprint"
ATTR_CLASS_NAMES = "class_names"
ATTR_CREATED = "created"
ATTR_STORE_ID = "store_id"  # random hex id of this store, new at every creation (a replaced store has another)
ATTR_RUNS = "runs"  # {str(seed): {"status": ..., "failed_epoch": ..., "reason": ...}}
ATTR_FEATURES = "features"  # sorted list of the optional features the store enabled
ATTR_SOURCES = "sources"  # merged stores: one provenance entry per source (scorebank.stores.merge)

RUN_PENDING = "pending"
RUN_RUNNING = "running"
RUN_COMPLETE = "complete"
RUN_FAILED = "failed"
RUN_INTERRUPTED = "interrupted"  # the writer stopped (Ctrl-C) or its owner is gone; resumable

# ---------------------------------------------------------------- groups / folders
MANIFESTS_GROUP = "manifests"
RETRAIN_GROUP = "retrain"
COMPRESS_GROUP = "compress"
CHECKPOINT_DIR = "checkpoints"  # torch checkpoints, one file per run; not part of the Zarr hierarchy
LOCK_FILE = ".scorebank.lock"

# Optional features: a variable with a feature exists only in stores that enabled it.
FEATURE_GRAND = _FEATURE_GRAND
FEATURE_LABEL_NOISE = _FEATURE_LABEL_NOISE
# AUM's threshold samples: a feature, so stores scored without them are laid out as before
# (previous releases open them) and only stores scored with them carry ``threshold_sample``;
# readers that do not know the feature refuse those stores instead of misreading the fake class.
FEATURE_THRESHOLD_SAMPLES = _FEATURE_THRESHOLD_SAMPLES
FEATURES = frozenset({FEATURE_GRAND, FEATURE_LABEL_NOISE, FEATURE_THRESHOLD_SAMPLES})

#: Examples per chunk along ``example`` in newly written stores (readers take each store's
#: chunks from its metadata, so stores written with another size stay readable).  Chosen by
#: :func:`scorebank.analysis.chunk_bench.chunk_costs` on one float32 variable of 4 runs x 22
#: epochs x 1,281,167 examples (CPU seconds on 2 loaded cores; 2^14 / 2^16 / 2^17 / 2^18):
#: one epoch written 0.085 / 0.039 / 0.020 / 0.018, one example's trajectory read
#: 0.038 / 0.033 / 0.063 / 0.107, one epoch read 0.155 / 0.037 / 0.040 / 0.030, the whole
#: variable read 4.0 / 1.5 / 1.4 / 1.1.  2^16 (256 KiB of float32) is the smallest size whose
#: epoch reads and writes and full scans cost within 1.2-2.2x of the largest, while a
#: trajectory read stays as cheap as with small chunks (larger chunks make it 2-3x dearer,
#: and it grows with runs x epochs).
PER_EXAMPLE_CHUNK = 1 << 16

# ---------------------------------------------------------------- codecs
# The Zarr v3 codec chains (``zarr.json`` form) every array is written with, through
# :func:`scorebank.stores.arrays.create_array`.  They are what zarr 3 wrote by default when the
# first release wrote format 1, spelled out so stores stay byte-identical whatever zarr's
# defaults become: numbers and booleans as little-endian bytes (zarr drops ``endian`` for
# one-byte types), strings as variable-length UTF-8, each chunk compressed by zstd level 0
# without checksum.  The readers' whitelist (:data:`scorebank.stores.location.ALLOWED_CODECS`)
# must accept every codec named here.
ZSTD = {"name": "zstd", "configuration": {"level": 0, "checksum": False}}
CODECS: dict[str, tuple[dict, ...]] = {
    "numeric": ({"name": "bytes", "configuration": {"endian": "little"}}, ZSTD),
    "string": ({"name": "vlen-utf8", "configuration": {}}, ZSTD),
}


def is_string_dtype(dtype) -> bool:
    """True for the text data types (``str``, numpy unicode/``StringDType``/object)."""
    return dtype is str or np.dtype(dtype).kind in "OTU"


def codecs_for(dtype) -> tuple[dict, ...]:
    """The codec chain (serializer first, then compressors) arrays of ``dtype`` are written with."""
    return CODECS["string" if is_string_dtype(dtype) else "numeric"]


def fill_value_for(dtype):
    """The value an array of ``dtype`` reads where nothing was written: NaN for floats (never
    0), False for booleans, '' for strings, 0 otherwise."""
    if is_string_dtype(dtype):
        return ""
    kind = np.dtype(dtype).kind
    if kind == "f":
        return np.nan
    if kind == "b":
        return False
    return 0


@dataclass(frozen=True)
class Variable:
    """One data variable of the store."""

    name: str
    dims: tuple[str, ...]
    dtype: str
    description: str
    units: str = ""
    feature: str | None = None  # the optional feature that gates it (None: every store)
    since: int = 1  # the format version that introduced it; stores of older formats lack it

    @property
    def fill_value(self):
        return fill_value_for(self.dtype)

    @property
    def attrs(self) -> dict:
        out = {"description": self.description}
        if self.units:
            out["units"] = self.units
        return out


def _label_noise_pair(accuracy: str, loss: str, examples: str) -> tuple[Variable, Variable]:
    """The clean-pass accuracy and mean loss on one group of examples of a label-noise store."""
    return (Variable(accuracy, (RUN, EPOCH), "float32", f"clean-pass training accuracy {examples}", "fraction",
                     feature=FEATURE_LABEL_NOISE),
            Variable(loss, (RUN, EPOCH), "float32", f"clean-pass mean cross-entropy {examples}", "nat",
                     feature=FEATURE_LABEL_NOISE))


_REX = (RUN, EPOCH, EXAMPLE)
_RE = (RUN, EPOCH)
_X = (EXAMPLE,)

VARIABLES: tuple[Variable, ...] = (
    Variable(MARGIN, _REX, "float32",
             "classification margin f_y(x) - max_{j != y} f_j(x) on raw logits; clean pass "
             "(BatchNorm in eval mode, no augmentation); y is the training label `label`",
             "logit"),
    Variable(EL2N, _REX, "float32",
             "EL2N error norm ||softmax(f(x)) - onehot(y)||_2 (Data Diet Def. 2.2); clean pass"),
    Variable(LOSS, _REX, "float32", "cross-entropy loss of the example; clean pass", "nat"),
    Variable(CORRECT, _REX, "bool",
             "f_y(x) > max_{j != y} f_j(x), i.e. margin > 0 (a tie counts as wrong); clean pass; "
             "False where `recorded` is False"),
    Variable(TRAIN_CORRECT, _REX, "bool",
             "classified correctly when presented in a minibatch during epoch e (train mode, "
             "augmented input, before that step's update); forgetting events are counted on it; "
             "False at epoch 0 and where `completed` is False"),
    Variable(TRAIN_MARGIN, _REX, "float32",
             "in-flight margin f_y(x) - max_{j != y} f_j(x) on the logits of the training step that "
             "presented the example during epoch e (train mode, augmented input, before that step's "
             "update; the same forward pass as train_correct); AUM (Pleiss et al. 2020) averages it "
             "over epochs; NaN at epoch 0 and where `completed` is False", "logit", since=2),
    Variable(GRAND, _REX, "float32",
             "GraNd: L2 norm of the example's cross-entropy gradient w.r.t. all trainable "
             "parameters (Data Diet Def. 2.1), BatchNorm in eval mode, un-augmented input",
             feature=FEATURE_GRAND),
    Variable(NORM_PRODUCT, _RE, "float64",
             "rho, the product of layer norms the margins paper divides margins by: without "
             "BatchNorm the product of the conv/linear weight Frobenius norms; with BatchNorm "
             "the product of the BatchNorm weight (gamma) norms and the last linear layer's norm"),
    Variable(TRAIN_ACCURACY, _RE, "float32", "accuracy on the training set, clean pass", "fraction"),
    Variable(TRAIN_LOSS, _RE, "float32", "mean cross-entropy on the training set, clean pass", "nat"),
    Variable(TEST_ACCURACY, _RE, "float32", "accuracy on the test set (eval mode)", "fraction"),
    Variable(TEST_LOSS, _RE, "float32", "mean cross-entropy on the test set (eval mode)", "nat"),
    *_label_noise_pair(PRISTINE_ACCURACY, PRISTINE_LOSS, "on examples whose label was not corrupted"),
    *_label_noise_pair(CORRUPT_ACCURACY, CORRUPT_LOSS, "(w.r.t. the corrupted label) on corrupted examples"),
    Variable(COMPLETED, _RE, "bool", "epoch e of this run finished and all its values are written"),
    Variable(RECORDED, _RE, "bool", "the clean pass (margin, el2n, loss, correct) ran at this epoch"),
    Variable(LABEL, _X, "int64", "label used for training (after label noise)"),
    Variable(TRUE_LABEL, _X, "int64", "label in the data set"),
    Variable(CORRUPTED, _X, "bool", "label != true_label (label noise changed it)"),
    Variable(INPUT_NORM, _X, "float32",
             "L2 norm of the example's input as the network sees it: normalised by the training set's "
             "per-channel mean and std, un-augmented; written when the store is created (NaN when the "
             "writer had no images, e.g. an imported or recorder-made store)", since=2),
    Variable(THRESHOLD_SAMPLE, _X, "bool",
             "AUM threshold sample (Pleiss et al. 2020, `score --threshold-samples`): the example was moved to "
             "the fake class C (its `label` is C, one past the data set's classes, so `corrupted` is True); "
             "their AUM's 99th percentile is the cut-off of `analyze aum`",
             feature=FEATURE_THRESHOLD_SAMPLES, since=2),
)

BY_NAME: dict[str, Variable] = {v.name: v for v in VARIABLES}

PER_EXAMPLE_SCORES = (MARGIN, EL2N, LOSS, CORRECT)  # written by the clean pass


def variables(features: frozenset[str] | set[str] = frozenset(),
              format_version: int | None = None) -> tuple[Variable, ...]:
    """The variables a store of ``format_version`` (default: the current FORMAT_VERSION) with
    the given optional features holds, in schema order."""
    version = FORMAT_VERSION if format_version is None else format_version
    return tuple(v for v in VARIABLES
                 if (v.feature is None or v.feature in features) and v.since <= version)


def store_format(attrs) -> int:
    """The format a store (its root attributes) was written in: which variables it has.
    Format-1 stores carry only ``scorebank_format``."""
    return attrs.get(ATTR_WRITER_FORMAT, attrs.get(ATTR_FORMAT, MIN_FORMAT))


def format_attrs() -> dict:
    """The format attributes a writer of this version records in a new store."""
    return {ATTR_FORMAT: READER_FORMAT, ATTR_WRITER_FORMAT: FORMAT_VERSION}


def coordinates() -> dict[str, tuple[tuple[str, ...], str]]:
    """``{name: (dims, dtype)}`` of the coordinate arrays every store has (dimension
    coordinates and ``original_index``)."""
    return {RUN: ((RUN,), "int64"), EPOCH: ((EPOCH,), "int64"), EXAMPLE: ((EXAMPLE,), "int64"),
            ORIGINAL_INDEX: ((EXAMPLE,), "int64")}


def chunks_for(var: Variable, n_epochs: int, n_examples: int) -> tuple[int, ...]:
    """Chunk shape of a variable.

    Per-example arrays get one (run, epoch) slab of up to PER_EXAMPLE_CHUNK examples, so
    writing epoch e touches only epoch e's chunks (O(one epoch of data)); per-(run, epoch)
    arrays get one small chunk per run holding all epochs."""
    sizes = {RUN: 1, EPOCH: 1 if EXAMPLE in var.dims else max(1, n_epochs),
             EXAMPLE: max(1, min(n_examples, PER_EXAMPLE_CHUNK))}
    return tuple(sizes[d] for d in var.dims)
