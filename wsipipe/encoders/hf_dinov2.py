"""Hugging Face ``transformers`` DINOv2 checkpoints (Phikon-v2) onto timm's ViT.

``Dinov2Model`` keeps q, k, v as three linear maps and names the parts differently; timm's
``VisionTransformer`` (LayerScale, ``qkv`` packed) computes the same function once the keys
are renamed and q/k/v concatenated. Both the transformers 4.x key names
(``attention.attention.query``, ``attention.output.dense``) and the 5.x ones (``q_proj``,
``o_proj``) are read. The ``mask_token`` (used only in DINOv2 pretraining) is dropped.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from wsipipe.errors import EncoderWeightsError

_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_SIMPLE = {
    "norm1": "norm1",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "attention.output.dense": "attn.proj",  # transformers 4.x
    "attention.o_proj": "attn.proj",  # transformers 5.x
}
_QKV = {  # name in the checkpoint -> q / k / v
    "attention.attention.query": "q", "attention.attention.key": "k",
    "attention.attention.value": "v", "attention.q_proj": "q", "attention.k_proj": "k",
    "attention.v_proj": "v",
}  # fmt: skip
_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


def is_hf_dinov2(state: dict[str, Tensor]) -> bool:
    return "embeddings.patch_embeddings.projection.weight" in state


def hf_dinov2_to_timm(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename a ``Dinov2Model`` state dict onto the timm ViT ``model``.

    A position embedding of another grid (the checkpoint's ``image_size``) is resampled to
    ``model``'s with timm's bicubic resampling.
    """
    if not is_hf_dinov2(state):
        return state  # already timm's layout
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}  # (layer, weight|bias) -> q/k/v
    for key, value in state.items():
        if key == "embeddings.mask_token":
            continue
        if key in _TOP:
            out[_TOP[key]] = value
            continue
        m = _LAYER.match(key)
        if m is None:
            raise EncoderWeightsError(f"DINOv2 weights: unknown key {key!r}")
        layer, rest = int(m.group(1)), m.group(2)
        module, _, leaf = rest.rpartition(".")
        if rest in _SIMPLE:  # parameters without a .weight/.bias leaf (lambda1)
            out[f"blocks.{layer}.{_SIMPLE[rest]}"] = value
        elif module in _SIMPLE:
            out[f"blocks.{layer}.{_SIMPLE[module]}.{leaf}"] = value
        elif module in _QKV:
            qkv.setdefault((layer, leaf), {})[_QKV[module]] = value
        else:
            raise EncoderWeightsError(f"DINOv2 weights: unknown key {key!r}")
    for (layer, leaf), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise EncoderWeightsError(f"DINOv2 weights: layer {layer} lacks q, k or v {leaf}")
        out[f"blocks.{layer}.attn.qkv.{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    own = getattr(model, "pos_embed", None)
    pos = out.get("pos_embed")
    if isinstance(own, Tensor) and pos is not None and pos.shape != own.shape:
        from timm.layers import resample_abs_pos_embed

        grid: tuple[int, int] = model.patch_embed.grid_size  # type: ignore[union-attr,assignment]
        out["pos_embed"] = resample_abs_pos_embed(pos, list(grid), num_prefix_tokens=1)
    return out
