"""Shared machinery of the streaming passes (scan, heatmap scoring): device placement,
eval/no-grad mode with exact restoration, overlapped host-to-device copies, chunk encoding.

A chunk is ``(indices (k,) int64, tiles (k, 3, H, W) uint8 | (k, F) float)`` on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor, nn

from wsipipe.errors import ConfigError
from wsipipe.models.aggregator import CrossAttentionAggregator

Chunk = tuple[Tensor, Tensor]


def module_device(module: nn.Module, device: torch.device | str | None) -> torch.device:
    """``device`` if given, else the device of the module's first parameter (CPU if none)."""
    if device is not None:
        return torch.device(device)
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


@contextmanager
def eval_no_grad(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode under ``torch.no_grad``; on exit restore every submodule's
    own ``training`` flag (mixed states such as frozen BatchNorm layers survive)."""
    states = [(m, m.training) for mod in modules for m in mod.modules()]
    try:
        for mod in modules:
            mod.eval()
        with torch.no_grad():
            yield
    finally:
        for m, was_training in states:
            m.training = was_training


def check_chunk(idx: Tensor, tiles: Tensor) -> Tensor:
    """Validate one chunk; return its indices as int64 (k,)."""
    if idx.ndim != 1 or tiles.ndim < 2 or idx.shape[0] != tiles.shape[0]:
        raise ValueError(
            f"a chunk must be (indices (k,), tiles (k, ...)); got {tuple(idx.shape)} and "
            f"{tuple(tiles.shape)}"
        )
    if idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise ValueError(f"chunk tile indices must be integers, got {idx.dtype}")
    return idx.long()


def device_chunks(chunks: Iterable[Chunk], device: torch.device) -> Iterator[Chunk]:
    """Yield the chunks on ``device``, skipping empty ones.

    On CUDA the copy of chunk i+1 is issued on a side stream before chunk i is handed out,
    so that (from pinned memory) the transfer overlaps the compute on chunk i.
    """
    if device.type != "cuda":
        for idx, tiles in chunks:
            idx = check_chunk(idx, tiles)
            if idx.numel():
                yield idx.to(device, non_blocking=True), tiles.to(device, non_blocking=True)
        return

    copy_stream = torch.cuda.Stream(device=device)
    compute_stream = torch.cuda.current_stream(device)

    def issue(item: Chunk) -> Chunk:
        idx = check_chunk(*item)
        with torch.cuda.stream(copy_stream):
            copy_stream.wait_stream(compute_stream)  # memory reuse safety
            return idx.to(device, non_blocking=True), item[1].to(device, non_blocking=True)

    it = (c for c in chunks if c[0].numel())
    first = next(it, None)
    pending = issue(first) if first is not None else None
    while pending is not None:
        compute_stream.wait_stream(copy_stream)  # the copy of `pending` is complete
        idx, tiles = pending
        # allocated on copy_stream, used on compute_stream: keep the memory until then
        idx.record_stream(compute_stream)
        tiles.record_stream(compute_stream)
        nxt = next(it, None)
        pending = issue(nxt) if nxt is not None else None
        yield idx, tiles


def encode(
    encoder: nn.Module, tiles: Tensor, device: torch.device, amp_dtype: torch.dtype | None
) -> Tensor:
    """tiles (k, ...) -> embeddings (k, D) float32; the encoder runs under autocast if asked."""
    # no autocast context unless asked: entering one costs ~10 us a chunk on the CPU
    with nullcontext() if amp_dtype is None else torch.autocast(device.type, dtype=amp_dtype):
        emb = encoder(tiles)
    if emb.ndim != 2 or emb.shape[0] != tiles.shape[0]:
        raise ValueError(f"encoder must return (k, D) for k={tiles.shape[0]}, got {emb.shape}")
    return emb.float()


def scan_keys(aggregator: CrossAttentionAggregator, device: torch.device) -> Tensor:
    """The aggregator's folded keys as rows, U^T (T*H, D) float32 contiguous, computed once
    per scan (the weights are constant during it)."""
    with torch.autocast(device.type, enabled=False):
        u = aggregator.folded_keys().float()  # (D, T, H)
    return u.reshape(u.shape[0], -1).t().contiguous()


def chunk_logits(keys: Tensor, emb: Tensor) -> Tensor:
    """emb (k, D) float32, keys U^T (T*H, D) -> raw attention logits in columns (T*H, k),
    float32 (no autocast) so that the ranking of tiles is not degraded by bf16 rounding.

    Columns because the scans rank candidates along that contiguous dimension, and because
    U^T @ emb^T is ~2x cheaper than emb @ U on the CPU for T*H << k (MKL, one thread: 29 vs
    54 us for k=500, D=512, T*H=8). ``lg.t().view(k, T, H)`` is the (k, T, H) view.
    """
    dev = emb.device.type  # leave autocast only where it is on (entering a context costs)
    with torch.autocast(dev, enabled=False) if torch.is_autocast_enabled(dev) else nullcontext():
        return keys @ emb.t()


def check_sizes(M: int, S: int = 0) -> None:
    if not isinstance(M, int) or M < 1:
        raise ConfigError(f"scan: memory buffer M={M!r} must be an integer >= 1")
    if not isinstance(S, int) or S < 0:
        raise ConfigError(f"scan: auxiliary buffer S={S!r} must be an integer >= 0")
