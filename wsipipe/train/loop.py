"""The training run, top to bottom: set up, then per epoch train, validate, checkpoint.

    run = setup_run(cfg, resume)  # cohort, tile pipeline (features first), model, optimiser
    fit(run)                      # per epoch: train_epoch, validate, end_epoch

One optimiser step: B slides are scanned one after the other without gradients (chunks
streamed by the loader's workers), each slide's M selected tiles re-read by index while the
next slide is scanned; then one gradient pass runs over the B x M tiles (or ``micro_batch``
slides at a time, gradients accumulated) and AdamW steps with the warm-up + cosine schedule.

Run directory (``--out``): ``config.yaml``, ``checkpoints/{last,best}.pt``,
``metrics.{jsonl,csv}``, ``predictions/val_epoch_NNN.csv`` and ``val_best.csv``,
``train_order.jsonl`` (each rank's slide order per epoch), ``tensorboard/`` when installed;
``train_fit.json`` for a restart (:func:`training_fit`). ``--restarts N``: N such runs under
``restarts/``, the best kept (:mod:`wsipipe.train.restarts`).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsipipe import __version__
from wsipipe.config import config_to_dict, save_config
from wsipipe.errors import ConfigError
from wsipipe.fileio import atomic_write_text, remove_stale_temps
from wsipipe.models.mil import instance_mil_loss
from wsipipe.train.checkpoint import (
    capture_rng,
    load_checkpoint,
    load_weights,
    restore_rng,
    save_checkpoint,
)
from wsipipe.train.cohort import Cohort, load_cohort, write_splits
from wsipipe.train.config import TrainConfig
from wsipipe.train.data import ChunkPipeline, scan_indices
from wsipipe.train.distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    env_dist,
    init_distributed,
    resolve_device,
    shard_order,
)
from wsipipe.train.encoding import resolve_input
from wsipipe.train.inference import (
    ScanSettings,
    all_tiles,
    collate,
    load_model,
    open_pipeline,
    predict_slides,
    scan_slide,
    tiling_record,
)
from wsipipe.train.metrics import MetricsLog, json_value, slide_metrics, write_predictions
from wsipipe.train.model import (
    SlideModel,
    build_model,
    calibrate_batchnorm,
    freeze_batchnorm,
    make_optimizer,
)
from wsipipe.train.progress import RunProgress
from wsipipe.train.runs import (
    TRAIN_FIT,
    check_resume_config,
    config_for_resume,
    epoch_line,
    independent_labels,
    peak_rss_mb,
)
from wsipipe.train.schedule import WarmupCosine, schedule_steps

if TYPE_CHECKING:
    from wsipipe.models import ScanResult


@dataclass
class Run:
    """Everything the epochs of one training run (one rank of a torchrun job) share."""

    cfg: TrainConfig
    device: torch.device
    dist: DistInfo
    cohort: Cohort
    pipeline: ChunkPipeline  # the cohort's tiles (features in features mode)
    feature_dim: int
    model: SlideModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None  # fp16 only
    st: ScanSettings
    labels: np.ndarray  # (n slides,) training targets (permuted for the shuffled control)
    ddp: nn.Module  # the model, wrapped by DistributedDataParallel under torchrun
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps done
    best_auc: float = -math.inf  # best = highest val AUC, ties broken by lower val loss
    best_loss: float = math.inf
    log: MetricsLog | None = None  # rank 0 only
    calibrated_tiles: int = 0

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.out)

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint (see :mod:`wsipipe.train.checkpoint`)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "best_auc": self.best_auc,
            "best_loss": self.best_loss,
            "rng": capture_rng(),
            "config": config_to_dict(self.cfg),
            "classes": list(self.cohort.classes),
            "feature_dim": self.feature_dim,
            "tiling": tiling_record(self.cohort.specs, self.cfg),
            "wsipipe_version": __version__,
        }

    def load(self, path: Path) -> None:
        """Continue from the checkpoint ``path`` (same config and classes)."""
        ckpt = load_checkpoint(path, map_location=self.device)
        check_resume_config(ckpt["config"], self.cfg, path)
        if list(ckpt["classes"]) != list(self.cohort.classes):
            raise ConfigError(
                f"{path}: classes {ckpt['classes']} differ from the labels CSV's "
                f"{list(self.cohort.classes)}; resume with the same labels"
            )
        load_weights(self.model, ckpt, path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.best_auc = float(ckpt["best_auc"])
        self.best_loss = float(ckpt["best_loss"])
        restore_rng(ckpt["rng"])

    def close(self) -> None:
        self.pipeline.close()
        if self.log is not None:
            self.log.close()


# ---- set-up ---------------------------------------------------------------------------------


def train(cfg: TrainConfig, resume: bool = False, report_fit: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) training; returns the per-epoch metric records (rank 0).

    ``cfg.restarts`` > 1: N runs under ``<out>/restarts/``, the best kept
    (:mod:`wsipipe.train.restarts`). ``report_fit``: when the epochs are done, also write
    ``train_fit.json`` (:func:`training_fit`)."""
    if cfg.restarts > 1:
        from wsipipe.train.restarts import train_restarts

        return train_restarts(cfg, resume)
    run = setup_run(cfg, resume)
    try:
        records = fit(run)
        if report_fit:
            training_fit(run)
        return records
    finally:
        run.close()


def training_fit(run: Run) -> dict[str, Any]:
    """How well the run's best checkpoint fits its own training slides: slide metrics (loss,
    AUC, ...) in eval mode, against the labels it trained on (the shuffled ones in the
    control); written to ``train_fit.json`` (rank 0) and returned."""
    best = run.ckpt_dir / "best.pt"
    lm = load_model(best, device=str(run.device))
    pred = predict_slides(
        lm.model, run.pipeline, run.cohort.train, run.labels.tolist(), lm.settings, run.dist
    )
    fit = {"checkpoint": best.name, "epoch": lm.epoch, **slide_metrics(pred.labels, pred.probs)}
    if run.dist.is_main:
        clean = {k: json_value(v) for k, v in fit.items()}
        atomic_write_text(run.run_dir / TRAIN_FIT, json.dumps(clean, indent=1) + "\n")
    barrier(run.dist)  # every rank reads it next (restarts)
    return fit


def setup_run(cfg: TrainConfig, resume: bool = False) -> Run:
    """Validate the cohort, open its tile pipeline (computing features first in features
    mode), build the model, optimiser and schedule, and restore ``last.pt`` on resume."""
    device = resolve_device(cfg.device, env_dist()[2])
    dist = init_distributed(device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    last = _check_run_dir(Path(cfg.out), resume)
    cohort = load_cohort(cfg)
    cfg = resolve_input(cfg, cohort.specs)  # tile size the encoder sees, resolved once
    pipeline, feature_dim = open_pipeline(cfg, cohort.specs, cohort.stores_dir, device, dist)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    n_classes = len(cohort.classes)
    model = build_model(cfg, n_classes, feature_dim).to(device)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    n_train_rank = len(shard_order(len(cohort.train), dist, 0, cfg.seed, True))
    _, total, warmup = schedule_steps(n_train_rank, cfg.batch_size, cfg.epochs, cfg.warmup_epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(total, warmup, cfg.min_lr_ratio)
    )
    st = ScanSettings.of(cfg, device)
    scaler = torch.amp.GradScaler("cuda") if st.amp_dtype == torch.float16 else None
    labels = cohort.labels.copy()
    if cfg.shuffle_labels:  # control experiment: break the slide-label association
        tr = np.array(cohort.train)
        labels[tr] = independent_labels(labels[tr], n_classes, cfg.data_seed)
    run = Run(cfg, device, dist, cohort, pipeline, feature_dim, model, optimizer, scheduler,
              scaler, st, labels, ddp=model)  # fmt: skip
    if resume:
        run.load(last)
    if run.epoch == 0 and run.step == 0 and cfg.mode == "features":
        standardise(run)  # before DDP wraps the model: it broadcasts rank 0's moments
    if run.epoch == 0 and run.step == 0 and cfg.bn_calibrated:
        calibrate(run, 0)  # before DDP wraps the model: it broadcasts rank 0's statistics
    if cfg.compile:
        model.encoder.compile()
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        run.ddp = DistributedDataParallel(model, device_ids=ids)
    if dist.is_main:
        for folder in (run.run_dir, run.ckpt_dir, run.run_dir / "predictions"):
            remove_stale_temps(folder)  # a killed run's half-written checkpoint, config...
        save_config(cfg, run.run_dir / "config.yaml", extra={"_classes": list(cohort.classes)})
        write_splits(run.run_dir / "splits.csv", cohort)
        if cohort.carved and not resume:
            n_val = len(cohort.val)
            RunProgress(False, True).log(
                f"{cfg.labels}: no `{cfg.val_split}` split, so {n_val} of the training slides "
                f"(a stratified, seeded {cfg.val_fraction:g}) validate; the split is in "
                f"{run.run_dir / 'splits.csv'}"
            )
        run.log = MetricsLog(run.run_dir, keep_until_epoch=run.epoch)
        if cfg.tensorboard:
            run.log.enable_tensorboard(run.run_dir / "tensorboard")
    return run


def _check_run_dir(run_dir: Path, resume: bool) -> Path:
    last = run_dir / "checkpoints" / "last.pt"
    if resume and not last.exists():
        raise ConfigError(f"{run_dir}: nothing to resume (no checkpoints/last.pt)")
    if not resume and last.exists():
        raise ConfigError(
            f"{run_dir}: already holds a run (checkpoints/last.pt); pass --resume to "
            "continue it or choose another --out"
        )
    return last


#: features read per training slide to estimate the standardisation moments
MOMENT_TILES_PER_SLIDE = 1024


def standardise(run: Run) -> None:
    """Features mode, ``feature_norm: standard``: the encoder's per-feature mean and
    standard deviation from the training slides' tiles (up to MOMENT_TILES_PER_SLIDE evenly
    spaced tiles of each; validation slides are not looked at), identical on every rank."""
    from wsipipe.models import FeatureEncoder
    from wsipipe.models.encoders import feature_moments

    enc = run.model.encoder
    if not isinstance(enc, FeatureEncoder) or not enc.standardises:
        return

    def chunks() -> Iterator[Tensor]:
        for pos in run.cohort.train:
            n = run.pipeline.sources[pos].n_tiles
            take = np.unique(np.linspace(0, n - 1, min(n, MOMENT_TILES_PER_SLIDE)).astype(int))
            yield run.pipeline.fetch(pos, take).result()

    mean, std = feature_moments(chunks())
    enc.set_moments(mean.to(run.device), std.to(run.device))
    if run.dist.enabled:
        import torch.distributed as tdist

        for buf in (enc.mean, enc.std):
            tdist.broadcast(buf, src=0)


def calibrate(run: Run, epoch: int) -> None:
    """Frozen BN of a random-init encoder: statistics estimated from training tiles (a
    seeded sample per epoch), identical on every rank (rank 0's are broadcast)."""
    cfg, train_set = run.cfg, run.cohort.train
    order = [train_set[i] for i in shard_order(len(train_set), run.dist, epoch, cfg.seed + 1, True)]
    stream = run.pipeline.stream(order, cfg.I)

    def chunks() -> Iterator[tuple[Tensor, Tensor]]:
        for pos in order:
            yield from stream.slide(pos)

    run.calibrated_tiles = calibrate_batchnorm(
        run.model.encoder, chunks(), cfg.calibrate_tiles, run.device
    )
    if run.dist.enabled:
        import torch.distributed as tdist

        for buf in run.model.encoder.buffers():
            tdist.broadcast(buf, src=0)
    if run.dist.is_main and cfg.progress:
        RunProgress(False, True).log(
            f"BatchNorm statistics estimated on {run.calibrated_tiles} tiles"
        )


# ---- the epochs -----------------------------------------------------------------------------


def fit(run: Run) -> list[dict[str, Any]]:
    """Train the remaining epochs; returns the per-epoch metric records (rank 0)."""
    cfg = run.cfg
    with RunProgress(cfg.progress, run.dist.is_main) as prog:
        if run.epoch >= cfg.epochs:
            prog.log(f"{run.run_dir}: all {cfg.epochs} epochs already done")
        while run.epoch < cfg.epochs:
            epoch = run.epoch
            every = cfg.calibrate_every
            if cfg.bn_calibrated and epoch > 0 and every > 0 and epoch % every == 0:
                calibrate(run, epoch)  # weights moved: re-estimate the frozen statistics
            record = train_epoch(run, epoch, prog)
            record |= validate(run, epoch, prog)
            end_epoch(run, record, prog)
    return run.log.records if run.log is not None else []


def train_epoch(run: Run, epoch: int, prog: RunProgress) -> dict[str, Any]:
    """One pass over this rank's shard of the training slides, B slides per optimiser step."""
    cfg, dist = run.cfg, run.dist
    train_set = run.cohort.train
    order = [train_set[i] for i in shard_order(len(train_set), dist, epoch, cfg.seed, True)]
    _log_order(run, epoch, order)
    # random patch drop and the optional shuffle: seeded per (seed, epoch, slide)
    stream = run.pipeline.stream(
        order, cfg.I, cfg.drop_ratio, cfg.shuffle_tiles, cfg.seed, epoch
    ) if cfg.scans else None  # fmt: skip
    run.model.train()
    if cfg.bn_frozen:
        freeze_batchnorm(run.model.encoder)
    prog.start(f"epoch {epoch + 1}/{cfg.epochs}", len(order))
    t0 = time.perf_counter()
    scan_s = grad_s = loss_sum = correct = 0.0
    tiles = slides = 0
    for b0 in range(0, len(order), cfg.batch_size):
        batch = order[b0 : b0 + cfg.batch_size]
        # 1. scan each slide without gradients; re-read its M tiles while the next is scanned
        ts = time.perf_counter()
        results: list[ScanResult] = []
        selected: list[Future[Tensor]] = []
        for pos in batch:
            if stream is not None:
                res = scan_slide(run.model, stream.slide(pos), run.st.for_selection())
            else:  # ABMIL / mean pooling: every tile that survives the patch drop
                n = run.pipeline.sources[pos].n_tiles
                keep = scan_indices(n, cfg.drop_ratio, cfg.shuffle_tiles, cfg.seed, epoch, pos)
                res = all_tiles(np.sort(keep))
            results.append(res)
            selected.append(run.pipeline.fetch(pos, res.indices.cpu().numpy()))
            tiles += res.n_tiles
        tg = time.perf_counter()
        scan_s += tg - ts
        # 2. one optimiser step on the B x M selected tiles
        loss, n_correct = optimizer_step(run, batch, results, selected)
        grad_s += time.perf_counter() - tg
        slides += len(batch)
        loss_sum += loss
        correct += n_correct
        prog.advance(len(batch), slides, tiles, loss_sum / slides)
    secs = time.perf_counter() - t0
    totals = all_gather_objects((slides, tiles, loss_sum, correct), dist)
    n_sl = sum(t[0] for t in totals)
    return {
        "epoch": epoch + 1,
        "step": run.step,
        "lr": run.optimizer.param_groups[0]["lr"],
        "train_loss": sum(t[2] for t in totals) / max(n_sl, 1),
        "train_acc": sum(t[3] for t in totals) / max(n_sl, 1),
        "train_slides": n_sl,
        "slides_per_s": n_sl / secs,
        "tiles_per_s": sum(t[1] for t in totals) / secs,
        "scan_tiles_per_s": tiles / max(scan_s, 1e-9),
        "scan_s": scan_s,
        "grad_s": grad_s,
        "train_s": secs,
    }


def optimizer_step(
    run: Run, batch: list[int], results: list[ScanResult], selected: list[Future[Tensor]]
) -> tuple[float, float]:
    """Gradient pass over the batch's selected tiles (``micro_batch`` slides at a time,
    accumulated; DDP syncs on the last), clip, AdamW step, schedule step. Returns (sum of
    the slides' losses, number correct)."""
    cfg = run.cfg
    run.optimizer.zero_grad(set_to_none=True)
    micro = cfg.micro_batch or len(batch)
    groups = [list(range(i, min(i + micro, len(batch)))) for i in range(0, len(batch), micro)]
    loss_sum = correct = 0.0
    for gi, g in enumerate(groups):
        # x (b, M, 3, H, W) | (b, M, F), mask (b, M); DBPS: aux (b, S, D), aux_mask (b, S)
        x, mask, aux, aux_mask = collate(
            [selected[j].result() for j in g], [results[j] for j in g], cfg.method == "dbps"
        )
        y = torch.tensor([int(run.labels[batch[j]]) for j in g], device=run.device)
        last = gi == len(groups) - 1
        sync = contextlib.nullcontext() if last or not run.dist.enabled else run.ddp.no_sync()  # type: ignore[operator]
        with sync:
            # logits (b, C); with instance_loss also the selected tiles' logits (b, M)
            out = run.ddp(x, mask, aux, aux_mask, amp_dtype=run.st.amp_dtype,
                          with_instances=cfg.instance_loss > 0)  # fmt: skip
            logits, inst = out if isinstance(out, tuple) else (out, None)
            loss = F.cross_entropy(logits, y, reduction="sum")
            if inst is not None:  # the MIL constraints on the tiles (padding masked out)
                real = torch.ones_like(inst, dtype=torch.bool) if mask is None else mask
                tile_loss = instance_mil_loss(inst, real.to(inst.device), y > 0)
                loss = loss + cfg.instance_loss * tile_loss
            loss = loss / len(batch)
            (run.scaler.scale(loss) if run.scaler is not None else loss).backward()
        loss_sum += float(loss.detach()) * len(batch)
        correct += float((logits.detach().argmax(dim=1) == y).sum())
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    return loss_sum, correct


def validate(run: Run, epoch: int, prog: RunProgress) -> dict[str, Any]:
    """Predict the validation slides (all tiles, eval mode); metrics and the predictions."""
    co = run.cohort
    t0 = time.perf_counter()
    prog.start(f"validate {epoch + 1}", len(co.val))
    done = [0, 0]

    def tick(n_tiles: int) -> None:
        done[0] += 1
        done[1] += n_tiles
        prog.advance(1, done[0], done[1])

    labels = run.labels.tolist()
    pred = predict_slides(run.model, run.pipeline, co.val, labels, run.st, run.dist, tick)
    m = slide_metrics(pred.labels, pred.probs)
    if run.dist.is_main:
        path = run.run_dir / "predictions" / f"val_epoch_{epoch + 1:03d}.csv"
        write_predictions(path, pred.slide_ids, pred.probs, co.classes, pred.labels.tolist())
    return {f"val_{k}": v for k, v in m.items()} | {"val_s": time.perf_counter() - t0}


def val_key(auc: Any, loss: Any) -> tuple[float, float]:
    """An epoch's validation (AUC, loss), a missing or NaN value counted worst."""
    score = float(auc) if isinstance(auc, float) and math.isfinite(auc) else -math.inf
    return score, float(loss) if isinstance(loss, float) and math.isfinite(loss) else math.inf


def is_new_best(
    epoch: int, warmup_epochs: float, key: tuple[float, float], best: tuple[float, float]
) -> bool:
    """Whether epoch ``epoch`` (1-based) with validation ``key`` (AUC, loss) beats ``best``:
    higher AUC, ties broken by lower loss.

    No epoch of the learning-rate warm-up can be the best: on a validation split of a few
    slides, a barely trained model scores a perfect AUC by luck (benchmarks/RESULTS.md,
    "Checkpoints of the warm-up").
    """
    return epoch > warmup_epochs and (key[0], -key[1]) > (best[0], -best[1])


def end_epoch(run: Run, record: dict[str, Any], prog: RunProgress) -> None:
    """Count the epoch, keep the best checkpoint (:func:`is_new_best`) and the last one.
    Until the warm-up is over, ``best.pt`` is the latest epoch, so that it always exists."""
    run.epoch += 1
    key = val_key(record.get("val_auc"), record.get("val_loss"))
    improved = is_new_best(run.epoch, run.cfg.warmup_epochs, key, (run.best_auc, run.best_loss))
    if improved:
        run.best_auc, run.best_loss = key
    in_warmup = run.epoch <= run.cfg.warmup_epochs
    keep = improved or in_warmup or not (run.ckpt_dir / "best.pt").exists()
    record["best_val_auc"] = run.best_auc if math.isfinite(run.best_auc) else None
    record["peak_rss_mb"] = peak_rss_mb()
    if run.device.type == "cuda":
        record["peak_gpu_mb"] = torch.cuda.max_memory_allocated(run.device) / 2**20
    if run.log is not None:  # rank 0
        run.log.append(record)
        state = run.state_dict()
        if keep:
            save_checkpoint(run.ckpt_dir / "best.pt", state)
            src = run.run_dir / "predictions" / f"val_epoch_{run.epoch:03d}.csv"
            shutil.copyfile(src, run.run_dir / "predictions" / "val_best.csv")
        save_checkpoint(run.ckpt_dir / "last.pt", state)
        prog.log(epoch_line(record, run.cfg.epochs))
    barrier(run.dist)


def _log_order(run: Run, epoch: int, order: list[int]) -> None:
    """Append each rank's slide order of ``epoch`` to ``train_order.jsonl`` (rank 0)."""
    ids = [run.cohort.specs[p].slide_id for p in order]
    ranks = all_gather_objects(ids, run.dist)
    if run.dist.is_main:
        path = run.run_dir / "train_order.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        lines = [ln for ln in lines if ln and json.loads(ln)["epoch"] <= epoch]
        lines.append(json.dumps({"epoch": epoch + 1, "ranks": ranks}))
        atomic_write_text(path, "\n".join(lines) + "\n")


__all__ = [
    "TRAIN_FIT",
    "Run",
    "config_for_resume",
    "fit",
    "independent_labels",
    "setup_run",
    "train",
    "training_fit",
]
