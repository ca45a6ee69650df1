from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from wsipipe.train.metrics import (
    MetricsLog,
    balanced_accuracy,
    macro_auc,
    roc_auc,
    slide_metrics,
    write_predictions,
)


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


def test_slide_metrics_ignores_unlabeled() -> None:
    y = np.array([0, 1, -1, 1])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.4, 0.6]])
    m = slide_metrics(y, p)
    assert m["n"] == 3 and m["auc"] == 1.0 and m["bacc"] == 1.0 and m["acc"] == 1.0
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.6])))


def test_predictions_csv(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    probs = np.array([[0.25, 0.75], [0.9, 0.1]])
    write_predictions(path, ["a", "b"], probs, ("normal", "tumor"), [1, -1])
    rows = list(csv.DictReader(path.open()))
    assert rows[0] == {
        "slide_id": "a",
        "label": "tumor",
        "pred": "tumor",
        "prob_normal": "0.250000",
        "prob_tumor": "0.750000",
    }
    assert rows[1]["label"] == "" and rows[1]["pred"] == "normal"


def test_metrics_log_truncates_on_resume(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    for e in (1, 2, 3):
        log.append({"epoch": e, "val_auc": 0.5 + e / 10, "x": float("nan")})
    resumed = MetricsLog(tmp_path, keep_until_epoch=2)
    assert [r["epoch"] for r in resumed.records] == [1, 2]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in lines] == [1, 2]
    assert json.loads(lines[0])["x"] is None  # NaN written as null
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[1]["val_auc"] == "0.7"


def test_metrics_log_writes_tensorboard_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLog(tmp_path)
    assert log.enable_tensorboard(tmp_path / "tb")
    log.append({"epoch": 1, "val_auc": 0.5, "train_loss": 0.9, "note": "x", "flag": True})
    log.append({"epoch": 2, "val_auc": 0.75, "train_loss": 0.4, "note": "y", "flag": False})
    log.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"val_auc", "train_loss"}  # numbers only, not epoch
    auc = [(e.step, e.value) for e in acc.Scalars("val_auc")]
    assert auc == [(1, 0.5), (2, 0.75)]


def test_metrics_log_without_tensorboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    log = MetricsLog(tmp_path)
    assert log.enable_tensorboard(tmp_path / "tb") is False
    log.append({"epoch": 1, "val_auc": 0.5})
    assert not (tmp_path / "tb").exists()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["val_auc"] == 0.5
