from __future__ import annotations

import itertools
import math

import pytest
import torch

from wsipipe.train.schedule import WarmupCosine, lr_factor, schedule_steps


def test_warmup_is_linear_and_reaches_one() -> None:
    vals = [lr_factor(s, 100, 10, 1e-3) for s in range(10)]
    assert vals == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr_factor(10, 100, 10, 1e-3) == pytest.approx(1.0)


def test_cosine_decays_to_min_ratio() -> None:
    total, warm, r = 110, 10, 1e-3
    assert lr_factor(total - 1, total, warm, r) == pytest.approx(r)
    mid = warm + (total - warm - 1) / 2
    assert lr_factor(int(mid), total, warm, r) == pytest.approx(
        r + (1 - r) * 0.5 * (1 + math.cos(math.pi * (int(mid) - warm) / (total - warm - 1)))
    )
    assert lr_factor(int(mid), total, warm, r) == pytest.approx((1 + r) / 2, abs=0.02)
    decay = [lr_factor(s, total, warm, r) for s in range(warm, total)]
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert lr_factor(500, total, warm, r) == pytest.approx(r)  # past the end stays at min


def test_no_warmup_and_bad_args() -> None:
    assert lr_factor(0, 10, 0) == pytest.approx(1.0)
    assert lr_factor(0, 1, 0, 0.5) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        lr_factor(-1, 10, 0)
    with pytest.raises(ValueError):
        lr_factor(0, 10, 11)


def test_schedule_steps() -> None:
    assert schedule_steps(33, 16, 50, 10) == (3, 150, 30)
    assert schedule_steps(5, 16, 2, 0.5) == (1, 2, 0)  # round(0.5) = 0


def test_lambda_lr_follows_the_pure_function() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(20, 5, 1e-3))
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1 * lr_factor(s, 20, 5, 1e-3) for s in range(20)])
