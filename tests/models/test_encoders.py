"""Patch encoders (timm factory, random weights, no network) and the features encoder."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from wsipipe.encoders import create_encoder
from wsipipe.errors import ConfigError
from wsipipe.models import FeatureEncoder, PatchEncoder
from wsipipe.models.encoders import feature_moments


def test_resnet18_shapes_and_uint8_normalisation() -> None:
    torch.manual_seed(0)
    enc = create_encoder("resnet18").eval()
    assert enc.out_dim == 512
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        a = enc(x)
        b = enc((x.float() / 255 - mean) / std)  # float input = already normalised
    assert a.shape == (3, 512)
    assert torch.allclose(a, b, atol=1e-5)
    proj = create_encoder("resnet18", out_dim=24)
    assert proj.out_dim == 24 and proj(x).shape == (3, 24)


def test_normalisation_comes_from_model_config() -> None:
    enc = create_encoder("vit_tiny_patch16_224")
    cfg = enc.backbone.pretrained_cfg
    assert torch.allclose(enc.mean.flatten(), torch.tensor(cfg["mean"], dtype=torch.float32))
    assert torch.allclose(enc.std.flatten(), torch.tensor(cfg["std"], dtype=torch.float32))
    assert not torch.allclose(enc.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert "mean" not in enc.state_dict()  # config, not weights


def test_channels_last_same_output() -> None:
    torch.manual_seed(0)
    a = create_encoder("resnet18", out_dim=8).eval()
    b = create_encoder("resnet18", out_dim=8, channels_last=True).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), atol=1e-4)
    assert b.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def _saved_bytes_and_backward(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of tensors autograd keeps for backward (activation memory), then backward."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x)
    y.square().sum().backward()
    return total


def _grads_equal(plain: nn.Module, ckpt: nn.Module, x: torch.Tensor) -> None:
    ckpt.load_state_dict(plain.state_dict())
    plain.train()
    ckpt.train()
    saved_plain = _saved_bytes_and_backward(plain, x)
    saved_ckpt = _saved_bytes_and_backward(ckpt, x)
    assert saved_ckpt < 0.5 * saved_plain  # activations are recomputed, not stored
    n = 0
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert q.grad is not None, name
        assert torch.allclose(p.grad, q.grad, atol=1e-4, rtol=1e-3), name  # type: ignore[arg-type]
        n += 1
    assert n > 0


def test_grad_checkpointing_same_gradients_timm() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    _grads_equal(
        create_encoder("resnet18", out_dim=8),
        create_encoder("resnet18", out_dim=8, grad_checkpointing=True),
        x,
    )


def test_grad_checkpointing_same_gradients_generic_backbone() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    _grads_equal(
        PatchEncoder(net, 4, out_dim=3),
        PatchEncoder(copy.deepcopy(net), 4, out_dim=3, grad_checkpointing=True),
        x,
    )


def test_unknown_name_and_bad_args() -> None:
    with pytest.raises(ConfigError, match="not_a_model"):
        create_encoder("not_a_model")
    with pytest.raises(ConfigError, match="out_dim=0"):
        PatchEncoder(nn.Identity(), 4, out_dim=0)
    with pytest.raises(ValueError):
        create_encoder("resnet18")(torch.zeros(3, 32, 32, dtype=torch.uint8))


def test_feature_encoder_layer_batch() -> None:
    """The default (and the layout of runs saved before ``feature_norm``):
    LayerNorm -> Linear -> BN -> ReLU."""
    torch.manual_seed(0)
    enc = FeatureEncoder(32, 8)
    assert not any(p is not None for p in (enc.norm.weight, enc.norm.bias))  # no affine LN
    x = torch.randn(10, 32) * 5 + 3
    y = enc(x)
    assert y.shape == (10, 8) and torch.all(y >= 0)
    # train-mode BatchNorm: pre-ReLU activations have batch mean 0 -> about half positive
    pre = enc.bn(enc.fc(enc.norm(x)))
    assert torch.allclose(pre.mean(0), torch.zeros(8), atol=1e-5)
    # LayerNorm first: invariant to per-tile affine rescaling of the features
    enc.eval()
    with torch.no_grad():
        assert torch.allclose(enc(x), enc(x * 3 + 1), atol=1e-4)
    assert enc(x.half()).dtype == torch.float32
    with pytest.raises(ValueError, match="FeatureEncoder"):
        enc(torch.randn(4, 31))
    with pytest.raises(ConfigError):
        FeatureEncoder(0, 8)
    with pytest.raises(ConfigError, match="norm='batch'"):
        FeatureEncoder(4, 8, norm="batch")
    with pytest.raises(ValueError, match="keeps no moments"):
        enc.set_moments(torch.zeros(32), torch.ones(32))


def test_feature_encoder_standardises_with_the_cohort_moments() -> None:
    """``standard``: (x - mean) / std per feature, no BatchNorm; a tile's overall activation level
    survives (LayerNorm would remove it), and the moments travel in the state dict."""
    torch.manual_seed(0)
    enc = FeatureEncoder(6, 4, norm="standard")
    assert isinstance(enc.bn, nn.Identity) and isinstance(enc.norm, nn.Identity)
    x = torch.rand(50, 6) * torch.tensor([1.0, 10, 100, 0.1, 5, 2]) + 3
    mean, std = feature_moments([x[:20], x[20:]])
    np.testing.assert_allclose(mean.numpy(), x.double().mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), x.double().std(0).numpy(), rtol=1e-5)
    enc.set_moments(mean, std)
    with torch.no_grad():
        want = torch.relu(enc.fc((x - x.mean(0)) / x.std(0)))
        np.testing.assert_allclose(enc(x).numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(enc(x), enc(x * 3), atol=1e-3)  # activation level kept
    assert {"mean", "std"} <= set(enc.state_dict())
    other = FeatureEncoder(6, 4, norm="standard")
    other.load_state_dict(enc.state_dict())
    assert torch.equal(other.mean, mean) and torch.equal(other.std, std)
    with pytest.raises(ValueError, match="moments must be"):
        enc.set_moments(torch.zeros(5), torch.ones(5))
    with pytest.raises(ValueError, match=">= 2 rows"):
        feature_moments([x[:1]])
