"""The baselines users compare IPS/DBPS against: gated-attention MIL (ABMIL) and mean pooling.

Both aggregate ALL of a slide's tile embeddings (no selection), so they run on frozen
features (features mode), where a slide's N x D embeddings fit in memory.

* ABMIL (Ilse et al., 2018, gated attention): for tile embeddings h_k (D),
  a_k = softmax_k( w^T (tanh(V h_k) * sigmoid(U h_k)) ), slide embedding z = sum_k a_k h_k,
  then a linear classifier.
* Mean pooling: z = mean_k h_k, then a linear classifier (the floor).

Shapes: ``B`` slides, ``N`` tiles (padded, with a bool mask ``(B, N)``, True = real),
``D`` embedding width, ``L`` attention width, ``C`` classes. Like the cross-attention
aggregator, :meth:`forward` returns ``{task: logits (B, C)}`` and :meth:`tile_logits` the
per-tile logits ``(k, 1, 1)`` whose softmax over a slide is the attention a heatmap shows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from wsipipe.errors import ConfigError


def _check(emb: Tensor, mask: Tensor | None) -> Tensor:
    if emb.ndim != 3:
        raise ValueError(f"MIL aggregator expects (B, N, D) embeddings, got {tuple(emb.shape)}")
    if mask is None:
        return torch.ones(emb.shape[:2], dtype=torch.bool, device=emb.device)
    if mask.shape != emb.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match embeddings {emb.shape[:2]}")
    return mask.to(emb.device)


class GatedAttentionMIL(nn.Module):
    """ABMIL with the gated attention of Ilse et al. (2018)."""

    def __init__(
        self, dim: int, n_classes: int, task: str, attn_dim: int = 128, dropout: float = 0.25
    ) -> None:
        super().__init__()
        if dim < 1 or attn_dim < 1 or n_classes < 1:
            raise ConfigError(f"ABMIL: dim={dim}, attn_dim={attn_dim}, classes={n_classes}")
        self.task = task
        self.V = nn.Linear(dim, attn_dim)  # tanh branch
        self.U = nn.Linear(dim, attn_dim)  # sigmoid gate
        self.w = nn.Linear(attn_dim, 1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, n_classes)

    def tile_logits(self, emb: Tensor) -> Tensor:
        """emb (k, D) -> attention logits (k, 1, 1) (before the softmax over the slide)."""
        h = self.drop(emb)
        return self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h)))[:, :, None]

    def forward(
        self,
        emb: Tensor,
        mask: Tensor | None = None,
        aux_emb: Tensor | None = None,
        aux_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """emb (B, N, D) -> {task: logits (B, C)}; masked tiles get no attention."""
        mask = _check(emb, mask)
        b, n, d = emb.shape
        logits = self.tile_logits(emb.reshape(b * n, d)).view(b, n)  # (B, N)
        logits = logits.masked_fill(~mask, float("-inf"))
        attn = torch.softmax(logits.float(), dim=1).nan_to_num(0.0).to(emb.dtype)  # (B, N)
        z = torch.einsum("bn,bnd->bd", attn, emb)  # (B, D)
        return {self.task: self.head(self.drop(z))}


class MeanPoolMIL(nn.Module):
    """Mean pooling of the tile embeddings, then a linear classifier."""

    def __init__(self, dim: int, n_classes: int, task: str, dropout: float = 0.25) -> None:
        super().__init__()
        if dim < 1 or n_classes < 1:
            raise ConfigError(f"mean pooling: dim={dim}, classes={n_classes}")
        self.task = task
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, n_classes)

    def tile_logits(self, emb: Tensor) -> Tensor:
        """emb (k, D) -> (k, 1, 1): each tile's contribution to the last class's logit (its
        softmax over a slide marks the tiles that push the prediction towards that class)."""
        return self.head(emb)[:, -1:, None] - self.head.bias[-1]

    def forward(
        self,
        emb: Tensor,
        mask: Tensor | None = None,
        aux_emb: Tensor | None = None,
        aux_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        mask = _check(emb, mask)
        weights = mask.to(emb.dtype)[..., None]  # (B, N, 1)
        z = (emb * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, D)
        return {self.task: self.head(self.drop(z))}


def instance_mil_loss(inst: Tensor, mask: Tensor, positive: Tensor) -> Tensor:
    """The MIL constraints on tile (instance) logits, summed over the B slides.

    inst (B, M) logits, mask (B, M) bool (True = real tile), positive (B,) bool. A negative
    slide's tiles are all negative: mean BCE of its tiles towards 0. A positive slide holds
    at least one positive tile: BCE of its highest logit towards 1 (Maron & Lozano-Perez's
    assumption, as in MI-Net / CLAM's instance branch). IPS / DBPS see the M selected tiles,
    i.e. the hardest negatives and the likeliest positives.
    """
    if inst.shape != mask.shape or positive.shape != inst.shape[:1]:
        raise ValueError(
            f"instance_mil_loss: inst {tuple(inst.shape)}, mask {tuple(mask.shape)}, "
            f"positive {tuple(positive.shape)} do not match"
        )
    inst = inst.float()
    top = inst.masked_fill(~mask, float("-inf")).amax(dim=1)  # (B,)
    pos = F.binary_cross_entropy_with_logits(top, torch.ones_like(top), reduction="none")
    each = F.binary_cross_entropy_with_logits(inst, torch.zeros_like(inst), reduction="none")
    real = mask.to(inst.dtype)
    neg = (each * real).sum(1) / real.sum(1).clamp_min(1.0)  # (B,)
    return torch.where(positive, pos, neg).sum()
