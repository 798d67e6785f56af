import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from scorebank.analysis import noise_detection
from scorebank.stores import schema as S
from scorebank.stores.errors import ScorebankError


def test_auc_and_precision_match_sklearn_and_sorting(make_store):
    st = make_store(n=60, label_noise=0.2, seed=2)
    corrupted = st[S.CORRUPTED]
    assert corrupted.sum() == 12
    got = noise_detection(st.path, ["el2n@3", "margin@3"])
    assert got["n_corrupted"].item() == 12 and got["noise_rate"].item() == pytest.approx(0.2)
    for spec, var, sign in (("el2n@3", S.EL2N, 1), ("margin@3", S.MARGIN, -1)):
        score = st[var][:, 3].astype(np.float64).mean(0)
        hardness = sign * score
        assert float(got["roc_auc"].sel(score=spec)) == pytest.approx(roc_auc_score(corrupted, hardness), abs=1e-12)
        top = sorted(range(60), key=lambda i: (-hardness[i], i))[:12]
        assert float(got["precision_at_noise_rate"].sel(score=spec)) == pytest.approx(corrupted[top].mean())


def test_needs_corrupted_examples(store):
    with pytest.raises(ScorebankError, match="0 corrupted of 40"):
        noise_detection(store.path, "el2n@1")
