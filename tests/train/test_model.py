from __future__ import annotations

import torch
from torch import nn

from tests.train.synthstores import TEST_ENCODER, tiny_overrides
from wsipipe.train.config import load_train_config
from wsipipe.train.model import (
    SlideModel,
    build_model,
    calibrate_batchnorm,
    freeze_batchnorm,
    make_optimizer,
)


def test_calibrate_batchnorm_is_the_plain_average() -> None:
    enc = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU())
    enc.eval()
    x = torch.randn(50, 3)
    chunks = [(torch.arange(s, s + 10), x[s : s + 10]) for s in range(0, 50, 10)]
    n = calibrate_batchnorm(enc, iter(chunks), max_tiles=35, device=torch.device("cpu"))
    assert n == 35
    bn = enc[1]
    assert isinstance(bn, nn.BatchNorm1d)
    h = enc[0](x).detach()
    # cumulative average over the 4 batches used (10, 10, 10, 5 rows) of the batch means
    batches = [h[0:10], h[10:20], h[20:30], h[30:35]]
    assert torch.allclose(
        bn.running_mean, torch.stack([b.mean(0) for b in batches]).mean(0), atol=1e-5
    )
    assert torch.allclose(
        bn.running_var, torch.stack([b.var(0) for b in batches]).mean(0), atol=1e-5
    )
    assert bn.momentum == 0.1 and not enc.training and not bn.training  # state restored
    assert calibrate_batchnorm(nn.Linear(3, 3), iter(chunks), 10, torch.device("cpu")) == 0


def test_freeze_batchnorm_keeps_statistics_but_trains_affine() -> None:
    cfg = load_train_config(None, tiny_overrides())
    model = build_model(cfg, 2)
    model.train()
    assert freeze_batchnorm(model.encoder) > 0
    bns = [m for m in model.encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    before = [b.running_mean.clone() for b in bns]
    x = torch.randint(0, 255, (2, 3, 3, 32, 32), dtype=torch.uint8)
    model(x).sum().backward()
    assert all(torch.equal(a, b.running_mean) for a, b in zip(before, bns, strict=True))
    assert all(b.weight.grad is not None for b in bns if b.weight is not None)


def test_build_model_shapes_and_optimizer_groups() -> None:
    cfg = load_train_config(None, tiny_overrides(encoder=TEST_ENCODER))
    model = build_model(cfg, 3)
    assert isinstance(model, SlideModel)
    x = torch.randint(0, 255, (2, 4, 3, 32, 32), dtype=torch.uint8)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    assert model(x, mask).shape == (2, 3)
    opt = make_optimizer(model, 1e-3, 0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any(p is model.aggregator.query for p in no_decay["params"])  # type: ignore[attr-defined]
    feats = build_model(load_train_config(None, tiny_overrides(mode="features")), 2, 24)
    assert feats(torch.randn(2, 5, 24)).shape == (2, 2)
