"""The IPS cross-attention aggregator, also the DBPS dual-attention aggregator (same weights).

Shapes: ``B`` slides, ``N`` (or ``M``, ``S``) embeddings per slide, ``D`` embedding width,
``T = n_token`` learned query tokens (one per task), ``H`` heads of width ``D_k``.

Masks are boolean ``(B, N)`` with True = real entry; masked entries never receive attention
(their logits are set to -inf before the softmax), so zero padding cannot leak into outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from wsipipe.errors import ConfigError

_ACTS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class TaskSpec:
    """One prediction task: a query token and a linear head with ``n_classes`` outputs."""

    name: str
    n_classes: int
    act: str = "softmax"  # "softmax" (single-label) | "sigmoid" (multi-label / binary)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("task name is empty; give each task a unique non-empty name")
        if self.n_classes < 1:
            raise ConfigError(f"task {self.name!r}: n_classes={self.n_classes} must be >= 1")
        if self.act not in _ACTS:
            raise ConfigError(f"task {self.name!r}: act={self.act!r} must be one of {_ACTS}")


@dataclass(frozen=True)
class AggregatorConfig:
    """Hyper-parameters of the cross-attention block (defaults: the IPS paper, images)."""

    dim: int = 512  # D
    heads: int = 8  # H
    dim_head: int = 64  # D_k (= D_v)
    dim_inner: int = 2048  # D_inner of the MLP block
    dropout: float = 0.1
    attn_dropout: float = 0.1
    tasks: tuple[TaskSpec, ...] = (TaskSpec("label", 2),)

    def __post_init__(self) -> None:
        for field in ("dim", "heads", "dim_head", "dim_inner"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"aggregator: {field}={value!r} must be an integer >= 1")
        for field in ("dropout", "attn_dropout"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"aggregator: {field}={value!r} must be in [0, 1)")
        if len(self.tasks) == 0:
            raise ConfigError("aggregator: tasks is empty; give at least one TaskSpec")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"aggregator: task names {names} must be unique")

    @property
    def n_token(self) -> int:
        return len(self.tasks)


class CrossAttentionAggregator(nn.Module):
    """Learned queries attend over tile embeddings; MLP block; one linear head per task.

    IPS:  ``Z = LN(q + Drop(fc(MHA(q, E_M))))``, then ``LN(Z + Drop(MLP(Z)))``, heads.
    DBPS: ``Z1 = q + Drop(fc(MHA(q, E_M)))``; ``Z2 = Drop(fc(MHA(LN(Z1), E_S)))``;
    ``Z = LN(Z1 + Z2)``; then MLP block and heads. Both stages share every weight.
    """

    def __init__(self, cfg: AggregatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, h, dk = cfg.dim, cfg.heads, cfg.dim_head
        self.n_token = cfg.n_token
        self.query = nn.Parameter(torch.empty(cfg.n_token, d))  # (T, D)
        bound = math.sqrt(1.0 / dk)
        nn.init.uniform_(self.query, -bound, bound)
        self.q_w = nn.Linear(d, h * dk, bias=False)
        self.k_w = nn.Linear(d, h * dk, bias=False)
        self.v_w = nn.Linear(d, h * dk, bias=False)
        self.fc = nn.Linear(h * dk, d, bias=False)
        self.attn_drop = nn.Dropout(cfg.attn_dropout)
        self.drop = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(d, cfg.dim_inner), nn.ReLU(), nn.Linear(cfg.dim_inner, d)
        )
        self.mlp_drop = nn.Dropout(cfg.dropout)
        self.mlp_norm = nn.LayerNorm(d, eps=1e-6)
        self.heads = nn.ModuleDict({t.name: nn.Linear(d, t.n_classes) for t in cfg.tasks})

    # -- attention ------------------------------------------------------------------------
    def _check(self, emb: Tensor, mask: Tensor | None) -> None:
        if emb.ndim != 3 or emb.shape[2] != self.cfg.dim:
            raise ValueError(f"aggregator expects (B, N, {self.cfg.dim}), got {tuple(emb.shape)}")
        if mask is not None and (mask.shape != emb.shape[:2] or mask.dtype != torch.bool):
            raise ValueError(
                f"mask must be bool {tuple(emb.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}"
            )

    def _split(self, x: Tensor) -> Tensor:
        """(B, L, H*D_k) -> (B, H, L, D_k)."""
        b, n, _ = x.shape
        return x.view(b, n, self.cfg.heads, self.cfg.dim_head).transpose(1, 2)

    def _logits(self, query: Tensor, emb: Tensor) -> Tensor:
        """query (B or 1, T, D), emb (B, N, D) -> raw logits (B, H, T, N) = q.k / sqrt(D_k)."""
        q = self._split(self.q_w(query))  # (B|1, H, T, D_k)
        k = self._split(self.k_w(emb))  # (B, H, N, D_k)
        return torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.cfg.dim_head)

    def _mha(self, query: Tensor, emb: Tensor, mask: Tensor | None) -> Tensor:
        """Multi-head attention of ``query`` (B|1, T, D) over ``emb`` (B, N, D) -> (B, T, D).

        A slide whose mask is all False gets an exact zero output (and zero gradients).
        """
        b = emb.shape[0]
        empty: Tensor | None = None
        if mask is not None:
            # zero the padding so that even NaN/inf padding cannot reach the output (0 * NaN)
            emb = emb.masked_fill(~mask[:, :, None], 0.0)
        logits = self._logits(query, emb)  # (B, H, T, N)
        if mask is not None:
            empty = ~mask.any(dim=1)  # (B,) slides with no real entry
            # such rows attend uniformly to (ignored) entries instead of producing NaN
            keep = (mask | empty[:, None])[:, None, None, :]  # (B, 1, 1, N)
            logits = logits.masked_fill(~keep, float("-inf"))
        attn = self.attn_drop(torch.softmax(logits, dim=-1))  # (B, H, T, N)
        v = self._split(self.v_w(emb))  # (B, H, N, D_k)
        out = torch.matmul(attn, v)  # (B, H, T, D_k)
        out = out.transpose(1, 2).reshape(b, self.n_token, -1)  # (B, T, H*D_k)
        out = self.fc(out)  # (B, T, D)
        if empty is not None:
            out = out.masked_fill(empty[:, None, None], 0.0)
        return out

    def folded_keys(self) -> Tensor:
        """The learned queries folded into the key map: U (D, T, H) with
        ``emb @ U[:, t, h] == q_{t,h} . k_h(emb) / sqrt(D_k)``.

        Scoring a tile then costs D x T x H multiply-adds instead of a D x (H D_k) key
        projection; during a scan (constant weights) U is computed once.
        """
        h, dk, d = self.cfg.heads, self.cfg.dim_head, self.cfg.dim
        q = self.q_w(self.query).view(self.n_token, h, dk)  # (T, H, D_k)
        w_k = self.k_w.weight.view(h, dk, d)  # (H, D_k, D)
        return torch.einsum("thk,hkd->dth", q, w_k) / math.sqrt(dk)  # (D, T, H)

    def attention_logits(self, emb: Tensor) -> Tensor:
        """Raw attention logits of the learned queries: emb (B, N, D) -> (B, T, H, N)."""
        self._check(emb, None)
        u = self.folded_keys()  # (D, T, H)
        b, n, d = emb.shape
        lg = emb.reshape(b * n, d) @ u.reshape(d, -1).to(emb.dtype)  # (B*N, T*H)
        return lg.view(b, n, self.n_token, self.cfg.heads).permute(0, 2, 3, 1)

    def scores(self, emb: Tensor, mask: Tensor | None = None) -> Tensor:
        """Per-tile score (B, N): softmax over the N tiles (masked ones excluded) of the
        learned queries' attention, averaged over heads and tokens; exactly 0 on masked tiles.
        No attention dropout (scores are a deterministic function of the embeddings)."""
        self._check(emb, mask)
        return scores_from_logits(self.attention_logits(emb), mask)

    # -- forward --------------------------------------------------------------------------
    def forward(
        self,
        emb: Tensor,
        mask: Tensor | None = None,
        aux_emb: Tensor | None = None,
        aux_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """emb (B, M, D) salient embeddings, mask (B, M) bool; optional DBPS sub-salient
        aux_emb (B, S, D) with aux_mask (B, S). Returns {task name: logits (B, n_classes)}
        (pre-activation; apply ``TaskSpec.act`` for probabilities)."""
        self._check(emb, mask)
        query = self.query.unsqueeze(0)  # (1, T, D)
        z1 = query + self.drop(self._mha(query, emb, mask))  # (B, T, D)
        if aux_emb is None:
            z = self.norm(z1)
        else:
            self._check(aux_emb, aux_mask)
            if aux_emb.shape[0] != emb.shape[0]:
                raise ValueError(f"aux_emb batch {aux_emb.shape[0]} != emb batch {emb.shape[0]}")
            salient_query = self.norm(z1)  # (B, T, D)
            z2 = self.drop(self._mha(salient_query, aux_emb.detach(), aux_mask))  # (B, T, D)
            z = self.norm(z1 + z2)
        z = self.mlp_norm(z + self.mlp_drop(self.mlp(z)))  # (B, T, D)
        return {t.name: self.heads[t.name](z[:, i]) for i, t in enumerate(self.cfg.tasks)}


def scores_from_logits(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """logits (B, T, H, N) -> scores (B, N): softmax over N, mean over T and H; 0 where masked.

    A slide with no real entry gets all-zero scores.
    """
    logits = logits.float()
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # all-masked rows -> 0
    return probs.mean(dim=(1, 2))
