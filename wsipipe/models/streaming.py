"""Evaluation scoring of ALL N tiles of a slide for heatmaps, in bounded memory.

The learned queries' attention over the whole slide is a softmax over N tiles. It is
computed in one streaming pass: per chunk, only the raw logits (k, T, H) are kept (T query
tokens, H heads) and a running log-sum-exp (T, H) is updated, so the pass holds O(N * T * H)
scalars and never more than one chunk of embeddings; scores are then exact softmax values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from wsipipe.models._scan import (
    Chunk,
    chunk_logits,
    device_chunks,
    encode,
    eval_no_grad,
    resolve_device,
    scan_keys,
)
from wsipipe.models.aggregator import CrossAttentionAggregator


@dataclass
class AttentionMap:
    """Raw attention logits of a slide's N tiles (on the CPU).

    logits: (N, T, H) float32, in the tile order of the chunks.
    indices: (N,) int64 tile indices.
    log_norm: (T, H) log-sum-exp of the logits over the N tiles (computed from ``logits``
        when None).
    """

    logits: Tensor
    indices: Tensor
    log_norm: Tensor | None = None

    def _norm(self) -> Tensor:
        if self.log_norm is not None:
            return self.log_norm
        return torch.logsumexp(self.logits, dim=0)  # (T, H)

    def probs(self) -> Tensor:
        """(N, T, H) attention probabilities: softmax over all N tiles per token and head."""
        return torch.exp(self.logits - self._norm())

    def scores(self) -> Tensor:
        """(N,) softmax over all N tiles per head and token, averaged over heads and tokens."""
        return self.probs().mean(dim=(1, 2))

    def per_head(self) -> Tensor:
        """(N, H) per-head softmax over all N tiles, averaged over tokens."""
        return self.probs().mean(dim=1)

    def per_token(self) -> Tensor:
        """(N, T) per-token (per-task) softmax over all N tiles, averaged over heads."""
        return self.probs().mean(dim=2)


def stream_attention(
    encoder: nn.Module,
    aggregator: CrossAttentionAggregator,
    chunks: Iterable[Chunk],
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
) -> AttentionMap:
    """Score every tile of a slide: one pass over ``chunks`` (see :func:`ips_scan`), encoder
    and aggregator in eval mode without gradients (previous modes restored), running
    log-sum-exp over the logits. Returns the map on the CPU."""
    dev = resolve_device(aggregator, device)
    logits: list[Tensor] = []  # per chunk (k, T, H), on the device
    indices: list[Tensor] = []
    lse: Tensor | None = None  # (T, H) running log-sum-exp
    with eval_no_grad(encoder, aggregator):
        keys = scan_keys(aggregator, dev)  # (D, T, H)
        for idx, tiles in device_chunks(chunks, dev):
            lg = chunk_logits(keys, encode(encoder, tiles, dev, amp_dtype))  # (k, T, H)
            chunk_lse = torch.logsumexp(lg, dim=0)  # (T, H)
            lse = chunk_lse if lse is None else torch.logaddexp(lse, chunk_lse)
            logits.append(lg)
            indices.append(idx)
    if lse is None:
        t, h = aggregator.cfg.n_token, aggregator.cfg.heads
        return AttentionMap(
            logits=torch.empty(0, t, h),
            indices=torch.empty(0, dtype=torch.int64),
            log_norm=torch.full((t, h), float("-inf")),
        )
    return AttentionMap(
        logits=torch.cat(logits).cpu(), indices=torch.cat(indices).cpu(), log_norm=lse.cpu()
    )
