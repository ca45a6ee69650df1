"""Training-time helpers around the scan: random patch drop, padding B slides' selections
(and DBPS sub-salient embeddings) into one batch, and the gradient pass over B x M tiles.

Shapes: B slides, M (S) = largest selection (auxiliary buffer) in the batch, D width.
Padding is always accompanied by a bool mask (True = real entry); padded entries are
neither encoded nor attended to.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from wsipipe.errors import ConfigError
from wsipipe.models._scan import module_device


def random_patch_drop(n: int, drop_ratio: float, generator: torch.Generator) -> Tensor:
    """Random patch drop (training only, before the scan): a uniformly random subset of the
    ``n`` tile positions with keep ratio ``1 - drop_ratio`` (rounded, at least 1 kept when
    n >= 1), as sorted int64 (n_keep,) indices, drawn from the seeded CPU ``generator``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"random_patch_drop: n={n!r} must be an integer >= 0")
    if not 0.0 <= drop_ratio < 1.0:
        raise ConfigError(
            f"random_patch_drop: drop_ratio={drop_ratio!r} must be in [0, 1) (e.g. 0.1-0.3)"
        )
    if n == 0:
        return torch.empty(0, dtype=torch.int64)
    keep = max(1, round(n * (1.0 - drop_ratio)))
    if keep == n:
        return torch.arange(n, dtype=torch.int64)
    perm = torch.randperm(n, generator=generator, dtype=torch.int64)
    return perm[:keep].sort().values


def pad_batch(
    items: Sequence[Tensor], length: int | None = None, value: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Stack B tensors of shapes (L_b, *rest) into (B, L, *rest), L = max L_b (or ``length``),
    padding with ``value``; returns (padded, mask (B, L) bool, True = real entry)."""
    if len(items) == 0:
        raise ValueError("pad_batch needs at least one tensor")
    rest = items[0].shape[1:]
    for x in items:
        if x.shape[1:] != rest or x.dtype != items[0].dtype:
            raise ValueError(
                f"pad_batch: shapes/dtypes differ beyond dim 0: {tuple(x.shape)} {x.dtype} vs "
                f"(L, {', '.join(map(str, rest))}) {items[0].dtype}"
            )
    longest = max(int(x.shape[0]) for x in items)
    size = longest if length is None else length
    if size < longest:
        raise ValueError(f"pad_batch: length={length} is shorter than the longest item {longest}")
    ref = items[0]
    out = torch.full((len(items), size, *rest), value, dtype=ref.dtype, device=ref.device)
    mask = torch.zeros(len(items), size, dtype=torch.bool, device=ref.device)
    for b, x in enumerate(items):
        out[b, : x.shape[0]] = x
        mask[b, : x.shape[0]] = True
    return out, mask


#: key of the instance logits (B, M) in gradient_pass's output
INSTANCE = "_instance"


def gradient_pass(
    encoder: nn.Module,
    aggregator: nn.Module,
    tiles: Tensor,
    mask: Tensor | None = None,
    aux_emb: Tensor | None = None,
    aux_mask: Tensor | None = None,
    amp_dtype: torch.dtype | None = None,
    instance_head: nn.Module | None = None,
) -> dict[str, Tensor]:
    """Encode the selected tiles with gradients (modules in their current, usually train,
    mode), aggregate, and return {task: logits (B, n_classes) float32}.

    tiles: (B, M, 3, H, W) uint8/float or (B, M, F) features, mask (B, M) bool (True = real
    tile; padded tiles are not encoded, so they neither cost memory nor touch BatchNorm
    statistics). aux_emb (B, S, D) / aux_mask (B, S): DBPS sub-salient embeddings; they are
    detached, so the encoder gets gradients only through the M salient tiles while the
    aggregator also learns from the sub-salient branch. ``amp_dtype`` enables autocast.
    ``instance_head`` ((k, D) -> (k, 1)): also return each selected tile's instance logit,
    ``out[INSTANCE]`` (B, M) float32 (padded entries are garbage: mask them).
    """
    if tiles.ndim < 3:
        raise ValueError(f"gradient_pass expects tiles (B, M, ...), got {tuple(tiles.shape)}")
    dev = module_device(aggregator, None)
    b, m = int(tiles.shape[0]), int(tiles.shape[1])
    if mask is not None and mask.shape != (b, m):
        raise ValueError(f"mask shape {tuple(mask.shape)} != tiles' (B, M) = {(b, m)}")
    all_real = mask is None or bool(mask.all())
    tiles = tiles.to(dev, non_blocking=True)
    mask_dev = (
        torch.ones(b, m, dtype=torch.bool, device=dev)
        if mask is None
        else mask.to(dev, non_blocking=True)
    )
    with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        if all_real:
            emb = encoder(tiles.flatten(0, 1))  # (B*M, D)
            emb = emb.view(b, m, -1)  # (B, M, D)
        else:
            real = encoder(tiles[mask_dev])  # (n_real, D), only real tiles
            emb = real.new_zeros(b, m, real.shape[-1]).masked_scatter(mask_dev[..., None], real)
        if aux_emb is not None:
            aux_emb = aux_emb.detach().to(dev, non_blocking=True)
            if aux_mask is not None:
                aux_mask = aux_mask.to(dev, non_blocking=True)
        out = aggregator(emb, mask_dev, aux_emb, aux_mask)
        if instance_head is not None:
            out = {**out, INSTANCE: instance_head(emb.flatten(0, 1)).view(b, m)}
    return {name: x.float() for name, x in out.items()}
