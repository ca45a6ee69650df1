"""The training run: setup, epochs of IPS/DBPS steps, evaluation, checkpoints, resume.

Per optimiser step, B slides are scanned one after the other (chunks streamed by the loader's
workers), their M selected tiles re-read by index (overlapping the next scan), then one
gradient pass runs over the B x M tiles (or ``micro_batch`` slides at a time, gradients
accumulated) and AdamW steps with the warm-up + cosine schedule.

Run directory (``--out``): ``config.yaml``, ``checkpoints/{last,best}.pt``,
``metrics.{jsonl,csv}``, ``predictions/val_epoch_NNN.csv`` and ``val_best.csv``,
``train_order.jsonl`` (each rank's slide order per epoch), ``tensorboard/`` when installed.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsipipe import __version__
from wsipipe.config import config_to_dict, save_config
from wsipipe.errors import ConfigError
from wsipipe.fileio import atomic_write_text
from wsipipe.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from wsipipe.train.cohort import Cohort, load_cohort
from wsipipe.train.config import TrainConfig
from wsipipe.train.data import (
    ChunkDataset,
    ChunkStream,
    PlanSampler,
    TileFetcher,
    make_loader,
    plan_chunks,
)
from wsipipe.train.distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    env_dist,
    init_distributed,
    resolve_device,
    shard_order,
)
from wsipipe.train.engine import ScanSettings, collate, predict_slides, scan_slide
from wsipipe.train.metrics import MetricsLog, slide_metrics, write_predictions
from wsipipe.train.model import (
    SlideModel,
    amp_dtype_for,
    build_model,
    calibrate_batchnorm,
    freeze_batchnorm,
    make_optimizer,
)
from wsipipe.train.progress import RunProgress
from wsipipe.train.runs import (
    check_resume_config,
    config_for_resume,
    epoch_line,
    independent_labels,
    peak_rss_mb,
    prepare_specs,
)
from wsipipe.train.schedule import WarmupCosine, schedule_steps


class Trainer:
    """One training run (also one rank of a torchrun job)."""

    def __init__(self, cfg: TrainConfig, resume: bool = False) -> None:
        self.cfg = cfg
        _, _, local_rank = env_dist()
        self.device = resolve_device(cfg.device, local_rank)
        self.dist: DistInfo = init_distributed(self.device)
        self.amp = amp_dtype_for(cfg.precision, self.device)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.run_dir = Path(cfg.out)
        self.ckpt_dir = self.run_dir / "checkpoints"
        last = self.ckpt_dir / "last.pt"
        if resume and not last.exists():
            raise ConfigError(f"{self.run_dir}: nothing to resume (no checkpoints/last.pt)")
        if not resume and last.exists():
            raise ConfigError(
                f"{self.run_dir}: already holds a run (checkpoints/last.pt); pass --resume to "
                "continue it or choose another --out"
            )
        self.cohort: Cohort = load_cohort(cfg)
        self.specs, self.feature_dim = prepare_specs(
            self.cohort.specs, self.cohort.stores_dir, cfg, self.device, self.amp, self.dist
        )
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        n_classes = len(self.cohort.classes)
        self.model: SlideModel = build_model(cfg, n_classes, self.feature_dim).to(self.device)
        self.optimizer = make_optimizer(self.model, cfg.lr, cfg.weight_decay)
        n_train_rank = len(shard_order(len(self.cohort.train), self.dist, 0, cfg.seed, True))
        self.steps_per_epoch, total, warmup = schedule_steps(
            n_train_rank, cfg.batch_size, cfg.epochs, cfg.warmup_epochs
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(total, warmup, cfg.min_lr_ratio)
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        self.epoch = 0  # epochs completed
        self.step = 0  # optimiser steps done
        self.best_auc = -math.inf  # best = highest val AUC, ties broken by lower val loss
        self.best_loss = math.inf
        self.labels = self.cohort.labels.copy()
        if cfg.shuffle_labels:  # control experiment: break the slide-label association
            tr = np.array(self.cohort.train)
            self.labels[tr] = independent_labels(self.labels[tr], n_classes, cfg.seed)
        self.calibrated_tiles = 0
        if resume:
            self._load(last)
        self.st = ScanSettings(cfg.method, cfg.M, cfg.I, cfg.n_aux, self.device, self.amp)
        pin = self.device.type == "cuda"
        self.sampler = PlanSampler()
        self.loader = make_loader(
            ChunkDataset(self.specs, cfg.input_px),
            self.sampler,
            cfg.workers,
            cfg.prefetch,
            pin,
            cfg.seed,
        )
        self.fetcher = TileFetcher(cfg.input_px, pin)
        if self.epoch == 0 and self.step == 0 and cfg.bn_calibrated:
            self._calibrate()  # before DDP wraps the model: it broadcasts rank 0's statistics
        if cfg.compile:
            self.model.encoder.compile()
        self.ddp: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        if self.dist.is_main:
            save_config(
                cfg, self.run_dir / "config.yaml", extra={"_classes": list(self.cohort.classes)}
            )
        self.log = (
            MetricsLog(self.run_dir, keep_until_epoch=self.epoch) if self.dist.is_main else None
        )
        if self.log is not None and cfg.tensorboard:
            self.log.enable_tensorboard(self.run_dir / "tensorboard")

    # ---- checkpoints ----------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
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
            "wsipipe_version": __version__,
        }

    def _load(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location=self.device)
        check_resume_config(ckpt["config"], self.cfg, path)
        if list(ckpt["classes"]) != list(self.cohort.classes):
            raise ConfigError(
                f"{path}: classes {ckpt['classes']} differ from the labels CSV's "
                f"{list(self.cohort.classes)}; resume with the same labels"
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.best_auc = float(ckpt["best_auc"])
        self.best_loss = float(ckpt["best_loss"])
        restore_rng(ckpt["rng"])

    # ---- training -------------------------------------------------------------------------
    def _calibrate(self, epoch: int = 0) -> None:
        """Frozen BN of a random-init encoder: statistics estimated from training tiles (a
        seeded sample per epoch), identical on every rank (rank 0's are broadcast)."""
        cfg = self.cfg
        train = self.cohort.train
        order = [train[i] for i in shard_order(len(train), self.dist, epoch, cfg.seed + 1, True)]
        stream = ChunkStream(self.loader, self.sampler, plan_chunks(order, self.specs, cfg.I))

        def chunks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for pos in order:
                yield from stream.slide(pos)

        self.calibrated_tiles = calibrate_batchnorm(
            self.model.encoder, chunks(), cfg.calibrate_tiles, self.device
        )
        if self.dist.enabled:
            import torch.distributed as tdist

            for buf in self.model.encoder.buffers():
                tdist.broadcast(buf, src=0)
        if self.dist.is_main and cfg.progress:
            RunProgress(False, True).log(
                f"BatchNorm statistics estimated on {self.calibrated_tiles} tiles"
            )

    def fit(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        with RunProgress(cfg.progress, self.dist.is_main) as prog:
            self.prog = prog
            if self.epoch >= cfg.epochs:
                prog.log(f"{self.run_dir}: all {cfg.epochs} epochs already done")
            while self.epoch < cfg.epochs:
                record = self._train_epoch(self.epoch)
                record.update(self._validate(self.epoch))
                self._end_epoch(record)
        self.close()
        return self.log.records if self.log is not None else []

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, dist = self.cfg, self.dist
        train = self.cohort.train
        order = [train[i] for i in shard_order(len(train), dist, epoch, cfg.seed, True)]
        every = cfg.calibrate_every
        if cfg.bn_calibrated and epoch > 0 and every > 0 and epoch % every == 0:
            self._calibrate(epoch)  # weights moved: re-estimate the frozen statistics
        self._log_order(epoch, order)
        plan = plan_chunks(
            order, self.specs, cfg.I, cfg.drop_ratio, cfg.shuffle_tiles, cfg.seed, epoch
        )
        stream = ChunkStream(self.loader, self.sampler, plan)
        self.model.train()
        if cfg.bn_frozen:
            freeze_batchnorm(self.model.encoder)
        self.prog.start(f"epoch {epoch + 1}/{cfg.epochs}", len(order))
        t0 = time.perf_counter()
        scan_s = grad_s = 0.0
        tiles = slides = 0
        loss_sum = correct = 0.0
        for b0 in range(0, len(order), cfg.batch_size):
            batch = order[b0 : b0 + cfg.batch_size]
            results, futures = [], []
            ts = time.perf_counter()
            for pos in batch:
                res = scan_slide(self.model, stream.slide(pos), self.st)
                results.append(res)
                futures.append(self.fetcher.submit(self.specs[pos], res.indices.cpu().numpy()))
                tiles += res.n_tiles
            tg = time.perf_counter()
            scan_s += tg - ts
            loss, n_correct = self._step(batch, results, futures)
            grad_s += time.perf_counter() - tg
            slides += len(batch)
            loss_sum += loss
            correct += n_correct
            self.prog.advance(len(batch), slides, tiles, loss_sum / slides)
        secs = time.perf_counter() - t0
        totals = all_gather_objects((slides, tiles, loss_sum, correct), dist)
        n_sl = sum(t[0] for t in totals)
        return {
            "epoch": epoch + 1,
            "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
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

    def _step(
        self, batch: list[int], results: list[Any], futures: list[Any]
    ) -> tuple[float, float]:
        """One optimiser step over ``batch``; returns (sum of slide losses, n correct)."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        micro = cfg.micro_batch or len(batch)
        groups = [list(range(i, min(i + micro, len(batch)))) for i in range(0, len(batch), micro)]
        loss_sum, correct = 0.0, 0.0
        for gi, g in enumerate(groups):
            x, mask, aux, aux_mask = collate(
                [futures[j].result() for j in g], [results[j] for j in g], cfg.method == "dbps"
            )
            y = torch.tensor([int(self.labels[batch[j]]) for j in g], device=self.device)
            last = gi == len(groups) - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.ddp.no_sync()  # type: ignore[operator]
            with sync:
                logits = self.ddp(x, mask, aux, aux_mask, amp_dtype=self.amp)  # (b, C)
                loss = F.cross_entropy(logits, y, reduction="sum") / len(batch)
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            loss_sum += float(loss.detach()) * len(batch)
            correct += float((logits.detach().argmax(dim=1) == y).sum())
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss_sum, correct

    def _validate(self, epoch: int) -> dict[str, Any]:
        co = self.cohort
        t0 = time.perf_counter()
        self.prog.start(f"validate {epoch + 1}", len(co.val))
        done = [0, 0]

        def tick(n_tiles: int) -> None:
            done[0] += 1
            done[1] += n_tiles
            self.prog.advance(1, done[0], done[1])

        pred = predict_slides(
            self.model,
            self.specs,
            co.val,
            self.labels.tolist(),
            self.loader,
            self.sampler,
            self.fetcher,
            self.st,
            self.dist,
            tick,
        )
        m = slide_metrics(pred.labels, pred.probs)
        if self.dist.is_main:
            path = self.run_dir / "predictions" / f"val_epoch_{epoch + 1:03d}.csv"
            write_predictions(path, pred.slide_ids, pred.probs, co.classes, pred.labels.tolist())
        return {f"val_{k}": v for k, v in m.items()} | {"val_s": time.perf_counter() - t0}

    def _end_epoch(self, record: dict[str, Any]) -> None:
        self.epoch += 1
        auc, loss = record.get("val_auc"), record.get("val_loss")
        score = auc if isinstance(auc, float) and math.isfinite(auc) else -math.inf
        loss = loss if isinstance(loss, float) and math.isfinite(loss) else math.inf
        improved = (score, -loss) > (self.best_auc, -self.best_loss) or not (
            self.ckpt_dir / "best.pt"
        ).exists()
        if improved:
            self.best_auc, self.best_loss = score, loss
        record["best_val_auc"] = self.best_auc if math.isfinite(self.best_auc) else None
        record["peak_rss_mb"] = peak_rss_mb()
        if self.device.type == "cuda":
            record["peak_gpu_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.dist.is_main:
            assert self.log is not None  # rank 0 always has a log
            self.log.append(record)
            state = self._state()
            if improved:
                save_checkpoint(self.ckpt_dir / "best.pt", state)
                src = self.run_dir / "predictions" / f"val_epoch_{self.epoch:03d}.csv"
                shutil.copyfile(src, self.run_dir / "predictions" / "val_best.csv")
            save_checkpoint(self.ckpt_dir / "last.pt", state)
            self.prog.log(epoch_line(record, self.cfg.epochs))
        barrier(self.dist)

    def _log_order(self, epoch: int, order: list[int]) -> None:
        ids = [self.specs[p].slide_id for p in order]
        ranks = all_gather_objects(ids, self.dist)
        if self.dist.is_main:
            path = self.run_dir / "train_order.jsonl"
            lines = path.read_text().splitlines() if path.exists() else []
            lines = [ln for ln in lines if ln and json.loads(ln)["epoch"] <= epoch]
            lines.append(json.dumps({"epoch": epoch + 1, "ranks": ranks}))
            atomic_write_text(path, "\n".join(lines) + "\n")

    def close(self) -> None:
        self.fetcher.close()
        if self.log is not None:
            self.log.close()
        del self.loader


def train(cfg: TrainConfig, resume: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) training; returns the per-epoch metric records (rank 0)."""
    trainer = Trainer(cfg, resume=resume)
    return trainer.fit()


__all__ = ["Trainer", "config_for_resume", "independent_labels", "prepare_specs", "train"]
