from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsipipe.slide.levels import tile_geometry
from wsipipe.tile.grid import tile_grid, tissue_fractions


def geometry(slide_mpp: float, target_mpp: float, tile_px: int, overlap_px: int = 0):
    return tile_geometry(slide_mpp, [1.0, 4.0], target_mpp, tile_px, overlap_px)


def test_grid_at_target_mpp_covers_slide_with_full_tiles():
    # 0.25 um/px slide, 0.5 um/px target: a 256 px tile covers 512 level-0 px.
    g = tile_grid(2100, 1100, geometry(0.25, 0.5, 256))
    assert g.tile_size_level0 == 512 and g.stride_level0 == 512
    assert g.n_tiles == 4 * 2  # floor(2100/512) x floor(1100/512)
    assert g.coords[:, 0].max() + 512 <= 2100 and g.coords[:, 1].max() + 512 <= 1100
    # row-major: x varies fastest
    assert g.coords[:3].tolist() == [[0, 0], [512, 0], [1024, 0]]


def test_overlap_shrinks_stride():
    geo = geometry(0.5, 0.5, 256, overlap_px=56)
    assert geo.stride_level0 == 200 and geo.tile_size_level0 == 256
    g = tile_grid(1000, 256, geo)
    assert g.stride_level0 == 200
    assert g.coords[:, 0].tolist() == [0, 200, 400, 600]


def test_bad_grid_settings():
    with pytest.raises(ValueError, match="overlap_px"):
        geometry(0.5, 0.5, 64, overlap_px=64)


def test_tissue_fraction_exact_on_aligned_tiles():
    mask = np.zeros((8, 8), bool)
    mask[:, :4] = True  # left half tissue
    coords = np.array([[0, 0], [64, 0], [32, 0]])  # level-0 px; mask downsample 16
    frac = tissue_fractions(coords, 64, mask, mask_downsample=16.0)
    np.testing.assert_allclose(frac, [1.0, 0.0, 0.5], atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.5, 40.0), st.integers(0, 300), st.integers(0, 300))
def test_tissue_fraction_matches_fine_raster(seed, size, x, y):
    """Fractional-edge integration equals counting on a 10x finer raster of the same mask."""
    rng = np.random.default_rng(seed)
    mask = rng.random((40, 40)) > 0.5
    ds = 10.0  # level-0 px per mask px
    size0 = int(size * ds)
    coords = np.array([[x, y]])
    frac = tissue_fractions(coords, size0, mask, ds)[0]
    fine = np.repeat(np.repeat(mask, 10, 0), 10, 1)  # 1 fine px = 1 level-0 px
    window = fine[y : y + size0, x : x + size0]
    # Outside the mask counts as no tissue.
    expected = window.sum() / (size0 * size0)
    assert frac == pytest.approx(expected, abs=1e-5)
