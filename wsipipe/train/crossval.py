"""``wsipipe train --folds K``: K-fold cross-validation over the training slides, one summary.

The labelled slides of the training (and validation) split -- never the test split -- are
assigned to K folds: the CSV's own ``fold`` column when it has one for them, else seeded,
label-stratified folds (whole patients with a ``patient_id`` column). Run ``k`` holds fold k
out: it trains on the other folds, chooses its checkpoint on a validation split carved from
them (``--val-fraction``, stratified, whole patients), and only then predicts fold k with
that checkpoint, so that no held-out prediction has helped choose its own model. Each run is
complete in ``<out>/fold_<k>/`` (checkpoints, metrics, ``splits.csv``; the held-out
predictions in ``heldout/``); a finished fold is not trained again, an unfinished one
resumes.

``<out>/cv_summary.csv`` / ``.json``: per fold the AUC and balanced accuracy on its held-out
fold, their mean +- sd, and on the pooled out-of-fold predictions (every slide predicted by
the model that neither trained nor was chosen on it) the AUC and balanced accuracy with a
bootstrap 95 % confidence interval.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from wsipipe.config import load_yaml
from wsipipe.errors import ConfigError
from wsipipe.fileio import atomic_write_csv, atomic_write_text
from wsipipe.labels.splits import stratified_folds
from wsipipe.labels.table import SlideRecord, read_labels_csv
from wsipipe.stats import balanced_accuracy, bootstrap_ci, macro_auc
from wsipipe.train.config import TrainConfig
from wsipipe.train.runs import run_finished

CV_LABELS = "cv_labels.csv"


def assign_folds(records: list[SlideRecord], k: int, seed: int) -> dict[str, int]:
    """Fold of each slide: the CSV's when every slide has one, else stratified by label,
    a patient's slides together."""
    if records and all(r.fold is not None for r in records):
        folds = {r.slide_id: int(r.fold) for r in records if r.fold is not None}
        if sorted(set(folds.values())) != list(range(k)):
            raise ConfigError(
                f"the labels' fold column holds folds {sorted(set(folds.values()))}, not "
                f"0..{k - 1}; pass --folds {len(set(folds.values()))} or drop the column"
            )
        return folds
    keys = {r.patient or r.slide_id: r.label_name for r in records}
    by_key = stratified_folds(keys, k, seed)
    return {r.slide_id: by_key[r.patient or r.slide_id] for r in records}


HELDOUT = "heldout"  # the split name of fold k in its run's labels


def _cv_labels(cfg: TrainConfig, out: Path) -> tuple[list[SlideRecord], tuple[str, ...],
                                                     dict[str, int]]:  # fmt: skip
    table = read_labels_csv(
        cfg.labels, cfg.label_column, cfg.split_column, cfg.fold_column, cfg.classes
    )
    splits = {cfg.train_split, cfg.val_split}
    records = [r for r in table.records if r.label >= 0 and (r.split in splits or not r.split)]
    if len(records) < 2 * cfg.folds:
        raise ConfigError(
            f"{cfg.labels}: {len(records)} labelled training slides are too few for "
            f"--folds {cfg.folds}; use fewer folds"
        )
    if cfg.val_fraction <= 0:
        raise ConfigError(
            f"--folds {cfg.folds} chooses each fold's checkpoint on a validation split carved "
            f"from its training folds; --val-fraction {cfg.val_fraction} carves none: pass "
            "--val-fraction 0.2"
        )
    folds = assign_folds(records, cfg.folds, cfg.data_seed)
    rows = [(r.slide_id, r.label_name, "train", folds[r.slide_id], r.patient) for r in records]
    atomic_write_csv(out / CV_LABELS, ("slide_id", "label", "split", "fold", "patient_id"), rows)
    return records, table.classes, folds


def _fold_labels(records: list[SlideRecord], folds: dict[str, int], k: int, out: Path) -> Path:
    """Fold k's labels: fold k as the ``heldout`` split, the others as ``train`` (no
    ``val``: the run carves its validation slides from them)."""
    rows = [(r.slide_id, r.label_name, HELDOUT if folds[r.slide_id] == k else "train", r.patient)
            for r in records]  # fmt: skip
    path = out / f"cv_labels_fold_{k}.csv"
    atomic_write_csv(path, ("slide_id", "label", "split", "patient_id"), rows)
    return path


def _check_fold_layout(run_dir: Path, labels: Path) -> None:
    """Refuse a fold run made otherwise (by an older ``--folds``, which chose the checkpoint
    on the held-out fold: its predictions of that fold must not be reported)."""
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return
    old = load_yaml(saved)
    if old.get("fold") is not None or Path(str(old.get("labels", ""))).name != labels.name:
        raise ConfigError(
            f"{run_dir}: this fold was trained with its checkpoint chosen on the held-out "
            "fold (an older wsipipe --folds) or on other labels; give a new --out, or remove "
            f"{run_dir.parent} to run the cross-validation again"
        )


def _read_predictions(path: Path, classes: tuple[str, ...]) -> tuple[list[str], np.ndarray,
                                                                      np.ndarray]:  # fmt: skip
    rows = list(csv.DictReader(path.open()))
    index = {c: i for i, c in enumerate(classes)}
    ids = [r["slide_id"] for r in rows]
    y = np.array([index[r["label"]] for r in rows], dtype=np.int64)
    probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows], dtype=np.float64)
    return ids, y, probs


def _fmt(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def cross_validate(cfg: TrainConfig) -> dict[str, Any]:
    """Train the K folds (see the module docstring) and write the summary; returns it."""
    from wsipipe.train.loop import train
    from wsipipe.train.predict import predict

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    records, classes, folds = _cv_labels(cfg, out)
    rows: list[dict[str, Any]] = []
    pooled_ids: list[str] = []
    pooled_y: list[np.ndarray] = []
    pooled_p: list[np.ndarray] = []
    for k in range(cfg.folds):
        run_dir = out / f"fold_{k}"
        labels = _fold_labels(records, folds, k, out)
        fold_cfg = replace(
            cfg, labels=str(labels), label_column="label", split_column="split",
            train_split="train", val_split="val", fold=None, folds=0, out=str(run_dir),
            classes=classes,
        )  # fmt: skip
        _check_fold_layout(run_dir, labels)
        if not run_finished(run_dir, cfg.epochs):
            train(fold_cfg, resume=(run_dir / "checkpoints" / "last.pt").exists())
        held = run_dir / HELDOUT / "predictions.csv"
        if not held.exists():
            predict(run_dir / "checkpoints" / "best.pt", run_dir / HELDOUT, cfg.stores,
                    str(labels), HELDOUT, overrides={"device": cfg.device,
                                                     "workers": cfg.workers})  # fmt: skip
        ids, y, probs = _read_predictions(held, classes)
        rows.append({"fold": k, "n": len(ids), "auc": macro_auc(y, probs),
                     "bacc": balanced_accuracy(y, probs.argmax(axis=1))})  # fmt: skip
        pooled_ids += ids
        pooled_y.append(y)
        pooled_p.append(probs)
    y_all, p_all = np.concatenate(pooled_y), np.concatenate(pooled_p)
    aucs = np.array([r["auc"] for r in rows], dtype=np.float64)
    baccs = np.array([r["bacc"] for r in rows], dtype=np.float64)
    summary = {
        "folds": rows,
        "auc_mean": float(np.nanmean(aucs)),
        "auc_sd": float(np.nanstd(aucs, ddof=1)) if len(aucs) > 1 else math.nan,
        "bacc_mean": float(np.nanmean(baccs)),
        "bacc_sd": float(np.nanstd(baccs, ddof=1)) if len(baccs) > 1 else math.nan,
        "pooled_n": len(pooled_ids),
        "pooled_auc": macro_auc(y_all, p_all),
        "pooled_auc_ci95": bootstrap_ci(y_all, p_all, "auc", seed=cfg.seed),
        "pooled_bacc": balanced_accuracy(y_all, p_all.argmax(axis=1)),
        "pooled_bacc_ci95": bootstrap_ci(y_all, p_all, "bacc", seed=cfg.seed),
    }
    _write_summary(out, summary)
    return summary


def _write_summary(out: Path, s: dict[str, Any]) -> None:
    rows: list[tuple[Any, ...]] = [
        (r["fold"], r["n"], _fmt(r["auc"]), _fmt(r["bacc"]), "", "") for r in s["folds"]
    ]
    rows.append(("mean", "", _fmt(s["auc_mean"]), _fmt(s["bacc_mean"]), "", ""))
    rows.append(("sd", "", _fmt(s["auc_sd"]), _fmt(s["bacc_sd"]), "", ""))
    lo, hi = s["pooled_auc_ci95"]
    blo, bhi = s["pooled_bacc_ci95"]
    rows.append(("pooled", s["pooled_n"], _fmt(s["pooled_auc"]), _fmt(s["pooled_bacc"]),
                 f"{_fmt(lo)}-{_fmt(hi)}", f"{_fmt(blo)}-{_fmt(bhi)}"))  # fmt: skip
    header = ("fold", "n", "auc", "balanced_accuracy", "auc_ci95", "balanced_accuracy_ci95")
    atomic_write_csv(out / "cv_summary.csv", header, rows)

    def clean(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    atomic_write_text(out / "cv_summary.json", json.dumps(clean(s), indent=1) + "\n")


def summary_lines(s: dict[str, Any]) -> list[str]:
    """The summary as lines for the console."""
    lines = [f"fold {r['fold']}: n={r['n']} auc {_fmt(r['auc'])} bacc {_fmt(r['bacc'])}"
             for r in s["folds"]]  # fmt: skip
    lo, hi = s["pooled_auc_ci95"]
    blo, bhi = s["pooled_bacc_ci95"]
    lines.append(
        f"mean +- sd: auc {_fmt(s['auc_mean'])} +- {_fmt(s['auc_sd'])}, balanced accuracy "
        f"{_fmt(s['bacc_mean'])} +- {_fmt(s['bacc_sd'])}"
    )
    lines.append(
        f"pooled out-of-fold (n={s['pooled_n']}): auc {_fmt(s['pooled_auc'])} "
        f"[95% CI {_fmt(lo)}-{_fmt(hi)}], balanced accuracy {_fmt(s['pooled_bacc'])} "
        f"[{_fmt(blo)}-{_fmt(bhi)}]"
    )
    return lines
