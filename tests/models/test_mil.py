"""ABMIL (gated attention) and mean pooling: masking, attention, and the tile logits that
heatmaps show."""

from __future__ import annotations

import torch

from wsipipe.models.mil import GatedAttentionMIL, MeanPoolMIL


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
