"""The cross-attention aggregator (IPS) and its dual-attention use (DBPS) against an
independent reference implementation of BRIEF.md's equations; masks; scores; config."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as tnf
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.models.helpers import tiny_aggregator
from wsipipe.errors import ConfigError
from wsipipe.models import (
    AggregatorConfig,
    CrossAttentionAggregator,
    TaskSpec,
)


def _ref_attend(agg: CrossAttentionAggregator, q_in: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """fc(MHA(q_in, e)) for one slide: q_in (T, D), e (N, D) -> (T, D), eval mode."""
    h, dk = agg.cfg.heads, agg.cfg.dim_head
    q = (q_in @ agg.q_w.weight.T).view(-1, h, dk)  # (T, H, dk)
    k = (e @ agg.k_w.weight.T).view(-1, h, dk)  # (N, H, dk)
    v = (e @ agg.v_w.weight.T).view(-1, h, dk)
    att = torch.softmax(torch.einsum("thd,nhd->htn", q, k) / math.sqrt(dk), dim=-1)
    out = torch.einsum("htn,nhd->thd", att, v).reshape(q_in.shape[0], h * dk)
    return out @ agg.fc.weight.T


def _ref_forward(
    agg: CrossAttentionAggregator, e: torch.Tensor, aux: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    d = agg.cfg.dim

    def ln(x: torch.Tensor) -> torch.Tensor:
        return tnf.layer_norm(x, (d,), agg.norm.weight, agg.norm.bias, eps=1e-6)

    q = agg.query
    z1 = q + _ref_attend(agg, q, e)
    z = ln(z1) if aux is None else ln(z1 + _ref_attend(agg, ln(z1), aux))
    w1, w2 = agg.mlp[0], agg.mlp[2]
    hidden = torch.relu(z @ w1.weight.T + w1.bias) @ w2.weight.T + w2.bias
    z = tnf.layer_norm(z + hidden, (d,), agg.mlp_norm.weight, agg.mlp_norm.bias, eps=1e-6)
    return {t.name: agg.heads[t.name](z[i]) for i, t in enumerate(agg.cfg.tasks)}


@settings(max_examples=20, deadline=None)
@given(
    heads=st.integers(1, 5),
    n_token=st.integers(1, 3),
    m=st.integers(1, 9),
    s=st.integers(1, 9),
    seed=st.integers(0, 1000),
)
def test_matches_reference_ips_and_dbps(
    heads: int, n_token: int, m: int, s: int, seed: int
) -> None:
    agg = tiny_aggregator(heads=heads, n_token=n_token, dropout=0.3, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    e, aux = torch.randn(2, m, 16, generator=g), torch.randn(2, s, 16, generator=g)
    with torch.no_grad():
        ips, dbps = agg(e), agg(e, aux_emb=aux)
        for b in range(2):
            ref_ips, ref_dbps = _ref_forward(agg, e[b]), _ref_forward(agg, e[b], aux[b])
            for t in agg.cfg.tasks:
                assert ips[t.name].shape == (2, t.n_classes)
                assert torch.allclose(ips[t.name][b], ref_ips[t.name], atol=1e-5)
                assert torch.allclose(dbps[t.name][b], ref_dbps[t.name], atol=1e-5)
        assert not torch.allclose(ips["t0"], dbps["t0"])  # the auxiliary branch matters


def test_dbps_adds_no_parameters() -> None:
    cfg = AggregatorConfig(dim=32, heads=3, dim_head=8, dim_inner=64, tasks=(TaskSpec("a", 2),))
    agg = CrossAttentionAggregator(cfg)
    n_params = sum(p.numel() for p in agg.parameters())
    d, hd = 32, 3 * 8
    expected = 1 * d + 4 * d * hd + 2 * d + (d * 64 + 64 + 64 * d + d) + 2 * d + (d * 2 + 2)
    assert n_params == expected  # query, q/k/v/fc, LN, MLP, LN, head: nothing DBPS-specific
    used: set[int] = set()
    e, aux = torch.randn(1, 4, 32), torch.randn(1, 5, 32)
    agg(e, aux_emb=aux)["a"].sum().backward()
    used = {id(p) for p in agg.parameters() if p.grad is not None}
    assert used == {id(p) for p in agg.parameters()}


def test_masks_padding_never_attended() -> None:
    agg = tiny_aggregator(heads=4, n_token=2).eval()
    g = torch.Generator().manual_seed(0)
    e = torch.randn(2, 6, 16, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6], dtype=torch.bool)
    aux = torch.randn(2, 3, 16, generator=g)
    aux_mask = torch.tensor([[1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    e_bad, aux_bad = e.clone(), aux.clone()
    e_bad[~mask] = float("nan")
    aux_bad[~aux_mask] = float("inf")
    with torch.no_grad():
        out = agg(e_bad, mask, aux_bad, aux_mask)
        # slide 0 == its 3 real tiles alone with its 1 real aux entry
        alone = agg(e[:1, :3], aux_emb=aux[:1, :1])
        # slide 1 has no aux entry: == plain IPS forward
        ips = agg(e[1:])
        sc = agg.scores(e_bad, mask)
    for k in out:
        assert torch.isfinite(out[k]).all()
        assert torch.allclose(out[k][0], alone[k][0], atol=1e-6)
        assert torch.allclose(out[k][1], ips[k][0], atol=1e-6)
    assert torch.all(sc[~mask] == 0)  # exactly zero attention on padding
    assert torch.allclose(sc.sum(1), torch.ones(2))
    assert torch.allclose(sc[0, :3], agg.scores(e[:1, :3])[0])


def test_attention_logits_and_scores() -> None:
    agg = tiny_aggregator(heads=3, n_token=2).eval()
    e = torch.randn(2, 7, 16)
    lg = agg.attention_logits(e)
    assert lg.shape == (2, 2, 3, 7)
    q = (agg.query @ agg.q_w.weight.T).view(2, 3, 8)
    k = (e @ agg.k_w.weight.T).view(2, 7, 3, 8)
    ref = torch.einsum("thd,bnhd->bthn", q, k) / math.sqrt(8)
    assert torch.allclose(lg, ref, atol=1e-5)
    sc = agg.scores(e)
    assert torch.allclose(sc, torch.softmax(ref, -1).mean((1, 2)), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dim": 0}, "dim=0"),
        ({"heads": -1}, "heads=-1"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"tasks": ()}, "tasks is empty"),
        ({"tasks": (TaskSpec("a", 2), TaskSpec("a", 3))}, "unique"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AggregatorConfig(**kwargs)


def test_taskspec_validation() -> None:
    with pytest.raises(ConfigError, match="act='relu'"):
        TaskSpec("x", 2, "relu")
    with pytest.raises(ConfigError, match="n_classes=0"):
        TaskSpec("x", 0)
