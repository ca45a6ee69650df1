"""The public inference API: a trained model applied to slides, from its checkpoint.

Everything that scores slides with a model -- validation in the training loop,
``wsipipe predict`` and ``wsipipe heatmap`` -- goes through this module; the heatmap imports
nothing else from :mod:`wsipipe.train`.

* :func:`load_model` -- a checkpoint's model rebuilt on a device, every check in one place.
* :func:`open_pipeline` -- the tile pipeline for some slides (features computed first in
  features mode), :class:`~wsipipe.train.data.ChunkPipeline`.
* :func:`scan_slide` -- IPS or DBPS scan of one slide's chunk stream (no gradients);
  :func:`all_tiles` -- the "selection" of ABMIL / mean pooling, which take every tile.
* :func:`attention_pass` -- the same scan, also keeping every tile's attention logits
  (softmax over ALL tiles, for heatmaps).
* :func:`eval_forward` / :func:`predict_slides` -- class probabilities of slides from their
  selected tiles, eval mode, the re-read of slide i overlapping the scan of slide i+1.
* :func:`collate` -- pad B slides' selected tiles (and DBPS sub-salient embeddings).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor

from wsipipe.config import build_config
from wsipipe.errors import ConfigError
from wsipipe.store import SlideSource
from wsipipe.train.checkpoint import load_checkpoint, load_weights
from wsipipe.train.config import SCAN_METHODS, TrainConfig, saved_run_fields
from wsipipe.train.data import ChunkPipeline, ChunkStream, check_tile_sizes
from wsipipe.train.distributed import (
    DistInfo,
    env_dist,
    gather_unique,
    resolve_device,
    shard_order,
)
from wsipipe.train.model import SlideModel, amp_dtype_for, build_model

__all__ = [
    "AttentionPass",
    "ChunkPipeline",
    "ChunkStream",
    "LoadedModel",
    "Predictions",
    "ScanSettings",
    "all_tiles",
    "attention_pass",
    "check_feature_dim",
    "check_tiling",
    "collate",
    "eval_forward",
    "load_model",
    "open_pipeline",
    "predict_slides",
    "scan_slide",
    "tiling_record",
    "training_stores",
]

if TYPE_CHECKING:
    from wsipipe.models import AttentionMap, ScanResult
    from wsipipe.models.selection import ChunkHook


@dataclass(frozen=True)
class ScanSettings:
    method: str  # "ips" | "dbps"
    M: int
    I: int  # noqa: E741
    S: int
    device: torch.device
    amp_dtype: torch.dtype | None
    #: the training scan's autocast (tile selection only; see ``amp_dtype_for``)
    select_amp_dtype: torch.dtype | None = None

    @classmethod
    def of(cls, cfg: TrainConfig, device: torch.device) -> ScanSettings:
        return cls(
            cfg.method, cfg.M, cfg.I, cfg.n_aux, device, amp_dtype_for(cfg.precision, device),
            amp_dtype_for(cfg.precision, device, selection=True),
        )  # fmt: skip

    def for_selection(self) -> ScanSettings:
        """These settings with the training scan's autocast."""
        return replace(self, amp_dtype=self.select_amp_dtype)

    @property
    def scans(self) -> bool:
        """IPS / DBPS select M tiles by a scan; ABMIL / mean pooling take all tiles."""
        return self.method in SCAN_METHODS


# ---- the model of a checkpoint --------------------------------------------------------------


@dataclass
class LoadedModel:
    """A trained slide model rebuilt from its checkpoint, in eval mode on ``settings.device``."""

    model: SlideModel
    config: TrainConfig  # the run's resolved config, with the runtime overrides applied
    classes: tuple[str, ...]
    feature_dim: int  # features mode: width F of the cached features; 0 in pixel mode
    settings: ScanSettings
    checkpoint: Path
    epoch: int
    tiling: dict[str, Any]  # what the model was trained on (:func:`tiling_record`); {} = old


def load_model(
    checkpoint: str | Path,
    device: str | None = None,
    precision: str | None = None,
    chunk: int = 0,
    overrides: dict[str, Any] | None = None,
) -> LoadedModel:
    """Rebuild the checkpoint's model (its saved TrainConfig) on ``device``, in eval mode.

    ``device`` / ``precision`` None keep the run's own; ``chunk`` > 0 overrides the scan's
    chunk size I; ``overrides`` other runtime fields of the config (workers, features_dir).
    """
    if not str(checkpoint):
        raise ConfigError("--checkpoint is not set; pass a run's checkpoints/best.pt")
    path = Path(checkpoint)
    ckpt = load_checkpoint(path)
    saved = saved_run_fields(ckpt["config"])
    runtime = {"device": device, "precision": precision, "I": chunk or None, **(overrides or {})}
    cfg = build_config(TrainConfig, saved, runtime, source=str(path))
    classes = tuple(str(c) for c in ckpt["classes"])
    fdim = int(ckpt.get("feature_dim") or 0)
    dev = resolve_device(cfg.device, env_dist()[2])  # under torchrun: this rank's GPU
    # the checkpoint holds every weight: no pretrained weights to look for
    model = build_model(replace(cfg, pretrained=False, weights=""), len(classes), fdim)
    load_weights(model, ckpt, path)
    model.to(dev).eval()
    return LoadedModel(
        model, cfg, classes, fdim, ScanSettings.of(cfg, dev), path, int(ckpt.get("epoch", 0)),
        dict(ckpt.get("tiling") or {}),
    )  # fmt: skip


def training_stores(checkpoint: str | Path) -> str:
    """The ``stores`` folder of the run that saved ``checkpoint`` ("" if it recorded none),
    without building its model: where `heatmap` looks when given no ``--stores`` (`predict`
    reads it from the model it loads)."""
    ckpt = load_checkpoint(Path(checkpoint), mmap=True)  # the weights are not read
    return str(ckpt.get("config", {}).get("stores") or "")


def open_pipeline(
    cfg: TrainConfig,
    sources: Sequence[SlideSource],
    stores_dir: Path | None,
    device: torch.device,
    dist: DistInfo | None = None,
) -> tuple[ChunkPipeline, int]:
    """The tile pipeline over ``sources`` for a model of ``cfg``: (pipeline, feature width).

    Tile sizes must agree (or ``input_px`` resizes them); in features mode every slide's
    features are looked up in (or first computed into) the cache, and the pipeline streams
    features instead of pixels.
    """
    dist = dist or DistInfo()
    check_tile_sizes(sources, cfg.input_px, str(stores_dir or "--store"))
    fdim = 0
    if cfg.mode == "features":
        from wsipipe.train.features import embed_specs, features_dir_for

        amp = amp_dtype_for(cfg.precision, device)
        fdir = features_dir_for(stores_dir, cfg)
        sources = embed_specs(sources, fdir, cfg, device, amp, dist)
        fdim = sources[0].feature_dim
    pipeline = ChunkPipeline(sources, cfg.input_px, cfg.workers, cfg.prefetch, device, cfg.seed)
    return pipeline, fdim


def tiling_record(sources: Sequence[SlideSource], cfg: TrainConfig) -> dict[str, Any]:
    """What a model was trained on, recorded in its checkpoints: the stores' tile sizes and
    um/px, and the encoder's input size and normalisation."""
    from wsipipe.encoders.factory import encoder_spec

    rec: dict[str, Any] = {
        "tile_px": sorted({s.tile_px for s in sources if s.tile_px}),
        "target_mpp": sorted({round(s.target_mpp, 6) for s in sources if s.target_mpp}),
        "input_px": cfg.input_px,
        "encoder": cfg.encoder,
    }
    if not cfg.encoder.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        spec = encoder_spec(cfg.encoder)
        rec.update(mean=list(spec.mean), std=list(spec.std))
    return rec


def check_tiling(lm: LoadedModel, sources: Sequence[SlideSource], allow: bool = False) -> None:
    """Stores tiled otherwise than the ones the model was trained on are refused in one line
    (with ``allow``, a warning): another tile size or um/px changes what the model sees."""
    from wsipipe.errors import warn

    want_px, want_mpp = lm.tiling.get("tile_px") or [], lm.tiling.get("target_mpp") or []
    for s in sources:
        bad = []
        if want_px and s.tile_px and lm.config.input_px == 0 and s.tile_px not in want_px:
            bad.append(f"tile px {s.tile_px} (trained on {', '.join(map(str, want_px))})")
        if want_mpp and s.target_mpp and all(abs(s.target_mpp - m) > 1e-3 * m for m in want_mpp):
            bad.append(
                f"{s.target_mpp:g} um/px (trained on {', '.join(f'{m:g}' for m in want_mpp)})"
            )
        if not bad:
            continue
        msg = (
            f"{s.path}: tiled at {' and '.join(bad)} for checkpoint {lm.checkpoint}; re-tile "
            "the slides with the training run's --tile-px / --target-mpp"
        )
        if not allow:
            raise ConfigError(msg + ", or pass --allow-tiling-mismatch to use them anyway")
        warn(msg)


def check_feature_dim(lm: LoadedModel, fdim: int) -> None:
    """A features-mode model must see features of the width it was trained on."""
    if lm.config.mode == "features" and fdim != lm.feature_dim:
        raise ConfigError(
            f"{lm.checkpoint}: trained on {lm.feature_dim}-d features but the cache has "
            f"{fdim}-d; use the same --encoder / --features-dir as in training"
        )


# ---- scans --------------------------------------------------------------------------------


def scan_slide(
    model: SlideModel,
    chunks: Iterable[tuple[Tensor, Tensor]],
    st: ScanSettings,
    on_chunk: ChunkHook | None = None,
) -> ScanResult:
    """Select the slide's M tiles (and S sub-salient embeddings for DBPS); ``on_chunk`` sees
    every chunk's tile indices and attention logits (:data:`wsipipe.models.ChunkHook`)."""
    from wsipipe.models import CrossAttentionAggregator, dbps_scan, ips_scan

    agg = cast(CrossAttentionAggregator, model.aggregator)
    if st.method == "dbps":
        return dbps_scan(model.encoder, agg, chunks, st.M, st.S, st.device, st.amp_dtype, on_chunk)
    return ips_scan(model.encoder, agg, chunks, st.M, st.device, st.amp_dtype, on_chunk)


def all_tiles(indices: Tensor | np.ndarray) -> ScanResult:
    """The "selection" of the methods that aggregate every tile (ABMIL, mean pooling)."""
    from wsipipe.models import ScanResult

    idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
    n = int(idx.numel())
    return ScanResult(indices=idx, scores=torch.full((n,), 1.0 / max(n, 1)), n_tiles=n)


@dataclass
class AttentionPass:
    """Outcome of one slide's attention pass: attention over all tiles and the selection."""

    attention: AttentionMap  # logits (N, T, H) in scan order, indices (N,), log_norm (T, H)
    scan: ScanResult  # selected M (and DBPS S) tile indices


def attention_pass(
    model: SlideModel,
    chunks: Iterable[tuple[Tensor, Tensor]],
    st: ScanSettings,
    n_tiles: int = 0,
) -> AttentionPass:
    """One eval-mode scan that also keeps the raw attention logits (k, T, H) it computes for
    every chunk anyway (no extra compute): their running log-sum-exp gives the exact softmax
    over ALL N tiles. ``n_tiles`` (the slide's N, if known) sizes the logits buffer once.

    Memory: O(N * T * H) logits plus the scan's own O(M + I (+ S)) embeddings."""
    from wsipipe.models import AttentionStream, CrossAttentionAggregator

    stream = AttentionStream(n_tiles)
    if not st.scans:  # ABMIL / mean pooling / TransMIL: each tile's attention logits
        from wsipipe.models._scan import device_chunks, encode, eval_no_grad

        agg = model.aggregator
        tile_logits = cast(Callable[[Tensor], Tensor], agg.tile_logits)
        whole = getattr(agg, "whole_slide_attention", False)  # logits need every tile at once
        parts: list[tuple[Tensor, Tensor]] = []
        with eval_no_grad(model.encoder, agg):
            for idx, tiles in device_chunks(chunks, st.device):
                emb = encode(model.encoder, tiles, st.device, st.amp_dtype)  # (k, D)
                if whole:
                    parts.append((idx, emb))
                else:  # ABMIL / mean pooling: a tile's own logit (k, 1, 1), chunk by chunk
                    stream.add(idx, tile_logits(emb).float())
            if parts:  # TransMIL: the slide's (N, D) embeddings at once, as in training
                emb = torch.cat([e for _, e in parts])
                stream.add(torch.cat([i for i, _ in parts]), tile_logits(emb).float())
        if stream.n_tiles == 0:
            raise ConfigError("the slide yielded no tiles; re-run `wsipipe tile`")
        amap = stream.result(1, getattr(agg, "attention_heads", 1))
        return AttentionPass(amap, all_tiles(amap.indices.sort().values))
    result = scan_slide(model, chunks, st, on_chunk=stream.add)
    if stream.n_tiles == 0:
        raise ConfigError("the slide yielded no tiles; re-run `wsipipe tile`")
    ca = cast(CrossAttentionAggregator, model.aggregator).cfg
    return AttentionPass(stream.result(ca.n_token, ca.heads), result)


# ---- predictions --------------------------------------------------------------------------


def collate(
    tiles: Sequence[Tensor], results: Sequence[ScanResult], dbps: bool
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """(tiles (B, M, ...), mask (B, M), aux_emb (B, S, D) | None, aux_mask (B, S) | None)."""
    from wsipipe.models import pad_batch

    x, mask = pad_batch(list(tiles))
    if not dbps:
        return x, mask, None, None
    aux = [r.aux_emb for r in results]
    if any(a is None for a in aux):
        raise RuntimeError("DBPS scan result without auxiliary embeddings")
    aux_emb, aux_mask = pad_batch([a for a in aux if a is not None])
    return x, mask, aux_emb, aux_mask


@dataclass
class Predictions:
    """Slide-level outputs; ``probs`` (n, C) class probabilities, ``labels`` (n,) (-1 = none)."""

    slide_ids: list[str]
    probs: np.ndarray
    labels: np.ndarray
    n_tiles: int = 0


def eval_forward(model: SlideModel, tiles: Tensor, result: ScanResult, st: ScanSettings) -> Tensor:
    """Class probabilities (C,) of one slide from its selected tiles, eval mode, no grad."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x, mask, aux, aux_mask = collate([tiles], [result], st.method == "dbps")
            logits = model(x, mask, aux, aux_mask, amp_dtype=st.amp_dtype)  # (1, C)
        return torch.softmax(logits.float(), dim=-1)[0].cpu()
    finally:
        model.train(was_training)


def predict_slides(
    model: SlideModel,
    pipeline: ChunkPipeline,
    slides: Sequence[int],
    labels: Sequence[int],
    st: ScanSettings,
    dist: DistInfo,
    on_slide: Callable[[int], None] | None = None,
) -> Predictions:
    """Evaluate ``slides`` (positions into the pipeline's sources; all tiles, storage order).
    Each rank takes its DistributedSampler shard; every rank returns the gathered,
    de-duplicated predictions in the order of ``slides``."""
    sources = pipeline.sources
    mine = [slides[i] for i in shard_order(len(slides), dist, 0, 0, shuffle=False)]
    stream = pipeline.stream(mine, st.I) if st.scans else None
    out: list[tuple[str, tuple[list[float], int]]] = []
    pending: tuple[int, ScanResult, Future[Tensor]] | None = None
    n_tiles = 0

    def finish(item: tuple[int, ScanResult, Future[Tensor]]) -> None:
        pos, res, fut = item
        probs = eval_forward(model, fut.result(), res, st)
        out.append((sources[pos].slide_id, (probs.tolist(), pos)))
        if on_slide is not None:
            on_slide(res.n_tiles)

    for pos in mine:
        if stream is not None:
            res = scan_slide(model, stream.slide(pos), st)
        else:  # every tile, in storage order (ABMIL / mean pooling)
            res = all_tiles(np.arange(sources[pos].n_tiles))
        n_tiles += res.n_tiles
        fut = pipeline.fetch(pos, res.indices.cpu().numpy())
        if pending is not None:
            finish(pending)
        pending = (pos, res, fut)
    if pending is not None:
        finish(pending)
    gathered = dict(gather_unique(out, dist))
    ids = [sources[p].slide_id for p in slides]
    probs = np.array([gathered[i][0] for i in ids], dtype=np.float64).reshape(len(ids), -1)
    lab = np.array([labels[p] for p in slides], dtype=np.int64)
    return Predictions(ids, probs, lab, n_tiles)
