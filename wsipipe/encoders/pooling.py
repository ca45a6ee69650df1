"""Poolings other than a timm model's own head: ViT tokens as their authors pool them, and
intermediate CNN stages."""

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


class StagePool(nn.Module):
    """``(k, 3, H, W) -> (k, sum C_i)``: the global averages of chosen intermediate stages'
    feature maps of a timm CNN, concatenated (its later stages and head are not run).

    ``stages`` index the CNN's ``feature_info`` (for EfficientNet: 0..4 at strides 2..32).
    Mid-level stages describe texture -- the size, density and staining of nuclei -- more than
    the object shapes ImageNet's last stage is tuned to.
    """

    def __init__(self, cnn: nn.Module, stages: tuple[int, ...]) -> None:
        super().__init__()
        info = getattr(cnn, "feature_info", None)
        if not hasattr(cnn, "forward_intermediates") or not isinstance(info, list):
            raise TypeError("StagePool needs a timm CNN with feature_info, forward_intermediates")
        ordered = bool(stages) and sorted(set(stages)) == list(stages)
        if not ordered or not 0 <= stages[0] <= stages[-1] < len(info):
            raise ValueError(f"StagePool: stages {stages} must be increasing indices < {len(info)}")
        self.cnn = cnn
        self.stages = list(stages)
        self.num_features = sum(int(info[i]["num_chs"]) for i in stages)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.cnn.set_grad_checkpointing(enable)  # type: ignore[operator]

    def forward(self, x: Tensor) -> Tensor:
        maps = self.cnn.forward_intermediates(  # type: ignore[operator]
            x, indices=self.stages, intermediates_only=True, stop_early=True
        )  # each (k, C_i, H_i, W_i)
        return torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=-1)  # (k, sum C_i)
