"""Rendering of per-tile scores: normalisation, colour maps, splatting, overlay, bar, gallery."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from wsipipe.errors import ConfigError
from wsipipe.heatmap.figures import colour_bar, draw_outlines, gallery, with_colour_bar
from wsipipe.heatmap.render import (
    blend_overlay,
    colorize,
    colormap_lut,
    normalise_scores,
    render_values,
    score_ranks,
    smooth_valid,
    splat_mean,
    tile_spans,
    top_k,
)


def _grid(nx: int, ny: int, step: int) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(nx) * step, np.arange(ny) * step)
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64)


def _brute_mean(coords, size, ds, values, w, h):
    """Reference: pixel (i, j) centre inside tile squares, mean of their values."""
    out = np.full((h, w), np.nan)
    cx = (np.arange(w) + 0.5) * ds
    cy = (np.arange(h) + 0.5) * ds
    acc = np.zeros((h, w))
    cnt = np.zeros((h, w))
    for (x, y), v in zip(coords, values, strict=True):
        inx = (cx >= x) & (cx < x + size)
        iny = (cy >= y) & (cy < y + size)
        m = iny[:, None] & inx[None, :]
        acc[m] += v
        cnt[m] += 1
    out[cnt > 0] = acc[cnt > 0] / cnt[cnt > 0]
    return out


def test_ranks_and_top_k_are_stable_for_ties():
    s = np.array([0.1, 0.5, 0.5, 0.2])
    assert score_ranks(s).tolist() == [4, 1, 2, 3]
    assert top_k(s, 2).tolist() == [1, 2]
    assert top_k(s, 10).tolist() == [1, 2, 3, 0]


def test_normalise_rank_percentile_minmax():
    s = np.array([1e-6, 1e-3, 5e-4, 0.99])
    assert normalise_scores(s, "rank").tolist() == pytest.approx([0.0, 2 / 3, 1 / 3, 1.0])
    mm = normalise_scores(s, "minmax")
    assert mm[0] == 0.0 and mm[3] == 1.0
    assert mm[1] == pytest.approx((1e-3 - 1e-6) / (0.99 - 1e-6))
    x = np.arange(101, dtype=float)
    p = normalise_scores(x, "percentile", 10, 90)
    assert p[:11].tolist() == [0.0] * 11 and p[90:].tolist() == [1.0] * 11
    assert p[50] == pytest.approx(0.5)
    assert normalise_scores(np.full(5, 0.2), "minmax").tolist() == [0.5] * 5
    assert normalise_scores(np.array([0.3]), "rank").tolist() == [1.0]
    # ties share their mean rank
    assert normalise_scores(np.array([1.0, 1.0, 0.0]), "rank").tolist() == [0.75, 0.75, 0.0]
    with pytest.raises(ConfigError, match="normalise"):
        normalise_scores(s, "zscore")
    with pytest.raises(ConfigError, match="percentiles"):
        normalise_scores(s, "percentile", 90, 10)


def test_colormaps_endpoints_and_errors():
    jet = colormap_lut("jet")
    assert jet.shape == (256, 3) and jet.dtype == np.uint8
    assert jet[0].tolist() == [0, 0, 128] and jet[-1].tolist() == [128, 0, 0]
    vir = colormap_lut("viridis")
    assert vir[0].tolist() == [68, 1, 84] and vir[-1].tolist() == [253, 231, 37]
    gray = colormap_lut("gray")
    assert (gray[:, 0] == np.arange(256)).all()
    with pytest.raises(ConfigError, match="colormap"):
        colormap_lut("rainbow")
    vals = np.array([[0.0, 1.0, np.nan]])
    col = colorize(vals, gray, (7, 8, 9))
    assert col.tolist() == [[[0, 0, 0], [255, 255, 255], [7, 8, 9]]]


def test_tile_spans_pixel_centre_rule():
    sp = tile_spans(np.array([[0, 0], [8, 24], [5, 0]]), 16, 16)
    assert sp.tolist() == [[0, 0, 1, 1], [0, 1, 1, 2], [0, 0, 1, 1]]
    # downsample 1 -> exact level-0 squares
    assert tile_spans(np.array([[3, 7]]), 10, 1).tolist() == [[3, 7, 13, 17]]
    # a tile smaller than a pixel that covers no pixel centre is empty
    s = tile_spans(np.array([[9, 9]]), 4, 16)[0]
    assert s[2] <= s[0]


def test_splat_mean_overlapping_tiles_are_averaged():
    coords = np.array([[0, 0], [128, 0], [0, 256]])
    sp = tile_spans(coords, 256, 16)
    m = splat_mean(sp, np.array([0.0, 1.0, 0.5]), (0, 0, 26, 34))
    assert m[0, 0] == 0.0  # only tile 0
    assert m[0, 10] == 0.5  # tiles 0 and 1 overlap
    assert m[0, 20] == 1.0  # only tile 1
    assert m[20, 5] == 0.5  # tile 2
    assert np.isnan(m[20, 20]) and np.isnan(m[33, 0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_splat_mean_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    coords = rng.integers(0, 900, size=(40, 2))
    values = rng.random(40)
    size, ds = int(rng.integers(20, 200)), float(rng.choice([1.0, 3.0, 7.5, 16.0]))
    w = h = int(1100 / ds) + 1
    got = splat_mean(tile_spans(coords, size, ds), values, (0, 0, w, h))
    want = _brute_mean(coords, size, ds, values, w, h)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.allclose(got[~np.isnan(got)], want[~np.isnan(want)], atol=1e-6)
    # an offset region is the same crop
    sub = splat_mean(tile_spans(coords, size, ds), values, (5, 9, 20, 30))
    assert np.array_equal(np.nan_to_num(sub, nan=-1), np.nan_to_num(got[9:39, 5:25], nan=-1))


@pytest.mark.parametrize("sigma", [1.5, 4.0])
def test_smoothing_is_the_normalised_convolution_with_a_three_fold_box(sigma):
    """Reference: a box of radius r applied three times along each axis (zeros beyond the
    edges at every pass) to the masked values and to the mask, by explicit shifted sums;
    their ratio where the mask's weight is over half a pixel, NaN elsewhere."""
    from wsipipe.heatmap.render import _box_radius

    rng = np.random.default_rng(4)
    img = rng.random((23, 31)).astype(np.float32)
    img[rng.random(img.shape) < 0.3] = np.nan
    img[:, 25:] = np.nan  # a band of glass
    r = _box_radius(sigma)
    valid = ~np.isnan(img)

    def conv(a):
        for axis in (1, 0):
            for _ in range(3):
                pad = [(0, 0), (0, 0)]
                pad[axis] = (r, r)
                p, out = np.pad(a, pad), np.zeros_like(a)
                for j in range(2 * r + 1):
                    sl = [slice(None), slice(None)]
                    sl[axis] = slice(j, j + a.shape[axis])
                    out += p[tuple(sl)]
                a = out
        return a

    num, den = conv(np.where(valid, img, 0.0)), conv(valid.astype(float))
    want = np.where(valid & (den > 0.5), num / np.where(den > 0, den, 1), np.nan)
    got = smooth_valid(img, sigma)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.allclose(got[valid], want[valid], atol=1e-6)
    assert not np.allclose(got[valid], img[valid], atol=1e-3)  # it did smooth


def test_smoothing_keeps_holes_and_joins_regions_seamlessly():
    coords = _grid(8, 6, 64)
    values = (np.arange(len(coords)) % 5 / 4.0).astype(np.float32)
    sp = tile_spans(coords, 64, 4)
    whole = render_values(sp, values, (0, 0, 140, 100), sigma_px=2.5)
    top = render_values(sp, values, (0, 0, 140, 37), sigma_px=2.5)
    bottom = render_values(sp, values, (0, 37, 140, 63), sigma_px=2.5)
    joined = np.concatenate([top, bottom])
    assert np.allclose(np.nan_to_num(joined, nan=-1), np.nan_to_num(whole, nan=-1), atol=1e-6)
    assert np.isnan(whole[:, 128:]).all()  # no tile there: smoothing does not bleed onto glass
    # smoothing averages neighbours: values inside stay in range, a constant stays constant
    const = smooth_valid(np.where(np.isnan(whole), np.nan, 0.3).astype(np.float32), 3.0)
    assert np.allclose(const[~np.isnan(const)], 0.3, atol=1e-5)


def test_overlay_planted_pattern_renders_where_it_should():
    # a slide of 8 x 6 tiles of 256 level-0 px; thumbnail at 16 level-0 px per px (16 px/tile)
    coords = _grid(8, 6, 256)
    values = np.zeros(len(coords), np.float32)
    hot = 8 * 2 + 5  # tile at column 5, row 2
    values[hot] = 1.0
    thumb = np.full((6 * 16 + 10, 8 * 16 + 10, 3), 200, np.uint8)
    lut = colormap_lut("jet")
    sp = tile_spans(coords, 256, 16)
    out = blend_overlay(thumb, sp, values, lut, alpha=0.5)
    hot_c = np.rint(0.5 * 200 + 0.5 * lut[255].astype(float)).astype(int)
    cold_c = np.rint(0.5 * 200 + 0.5 * lut[0].astype(float)).astype(int)
    assert out[2 * 16 + 8, 5 * 16 + 8].tolist() == hot_c.tolist()
    assert (out[2 * 16 : 3 * 16, 5 * 16 : 6 * 16] == hot_c).all()  # exactly the tile's pixels
    assert out[2 * 16 + 8, 4 * 16 + 8].tolist() == cold_c.tolist()
    assert out[0, 0].tolist() == cold_c.tolist()
    assert (out[96:, :] == 200).all() and (out[:, 128:] == 200).all()  # no tile: untouched
    # tissue mask: only over tissue
    tissue = np.zeros(thumb.shape[:2], bool)
    tissue[:, : 5 * 16 + 8] = True
    masked = blend_overlay(thumb, sp, values, lut, alpha=0.5, tissue=tissue)
    assert masked[2 * 16 + 4, 5 * 16 + 2].tolist() == hot_c.tolist()
    assert masked[2 * 16 + 4, 5 * 16 + 12].tolist() == [200, 200, 200]
    # stripes do not change the result
    assert np.array_equal(blend_overlay(thumb, sp, values, lut, 0.5, stripe=7), out)
    with pytest.raises(ConfigError, match="alpha"):
        blend_overlay(thumb, sp, values, lut, alpha=1.5)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_blend_is_within_one_grey_level_of_the_exact_formula(alpha):
    """The fixed-point blend: every (thumbnail value, colour) pair, exact at alpha 0 and 1."""
    v = np.arange(256)
    thumb = np.stack(np.broadcast_arrays(v[:, None], v[None, :], 255 - v[None, :]), -1)
    thumb = thumb.astype(np.uint8)  # (256, 256, 3): rows x columns of grey levels
    lut = np.stack([v, 255 - v, (v * 7) % 256], 1).astype(np.uint8)  # 256 distinct colours
    coords = _grid(256, 1, 1)  # one tile per pixel column, LUT index = column
    values = np.arange(256, dtype=np.float32) / 255
    sp = tile_spans(coords, 1, 1.0)
    sp[:, 3] = 256  # each tile spans its whole column
    out = blend_overlay(thumb, sp, values, lut, alpha=alpha).astype(float)
    exact = thumb * (1 - alpha) + lut[None, :, :].astype(float) * alpha
    err = np.abs(out - exact)
    assert err.max() <= 1.0 and err.mean() < 0.5  # a grey level at most; mostly exact
    if alpha == 0.0:
        assert np.array_equal(out, thumb)
    if alpha == 1.0:
        assert np.array_equal(out, np.broadcast_to(lut[None], thumb.shape))


def test_outlines_drawn_on_the_tile_border_only():
    img = np.full((50, 50, 3), 255, np.uint8)
    out = draw_outlines(img, np.array([[10, 10, 30, 30]]), (255, 0, 255), width=2)
    assert out[10, 20].tolist() == [255, 0, 255] and out[29, 20].tolist() == [255, 0, 255]
    assert out[20, 11].tolist() == [255, 0, 255] and out[20, 28].tolist() == [255, 0, 255]
    assert out[20, 20].tolist() == [255, 255, 255] and out[9, 20].tolist() == [255, 255, 255]
    assert out[20, 30].tolist() == [255, 255, 255]
    assert img[10, 20].tolist() == [255, 255, 255]  # input untouched


def _outlines_on_whole_image(img, spans, colour, width, labels):
    """Reference: every rectangle and label drawn with PIL on the whole image."""
    from PIL import Image, ImageDraw

    pil = Image.fromarray(np.ascontiguousarray(img[..., :3]))
    draw = ImageDraw.Draw(pil)
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(spans, dtype=np.int64).reshape(-1, 4)):
        if x1 <= x0 or y1 <= y0:
            continue
        draw.rectangle([int(x0), int(y0), int(x1) - 1, int(y1) - 1], outline=colour, width=width)
        if labels is not None and i < len(labels):  # white on a plate of the outline colour
            at = (int(x0) + width + 1, int(y0) + width)
            b = draw.textbbox(at, labels[i])
            draw.rectangle([b[0] - 1, b[1] - 1, b[2], b[3]], fill=colour)
            draw.text(at, labels[i], fill=(255, 255, 255))
    return np.asarray(pil)


@pytest.mark.parametrize("width", [1, 3])
def test_outlines_on_crops_equal_drawing_on_the_whole_image(width):
    rng = np.random.default_rng(width)
    img = rng.integers(0, 256, (120, 170, 3), dtype=np.uint8)
    x0 = rng.integers(-20, 160, 12)
    y0 = rng.integers(-20, 110, 12)
    spans = np.stack([x0, y0, x0 + rng.integers(0, 40, 12), y0 + rng.integers(0, 40, 12)], 1)
    spans[0] = [150, 100, 190, 140]  # past the bottom-right corner: labels clipped
    spans[1] = [40, 40, 70, 70]
    spans[2] = [50, 50, 80, 80]  # overlapping the previous one
    labels = [str(i + 1) for i in range(10)]  # the last two spans unlabelled
    for lab in (labels, None):
        want = _outlines_on_whole_image(img, spans, (255, 0, 40), width, lab)
        got = draw_outlines(img, spans, (255, 0, 40), width, lab)
        assert np.array_equal(got, want)


def test_colour_bar_runs_from_high_at_top_to_low_at_bottom():
    lut = colormap_lut("viridis")
    bar = colour_bar(200, lut, bar_width=10)
    assert bar.shape == (200, 10 + 90 + 8, 3)
    col = bar[6:194, 8]
    assert col[0].tolist() == lut[255].tolist() and col[-1].tolist() == lut[0].tolist()
    idx = [int(np.argmin(np.abs(lut.astype(int) - c.astype(int)).sum(1))) for c in col]
    assert all(a >= b for a, b in itertools.pairwise(idx))
    assert bar[0, 8].tolist() == [255, 255, 255]
    assert (bar[:, 30:] < 255).any()  # tick labels drawn
    img = np.zeros((100, 40, 3), np.uint8)
    both = with_colour_bar(img, bar)
    assert both.shape == (200, 40 + bar.shape[1], 3)
    assert np.array_equal(both[:, 40:], bar) and (both[:100, :40] == 0).all()


def test_gallery_places_tiles_in_a_grid():
    tiles = np.zeros((7, 32, 32, 3), np.uint8)
    for i in range(7):
        tiles[i] = 30 * i
    img = gallery(tiles, [f"#{i + 1}" for i in range(7)], cols=3, cell=32, caption_px=12)
    assert img.shape == (3 * (32 + 12 + 4), 3 * (32 + 4), 3)
    for i in range(7):
        r, c = divmod(i, 3)
        assert img[r * 48 + 2 + 16, c * 36 + 2 + 16].tolist() == [30 * i] * 3
    assert img[2 * 48 + 18, 2 * 36 + 18].tolist() == [255, 255, 255]  # empty 9th cell
    assert (img[32 + 4 : 32 + 16, 2:34] < 255).any()  # caption text
    assert gallery(np.zeros((0, 8, 8, 3), np.uint8), []).shape == (160 + 16 + 4, 164, 3)
