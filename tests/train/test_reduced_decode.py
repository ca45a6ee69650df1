"""The loader's reduced-scale JPEG decode (issue 14, item 2) and the bf16 choice on CPU.

Stated tolerance of the loader's reduced path (decode at 1/2..1/8 with 2x headroom, then
the antialiased resize) against the exact one (full decode + the same resize), on a real
slide's tiles (CMU-1-Small-Region, 256 px at 0.5 um/px, overlapping tiles) resized to 64 px:
mean |difference| <= 1.5 grey levels, 99th percentile <= 7, max <= 20, every channel's mean
within 0.3 (measured: 1.28, 6, 14, 0.19). A decode straight to 64 px (1/4) would be off by
4.9 mean / 45 max, hence the headroom.

bf16 autocast vs fp32 on a fixed model (seeded tiny ResNet + aggregator) over the same real
tiles: the IPS top-M sets overlap >= 0.85 and the DBPS memory + auxiliary sets >= 0.85
(measured 0.94-1.0 over seeds 0-5 for M=16 of 165 tiles); every tile's attention logits
correlate >= 0.999 (measured 0.99997).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import real_slide
from tests.train.synthstores import make_tile, store_meta
from wsipipe.config import cpu_flags, cpu_has_bf16
from wsipipe.errors import StoreError
from wsipipe.store import SlideSource, create_store, describe_store, encode_tile, open_store
from wsipipe.store.codec import reduced_factor
from wsipipe.tile.config import TileConfig
from wsipipe.tile.inputs import SlideInput
from wsipipe.tile.run import tile_slides
from wsipipe.train.data import SourceCache, reduced_min_px, to_chw
from wsipipe.train.model import amp_dtype_for

MEAN_TOL, P99_TOL, MAX_TOL, CHANNEL_TOL = 1.5, 7.0, 20, 0.3
OVERLAP_TOL = 0.85


@pytest.fixture(scope="module")
def real_store(tmp_path_factory: pytest.TempPathFactory) -> SlideSource:
    """CMU-1-Small-Region tiled at 256 px, 0.5 um/px, stride 128 px (JPEG pixels)."""
    slide = real_slide("CMU-1-Small-Region.svs")
    out = tmp_path_factory.mktemp("real_tiles")
    cfg = TileConfig(tile_px=256, target_mpp=0.5, overlap_px=128, min_tissue=0.3)
    (outcome,) = tile_slides([SlideInput("cmu1", slide)], cfg, out)
    assert outcome.state == "done", outcome
    spec = describe_store("cmu1", out / "stores" / "cmu1.h5")
    assert spec.n_tiles >= 100 and spec.tile_px == 256
    return spec


@pytest.mark.parametrize(
    ("tile", "min_px", "factor"),
    [(256, 64, 4), (256, 128, 2), (256, 129, 1), (256, 32, 8), (256, 16, 8), (256, 0, 1),
     (256, 256, 1), (256, 512, 1), (240, 30, 8), (244, 61, 4), (250, 100, 2), (255, 10, 1)],
)  # fmt: skip
def test_reduced_factor(tile: int, min_px: int, factor: int) -> None:
    assert reduced_factor(tile, min_px) == factor
    if factor > 1:
        assert tile // factor >= min_px and tile % factor == 0


def test_loader_headroom() -> None:
    assert reduced_min_px(0) == 0  # no resize: full decode
    assert reduced_min_px(64) == 128  # 256 px tiles: decoded at 1/2, then resized
    assert reduced_factor(256, reduced_min_px(64)) == 2
    assert reduced_factor(128, reduced_min_px(64)) == 1  # 2x only: full decode as before
    assert reduced_factor(512, reduced_min_px(64)) == 4


def test_read_tiles_reduced_shapes(real_store: SlideSource) -> None:
    with open_store(real_store.path) as st:
        idx = np.array([3, 0, 7])
        full = st.read_tiles(idx)
        assert full.shape == (3, 256, 256, 3)
        assert np.array_equal(st.read_tiles(idx, 0), full)
        assert np.array_equal(st.read_tiles(idx, 300), full)  # never upscaled
        half = st.read_tiles(idx, 128)
        assert half.shape == (3, 128, 128, 3) and half.dtype == np.uint8
        assert st.read_tiles(idx, 33).shape == (3, 64, 64, 3)
        # the reduced tiles are a reduction of the same pixels, in the order asked
        box = full.reshape(3, 128, 2, 128, 2, 3).mean(axis=(2, 4))
        assert np.abs(half - box).mean() < 3.0  # measured 2.3 (JPEG q90 tiles, 4:2:0)


def test_loader_reduced_decode_is_within_tolerance_of_the_exact_resize(
    real_store: SlideSource,
) -> None:
    idx = np.arange(real_store.n_tiles)
    with open_store(real_store.path) as st:
        exact = to_chw(st.read_tiles(idx), 64).numpy().astype(np.int16)
    cache = SourceCache()
    try:
        got = cache.read(real_store, idx, 64)
    finally:
        cache.close()
    assert got.shape == (idx.size, 3, 64, 64) and got.dtype == torch.uint8
    diff = got.numpy().astype(np.int16) - exact
    mag = np.abs(diff)
    assert mag.mean() <= MEAN_TOL
    assert np.percentile(mag, 99) <= P99_TOL
    assert mag.max() <= MAX_TOL
    assert np.abs(diff.mean(axis=(0, 2, 3))).max() <= CHANNEL_TOL
    assert mag.mean() > 0  # it is the reduced path (the full one would be identical)


def test_png_store_reduced_read_is_the_area_mean(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
    path = tmp_path / "p.h5"
    with create_store(path, "h5", store_meta("p", 32, pixels="png")) as w:
        w.append(np.zeros((4, 2), np.int64), [encode_tile(t, "png") for t in tiles],
                 np.ones(4, np.float32))  # fmt: skip
    with open_store(path) as st:
        got = st.read_tiles([2, 1], 16)
    from PIL import Image

    want = [np.asarray(Image.fromarray(tiles[i]).resize((16, 16), Image.Resampling.BOX))
            for i in (2, 1)]  # fmt: skip
    assert np.array_equal(got, np.stack(want))


def test_corrupt_jpeg_in_the_reduced_path_is_a_store_error(tmp_path: Path) -> None:
    good = encode_tile(make_tile(False, np.random.default_rng(0), 64), "jpeg")
    path = tmp_path / "c.h5"
    with create_store(path, "h5", store_meta("c", 64)) as w:
        blobs = [good, good[: len(good) // 2], b"\xff\xd8\xffjunk\xff\xd9"]
        w.append(np.zeros((3, 2), np.int64), blobs, np.ones(3, np.float32))
    with open_store(path) as st:
        assert st.read_tiles([0], 32).shape == (1, 32, 32, 3)
        for bad in (1, 2):
            with pytest.raises(StoreError, match=rf"c\.h5: tile {bad}: .*re-run `wsipipe tile`"):
                st.read_tiles([0, bad], 32)


# -- bf16 under --precision auto ----------------------------------------------------------------
CPUINFO_BF16 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"  # noqa: E501
CPUINFO_AVX512 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
CPUINFO_ARM = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_bf16_detection_is_a_function_of_the_flags() -> None:
    assert cpu_has_bf16(cpu_flags(CPUINFO_BF16))
    assert not cpu_has_bf16(cpu_flags(CPUINFO_AVX512))
    assert cpu_has_bf16(cpu_flags(CPUINFO_ARM))
    assert cpu_has_bf16({"amx_tile", "amx_bf16"})
    assert not cpu_has_bf16(cpu_flags(""))
    assert not cpu_has_bf16({"avx512_bf16x"})  # whole flags only


def test_auto_precision_picks_bf16_only_where_the_cpu_has_it() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # the training scan's selection: bf16 on a CPU with native bf16 only
    assert amp_dtype_for("auto", cpu, cpu_bf16=True, selection=True) == torch.bfloat16
    assert amp_dtype_for("auto", cpu, cpu_bf16=False, selection=True) is None
    # gradient pass, validation, predict, heatmap: fp32 on CPU whatever the flags
    assert amp_dtype_for("auto", cpu, cpu_bf16=True) is None
    assert amp_dtype_for("auto", cuda, cpu_bf16=False) == torch.bfloat16
    assert amp_dtype_for("auto", cuda, cpu_bf16=False, selection=True) == torch.bfloat16
    assert amp_dtype_for("fp32", cpu, cpu_bf16=True, selection=True) is None  # explicit kept
    assert amp_dtype_for("bf16", cpu, cpu_bf16=False) == torch.bfloat16
    host = cpu_has_bf16(cpu_flags(Path("/proc/cpuinfo").read_text()))
    assert amp_dtype_for("auto", cpu, selection=True) == (torch.bfloat16 if host else None)


def test_training_scan_settings_use_the_selection_precision() -> None:
    from wsipipe.train.config import TrainConfig
    from wsipipe.train.inference import ScanSettings

    st = ScanSettings.of(TrainConfig(), torch.device("cpu"))
    host = cpu_has_bf16(cpu_flags(Path("/proc/cpuinfo").read_text()))
    assert st.amp_dtype is None
    assert st.for_selection().amp_dtype == (torch.bfloat16 if host else None)
    assert st.for_selection().M == st.M and st.for_selection().method == st.method


def _fixed_model(seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    from wsipipe.encoders import create_encoder
    from wsipipe.models import AggregatorConfig, CrossAttentionAggregator, TaskSpec

    torch.manual_seed(seed)
    enc = create_encoder("test_resnet.r160_in1k", pretrained=False, out_dim=64)
    cfg = AggregatorConfig(dim=64, heads=4, dim_head=16, dim_inner=128,
                           tasks=(TaskSpec("label", 2),))  # fmt: skip
    return enc, CrossAttentionAggregator(cfg)


def _overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    sa, sb = set(a.tolist()), set(b.tolist())
    return len(sa & sb) / max(1, len(sa))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_scan_selects_the_fp32_tiles(real_store: SlideSource, seed: int) -> None:
    from wsipipe.models import dbps_scan, ips_scan
    from wsipipe.models.streaming import AttentionStream

    cache = SourceCache()
    try:
        tiles = cache.read(real_store, np.arange(real_store.n_tiles), 64)
    finally:
        cache.close()
    idx = torch.arange(tiles.shape[0])
    chunks = [(idx[s : s + 32], tiles[s : s + 32]) for s in range(0, tiles.shape[0], 32)]
    enc, agg = _fixed_model(seed)
    m, s = 16, 16
    fp = ips_scan(enc, agg, chunks, M=m)
    bf = ips_scan(enc, agg, chunks, M=m, amp_dtype=torch.bfloat16)
    assert _overlap(fp.indices, bf.indices) >= OVERLAP_TOL
    fp_d = dbps_scan(enc, agg, chunks, M=m, S=s)
    bf_d = dbps_scan(enc, agg, chunks, M=m, S=s, amp_dtype=torch.bfloat16)
    assert torch.equal(fp_d.indices.sort().values, fp.indices.sort().values)
    assert _overlap(fp_d.indices, bf_d.indices) >= OVERLAP_TOL
    assert fp_d.aux_indices is not None and bf_d.aux_indices is not None
    both_fp = torch.cat([fp_d.indices, fp_d.aux_indices])
    both_bf = torch.cat([bf_d.indices, bf_d.aux_indices])
    assert _overlap(both_fp, both_bf) >= OVERLAP_TOL
    # every tile's attention logits agree (a random-init aggregator attends almost uniformly,
    # so the selection rests on small logit differences: these must survive bf16)
    lg_fp, lg_bf = AttentionStream(), AttentionStream()
    ips_scan(enc, agg, chunks, M=m, on_chunk=lg_fp.add)
    ips_scan(enc, agg, chunks, M=m, amp_dtype=torch.bfloat16, on_chunk=lg_bf.add)
    a, b = lg_fp.result(1, 4).logits.flatten(), lg_bf.result(1, 4).logits.flatten()
    assert np.corrcoef(a.numpy(), b.numpy())[0, 1] >= 0.999  # measured >= 0.99997
    assert float((a - b).abs().max() / a.std()) <= 0.1  # measured 0.012-0.038
