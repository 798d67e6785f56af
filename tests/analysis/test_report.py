"""The report page: helpers against straightforward references (sklearn's ROC, sorting by
hand), sections present exactly when the store has what they need, every <img> a written
PNG, and every text from the store HTML-escaped."""

import warnings
from html.parser import HTMLParser

import numpy as np
import zarr
from sklearn.metrics import roc_curve as sk_roc_curve

from scorebank.analysis import report as R
from scorebank.stores import schema as S


class Page(HTMLParser):
    def __init__(self, text):
        super().__init__()
        self.imgs, self.headings, self._h, self.text = [], [], None, []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])
        if tag in ("h2", "h3"):
            self._h = []

    def handle_endtag(self, tag):
        if tag in ("h2", "h3") and self._h is not None:
            self.headings.append("".join(self._h))
            self._h = None

    def handle_data(self, data):
        self.text.append(data)
        if self._h is not None:
            self._h.append(data)


def test_roc_curve_matches_sklearn():
    rng = np.random.default_rng(0)
    hard = np.round(rng.normal(size=300), 1)  # many ties
    pos = rng.random(300) < 0.3
    fpr, tpr = R.roc_curve(hard, pos)
    sk_fpr, sk_tpr, _ = sk_roc_curve(pos, hard, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


def test_extreme_examples_by_hand():
    rng = np.random.default_rng(1)
    scores = np.round(rng.random(50), 1)
    labels = rng.integers(0, 3, 50)
    got = R.extreme_examples(scores, labels, 4)
    for c in range(3):
        members = [i for i in range(50) if labels[i] == c]
        low = sorted(members, key=lambda i: (scores[i], i))[:4]
        high = sorted(members, key=lambda i: (-scores[i], i))[:4]
        assert got[c][0].tolist() == low and got[c][1].tolist() == high


def test_early_epoch_and_flatten():
    assert R.early_epoch(np.arange(201)) == 20
    assert R.early_epoch(np.array([0, 1, 2, 5, 10, 20, 50])) == 5
    assert R.early_epoch(np.array([0, 3])) == 3
    assert R.flatten({"a": {"b": 1.23456, "c": [1, 2]}, "d": list(range(20)), "e": None}) == [
        ("a.b", "1.235"), ("a.c", "1, 2"), ("e", "null")]


def set_attrs(path, **attrs):
    """Change root attributes of a built store (and its consolidated copy)."""
    group = zarr.open_group(path, mode="r+", zarr_format=3, use_consolidated=False)
    group.attrs.update(attrs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(path, zarr_format=3)


def sections(page_path):
    page = Page(page_path.read_text())
    for src in page.imgs:
        assert (page_path.parent / src).is_file() and (page_path.parent / src).read_bytes()[:4] == b"\x89PNG"
    return page


def test_sections_follow_what_the_store_has(make_store, tmp_path):
    plain = make_store(label_noise=0.0)
    page = sections(R.write_report(tmp_path / "a", {"plain": R.StoreInputs(str(plain.path))}))
    assert "Finding the corrupted labels" not in page.headings
    assert "Pruning curves" not in page.headings and "Sliding window" not in page.headings
    assert {"Training curves", "Margin distributions over epochs", "Forgetting events", "Spearman correlations",
            "Smallest-margin set overlap against the epoch"} <= set(page.headings)
    assert not any(h.startswith("Lowest and highest") for h in page.headings)  # no images given

    noisy = make_store(label_noise=0.3, n=60)
    images = np.random.default_rng(0).integers(0, 255, (60, 1, 8, 8), dtype=np.uint8)
    rows = (R.RetrainCurveRow("c-keep-0.5", "keep-highest", "el2n@1", 0.5, None, (0.5, 0.6, 0.7), 0.8),
            R.RetrainCurveRow("c-rand-0.5", "random", None, 0.5, None, (0.6,), 0.8),
            R.RetrainCurveRow("w-0.1", "window", "el2n@1", 0.4, 0.1, (0.55, 0.65), 0.8))
    page = sections(R.write_report(tmp_path / "b", {"noisy": R.StoreInputs(str(noisy.path), rows, lambda: images)}))
    assert {"Training curves: pristine and corrupt examples", "Finding the corrupted labels", "Pruning curves",
            "Sliding window", "Lowest and highest el2n@1 per class"} <= set(page.headings)
    text = " ".join(page.text)
    # the keep-highest cell: mean 60.0, band 16-84 of (0.5, 0.6, 0.7) by numpy's percentiles
    p16, p84 = np.percentile([0.5, 0.6, 0.7], [16, 84])
    assert f"{100 * p16:.1f}-{100 * p84:.1f}" in text and "-20.0" in text


def test_missing_images_are_a_skipped_section(make_store, tmp_path):
    store = make_store(n=40)
    page = R.write_report(tmp_path / "r", {"s": R.StoreInputs(str(store.path), (), lambda: np.zeros((7, 1, 2, 2),
                                                                                                  np.uint8))})
    assert "image grids: the data set gives 7 images, the store has 40 examples" in page.read_text()


def test_text_from_the_store_and_results_is_escaped(make_store, tmp_path):
    store = make_store(classes=3, n=30)
    evil = "<script>alert(1)</script>"
    set_attrs(store.path, **{S.ATTR_CLASS_NAMES: [evil, "b&c", "<img src=x onerror=alert(2)>"],
                             S.ATTR_DATASET: evil})
    images = np.zeros((30, 3, 4, 4), np.uint8)
    rows = (R.RetrainCurveRow(evil, "keep-highest", evil, 0.5, None, (0.5,), 0.6),)
    results = {"experiment": {"name": evil, "title": evil, "reproduces": evil},
               "published": {evil: evil}, "stages": {evil: {"results": {evil: evil}}}}
    page = R.write_report(tmp_path / "e", {evil: R.StoreInputs(str(store.path), rows, lambda: images)},
                          results=results)
    text = page.read_text()
    assert "<script" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert set(Page(text).imgs) == {p.name for p in page.parent.glob("*.png")}


def test_store_without_completed_runs(make_store, tmp_path):
    store = make_store(seeds=(0,), statuses={0: S.RUN_RUNNING})
    page = R.write_report(tmp_path / "n", {"s": R.StoreInputs(str(store.path))})
    assert "every figure: the store has no completed run" in page.read_text()
    assert Page(page.read_text()).imgs == []
