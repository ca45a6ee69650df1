"""ABMIL, mean pooling and TransMIL through the same loop, predict and heatmap as IPS/DBPS; a
validation split carved when the labels have none; K-fold cross-validation."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.train.synthstores import labels_without_val, make_cohort, tiny_overrides
from wsipipe.errors import ConfigError
from wsipipe.train.config import load_train_config
from wsipipe.train.loop import train
from wsipipe.train.predict import predict


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cohort(tmp_path_factory.mktemp("cohort"), n_train=12, n_val=8, n_tiles=(30, 60))


def _cfg(cohort: tuple[Path, Path], out: Path, **kw: object):
    labels, stores = cohort
    return load_train_config(None, tiny_overrides(
        labels=str(labels), stores=str(stores.parent), out=str(out), mode="features",
        freeze_bn=True, **kw))  # fmt: skip


@pytest.mark.parametrize("method", ["abmil", "mean", "transmil"])
def test_baselines_learn_in_features_mode(cohort, tmp_path: Path, method: str) -> None:
    recs = train(_cfg(cohort, tmp_path / "run", method=method, epochs=6, lr=3e-3))
    assert recs[-1]["val_auc"] >= 0.9 and recs[-1]["val_loss"] < recs[0]["val_loss"]
    res = predict(tmp_path / "run" / "checkpoints" / "best.pt", tmp_path / "pred",
                  labels=str(cohort[0]), split="val")  # fmt: skip
    assert res.metrics is not None and res.metrics["auc"] >= 0.9


def test_baselines_need_features_mode(cohort, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--mode features"):
        load_train_config(None, tiny_overrides(method="abmil", mode="pixels"))


def _trained_heatmap(cohort, tmp_path: Path, method: str, **kw: object):  # type: ignore[no-untyped-def]
    """Train ``method`` briefly, write slide s013's heatmap (fp32: compared with an fp32
    reference) -> (its CSV rows, their scores, the slide's tile logits (N, T, H) recomputed
    from the checkpoint on all of its features at once)."""
    import torch

    from wsipipe.config import build_config
    from wsipipe.heatmap.config import HeatmapConfig
    from wsipipe.heatmap.run import run_heatmaps
    from wsipipe.store.features import open_features
    from wsipipe.train.inference import load_model

    train(_cfg(cohort, tmp_path / "run", method=method, epochs=2, **kw))
    ck = tmp_path / "run" / "checkpoints" / "best.pt"
    cfg = build_config(HeatmapConfig, None, {
        "checkpoint": str(ck), "stores": str(cohort[1].parent), "out": str(tmp_path / "heat"),
        "slides": ["s013"], "workers": 0, "pyramid": False, "device": "cpu",
        "precision": "fp32"})  # fmt: skip
    assert [o.state for o in run_heatmaps(cfg)] == ["done"]
    rows = list(csv.DictReader((tmp_path / "heat" / "scores" / "s013.csv").open()))
    score = np.array([float(r["score"]) for r in rows])
    lm = load_model(ck, "cpu")
    feats = torch.from_numpy(np.array(open_features(
        next((cohort[1].parent / "features").rglob("s013.h5"))))).float()  # fmt: skip
    with torch.no_grad():
        return rows, score, lm.model.aggregator.tile_logits(lm.model.encoder(feats))


def test_abmil_heatmap_scores_are_its_attention(cohort, tmp_path: Path) -> None:
    import torch

    rows, score, logits = _trained_heatmap(cohort, tmp_path, "abmil")
    want = torch.softmax(logits.view(-1), 0)
    assert score.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(score, want.numpy(), rtol=1e-3, atol=1e-6)  # CSV: 8 digits
    assert all(r["selected"] == "1" for r in rows)  # ABMIL looks at every tile


def test_transmil_heatmap_scores_are_its_class_token_attention(cohort, tmp_path: Path) -> None:
    """Per head, the softmax over the slide's tiles of the class token's last-layer logits,
    averaged over heads: computed over the whole slide at once, as the model sees it."""
    import torch

    _, score, logits = _trained_heatmap(cohort, tmp_path, "transmil", I=16)  # chunks < slide
    want = torch.softmax(logits, dim=0).mean(dim=(1, 2))  # logits (N, 1, H)
    assert logits.shape[2] > 1 and score.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(score, want.numpy(), rtol=1e-3, atol=1e-6)


def test_labels_without_val_split_carve_one(cohort, tmp_path: Path, capsys) -> None:
    labels, stores = cohort
    rows = list(csv.DictReader(labels.open()))
    no_val = labels_without_val(labels, tmp_path / "labels.csv")
    cfg = load_train_config(None, tiny_overrides(labels=str(no_val), stores=str(stores.parent),
                            out=str(tmp_path / "run"), mode="features", epochs=1, val_fraction=0.25,
                            progress=True))  # fmt: skip
    train(cfg)
    assert "no `val` split, so 4 of the training slides" in capsys.readouterr().err
    split = list(csv.DictReader((tmp_path / "run" / "splits.csv").open()))
    val = [r for r in split if r["split"] == "val"]
    assert len(split) == 12 and len(val) == 4
    assert sorted(r["label"] for r in val) == ["normal", "normal", "tumor", "tumor"]
    assert {r["slide_id"] for r in split} == {r["slide_id"] for r in rows if r["split"] == "train"}
    with pytest.raises(
        ConfigError, match=r"has no slides \(add rows with split = val, or pass --val-fraction"
    ):  # refused when carving is off
        train(load_train_config(None, tiny_overrides(
            labels=str(no_val), stores=str(stores.parent), out=str(tmp_path / "r2"),
            mode="features", val_fraction=0.0)))  # fmt: skip


def test_cross_validation_writes_one_summary(cohort, tmp_path: Path) -> None:
    from wsipipe.train.crossval import cross_validate

    cfg = _cfg(cohort, tmp_path / "cv", method="abmil", epochs=3, lr=3e-3, folds=3)
    s = cross_validate(cfg)
    assert [r["fold"] for r in s["folds"]] == [0, 1, 2] and s["pooled_n"] == 20
    assert sum(r["n"] for r in s["folds"]) == 20  # every training/val slide predicted once
    lo, hi = s["pooled_auc_ci95"]
    assert 0.0 <= lo <= s["pooled_auc"] <= hi <= 1.0
    table = list(csv.reader((tmp_path / "cv" / "cv_summary.csv").open()))
    assert [r[0] for r in table[1:]] == ["0", "1", "2", "mean", "sd", "pooled"]
    assert json.loads((tmp_path / "cv" / "cv_summary.json").read_text())["pooled_n"] == 20
    folds = {
        r["slide_id"]: r["fold"] for r in csv.DictReader((tmp_path / "cv" / "cv_labels.csv").open())
    }
    assert sorted(set(folds.values())) == ["0", "1", "2"]
    for k in range(3):  # fold k is held out of both the training and the checkpoint choice
        run = tmp_path / "cv" / f"fold_{k}"
        held = {i for i, f in folds.items() if f == str(k)}
        chosen = {r["slide_id"]: r["split"] for r in csv.DictReader((run / "splits.csv").open())}
        assert not held & set(chosen) and "val" in chosen.values()
        assert set(chosen) | held == set(folds)
        pred = list(csv.DictReader((run / "heldout" / "predictions.csv").open()))
        assert {r["slide_id"] for r in pred} == held and s["folds"][k]["n"] == len(held)
    mtime = (tmp_path / "cv" / "fold_0" / "checkpoints" / "last.pt").stat().st_mtime_ns
    cross_validate(cfg)  # finished folds are not trained again
    assert (tmp_path / "cv" / "fold_0" / "checkpoints" / "last.pt").stat().st_mtime_ns == mtime
    # a fold trained the old way (checkpoint chosen on the held-out fold) is refused
    saved = tmp_path / "cv" / "fold_1" / "config.yaml"
    saved.write_text(saved.read_text().replace("fold: null", "fold: 1"))
    with pytest.raises(ConfigError, match=r"fold_1: this fold was trained with its checkpoint"):
        cross_validate(cfg)
    with pytest.raises(ConfigError, match=r"--val-fraction 0\.0 carves none"):
        cross_validate(replace(cfg, out=str(tmp_path / "cv0"), val_fraction=0.0))


def test_stores_tiled_otherwise_are_refused_or_warned(cohort, tmp_path: Path, capsys) -> None:
    import torch

    train(_cfg(cohort, tmp_path / "run", method="mean", epochs=1))
    ck = tmp_path / "run" / "checkpoints" / "best.pt"
    tiling = torch.load(ck, weights_only=True)["tiling"]
    assert tiling["tile_px"] == [32] and tiling["target_mpp"] == [0.5]
    other = make_cohort(tmp_path / "other", n_train=2, n_val=2, px=48)  # 48 px tiles
    with pytest.raises(ConfigError, match=r"tiled at tile px 48 \(trained on 32\).*--tile-px"):
        predict(ck, tmp_path / "p", str(other[1].parent), str(other[0]), "val")
    res = predict(ck, tmp_path / "p", str(other[1].parent), str(other[0]), "val",
                  allow_tiling_mismatch=True)  # fmt: skip
    assert len(res.slide_ids) == 2 and "warning: " in capsys.readouterr().err


@pytest.mark.parametrize("method", ["abmil", "ips"])
def test_instance_loss_and_standardised_features(cohort, tmp_path: Path, method: str) -> None:
    """``feature_norm: standard`` estimates the moments from the training slides' features
    before the first step and saves them; ``instance_loss`` trains an instance head through
    the same loop; predict rebuilds both from the checkpoint and gives the run's numbers."""
    import torch

    from wsipipe.train.checkpoint import load_checkpoint
    from wsipipe.train.inference import load_model

    out = tmp_path / "run"
    recs = train(_cfg(cohort, out, method=method, epochs=6, lr=3e-3, feature_norm="standard",
                      instance_loss=1.0))  # fmt: skip
    assert recs[-1]["val_auc"] >= 0.9
    state = load_checkpoint(out / "checkpoints" / "best.pt")["model"]
    mean, std = state["encoder.mean"], state["encoder.std"]
    assert mean.abs().max() > 1e-3 and not torch.allclose(std, torch.ones_like(std))
    assert "instance_head.weight" in state and "encoder.bn.weight" not in state
    lm = load_model(out / "checkpoints" / "best.pt", "cpu")
    assert torch.equal(lm.model.encoder.mean, mean) and lm.model.instance_head is not None
    res = predict(out / "checkpoints" / "best.pt", tmp_path / "pred", labels=str(cohort[0]),
                  split="val")  # fmt: skip
    assert res.metrics is not None and res.metrics["auc"] >= 0.9


def test_instance_loss_needs_two_classes() -> None:
    from wsipipe.train.model import build_model

    cfg = load_train_config(None, tiny_overrides(mode="features", instance_loss=1.0))
    with pytest.raises(ConfigError, match="needs two classes"):
        build_model(cfg, 3, feature_dim=8)
