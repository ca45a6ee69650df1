"""wsipipe.stats: ROC AUC, macro AUC and balanced accuracy against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from wsipipe.stats import balanced_accuracy, macro_auc, roc_auc


def test_roc_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 50)
        if y.min() == y.max():
            continue
        s = np.round(rng.random(50), 1)  # many ties
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_roc_auc_edge_cases() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_macro_auc_multiclass_matches_sklearn_ovr() -> None:
    rng = np.random.default_rng(1)
    y = np.tile(np.arange(3), 10)
    p = rng.dirichlet(np.ones(3), size=30)
    want = roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert macro_auc(y, p) == pytest.approx(want)
    p2 = np.stack([1 - p[:, 0], p[:, 0]], axis=1)
    y2 = (y == 0).astype(int)
    assert macro_auc(y2, p2) == pytest.approx(roc_auc_score(y2, p2[:, 1]))


def test_balanced_accuracy_matches_sklearn() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 40)
    pred = rng.integers(0, 3, 40)
    assert balanced_accuracy(y, pred) == pytest.approx(balanced_accuracy_score(y, pred))


def _pairwise_auc(s, y):
    pos, neg = s[y], s[~y]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def test_roc_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.random(200) < 0.3
        s = np.round(rng.random(200) + y * 0.3, 1)  # many ties
        assert roc_auc(y, s) == pytest.approx(_pairwise_auc(s, y), abs=1e-12)
    assert roc_auc([False, True], [0.2, 0.9]) == 1.0
    assert roc_auc([False, True], [0.9, 0.2]) == 0.0
    assert math.isnan(roc_auc([True, True], [0.1, 0.2]))


def test_bootstrap_ci_brackets_the_estimate_and_is_seeded() -> None:
    from wsipipe.stats import bootstrap_ci

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    p1 = np.clip(0.5 + (y - 0.5) * 0.4 + rng.normal(0, 0.25, 60), 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    lo, hi = bootstrap_ci(y, probs, "auc", n_boot=500, seed=1)
    assert lo < macro_auc(y, probs) < hi and hi - lo < 0.3
    assert bootstrap_ci(y, probs, "auc", n_boot=500, seed=1) == (lo, hi)
    blo, bhi = bootstrap_ci(y, probs, "bacc", n_boot=500)
    assert blo < balanced_accuracy(y, probs.argmax(1)) < bhi
    assert all(math.isnan(v) for v in bootstrap_ci(np.zeros(5, int), probs[:5]))
