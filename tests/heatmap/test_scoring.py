"""The single streaming pass: all-tile attention equals stream_attention, the selection
equals the plain IPS / DBPS scan, and the model round-trips through a checkpoint."""

from __future__ import annotations

import pytest
import torch

from tests.heatmap.synth import make_checkpoint
from tests.models.helpers import stream_attention
from wsipipe.models import dbps_scan, ips_scan
from wsipipe.train.inference import attention_pass, load_model


def _chunks(tiles: torch.Tensor, size: int):
    for s in range(0, len(tiles), size):
        yield torch.arange(s, min(len(tiles), s + size)), tiles[s : s + size]


@pytest.mark.parametrize(("method", "n"), [("ips", 45), ("dbps", 45), ("ips", 4)])
def test_one_pass_equals_separate_passes(tmp_path, method, n):
    lm = load_model(make_checkpoint(tmp_path / "c.pt", method=method, M=6, I=16, S=5), "cpu")
    g = torch.Generator().manual_seed(0)
    tiles = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    lm.model.train()  # the pass must use eval mode and restore the flags
    sp = attention_pass(lm.model, _chunks(tiles, 16), lm.settings)
    assert lm.model.training and lm.model.encoder.training
    enc, agg = lm.model.encoder, lm.model.aggregator
    ref = stream_attention(enc, agg, _chunks(tiles, 16))
    assert torch.equal(sp.attention.indices, torch.arange(n))
    assert torch.allclose(sp.attention.logits, ref.logits, atol=1e-5)
    scores = sp.attention.scores()
    assert torch.allclose(scores, ref.scores(), atol=1e-6)
    assert float(scores.sum()) == pytest.approx(1.0, abs=1e-5)
    assert sp.attention.per_head().shape == (n, 2)
    if method == "ips":
        scan = ips_scan(enc, agg, _chunks(tiles, 16), 6)
        assert sp.scan.aux_indices is None
    else:
        scan = dbps_scan(enc, agg, _chunks(tiles, 16), 6, 5)
        assert sp.scan.aux_indices is not None and scan.aux_indices is not None
        assert torch.equal(sp.scan.aux_indices, scan.aux_indices)
        assert sp.scan.n_aux == min(5, n - min(6, n))
    assert torch.equal(sp.scan.indices, scan.indices)
    assert sp.scan.n_selected == min(6, n)


def test_load_model_restores_weights_and_overrides_runtime(tmp_path):
    ck = make_checkpoint(tmp_path / "c.pt", seed=3)
    a = load_model(ck, "cpu")
    b = load_model(ck, "cpu", chunk=7)
    assert a.classes == ("normal", "tumor") and a.epoch == 1
    assert a.settings.I == 16 and b.settings.I == 7 and a.settings.M == 6
    assert not a.model.training
    for (na, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items(),
                                 strict=True):  # fmt: skip
        assert torch.equal(pa, pb), na
