"""Random patch drop, padding/collation of B slides, and the gradient pass."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.models.helpers import chunked, tiny_aggregator, tiny_feature_encoder
from wsipipe.encoders import create_encoder
from wsipipe.errors import ConfigError
from wsipipe.models import (
    dbps_scan,
    gradient_pass,
    pad_batch,
    random_patch_drop,
)

F = 24


# -- random patch drop ---------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 2000), r=st.floats(0.0, 0.95), seed=st.integers(0, 2**31))
def test_patch_drop_properties(n: int, r: float, seed: int) -> None:
    kept = random_patch_drop(n, r, torch.Generator().manual_seed(seed))
    assert kept.dtype == torch.int64
    expected = 0 if n == 0 else max(1, round(n * (1 - r)))
    assert kept.numel() == expected
    assert torch.all(kept[1:] > kept[:-1])  # sorted, unique
    if n:
        assert int(kept.min()) >= 0 and int(kept.max()) < n
    again = random_patch_drop(n, r, torch.Generator().manual_seed(seed))
    assert torch.equal(kept, again)  # seeded: reproducible


def test_patch_drop_is_random_and_uniform() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = random_patch_drop(1000, 0.3, g), random_patch_drop(1000, 0.3, g)
    assert not torch.equal(a, b)
    counts = torch.zeros(10)
    for _ in range(200):
        counts += torch.bincount(random_patch_drop(100, 0.5, g), minlength=100).float()[:10]
    # each position kept with probability 0.5: 200 draws -> 100 +- ~7 (5 sigma bound)
    assert torch.all((counts - 100).abs() < 36)
    assert random_patch_drop(1, 0.9, g).tolist() == [0]  # at least one tile kept


@pytest.mark.parametrize("r", [-0.1, 1.0, 1.5])
def test_patch_drop_bad_ratio(r: float) -> None:
    with pytest.raises(ConfigError, match="drop_ratio"):
        random_patch_drop(10, r, torch.Generator())


# -- padding -------------------------------------------------------------------------------
def test_pad_batch_and_collate() -> None:
    padded, mask = pad_batch([torch.ones(2, 3), torch.full((4, 3), 2.0), torch.empty(0, 3)])
    assert padded.shape == (3, 4, 3) and mask.tolist() == [
        [True, True, False, False],
        [True] * 4,
        [False] * 4,
    ]
    assert padded[0, 2:].abs().sum() == 0 and torch.all(padded[1] == 2)
    with pytest.raises(ValueError):
        pad_batch([torch.ones(2, 3), torch.ones(2, 4)])

    enc, agg = tiny_feature_encoder(F), tiny_aggregator(heads=2)
    g = torch.Generator().manual_seed(0)
    small = dbps_scan(enc, agg, chunked(torch.randn(3, F, generator=g), 2), M=5, S=4)
    big = dbps_scan(enc, agg, chunked(torch.randn(30, F, generator=g), 7), M=5, S=4)
    indices, mask = pad_batch([small.indices, big.indices], 5, value=-1)
    assert indices.shape == (2, 5) and mask.sum(1).tolist() == [3, 5]
    assert indices[0, 3:].tolist() == [-1, -1]
    assert small.aux_emb is not None and big.aux_emb is not None
    aux, aux_mask = pad_batch([small.aux_emb, big.aux_emb])
    assert aux.shape == (2, 4, 16) and aux_mask.sum(1).tolist() == [0, 4]


# -- gradient pass -------------------------------------------------------------------------
def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


def _zero(*modules: torch.nn.Module) -> None:
    for m in modules:
        m.zero_grad(set_to_none=True)


def _loss(out: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum((v * torch.arange(1, v.shape[1] + 1)).sum() for v in out.values())  # type: ignore[return-value]


def test_encoder_gradient_equals_selected_tiles_alone() -> None:
    """Scan (DBPS) two slides of different sizes, gradient pass on the padded batch; the
    encoder's gradient equals the one from the selected tiles alone, encoded together."""
    torch.manual_seed(0)
    enc = create_encoder("resnet18", out_dim=16)
    agg = tiny_aggregator(heads=2)
    slides = [torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8) for n in (4, 25)]
    results = [dbps_scan(enc, agg, chunked(s, 6), M=6, S=5) for s in slides]
    aux_emb, aux_mask = pad_batch([r.aux_emb for r in results if r.aux_emb is not None])
    sel = [s[r.indices] for s, r in zip(slides, results, strict=True)]
    tiles, mask = pad_batch(sel, 6)
    tiles[~mask] = 255  # padding content must not matter
    enc.train()
    agg.train()
    ref_enc = copy.deepcopy(enc)
    ref_agg = copy.deepcopy(agg)
    out = gradient_pass(enc, agg, tiles, mask, aux_emb, aux_mask)
    _loss(out).backward()
    # reference: encode the 4 + 6 real tiles as one batch (same BatchNorm batch), no padding
    emb = ref_enc(torch.cat(sel))
    loss = torch.zeros(())
    for b, (e, r) in enumerate(zip(emb.split([4, 6]), results, strict=True)):
        assert r.aux_emb is not None
        aux = r.aux_emb[None] if r.n_aux else None
        o = ref_agg(e[None], aux_emb=aux)
        loss = loss + _loss(o)
        for k in out:
            assert torch.allclose(out[k][b], o[k][0], atol=1e-5)
    loss.backward()
    g, g_ref = _grads(enc), _grads(ref_enc)
    assert g.keys() == g_ref.keys() and len(g) > 10
    for k in g:
        assert torch.allclose(g[k], g_ref[k], atol=1e-5, rtol=1e-4), k
    # padding was never encoded: BatchNorm running stats match the 10-real-tile reference
    for k, v in enc.state_dict().items():
        if "running_mean" in k:
            assert torch.allclose(v, ref_enc.state_dict()[k], atol=1e-6), k


def test_subsalient_branch_gradients() -> None:
    enc, agg = tiny_feature_encoder(F), tiny_aggregator(heads=2)
    enc.train()
    agg.train()
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 5, F, generator=g)
    aux_in = torch.randn(2, 7, F, generator=g)
    # sub-salient embeddings computed WITH a graph to the encoder: the pass must cut it
    aux_live = enc(aux_in.flatten(0, 1)).view(2, 7, -1)
    _zero(enc, agg)
    _loss(gradient_pass(enc, agg, feats, aux_emb=aux_live)).backward()
    g_live_enc, g_live_agg = _grads(enc), _grads(agg)
    _zero(enc, agg)
    _loss(gradient_pass(enc, agg, feats, aux_emb=aux_live.detach())).backward()
    g_det_enc = _grads(enc)
    for k in g_det_enc:  # no gradient reached the encoder through the sub-salient branch
        assert torch.allclose(g_live_enc[k], g_det_enc[k], atol=1e-6), k
    # the aggregator does learn from the sub-salient branch: its gradient changes with it
    _zero(enc, agg)
    _loss(gradient_pass(enc, agg, feats)).backward()
    g_ips_agg = _grads(agg)
    diff = max((g_live_agg[k] - g_ips_agg[k]).abs().max().item() for k in g_ips_agg)
    assert diff > 1e-4
    assert g_live_agg["k_w.weight"].abs().sum() > 0


def test_gradient_pass_features_masked_slide() -> None:
    """A slide with N < M and N < M + S: finite outputs and gradients, padding irrelevant."""
    enc, agg = tiny_feature_encoder(F), tiny_aggregator(heads=3, n_token=2)
    enc.train()
    agg.eval()
    g = torch.Generator().manual_seed(2)
    tiles = torch.randn(2, 6, F, generator=g)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1] * 6], dtype=torch.bool)
    aux = torch.randn(2, 4, 16, generator=g)
    aux_mask = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    out = gradient_pass(enc, agg, tiles, mask, aux, aux_mask)
    tiles2, aux2 = tiles.clone(), aux.clone()
    tiles2[~mask] = 1e4
    aux2[~aux_mask] = float("nan")
    out2 = gradient_pass(enc, agg, tiles2, mask, aux2, aux_mask)
    for k in out:
        assert torch.isfinite(out[k]).all()
        assert torch.allclose(out[k], out2[k], atol=1e-6)
    _loss(out2).backward()
    assert all(torch.isfinite(p.grad).all() for p in agg.parameters() if p.grad is not None)


def test_gradient_pass_bf16_and_checkpointing() -> None:
    torch.manual_seed(0)
    enc = create_encoder("resnet18", out_dim=16, grad_checkpointing=True)
    agg = tiny_aggregator(heads=2)
    tiles = torch.randint(0, 256, (2, 3, 3, 16, 16), dtype=torch.uint8)
    out = gradient_pass(enc, agg, tiles, amp_dtype=torch.bfloat16)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in out.values())
    _loss(out).backward()
    assert enc.backbone.conv1.weight.grad is not None
