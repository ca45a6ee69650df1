"""Procedural rendering: layout invariants, seamless tiles, tumour vs normal texture."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from scipy import ndimage

from wsipipe.errors import ConfigError
from wsipipe.synth.layout import Blob, make_layout
from wsipipe.synth.noise import periodic_texture, value_noise_grid, value_noise_points
from wsipipe.synth.svs import block_average
from wsipipe.synth.tissue_render import TissueRenderer

W, H, MPP = 6144, 4608, 0.5
TILE = 256


def _tiles(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One 256 px tile well inside tumour and one well inside normal tissue."""
    lay = make_layout(W, H, MPP, seed, tumour=True, pen=False)
    ren = TissueRenderer(lay)
    tumour = shapely.union_all(lay.tumour_polygons)
    tissue = lay.tissue_geometry()
    far = tumour.buffer(200)
    rng = np.random.default_rng(seed)
    tum_tile = norm_tile = None
    for _ in range(50_000):
        x, y = rng.uniform(0, W - TILE), rng.uniform(0, H - TILE)
        box = shapely.box(x, y, x + TILE, y + TILE)
        if tum_tile is None and tumour.contains(box):
            tum_tile = ren(int(x), int(y), TILE, TILE, 1.0)
        if norm_tile is None and tissue.contains(box) and not far.intersects(box):
            norm_tile = ren(int(x), int(y), TILE, TILE, 1.0)
        if tum_tile is not None and norm_tile is not None:
            return tum_tile, norm_tile
    raise AssertionError(f"seed {seed}: no tumour/normal tile pair found")


def _nuclei_stats(tile: np.ndarray) -> tuple[int, float, float]:
    """(number of nuclei, nuclear area fraction, mean nucleus area px) from a dark-purple mask."""
    rgb = tile.astype(int)
    mask = (rgb[..., 0] < 135) & (rgb[..., 2] > rgb[..., 1] + 10)
    mask = ndimage.binary_opening(mask, iterations=1)
    _, n = ndimage.label(mask)
    area = mask.sum() / max(n, 1)
    return n, float(mask.mean()), float(area)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tumour_differs_in_texture_not_mean_colour(seed: int) -> None:
    tum, norm = _tiles(seed)
    diff = np.abs(tum.reshape(-1, 3).mean(0) - norm.reshape(-1, 3).mean(0))
    assert diff.max() < 25, f"mean RGB differ by {diff}"
    n_t, frac_t, area_t = _nuclei_stats(tum)
    n_n, frac_n, area_n = _nuclei_stats(norm)
    assert n_n >= 5  # normal tissue does have (sparse) nuclei
    assert frac_t > 4 * frac_n  # crowded: nuclear area fraction far higher
    assert n_t > 2 * n_n  # more nuclei (touching ones merge, so the count understates it)
    assert area_t > 1.5 * area_n  # larger nuclei


def test_tumour_nuclei_are_darker() -> None:
    tum, norm = _tiles(0)
    rgb_t, rgb_n = tum.astype(int), norm.astype(int)
    m_t = (rgb_t[..., 0] < 135) & (rgb_t[..., 2] > rgb_t[..., 1] + 10)
    m_n = (rgb_n[..., 0] < 135) & (rgb_n[..., 2] > rgb_n[..., 1] + 10)
    # hyperchromatic: the darkest decile of tumour nuclear pixels is darker than normal's
    assert np.percentile(rgb_t[m_t].sum(1), 10) < np.percentile(rgb_n[m_n].sum(1), 10)


def test_tiles_join_seamlessly() -> None:
    lay = make_layout(2048, 1536, MPP, 7, tumour=True, pen=True)
    ren = TissueRenderer(lay)
    c = lay.tumour_polygons[0].representative_point()
    pen_xy = lay.pens[0].points[len(lay.pens[0].points) // 2]
    for cx, cy in [(c.x, c.y), pen_xy]:  # across the tumour edge, and across a pen stroke
        x, y = int(cx) - 300, int(cy) - 200
        whole = ren(x, y, 600, 400, 1.0)
        pieces = np.zeros_like(whole)
        for a, b, w, h in [(0, 0, 137, 251), (137, 0, 463, 251), (0, 251, 600, 149)]:
            pieces[b : b + h, a : a + w] = ren(x + a, y + b, w, h, 1.0)
        assert np.array_equal(whole, pieces)
        # and a second renderer of the same layout gives the same pixels
        assert np.array_equal(TissueRenderer(lay)(x, y, 600, 400, 1.0), whole)
    assert (whole.astype(int).sum(2) < 300).any()  # the stroke is in the second region


def test_large_regions_render_in_bands_identically() -> None:
    lay = make_layout(2048, 1536, MPP, 4, tumour=True, pen=True)
    ren = TissueRenderer(lay)
    whole = ren(100, 50, 1200, 700, 1.0)  # > 2**19 px: rendered internally in row bands
    top, bottom = ren(100, 50, 1200, 333, 1.0), ren(100, 383, 1200, 367, 1.0)
    assert np.array_equal(whole, np.concatenate([top, bottom]))
    with pytest.raises(ConfigError, match="invalid"):
        ren(0, 0, 0, 10, 1.0)
    with pytest.raises(ConfigError, match="invalid"):
        ren(0, 0, 10, 10, -2.0)


def test_downsampled_render_resembles_block_average() -> None:
    lay = make_layout(2048, 1536, MPP, 3, tumour=True, pen=True)
    ren = TissueRenderer(lay)
    full = ren(0, 0, 2048, 1536, 1.0)
    for ds in (4, 16):
        small = ren(0, 0, 2048 // ds, 1536 // ds, float(ds)).astype(int)
        ref = block_average(full, ds).astype(int)
        assert small.shape == ref.shape
        assert np.abs(small.mean((0, 1)) - ref.mean((0, 1))).max() < 4
        assert np.abs(small - ref).mean() < 12


def test_glass_is_near_white_and_tissue_is_not() -> None:
    lay = make_layout(2048, 1536, MPP, 5, tumour=False, pen=False)
    ren = TissueRenderer(lay)
    img = ren(0, 0, 512, 384, 4.0).astype(int)  # the whole slide at downsample 4
    ys, xs = (np.mgrid[0:384, 0:512] + 0.5) * 4
    inside = shapely.contains_xy(lay.tissue_geometry().buffer(-20), xs, ys)
    outside = ~shapely.contains_xy(lay.tissue_geometry().buffer(20), xs, ys)
    glass = img[outside]
    assert np.abs(glass.mean(0) - 241).max() < 5 and glass.std(0).max() < 3
    assert img[inside].mean() < 200  # stained tissue absorbs
    assert not lay.tumours and not lay.tumour_polygons and not lay.pens


def test_pen_strokes_are_ink_coloured() -> None:
    for seed in range(20):
        lay = make_layout(2048, 1536, MPP, seed, tumour=False, pen=True)
        assert 1 <= len(lay.pens) <= 2
        ren = TissueRenderer(lay)
        tissue = lay.tissue_geometry().buffer(60)
        stroke = lay.pens[0]
        on_glass = [p for p in stroke.points if not tissue.contains(shapely.Point(p))]
        if not on_glass:
            continue
        x, y = on_glass[len(on_glass) // 2]
        patch = ren(int(x) - 2, int(y) - 2, 5, 5, 1.0).astype(int).reshape(-1, 3).mean(0)
        want = 241 * np.exp(-np.array(stroke.od))
        assert np.abs(patch - want).max() < 0.3 * 241, (patch, want)
        assert patch.mean() < 180
        return
    pytest.fail("no pen stroke crossed the glass in 20 seeds")


@pytest.mark.parametrize("seed", range(6))
def test_layout_tumour_inside_tissue_and_small(seed: int) -> None:
    lay = make_layout(W, H, MPP, seed, tumour=True, pen=True)
    assert 1 <= len(lay.sections) <= 3
    assert 1 <= len(lay.tumours) <= 3
    sections = shapely.union_all([s.polygon() for s in lay.sections])
    tumour = shapely.union_all(lay.tumour_polygons)
    assert tumour.within(sections.buffer(1.0))
    frac = tumour.area / lay.tissue_geometry().area
    assert 0.01 < frac < 0.2, frac
    for poly in lay.tumour_polygons:
        x0, y0, x1, y1 = poly.bounds
        assert 100 < max(x1 - x0, y1 - y0) < 1500  # 50-750 um across at 0.5 um/px
    for sec in lay.sections:  # sections stay on the slide
        bx0, by0, bx1, by1 = sec.polygon().bounds
        assert bx0 >= 0 and by0 >= 0 and bx1 <= W and by1 <= H
    # holes are inside tissue and clear of tumour
    for hole in lay.holes:
        assert hole.polygon().within(sections)
        assert not hole.polygon().intersects(tumour)


def test_layout_is_deterministic() -> None:
    a = make_layout(W, H, MPP, 11, tumour=True, pen=True)
    b = make_layout(W, H, MPP, 11, tumour=True, pen=True)
    c = make_layout(W, H, MPP, 12, tumour=True, pen=True)
    assert a == b
    assert a != c
    assert [p.wkb for p in a.tumour_polygons] == [p.wkb for p in b.tumour_polygons]


def test_blob_signed_distance_matches_polygon() -> None:
    blob = Blob(500.0, 400.0, 200.0, 120.0, 0.4, ((0.1, 0.05), (-0.04, 0.06), (0.02, 0.0)))
    poly = blob.polygon(512)
    rng = np.random.default_rng(0)
    xs, ys = rng.uniform(200, 800, 4000), rng.uniform(150, 650, 4000)
    d = blob.signed_distance(xs, ys)
    inside = shapely.contains_xy(poly, xs, ys)
    far = np.abs(d) > 1.0
    assert np.array_equal((d > 0)[far], inside[far])
    # near the boundary the value approximates the true distance
    true = shapely.distance(poly.exterior, shapely.points(xs, ys))
    near = np.abs(d) < 20
    assert np.abs(np.abs(d[near]) - true[near]).max() < 6


def test_noise_is_global_and_bounded() -> None:
    xs, ys = np.arange(100, 300), np.arange(50, 170)
    grid = value_noise_grid(3, xs, ys, 37.0, salt=5)
    assert grid.shape == (120, 200) and np.abs(grid).max() <= 1.0
    sub = value_noise_grid(3, xs[40:90], ys[10:30], 37.0, salt=5)
    assert np.array_equal(sub, grid[10:30, 40:90])
    pts = value_noise_points(3, np.array([xs[7], xs[150]]), np.array([ys[3], ys[99]]), 37.0, 5)
    assert np.allclose(pts, [grid[3, 7], grid[99, 150]], atol=1e-5)
    tex = periodic_texture(np.random.default_rng(0), 64, 3.0, 1.0, 0.5)
    assert tex.shape == (64, 64) and abs(float(tex.mean())) < 1e-4
    assert abs(float(tex.std()) - 1.0) < 1e-3


@pytest.mark.parametrize(
    ("args", "match"),
    [((8, 600, 0.5), "too small"), ((600, 600, 0.0), "mpp"), ((600, 600, float("inf")), "mpp")],
)
def test_make_layout_rejects_bad_input(args: tuple[int, int, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_layout(*args, seed=0, tumour=True, pen=False)
