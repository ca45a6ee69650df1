"""``wsipipe predict`` / ``wsipipe train --eval-only``: slide predictions from a checkpoint.

The checkpoint holds the resolved training config and the class names, so the model is
rebuilt exactly; the slides are the rows of a split of a labels CSV, every store of a
directory, or an explicit list of stores. Writes ``predictions.csv`` (slide_id, label,
pred, prob_<class>...) and, when every slide is labeled, ``metrics.json`` (AUC, balanced
accuracy, accuracy, loss).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsipipe.errors import ConfigError
from wsipipe.fileio import atomic_write_text


@dataclass
class PredictResult:
    slide_ids: list[str]
    probs: Any  # (n, C) numpy
    labels: Any  # (n,) numpy, -1 = unknown
    classes: tuple[str, ...]
    metrics: dict[str, float] | None
    predictions_csv: Path


def predict(
    checkpoint: str | Path,
    out: str | Path,
    stores: str = "",
    labels: str | None = None,
    split: str | None = None,
    store_paths: Sequence[str] = (),
    overrides: dict[str, Any] | None = None,
    allow_tiling_mismatch: bool = False,
) -> PredictResult:
    """Evaluate a checkpoint on slides; see the module docstring."""
    import torch

    from wsipipe.train.cohort import load_eval_slides
    from wsipipe.train.distributed import init_distributed
    from wsipipe.train.inference import (
        check_feature_dim,
        check_tiling,
        load_model,
        open_pipeline,
        predict_slides,
    )
    from wsipipe.train.metrics import slide_metrics, write_predictions

    runtime = dict(overrides or {})
    lm = load_model(checkpoint, device=runtime.pop("device", None), overrides=runtime)
    cfg, classes, device = lm.config, lm.classes, lm.settings.device
    dist = init_distributed(device)
    if not store_paths and not (stores or cfg.stores):
        raise ConfigError("predict: pass --stores (a `wsipipe tile --out` dir) or --store paths")
    specs, lab, stores_dir = load_eval_slides(
        stores or cfg.stores, labels, split, classes, cfg, store_paths
    )
    check_tiling(lm, specs, allow_tiling_mismatch)
    pipeline, fdim = open_pipeline(cfg, specs, stores_dir, device, dist)
    check_feature_dim(lm, fdim)
    try:
        with torch.no_grad():
            pred = predict_slides(
                lm.model, pipeline, list(range(len(specs))), lab.tolist(), lm.settings, dist
            )
    finally:
        pipeline.close()
    metrics = slide_metrics(pred.labels, pred.probs) if (pred.labels >= 0).all() else None
    out_dir = Path(out)
    csv_path = out_dir / "predictions.csv"
    if dist.is_main:
        write_predictions(csv_path, pred.slide_ids, pred.probs, classes, pred.labels.tolist())
        if metrics is not None:
            info = {**metrics, "checkpoint": str(checkpoint), "split": split, "classes": classes}
            clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in info.items()}
            atomic_write_text(out_dir / "metrics.json", json.dumps(clean, indent=1))
    return PredictResult(pred.slide_ids, pred.probs, pred.labels, classes, metrics, csv_path)
