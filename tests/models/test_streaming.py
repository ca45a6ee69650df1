"""Streaming attention over all N tiles (heatmaps) equals the one-shot softmax."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.models.helpers import (
    chunked,
    one_shot_logits,
    stream_attention,
    tiny_aggregator,
    tiny_feature_encoder,
)

F = 24


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 400),
    i=st.integers(1, 100),
    heads=st.integers(1, 4),
    n_token=st.integers(1, 3),
    seed=st.integers(0, 10**6),
)
def test_stream_equals_one_shot_softmax(
    n: int, i: int, heads: int, n_token: int, seed: int
) -> None:
    enc = tiny_feature_encoder(F)
    agg = tiny_aggregator(heads=heads, n_token=n_token)
    with torch.no_grad():
        agg.query.mul_(4.0)  # peaked softmax: log-sum-exp must be stable
    x = torch.randn(n, F, generator=torch.Generator().manual_seed(seed))
    amap = stream_attention(enc, agg, chunked(x, i, offset=1000))
    ref_logits = one_shot_logits(enc, agg, x)  # (N, T, H)
    ref = torch.softmax(ref_logits, dim=0)
    assert torch.equal(amap.indices, torch.arange(n) + 1000)
    assert amap.logits.shape == (n, n_token, heads)
    assert torch.allclose(amap.scores(), ref.mean((1, 2)), atol=1e-6, rtol=1e-4)
    assert torch.allclose(amap.per_head(), ref.mean(1), atol=1e-6, rtol=1e-4)
    assert torch.allclose(amap.per_token(), ref.mean(2), atol=1e-6, rtol=1e-4)
    assert torch.allclose(amap.scores().sum(), torch.tensor(1.0), atol=1e-5)
    # the running log-sum-exp agrees with the one computed from the kept logits
    assert amap.log_norm is not None
    assert torch.allclose(amap.log_norm, torch.logsumexp(ref_logits, 0), atol=1e-5)


def test_stream_modes_restored_and_empty() -> None:
    enc, agg = tiny_feature_encoder(F), tiny_aggregator(heads=2, dropout=0.5)
    enc.train()
    agg.train()
    x = torch.randn(30, F)
    a = stream_attention(enc, agg, chunked(x, 7))
    b = stream_attention(enc, agg, chunked(x, 11))
    assert torch.allclose(a.scores(), b.scores(), atol=1e-7)  # eval mode: no dropout
    assert enc.training and agg.training
    empty = stream_attention(enc, agg, iter([]))
    assert empty.scores().shape == (0,) and empty.per_head().shape == (0, 2)


@pytest.mark.parametrize("capacity", [0, 3, 10, 100])
def test_rows_buffer_grows_and_keeps_order(capacity: int) -> None:
    from wsipipe.models.streaming import _Rows

    rows = _Rows(capacity)
    assert rows.value() is None
    parts = [torch.arange(s, s + k).float().view(-1, 1) for s, k in ((0, 4), (4, 1), (5, 5))]
    for p in parts:
        rows.add(p)
    got = rows.value()
    assert got is not None and torch.equal(got, torch.arange(10).float().view(-1, 1))
    if capacity >= 10:
        assert rows.buf is not None and rows.buf.shape[0] == capacity  # one allocation
