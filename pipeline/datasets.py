"""Data sets as uint8 image arrays in a fixed, documented example order.

Names accepted by :func:`load_dataset`:

``digits`` (default, embedded)
    scikit-learn's ``load_digits`` (1,797 8x8 grey images, pixel values 0..16 rescaled to
    0..255 as ``round(v * 255 / 16)``).  It ships no split; scorebank's fixed split is
    ``sklearn.model_selection.train_test_split(arange(1797), test_size=0.2,
    stratify=target, random_state=0)``, each part sorted by original index: 1,437 train
    and 360 test examples.  Example order = increasing original index.
``cifar10``, ``cifar100``, ``mnist``, ``fashion-mnist``
    torchvision's loaders (``--data-dir``, downloaded on first use unless
    ``download=False``), canonical order of the official release.
``imagefolder:PATH``
    a class-per-folder tree with ``train/`` and ``test/`` subtrees, as a directory or a
    zip of one (an optional single top-level folder wrapping them is allowed).  Classes
    are the sorted folder names (label ids 0..K-1); example order is sorted path order.
    Decoded arrays are cached as ``.npz`` (no pickle) next to ``data_dir``.
``npz:PATH``
    a NumPy ``.npz`` file (read with ``allow_pickle=False``) holding ``x_train``,
    ``y_train``, ``x_test``, ``y_test`` and optionally ``class_names`` (strings); see
    :func:`arrays_to_data` for the accepted shapes.  Example order = array order.
``package.module:function``
    a user function, imported from ``PYTHONPATH`` and called without arguments, returning
    the same arrays as a dict or as an object with those attributes.

The fingerprint (:attr:`ImageData.fingerprint`) is a sha256 over the training examples'
order (original indices), labels and pixels (or float64 features), so two stores can be
checked to describe the same examples.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scorebank.core.config import parse_flip_map
from scorebank.core.registry import Registry
from scorebank.pipeline.outside import ImportPathRegistry, call_user, load_callable
from scorebank.stores.errors import DataNotFoundError, InvalidArgumentError, ScorebankError

#: Data set kinds by ``--dataset`` name.  An entry is a loader ``(argument, data_dir, download)
#: -> ImageData`` (``argument``: the PATH of ``imagefolder:PATH``, the whole import path of
#: ``package.module:function``, else None); adding a data set is one entry (and a test).
DATASETS: ImportPathRegistry = ImportPathRegistry("data set", "--dataset")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")


@dataclass(frozen=True, eq=False)
class ImageData:
    """A data set with images as uint8 ``(N, C, H, W)`` arrays (or float64 features as
    ``(N, D, 1, 1)``) and int64 labels."""

    name: str
    train_images: np.ndarray  # (N, C, H, W) uint8, or (N, D, 1, 1) float64 features
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray  # (M, C, H, W) uint8, or (M, D, 1, 1) float64
    test_labels: np.ndarray  # (M,) int64
    class_names: tuple[str, ...]
    original_index: np.ndarray = field(default=None)  # (N,) int64, index in the source set

    def __post_init__(self):
        if self.original_index is None:
            object.__setattr__(self, "original_index",
                               np.arange(len(self.train_labels), dtype=np.int64))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.train_images.shape[1:])

    @property
    def fingerprint(self) -> str:
        """sha256 over example order, labels and pixels of the training set."""
        h = hashlib.sha256(b"scorebank-dataset-v1")
        h.update(np.asarray(self.train_images.shape, dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(self.original_index, dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(self.train_labels, dtype="<i8").tobytes())
        if self.train_images.dtype == np.uint8:
            h.update(np.ascontiguousarray(self.train_images, dtype=np.uint8).tobytes())
        else:  # float features: tagged, so no byte string is read both ways
            h.update(b"float64")
            h.update(np.ascontiguousarray(self.train_images, dtype="<f8").tobytes())
        return "sha256:" + h.hexdigest()


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None, download: bool = True,
                 limit: int | None = None) -> ImageData:
    """Load a data set by name (see the module docstring), optionally a ``limit`` subset."""
    entry, argument = DATASETS.lookup(name)
    data = entry.value(argument, data_dir, download)
    return data if limit is None else take_limit(data, limit)


class DataDownloadError(ScorebankError):
    """Downloading a data set failed (no network, server down); exit status 1."""


def _data_root(data_dir) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    return Path(os.environ.get("SCOREBANK_DATA", Path.home() / ".cache" / "scorebank" / "data"))


@DATASETS.register("digits", help="scikit-learn's 8x8 digits, embedded (1,437 train / 360 test)")
def _load_digits(argument=None, data_dir=None, download=True) -> ImageData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    target = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(target)), test_size=0.2,
                                           stratify=target, random_state=0)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return ImageData("digits", images[train_idx], target[train_idx], images[test_idx],
                     target[test_idx], tuple(str(c) for c in bunch.target_names),
                     original_index=train_idx.astype(np.int64))


def _torchvision_set(name: str, class_name: str, help: str) -> None:
    """Register torchvision's ``class_name`` (e.g. ``CIFAR10``) as data set ``name``."""
    def load(argument, data_dir, download) -> ImageData:
        import torchvision.datasets as tvd

        return _load_torchvision(name, getattr(tvd, class_name), _data_root(data_dir), download)

    DATASETS.add(name, load, help=help)


_torchvision_set("cifar10", "CIFAR10", "CIFAR-10 via torchvision (--data-dir, downloaded unless --no-download)")
_torchvision_set("cifar100", "CIFAR100", "CIFAR-100 via torchvision")
_torchvision_set("mnist", "MNIST", "MNIST via torchvision")
_torchvision_set("fashion-mnist", "FashionMNIST", "Fashion-MNIST via torchvision")


@DATASETS.register("imagefolder", prefix=True, metavar="PATH",
                   help="a directory or zip with train/CLASS/ and test/CLASS/ image folders")
def _load_imagefolder_entry(argument, data_dir, download) -> ImageData:
    return load_imagefolder(argument, cache_dir=data_dir)


@DATASETS.register("npz", prefix=True, metavar="PATH",
                   help="a NumPy .npz with x_train, y_train, x_test, y_test (uint8 images or float features), "
                        "no pickle")
def _load_npz_entry(argument, data_dir, download) -> ImageData:
    return load_npz(argument)


@DATASETS.register("package.module", prefix=True, metavar="FUNCTION",
                   help="your function () returning x_train, y_train, x_test, y_test as a dict or object, "
                        "imported from PYTHONPATH")
def _load_function_entry(argument, data_dir, download) -> ImageData:
    function = load_callable(argument, "--dataset", (), "() -> {x_train, y_train, x_test, y_test}")
    result = call_user(function, argument, "--dataset")
    get = result.get if isinstance(result, dict) else (lambda key: getattr(result, key, None))
    return arrays_to_data(argument, {k: get(k) for k in NPZ_KEYS + ("class_names",)}, f"--dataset {argument!r}")


def _load_torchvision(name: str, cls, root: Path, download: bool) -> ImageData:
    if not download and not root.is_dir():
        raise DataNotFoundError(
            f"data directory {str(root)!r} does not exist; pass --download or a --data-dir holding {name}")
    before = set(os.listdir(root)) if root.is_dir() else None
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError) as exc:  # torchvision: "Dataset not found or corrupted." / URLError
        reason = " ".join(str(exc).split())[:300]
        if not download:
            raise DataNotFoundError(
                f"{name} not found under {str(root)!r} ({reason}); pass --download or the right --data-dir") from None
        _remove_created(root, before)
        raise DataDownloadError(
            f"could not download {name} into {str(root)!r} ({reason}; no network?); download it on a machine "
            f"with network access and pass the folder holding it as --data-dir, or try again later") from None

    def arrays(ds):
        x = np.asarray(ds.data)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # (N, C, H, W)
        return np.ascontiguousarray(x, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64)

    (xtr, ytr), (xte, yte) = arrays(train), arrays(test)
    return ImageData(name, xtr, ytr, xte, yte, tuple(train.classes))


def _remove_created(root: Path, before: set[str] | None) -> None:
    """Remove what a failed download created under ``root``: the entries that were not there
    ``before`` (None: ``root`` itself did not exist, and is removed if left empty)."""
    if not root.is_dir():
        return
    for entry in set(os.listdir(root)) - (before or set()):
        target = root / entry
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
    if before is None:
        try:
            root.rmdir()
        except OSError:
            pass


def take_limit(data: ImageData, limit: int) -> ImageData:
    """Class-stratified, seed-independent first-``limit`` subset of the training set.

    Class c gets ``k_c`` examples, proportional to its share (largest-remainder rounding,
    ties to the smaller class id), and contributes its first ``k_c`` examples in the fixed
    order; the subset keeps that order.  The test set is unchanged."""
    n = len(data.train_labels)
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or not 1 <= limit <= n:
        raise InvalidArgumentError(f"--limit must be an integer in 1..{n} for {data.name}, got {limit!r}")
    counts = np.bincount(data.train_labels, minlength=data.num_classes)
    exact = counts * (limit / n)
    take = np.floor(exact).astype(np.int64)
    remainder = exact - take
    order = np.lexsort((np.arange(len(counts)), -remainder))  # largest remainder first
    take[order[: limit - int(take.sum())]] += 1
    keep = np.zeros(n, dtype=bool)
    for c, k in enumerate(take):
        keep[np.flatnonzero(data.train_labels == c)[:k]] = True
    idx = np.flatnonzero(keep)
    return ImageData(data.name, data.train_images[idx], data.train_labels[idx], data.test_images,
                     data.test_labels, data.class_names, original_index=data.original_index[idx])


#: Version of the decoded image-folder cache files; bump it when their contents change.
CACHE_FORMAT = "imagefolder-cache-1"


# ------------------------------------------------------------------ image folders
def load_imagefolder(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> ImageData:
    """Load a class-per-folder tree (directory or zip) with ``train/`` and ``test/`` subtrees."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataNotFoundError(f"image folder {str(path)!r} does not exist; give a directory or a .zip "
                                "with train/<class>/... and test/<class>/...")
    cache = _data_root(cache_dir) / f"imagefolder-{_cache_key(p)}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return ImageData(f"imagefolder:{p.name}", z["xtr"], z["ytr"], z["xte"], z["yte"],
                             tuple(str(c) for c in z["classes"]))
    members = _list_images(p)
    prefix = _split_prefix(members, str(path))
    classes = sorted({m[len(prefix):].split("/")[1] for m in members if m.startswith(prefix + "train/")})
    if not classes:
        raise InvalidArgumentError(f"{str(path)!r} has no images under train/<class>/")
    xtr, ytr = _decode_split(p, members, prefix + "train/", classes, str(path))
    xte, yte = _decode_split(p, members, prefix + "test/", classes, str(path))
    if xtr.shape[1:] != xte.shape[1:]:
        raise InvalidArgumentError(f"train images are {xtr.shape[1:]} but test images {xte.shape[1:]} in {str(path)!r}")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, xtr=xtr, ytr=ytr, xte=xte, yte=yte, classes=np.array(classes))
        os.replace(tmp, cache)
    except OSError:
        pass  # the cache is an optimisation; a read-only location just means decoding again
    return ImageData(f"imagefolder:{p.name}", xtr, ytr, xte, yte, tuple(classes))


def _cache_key(p: Path) -> str:
    """Key of the decoded-array cache: the zip's path, size and mtime, or for a directory
    every image file's relative path, size and mtime (a directory's own mtime misses
    changes below its top level)."""
    parts = [CACHE_FORMAT, str(p.resolve())]
    if p.is_dir():
        for f in sorted(p.rglob("*")):
            if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES):
                st = f.stat()
                parts.append(f"{f.relative_to(p).as_posix()}:{st.st_size}:{st.st_mtime_ns}")
    else:
        st = p.stat()
        parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def _list_images(p: Path) -> list[str]:
    if p.is_dir():
        names = [f.relative_to(p).as_posix() for f in p.rglob("*") if f.is_file()]
    elif zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = [i.filename for i in z.infolist() if not i.is_dir()]
    else:
        raise InvalidArgumentError(f"{str(p)!r} is neither a directory nor a zip file")
    return sorted(n for n in names if n.lower().endswith(IMAGE_SUFFIXES))


def _split_prefix(members: list[str], shown: str) -> str:
    if any(m.startswith("train/") for m in members):
        return ""
    tops = {m.split("/")[0] for m in members if "/" in m}
    for top in sorted(tops):
        if any(m.startswith(f"{top}/train/") for m in members):
            return top + "/"
    raise InvalidArgumentError(f"{shown!r} has no train/ and test/ subtrees of class folders")


def _decode_split(p: Path, members: list[str], prefix: str, classes: list[str], shown: str):
    from PIL import Image

    files = [(m, m[len(prefix):].split("/")[0]) for m in members
             if m.startswith(prefix) and m[len(prefix):].count("/") >= 1]
    if not files:
        raise InvalidArgumentError(f"{shown!r} has no images under {prefix!r}")
    unknown = sorted({c for _, c in files} - set(classes))
    if unknown:
        raise InvalidArgumentError(f"{shown!r}: class folder(s) {unknown!r} under {prefix!r} are not in train/")
    zf = zipfile.ZipFile(p) if p.is_file() else None
    try:
        arrays = []
        for m, _ in files:
            raw = zf.read(m) if zf is not None else (p / m).read_bytes()
            with Image.open(io.BytesIO(raw)) as im:
                a = np.asarray(im.convert("L") if im.mode in ("L", "1", "P", "I;16") else im.convert("RGB"))
            arrays.append(a[:, :, None] if a.ndim == 2 else a)
    finally:
        if zf is not None:
            zf.close()
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise InvalidArgumentError(f"images in {shown!r} differ in size/channels: {sorted(shapes)[:3]!r}; "
                                   "resize them to one size first")
    x = np.stack(arrays).transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    y = np.array([classes.index(c) for _, c in files], dtype=np.int64)
    return np.ascontiguousarray(x), y


# ------------------------------------------------------------------ arrays (npz, user functions)
#: The arrays an ``npz:PATH`` file or a user data function provides (``class_names`` optional).
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str | os.PathLike) -> ImageData:
    """The data set in the ``.npz`` file ``path`` (``allow_pickle=False``: object arrays are
    refused), validated by :func:`arrays_to_data`."""
    p = Path(path).expanduser()
    shown = f"--dataset npz:{os.fspath(path)!r}"
    if not p.is_file():
        raise DataNotFoundError(f"{shown}: no such file; give a .npz holding {', '.join(NPZ_KEYS)}")
    try:
        z = np.load(p, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise InvalidArgumentError(f"{shown} is a single .npy array, not an .npz of {', '.join(NPZ_KEYS)}")
        with z:
            arrays = {k: z[k] for k in NPZ_KEYS + ("class_names",) if k in z.files}
    except InvalidArgumentError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:  # not npz, or object (pickled) arrays
        if "pickle" in str(exc):
            raise InvalidArgumentError(f"{shown} holds pickled (object) data or is no .npz, and scorebank never "
                                       "unpickles; save plain numeric arrays with numpy.savez") from None
        raise InvalidArgumentError(f"{shown} cannot be read as an .npz ({' '.join(str(exc).split())[:200]})") from None
    return arrays_to_data(f"npz:{p.name}", arrays, shown)


def _features_or_images(x, key: str, shown: str) -> np.ndarray:
    """``x`` as uint8 ``(N, C, H, W)`` images or float64 ``(N, D, 1, 1)`` features (float64
    holds float32 and float64 inputs exactly, and the trainer's float32 conversion then copies:
    a float32 array would be normalised in place by ``to_device_data`` on the CPU).

    uint8 ``(N, H, W)`` is one channel; 4-D uint8 is ``(N, C, H, W)`` when axis 1 has at
    most 4 entries, else ``(N, H, W, C)`` when the last axis has at most 4; float ``(N, D)``
    are features (finite float32 values: the network sees float32)."""
    x = np.asarray(x)
    if x.dtype == np.uint8 and x.ndim == 3:
        return np.ascontiguousarray(x[:, None])  # (N, H, W) -> (N, 1, H, W)
    if x.dtype == np.uint8 and x.ndim == 4:
        if x.shape[1] <= 4:
            return np.ascontiguousarray(x)
        if x.shape[3] <= 4:
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (N, H, W, C) -> (N, C, H, W)
        raise InvalidArgumentError(f"{shown}: {key!r} has shape {x.shape!r}; images need at most 4 channels, "
                                   "as (N, C, H, W) or (N, H, W, C)")
    if np.issubdtype(x.dtype, np.floating) and x.ndim == 2:
        if not np.isfinite(x.astype(np.float32)).all():
            raise InvalidArgumentError(f"{shown}: {key!r} holds non-finite values (NaN or inf, or beyond float32)")
        return np.ascontiguousarray(x.astype(np.float64)[:, :, None, None])  # (N, D) -> (N, D, 1, 1)
    raise InvalidArgumentError(f"{shown}: {key!r} is {x.dtype} with shape {x.shape!r}; give uint8 images (N, H, W), "
                               "(N, H, W, C) or (N, C, H, W), or float features (N, D)")


def _labels_array(y, key: str, n: int, shown: str) -> np.ndarray:
    y = np.asarray(y)
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer) or y.shape != (n,):
        raise InvalidArgumentError(f"{shown}: {key!r} is {y.dtype} with shape {y.shape!r}; give ({n},) integer labels")
    if n and y.min() < 0:
        raise InvalidArgumentError(f"{shown}: {key!r} holds label {int(y.min())!r}; labels are 0..K-1")
    return y.astype(np.int64)


def arrays_to_data(name: str, arrays: dict, shown: str) -> ImageData:
    """Validate ``x_train``, ``y_train``, ``x_test``, ``y_test`` (and optional ``class_names``)
    and return them as :class:`ImageData` named ``name``: every failure is one
    :class:`InvalidArgumentError` line naming ``shown`` and the array."""
    missing = [k for k in NPZ_KEYS if arrays.get(k) is None]
    if missing:
        raise InvalidArgumentError(f"{shown} has no {', '.join(map(repr, missing))}; it needs {', '.join(NPZ_KEYS)}")
    xtr = _features_or_images(arrays.get("x_train"), "x_train", shown)
    xte = _features_or_images(arrays.get("x_test"), "x_test", shown)
    if xtr.dtype != xte.dtype or xtr.shape[1:] != xte.shape[1:]:
        raise InvalidArgumentError(f"{shown}: x_train examples are {xtr.dtype} {xtr.shape[1:]!r} but x_test's are "
                                   f"{xte.dtype} {xte.shape[1:]!r}; give both alike")
    if len(xtr) == 0:
        raise InvalidArgumentError(f"{shown}: x_train is empty")
    ytr = _labels_array(arrays.get("y_train"), "y_train", len(xtr), shown)
    yte = _labels_array(arrays.get("y_test"), "y_test", len(xte), shown)
    k = int(max(ytr.max(), yte.max() if len(yte) else 0)) + 1
    names = arrays.get("class_names")
    if names is None:
        classes = tuple(str(c) for c in range(k))
    else:
        names = np.asarray(names)
        if names.ndim != 1 or names.dtype.kind not in "US" or len(names) < k:
            raise InvalidArgumentError(f"{shown}: class_names is {names.dtype} with shape {names.shape!r}; give "
                                       f"at least {k} strings (labels go up to {k - 1})")
        classes = tuple(c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in names.tolist())
    if len(classes) < 2:
        raise InvalidArgumentError(f"{shown}: the labels name {len(classes)} class; a classifier needs at least 2")
    return ImageData(name, xtr, ytr, xte, yte, classes)


# ------------------------------------------------------------------ label noise
def apply_flip_noise(labels: np.ndarray, fraction: float, flip_map: dict[int, int], seed: int,
                     num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-conditional label flips (the AUM and confident-learning papers' asymmetric noise):
    each example independently, with probability ``fraction`` (seeded), has its label y
    replaced by ``flip_map[y]``; classes without an entry keep their labels.

    Returns ``(noisy_labels, corrupted)`` with ``corrupted = noisy_labels != labels``."""
    if not (0.0 <= fraction <= 1.0):
        raise InvalidArgumentError(f"--label-noise must be a fraction in [0, 1], got {fraction!r}")
    outside = sorted(c for pair in flip_map.items() for c in pair if not 0 <= c < num_classes)
    if outside:
        raise InvalidArgumentError(f"--flip-map names class {outside[0]!r}, but the data set has classes "
                                   f"0..{num_classes - 1}")
    labels = np.asarray(labels, dtype=np.int64)
    table = np.arange(max(num_classes, 1), dtype=np.int64)  # class -> its flipped class
    for a, b in flip_map.items():
        table[a] = b
    flip = np.random.default_rng(seed).random(labels.size) < fraction  # (N,) who is flipped
    noisy = np.where(flip, table[labels], labels)
    return noisy, noisy != labels


def _uniform_noise(labels: np.ndarray, config, num_classes: int) -> np.ndarray:
    return apply_label_noise(labels, config.label_noise, config.label_noise_seed)[0]


def _flip_noise(labels: np.ndarray, config, num_classes: int) -> np.ndarray:
    return apply_flip_noise(labels, config.label_noise, parse_flip_map(config.flip_map), config.label_noise_seed,
                            num_classes)[0]


#: How ``--label-noise F`` corrupts labels: ``kind(labels, config, num_classes) -> noisy labels``.
LABEL_NOISE_KINDS: Registry = Registry("label noise kind", "--label-noise-kind")
LABEL_NOISE_KINDS.add("uniform", _uniform_noise,
                      help="a seeded fraction F of the examples get their labels permuted among themselves "
                           "(Data Diet; 1.0 = random labels)")
LABEL_NOISE_KINDS.add("flip", _flip_noise,
                      help="each example's label y becomes map[y] with probability F (class-conditional flips "
                           "given by --flip-map, e.g. 0:1,1:2)")


def noisy_labels(labels: np.ndarray, config, num_classes: int) -> np.ndarray:
    """The training labels under ``config``'s label noise (a copy of ``labels`` without)."""
    if config.label_noise > 0:
        return LABEL_NOISE_KINDS.get(config.label_noise_kind)(labels, config, num_classes)
    return np.asarray(labels, dtype=np.int64).copy()


def apply_label_noise(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Data Diet's label noise: a seeded random ``fraction`` of the examples get their
    labels permuted among themselves, so the label statistics are unchanged.
    ``fraction=1.0`` is the margins paper's random-label experiment.

    Returns ``(noisy_labels, corrupted)`` with ``corrupted = noisy_labels != labels``
    (a selected example that drew its own label back is not counted as corrupted)."""
    if not (0.0 <= fraction <= 1.0):
        raise InvalidArgumentError(f"--label-noise must be a fraction in [0, 1], got {fraction!r}")
    labels = np.asarray(labels, dtype=np.int64)
    noisy = labels.copy()
    m = int(round(fraction * len(labels)))
    if m > 1:
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(labels), size=m, replace=False))
        noisy[chosen] = labels[chosen][rng.permutation(m)]
    return noisy, noisy != labels
