import math

import numpy as np
import pytest

from scorebank.analysis import average_score, make_rule, select, select_indices, to_manifest
from scorebank.analysis.selection import stratum_budgets
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError


def rnd(x):
    return math.floor(x + 0.5)


def ascending(scores, members):
    return sorted(members, key=lambda i: (scores[i], i))


def reference(strategy, scores, members, fraction=None, offset=0.0, count=None, n_total=None):
    """Plain-Python versions of the deterministic rules on the examples ``members``."""
    order = ascending(scores, members)
    n = len(members)
    if strategy == "keep-highest":
        return order[n - rnd(fraction * n):]
    if strategy == "keep-lowest":
        return order[:rnd(fraction * n)]
    if strategy == "window":
        start = rnd(offset * n)
        return order[start:start + rnd(fraction * n)]
    if strategy == "smallest-margin":
        return order[:count if n == n_total else rnd(count * n / n_total)]
    raise AssertionError(strategy)


CASES = [("keep-highest", dict(fraction=0.3)), ("keep-lowest", dict(fraction=0.55)),
         ("window", dict(offset=0.2, fraction=0.5)), ("smallest-margin", dict(count=7)),
         ("keep-highest", dict(fraction=1.0))]


@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize("strategy,opts", CASES)
def test_deterministic_rules(strategy, opts, balanced):
    rng = np.random.default_rng(11)
    scores = np.round(rng.normal(size=50), 1)  # many ties
    labels = rng.integers(0, 3, 50)
    kept = select_indices(make_rule(strategy, class_balanced=balanced, **opts), scores, labels)
    if balanced:
        expected = []
        for c in range(3):
            members = [i for i in range(50) if labels[i] == c]
            expected += reference(strategy, scores, members, n_total=50, **opts)
    else:
        expected = reference(strategy, scores, list(range(50)), n_total=50, **opts)
    assert kept.tolist() == sorted(expected)


def test_random_is_reproducible_and_balanced():
    labels = np.repeat([0, 1, 2], [10, 20, 30])
    a = select_indices(make_rule("random", fraction=0.5, seed=3), None, labels)
    b = select_indices(make_rule("random", fraction=0.5, seed=3), None, labels)
    c = select_indices(make_rule("random", fraction=0.5, seed=4), None, labels)
    assert a.tolist() == b.tolist() != c.tolist()
    assert a.size == 30 and len(set(a.tolist())) == 30
    bal = select_indices(make_rule("random", fraction=0.25, seed=1, class_balanced=True), None, labels)
    assert np.bincount(labels[bal]).tolist() == [rnd(2.5), rnd(5.0), rnd(7.5)]


def test_stratum_budgets_follow_ccs():
    # visit smallest first: 0 (size 0) gets 0, then 2 (size 3) gets min(3, 20 // 3 = 6) = 3,
    # then 1 (size 10) gets min(10, 17 // 2 = 8) = 8, then 3 (size 40) gets min(40, 9) = 9
    assert stratum_budgets(np.array([0, 10, 3, 40]), 20).tolist() == [0, 8, 3, 9]


def test_stratified():
    rng = np.random.default_rng(5)
    scores = rng.uniform(0, 10, 200)
    scores[:20] = 10.0  # the hardest (high score = hard)
    labels = np.zeros(200, int)
    rule = make_rule("stratified", fraction=0.3, bins=4, hard_cutoff=0.1, seed=7)
    kept = select_indices(rule, scores, labels)
    # independent allocation: drop the 20 highest (ties by index), 4 equal-width strata
    order = ascending(scores, list(range(200)))
    remaining = sorted(order[:180])
    lo, hi = min(scores[remaining]), max(scores[remaining])
    width = (hi - lo) / 4
    stratum = {i: min(int((scores[i] - lo) / width), 3) for i in remaining}
    sizes = [sum(1 for i in remaining if stratum[i] == b) for b in range(4)]
    budget, alloc, left = 60, [0] * 4, 60
    for pos, b in enumerate(sorted(range(4), key=lambda b: (sizes[b], b))):
        alloc[b] = min(sizes[b], left // (4 - pos))
        left -= alloc[b]
    assert kept.size == sum(alloc) == budget
    assert set(kept.tolist()) <= set(remaining)
    assert [sum(1 for i in kept if stratum[i] == b) for b in range(4)] == alloc
    assert select_indices(rule, scores, labels).tolist() == kept.tolist()
    # a low-is-hard score drops the lowest instead
    low = make_rule("stratified", fraction=0.3, bins=4, hard_cutoff=0.1, seed=7, high_is_hard=False)
    assert set(select_indices(low, scores, labels).tolist()) <= set(order[20:])


def test_stratified_puts_infinite_scores_in_the_end_strata():
    """forgetting with never_learned="inf" gives +inf to never-learned examples: they form
    part of the hardest stratum instead of breaking the equal-width bins of the rest."""
    scores = np.array([0.0, 1.0, 2.0, 3.0, np.inf, 4.0, np.inf, 0.5])
    from scorebank.analysis.selection import strata

    # finite range [0, 4] in 4 bins of width 1; 4.0 is clamped into the last bin
    assert strata(scores, 4).tolist() == [0, 1, 2, 3, 3, 3, 3, 0]
    assert strata(np.array([-np.inf, 1.0, 1.0, np.inf]), 3).tolist() == [0, 0, 0, 2]
    rule = make_rule("stratified", fraction=0.5, bins=4, hard_cutoff=0.0, seed=1)
    kept = select_indices(rule, scores, np.zeros(8, int))
    # sizes [2, 1, 1, 4] -> visiting 1, 2 (size 1), then 0 (size 2), then 3: budgets 1, 1, 1, 1
    assert kept.size == 4
    stratum = strata(scores, 4)
    assert sorted(stratum[kept].tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("kwargs,match", [
    (dict(strategy="keep-highest", fraction=0.0), r"--fraction 0.0 is outside \(0, 1\]"),
    (dict(strategy="keep-highest", fraction=1.5), r"--fraction 1.5 is outside \(0, 1\]"),
    (dict(strategy="keep-highest"), "needs --fraction"),
    (dict(strategy="window", offset=0.6, fraction=0.5), "runs past the end"),
    (dict(strategy="window", offset=1.0, fraction=0.5), r"--offset 1.0 is outside \[0, 1\)"),
    (dict(strategy="keep-lowest", fraction=0.5, bins=3), "does not take --bins"),
    (dict(strategy="smallest-margin", fraction=0.5), "does not take --fraction"),
    (dict(strategy="stratified", fraction=0.5, hard_cutoff=1.0), r"--hard-cutoff 1.0 is outside"),
    (dict(strategy="best"), "unknown strategy 'best'; use one of keep-highest"),
])
def test_rule_errors(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        make_rule(**kwargs)


def test_select_from_store(store):
    sel = select(store.path, "keep-highest", score="el2n@2", fraction=0.25, runs=[0, 2])
    avg = store[S.EL2N][[0, 2], 2].astype(np.float64).mean(0)
    assert sel.indices.tolist() == sorted(reference("keep-highest", avg, list(range(40)), fraction=0.25))
    np.testing.assert_allclose(sel.scores, average_score(store.path, "el2n@2", runs=[0, 2]).values)
    assert sel.runs == (0, 2) and sel.score == "el2n@2"
    assert sel.counts_per_class == {str(c): int((store[S.LABEL][sel.indices] == c).sum()) for c in range(3)}
    man = to_manifest(sel, store.path, name="top-quarter")
    assert man.dataset_fingerprint == "toy-0-40" and man.n_examples == 40 and man.name == "top-quarter"
    assert man.parameters == {"fraction": 0.25, "class_balanced": False, "reduce": "mean"}


def test_select_errors(store):
    with pytest.raises(InvalidArgumentError, match=r"--count 41 is larger than the data set \(40 examples\)"):
        select(store.path, "smallest-margin", score="nmargin@6", count=41)
    with pytest.raises(InvalidArgumentError, match="use --score nmargin@E or margin@E, not 'el2n@6'"):
        select(store.path, "smallest-margin", score="el2n@6", count=4)
    with pytest.raises(InvalidArgumentError, match="needs --score"):
        select(store.path, "keep-lowest", fraction=0.5)
    with pytest.raises(InvalidArgumentError, match="random uses no score"):
        select(store.path, "random", score="el2n@1", fraction=0.5)
    with pytest.raises(InvalidArgumentError, match="keeps no example"):
        select(store.path, "keep-lowest", score="el2n@1", fraction=0.001)
    with pytest.raises(InvalidArgumentError, match="only 4 remain after --hard-cutoff 0.9"):
        select(store.path, "stratified", score="el2n@1", fraction=0.5, hard_cutoff=0.9)


def test_random_needs_no_completed_run(make_store):
    st = make_store(statuses={0: S.RUN_RUNNING, 1: S.RUN_PENDING, 2: S.RUN_FAILED})
    sel = select(st.path, "random", fraction=0.5, seed=2)
    assert sel.runs == () and sel.score is None and sel.n_kept == 20
    assert sel.indices.tolist() == sorted(np.random.default_rng(2).choice(40, 20, replace=False).tolist())
    assert to_manifest(sel, st.path).parameters == {"fraction": 0.5, "seed": 2, "class_balanced": False}
