"""freeze_stages for pixel-mode fine-tuning, and the ``wsipipe encoders`` command."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d
from typer.testing import CliRunner

from wsipipe.cli import app
from wsipipe.encoders import create_encoder, registry
from wsipipe.errors import ConfigError


def test_freeze_cnn_stages() -> None:
    torch.manual_seed(0)
    enc = create_encoder("resnet18", freeze_stages=2, out_dim=4).train()
    bb = enc.backbone
    for name, p in bb.named_parameters():
        frozen = name.startswith(("conv1", "bn1", "layer1", "layer2"))
        assert p.requires_grad != frozen, name
    assert isinstance(bb.bn1, FrozenBatchNorm2d) and isinstance(bb.layer2[0].bn1, FrozenBatchNorm2d)
    assert isinstance(bb.layer3[0].bn1, torch.nn.BatchNorm2d)
    before = bb.layer1[0].bn1.running_mean.clone()
    live_before = bb.layer3[0].bn1.running_mean.clone()
    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    enc(x).square().sum().backward()  # a training step's forward + backward
    assert torch.equal(bb.layer1[0].bn1.running_mean, before)  # frozen statistics
    assert not torch.equal(bb.layer3[0].bn1.running_mean, live_before)
    assert bb.conv1.weight.grad is None and bb.layer3[0].conv1.weight.grad is not None
    assert all(p.requires_grad for p in enc.proj.parameters())


def test_freeze_vit_blocks() -> None:
    enc = create_encoder("vit_tiny_patch16_224", freeze_stages=3)
    bb = enc.backbone
    assert not bb.cls_token.requires_grad and not bb.pos_embed.requires_grad
    assert not bb.patch_embed.proj.weight.requires_grad
    assert all(not p.requires_grad for i in range(3) for p in bb.blocks[i].parameters())
    assert all(p.requires_grad for p in bb.blocks[3].parameters())
    assert bb.norm.weight.requires_grad


def test_freeze_validation() -> None:
    with pytest.raises(ConfigError, match="freeze_stages=4 must be < 4"):
        create_encoder("resnet18", freeze_stages=4)
    with pytest.raises(ConfigError, match="freeze_stages=-1"):
        create_encoder("resnet18", freeze_stages=-1)


def test_encoders_command_table_and_json() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["encoders"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for name in ("uni2-h", "virchow2", "h-optimus-0", "efficientnet-lite0", "resnet50"):
        assert name in res.output
    assert "hf-hub:paige-ai/Virchow2" in res.output and "not verified" in res.output
    res = runner.invoke(app, ["encoders", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["name"] for r in rows] == list(registry())
    v2 = next(r for r in rows if r["name"] == "virchow2")
    assert v2["pooling"] == "cls+mean" and v2["gated"] and v2["mpp"] is None
