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

from wsipipe.config import build_config
from wsipipe.errors import ConfigError
from wsipipe.fileio import atomic_write_text
from wsipipe.train.config import TrainConfig


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
) -> PredictResult:
    """Evaluate a checkpoint on slides; see the module docstring."""
    import torch

    from wsipipe.train.checkpoint import load_checkpoint
    from wsipipe.train.cohort import load_eval_slides
    from wsipipe.train.data import ChunkDataset, PlanSampler, TileFetcher, make_loader
    from wsipipe.train.distributed import env_dist, init_distributed, resolve_device
    from wsipipe.train.engine import ScanSettings, predict_slides
    from wsipipe.train.metrics import slide_metrics, write_predictions
    from wsipipe.train.model import amp_dtype_for, build_model
    from wsipipe.train.runs import prepare_specs

    ckpt = load_checkpoint(checkpoint)
    saved = {k: v for k, v in ckpt["config"].items() if not str(k).startswith("_")}
    cfg = build_config(TrainConfig, saved, overrides or {}, source=str(checkpoint))
    classes = tuple(ckpt["classes"])
    device = resolve_device(cfg.device, env_dist()[2])
    dist = init_distributed(device)
    amp = amp_dtype_for(cfg.precision, device)
    if not store_paths and not (stores or cfg.stores):
        raise ConfigError("predict: pass --stores (a `wsipipe tile --out` dir) or --store paths")
    specs, lab, stores_dir = load_eval_slides(
        stores or cfg.stores, labels, split, classes, cfg, store_paths
    )
    specs, fdim = prepare_specs(specs, stores_dir, cfg, device, amp, dist)
    if cfg.mode == "features" and fdim != int(ckpt.get("feature_dim") or 0):
        raise ConfigError(
            f"{checkpoint}: trained on {ckpt.get('feature_dim')}-d features but the cache has "
            f"{fdim}-d; use the same --encoder / --features-dir as in training"
        )
    from dataclasses import replace

    model = build_model(replace(cfg, pretrained=False), len(classes), fdim)
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    pin = device.type == "cuda"
    sampler = PlanSampler()
    loader = make_loader(
        ChunkDataset(specs, cfg.input_px), sampler, cfg.workers, cfg.prefetch, pin, cfg.seed
    )
    fetcher = TileFetcher(cfg.input_px, pin)
    st = ScanSettings(cfg.method, cfg.M, cfg.I, cfg.n_aux, device, amp)
    try:
        with torch.no_grad():
            pred = predict_slides(
                model,
                specs,
                list(range(len(specs))),
                lab.tolist(),
                loader,
                sampler,
                fetcher,
                st,
                dist,
            )
    finally:
        fetcher.close()
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
