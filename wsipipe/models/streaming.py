"""Evaluation scoring of ALL N tiles of a slide for heatmaps, in bounded memory.

The learned queries' attention over the whole slide is a softmax over N tiles. It is
computed in one streaming pass: per chunk, only the raw logits (k, T, H) are kept (T query
tokens, H heads) and a running log-sum-exp (T, H) is updated, so the pass holds O(N * T * H)
scalars and never more than one chunk of embeddings; scores are then exact softmax values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


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


class _Rows:
    """A growable (n, ...) tensor written chunk by chunk: one allocation for the whole slide
    when the tile count is known (no trail of small tensors fragmenting the heap)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.buf: Tensor | None = None
        self.n = 0

    def add(self, rows: Tensor) -> None:
        k = rows.shape[0]
        if self.buf is None or self.n + k > self.buf.shape[0]:
            size = max(self.capacity, self.n + k, 2 * self.n)
            grown = rows.new_empty((size, *rows.shape[1:]))
            if self.buf is not None:
                grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n : self.n + k] = rows
        self.n += k

    def value(self) -> Tensor | None:
        return None if self.buf is None else self.buf[: self.n]


class AttentionStream:
    """A slide's attention, chunk by chunk: :meth:`add` keeps each chunk's tile indices (k,)
    and raw logits (k, T, H) and updates the running log-sum-exp (T, H) over the tiles seen
    so far (the streaming softmax normaliser); :meth:`result` is the :class:`AttentionMap`.

    ``add`` has the signature of a scan's chunk hook (:data:`wsipipe.models.ChunkHook`), so
    the IPS / DBPS scans can feed it the logits they compute anyway. ``capacity`` (the
    slide's N, if known) sizes the buffers once.
    """

    def __init__(self, capacity: int = 0) -> None:
        self._logits = _Rows(capacity)  # (N, T, H), on the scan device
        self._indices = _Rows(capacity)  # (N,)
        self.lse: Tensor | None = None  # (T, H)

    def add(self, idx: Tensor, lg: Tensor) -> None:
        chunk_lse = torch.logsumexp(lg, dim=0)  # (T, H)
        self.lse = chunk_lse if self.lse is None else torch.logaddexp(self.lse, chunk_lse)
        self._logits.add(lg)
        self._indices.add(idx)

    @property
    def n_tiles(self) -> int:
        return self._indices.n

    def result(self, n_token: int, heads: int) -> AttentionMap:
        """The map on the CPU (empty, with a -inf normaliser, when no tile was added)."""
        lg, idx = self._logits.value(), self._indices.value()
        if lg is None or idx is None or self.lse is None:
            return AttentionMap(
                logits=torch.empty(0, n_token, heads),
                indices=torch.empty(0, dtype=torch.int64),
                log_norm=torch.full((n_token, heads), float("-inf")),
            )
        return AttentionMap(
            logits=lg.float().cpu(), indices=idx.long().cpu(), log_norm=self.lse.float().cpu()
        )
