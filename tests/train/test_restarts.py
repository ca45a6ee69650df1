"""``--restarts N``: N starts on one split, the run that fits its training slides best kept;
``--split-seed``: the data split drawn independently of the training seed."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.train.synthstores import labels_without_val, make_cohort, tiny_overrides
from wsipipe.errors import ConfigError
from wsipipe.train.config import TrainConfig, load_train_config
from wsipipe.train.loop import train
from wsipipe.train.predict import predict
from wsipipe.train.restarts import RestartFit, choose_restart, restart_config


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """12 training slides and no validation split (it is carved), 8 test slides."""
    root = tmp_path_factory.mktemp("cohort")
    labels, stores = make_cohort(root, n_train=12, n_val=8, n_tiles=(30, 60))
    no_val = labels_without_val(labels, root / "labels_no_val.csv")
    return no_val, stores


def _cfg(cohort: tuple[Path, Path], out: Path, **kw: object) -> TrainConfig:
    labels, stores = cohort
    return load_train_config(None, tiny_overrides(
        labels=str(labels), stores=str(stores.parent), out=str(out), mode="features",
        method="abmil", freeze_bn=True, val_fraction=0.25, **kw))  # fmt: skip


def _fit(r: int, loss: float, val: float = 1.0) -> RestartFit:
    return RestartFit(r, 10 + r, loss, 1.0, val)


def test_choose_restart_takes_the_lowest_training_loss() -> None:
    assert choose_restart([_fit(0, 0.45), _fit(1, 0.03), _fit(2, 0.29)]) == 1
    assert choose_restart([_fit(0, math.nan), _fit(1, 0.6)]) == 1  # NaN counts worst
    assert choose_restart([_fit(0, 0.1, 0.5), _fit(1, 0.1, 0.9)]) == 1  # tie: better val AUC
    assert choose_restart([_fit(0, 0.1, math.nan), _fit(1, 0.1, 0.9), _fit(2, 0.1, 0.9)]) == 1
    with pytest.raises(ValueError, match="no restarts"):
        choose_restart([])


def test_restart_configs_share_the_split_not_the_seed(tmp_path: Path) -> None:
    cfg = load_train_config(None, tiny_overrides(out=str(tmp_path / "run"), seed=7, restarts=3))
    r2 = restart_config(cfg, 2)
    assert (r2.seed, r2.split_seed, r2.restarts) == (9, 7, 1)
    assert Path(r2.out) == tmp_path / "run" / "restarts" / "r2"
    given = load_train_config(None, tiny_overrides(seed=7, split_seed=3, restarts=2))
    assert restart_config(given, 1).split_seed == 3
    with pytest.raises(ConfigError, match="restarts"):
        load_train_config(None, tiny_overrides(restarts=0))


def test_split_seed_fixes_the_carved_validation_slides(cohort, tmp_path: Path) -> None:
    def val_of(name: str, **kw: object) -> set[str]:
        train(_cfg(cohort, tmp_path / name, epochs=1, **kw))
        split = csv.DictReader((tmp_path / name / "splits.csv").open())
        return {r["slide_id"] for r in split if r["split"] == "val"}

    base = val_of("a", seed=0)
    assert val_of("b", seed=5, split_seed=0) == base  # the training seed does not move it
    assert any(val_of(f"c{s}", seed=s) != base for s in (1, 2, 3))  # the seed alone does


def test_restarts_keep_the_best_fitting_run(cohort, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _cfg(cohort, out, epochs=3, lr=3e-3, restarts=3)
    recs = train(cfg)
    table = list(csv.DictReader((out / "restarts.csv").open()))
    assert [r["restart"] for r in table] == ["0", "1", "2"]
    assert [r["seed"] for r in table] == ["0", "1", "2"]
    assert [r["kept"] for r in table].count("1") == 1
    losses = [float(r["train_loss"]) for r in table]
    k = int(np.argmin(losses))
    assert table[k]["kept"] == "1"
    kept = out / "restarts" / f"r{k}"
    # every restart trained and validated on the same slides
    splits = {(out / "restarts" / f"r{r}" / "splits.csv").read_text() for r in range(3)}
    assert len(splits) == 1 and (out / "splits.csv").read_text() in splits
    # the restarts differ (other initial weights), and the kept one is published in `out`
    assert len(set(losses)) == 3
    for rel in ("checkpoints/best.pt", "checkpoints/last.pt", "metrics.jsonl", "train_fit.json"):
        assert (out / rel).read_bytes() == (kept / rel).read_bytes(), rel
    assert recs == [json.loads(ln) for ln in (kept / "metrics.jsonl").read_text().splitlines()]
    # train_fit.json is the best checkpoint's loss on the run's training slides
    fit = json.loads((kept / "train_fit.json").read_text())
    res = predict(out / "checkpoints" / "best.pt", tmp_path / "fit",
                  labels=str(kept / "splits.csv"), split="train")  # fmt: skip
    assert res.metrics is not None and fit["loss"] == pytest.approx(res.metrics["loss"], rel=1e-6)
    assert fit["loss"] == pytest.approx(losses[k], abs=1e-6) and fit["n"] == 8
    assert predict(out / "checkpoints" / "best.pt", tmp_path / "test", labels=str(cohort[0]),
                   split="test").metrics is not None  # fmt: skip

    with pytest.raises(ConfigError, match=r"already holds a run .*--resume"):
        train(cfg)
    mtimes = [(out / "restarts" / f"r{r}" / "checkpoints" / "last.pt").stat().st_mtime_ns
              for r in range(3)]  # fmt: skip
    assert train(cfg, resume=True) == recs  # finished restarts are not trained again
    assert mtimes == [(out / "restarts" / f"r{r}" / "checkpoints" / "last.pt").stat().st_mtime_ns
                      for r in range(3)]  # fmt: skip
    # killed after restart 1's epochs but before its fit, and before restart 2 began
    import shutil

    (out / "restarts" / "r1" / "train_fit.json").unlink()
    shutil.rmtree(out / "restarts" / "r2")
    train(cfg, resume=True)
    assert (out / "restarts" / "r1" / "train_fit.json").exists()
    assert list(csv.DictReader((out / "restarts.csv").open())) == table  # the same runs again
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(_cfg(cohort, tmp_path / "new", restarts=2), resume=True)


def test_the_control_is_fitted_to_its_own_shuffled_labels(cohort, tmp_path: Path) -> None:
    """The choice among a label-shuffled control's restarts never sees the true labels: the
    fit is scored against the shuffled labels the restart trained on (drawn with the split
    seed, the same for every restart)."""
    from wsipipe.train.metrics import cross_entropy
    from wsipipe.train.runs import independent_labels

    out = tmp_path / "ctl"
    train(_cfg(cohort, out, epochs=2, restarts=2, shuffle_labels=True, seed=4))
    for r in range(2):
        run = out / "restarts" / f"r{r}"
        res = predict(run / "checkpoints" / "best.pt", tmp_path / f"p{r}",
                      labels=str(run / "splits.csv"), split="train")  # fmt: skip
        shuffled = independent_labels(res.labels, 2, 4)
        assert (shuffled != res.labels).any()
        fit = json.loads((run / "train_fit.json").read_text())
        assert fit["loss"] == pytest.approx(cross_entropy(shuffled, res.probs), rel=1e-6)
        assert fit["loss"] != pytest.approx(cross_entropy(res.labels, res.probs), rel=1e-3)


def test_each_fold_of_a_cross_validation_keeps_its_best_restart(cohort, tmp_path: Path) -> None:
    from wsipipe.train.crossval import cross_validate

    s = cross_validate(_cfg(cohort, tmp_path / "cv", epochs=1, folds=2, restarts=2))
    assert s["pooled_n"] == 12
    for k in range(2):
        fold = tmp_path / "cv" / f"fold_{k}"
        kept = [r["kept"] for r in csv.DictReader((fold / "restarts.csv").open())]
        assert sorted(kept) == ["0", "1"] and (fold / "heldout" / "predictions.csv").exists()
