"""The one place wsipipe builds patch encoders: registry entries and plain timm names.

``create_encoder`` builds the architecture offline (timm, no hub access), loads weights as
:mod:`wsipipe.encoders.weights` resolves them, freezes early stages on request, applies the
entry's pooling and wraps it all in a :class:`~wsipipe.models.PatchEncoder` that normalises
uint8 tiles with the entry's own mean/std. ``encoder_spec`` gives the preprocessing contract
(input px, mean/std, µm/px, width) that loaders and checkpoints need, without weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsipipe.encoders.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderEntry,
    get_entry,
    registry,
    resolve_kwargs,
)
from wsipipe.errors import ConfigError, EncoderWeightsError
from wsipipe.models.encoders import PatchEncoder

_HUB_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


@dataclass(frozen=True)
class EncoderSpec:
    """What a loader and a checkpoint must know about an encoder (no weights).

    ``weights_source``: where pretrained weights come from by default (``hf-hub:org/name``,
    ``pip:package``, ``timm:<hub id>``); a checkpoint should record the resolved path too.
    """

    name: str
    arch: str
    registered: bool
    embed_dim: int
    input_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float
    mpp: float | None
    pooling: str
    weights_source: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _spec_of_entry(entry: EncoderEntry) -> EncoderSpec:
    return EncoderSpec(
        name=entry.name, arch=entry.arch, registered=True, embed_dim=entry.embed_dim,
        input_px=entry.input_px, mean=entry.mean, std=entry.std,
        interpolation=entry.interpolation, crop_pct=entry.crop_pct, mpp=entry.mpp,
        pooling=entry.pooling, weights_source=entry.source,
    )  # fmt: skip


def _rgb(values: Any, default: tuple[float, float, float]) -> tuple[float, float, float]:
    vals = tuple(float(v) for v in (values if values is not None else default))
    if len(vals) == 1:  # single-channel configs: broadcast to RGB
        vals = vals * 3
    return (vals[0], vals[1], vals[2])


def _check_timm_name(name: str) -> None:
    import timm

    if not name.startswith(_HUB_PREFIXES) and not timm.is_model(name):
        known = ", ".join(sorted(registry()))
        raise ConfigError(
            f"encoder name {name!r} is not a registered encoder or a timm model; use one of "
            f"{known}, any timm name (e.g. 'resnet50') or 'hf-hub:org/model' "
            "(`wsipipe encoders` lists them)"
        )


def _plain_spec(name: str, model: nn.Module) -> EncoderSpec:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size", (3, 224, 224))
    hub_id = cfg.get("hf_hub_id")
    source = f"hf-hub:{hub_id}" if hub_id else (f"url:{cfg['url']}" if cfg.get("url") else "none")
    return EncoderSpec(
        name=name, arch=str(cfg.get("architecture", name)), registered=False,
        embed_dim=int(model.num_features),  # type: ignore[arg-type]
        input_px=int(size[-1]), mean=_rgb(cfg.get("mean"), IMAGENET_MEAN),
        std=_rgb(cfg.get("std"), IMAGENET_STD), interpolation=str(cfg.get("interpolation",
        "bicubic")), crop_pct=float(cfg.get("crop_pct", 1.0)), mpp=None, pooling="model",
        weights_source=name if name.startswith(_HUB_PREFIXES) else source,
    )  # fmt: skip


def encoder_spec(name: str) -> EncoderSpec:
    """The preprocessing contract of ``name`` (registry entry or timm name), no weights."""
    entry = get_entry(name)
    if entry is not None:
        return _spec_of_entry(entry)
    _check_timm_name(name)
    import timm

    if name.startswith(_HUB_PREFIXES):
        raise ConfigError(
            f"encoder {name!r}: a hub model's preprocessing lives in its config.json; build it "
            "with create_encoder (pretrained) or use a registered name"
        )
    with torch.device("meta"):  # architecture only: no memory, no init cost
        model = timm.create_model(name, pretrained=False, num_classes=0)
    return _plain_spec(name, model)


def build_architecture(entry: EncoderEntry) -> nn.Module:
    """The timm model of ``entry`` with random weights and no classifier (offline)."""
    import timm

    return timm.create_model(
        entry.arch, pretrained=False, num_classes=0, **resolve_kwargs(entry.timm_kwargs)
    )


def freeze_early_stages(model: nn.Module, k: int, label: str) -> int:
    """Freeze the stem and the first ``k`` stages (CNNs: timm's feature stages; ViTs: patch
    embedding + first ``k`` blocks): no gradients, BatchNorm statistics fixed. Returns how
    many parameters were frozen."""
    if k == 0:
        return 0
    from timm.models._manipulate import group_modules, group_parameters
    from timm.utils import freeze

    matcher = getattr(model, "group_matcher", None)
    if k < 0 or matcher is None:
        raise ConfigError(
            f"encoder {label!r}: freeze_stages={k} must be >= 0 and needs a timm model with "
            "stages (group_matcher)"
        )
    spec = matcher(coarse=True)
    params = group_parameters(model, spec)  # {group: [param names]}, group 0 = stem
    n_stages = len(params) - 1
    if k >= n_stages:
        raise ConfigError(
            f"encoder {label!r}: freeze_stages={k} must be < {n_stages} (its stages after the "
            "stem); to freeze the whole encoder use features mode"
        )
    frozen_groups = sorted(params)[: k + 1]
    modules = [m for g in frozen_groups for m in group_modules(model, spec).get(g, [])]
    freeze(model, modules, include_bn_running_stats=True)  # BN -> FrozenBatchNorm2d
    named = dict(model.named_parameters())
    n = 0
    for g in frozen_groups:  # also root-level parameters (cls token, position embedding)
        for pname in params[g]:
            if pname in named:
                named[pname].requires_grad_(False)
                n += named[pname].numel()
    return n


def _pool(model: nn.Module, pooling: str, stages: tuple[int, ...]) -> nn.Module:
    if pooling == "cls+mean":
        from wsipipe.encoders.pooling import ClsMeanPool

        return ClsMeanPool(model)
    if pooling == "stages":
        from wsipipe.encoders.pooling import StagePool

        return StagePool(model, stages)
    return model


def _plain_hub_weights(name: str) -> Path:
    """Where timm's own pretrained weights of a plain timm name are (hub cache first)."""
    from timm.models import get_pretrained_cfg

    from wsipipe.encoders import weights as W

    cfg = get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if not hub_id or hub_id.endswith("/"):
        raise EncoderWeightsError(
            f"encoder {name!r}: timm records no hub weights for it; fix: pass --weights PATH "
            "or --no-pretrained"
        )
    return W.hub_weights(name, hub_id, W.SNAPSHOT_FILES)


def _create_hub_model(name: str, pretrained: bool) -> nn.Module:
    """An ``hf-hub:``/``local-dir:`` model through timm (architecture from its config.json)."""
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0)
    except (OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EncoderWeightsError(
            f"encoder {name!r}: timm could not load it ({reason}); fix: populate the hub cache "
            f"(`hf download {name.split(':', 1)[1]}`) or use a registered name with --weights"
        ) from None


def create_encoder(
    name: str,
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    out_dim: int | None = None,
    channels_last: bool = False,
    grad_checkpointing: bool = False,
    freeze_stages: int = 0,
) -> PatchEncoder:
    """A patch encoder ``(k, 3, H, W) uint8 -> (k, out_dim or embed_dim)``.

    Args:
        name: a registry name (``uni2-h``, ``efficientnet-lite0``; ``wsipipe encoders``), any
            timm architecture name, or ``hf-hub:org/model``.
        pretrained: load the encoder's pretrained weights (hub cache / package); fails with
            one line when they cannot be found -- never a silent random init.
        weights: a state dict file or local snapshot folder to load instead (implies
            pretrained weights; any registry entry or timm architecture).
        out_dim: append ``Linear(embed_dim, out_dim)``.
        freeze_stages: freeze the stem and first k stages / blocks (pixel-mode fine-tuning).
    """
    from wsipipe.encoders import weights as W

    entry = get_entry(name)
    want = weights is not None or pretrained
    if entry is not None:
        # weights first: a missing file fails in one line before any model is built
        path = W.entry_weights_path(entry, weights) if want else None
        model = build_architecture(entry)
        if path is not None:
            W.load_entry_weights(model, entry, path)
        spec = _spec_of_entry(entry)
    elif name.startswith(_HUB_PREFIXES):
        _check_timm_name(name)
        if weights is not None:
            raise ConfigError(
                f"encoder {name!r}: --weights needs the architecture offline; give its timm "
                "architecture name or a registered name with --weights"
            )
        model = _create_hub_model(name, pretrained)
        spec = _plain_spec(name, model)
    else:
        _check_timm_name(name)
        import timm

        path = None
        if weights is not None:
            path = W.local_weights(name, weights)
        elif pretrained:
            path = _plain_hub_weights(name)
        model = timm.create_model(name, pretrained=False, num_classes=0)
        if path is not None:
            W.load_strict(model, W.read_state_dict(path, name), name, str(path))
        spec = _plain_spec(name, model)
    freeze_early_stages(model, freeze_stages, name)
    backbone = _pool(model, spec.pooling, entry.stages if entry is not None else ())
    width = int(getattr(backbone, "num_features", spec.embed_dim))
    if width != spec.embed_dim:
        raise ConfigError(
            f"encoder {name!r}: the architecture gives {width}-d embeddings, the registry says "
            f"{spec.embed_dim} (registry entry out of date?)"
        )
    return PatchEncoder(
        backbone,
        num_features=width,
        out_dim=out_dim,
        mean=spec.mean,
        std=spec.std,
        channels_last=channels_last,
        grad_checkpointing=grad_checkpointing,
    )
