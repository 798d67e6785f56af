import numpy as np
import pytest

from scorebank.analysis import average_score, average_scores, parse_score, run_scores
from scorebank.analysis.scores import ScoreSpec
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError, ScorebankError


def test_parse_score():
    assert parse_score("el2n@20") == ScoreSpec("el2n", 20)
    assert parse_score(" NMargin @ 3 ") == ScoreSpec("nmargin", 3)
    assert parse_score("forgetting") == ScoreSpec("forgetting", None)
    assert str(parse_score("grand@0")) == "grand@0"
    assert parse_score("margin@1").high_is_hard is False
    assert parse_score("loss@1").high_is_hard is True
    with pytest.raises(InvalidArgumentError, match=r"unknown score 'gradnorm@3'.*el2n, grand, loss, margin"):
        parse_score("gradnorm@3")
    with pytest.raises(InvalidArgumentError, match=r"'el2n' needs an epoch: write el2n@E"):
        parse_score("el2n")
    with pytest.raises(InvalidArgumentError, match="negative epoch"):
        parse_score("el2n@-2")


@pytest.mark.parametrize("spec,var", [("el2n@3", S.EL2N), ("margin@6", S.MARGIN), ("loss@0", S.LOSS),
                                      ("grand@0", S.GRAND)])
def test_average_matches_numpy(store, spec, var):
    e = int(spec.split("@")[1])
    expected = store[var][:, e, :].astype(np.float64).mean(axis=0)
    got = average_score(store.path, spec)
    np.testing.assert_allclose(got.values, expected, rtol=1e-12)
    assert got.name == spec
    np.testing.assert_array_equal(got[S.ORIGINAL_INDEX].values, np.arange(40) * 10)
    np.testing.assert_array_equal(got[S.LABEL].values, store[S.LABEL])


def test_nmargin_sum_and_run_subset(store):
    rho = store[S.NORM_PRODUCT][:, 4]
    nm = store[S.MARGIN][:, 4, :].astype(np.float64) / rho[:, None]
    got = average_score(store.path, "nmargin@4", runs=[2, 0], reduce="sum")
    np.testing.assert_allclose(got.values, nm[0] + nm[2], rtol=1e-12)
    per_run = run_scores(store.path, "nmargin@4", runs=[1])
    np.testing.assert_allclose(per_run.values, nm[1:2], rtol=1e-12)
    assert per_run["run"].values.tolist() == [1]


def _forgetting_scores(reference, st, rows, last=None, never="count"):
    """(run, example) forgetting scores by the reference loops, over epochs 1..last."""
    out = []
    for i in rows:
        presented = st[S.COMPLETED][i].copy()
        if last is not None:
            presented[last + 1:] = False
        out.append(reference(st[S.TRAIN_CORRECT][i], presented, never)[3])
    return np.array(out)


def test_several_scores_in_one_pass(store, reference):
    out = average_scores(store.path, ["el2n@1", "forgetting", "forgetting@3"])
    assert list(out.data_vars) == ["el2n@1", "forgetting", "forgetting@3"]
    assert out.attrs["runs"] == [0, 1, 2]
    np.testing.assert_allclose(out["el2n@1"].values, store[S.EL2N][:, 1].astype(np.float64).mean(0), rtol=1e-12)
    every = _forgetting_scores(reference, store, range(3))
    np.testing.assert_allclose(out["forgetting"].values, every.mean(0), rtol=1e-12)
    at3 = _forgetting_scores(reference, store, range(3), 3)
    np.testing.assert_allclose(out["forgetting@3"].values, at3.mean(0), rtol=1e-12)


def test_forgetting_never_learned_inf_and_sum(make_store, reference):
    tc = np.random.default_rng(5).random((3, 7, 30)) < 0.5
    tc[:, 1, 4:] = True  # every other example is learned at epoch 1 ...
    tc[:, :, :3] = False  # ... except three never learned in any run
    tc[0, :, 3] = False  # and one never learned in run 0 only
    tc[1, :4, 4] = False  # run 1: not learned within epochs 1..3 (forgetting@3), but at epoch 5
    tc[1, 5, 4] = True
    st = make_store(n=30, overrides={S.TRAIN_CORRECT: tc}, seed=2)
    for never in ("count", "inf"):
        for reduce in ("mean", "sum"):
            out = average_scores(st.path, ["forgetting", "forgetting@3", "el2n@2"], never_learned=never,
                                 reduce=reduce, runs=[2, 0])
            assert out.attrs["never_learned"] == never and out.attrs["reduce"] == reduce
            for spec, last in (("forgetting", None), ("forgetting@3", 3)):
                per_run = _forgetting_scores(reference, st, [2, 0], last, never)
                want = per_run.sum(0) if reduce == "sum" else per_run.mean(0)
                np.testing.assert_array_equal(out[spec].values, want)
            el2n = st[S.EL2N][[2, 0], 2].astype(np.float64)
            np.testing.assert_allclose(out["el2n@2"].values, el2n.sum(0) if reduce == "sum" else el2n.mean(0),
                                       rtol=1e-12)
    inf = average_scores(st.path, ["forgetting"], never_learned="inf")["forgetting"].values
    assert np.isinf(inf[:4]).all() and np.isfinite(inf[4:]).all()
    at3 = average_scores(st.path, ["forgetting@3"], never_learned="inf")["forgetting@3"].values
    assert np.isinf(at3[:5]).all() and np.isfinite(at3[5:]).all()
    count = average_scores(st.path, ["forgetting"], reduce="sum")["forgetting"].values
    assert count[0] == 3 * 7.0  # 6 presentations + 1, in each of 3 runs


def test_default_runs_are_the_completed_ones(make_store):
    st = make_store(seeds=(0, 1, 2), statuses={0: S.RUN_COMPLETE, 1: S.RUN_RUNNING, 2: S.RUN_COMPLETE})
    got = average_score(st.path, "el2n@2")
    np.testing.assert_allclose(got.values, st[S.EL2N][[0, 2], 2].astype(np.float64).mean(axis=0))
    assert got.attrs["runs"] == [0, 2]


def test_errors(make_store):
    rec = np.ones((2, 7), bool)
    rec[:, [3, 5]] = False
    rec[1, 4] = False
    st = make_store(seeds=(0, 1), recorded=rec, grand_epochs=(0, 2))
    with pytest.raises(InvalidArgumentError, match=r"'el2n@3' is not recorded.*run\(s\) \[0, 1\].*0-2, 6"):
        average_score(st.path, "el2n@3")
    with pytest.raises(InvalidArgumentError, match=r"epoch 9 is not in the store; its epochs are 0-6"):
        average_score(st.path, "loss@9")
    with pytest.raises(InvalidArgumentError, match=r"'grand@1'.*0, 2"):
        average_score(st.path, "grand@1")
    with pytest.raises(InvalidArgumentError, match=r"run\(s\) \[5\] not in the store.*\[0, 1\]"):
        average_score(st.path, "el2n@0", runs=[5])
    with pytest.raises(InvalidArgumentError, match="'median'"):
        average_score(st.path, "el2n@0", reduce="median")
    no_grand = make_store(grand_epochs=())
    with pytest.raises(InvalidArgumentError, match="no GraNd"):
        average_score(no_grand.path, "grand@0")
    pending = make_store(statuses={0: S.RUN_PENDING, 1: S.RUN_FAILED, 2: S.RUN_RUNNING})
    with pytest.raises(ScorebankError, match="no completed runs") as info:
        average_score(pending.path, "el2n@0")
    assert not isinstance(info.value, InvalidArgumentError)
    # naming the runs explicitly works when they recorded the epoch
    assert average_score(pending.path, "el2n@0", runs=[0]).size == 40


# ------------------------------------------------------------------------------ quantiles, CSV
def _lower(ordered, q):
    """The 'lower' percentile by hand: the value at position floor(q/100 * (n - 1))."""
    return ordered[int(np.floor(q / 100 * (len(ordered) - 1)))]


def test_score_quantiles_by_hand():
    from scorebank.analysis.scores import score_quantiles

    got = score_quantiles(np.array([3.0, 1.0, 2.0, 0.5, 4.0, 1.0]))
    assert list(got) == ["mean", "std", "min", "q25", "median", "q75", "max"]
    assert {k: v for k, v in got.items() if k != "std"} == {
        "mean": 11.5 / 6, "min": 0.5, "q25": 1.0, "median": 1.0, "q75": 2.0, "max": 4.0}
    m = 11.5 / 6
    assert got["std"] == pytest.approx(((sum((v - m) ** 2 for v in (3, 1, 2, 0.5, 4, 1))) / 6) ** 0.5, rel=1e-14)
    # never-learned examples scored inf: mean inf, std over the finite values, inf can be a quantile
    got = score_quantiles([1.0, np.inf, 2.0, 3.0])
    assert {k: v for k, v in got.items() if k != "std"} == {
        "mean": np.inf, "min": 1.0, "q25": 1.0, "median": 2.0, "q75": 3.0, "max": np.inf}
    assert got["std"] == pytest.approx((2 / 3) ** 0.5, rel=1e-14)
    assert all(np.isnan(v) for v in score_quantiles(np.array([])).values())
    got = score_quantiles([1.0, np.nan, 3.0])
    assert np.isnan(got["mean"]) and got["std"] == 1.0 and np.isnan(got["median"])
    assert all(type(v) is float for v in got.values())


def test_score_quantiles_of_random_values():
    from scorebank.analysis.scores import score_quantiles

    x = np.round(np.random.default_rng(2).normal(size=101), 1)  # ties
    ordered = sorted(x.tolist())
    got = score_quantiles(x)
    for name, q in (("min", 0), ("q25", 25), ("median", 50), ("q75", 75), ("max", 100)):
        assert got[name] == _lower(ordered, q), name
    assert got["mean"] == pytest.approx(sum(ordered) / 101, rel=1e-12)


def _read_csv(path):
    import csv

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_write_scores_csv_holds_the_averaged_scores(store, reference, tmp_path):
    from scorebank.analysis.scores import write_scores_csv

    avg = average_scores(store.path, ["el2n@2", "forgetting", "nmargin@6"], never_learned="inf", runs=[0, 2])
    out = write_scores_csv(avg, tmp_path / "new" / "dir" / "scores.csv")
    assert out == tmp_path / "new" / "dir" / "scores.csv"
    header, rows = _read_csv(out)
    assert header == ["example", "original_index", "label", "el2n@2", "forgetting", "nmargin@6"]
    assert len(rows) == 40
    assert [int(r[0]) for r in rows] == list(range(40))
    assert [int(r[1]) for r in rows] == [10 * i for i in range(40)]
    assert [int(r[2]) for r in rows] == store[S.LABEL].tolist()
    for j, name in enumerate(["el2n@2", "forgetting", "nmargin@6"], start=3):
        assert [float(r[j]) for r in rows] == avg[name].values.tolist(), name  # exact: repr(float)
    # and those are the plain averages over runs 0 and 2
    el2n = store[S.EL2N][:, 2].astype(np.float64)
    assert [float(r[3]) for r in rows] == [(el2n[0, x] + el2n[2, x]) / 2 for x in range(40)]
    forg = _forgetting_scores(reference, store, [0, 2], never="inf")
    assert [float(r[4]) for r in rows] == [(forg[0, x] + forg[1, x]) / 2 for x in range(40)]
    assert sorted(p.name for p in out.parent.iterdir()) == ["scores.csv"]  # no temporary left


@pytest.mark.parametrize("existing", [False, True])
def test_write_scores_csv_failure_leaves_no_partial_file(store, tmp_path, monkeypatch, existing):
    import csv

    from scorebank.analysis.scores import write_scores_csv

    avg = average_scores(store.path, ["el2n@2"])
    path = tmp_path / "scores.csv"
    if existing:
        path.write_text("previous\n")
    real = csv.writer

    class Failing:
        """A csv writer whose disk fills up after ten rows."""

        def __init__(self, f):
            self.inner, self.rows = real(f), 0

        def writerow(self, row):
            self.rows += 1
            if self.rows > 10:
                raise OSError(28, "No space left on device")
            self.inner.writerow(row)

    monkeypatch.setattr(csv, "writer", Failing)
    with pytest.raises(OSError, match="No space left"):
        write_scores_csv(avg, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["scores.csv"] if existing else [])
    if existing:
        assert path.read_text() == "previous\n"
    monkeypatch.undo()
    write_scores_csv(avg, path)
    assert len(_read_csv(path)[1]) == 40
