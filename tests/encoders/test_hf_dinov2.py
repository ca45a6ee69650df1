"""Phikon-v2's transformers DINOv2 checkpoint onto timm's ViT: same function, both key sets."""

from __future__ import annotations

import pytest
import timm
import torch

from wsipipe.encoders.hf_dinov2 import hf_dinov2_to_timm
from wsipipe.errors import EncoderWeightsError

DIM, DEPTH, HEADS, IMG = 64, 2, 4, 64


def _timm_vit(img: int = IMG) -> torch.nn.Module:
    return timm.create_model(
        "vit_large_patch16_224", img_size=img, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
        init_values=1.0, num_classes=0, global_pool="token",
    ).eval()  # fmt: skip


def _as_hf_4x(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 4.x key names of a 5.x Dinov2 state dict (how Phikon-v2 was saved)."""
    ren = {"attention.q_proj": "attention.attention.query",
           "attention.k_proj": "attention.attention.key",
           "attention.v_proj": "attention.attention.value",
           "attention.o_proj": "attention.output.dense"}  # fmt: skip
    out = {}
    for k, v in state.items():
        for new, old in ren.items():
            k = k.replace(f".{new}.", f".{old}.")
        out[k] = v
    return out


def test_matches_transformers_dinov2() -> None:
    tf = pytest.importorskip("transformers", reason="needs transformers (pip install transformers)")
    torch.manual_seed(0)
    cfg = tf.Dinov2Config(hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                          intermediate_size=4 * DIM, patch_size=16, image_size=IMG)  # fmt: skip
    ref = tf.Dinov2Model(cfg).eval()
    with torch.no_grad():  # LayerScale is 1.0 at init: give it values that matter
        for name, p in ref.named_parameters():
            if "lambda1" in name:
                p.uniform_(0.1, 2.0)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        want = ref(pixel_values=x).last_hidden_state[:, 0]  # Phikon-v2's embedding
    for state in (ref.state_dict(), _as_hf_4x(ref.state_dict())):
        vit = _timm_vit()
        vit.load_state_dict(hf_dinov2_to_timm(dict(state), vit), strict=True)
        with torch.no_grad():
            got = vit(x)
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_key_map_round_trip_without_transformers() -> None:
    """timm -> (transformers 4.x names) -> timm gives the same tensors back."""
    torch.manual_seed(1)
    vit = _timm_vit()
    own = vit.state_dict()
    hf: dict[str, torch.Tensor] = {
        "embeddings.cls_token": own["cls_token"], "embeddings.mask_token": torch.zeros(1, DIM),
        "embeddings.position_embeddings": own["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": own["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": own["patch_embed.proj.bias"],
        "layernorm.weight": own["norm.weight"], "layernorm.bias": own["norm.bias"],
    }  # fmt: skip
    for i in range(DEPTH):
        b, e = f"blocks.{i}.", f"encoder.layer.{i}."
        for leaf in ("weight", "bias"):
            q, k, v = own[f"{b}attn.qkv.{leaf}"].chunk(3)
            hf[f"{e}attention.attention.query.{leaf}"] = q
            hf[f"{e}attention.attention.key.{leaf}"] = k
            hf[f"{e}attention.attention.value.{leaf}"] = v
            hf[f"{e}attention.output.dense.{leaf}"] = own[f"{b}attn.proj.{leaf}"]
            for mod in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                hf[f"{e}{mod}.{leaf}"] = own[f"{b}{mod}.{leaf}"]
        hf[f"{e}layer_scale1.lambda1"] = own[f"{b}ls1.gamma"]
        hf[f"{e}layer_scale2.lambda1"] = own[f"{b}ls2.gamma"]
    back = hf_dinov2_to_timm(hf, vit)
    assert set(back) == set(own) and all(torch.equal(back[k], own[k]) for k in own)
    # a checkpoint of another image size: the position embedding is resampled to the grid
    bigger = _timm_vit(img=96)
    resized = hf_dinov2_to_timm(hf, bigger)
    assert resized["pos_embed"].shape == bigger.pos_embed.shape == (1, 1 + 36, DIM)
    with pytest.raises(EncoderWeightsError, match="unknown key"):
        hf_dinov2_to_timm({**hf, "encoder.layer.0.weird.weight": torch.zeros(1)}, vit)
    del hf["encoder.layer.1.attention.attention.key.bias"]
    with pytest.raises(EncoderWeightsError, match="lacks q, k or v"):
        hf_dinov2_to_timm(hf, vit)
