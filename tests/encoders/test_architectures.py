"""Every registry entry builds offline with random weights: architecture, width, transforms.

The giant pathology ViTs (0.3-1.1 B parameters) are built on the ``meta`` device: shapes and
parameter counts without allocating memory; the small models run for real on CPU.
"""

from __future__ import annotations

import pytest
import torch

from wsipipe.encoders import create_encoder, encoder_spec, registry
from wsipipe.encoders.pooling import ClsMeanPool
from wsipipe.models import PatchEncoder

ON_CPU = ("resnet18", "efficientnet-lite0", "efficientnet_b0", "vit_small_patch16_224")
# parameter counts the authors publish (papers / model cards), tolerance 1 %
PUBLISHED_PARAMS = {
    "uni": 0.303e9,  # ViT-L/16
    "virchow2": 0.632e9,  # arXiv 2408.00738: "a 632 million parameter vision transformer"
    "h-optimus-0": 1.13e9,  # ViT-g/14 + 4 registers ("1.1B")
    "h-optimus-1": 1.13e9,
    "prov-gigapath": 1.13e9,  # ViT-g tile encoder (Nature 2024: 1.1B+)
    "uni2-h": 0.681e9,  # ViT-H/14-reg8
    "phikon-v2": 0.303e9,  # DINOv2 ViT-L/16
}


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", sorted(set(registry()) - set(ON_CPU)))
def test_entry_on_meta_device(name: str) -> None:
    entry = registry()[name]
    with torch.device("meta"):
        enc = create_encoder(name, out_dim=32)
        x = torch.empty(3, 3, entry.input_px, entry.input_px, dtype=torch.uint8)
        emb = enc.backbone(enc.normalise(x))
        out = enc(x)
    assert isinstance(enc, PatchEncoder)
    assert emb.shape == (3, entry.embed_dim) and enc.num_features == entry.embed_dim
    assert out.shape == (3, 32)
    spec = encoder_spec(name)  # (meta buffers hold no values: check the spec the factory uses)
    assert (spec.mean, spec.std, spec.input_px) == (entry.mean, entry.std, entry.input_px)
    if name in PUBLISHED_PARAMS:
        n = _n_params(enc.backbone)
        assert n == pytest.approx(PUBLISHED_PARAMS[name], rel=0.01), n


def test_token_layouts_of_the_foundation_models() -> None:
    """Prefix tokens the pooling skips: Virchow2 cls + 4 registers, UNI2-h cls + 8."""
    with torch.device("meta"):
        v2 = create_encoder("virchow2").backbone
        u2 = create_encoder("uni2-h").backbone
        hopt = create_encoder("h-optimus-0").backbone
    assert isinstance(v2, ClsMeanPool) and v2.num_prefix_tokens == 5
    assert u2.num_prefix_tokens == 9 and u2.global_pool == "token"  # cls token
    assert hopt.num_prefix_tokens == 5 and hopt.patch_embed.patch_size == (14, 14)
    assert not hopt.dynamic_img_size  # the model card's fixed 224 px input


@pytest.mark.parametrize("name", ON_CPU)
def test_small_entries_on_cpu(name: str) -> None:
    entry = registry()[name]
    torch.manual_seed(0)
    enc = create_encoder(name).eval()
    x = torch.randint(0, 256, (2, 3, entry.input_px, entry.input_px), dtype=torch.uint8)
    with torch.no_grad():
        y = enc(x)
        z = enc((x.float() / 255 - enc.mean) / enc.std)  # float = already normalised
    assert y.shape == (2, entry.embed_dim) and torch.isfinite(y).all()
    assert torch.allclose(y, z, atol=1e-4)
    assert enc.mean.flatten().tolist() == pytest.approx(entry.mean)


def test_cls_mean_pool_skips_registers() -> None:
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, reg_tokens=4,
                            img_size=64).eval()  # fmt: skip
    pool = ClsMeanPool(vit)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = vit.forward_features(x)  # (2, 1 + 4 + 16, 192)
        got = pool(x)
    assert tokens.shape == (2, 21, 192) and got.shape == (2, 384)
    assert torch.allclose(got[:, :192], tokens[:, 0])
    assert torch.allclose(got[:, 192:], tokens[:, 5:].mean(1), atol=1e-6)
    assert not torch.allclose(got[:, 192:], tokens[:, 1:].mean(1), atol=1e-4)


def test_plain_timm_name_still_works() -> None:
    enc = create_encoder("resnet10t", out_dim=8)  # not in the registry
    cfg = enc.backbone.pretrained_cfg
    assert enc.out_dim == 8 and enc.num_features == 512
    assert enc.mean.flatten().tolist() == pytest.approx(cfg["mean"])


def test_cls_mean_pool_grad_checkpointing() -> None:
    """The wrapper passes timm's gradient checkpointing through (Virchow2 fine-tuning)."""
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, reg_tokens=4, img_size=32)
    enc = PatchEncoder(ClsMeanPool(vit), 384, out_dim=4, grad_checkpointing=True)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    enc(x).sum().backward()
    assert enc._timm_ckpt and vit.grad_checkpointing
    assert vit.blocks[0].attn.qkv.weight.grad is not None


def test_stage_pooling_runs_only_up_to_its_last_stage() -> None:
    """efficientnet-lite0-s23 pools the stride-8 and stride-16 stages: 40 + 112 features, and
    in pixel-mode fine-tuning no gradient (and no compute) reaches the later stages or head."""
    from wsipipe.encoders.pooling import StagePool

    torch.manual_seed(0)
    enc = create_encoder("efficientnet-lite0-s23", out_dim=8)
    assert isinstance(enc.backbone, StagePool) and enc.num_features == 152
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    enc(x).sum().backward()
    cnn = enc.backbone.cnn
    assert cnn.blocks[4][0].conv_pw.weight.grad is not None  # stage 3 of feature_info
    assert cnn.blocks[5][0].conv_pw.weight.grad is None and cnn.conv_head.weight.grad is None
    with pytest.raises(ValueError, match="increasing"):
        StagePool(cnn, (3, 2))
    with pytest.raises(ValueError, match="increasing"):
        StagePool(cnn, (9,))
