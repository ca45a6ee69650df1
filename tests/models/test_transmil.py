"""TransMIL: square padding, masking, the PPEG grid, and the class token's attention logits
that heatmaps show."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from wsipipe.errors import ConfigError
from wsipipe.models.transmil import TransMIL
from wsipipe.stats import roc_auc


def _model(dim: int = 16, heads: int = 4, seed: int = 0) -> TransMIL:
    torch.manual_seed(seed)
    return TransMIL(dim, 2, "label", heads=heads, dropout=0.0).eval()


def test_padding_tiles_of_a_batch_change_nothing() -> None:
    agg = _model()
    a, b = torch.randn(1, 5, 16), torch.randn(1, 9, 16)
    batch = torch.cat([torch.cat([a, torch.randn(1, 4, 16) * 100], 1), b])  # garbage padding
    mask = torch.tensor([[True] * 5 + [False] * 4, [True] * 9])
    with torch.no_grad():
        out = agg(batch, mask)["label"]
        assert out.shape == (2, 2)
        assert torch.allclose(out[0], agg(a)["label"][0], atol=1e-5)
        assert torch.allclose(out[1], agg(b)["label"][0], atol=1e-5)
        empty = agg(batch, torch.zeros(2, 9, dtype=torch.bool))["label"]  # class token alone
    assert torch.isfinite(empty).all() and torch.allclose(empty[0], empty[1])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 10, 17])
def test_square_grid_repeats_the_first_tiles(n: int) -> None:
    agg = _model()
    h = torch.randn(n, 16)
    side = math.ceil(math.sqrt(n))
    seen: list[torch.Tensor] = []
    agg.layer1.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    with torch.no_grad():
        x, s = agg._before_last(h)
    assert s == side and x.shape == (1, 1 + side * side, 16)
    tokens = seen[0][0]  # what layer 1 saw: class token, the n tiles, the repeats
    assert torch.equal(tokens[0], agg.cls[0, 0])
    assert torch.equal(tokens[1 : 1 + n], h)
    pad = side * side - n
    assert torch.equal(tokens[1 + n :], h[torch.arange(pad) % n])


def test_tile_logits_are_the_class_tokens_attention_in_the_last_layer() -> None:
    """softmax of the logits over all tokens = the attention weights that layer 2's class
    token query actually uses (recomputed here with an explicit softmax)."""
    agg = _model(dim=16, heads=4)
    emb = torch.randn(7, 16)  # 7 tiles -> a 3 x 3 grid: 2 repeats
    with torch.no_grad():
        logits = agg.tile_logits(emb)
        assert logits.shape == (7, 1, 4) and agg.attention_heads == 4
        x, _ = agg._before_last(emb)
        q, k, v = agg.layer2._qkv(x)  # (1, H, 10, 4)
        att = torch.softmax(q[0, :, :1] @ k[0].transpose(1, 2) / 2.0, dim=-1)[:, 0]  # (H, 10)
        want = F.scaled_dot_product_attention(q, k, v)[0, :, 0]  # (H, 4): class token output
        assert torch.allclose((att[:, :, None] * v[0]).sum(1), want, atol=1e-5)
        full = agg.layer2.first_query_logits(x)  # (10, H): class token, tiles, repeats
        assert torch.allclose(torch.softmax(full, 0).t(), att, atol=1e-6)
        assert torch.allclose(full[1:8], logits[:, 0], atol=1e-6)
    assert agg.tile_logits(torch.empty(0, 16)).shape == (0, 1, 4)


def test_transmil_learns_a_one_tile_signal() -> None:
    """Positive bags hold one tile shifted along a fixed direction: held-out AUC >= 0.95."""
    torch.manual_seed(0)
    direction = torch.randn(16)

    def bag(pos: bool) -> torch.Tensor:
        x = torch.randn(12, 16)
        if pos:
            x[torch.randint(12, ()).item()] += 3 * direction
        return x

    train_y = [i % 2 == 1 for i in range(60)]
    train_x = [bag(p) for p in train_y]
    agg = TransMIL(16, 2, "label", heads=4, dropout=0.0)
    opt = torch.optim.AdamW(agg.parameters(), lr=3e-3)
    for _ in range(12):
        for x, y in zip(train_x, train_y, strict=True):
            loss = F.cross_entropy(agg(x[None])["label"], torch.tensor([int(y)]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    agg.eval()
    test_y = [i % 2 == 1 for i in range(40)]
    with torch.no_grad():
        p = [agg(bag(y)[None])["label"].softmax(-1)[0, 1].item() for y in test_y]
    assert roc_auc(np.array(test_y), np.array(p)) >= 0.95


def test_bad_widths_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="multiple of heads"):
        TransMIL(18, 2, "label", heads=4)


def _attention_kernels(model: TransMIL, train: bool) -> set[str]:
    from torch.profiler import profile

    model.train(train)
    with profile() as prof:
        model(torch.randn(1, 30, 16))["label"].sum().backward()
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


def test_training_dropout_keeps_the_memory_light_attention_kernel() -> None:
    """Dropout on the attention weights would send the CPU to the kernel that holds the
    N x N matrix; training must use the same kernels as evaluation."""
    model = TransMIL(16, 2, "label", heads=4, dropout=0.25)
    kernels = _attention_kernels(model, train=True)
    assert kernels and kernels == _attention_kernels(model, train=False)
