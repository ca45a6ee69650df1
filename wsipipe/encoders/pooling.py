"""Token pooling for ViT encoders whose authors pool other than with timm's head."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ClsMeanPool(nn.Module):
    """``(k, 3, H, W) -> (k, 2 D)``: the class token concatenated with the mean of the patch
    tokens, prefix tokens (class + registers) excluded -- Virchow2's and H0-mini's embedding.

    Wraps a timm ViT whose ``forward_features`` returns ``(k, P + N, D)`` tokens after the
    final norm (``P = num_prefix_tokens``).
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        if not hasattr(vit, "forward_features") or not hasattr(vit, "num_prefix_tokens"):
            raise TypeError("ClsMeanPool needs a timm VisionTransformer")
        self.vit = vit
        self.num_prefix_tokens = int(vit.num_prefix_tokens)  # type: ignore[arg-type]
        self.num_features = 2 * int(vit.num_features)  # type: ignore[arg-type]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.vit.set_grad_checkpointing(enable)  # type: ignore[operator]

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.vit.forward_features(x)  # type: ignore[operator]  # (k, P + N, D)
        cls = tokens[:, 0]  # (k, D)
        patches = tokens[:, self.num_prefix_tokens :].mean(dim=1)  # (k, D)
        return torch.cat([cls, patches], dim=-1)  # (k, 2 D)
