"""The slide classifier (encoder + cross-attention aggregator) and its optimiser.

``SlideModel.forward`` is the gradient pass over a batch of selected tiles, so that a
DistributedDataParallel wrapper sees exactly the computation that needs gradient sync; the
scans call ``model.encoder`` / ``model.aggregator`` directly (no gradients, no sync).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from wsipipe.config import cpu_flags, cpu_has_bf16
from wsipipe.errors import ConfigError
from wsipipe.train.config import TrainConfig

TASK = "label"


class SlideModel(nn.Module):
    """encoder: (k, 3, H, W) uint8 | (k, F) -> (k, D); aggregator: (B, M, D) -> logits."""

    def __init__(
        self, encoder: nn.Module, aggregator: nn.Module, instance_head: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.aggregator = aggregator
        self.instance_head = instance_head  # (k, D) -> (k, 1) tile logits (instance_loss)

    def forward(
        self,
        tiles: Tensor,
        mask: Tensor | None = None,
        aux_emb: Tensor | None = None,
        aux_mask: Tensor | None = None,
        amp_dtype: torch.dtype | None = None,
        with_instances: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """tiles (B, M, 3, H, W) | (B, M, F), mask (B, M) -> class logits (B, C) float32;
        ``with_instances``: and the instance head's tile logits (B, M)."""
        from wsipipe.models import gradient_pass
        from wsipipe.models.batch import INSTANCE

        head = self.instance_head if with_instances else None
        if with_instances and head is None:
            raise ValueError("with_instances: this model has no instance head")
        out = gradient_pass(self.encoder, self.aggregator, tiles, mask, aux_emb, aux_mask,
                            amp_dtype=amp_dtype, instance_head=head)  # fmt: skip
        return (out[TASK], out[INSTANCE]) if with_instances else out[TASK]


def build_model(cfg: TrainConfig, n_classes: int, feature_dim: int = 0) -> SlideModel:
    """Encoder (a registry / timm backbone + projection to D, or the features encoder) and
    the aggregator of ``cfg.method`` (cross-attention for IPS / DBPS, ABMIL, mean pooling,
    TransMIL)."""
    from wsipipe.models import AggregatorConfig, CrossAttentionAggregator, FeatureEncoder, TaskSpec
    from wsipipe.models.mil import GatedAttentionMIL, MeanPoolMIL

    encoder: nn.Module
    if cfg.mode == "features":
        if feature_dim < 1:
            raise ConfigError("features mode: feature width unknown; run the embed step first")
        encoder = FeatureEncoder(feature_dim, cfg.dim, cfg.feature_norm)
    else:
        from wsipipe.encoders import create_encoder

        encoder = create_encoder(
            cfg.encoder,
            pretrained=cfg.pretrained,
            weights=cfg.weights or None,
            out_dim=cfg.dim,
            channels_last=cfg.channels_last,
            grad_checkpointing=cfg.grad_checkpointing,
            freeze_stages=cfg.freeze_stages,
        )
    aggregator: nn.Module
    if cfg.method == "abmil":
        aggregator = GatedAttentionMIL(cfg.dim, n_classes, TASK, cfg.abmil_dim, cfg.dropout)
    elif cfg.method == "mean":
        aggregator = MeanPoolMIL(cfg.dim, n_classes, TASK, cfg.dropout)
    elif cfg.method == "transmil":
        from wsipipe.models.transmil import TransMIL

        aggregator = TransMIL(cfg.dim, n_classes, TASK, cfg.heads, cfg.dropout)
    else:
        agg_cfg = AggregatorConfig(
            dim=cfg.dim,
            heads=cfg.heads,
            dim_head=cfg.dim_head,
            dim_inner=cfg.dim_inner,
            dropout=cfg.dropout,
            attn_dropout=cfg.attn_dropout,
            tasks=(TaskSpec(TASK, n_classes),),
        )
        aggregator = CrossAttentionAggregator(agg_cfg)
    if cfg.instance_loss > 0 and n_classes != 2:
        raise ConfigError(
            f"instance_loss={cfg.instance_loss:g} needs two classes (negative first), got "
            f"{n_classes}; set --instance-loss 0 for multi-class labels"
        )
    head = nn.Linear(cfg.dim, 1) if cfg.instance_loss > 0 else None
    return SlideModel(encoder, aggregator, head)


def freeze_batchnorm(module: nn.Module) -> int:
    """Put every BatchNorm layer of ``module`` in eval mode (running statistics fixed, affine
    weights still trained); returns how many. Call after ``model.train()``."""
    n = 0
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            n += 1
    return n


def calibrate_batchnorm(
    encoder: nn.Module,
    chunks: Iterable[tuple[Tensor, Tensor]],
    max_tiles: int,
    device: torch.device,
) -> int:
    """Re-estimate every BatchNorm layer's running statistics of ``encoder`` as the plain
    average over up to ``max_tiles`` tiles (train-mode forward, no gradients, nothing else
    changes). Returns the number of tiles used (0 when the encoder has no BatchNorm)."""
    bns = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    states = [(m, m.training) for m in encoder.modules()]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = plain mean over the batches seen
    seen = 0
    try:
        encoder.train()
        with torch.no_grad():
            for _, tiles in chunks:
                take = tiles[: max_tiles - seen]
                if take.shape[0] < 2:  # BatchNorm needs >= 2 samples per batch
                    continue
                encoder(take.to(device, non_blocking=True))
                seen += int(take.shape[0])
                if seen >= max_tiles:
                    break
    finally:
        for bn, mom in zip(bns, momenta, strict=True):
            bn.momentum = mom
        for mod, was in states:
            mod.training = was
    return seen


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; weight decay on weight matrices / kernels only (not biases, norms, queries)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "query" not in name else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


def amp_dtype_for(
    precision: str, device: torch.device, cpu_bf16: bool | None = None, selection: bool = False
) -> torch.dtype | None:
    """Autocast dtype: ``auto`` = bf16 on CUDA, none (fp32) on CPU -- except for the training
    scan's tile *selection* (``selection``), which ``auto`` runs in bf16 on a CPU with native
    bf16 arithmetic (``cpu_bf16``; None = this machine's, :func:`host_cpu_bf16`): its
    selected tiles stay within the measured tolerance of fp32 (tests/train/
    test_reduced_decode.py), while the gradient pass, validation, predict and heatmap scores
    keep fp32 numbers on CPU."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        if not selection or device.type != "cpu":
            return None
        return torch.bfloat16 if (host_cpu_bf16() if cpu_bf16 is None else cpu_bf16) else None
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        return torch.float16
    return torch.bfloat16


@functools.cache
def host_cpu_bf16() -> bool:
    """Whether this machine's CPU has native bf16 (from /proc/cpuinfo; False where that
    cannot be read, e.g. not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return cpu_has_bf16(cpu_flags(text))
