"""Patch encoders: a timm backbone behind one factory, and the encoder for precomputed features.

Shapes: ``k`` tiles per call, ``H x W`` pixels, ``F`` feature width, ``D`` embedding width.
Loaders ship tiles as ``uint8`` (4x less host-to-device traffic than float32); the encoder
normalises them on its own device with the mean/std of the backbone's pretrained config.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from wsipipe.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PatchEncoder(nn.Module):
    """Backbone (pooled features) + optional linear projection: ``(k, 3, H, W) -> (k, out_dim)``.

    Args:
        backbone: any module mapping normalised float images ``(k, 3, H, W)`` to
            ``(k, num_features)`` (a timm model created with ``num_classes=0``).
        num_features: width of the backbone output.
        out_dim: if given, a ``Linear(num_features, out_dim)`` projection is appended.
        mean, std: per-channel normalisation (for inputs scaled to [0, 1]).
        channels_last: run the backbone (and its input) in channels-last memory format.
        grad_checkpointing: recompute activations in backward instead of storing them
            (timm's ``set_grad_checkpointing`` when the backbone has it, else
            ``torch.utils.checkpoint`` around the whole backbone). Only active when
            gradients are enabled, so scans under ``no_grad`` run the plain forward.
            Note: in train mode, recomputation updates BatchNorm running statistics twice.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        out_dim: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        channels_last: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if num_features < 1:
            raise ConfigError(f"encoder: num_features={num_features} must be >= 1")
        if out_dim is not None and out_dim < 1:
            raise ConfigError(
                f"encoder: out_dim={out_dim} must be >= 1 (or None for no projection)"
            )
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ConfigError(
                f"encoder: mean={tuple(mean)} / std={tuple(std)} must hold 3 values, std > 0"
            )
        self.backbone = backbone
        self.num_features = num_features
        self.proj: nn.Module = (
            nn.Linear(num_features, out_dim) if out_dim is not None else nn.Identity()
        )
        self.out_dim = out_dim if out_dim is not None else num_features
        # (1, 3, 1, 1) buffers: move with the module, not part of the state dict.
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.channels_last = channels_last
        self.grad_checkpointing = grad_checkpointing
        self._timm_ckpt = hasattr(backbone, "set_grad_checkpointing")
        self._timm_ckpt_on = False
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)

    def normalise(self, x: Tensor) -> Tensor:
        """``(k, 3, H, W)`` uint8 in [0, 255] -> float32 ``(x / 255 - mean) / std``.

        Float input is returned unchanged (taken as already normalised).
        """
        if x.dtype == torch.uint8:
            x = (x.to(self.mean.device, torch.float32) / 255.0 - self.mean) / self.std
        return x

    def _set_timm_ckpt(self, on: bool) -> None:
        if on != self._timm_ckpt_on:
            self.backbone.set_grad_checkpointing(on)  # type: ignore[operator]
            self._timm_ckpt_on = on

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (k, 3, H, W) uint8 or normalised float -> embeddings (k, out_dim)."""
        if x.ndim != 4:
            raise ValueError(f"PatchEncoder expects (k, 3, H, W) tiles, got shape {tuple(x.shape)}")
        x = self.normalise(x.to(self.mean.device, non_blocking=True))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        if self._timm_ckpt:
            self._set_timm_ckpt(ckpt)
            feats = self.backbone(x)  # (k, num_features)
        elif ckpt:
            feats = checkpoint(self.backbone, x, use_reentrant=False)
        else:
            feats = self.backbone(x)
        return self.proj(feats.flatten(1))  # (k, out_dim)


class FeatureEncoder(nn.Module):
    """Encoder for precomputed tile features (frozen backbone), ``(k, F) -> (k, D)``:
    ``normalise(F) -> Linear(F, D) [-> BatchNorm1d(D)] -> ReLU``.

    ``norm``:

    * ``"standard"``: per-feature standardisation, ``(x - mean) / std`` with the cohort's
      statistics (:meth:`set_moments`, buffers saved with the weights). A tile's overall
      activation level is kept: for ImageNet CNN features it carries much of what tells
      tumour from normal tissue.
    * ``"layer"``: per-tile LayerNorm without affine (each tile's features to mean 0, var 1).
    * ``"layer-batch"``: LayerNorm, and a BatchNorm1d before the ReLU (the default, and the
      layout of runs saved before ``feature_norm`` existed).
    """

    NORMS = ("standard", "layer", "layer-batch")
    mean: Tensor  # (F,) buffers of norm="standard"
    std: Tensor

    def __init__(self, in_dim: int, out_dim: int, norm: str = "layer-batch") -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ConfigError(
                f"FeatureEncoder: in_dim={in_dim}, out_dim={out_dim} must both be >= 1"
            )
        if norm not in self.NORMS:
            raise ConfigError(f"FeatureEncoder: norm={norm!r} must be one of {self.NORMS}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.norm_kind = norm
        self.norm: nn.Module = (
            nn.Identity() if norm == "standard" else nn.LayerNorm(in_dim, elementwise_affine=False)
        )
        self.fc = nn.Linear(in_dim, out_dim)
        self.bn: nn.Module = nn.BatchNorm1d(out_dim) if norm == "layer-batch" else nn.Identity()
        self.act = nn.ReLU()
        if norm == "standard":  # identity until set_moments: (x - 0) / 1
            self.register_buffer("mean", torch.zeros(in_dim))
            self.register_buffer("std", torch.ones(in_dim))

    @property
    def standardises(self) -> bool:
        return self.norm_kind == "standard"

    def set_moments(self, mean: Tensor, std: Tensor) -> None:
        """Per-feature mean and standard deviation (F,) of the cohort's training tiles."""
        if not self.standardises:
            raise ValueError(f"FeatureEncoder(norm={self.norm_kind!r}) keeps no moments")
        if mean.shape != (self.in_dim,) or std.shape != (self.in_dim,):
            raise ValueError(f"moments must be ({self.in_dim},), got {tuple(mean.shape)}")
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-6))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (k, F) float features -> (k, D)."""
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(
                f"FeatureEncoder expects (k, {self.in_dim}) features, got {tuple(x.shape)}"
            )
        # float16/bf16 stored features are upcast (autocast, if on, re-casts the matmul)
        x = x.to(self.fc.weight.device, non_blocking=True).float()
        if self.standardises:
            x = (x - self.mean) / self.std
        return self.act(self.bn(self.fc(self.norm(x))))  # (k, D)


def feature_moments(chunks: Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-feature mean and standard deviation (F,) float32 over the rows of ``chunks``
    ((k, F) tensors), accumulated in float64 (one pass, any number of rows)."""
    n, total, squares = 0, None, None
    for x in chunks:
        x = x.detach().to("cpu", torch.float64)
        if x.ndim != 2:
            raise ValueError(f"feature_moments expects (k, F) chunks, got {tuple(x.shape)}")
        total = x.sum(0) if total is None else total + x.sum(0)
        squares = (x * x).sum(0) if squares is None else squares + (x * x).sum(0)
        n += x.shape[0]
    if total is None or squares is None or n < 2:
        raise ValueError(f"feature_moments needs >= 2 rows, got {n}")
    mean = total / n
    var = (squares / n - mean * mean).clamp_min(0.0) * (n / (n - 1))
    return mean.float(), var.sqrt().float()
