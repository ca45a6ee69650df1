"""QC drawing: colours at known pixels, purity, and the atomic PNG writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import real_tile
from wsipipe.tile.qc import (
    MIN_OUTLINED_TILE_PX,
    PEN_COLOR,
    PEN_TINT,
    TILE_COLOR,
    TILE_TINT,
    TISSUE_COLOR,
    draw_qc,
    save_png,
)
from wsipipe.tile.tissue import segment_tissue

BG = (230, 200, 220)


def thumb(h: int = 60, w: int = 80) -> np.ndarray:
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = BG
    return img


def square_mask(h: int = 60, w: int = 80) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[10:30, 20:50] = True  # rows 10..29, cols 20..49
    return m


def test_tissue_contour_is_two_pixels_at_the_boundary() -> None:
    img, m = thumb(), square_mask()
    out = draw_qc(img, m)
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8
    green = np.all(out == TISSUE_COLOR, axis=-1)
    # inner ring (last mask pixel) and outer ring (first pixel outside), on all four sides
    for r, c in [(10, 30), (29, 30), (20, 20), (20, 49), (9, 30), (30, 30), (20, 19), (20, 50)]:
        assert green[r, c], (r, c)
    # interior and far background keep the thumbnail's colour
    for r, c in [(11, 30), (20, 35), (28, 48), (8, 30), (31, 30), (20, 51), (50, 5)]:
        assert tuple(out[r, c]) == BG, (r, c)
    # the contour is exactly the 2 px band: 20x30 inner ring + outer ring without corners
    inner = 2 * 30 + 2 * 20 - 4
    outer = 2 * 30 + 2 * 20
    assert green.sum() == inner + outer


def test_inputs_are_not_modified_and_rgba_is_accepted() -> None:
    img, m = thumb(), square_mask()
    rgba = np.concatenate([img, np.full((60, 80, 1), 255, np.uint8)], axis=-1)
    before_img, before_m = img.copy(), m.copy()
    out = draw_qc(rgba, m)
    np.testing.assert_array_equal(img, before_img)
    np.testing.assert_array_equal(m, before_m)
    np.testing.assert_array_equal(out, draw_qc(img, m))
    assert out.shape == (60, 80, 3)


def test_mask_touching_the_image_border_gets_no_contour_along_the_border() -> None:
    m = np.zeros((60, 80), dtype=bool)
    m[:, :30] = True
    out = draw_qc(thumb(), m)
    assert tuple(out[30, 0]) == BG  # the border is not a tissue boundary
    assert tuple(out[30, 29]) == TISSUE_COLOR and tuple(out[30, 30]) == TISSUE_COLOR


def test_pen_areas_are_tinted_and_outlined() -> None:
    pen = np.zeros((60, 80), dtype=bool)
    pen[40:55, 5:25] = True
    out = draw_qc(thumb(), np.zeros((60, 80), dtype=bool), pen)
    expected = np.round(np.array(BG) * (1 - PEN_TINT) + np.array(PEN_COLOR) * PEN_TINT)
    np.testing.assert_allclose(out[47, 15], expected, atol=1)  # rounding of .5
    assert tuple(out[40, 15]) == PEN_COLOR and tuple(out[47, 5]) == PEN_COLOR
    assert tuple(out[39, 15]) == BG


def test_tiles_are_outlined() -> None:
    tiles = np.array([[40.0, 35.0], [60.4, 35.0]])  # top-left (x, y), thumbnail px
    out = draw_qc(thumb(), np.zeros((60, 80), dtype=bool), tiles=tiles, tile_size=10.0)
    blue = np.all(out == TILE_COLOR, axis=-1)
    # first tile covers x 40..49, y 35..44: outline on its four sides, inside untouched
    assert blue[35, 45] and blue[44, 45] and blue[40, 40] and blue[40, 49]
    assert not blue[40, 45] and not blue[34, 45] and not blue[40, 50]
    assert blue[35, 60] and blue[40, 69]  # second tile rounded to x 60..69
    assert blue.sum() == 2 * (4 * 10 - 4)


def test_tissue_contour_drawn_over_tiles() -> None:
    m = square_mask()
    out = draw_qc(thumb(), m, tiles=np.array([[20.0, 10.0]]), tile_size=10.0)
    assert tuple(out[10, 25]) == TISSUE_COLOR  # on both the tile edge and the tissue edge
    assert tuple(out[15, 29]) == TILE_COLOR


def test_tiny_tiles_are_tinted() -> None:
    size = MIN_OUTLINED_TILE_PX / 2
    out = draw_qc(
        thumb(), np.zeros((60, 80), dtype=bool), tiles=np.array([[10.0, 10.0]]), tile_size=size
    )
    expected = np.round(np.array(BG) * (1 - TILE_TINT) + np.array(TILE_COLOR) * TILE_TINT)
    np.testing.assert_allclose(out[10, 10], expected, atol=1)  # rounding of .5
    np.testing.assert_allclose(out[11, 11], expected, atol=1)
    assert tuple(out[12, 12]) == BG


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="tile_size"):
        draw_qc(thumb(), square_mask(), tiles=np.zeros((1, 2)))
    with pytest.raises(ValueError, match="does not match"):
        draw_qc(thumb(), np.zeros((10, 10), dtype=bool))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        draw_qc(thumb(), square_mask(), tiles=np.zeros((3, 3)), tile_size=4.0)


def test_save_png_round_trip_is_atomic(tmp_path: Path) -> None:
    img = draw_qc(thumb(), square_mask())
    path = tmp_path / "qc" / "slide.png"
    save_png(path, img)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), img)
    save_png(path, img[::2])  # overwrite
    assert np.asarray(Image.open(path)).shape == (30, 80, 3)
    assert [p.name for p in path.parent.iterdir()] == ["slide.png"]
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "x.png", img.astype(np.float32))


def test_qc_of_a_real_pen_thumbnail(tmp_path: Path) -> None:
    rgba = np.asarray(Image.open(real_tile("pil-images-rgb__wsi-blue-pen.png")).convert("RGBA"))
    res = segment_tissue(rgba, 40.0)
    out = draw_qc(rgba, res.tissue, res.pen)
    assert np.all(out == TISSUE_COLOR, axis=-1).sum() > 100
    assert np.all(out == PEN_COLOR, axis=-1).sum() > 20
    save_png(tmp_path / "qc.png", out)
    assert Image.open(tmp_path / "qc.png").size == (rgba.shape[1], rgba.shape[0])


@pytest.mark.parametrize("seed", range(6))
def test_tile_outlines_are_each_square_drawn_one_by_one(seed: int) -> None:
    """The vectorised outlines equal a per-tile drawing, tiles off the image included."""
    from wsipipe.tile.qc import _tile_bounds, _tile_outlines

    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(20, 200, 2))
    tiles = rng.uniform(-30, max(h, w) + 30, (int(rng.integers(1, 120)), 2))
    size = float(rng.uniform(0.5, 30))
    want = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in zip(*_tile_bounds(tiles, size), strict=True):
        xa, xb, ya, yb = max(x0, 0), min(x1, w - 1), max(y0, 0), min(y1, h - 1)
        for y in (y0, y1):
            if 0 <= y < h and xa <= xb:
                want[y, xa : xb + 1] = True
        for x in (x0, x1):
            if 0 <= x < w and ya <= yb:
                want[ya : yb + 1, x] = True
    got = _tile_outlines(tiles, size, h, w)
    assert got.any()
    assert np.array_equal(got, want)
