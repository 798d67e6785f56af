"""Data sets from outside scorebank: ``npz:PATH`` and a user's ``package.module:function``."""

from __future__ import annotations

import hashlib
import textwrap
import uuid

import numpy as np
import pytest

from scorebank.pipeline.datasets import ImageData, load_dataset
from scorebank.stores.errors import DataNotFoundError, InvalidArgumentError

RNG = np.random.default_rng(0)
LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])


def uint8_fingerprint(images_nchw, labels) -> str:
    """The data set fingerprint as the module docstring defines it, for uint8 images."""
    h = hashlib.sha256(b"scorebank-dataset-v1")
    h.update(np.asarray(images_nchw.shape, dtype="<i8").tobytes())
    h.update(np.arange(len(labels), dtype="<i8").tobytes())
    h.update(np.asarray(labels, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(images_nchw, dtype=np.uint8).tobytes())
    return "sha256:" + h.hexdigest()


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_images_in_every_layout(tmp_path, layout):
    nchw = RNG.integers(0, 256, (10, 3 if layout != "NHW" else 1, 6, 5), dtype=np.uint8)
    given = {"NHW": nchw[:, 0], "NHWC": nchw.transpose(0, 2, 3, 1), "NCHW": nchw}[layout]
    np.savez(tmp_path / "d.npz", x_train=given, y_train=LABELS, x_test=given[:4], y_test=LABELS[:4],
             class_names=np.array(["cat", "dog", "emu"]))
    d = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    np.testing.assert_array_equal(d.train_images, nchw)
    np.testing.assert_array_equal(d.test_images, nchw[:4])
    assert d.train_labels.dtype == np.int64 and d.train_labels.tolist() == LABELS.tolist()
    assert d.class_names == ("cat", "dog", "emu") and d.name == "npz:d.npz"
    assert d.fingerprint == uint8_fingerprint(nchw, LABELS)


def test_npz_float_features_and_their_fingerprint(tmp_path):
    x = RNG.normal(size=(10, 7))
    np.savez(tmp_path / "f.npz", x_train=x, y_train=LABELS, x_test=x[:3], y_test=LABELS[:3])
    d = load_dataset(f"npz:{tmp_path / 'f.npz'}", limit=6)
    assert d.train_images.dtype == np.float64 and d.train_images.shape == (6, 7, 1, 1)
    assert d.class_names == ("0", "1", "2")
    kept = d.original_index
    np.testing.assert_array_equal(d.train_images[:, :, 0, 0], x[kept])
    same = load_dataset(f"npz:{tmp_path / 'f.npz'}", limit=6)
    assert same.fingerprint == d.fingerprint
    x2 = x.copy()
    x2[kept[0], 0] += 1e-3  # one feature of one kept example
    np.savez(tmp_path / "g.npz", x_train=x2, y_train=LABELS, x_test=x[:3], y_test=LABELS[:3])
    assert load_dataset(f"npz:{tmp_path / 'g.npz'}", limit=6).fingerprint != d.fingerprint


def test_float_features_train_standardised_per_feature(tmp_path):
    from scorebank.pipeline.training import to_device_data
    import torch

    x = RNG.normal(3.0, 2.0, size=(10, 4))
    np.savez(tmp_path / "f.npz", x_train=x, y_train=LABELS, x_test=x[:3], y_test=LABELS[:3])
    d = load_dataset(f"npz:{tmp_path / 'f.npz'}")
    dd = to_device_data(d, d.train_labels, torch.device("cpu"))
    np.testing.assert_array_equal(d.train_images[:, :, 0, 0], x)  # the data itself is left as it was
    x32 = x.astype(np.float32)
    expected = (x32 - x32.mean(0)) / x32.std(0)
    np.testing.assert_allclose(dd.train_x[:, :, 0, 0].numpy(), expected, rtol=1e-4, atol=1e-5)


def save(path, **arrays):
    base = dict(x_train=np.zeros((4, 4, 4), np.uint8), y_train=np.array([0, 1, 0, 1]),
                x_test=np.zeros((2, 4, 4), np.uint8), y_test=np.array([0, 1]))
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return f"npz:{path}"


@pytest.mark.parametrize("arrays, message", [
    (dict(y_test=None), r"has no 'y_test'; it needs x_train, y_train, x_test, y_test"),
    (dict(x_train=np.zeros((4, 4, 4), np.int64)), r"'x_train' is int64 with shape \(4, 4, 4\); give uint8 images"),
    (dict(x_train=np.zeros((4, 9, 9, 9), np.uint8)), r"images need at most 4 channels"),
    (dict(x_train=np.zeros((4, 5)), x_test=np.zeros((2, 5))), None),
    (dict(x_test=np.zeros((2, 5, 4), np.uint8)), r"x_train examples are uint8 \(1, 4, 4\) but x_test's are uint8 \(1, 5, 4\)"),
    (dict(y_train=np.array([0, 1, 0])), r"'y_train' is int64 with shape \(3,\); give \(4,\) integer labels"),
    (dict(y_train=np.array([0.0, 1.0, 0.0, 1.0])), r"'y_train' is float64"),
    (dict(y_train=np.array([0, -1, 0, 1])), r"'y_train' holds label -1"),
    (dict(x_train=np.array([[np.nan]] * 4), x_test=np.zeros((2, 1))), r"'x_train' holds non-finite values"),
    (dict(y_train=np.zeros(4, np.int64), y_test=np.zeros(2, np.int64)), r"the labels name 1 class"),
    (dict(class_names=np.array(["a"])), r"class_names is <U1 with shape \(1,\); give at least 2 strings"),
])
def test_npz_refusals_are_one_line(tmp_path, arrays, message):
    name = save(tmp_path / "bad.npz", **arrays)
    if message is None:  # float features with their float test set: accepted
        assert load_dataset(name).train_images.shape == (4, 5, 1, 1)
        return
    with pytest.raises(InvalidArgumentError, match=message) as err:
        load_dataset(name)
    assert "\n" not in str(err.value) and "bad.npz" in str(err.value)


def test_npz_never_unpickles_and_names_what_it_is(tmp_path):
    np.savez(tmp_path / "obj.npz", x_train=np.array([{"a": 1}] * 4, dtype=object))
    with pytest.raises(InvalidArgumentError, match="pickled .*scorebank never unpickles"):
        load_dataset(f"npz:{tmp_path / 'obj.npz'}")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(InvalidArgumentError, match=r"is a single .npy array, not an .npz"):
        load_dataset(f"npz:{tmp_path / 'one.npy'}")
    with pytest.raises(DataNotFoundError, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'none.npz'}")


@pytest.fixture
def user_data(tmp_path, monkeypatch):
    name = f"user_data_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        import types
        import numpy as np

        X = np.arange(6 * 16, dtype=np.uint8).reshape(6, 4, 4)
        Y = np.array([0, 1, 0, 1, 0, 1])

        def as_dict():
            return {"x_train": X, "y_train": Y, "x_test": X[:2], "y_test": Y[:2]}

        def as_object():
            return types.SimpleNamespace(x_train=X, y_train=Y, x_test=X[:2], y_test=Y[:2])

        def missing():
            return {"x_train": X}

        def needs_args(root):
            return as_dict()

        def raises():
            raise OSError("disk gone")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_user_data_function_dict_or_object(user_data):
    a = load_dataset(f"{user_data}:as_dict")
    b = load_dataset(f"{user_data}:as_object")
    expected = np.arange(6 * 16, dtype=np.uint8).reshape(6, 1, 4, 4)
    for d in (a, b):
        np.testing.assert_array_equal(d.train_images, expected)
        assert d.fingerprint == uint8_fingerprint(expected, [0, 1, 0, 1, 0, 1])
    from scorebank.pipeline.config import resolve_config

    assert resolve_config(dataset=f"{user_data}:as_dict").dataset == f"{user_data}:as_dict"


@pytest.mark.parametrize("function, message", [
    ("missing", r"has no 'y_train', 'x_test', 'y_test'; it needs x_train, y_train, x_test, y_test"),
    ("needs_args", r"needs_args\(root\) cannot be called as \(\)"),
    ("raises", r"raised OSError: disk gone"),
    ("nothing_here", r"has no attribute 'nothing_here'"),
])
def test_user_data_function_refusals(user_data, function, message):
    with pytest.raises(InvalidArgumentError, match=message):
        load_dataset(f"{user_data}:{function}")


def test_image_data_fingerprint_of_uint8_is_unchanged():
    images = RNG.integers(0, 256, (5, 1, 3, 3), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1, 1])
    assert ImageData("x", images, labels, images, labels, ("a", "b")).fingerprint == uint8_fingerprint(images, labels)
