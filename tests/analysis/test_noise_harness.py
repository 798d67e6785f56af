"""The label-noise harness (analyze noise): ROC AUC, average precision, precision and recall at
the noise rate per score, checked against scikit-learn and by hand; the ROC/PR curves."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve as sk_pr, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc

from scorebank.analysis.noise import average_precision, noise_detection, precision_recall_curve, roc_curve
from scorebank.stores import schema as S


@pytest.mark.parametrize("ties", [True, False])
def test_metrics_match_sklearn_on_random_scores(ties):
    rng = np.random.default_rng(5)
    for _ in range(30):
        n = int(rng.integers(5, 120))
        y = rng.random(n) < 0.25
        if y.all() or not y.any():
            continue
        h = rng.integers(0, 4, n).astype(float) if ties else rng.normal(size=n)
        assert average_precision(h, y) == pytest.approx(average_precision_score(y, h), abs=1e-12)
        fpr, tpr = roc_curve(h, y)
        want_fpr, want_tpr, _ = sk_roc(y, h, drop_intermediate=False)
        np.testing.assert_allclose(fpr, want_fpr)
        np.testing.assert_allclose(tpr, want_tpr)
        precision, recall = precision_recall_curve(h, y)
        sk_p, sk_r, _ = sk_pr(y, h, drop_intermediate=False)
        np.testing.assert_allclose(precision[::-1], sk_p[:-1])  # sklearn: lowest threshold first, then (1, 0)
        np.testing.assert_allclose(recall[::-1], sk_r[:-1])


def test_harness_on_a_store(make_store):
    st = make_store(n=60, label_noise=0.2, seed=4)
    corrupted = st[S.CORRUPTED]
    got = noise_detection(st.path, ["el2n@3", "margin@3", "aum@3"])
    for spec, values, sign in (("el2n@3", st[S.EL2N][:, 3], 1), ("margin@3", st[S.MARGIN][:, 3], -1),
                               ("aum@3", st[S.TRAIN_MARGIN][:, 1:4].astype(np.float64).mean(1), -1)):
        hardness = sign * values.astype(np.float64).mean(0)
        row = got.sel(score=spec)
        assert float(row["roc_auc"]) == pytest.approx(roc_auc_score(corrupted, hardness), abs=1e-12)
        assert float(row["average_precision"]) == pytest.approx(average_precision_score(corrupted, hardness),
                                                                abs=1e-12)
        top = sorted(range(60), key=lambda i: (-hardness[i], i))[:12]
        flagged = np.zeros(60, bool)
        flagged[top] = True
        assert float(row["precision_at_noise_rate"]) == pytest.approx((flagged & corrupted).sum() / flagged.sum())
        assert float(row["recall_at_noise_rate"]) == pytest.approx((flagged & corrupted).sum() / corrupted.sum())
        np.testing.assert_allclose(row["hardness"].values, hardness)


def test_cli_noise_json_and_plot(make_store, tmp_path):
    import json

    from typer.testing import CliRunner

    from scorebank.cli.main import app

    st = make_store(n=60, label_noise=0.2, seed=4)
    png = tmp_path / "noise.png"
    result = CliRunner().invoke(app, ["analyze", str(st.path), "noise", "el2n@3", "aum@3", "--json",
                                      "--plot", str(png)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    ref = noise_detection(st.path, ["el2n@3", "aum@3"])
    assert [r["score"] for r in doc["scores"]] == ["el2n@3", "aum@3"]
    for r in doc["scores"]:
        for key in ("roc_auc", "average_precision", "precision_at_noise_rate", "recall_at_noise_rate"):
            assert r[key] == float(ref[key].sel(score=r["score"]))
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
