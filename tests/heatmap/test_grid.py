"""Regular-lattice fast path: lookups give exactly the images splatting gives."""

from __future__ import annotations

import numpy as np
import pytest

from wsipipe.heatmap.grid import find_lattice
from wsipipe.heatmap.render import (
    blend_overlay,
    colorize,
    colormap_lut,
    render_values,
    tile_spans,
)


def _lattice(rng: np.random.Generator, nx: int, ny: int, step: int, keep: float) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(nx) * step, np.arange(ny) * step)
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64)
    coords = coords[rng.random(len(coords)) < keep]  # holes: cells without a tile
    return coords[rng.permutation(len(coords))] + np.array([3 * step, 2 * step])


def test_find_lattice_accepts_lattices_only():
    rng = np.random.default_rng(0)
    coords = _lattice(rng, 9, 7, 256, 0.7)
    grid = find_lattice(coords, 256)
    assert grid is not None and grid.origin == tuple(coords.min(0).tolist())
    assert grid.step == 256 and grid.size == 256
    over = find_lattice(coords // 256 * 192, 256)  # overlapping tiles: pitch 192 < edge 256
    assert over is not None and over.step == 192 and (over.gw, over.gh) == (grid.gw, grid.gh)
    assert find_lattice(coords + np.array([[1, 0]] + [[0, 0]] * (len(coords) - 1)), 256) is None
    assert find_lattice(np.concatenate([coords, coords[:1]]), 256) is None  # a duplicate
    far = find_lattice(np.array([[0, 0], [256 * 10_000, 0]]), 256)  # a gap: 2 cells, fine
    assert far is not None and (far.gw, far.gh) == (2, 1)
    assert find_lattice(np.array([[0, 0], [1001, 0], [5000, 7]]), 256) is None  # no lattice
    assert find_lattice(np.zeros((0, 2), np.int64), 256) is None
    assert find_lattice(coords // 256 * 16, 256) is None  # a tile over 16 x 16 lattice cells


def _splat_and_lookup(coords, size, values, ds, w, h):
    lut = colormap_lut("jet")
    want = colorize(
        render_values(tile_spans(coords, size, ds), values, (0, 0, w, h)), lut, (1, 2, 3)
    )
    grid = find_lattice(coords, size)
    assert grid is not None
    image = grid.image(ds, w, h)
    table = colorize(image.table(values), lut, (1, 2, 3))
    return want, image, table


@pytest.mark.parametrize("ds", [16.0, 19.8125, 7.3, 40.0, 300.0])
def test_lookup_covers_the_pixels_splatting_covers(ds):
    rng = np.random.default_rng(1)
    coords = _lattice(rng, 12, 9, 256, 0.6)
    values = rng.random(len(coords)).astype(np.float32)
    values[:3] = np.nan  # never coloured
    w, h = int(16 * 256 / ds), int(12 * 256 / ds)
    want, image, table = _splat_and_lookup(coords, 256, values, ds, w, h)
    got = image.lookup(table, 0, h)
    assert np.array_equal(got, want)
    # any window
    assert np.array_equal(image.lookup(table, 3, h - 2, 5, w - 1), want[3:-2, 5:-1])


@pytest.mark.parametrize("ds", [16.0, 19.8125, 7.3, 40.0, 300.0])
@pytest.mark.parametrize("pitch", [128, 192, 224, 300])  # 50 %, 25 %, 1/8 overlap; gaps
def test_overlapping_tiles_are_averaged_as_splatting_averages_them(ds, pitch):
    rng = np.random.default_rng(5)
    coords = _lattice(rng, 12, 9, 1, 0.6) * pitch
    values = rng.random(len(coords)).astype(np.float32)
    values[:3] = np.nan  # count as no tile
    w, h = int(14 * pitch / ds), int(11 * pitch / ds)
    means = render_values(tile_spans(coords, 256, ds), values, (0, 0, w, h))
    grid = find_lattice(coords, 256)
    assert grid is not None and grid.step == pitch
    image = grid.image(ds, w, h)
    got = image.lookup(image.table(values), 0, h)
    assert np.array_equal(np.isnan(got), np.isnan(means))  # the same pixels covered
    assert np.allclose(got[~np.isnan(got)], means[~np.isnan(means)], atol=1e-6)
    # colours: the same but where a mean sits on a LUT bin edge (float rounding)
    want, image, table = _splat_and_lookup(coords, 256, values, ds, w, h)
    assert (image.lookup(table, 0, h) != want).any(axis=-1).mean() < 1e-3
    if pitch < 256 and ds <= 16:  # overlaps are visible at this resolution: really averaged
        singles = np.isin(got, values)
        assert (~singles & ~np.isnan(got)).mean() > 0.01


@pytest.mark.parametrize("alpha", [0.0, 0.35, 0.5, 1.0])
@pytest.mark.parametrize("with_tissue", [False, True])
@pytest.mark.parametrize("tile_px", [13.7, 1.3])  # runs of identical rows, or mostly single
def test_overlay_by_lookup_equals_overlay_by_splatting(alpha, with_tissue, tile_px):
    rng = np.random.default_rng(2)
    coords = _lattice(rng, 20, 14, 512, 0.75)
    values = rng.random(len(coords)).astype(np.float32)
    values[5] = np.nan
    ds = 512 / tile_px  # a fractional thumbnail downsample, as slide thumbnails have
    h, w = int(17 * 512 / ds), int(24 * 512 / ds)
    thumb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    tissue = rng.random((h, w)) < 0.8 if with_tissue else None
    lut = colormap_lut("viridis")
    spans = tile_spans(coords, 512, ds)
    grid = find_lattice(coords, 512)
    assert grid is not None
    args = (thumb, spans, values, lut, alpha, 0.0, tissue)
    want = blend_overlay(*args, stripe=37)
    got = blend_overlay(*args, stripe=37, grid=grid.image(ds, w, h))
    assert np.array_equal(got, want)
    # overlapping tiles (pitch 384 < edge 512): averaged the same way
    over = coords // 512 * 384
    sp_over = tile_spans(over, 512, ds)
    grid_over = find_lattice(over, 512)
    assert grid_over is not None and grid_over.step == 384
    args_over = (thumb, sp_over, values, lut, alpha, 0.0, tissue)
    want_over = blend_overlay(*args_over, stripe=37)
    got_over = blend_overlay(*args_over, stripe=37, grid=grid_over.image(ds, w, h))
    differ = (got_over != want_over).any(axis=-1)
    assert differ.mean() < 1e-3  # only where a mean sits on a LUT bin edge (float rounding)
    # the blend is the per-pixel formula (to a grey level); untouched where no tile or tissue is
    i = int(np.flatnonzero(~np.isnan(values))[0])
    x0, y0, x1, y1 = spans[i]
    y, x = (y0 + y1) // 2, (x0 + x1) // 2
    if tissue is None or tissue[y, x]:
        c = lut[int(np.rint(values[i] * 255))].astype(np.float32) * np.float32(alpha)
        b = thumb[y, x].astype(np.float32) * np.float32(1.0 - alpha)
        assert np.abs(got[y, x].astype(float) - (b + c)).max() <= 1.0  # fixed-point blend
    covered = render_values(spans, values, (0, 0, w, h))
    bare = np.isnan(covered) if tissue is None else np.isnan(covered) | ~tissue
    assert np.array_equal(got[bare], thumb[bare])


def test_recorded_pitch_is_used_when_offsets_fit_it():
    coords = np.array([[0, 0], [512, 0], [1024, 512]])  # tiles missing: gcd 512, stride 256
    assert find_lattice(coords, 256).step == 512  # type: ignore[union-attr]
    assert find_lattice(coords, 256, pitch=256).step == 256  # type: ignore[union-attr]
    assert find_lattice(coords, 256, pitch=300).step == 512  # type: ignore[union-attr]
