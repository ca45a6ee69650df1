"""``wsipipe train --restarts N``: N runs from different initial weights, the best one kept.

On a small cohort, training from some initial weights never finds the signal: attention
settles on other tiles and the model fits its own training slides badly (on 20 training
slides of a real-texture cohort, 5 of 26 ABMIL starts: training loss 0.29-0.65 where the
others reach 0.005-0.12; benchmarks/RESULTS.md, "Restarts"). A handful of validation slides
does not tell such a run apart, its training loss does. So restart ``r`` trains with seed
``seed + r`` -- the same slides, validation split, folds and (control) shuffled labels for
every restart, drawn with ``split_seed`` (default: ``seed``) -- and the run whose best
checkpoint has the lowest loss on its training slides (eval mode, :func:`train_fit`) is kept.
No validation or test slide takes part in the choice.

Layout of ``<out>``: ``restarts/r<k>/`` (complete runs, each resumable on its own),
``restarts.csv`` (one row per restart, the kept one marked), and the kept run's
``checkpoints/{best,last}.pt``, ``metrics.{jsonl,csv}``, ``splits.csv`` and
``train_fit.json`` copied beside them, so that ``predict``, ``heatmap`` and ``--folds`` use
``<out>`` like any run directory. A finished restart is not trained again; an unfinished one
resumes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from wsipipe.config import save_config
from wsipipe.errors import ConfigError
from wsipipe.fileio import atomic_copy, atomic_write_csv
from wsipipe.train.config import TrainConfig
from wsipipe.train.distributed import env_dist
from wsipipe.train.progress import RunProgress
from wsipipe.train.runs import TRAIN_FIT, check_resume_config, run_finished

RESTARTS = "restarts"
#: what the kept restart's run directory contributes to ``<out>``
KEPT_FILES = (
    "checkpoints/best.pt",
    "checkpoints/last.pt",
    "metrics.jsonl",
    "metrics.csv",
    "splits.csv",
    TRAIN_FIT,
)


@dataclass(frozen=True)
class RestartFit:
    """One restart's outcome: its seed, and its best checkpoint's fit of its training slides."""

    restart: int
    seed: int
    train_loss: float
    train_auc: float
    best_val_auc: float


def choose_restart(fits: Sequence[RestartFit]) -> int:
    """Position in ``fits`` of the restart to keep: the lowest training loss (a NaN counts
    worst), ties to the higher best validation AUC, then to the earlier restart."""
    if not fits:
        raise ValueError("choose_restart: no restarts")

    def key(i: int) -> tuple[float, float, int]:
        f = fits[i]
        loss = f.train_loss if math.isfinite(f.train_loss) else math.inf
        auc = f.best_val_auc if math.isfinite(f.best_val_auc) else -math.inf
        return loss, -auc, i

    return min(range(len(fits)), key=key)


def restart_config(cfg: TrainConfig, r: int) -> TrainConfig:
    """Restart ``r``'s config: seed + r, the split of the whole run, one run, its own folder."""
    return replace(
        cfg, seed=cfg.seed + r, split_seed=cfg.data_seed, restarts=1,
        out=str(Path(cfg.out) / RESTARTS / f"r{r}"),
    )  # fmt: skip


def _number(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else math.nan


def _records(run_dir: Path) -> list[dict[str, Any]]:
    """A run's per-epoch metric records (its ``metrics.jsonl``)."""
    text = (run_dir / "metrics.jsonl").read_text()
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]


def _fit_of(run_dir: Path, r: int, seed: int) -> RestartFit:
    fit = json.loads((run_dir / TRAIN_FIT).read_text())
    recs = _records(run_dir)
    best_val = recs[-1].get("best_val_auc") if recs else None
    return RestartFit(r, seed, _number(fit.get("loss")), _number(fit.get("auc")), _number(best_val))


def _check_out(cfg: TrainConfig, resume: bool) -> None:
    out = Path(cfg.out)
    started = any(out.glob(f"{RESTARTS}/r*/checkpoints/last.pt"))
    kept = (out / "checkpoints" / "last.pt").exists()
    if resume and not (started or kept):
        raise ConfigError(f"{out}: nothing to resume (no restarts/r*/checkpoints/last.pt)")
    if not resume and (started or kept):
        raise ConfigError(
            f"{out}: already holds a run (restarts/ or checkpoints/last.pt); pass --resume to "
            "continue it or choose another --out"
        )
    saved = out / "config.yaml"
    if resume and saved.exists():
        from wsipipe.config import load_yaml

        check_resume_config(load_yaml(saved), cfg, saved)


def train_restarts(cfg: TrainConfig, resume: bool = False) -> list[dict[str, Any]]:
    """Train the ``cfg.restarts`` restarts (see the module docstring), keep the best; returns
    the kept run's per-epoch metric records."""
    from wsipipe.train.loop import train

    _check_out(cfg, resume)
    out = Path(cfg.out)
    main = env_dist()[0] == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    fits: list[RestartFit] = []
    for r in range(cfg.restarts):
        rcfg = restart_config(cfg, r)
        run_dir = Path(rcfg.out)
        if not (run_finished(run_dir, rcfg.epochs) and (run_dir / TRAIN_FIT).exists()):
            # a finished run without its fit (killed in between) only computes the fit
            last = (run_dir / "checkpoints" / "last.pt").exists()
            train(rcfg, resume=last, report_fit=True)
        fits.append(_fit_of(run_dir, r, rcfg.seed))
    k = choose_restart(fits)
    if main:
        _publish(out, fits, k)
        others = ", ".join(f"r{f.restart} {f.train_loss:.4f}" for f in fits if f.restart != k)
        RunProgress(False, True).log(
            f"{out}: kept restart r{k} (seed {fits[k].seed}), training loss "
            f"{fits[k].train_loss:.4f} (the others: {others}); see {out / 'restarts.csv'}"
        )
    return _records(out / RESTARTS / f"r{k}")


def _publish(out: Path, fits: Sequence[RestartFit], k: int) -> None:
    """The kept restart's files into ``out``, the checkpoint last (``last.pt`` marks a run);
    then ``restarts.csv``."""
    src = out / RESTARTS / f"r{k}"
    for rel in sorted(KEPT_FILES, key=lambda p: p.startswith("checkpoints/")):
        if (src / rel).exists():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            atomic_copy(src / rel, out / rel)
    rows = [(f.restart, f.seed, f"{f.train_loss:.6f}", f"{f.train_auc:.6f}",
             f"{f.best_val_auc:.6f}", int(f.restart == k)) for f in fits]  # fmt: skip
    header = ("restart", "seed", "train_loss", "train_auc", "best_val_auc", "kept")
    atomic_write_csv(out / "restarts.csv", header, rows)
