"""Classification statistics in one place (pure numpy), used by training and heatmaps.

* :func:`roc_auc` -- binary ROC AUC by the rank statistic (ties count one half).
* :func:`macro_auc` -- binary: AUC of the positive (second) class; multi-class: one-vs-rest
  macro average over the classes present in ``y`` with at least one negative.
* :func:`balanced_accuracy` -- mean recall over the classes present in ``y``.
* :func:`cross_entropy` -- mean negative log-likelihood of the true class.

Arguments follow scikit-learn's order: truth first, then scores.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of binary ``y`` (N,) in {0, 1} against ``score`` (N,); NaN if one class only."""
    y = np.asarray(y).astype(bool).reshape(-1)
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)  # average ranks for ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """Slide AUC. ``y`` (N,) class indices, ``probs`` (N, C) class probabilities."""
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != y.shape[0]:
        raise ValueError(f"probs must be (N, C) with N={y.shape[0]}, got {probs.shape}")
    if probs.shape[1] == 2:
        return roc_auc(y == 1, probs[:, 1])
    aucs = [roc_auc(y == c, probs[:, c]) for c in range(probs.shape[1])]
    valid = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(valid)) if valid else float("nan")


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y``; NaN for empty input."""
    y = np.asarray(y)
    pred = np.asarray(pred)
    classes = np.unique(y)
    if classes.size == 0:
        return float("nan")
    return float(np.mean([(pred[y == c] == c).mean() for c in classes]))


def cross_entropy(y: np.ndarray, probs: np.ndarray, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true class."""
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=np.float64)
    if y.size == 0:
        return float("nan")
    return float(-np.mean(np.log(np.clip(probs[np.arange(y.size), y], eps, 1.0))))


def bootstrap_ci(
    y: np.ndarray,
    probs: np.ndarray,
    metric: str = "auc",
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap ``level`` confidence interval of a slide metric ("auc" = macro
    AUC, "bacc" = balanced accuracy) over resamples of the slides, with replacement.

    ``y`` (N,) class indices, ``probs`` (N, C). Resamples in which a class is missing are
    redrawn (AUC needs both); (nan, nan) for fewer than two classes."""
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=np.float64)
    if len(np.unique(y)) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    n = len(y)
    values: list[float] = []
    while len(values) < n_boot:
        idx = rng.integers(0, n, n)
        if len(np.unique(y[idx])) < 2:
            continue
        if metric == "auc":
            values.append(macro_auc(y[idx], probs[idx]))
        else:
            values.append(balanced_accuracy(y[idx], probs[idx].argmax(axis=1)))
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.asarray(values), [tail, 1.0 - tail])
    return float(lo), float(hi)
