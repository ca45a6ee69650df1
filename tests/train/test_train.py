"""End-to-end training on a self-contained synthetic store cohort (CPU, tiny encoder)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from tests.train.synthstores import make_cohort, tiny_overrides
from wsipipe.errors import ConfigError
from wsipipe.train.config import TrainConfig, load_train_config
from wsipipe.train.loop import (
    config_for_resume,
    independent_labels,
    is_new_best,
    train,
    val_key,
)
from wsipipe.train.predict import predict


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cohort")
    return make_cohort(root, n_train=12, n_val=8, n_tiles=(30, 60))


def _cfg(cohort: tuple[Path, Path], out: Path, **kw: Any) -> TrainConfig:
    labels, stores = cohort
    return load_train_config(
        None, tiny_overrides(labels=str(labels), stores=str(stores.parent), out=str(out), **kw)
    )


@pytest.fixture(scope="module")
def ips_run(cohort: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ips") / "run"
    train(_cfg(cohort, out, method="ips", epochs=5, lr=3e-3))
    return out


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_ips_learns_and_writes_the_run_directory(ips_run: Path) -> None:
    recs = _records(ips_run)
    assert [r["epoch"] for r in recs] == [1, 2, 3, 4, 5]
    last = recs[-1]
    assert last["val_auc"] >= 0.9 and last["val_bacc"] == 1.0 and last["val_loss"] < 0.3
    assert last["val_loss"] < recs[0]["val_loss"] and last["train_loss"] < recs[0]["train_loss"]
    assert last["step"] == 5 * 6 and last["lr"] == pytest.approx(3e-3 * 1e-3, rel=1e-6)
    for name in (
        "config.yaml",
        "metrics.csv",
        "train_order.jsonl",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "predictions/val_best.csv",
        "predictions/val_epoch_005.csv",
    ):
        assert (ips_run / name).exists(), name
    rows = list(csv.DictReader((ips_run / "predictions" / "val_epoch_005.csv").open()))
    assert len(rows) == 8 and all(r["pred"] == r["label"] for r in rows)
    ck = torch.load(ips_run / "checkpoints" / "last.pt", weights_only=True)
    assert ck["epoch"] == 5 and ck["step"] == 30 and ck["classes"] == ["normal", "tumor"]
    assert ck["config"]["method"] == "ips" and set(ck) >= {"model", "optimizer", "scheduler", "rng"}
    order = [json.loads(ln) for ln in (ips_run / "train_order.jsonl").read_text().splitlines()]
    assert [sorted(o["ranks"][0]) for o in order] == [[f"s{i:03d}" for i in range(12)]] * 5
    assert order[0]["ranks"] != order[1]["ranks"]  # reshuffled every epoch


def test_run_finished_reads_the_last_logged_epoch(ips_run: Path, tmp_path: Path) -> None:
    from wsipipe.train.runs import run_finished

    assert run_finished(ips_run, 5) and not run_finished(ips_run, 6)
    assert not run_finished(tmp_path, 1)  # no metrics.jsonl: never trained, or killed early


def test_dbps_learns(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    recs = train(_cfg(cohort, tmp_path / "run", method="dbps", epochs=4, lr=3e-3, workers=2))
    last = recs[-1]
    assert last["val_auc"] >= 0.9 and last["val_bacc"] == 1.0 and last["val_loss"] < 0.3


def test_label_shuffled_control_stays_at_chance(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    recs = train(_cfg(cohort, tmp_path / "run", epochs=5, lr=3e-3, shuffle_labels=True))
    last = recs[-1]
    # nothing learned: no better than predicting the prior (loss ln 2 = 0.693), no separation
    assert last["val_loss"] > 0.65 and last["val_bacc"] <= 0.75


def test_independent_labels_carry_no_information() -> None:
    y = np.array([0] * 6 + [1] * 6)
    z = independent_labels(y, 2, seed=3)
    for c in (0, 1):
        assert np.bincount(z[y == c], minlength=2).tolist() == [3, 3]


def test_best_checkpoint_is_never_an_epoch_of_the_warm_up() -> None:
    nan = float("nan")
    assert val_key(0.8, 0.5) == (0.8, 0.5)
    assert val_key(nan, None) == (-math.inf, math.inf)  # missing / NaN count worst
    none = (-math.inf, math.inf)
    # a perfect AUC in the warm-up (2 epochs) is not a best; the first epoch after it is
    assert not is_new_best(1, 2, (1.0, 0.1), none)
    assert not is_new_best(2, 2, (1.0, 0.1), none)
    assert is_new_best(3, 2, (0.5, 2.0), none)
    assert is_new_best(3, 2.5, (0.5, 2.0), none) is True  # fractional warm-up: 3 > 2.5
    assert not is_new_best(1, 0, (nan, nan), none)  # NaN AUC and loss: never better
    # higher AUC wins; a tie goes to the lower loss
    assert is_new_best(5, 2, (0.9, 3.0), (0.8, 0.1))
    assert is_new_best(5, 2, (0.8, 0.05), (0.8, 0.1))
    assert not is_new_best(5, 2, (0.8, 0.1), (0.8, 0.1))
    assert not is_new_best(5, 2, (0.7, 0.01), (0.8, 0.1))


def test_best_checkpoint_comes_after_the_warm_up(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    """With 2 warm-up epochs of 3, best.pt is epoch 3 whatever the validation says."""
    out = tmp_path / "run"
    recs = train(_cfg(cohort, out, epochs=3, warmup_epochs=2.0, lr=3e-3))
    assert [r["best_val_auc"] for r in recs[:2]] == [None, None]
    assert recs[2]["best_val_auc"] == recs[2]["val_auc"]
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == 3


def test_predict_matches_validation_and_eval_only(
    ips_run: Path, cohort: tuple[Path, Path], tmp_path: Path
) -> None:
    labels, stores = cohort
    res = predict(
        ips_run / "checkpoints" / "best.pt",
        tmp_path / "pred",
        str(stores),
        str(labels),
        "val",
        overrides={"workers": 2},
    )
    best = max(_records(ips_run), key=lambda r: r["val_auc"])
    assert res.metrics is not None
    assert res.metrics["auc"] == pytest.approx(best["val_auc"])
    written = list(csv.DictReader((ips_run / "predictions" / "val_best.csv").open()))
    got = list(csv.DictReader(res.predictions_csv.open()))
    assert [r["slide_id"] for r in got] == [r["slide_id"] for r in written]
    for a, b in zip(got, written, strict=True):
        assert float(a["prob_tumor"]) == pytest.approx(float(b["prob_tumor"]), abs=1e-5)
    assert json.loads((tmp_path / "pred" / "metrics.json").read_text())["n"] == 8
    # explicit stores, no labels: predictions only
    two = [str(stores / "s012.h5"), str(stores / "s013.h5")]
    res2 = predict(ips_run / "checkpoints" / "last.pt", tmp_path / "p2", store_paths=two)
    assert res2.metrics is None and res2.slide_ids == ["s012", "s013"]
    rows = list(csv.DictReader(res2.predictions_csv.open()))
    assert [r["label"] for r in rows] == ["", ""]
    assert rows[1]["pred"] == "tumor" and rows[0]["pred"] == "normal"


def test_errors_before_training(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    labels, stores = cohort
    bad = tmp_path / "labels.csv"
    bad.write_text(labels.read_text() + "ghost,tumor,train\nghost2,normal,val\n")
    with pytest.raises(ConfigError) as err:
        train(_cfg((bad, stores), tmp_path / "run"))
    msg = str(err.value)
    assert "2 problem(s)" in msg and "'ghost'" in msg and "'ghost2'" in msg
    assert not (tmp_path / "run").exists()  # nothing written
    evil = tmp_path / "evil.csv"
    evil.write_text(labels.read_text() + "../../escape,tumor,train\n")
    with pytest.raises(ConfigError, match="not a plain name"):
        train(_cfg((evil, stores), tmp_path / "run"))


def test_existing_run_needs_resume(ips_run: Path, cohort: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match="--resume"):
        train(_cfg(cohort, ips_run, method="ips", epochs=5, lr=3e-3))
    cfg = config_for_resume(ips_run, {"M": 4})
    with pytest.raises(ConfigError, match="M: 8 -> 4"):
        train(cfg, resume=True)
    cfg = config_for_resume(ips_run, {"workers": 0})
    assert train(cfg, resume=True)[-1]["epoch"] == 5  # nothing left to do


def test_resume_removes_dead_runs_temp_checkpoints(
    ips_run: Path, cohort: tuple[Path, Path]
) -> None:
    ckpts = ips_run / "checkpoints"
    dead = ckpts / f".last.pt.{2**22 + 7}.0badc0de.tmp"  # above pid_max: never alive
    dead_old = ckpts / f".best.pt.{2**22 + 9}.tmp"
    live = ckpts / f".last.pt.{os.getppid()}.0badc0de.tmp"  # a live process's: kept
    for p in (dead, dead_old, live):
        p.write_bytes(b"half a checkpoint")
    cfg = config_for_resume(ips_run, {"workers": 0})
    assert train(cfg, resume=True)[-1]["epoch"] == 5  # nothing left to do
    assert not dead.exists() and not dead_old.exists()
    assert live.exists()
    live.unlink()


def test_multiclass_and_features_mode(tmp_path: Path) -> None:
    labels, stores = make_cohort(tmp_path, n_train=6, n_val=6, n_tiles=(10, 20))
    rows = list(csv.reader(labels.open()))
    for i, row in enumerate(rows[1:]):
        row[1] = ("a", "b", "c")[i % 3]
    with labels.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    cfg = _cfg(
        (labels, stores), tmp_path / "run", mode="features", epochs=2, method="dbps", M=4, I=8, S=4
    )
    recs = train(cfg)
    assert len(recs) == 2 and 0.0 <= recs[-1]["val_auc"] <= 1.0
    pred = list(csv.DictReader((tmp_path / "run" / "predictions" / "val_epoch_002.csv").open()))
    assert set(pred[0]) == {"slide_id", "label", "pred", "prob_a", "prob_b", "prob_c"}
    feats = sorted((tmp_path / "features" / cfg.encoder).glob("*.h5"))
    assert len(feats) == 12
    meta = json.loads(feats[0].with_suffix(".json").read_text())
    with h5py.File(feats[0]) as f:  # TRIDENT's layout: features (N, F) and coords (N, 2)
        assert f["features"].dtype == np.float16
        assert f["features"].shape == (meta["n_tiles"], meta["dim"])
        assert f["coords"].shape == (meta["n_tiles"], 2) and "patch_size" in f["coords"].attrs
    ck = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert ck["feature_dim"] == meta["dim"]
    mtime = feats[0].stat().st_mtime_ns  # a second run reuses the cache
    train(_cfg((labels, stores), tmp_path / "run2", mode="features", epochs=1, M=4, I=8))
    assert feats[0].stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_compiled_encoder_trains_and_matches_eager(
    cohort: tuple[Path, Path], tmp_path: Path
) -> None:
    """``--compile``: torch.compile (inductor, needs a C compiler) on the encoder trains one
    epoch and gives the eager run's validation predictions (same seed, same data)."""
    eager = train(_cfg(cohort, tmp_path / "eager", epochs=1, deterministic=True))
    compiled = train(
        _cfg(cohort, tmp_path / "compiled", epochs=1, deterministic=True, compile=True)
    )
    assert compiled[-1]["val_n"] == eager[-1]["val_n"] == 8
    assert compiled[-1]["val_loss"] == pytest.approx(eager[-1]["val_loss"], rel=1e-3, abs=1e-4)
    assert compiled[-1]["train_loss"] == pytest.approx(eager[-1]["train_loss"], rel=1e-3, abs=1e-4)
