"""Small models and chunk iterators shared by the models tests (random weights, no network)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from wsipipe.models import (
    AggregatorConfig,
    AttentionMap,
    AttentionStream,
    CrossAttentionAggregator,
    FeatureEncoder,
    TaskSpec,
)
from wsipipe.models._scan import chunk_logits, device_chunks, encode, eval_no_grad, scan_keys


def tiny_aggregator(
    dim: int = 16, heads: int = 1, n_token: int = 1, dropout: float = 0.0, seed: int = 0
) -> CrossAttentionAggregator:
    torch.manual_seed(seed)
    tasks = tuple(TaskSpec(f"t{i}", 2 + i) for i in range(n_token))
    cfg = AggregatorConfig(
        dim=dim,
        heads=heads,
        dim_head=8,
        dim_inner=32,
        dropout=dropout,
        attn_dropout=dropout,
        tasks=tasks,
    )
    agg = CrossAttentionAggregator(cfg)
    with torch.no_grad():  # spread the logits so that rankings are well separated
        agg.query.mul_(8.0)
    return agg


def tiny_feature_encoder(in_dim: int = 24, dim: int = 16, seed: int = 0) -> FeatureEncoder:
    torch.manual_seed(seed)
    enc = FeatureEncoder(in_dim, dim, norm="layer-batch")
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        enc.bn.running_mean.uniform_(-0.5, 0.5)
        enc.bn.running_var.uniform_(0.5, 2.0)
    return enc


def chunked(x: Tensor, size: int, offset: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (indices (k,), x[i:i+k]) chunks of ``size`` rows."""
    for start in range(0, x.shape[0], size):
        part = x[start : start + size]
        yield torch.arange(start, start + part.shape[0]) + offset, part


def one_shot_logits(enc: torch.nn.Module, agg: CrossAttentionAggregator, x: Tensor) -> Tensor:
    """Raw logits (N, T, H) of all tiles encoded at once, eval mode."""
    enc.eval()
    agg.eval()
    with torch.no_grad():
        return agg.attention_logits(enc(x).unsqueeze(0))[0].permute(2, 0, 1)


def stream_attention(
    encoder: torch.nn.Module,
    aggregator: CrossAttentionAggregator,
    chunks: Iterable[tuple[Tensor, Tensor]],
    amp_dtype: torch.dtype | None = None,
) -> AttentionMap:
    """Reference for the scans' attention hook: a separate eval pass over ``chunks`` that
    feeds every chunk's logits to an AttentionStream (softmax over all tiles)."""
    dev = next(aggregator.parameters()).device
    stream = AttentionStream()
    with eval_no_grad(encoder, aggregator):
        keys = scan_keys(aggregator, dev)  # (T*H, D)
        t, h = aggregator.cfg.n_token, aggregator.cfg.heads
        for idx, tiles in device_chunks(chunks, dev):
            lg = chunk_logits(keys, encode(encoder, tiles, dev, amp_dtype))  # (T*H, k)
            stream.add(idx, lg.t().view(-1, t, h))
    return stream.result(aggregator.cfg.n_token, aggregator.cfg.heads)
