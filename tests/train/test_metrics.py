from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from wsipipe.train.metrics import MetricsLog, slide_metrics, write_predictions


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
