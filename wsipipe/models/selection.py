"""Streaming patch selection: the IPS scan and the DBPS scan (plus training-time helpers).

Notation: a slide gives N tiles as an iterator of chunks of I tiles; M is the memory buffer
(the tiles that will receive gradients), S the DBPS auxiliary buffer of sub-salient
embeddings, D the embedding width, T query tokens, H heads.

The scan runs without gradients, encoder and aggregator in eval mode (their previous
train/eval state restored afterwards), and holds at most M + I (+ S) embeddings and their
attention logits at any time, never the slide. Because the weights are constant during a
scan, a tile's raw attention logits (T, H) are computed once, when it is encoded, and cached;
every ranking re-normalises cached logits over the current candidate set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from wsipipe.models._scan import (
    Chunk,
    check_sizes,
    chunk_logits,
    device_chunks,
    encode,
    eval_no_grad,
    module_device,
    scan_keys,
)
from wsipipe.models.aggregator import CrossAttentionAggregator

# called with every chunk's (tile indices (k,), raw attention logits (k, T, H) float32), on the
# scan device, the moment they are computed: how a caller sees the logits of ALL N tiles
# (e.g. the heatmap's softmax over the slide) without a second pass or any extra compute
ChunkHook = Callable[[Tensor, Tensor], None]

__all__ = ["ChunkHook", "ScanResult", "dbps_scan", "ips_scan"]


@dataclass
class ScanResult:
    """Outcome of one slide's scan; all tensors on the scan device.

    indices: (M',) int64 selected tile indices, M' = min(M, N), sorted by score descending.
    scores: (M',) float32 attention score of each selected tile, softmax over the M' selected
        tiles (the set the aggregator will attend over), mean over heads and tokens.
    aux_emb: (S', D) float32 DBPS sub-salient embeddings (detached), S' = min(S, N - M'),
        sorted by aux_scores descending; None for IPS. Never zero placeholders.
    aux_indices: (S',) int64 their tile indices; None for IPS.
    aux_logits: (S', T, H) float32 their raw attention logits, cached when they were scored.
    aux_scores: (S',) float32 scores, softmax over the S' auxiliary entries.
    logits: (M', T, H) float32 raw attention logits of the selected tiles.
    n_tiles: N, the number of tiles the scan consumed.
    """

    indices: Tensor
    scores: Tensor
    aux_emb: Tensor | None = None
    aux_indices: Tensor | None = None
    aux_logits: Tensor | None = None
    aux_scores: Tensor | None = None
    logits: Tensor | None = None
    n_tiles: int = 0

    @property
    def n_selected(self) -> int:
        return int(self.indices.shape[0])

    @property
    def n_aux(self) -> int:
        return 0 if self.aux_indices is None else int(self.aux_indices.shape[0])


class _Buffer:
    """Candidate rows in columns: ``ids`` (r, m) int64 (row 0 tile indices; row 1 the pool
    slots of their embeddings, DBPS only) and ``lg`` (T*H, m) float32 cached raw logits.

    Columns, not rows: the per-chunk ranking is a softmax over candidates, which along a
    contiguous dimension costs a fraction of the same softmax across rows of (m, T, H).
    """

    __slots__ = ("ids", "lg")

    def __init__(self, ids: Tensor, lg: Tensor) -> None:
        self.ids, self.lg = ids, lg

    @property
    def n(self) -> int:
        return int(self.ids.shape[1])

    def cat(self, other: _Buffer | None) -> _Buffer:
        if other is None:
            return self
        return _Buffer(torch.cat([self.ids, other.ids], 1), torch.cat([self.lg, other.lg], 1))

    def take(self, cols: Tensor) -> _Buffer:
        return _Buffer(self.ids.index_select(1, cols), self.lg.index_select(1, cols))

    def rank(self) -> tuple[Tensor, Tensor]:
        """(order (m,) by score desc, stable; scores (m,) in that order): softmax over the
        m candidates of each token and head, mean over tokens and heads."""
        sc = torch.softmax(self.lg, dim=1).mean(dim=0)
        sc, order = torch.sort(sc, descending=True, stable=True)
        return order, sc

    def logits(self, t: int, h: int) -> Tensor:
        """(m, T, H), contiguous."""
        return self.lg.t().reshape(-1, t, h)


class _EmbeddingPool:
    """DBPS embeddings in fixed slots, so that re-ranking moves only indices, logits and slot
    numbers, never (m, D) rows. A chunk's rows enter the buffers with provisional slots
    ``capacity + row``; after its ranking only the rows that survived (kept in the top M or
    taken into the top S) are copied into the slots the dropped rows gave back, once.
    At most M + S slots are ever live."""

    def __init__(self, M: int, S: int) -> None:
        self.capacity = M + S
        self.emb: Tensor | None = None  # (M + S, D)
        self.free: Tensor | None = None  # (f,) int64 slots no buffer holds

    def provisional(self, emb: Tensor) -> Tensor:
        """The provisional slots (k,) of a new chunk's embeddings ``emb`` (k, D)."""
        if self.emb is None:
            self.emb = emb.new_empty((self.capacity, emb.shape[1]))
            self.free = torch.arange(self.capacity, device=emb.device)
        return torch.arange(self.capacity, self.capacity + emb.shape[0], device=emb.device)

    def release(self, slots: Tensor) -> None:
        """Slots of dropped rows: pool slots become free, provisional ones are forgotten."""
        assert self.free is not None
        self.free = torch.cat([self.free, slots[slots < self.capacity]])

    def settle(self, emb: Tensor, slots: Tensor) -> None:
        """Copy the rows of the current chunk's ``emb`` (k, D) that ``slots`` (the buffers'
        slot numbers, updated in place) still holds provisionally into free slots."""
        assert self.emb is not None and self.free is not None
        cols = torch.nonzero(slots >= self.capacity).view(-1)
        n = cols.shape[0]
        if n:
            dest, self.free = self.free[:n], self.free[n:]
            self.emb.index_copy_(0, dest, emb.index_select(0, slots[cols] - self.capacity))
            slots.index_put_((cols,), dest)

    def rows(self, slots: Tensor) -> Tensor:
        assert self.emb is not None
        return self.emb.index_select(0, slots)


def _scan(
    encoder: nn.Module,
    aggregator: CrossAttentionAggregator,
    chunks: Iterable[Chunk],
    M: int,
    S: int | None,
    device: torch.device | str | None,
    amp_dtype: torch.dtype | None,
    on_chunk: ChunkHook | None = None,
) -> ScanResult:
    """IPS scan (``S is None``) or DBPS scan (``S >= 0``); see the module docstring.

    IPS keeps only tile indices and cached logits (M + I columns of T x H scalars): tiles are
    re-read for the gradient pass, so no embedding is ever copied. DBPS also keeps the
    embeddings of the M + S buffered tiles and the current chunk (evicted salient tiles may
    become sub-salient ones), each written once into a slot pool (:class:`_EmbeddingPool`);
    the buffers carry slot numbers and the S auxiliary rows are gathered at the end.
    """
    check_sizes(M, S or 0)
    dev = module_device(aggregator, device)
    t, h = aggregator.cfg.n_token, aggregator.cfg.heads
    pool = _EmbeddingPool(M, S) if S else None
    mem: _Buffer | None = None  # memory buffer, m <= M columns (m <= M + k while ranking)
    aux: _Buffer | None = None  # auxiliary buffer (DBPS), s <= S columns
    n_tiles = 0
    with eval_no_grad(encoder, aggregator):
        keys = scan_keys(aggregator, dev)  # (T*H, D), weights are constant during the scan
        for idx, tiles in device_chunks(chunks, dev):
            emb = encode(encoder, tiles, dev, amp_dtype)  # (k, D)
            lg = chunk_logits(keys, emb)  # (T*H, k)
            k = int(idx.shape[0])
            if on_chunk is not None:
                on_chunk(idx, lg.t().view(k, t, h))
            n_tiles += k
            ids = idx.view(1, k) if pool is None else torch.stack([idx, pool.provisional(emb)])
            new = _Buffer(ids, lg)
            mem = new if mem is None else mem.cat(new)  # M + k candidates
            if mem.n > M:
                order, _ = mem.rank()  # softmax over the M + k candidates
                if pool is not None:
                    # not kept (incl. evicted) merged with the aux buffer; top S of them by
                    # their cached logits re-normalised over the merged set; the rest dropped
                    rest = mem.take(order[M:])
                    cand = rest if aux is None else aux.cat(rest)
                    c_order, _ = cand.rank()
                    aux = cand.take(c_order[:S])
                    pool.release(cand.ids[1].index_select(0, c_order[S:]))
                mem = mem.take(order[:M])
            if pool is not None:  # the chunk's surviving embeddings into the pool, once
                m = mem.n
                ids = mem.ids if aux is None else torch.cat([mem.ids, aux.ids], 1)  # a copy
                pool.settle(emb, ids[1])
                mem.ids = ids[:, :m]
                if aux is not None:
                    aux.ids = ids[:, m:]

    if mem is None:  # no tiles at all
        empty = torch.empty(0, dtype=torch.int64, device=dev)
        mem = _Buffer(empty.view(1, 0), torch.empty(t * h, 0, device=dev))
    # final order and scores: softmax over the selected set itself
    order, scores = mem.rank()
    mem = mem.take(order)
    logits = mem.logits(t, h)
    result = ScanResult(indices=mem.ids[0], scores=scores, logits=logits, n_tiles=n_tiles)
    if S is not None:
        if aux is None or pool is None:  # N <= M or S == 0: no sub-salient entry at all
            result.aux_indices, result.aux_logits = result.indices[:0], logits[:0]
            result.aux_emb = torch.empty(0, aggregator.cfg.dim, device=dev)
            result.aux_scores = torch.empty(0, device=dev)
        else:
            a_order, a_scores = aux.rank()
            aux = aux.take(a_order)
            result.aux_indices, result.aux_logits = aux.ids[0], aux.logits(t, h)
            result.aux_emb = pool.rows(aux.ids[1])
            result.aux_scores = a_scores
    return result


def ips_scan(
    encoder: nn.Module,
    aggregator: CrossAttentionAggregator,
    chunks: Iterable[Chunk],
    M: int,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    on_chunk: ChunkHook | None = None,
) -> ScanResult:
    """Iterative Patch Selection over one slide's chunks -> the M' = min(M, N) selected tiles.

    ``chunks`` yields (tile indices (k,) int64, tiles (k, 3, H, W) uint8 | (k, F) float) on
    the CPU (pinned memory lets the copy overlap compute); the chunk size I is whatever the
    iterator yields. The first chunk(s) fill the buffer; every chunk that makes it exceed M
    triggers a ranking of the M + k candidates (softmax over them, averaged over heads and
    tokens) and keeps the top M. ``device`` defaults to the aggregator's; ``amp_dtype``
    (e.g. torch.bfloat16) runs the encoder under autocast (logits stay float32).
    ``on_chunk`` (optional) sees every chunk's indices and logits (see :data:`ChunkHook`).
    """
    return _scan(encoder, aggregator, chunks, M, None, device, amp_dtype, on_chunk)


def dbps_scan(
    encoder: nn.Module,
    aggregator: CrossAttentionAggregator,
    chunks: Iterable[Chunk],
    M: int,
    S: int,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    on_chunk: ChunkHook | None = None,
) -> ScanResult:
    """Dual-Buffer Patch Selection: the IPS scan plus an auxiliary buffer of the S best
    sub-salient embeddings (candidates not kept in the top M, evicted ones included, merged
    with the previous auxiliary buffer and ranked by their cached logits re-normalised over
    the merged set). Small slides give S' = min(S, N - M') < S entries, never placeholders.
    """
    return _scan(encoder, aggregator, chunks, M, S, device, amp_dtype, on_chunk)
