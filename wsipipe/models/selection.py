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
    candidate_scores,
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


def _rank(logits: Tensor) -> tuple[Tensor, Tensor]:
    """logits (c, T, H) -> (order (c,) by score desc, stable; scores (c,) in that order)."""
    sc = candidate_scores(logits)
    sc, order = torch.sort(sc, descending=True, stable=True)
    return order, sc


# A buffer is a tuple of row-aligned tensors: (tile indices (m,), logits (m, T, H)) and, when
# its embeddings are needed later (DBPS with S > 0), embeddings (m, D) as a third member.
Buffer = tuple[Tensor, ...]


def _cat(a: Buffer | None, b: Buffer) -> Buffer:
    return b if a is None else tuple(torch.cat([x, y]) for x, y in zip(a, b, strict=True))


def _take(buf: Buffer, rows: Tensor) -> Buffer:
    return tuple(x[rows] for x in buf)


class _EmbeddingPool:
    """DBPS embeddings in fixed slots, so that re-ranking moves only indices and logits,
    never (m, D) rows. A new chunk's rows enter the buffers as "pending" slots (-1 - row);
    after its ranking only the rows that survived (kept in the top M or taken into the top
    S) are copied into free slots, once. At most M + S slots are ever live."""

    def __init__(self, M: int, S: int) -> None:
        self.capacity = M + S
        self.emb: Tensor | None = None  # (M + S, D)

    @staticmethod
    def pending(k: int, device: torch.device) -> Tensor:
        return -1 - torch.arange(k, device=device)

    def settle(self, emb: Tensor, *bufs: Buffer | None) -> tuple[Buffer | None, ...]:
        """Copy the surviving rows of the current chunk's ``emb`` (k, D) into free slots;
        return ``bufs`` with their pending slot numbers replaced."""
        if self.emb is None:
            self.emb = emb.new_empty((self.capacity, emb.shape[1]))
        slot_cols = [b[2] for b in bufs if b is not None]
        if not slot_cols:
            return bufs
        slots = torch.cat(slot_cols)
        new = slots < 0
        n_new = int(new.sum())
        if n_new == 0:
            return bufs
        used = torch.zeros(self.capacity, dtype=torch.bool, device=emb.device)
        used[slots[~new]] = True
        free = torch.nonzero(~used).view(-1)[:n_new]
        self.emb.index_copy_(0, free, emb[-1 - slots[new]])
        slots = slots.clone()
        slots[new] = free
        out: list[Buffer | None] = []
        at = 0
        for b in bufs:
            if b is None:
                out.append(None)
                continue
            n = b[2].shape[0]
            out.append((*b[:2], slots[at : at + n]))
            at += n
        return tuple(out)

    def rows(self, slots: Tensor) -> Tensor:
        assert self.emb is not None
        return self.emb[slots]


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

    IPS keeps only tile indices and cached logits (M + I rows of T x H scalars): tiles are
    re-read for the gradient pass, so no embedding is ever copied. DBPS also keeps the
    embeddings of the M + S buffered tiles and the current chunk (evicted salient tiles may
    become sub-salient ones), each written once into a slot pool (:class:`_EmbeddingPool`);
    the buffers carry slot numbers and the S auxiliary rows are gathered at the end.
    """
    check_sizes(M, S or 0)
    dev = module_device(aggregator, device)
    dbps = S is not None
    pool = _EmbeddingPool(M, S) if S else None
    mem: Buffer | None = None  # memory buffer, m <= M rows (m <= M + k while ranking)
    aux: Buffer | None = None  # auxiliary buffer (DBPS), s <= S rows
    n_tiles = 0
    with eval_no_grad(encoder, aggregator):
        keys = scan_keys(aggregator, dev)  # (D, T, H), weights are constant during the scan
        for idx, tiles in device_chunks(chunks, dev):
            emb = encode(encoder, tiles, dev, amp_dtype)  # (k, D)
            lg = chunk_logits(keys, emb)  # (k, T, H)
            if on_chunk is not None:
                on_chunk(idx, lg)
            n_tiles += int(idx.shape[0])
            new = (idx, lg) if pool is None else (idx, lg, pool.pending(idx.shape[0], dev))
            mem = _cat(mem, new)  # M + k candidates
            if mem[0].shape[0] > M:
                order, _ = _rank(mem[1])  # softmax over the M + k candidates
                if pool is not None:
                    # not kept (incl. evicted) merged with the aux buffer; top S of them by
                    # their cached logits re-normalised over the merged set
                    cand = _cat(aux, _take(mem, order[M:]))
                    aux = _take(cand, _rank(cand[1])[0][:S])
                mem = _take(mem, order[:M])
            if pool is not None:
                mem, aux = pool.settle(emb, mem, aux)

    d = aggregator.cfg.dim
    if mem is None:  # no tiles at all
        empty = torch.empty(0, dtype=torch.int64, device=dev)
        t, h = aggregator.cfg.n_token, aggregator.cfg.heads
        mem = (empty, torch.empty(0, t, h, device=dev), empty)
    # final order and scores: softmax over the selected set itself
    order, scores = _rank(mem[1])
    result = ScanResult(indices=mem[0][order], scores=scores, logits=mem[1][order], n_tiles=n_tiles)
    if dbps:
        if aux is None or pool is None:  # N <= M or S == 0: no sub-salient entry at all
            result.aux_indices, result.aux_logits = mem[0][:0], mem[1][:0]
            result.aux_emb = torch.empty(0, d, device=dev)
            result.aux_scores = torch.empty(0, device=dev)
        else:
            a_order, a_scores = _rank(aux[1])
            result.aux_indices, result.aux_logits = aux[0][a_order], aux[1][a_order]
            result.aux_emb = pool.rows(aux[2][a_order])
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
