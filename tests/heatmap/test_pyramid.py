"""Pyramidal heatmap TIFF: geometry, OpenSlide/tiffslide read-back, planted pixels."""

from __future__ import annotations

import numpy as np
import pytest

from wsipipe.errors import ConfigError
from wsipipe.heatmap.pyramid import PyramidGeometry, _bucket_index, write_heatmap_tiff
from wsipipe.heatmap.render import colorize, colormap_lut, render_values, tile_spans

openslide = pytest.importorskip("openslide")
tiffslide = pytest.importorskip("tiffslide")

SLIDE_W, SLIDE_H, MPP = 5000, 3700, 0.25
TILE0 = 300  # tile footprint in slide level-0 px (not aligned with the TIFF tiles)


def _planted():
    xs, ys = np.meshgrid(np.arange(0, 4500, TILE0), np.arange(0, 3300, TILE0))
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)
    keep = (coords[:, 0] // TILE0 + coords[:, 1] // TILE0) % 4 != 0  # holes: cells w/o tile
    coords = coords[keep]
    values = ((coords[:, 0] // TILE0) % 5 / 4.0).astype(np.float32)
    values[(coords[:, 0] == 1500) & (coords[:, 1] == 1200)] = 1.0
    return coords, values


def _read_level(slide, level, size):
    return np.asarray(slide.read_region((0, 0), level, size))[..., :3]


def test_geometry_for_mpp_and_levels():
    geo = PyramidGeometry.for_mpp(SLIDE_W, SLIDE_H, MPP, 1.0, min_level_size=100)
    assert geo.downsample == 4 and geo.mpp == pytest.approx(1.0)
    assert (geo.width, geo.height) == (1250, 925)
    assert geo.levels() == [(1250, 925, 4), (312, 231, 16), (78, 57, 64)]
    odd = PyramidGeometry(1001, 10, 0.5, 4)
    assert (odd.width, odd.height) == (251, 3)  # covers the whole slide
    assert PyramidGeometry.for_mpp(100, 100, 0.5, 0.1).downsample == 1  # never upsample
    with pytest.raises(ConfigError, match="downsample"):
        PyramidGeometry(100, 100, 0.5, 0)
    with pytest.raises(ConfigError, match="mpp"):
        PyramidGeometry(100, 100, float("nan"), 2)
    with pytest.raises(ConfigError, match="pyramid_mpp"):
        PyramidGeometry.for_mpp(100, 100, 0.5, 0.0)


def test_bucket_index_finds_every_touching_tile():
    rng = np.random.default_rng(0)
    spans = tile_spans(rng.integers(0, 1000, (200, 2)), 90, 2.0)
    gw, gh, t = 3, 3, 256
    order, starts = _bucket_index(spans, t, gw, gh, margin=5)
    for cell in range(gw * gh):
        cy, cx = divmod(cell, gw)
        got = set(order[starts[cell] : starts[cell + 1]].tolist())
        touch = (
            (spans[:, 0] - 5 < (cx + 1) * t) & (spans[:, 2] + 5 > cx * t)
            & (spans[:, 1] - 5 < (cy + 1) * t) & (spans[:, 3] + 5 > cy * t)
        )  # fmt: skip
        assert set(np.flatnonzero(touch).tolist()) <= got


@pytest.mark.parametrize("compression", ["deflate", "none"])
def test_planted_pattern_reads_back_through_openslide_and_tiffslide(tmp_path, compression):
    coords, values = _planted()
    lut = colormap_lut("jet")
    geo = PyramidGeometry.for_mpp(SLIDE_W, SLIDE_H, MPP, 1.0, min_level_size=200)
    path = tmp_path / "hm.tif"
    write_heatmap_tiff(path, geo, coords, TILE0, values, lut, compression=compression,
                       background=(255, 255, 255))  # fmt: skip
    expect0 = colorize(
        render_values(tile_spans(coords, TILE0, 4), values, (0, 0, 1250, 925)), lut, (255,) * 3
    )
    with openslide.OpenSlide(str(path)) as osl:
        assert osl.properties["openslide.vendor"] == "aperio"
        assert osl.dimensions == (1250, 925)
        assert osl.level_dimensions == ((1250, 925), (312, 231), (78, 57))
        assert float(osl.properties["openslide.mpp-x"]) == pytest.approx(1.0)
        assert float(osl.properties["openslide.mpp-y"]) == pytest.approx(1.0)
        lvl0_os = _read_level(osl, 0, (1250, 925))
        lvl1_os = _read_level(osl, 1, (312, 231))
    with tiffslide.TiffSlide(path) as tsl:
        assert tsl.dimensions == (1250, 925)
        assert tsl.level_dimensions == ((1250, 925), (312, 231), (78, 57))
        assert float(tsl.properties["tiffslide.mpp-x"]) == pytest.approx(1.0)
        lvl0_ts = _read_level(tsl, 0, (1250, 925))
    assert np.array_equal(lvl0_os, expect0) and np.array_equal(lvl0_ts, expect0)
    # the planted hot tile: slide level-0 [1500, 1800) x [1200, 1500) -> heatmap px / 4
    assert (lvl0_os[300:375, 375:450] == lut[255]).all()
    assert not (lvl0_os[300:375, 450:525] == lut[255]).all(-1).any()
    # each tile's pixels carry its colour; holes and the margin beyond the tiles are background
    for (x, y), v in zip(coords[::7], values[::7], strict=True):
        cy, cx = (y + TILE0 // 2) // 4, (x + TILE0 // 2) // 4
        assert lvl0_os[cy, cx].tolist() == lut[int(np.rint(v * 255))].tolist()
    assert (lvl0_os[0:75, 0:75] == 255).all()  # (0, 0) is a hole
    assert (lvl0_os[:, 1125:] == 255).all() and (lvl0_os[825:, :] == 255).all()
    # level 1: pixel i covers slide [16 i, 16 (i + 1)) -> the hot tile at rows 75..93
    assert (lvl1_os[76:93, 94:112] == lut[255]).all()


def test_smoothed_pyramid_is_seamless_across_tiff_tiles(tmp_path):
    coords, values = _planted()
    lut = colormap_lut("gray")
    geo = PyramidGeometry.for_mpp(SLIDE_W, SLIDE_H, MPP, 1.0, tile=128, min_level_size=2000)
    path = tmp_path / "smooth.tif"
    write_heatmap_tiff(path, geo, coords, TILE0, values, lut, smooth_um=8.0)
    whole = colorize(
        render_values(tile_spans(coords, TILE0, 4), values, (0, 0, 1250, 925), sigma_px=8.0),
        lut, (255,) * 3,
    )  # fmt: skip
    with tiffslide.TiffSlide(path) as tsl:
        got = _read_level(tsl, 0, (1250, 925))
    assert np.abs(got.astype(int) - whole.astype(int)).max() <= 1


def test_jpeg_pyramid_opens_with_close_colours(tmp_path):
    coords, values = _planted()
    lut = colormap_lut("viridis")
    geo = PyramidGeometry.for_mpp(SLIDE_W, SLIDE_H, MPP, 2.0)
    path = tmp_path / "hm_jpeg.tif"
    write_heatmap_tiff(path, geo, coords, TILE0, values, lut, compression="jpeg")
    with openslide.OpenSlide(str(path)) as osl:
        assert osl.dimensions == (625, 463)
        px = _read_level(osl, 0, (625, 463))
    # centre of the hot tile (slide 1650, 1350) at 8 slide px per heatmap px
    assert np.abs(px[1350 // 8, 1650 // 8].astype(int) - lut[255]).max() <= 12
    with pytest.raises(ConfigError, match="pyramid_compression"):
        write_heatmap_tiff(tmp_path / "x.tif", geo, coords, TILE0, values, lut, compression="lzw")


def test_overlapping_tiles_are_averaged_in_the_pyramid(tmp_path):
    # stride 200 < footprint 300: the general (splatting) path, overlaps averaged
    xs, ys = np.meshgrid(np.arange(0, 2000, 200), np.arange(0, 1400, 200))
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)
    values = np.random.default_rng(5).random(len(coords)).astype(np.float32)
    lut = colormap_lut("jet")
    geo = PyramidGeometry(2300, 1700, 0.5, 4, tile=64, min_level_size=10_000)
    path = tmp_path / "overlap.tif"
    write_heatmap_tiff(path, geo, coords, 300, values, lut)
    want = colorize(
        render_values(tile_spans(coords, 300, 4), values, (0, 0, 575, 425)), lut, (255,) * 3
    )
    with openslide.OpenSlide(str(path)) as osl:
        got = _read_level(osl, 0, (575, 425))
    assert np.array_equal(got, want)
    # a pixel where tiles 0 and 1 overlap shows the colour of their mean value
    mean01 = (values[0] + values[1]) / 2
    assert got[10, 55].tolist() == lut[int(np.rint(mean01 * 255))].tolist()


@pytest.mark.parametrize("smooth_um", [0.0, 30.0])
def test_memory_is_bounded_by_tiles_not_by_the_slide(tmp_path, smooth_um):
    """A 100k x 100k px slide at ds 16: a full level-0 array would be 6250^2 x 3 = 117 MB."""
    import tracemalloc

    rng = np.random.default_rng(0)
    coords = rng.integers(0, 390, (150, 2)) * 256
    values = rng.random(150).astype(np.float32)
    geo = PyramidGeometry(100_000, 100_000, 0.25, 16)
    tracemalloc.start()
    try:
        write_heatmap_tiff(tmp_path / "big.tif", geo, coords, 256, values, colormap_lut("jet"),
                           smooth_um=smooth_um, threads=2)  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 24 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    with tiffslide.TiffSlide(tmp_path / "big.tif") as tsl:
        assert tsl.dimensions == (6250, 6250)
        x, y = coords[0] // 16 + 8
        px = np.asarray(tsl.read_region((int(x), int(y)), 0, (1, 1)))[0, 0, :3]
    assert not (px == 255).all()  # a tile's colour, not glass
