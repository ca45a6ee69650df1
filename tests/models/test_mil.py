"""ABMIL (gated attention) and mean pooling: masking, attention, and the tile logits that
heatmaps show."""

from __future__ import annotations

import math

import pytest
import torch

from wsipipe.models.mil import GatedAttentionMIL, MeanPoolMIL, instance_mil_loss


def test_abmil_attention_is_the_softmax_of_its_tile_logits_and_ignores_padding() -> None:
    torch.manual_seed(0)
    agg = GatedAttentionMIL(16, 3, "label", attn_dim=8, dropout=0.0).eval()
    emb = torch.randn(1, 5, 16)
    padded = torch.cat([emb, torch.randn(1, 3, 16) * 100], dim=1)  # padding is garbage
    mask = torch.tensor([[True] * 5 + [False] * 3])
    out = agg(emb)["label"]
    assert torch.allclose(agg(padded, mask)["label"], out, atol=1e-5)
    a = torch.softmax(agg.tile_logits(emb[0]).view(-1), 0)  # (5,)
    z = (a[:, None] * emb[0]).sum(0)
    assert torch.allclose(agg.head(z), out[0], atol=1e-5)
    assert agg.tile_logits(emb[0]).shape == (5, 1, 1)


def test_mean_pooling_is_the_masked_mean() -> None:
    torch.manual_seed(0)
    agg = MeanPoolMIL(8, 2, "label", dropout=0.0).eval()
    emb = torch.randn(2, 4, 8)
    mask = torch.tensor([[True, True, False, False], [True] * 4])
    out = agg(emb, mask)["label"]
    assert torch.allclose(out[0], agg.head(emb[0, :2].mean(0)), atol=1e-6)
    assert torch.allclose(out[1], agg.head(emb[1].mean(0)), atol=1e-6)
    # a tile's logit is its share of the last class's logit
    contrib = agg.tile_logits(emb[1]).view(-1)
    assert torch.allclose(contrib.mean() + agg.head.bias[-1], out[1, -1], atol=1e-5)


def _bce(logit: float, target: float) -> float:
    p = 1.0 / (1.0 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_instance_mil_loss_negatives_all_tiles_positives_the_top_tile() -> None:
    """A negative slide: mean BCE of its real tiles towards 0; a positive slide: BCE of its
    highest real tile towards 1; padded tiles count for neither."""
    inst = torch.tensor([[2.0, -1.0, 9.0], [0.5, 3.0, 50.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    loss = instance_mil_loss(inst, mask, torch.tensor([False, True]))
    want = (_bce(2.0, 0) + _bce(-1.0, 0)) / 2 + _bce(3.0, 1)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    loss.backward()
    assert inst.grad is not None
    assert inst.grad[1, 0] == 0 and inst.grad[1, 1] < 0  # only the top tile pushed up
    assert torch.all(inst.grad[0, :2] > 0)  # every negative tile pushed down
    assert torch.all(inst.grad[:, 2] == 0)  # padding untouched
    with pytest.raises(ValueError, match="do not match"):
        instance_mil_loss(inst, mask[:, :2], torch.tensor([False, True]))
