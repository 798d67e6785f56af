import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from scorebank.pipeline.datasets import (ImageData, apply_label_noise, load_dataset, load_imagefolder,
                                         take_limit)
from scorebank.stores.errors import DataNotFoundError, InvalidArgumentError

# ../shared/data beside the project root (CIFAR-10 JPEG zip); tests using it skip when absent
SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")


def test_digits_fixed_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_dataset("digits")
    raw = load_digits()
    tr, te = train_test_split(np.arange(1797), test_size=0.2, stratify=raw.target, random_state=0)
    assert d.train_images.shape == (1437, 1, 8, 8) and d.test_images.shape == (360, 1, 8, 8)
    np.testing.assert_array_equal(d.original_index, np.sort(tr))
    np.testing.assert_array_equal(d.test_labels, raw.target[np.sort(te)])
    i = 17
    expected = np.rint(raw.images[d.original_index[i]] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(d.train_images[i, 0], expected)
    assert d.fingerprint == load_dataset("digits").fingerprint


def test_limit_is_class_stratified_first_n():
    d = load_dataset("digits")
    sub = take_limit(d, 95)
    counts = np.bincount(sub.train_labels, minlength=10)
    assert counts.sum() == 95
    share = np.bincount(d.train_labels) * 95 / len(d.train_labels)
    assert np.all(np.abs(counts - share) < 1)
    for c in range(10):  # the first k_c examples of class c, in order
        first = np.flatnonzero(d.train_labels == c)[: counts[c]]
        np.testing.assert_array_equal(sub.original_index[sub.train_labels == c], d.original_index[first])
    assert np.all(np.diff(sub.original_index) > 0)
    for bad in (0, 1438, -3, 2.5):
        with pytest.raises(InvalidArgumentError, match="--limit"):
            take_limit(d, bad)


def test_fingerprint_sees_order_labels_and_pixels():
    d = take_limit(load_dataset("digits"), 50)
    base = d.fingerprint
    px = d.train_images.copy()
    px[3, 0, 2, 2] ^= 1
    labels = d.train_labels.copy()
    labels[0] = (labels[0] + 1) % 10
    order = np.r_[1, 0, 2:50]
    variants = [
        ImageData(d.name, px, d.train_labels, d.test_images, d.test_labels, d.class_names, d.original_index),
        ImageData(d.name, d.train_images, labels, d.test_images, d.test_labels, d.class_names, d.original_index),
        ImageData(d.name, d.train_images[order], d.train_labels[order], d.test_images, d.test_labels,
                  d.class_names, d.original_index[order]),
    ]
    assert len({base, *(v.fingerprint for v in variants)}) == 4


def test_label_noise_permutes_a_seeded_fraction():
    y = np.repeat(np.arange(10), 100)
    noisy, corrupted = apply_label_noise(y, 0.3, seed=7)
    np.testing.assert_array_equal(np.bincount(noisy), np.bincount(y))  # label statistics kept
    np.testing.assert_array_equal(corrupted, noisy != y)
    # the permuted set has exactly round(0.3 * N) members; a few drew their own label back
    assert 0.25 * len(y) < corrupted.sum() <= 0.3 * len(y)
    again, _ = apply_label_noise(y, 0.3, seed=7)
    np.testing.assert_array_equal(again, noisy)
    other, _ = apply_label_noise(y, 0.3, seed=8)
    assert not np.array_equal(other, noisy)
    clean, none = apply_label_noise(y, 0.0, seed=7)
    np.testing.assert_array_equal(clean, y)
    assert not none.any()
    rand, c1 = apply_label_noise(y, 1.0, seed=0)  # random labels: ~90% corrupted with 10 classes
    assert 0.85 < c1.mean() < 0.95
    with pytest.raises(InvalidArgumentError, match="--label-noise"):
        apply_label_noise(y, 1.2, seed=0)


def _write_tree(root, sizes=(6, 6), classes=("cat", "ant", "bee"), n=3):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            os.makedirs(root / split / c, exist_ok=True)
            for i in range(n if split == "train" else 1):
                Image.fromarray(rng.integers(0, 255, (*sizes, 3), dtype=np.uint8)).save(root / split / c / f"{i:02d}.png")


def test_imagefolder_directory_and_zip(tmp_path):
    tree = tmp_path / "tree"
    _write_tree(tree)
    d = load_imagefolder(tree, cache_dir=tmp_path / "cache")
    assert d.class_names == ("ant", "bee", "cat")
    assert d.train_images.shape == (9, 3, 6, 6) and d.test_images.shape == (3, 3, 6, 6)
    np.testing.assert_array_equal(d.train_labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])  # sorted path order
    expected = np.asarray(Image.open(tree / "train" / "bee" / "01.png")).transpose(2, 0, 1)
    np.testing.assert_array_equal(d.train_images[4], expected)
    z = tmp_path / "tree.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in sorted(tree.rglob("*.png")):
            zf.write(f, "wrapped/" + f.relative_to(tree).as_posix())
    dz = load_dataset(f"imagefolder:{z}", data_dir=tmp_path / "cache")
    np.testing.assert_array_equal(dz.train_images, d.train_images)
    assert dz.fingerprint == d.fingerprint
    assert list((tmp_path / "cache").glob("imagefolder-*.npz"))  # decoded arrays cached
    cached = load_dataset(f"imagefolder:{z}", data_dir=tmp_path / "cache")
    assert cached.fingerprint == d.fingerprint


def test_imagefolder_cache_sees_changes_below_the_top_directory(tmp_path):
    tree = tmp_path / "tree"
    _write_tree(tree)
    first = load_imagefolder(tree, cache_dir=tmp_path / "cache")
    top_mtime = os.stat(tree).st_mtime_ns
    Image.fromarray(np.zeros((6, 6, 3), dtype=np.uint8)).save(tree / "train" / "bee" / "01.png")  # same size
    os.utime(tree / "train" / "bee" / "01.png", ns=(1, 1))
    assert os.stat(tree).st_mtime_ns == top_mtime  # the top directory did not change
    again = load_imagefolder(tree, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.train_images[4], np.zeros((3, 6, 6), dtype=np.uint8))
    assert again.fingerprint != first.fingerprint
    np.testing.assert_array_equal(again.train_images[:4], first.train_images[:4])


def test_imagefolder_refusals(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_imagefolder(tmp_path / "missing")
    _write_tree(tmp_path / "mixed")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "mixed" / "train" / "ant" / "zz.png")
    with pytest.raises(InvalidArgumentError, match="differ in size"):
        load_imagefolder(tmp_path / "mixed", cache_dir=tmp_path)
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(InvalidArgumentError, match="train/"):
        load_imagefolder(tmp_path / "flat", cache_dir=tmp_path)


def test_unknown_and_missing_datasets(tmp_path):
    with pytest.raises(InvalidArgumentError, match="unknown data set 'svhn'"):
        load_dataset("svhn")
    with pytest.raises(DataNotFoundError, match="--download"):
        load_dataset("cifar10", data_dir=tmp_path / "nothing", download=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="cifar10"):
        load_dataset("cifar10", data_dir=tmp_path / "empty", download=False)


@pytest.mark.skipif(not os.path.exists(os.path.join(SHARED_DATA, "cifar10-jpeg.zip")),
                    reason="shared CIFAR-10 zip not present")
def test_real_cifar10_jpeg_zip_subset(tmp_path):
    """The real JPEG path, on 4 train and 2 test images per class of the shared zip."""
    src = os.path.join(SHARED_DATA, "cifar10-jpeg.zip")
    small = tmp_path / "cifar-small.zip"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(small, "w") as zout:
        for name in zin.namelist():
            parts = name.split("/")
            if len(parts) == 3 and parts[2].endswith(".jpg") and int(parts[2][:4]) < (4 if parts[0] == "train" else 2):
                zout.writestr(name, zin.read(name))
    d = load_dataset(f"imagefolder:{small}", data_dir=tmp_path)
    assert d.class_names == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert d.train_images.shape == (40, 3, 32, 32) and d.test_images.shape == (20, 3, 32, 32)
    np.testing.assert_array_equal(np.bincount(d.train_labels), [4] * 10)
    with zipfile.ZipFile(src) as z:
        expected = np.asarray(Image.open(z.open("train/bird/0002.jpg")).convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(d.train_images[2 * 4 + 2], expected)


def test_dataset_registry_texts():
    from scorebank.pipeline.datasets import DATASETS

    assert DATASETS.choices() == ("digits, cifar10, cifar100, mnist, fashion-mnist, imagefolder:PATH, npz:PATH or "
                                  "package.module:FUNCTION")
    assert "imagefolder:PATH: " in DATASETS.help_text() and "digits: " in DATASETS.help_text()
    assert "imagefolder:/data/x.zip" in DATASETS and "imagefolder:" not in DATASETS and "svhn" not in DATASETS
    with pytest.raises(InvalidArgumentError, match="--dataset takes digits, cifar10, cifar100, mnist, "
                                                   "fashion-mnist, imagefolder:PATH, npz:PATH or "
                                                   "package.module:FUNCTION"):
        load_dataset("imagefolder:")


def test_adding_a_dataset_is_one_entry(monkeypatch):
    from scorebank.pipeline.config import resolve_config
    from scorebank.pipeline.datasets import DATASETS

    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))  # restored after the test
    images = np.arange(4 * 16, dtype=np.uint8).reshape(4, 1, 4, 4)

    @DATASETS.register("toy", help="four 4x4 images")
    def _toy(argument, data_dir, download):
        return ImageData("toy", images, np.array([0, 1, 0, 1]), images[:2], np.array([0, 1]), ("a", "b"))

    assert resolve_config(dataset="toy").dataset == "toy"
    assert load_dataset("toy", limit=2).train_labels.tolist() == [0, 1]


def test_failed_download_says_so_and_cleans_up(tmp_path, monkeypatch):
    """No network: torchvision's download raises URLError for every mirror; the error says the
    download failed and how to provide the files, and the folders it created are removed."""
    from urllib.error import URLError

    import torchvision.datasets.mnist as tv_mnist

    from scorebank.pipeline.datasets import DataDownloadError

    def offline(url, download_root, **kwargs):
        os.makedirs(download_root, exist_ok=True)
        open(os.path.join(download_root, "train-images-idx3-ubyte.gz.part"), "wb").close()
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline)
    root = tmp_path / "data"
    with pytest.raises(DataDownloadError) as info:
        load_dataset("mnist", data_dir=root)
    message = str(info.value)
    assert message.startswith(f"could not download mnist into {str(root)!r} (Error downloading")
    assert "Temporary failure in name resolution" in message and "no network?" in message
    assert "--data-dir" in message and "pass --download" not in message and "\n" not in message
    assert not root.exists()  # MNIST/raw and the data directory it made are gone

    root.mkdir()
    (root / "mine.txt").write_text("kept")
    with pytest.raises(DataDownloadError):
        load_dataset("mnist", data_dir=root)
    assert [p.name for p in root.iterdir()] == ["mine.txt"]  # what was there before stays
