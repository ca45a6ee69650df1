"""Slide-level metrics of a run (:mod:`wsipipe.stats`) and the per-epoch metric /
prediction files."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsipipe.fileio import atomic_write_text
from wsipipe.stats import balanced_accuracy, cross_entropy, macro_auc


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


def json_value(v: Any) -> Any:
    """A metric as JSON can hold it: a NaN or infinite float becomes None."""
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
        rec = {k: json_value(v) for k, v in record.items()}
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
