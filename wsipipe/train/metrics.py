"""Slide-level metrics (pure numpy) and the per-epoch metric / prediction files.

* :func:`roc_auc` -- binary ROC AUC by the rank statistic (ties count one half).
* :func:`macro_auc` -- binary: AUC of the positive (second) class; multi-class: one-vs-rest
  macro average over the classes present in ``y`` with at least one negative.
* :func:`balanced_accuracy` -- mean recall over the classes present in ``y``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from wsipipe.config import atomic_write_text


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of binary ``y`` (N,) in {0, 1} against ``score`` (N,); NaN if one class only."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=np.float64)
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


def slide_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """{"auc", "bacc", "loss", "acc", "n"} for labeled slides (``y`` >= 0 only)."""
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=np.float64)
    keep = y >= 0
    y, probs = y[keep], probs[keep]
    pred = probs.argmax(axis=1) if y.size else np.zeros(0, dtype=np.int64)
    return {
        "auc": macro_auc(y, probs) if y.size else float("nan"),
        "bacc": balanced_accuracy(y, pred),
        "acc": float((pred == y).mean()) if y.size else float("nan"),
        "loss": cross_entropy(y, probs),
        "n": int(y.size),
    }


def write_predictions(
    path: str | Path,
    slide_ids: Sequence[str],
    probs: np.ndarray,
    classes: Sequence[str],
    labels: Sequence[int] | None = None,
) -> None:
    """Per-slide predictions CSV: slide_id,label,pred,prob_<class>... (atomic)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["slide_id", "label", "pred", *[f"prob_{c}" for c in classes]])
    for i, sid in enumerate(slide_ids):
        lab = labels[i] if labels is not None else -1
        w.writerow(
            [
                sid,
                classes[lab] if lab >= 0 else "",
                classes[int(np.argmax(probs[i]))],
                *[f"{p:.6f}" for p in probs[i]],
            ]
        )
    atomic_write_text(path, buf.getvalue())


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsLog:
    """Per-epoch records in ``metrics.jsonl`` and ``metrics.csv`` (rewritten atomically).

    On resume, records of epochs after the checkpoint are dropped (a killed run may have
    logged an epoch whose checkpoint never landed).
    """

    def __init__(self, run_dir: Path, keep_until_epoch: int | None = None) -> None:
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        self.records: list[dict[str, Any]] = []
        if keep_until_epoch is not None and self.jsonl.exists():
            for line in self.jsonl.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    if int(rec.get("epoch", 0)) <= keep_until_epoch:
                        self.records.append(rec)
        self._flush()
        self._tb: Any = None

    def enable_tensorboard(self, log_dir: Path) -> bool:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard not installed
            return False
        self._tb = SummaryWriter(log_dir=str(log_dir))
        return True

    def append(self, record: Mapping[str, Any]) -> None:
        rec = {k: _json_value(v) for k, v in record.items()}
        self.records.append(rec)
        self._flush()
        if self._tb is not None:
            step = int(rec.get("epoch", len(self.records)))
            for k, v in rec.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def _flush(self) -> None:
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.records))
        keys: list[str] = []
        for r in self.records:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        for r in self.records:
            w.writerow({k: "" if r.get(k) is None else r.get(k) for k in keys})
        atomic_write_text(self.csv, buf.getvalue())

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
