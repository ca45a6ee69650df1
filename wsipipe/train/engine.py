"""Per-slide building blocks shared by training, evaluation and ``wsipipe predict``.

* :func:`scan_slide` -- IPS or DBPS scan of one slide's chunk stream (no gradients).
* :func:`collate` -- pad B slides' re-read selected tiles (and DBPS sub-salient embeddings)
  into one batch with masks.
* :func:`predict_slides` -- scan + re-read + aggregate in eval mode for a list of slides,
  sharded over ranks and gathered, pipelined so the re-read of slide i overlaps the scan of
  slide i+1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import Tensor

from wsipipe.train.data import ChunkStream, PlanSampler, TileFetcher, plan_chunks
from wsipipe.train.distributed import DistInfo, gather_unique, shard_order
from wsipipe.train.model import SlideModel

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from wsipipe.models import ScanResult
    from wsipipe.models.selection import ChunkHook
    from wsipipe.train.data import Chunk, SlideSpec


@dataclass(frozen=True)
class ScanSettings:
    method: str  # "ips" | "dbps"
    M: int
    I: int  # noqa: E741
    S: int
    device: torch.device
    amp_dtype: torch.dtype | None


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
    specs: Sequence[SlideSpec],
    slides: Sequence[int],
    labels: Sequence[int],
    loader: DataLoader[Chunk],
    sampler: PlanSampler,
    fetcher: TileFetcher,
    st: ScanSettings,
    dist: DistInfo,
    on_slide: Callable[[int], None] | None = None,
) -> Predictions:
    """Evaluate ``slides`` (positions into ``specs``; all tiles, storage order). Each rank
    takes its DistributedSampler shard; every rank returns the gathered, de-duplicated
    predictions in the order of ``slides``."""
    mine = [slides[i] for i in shard_order(len(slides), dist, 0, 0, shuffle=False)]
    stream = ChunkStream(loader, sampler, plan_chunks(mine, specs, st.I))
    out: list[tuple[str, tuple[list[float], int]]] = []
    pending: tuple[int, ScanResult, Future[Tensor]] | None = None
    n_tiles = 0

    def finish(item: tuple[int, ScanResult, Future[Tensor]]) -> None:
        pos, res, fut = item
        probs = eval_forward(model, fut.result(), res, st)
        out.append((specs[pos].slide_id, (probs.tolist(), pos)))
        if on_slide is not None:
            on_slide(res.n_tiles)

    for pos in mine:
        res = scan_slide(model, stream.slide(pos), st)
        n_tiles += res.n_tiles
        fut = fetcher.submit(specs[pos], res.indices.cpu().numpy())
        if pending is not None:
            finish(pending)
        pending = (pos, res, fut)
    if pending is not None:
        finish(pending)
    gathered = dict(gather_unique(out, dist))
    ids = [specs[p].slide_id for p in slides]
    probs = np.array([gathered[i][0] for i in ids], dtype=np.float64).reshape(len(ids), -1)
    lab = np.array([labels[p] for p in slides], dtype=np.int64)
    return Predictions(ids, probs, lab, n_tiles)
