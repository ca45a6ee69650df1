"""CUDA paths of the scans (``-m gpu``; skipped without a CUDA device): bf16 autocast in the
IPS / DBPS scans, and the side-stream host-to-device copy that overlaps the next chunk's
transfer with the current chunk's compute (``device_chunks``); TransMIL's attention on CUDA."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from tests.models.helpers import tiny_aggregator
from wsipipe.encoders import create_encoder
from wsipipe.models import CrossAttentionAggregator, ScanResult, dbps_scan, ips_scan
from wsipipe.models._scan import device_chunks

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda", 0)
Agg = CrossAttentionAggregator
TINY = "test_resnet.r160_in1k"


def _tiles(n: int = 240, px: int = 32, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, px, px), dtype=torch.uint8, generator=g).pin_memory()


def _chunks(x: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    return [
        (torch.arange(s, min(s + size, len(x))), x[s : s + size]) for s in range(0, len(x), size)
    ]


def _models(device: torch.device) -> tuple[nn.Module, CrossAttentionAggregator]:
    torch.manual_seed(0)
    enc = create_encoder(TINY, out_dim=16, channels_last=True)
    return enc.to(device), tiny_aggregator(dim=16, heads=2).to(device)


def _conv_dtypes(enc: nn.Module) -> list[torch.dtype]:
    """Record the output dtype of the encoder's first convolution on every call."""
    seen: list[torch.dtype] = []
    conv = next(m for m in enc.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("method", ["ips", "dbps"])
def test_bf16_autocast_scan_on_cuda(method: str) -> None:
    x = _tiles()
    ref_enc, ref_agg = _models(torch.device("cpu"))
    enc, agg = _models(CUDA)
    seen = _conv_dtypes(enc)

    def scan(e: nn.Module, a: Agg, dev: torch.device, amp: torch.dtype | None) -> ScanResult:
        if method == "ips":
            return ips_scan(e, a, _chunks(x, 64), M=16, device=dev, amp_dtype=amp)
        return dbps_scan(e, a, _chunks(x, 64), M=16, S=24, device=dev, amp_dtype=amp)

    ref = scan(ref_enc, ref_agg, torch.device("cpu"), None)
    fp32 = scan(enc, agg, CUDA, None)
    assert seen and set(seen) == {torch.float32}
    seen.clear()
    bf16 = scan(enc, agg, CUDA, torch.bfloat16)
    assert seen and set(seen) == {torch.bfloat16}  # autocast is on inside the scan
    assert bf16.logits is not None and bf16.logits.dtype == torch.float32
    assert bf16.indices.device.type == "cuda"
    assert bf16.n_tiles == len(x) and bf16.indices.unique().numel() == 16
    # fp32 on the GPU selects what the CPU selects; bf16 rounding may swap a few near ties
    assert set(fp32.indices.tolist()) == set(ref.indices.tolist())
    assert len(set(bf16.indices.tolist()) & set(ref.indices.tolist())) >= 12
    assert torch.isclose(bf16.scores.sum().cpu(), torch.tensor(1.0), atol=1e-4)
    if method == "dbps":
        assert bf16.aux_emb is not None and bf16.aux_emb.shape == (24, 16)
        assert bf16.aux_emb.device.type == "cuda" and bf16.aux_emb.dtype == torch.float32
        assert torch.isfinite(bf16.aux_emb).all() and not bf16.aux_emb.requires_grad
        assert bf16.aux_indices is not None
        assert not set(bf16.aux_indices.tolist()) & set(bf16.indices.tolist())
        assert ref.aux_emb is not None and fp32.aux_emb is not None
        torch.testing.assert_close(fp32.aux_emb.cpu(), ref.aux_emb, atol=1e-3, rtol=1e-3)


def test_device_chunks_copies_the_next_chunk_while_this_one_computes() -> None:
    src = [(torch.arange(i * 8, i * 8 + 8), _tiles(8, 64, seed=i)) for i in range(10)]
    pulled: list[int] = []

    def source() -> Iterator[tuple[Tensor, Tensor]]:
        for i, item in enumerate(src):
            pulled.append(i)
            yield item

    w = torch.randn(2048, 2048, device=CUDA)
    for i, (idx, tiles) in enumerate(device_chunks(source(), CUDA)):
        # chunk i+1 was taken from the source (its copy issued) before chunk i was handed out
        assert pulled[-1] == min(i + 1, len(src) - 1)
        assert tiles.device.type == "cuda" and idx.device.type == "cuda"
        for _ in range(4):  # compute on the current stream while the copy runs on the side one
            w = torch.tanh(w @ w * 1e-3)
        churn = torch.empty(8 * 3 * 64 * 64, dtype=torch.uint8, device=CUDA).fill_(7)
        assert torch.equal(idx.cpu(), src[i][0])
        assert torch.equal(tiles.cpu(), src[i][1])  # intact: no reuse of its memory
        del churn
    assert pulled == list(range(len(src)))


def test_transmil_on_cuda_matches_the_cpu() -> None:
    """TransMIL's exact attention on CUDA (its own memory-efficient kernels, train mode with
    dropout): finite gradients, and in eval mode the CPU's logits and tile attention."""
    from wsipipe.models.transmil import TransMIL

    torch.manual_seed(0)
    cpu = TransMIL(32, 2, "label", heads=4, dropout=0.25)
    gpu = TransMIL(32, 2, "label", heads=4, dropout=0.25).to(CUDA)
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(1, 3000, 32)
    gpu.train()
    gpu(x.to(CUDA))["label"].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters() if p.grad is not None)
    cpu.eval()
    gpu.eval()
    with torch.no_grad():
        # TF32 convolutions (cuDNN's default) in the PPEG: agreement to ~1e-3, not 1e-6
        torch.testing.assert_close(gpu(x.to(CUDA))["label"].cpu(), cpu(x)["label"],
                                   atol=1e-2, rtol=1e-2)  # fmt: skip
        torch.testing.assert_close(gpu.tile_logits(x[0].to(CUDA)).cpu(), cpu.tile_logits(x[0]),
                                   atol=1e-2, rtol=1e-2)  # fmt: skip
