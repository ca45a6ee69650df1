"""TransMIL (Shao et al., NeurIPS 2021): a transformer over all of a slide's tile embeddings.

Per slide, the N tile embeddings h (N, D) (already projected to D with a ReLU by the features
encoder, the paper's fc1) are padded to a square of side s = ceil(sqrt(N)) by repeating the
first s^2 - N of them, a class token is prepended, then: a self-attention layer; the PPEG
(depthwise 7x7, 5x5 and 3x3 convolutions over the tokens laid out as an s x s grid, added to
it: position information from the neighbourhood); a second self-attention layer; LayerNorm;
a linear classifier on the class token.

Two choices differ from the paper: attention is exact (``scaled_dot_product_attention``,
whose CPU and CUDA kernels need O(N) memory), not the Nystrom approximation; and dropout
acts on each attention layer's output, not on its attention weights (which would make the
CPU kernel hold the N x N matrix).
Like the other aggregators, :meth:`forward` returns ``{task: logits (B, C)}``;
:meth:`tile_logits` gives the class token's attention logits (N, 1, H) in the last layer,
whose softmax over the slide a heatmap shows. Because they depend on every tile of the
slide, ``whole_slide_attention`` tells the attention pass to call it once per slide.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from wsipipe.errors import ConfigError
from wsipipe.models.mil import _check


class _SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention with a residual: x + dropout(W_o attn(LN(x))).

    The dropout acts on the output, not on the attention weights: with dropout on the
    weights, the CPU kernel falls back to materialising the (n, n) attention matrix
    (6 GB at n = 20k tiles and 4 heads)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, d = x.shape  # -> 3 x (B, H, n, D / H)
        q, k, v = self.qkv(self.norm(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._qkv(x)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, H, n, D / H), O(n) memory
        return x + self.drop(self.out(a.transpose(1, 2).flatten(2)))

    def first_query_logits(self, x: Tensor) -> Tensor:
        """x (1, n, D) -> logits (n, H) of token 0's attention over the n tokens."""
        q, k, _ = self._qkv(x)
        return (q[0, :, :1] @ k[0].transpose(1, 2))[:, 0].t() / math.sqrt(q.shape[-1])


class _PPEG(nn.Module):
    """Pyramid position encoding: the grid of tokens plus three depthwise convolutions."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim)
                                   for k in (7, 5, 3))  # fmt: skip

    def forward(self, x: Tensor, side: int) -> Tensor:
        cls, grid = x[:, :1], x[:, 1:]  # (B, 1, D), (B, side^2, D)
        b, _, d = grid.shape
        g = grid.transpose(1, 2).reshape(b, d, side, side)
        g = g + self.convs[0](g) + self.convs[1](g) + self.convs[2](g)
        return torch.cat([cls, g.flatten(2).transpose(1, 2)], dim=1)


class TransMIL(nn.Module):
    """TransMIL with exact attention; see the module docstring."""

    whole_slide_attention = True

    def __init__(
        self, dim: int, n_classes: int, task: str, heads: int = 8, dropout: float = 0.25
    ) -> None:
        super().__init__()
        if dim < 1 or n_classes < 1 or heads < 1 or dim % heads:
            raise ConfigError(
                f"TransMIL: dim={dim} must be a positive multiple of heads={heads} "
                f"(e.g. --dim 128 --heads 4), classes={n_classes}"
            )
        self.task = task
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.layer1 = _SelfAttention(dim, heads, dropout)
        self.ppeg = _PPEG(dim)
        self.layer2 = _SelfAttention(dim, heads, dropout)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, n_classes)

    @property
    def attention_heads(self) -> int:
        return self.layer2.heads

    def _before_last(self, h: Tensor) -> tuple[Tensor, int]:
        """One slide's h (n, D), n >= 1 -> the tokens entering layer 2 (1, 1 + s^2, D), s."""
        n = h.shape[0]
        side = math.isqrt(n - 1) + 1  # ceil(sqrt(n))
        pad = torch.arange(side * side - n, device=h.device) % n  # repeat the first tiles
        x = torch.cat([self.cls[0], h, h[pad]]).unsqueeze(0)
        return self.ppeg(self.layer1(x), side), side

    def forward(
        self,
        emb: Tensor,
        mask: Tensor | None = None,
        aux_emb: Tensor | None = None,
        aux_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """emb (B, N, D) -> {task: logits (B, C)}; each slide uses only its real tiles (a
        slide with none gets the class token alone)."""
        mask = _check(emb, mask)
        z = []
        for b in range(emb.shape[0]):
            h = emb[b][mask[b]]  # (n, D)
            x = self.cls if h.shape[0] == 0 else self._before_last(h)[0]
            z.append(self.norm(self.layer2(x))[0, 0])
        return {self.task: self.head(self.drop(torch.stack(z)))}

    def tile_logits(self, emb: Tensor) -> Tensor:
        """All of one slide's embeddings emb (N, D) -> (N, 1, H): the class token's
        attention logits over the N tiles in the last layer (their square-padding repeats
        left out)."""
        if emb.shape[0] == 0:
            return emb.new_empty(0, 1, self.layer2.heads)
        x, _ = self._before_last(emb)
        return self.layer2.first_query_logits(x)[1 : 1 + emb.shape[0], None, :]
