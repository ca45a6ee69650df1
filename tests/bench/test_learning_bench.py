"""The learning benchmark's helpers: the learning curve's train-split subsets, mi-SVM labels."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench_learning import subsample_training
from benchmarks.probe_features import _mi_labels


def _labels(tmp_path: Path, n_train: int = 20, n_test: int = 6) -> Path:
    path = tmp_path / "labels.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_id", "label", "split", "patient_id", "path"])
        for i in range(n_train + n_test):
            split = "train" if i < n_train else "test"
            label = "tumor" if i % 4 == 0 else "normal"  # 1 tumour in 4
            w.writerow([f"s{i:02d}", label, split, "", f"slides/s{i:02d}.svs"])
    return path


def _split(path: Path, split: str) -> list[dict[str, str]]:
    return [r for r in csv.DictReader(path.open()) if r["split"] == split]


def test_subsets_are_stratified_nested_and_keep_the_test_split(tmp_path: Path) -> None:
    labels = _labels(tmp_path)
    small, large = subsample_training(labels, 8), subsample_training(labels, 16)
    assert small.parent == labels.parent  # relative slide paths still resolve
    s_train, l_train = _split(small, "train"), _split(large, "train")
    assert (len(s_train), len(l_train)) == (8, 16)
    assert sum(r["label"] == "tumor" for r in s_train) == 2  # the cohort's 1 in 4
    assert sum(r["label"] == "tumor" for r in l_train) == 4
    assert {r["slide_id"] for r in s_train} <= {r["slide_id"] for r in l_train}
    assert _split(small, "test") == _split(labels, "test") == _split(large, "test")


def test_a_subset_larger_than_the_train_split_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="20 training slides"):
        subsample_training(_labels(tmp_path), 21)


class _Scores:
    def __init__(self, scores: list[np.ndarray]) -> None:
        self.by_id = {id(x): s for x, s in zip(_XS, scores, strict=True)}

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return self.by_id[id(x)]


_XS = [np.zeros((3, 1)), np.zeros((4, 1)), np.zeros((2, 1))]


def test_mi_labels_are_the_positive_tiles_above_every_negative_tile() -> None:
    # slide 0 negative (max 0.5); slide 1 positive: 0.7 and 0.9 beat it; slide 2 positive
    # with nothing above 0.5 still gets its top tile
    clf = _Scores([np.array([0.1, 0.5, -1.0]), np.array([0.7, 0.2, 0.9, 0.4]),
                   np.array([0.3, 0.4])])  # fmt: skip
    y = _mi_labels(clf, _XS, [False, True, True])
    assert [v.tolist() for v in y] == [[False] * 3, [True, False, True, False], [False, True]]
