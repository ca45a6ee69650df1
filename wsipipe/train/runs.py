"""Run helpers: what may change on resume, the label-shuffled control, epoch summary lines
(pure functions or thin I/O, used by the training loop)."""

from __future__ import annotations

import json
import resource
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from wsipipe.config import config_to_dict
from wsipipe.errors import ConfigError
from wsipipe.train.config import TrainConfig

#: a run's fit of its own training slides (``loop.training_fit``; what restarts compare)
TRAIN_FIT = "train_fit.json"

#: fields that may change when resuming (they do not change what is computed)
RESUMABLE_CHANGES = frozenset(
    {
        "workers",
        "prefetch",
        "progress",
        "tensorboard",
        "device",
        "out",
        "labels",
        "stores",
        "features_dir",
    }
)


def check_resume_config(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    from wsipipe.train.config import saved_run_fields

    saved, now = saved_run_fields(saved), config_to_dict(cfg)
    diff = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if diff:
        pairs = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in diff)
        raise ConfigError(
            f"{path}: --resume with changed settings ({pairs}); resume with the run's own "
            "config or start a new run with another --out"
        )


def independent_labels(y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """Random labels independent of ``y`` (the label-shuffled control): within each true
    class the slides get a balanced, shuffled assignment over all classes, so no class
    carries information about the truth in the training set."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(y)
    offset = int(rng.integers(n_classes))
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        out[idx] = (np.arange(idx.size) + offset) % n_classes
        offset = (offset + idx.size) % n_classes
    return out


def run_finished(run_dir: Path, epochs: int) -> bool:
    """Whether the run in ``run_dir`` logged its last epoch (``epochs``) to metrics.jsonl: a
    killed run has ``best.pt`` and ``last.pt`` but is not finished."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return False
    lines = [ln for ln in metrics.read_text().splitlines() if ln.strip()]
    return bool(lines) and int(json.loads(lines[-1]).get("epoch", 0)) >= epochs


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def epoch_line(r: dict[str, Any], epochs: int) -> str:
    def f(key: str, fmt: str) -> str:
        v = r.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) else "nan"

    return (
        f"epoch {r['epoch']}/{epochs}  loss {f('train_loss', '.4f')}  "
        f"val_auc {f('val_auc', '.3f')}  val_bacc {f('val_bacc', '.3f')}  "
        f"val_loss {f('val_loss', '.4f')}  {f('slides_per_s', '.2f')} slides/s  "
        f"{f('scan_tiles_per_s', ',.0f')} scan tiles/s  lr {f('lr', '.2e')}"
    )


def config_for_resume(run_dir: Path, overrides: dict[str, Any]) -> TrainConfig:
    """The run's saved config with (runtime) CLI overrides applied."""
    from wsipipe.train.config import load_train_config

    path = run_dir / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{run_dir}: no config.yaml to resume from; check --out")
    cfg = load_train_config(path, overrides)
    return replace(cfg, out=str(run_dir))
