"""The tile grid and per-tile tissue fractions (pure numpy).

Coordinates are level-0 pixels of a tile's top-left corner. The footprint and stride come
from :class:`~wsipipe.slide.levels.TileGeometry` (the one place they are computed). Only
tiles that lie entirely inside the slide are laid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsipipe.slide.levels import TileGeometry


@dataclass(frozen=True)
class Grid:
    tile_size_level0: int  # footprint of one tile in level-0 px
    stride_level0: int  # distance between neighbouring tiles in level-0 px
    coords: np.ndarray  # (N, 2) int64 level-0 (x, y) top-left, row-major order

    @property
    def n_tiles(self) -> int:
        return int(self.coords.shape[0])


def tile_grid(width: int, height: int, geometry: TileGeometry) -> Grid:
    """Lay a row-major grid of tiles of ``geometry`` over a ``width`` x ``height`` level-0
    image (only tiles that lie entirely inside it)."""
    size, stride = geometry.tile_size_level0, geometry.stride_level0
    xs = np.arange(0, width - size + 1, stride, dtype=np.int64)
    ys = np.arange(0, height - size + 1, stride, dtype=np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    coords = np.stack([xx.ravel(), yy.ravel()], axis=1)
    return Grid(tile_size_level0=size, stride_level0=stride, coords=coords)


def tissue_fractions(
    coords: np.ndarray, tile_size_level0: int, mask: np.ndarray, mask_downsample: float
) -> np.ndarray:
    """Fraction of each tile's footprint covered by ``mask`` (bool, thumbnail resolution).

    ``mask_downsample`` is level-0 px per mask px. Each footprint is mapped to mask pixels
    with fractional edges; coverage is integrated exactly over those fractional pixels with a
    summed-area table, so small tiles (a few mask pixels) still get smooth fractions.
    Returns (N,) float32 in [0, 1].
    """
    if coords.size == 0:
        return np.zeros(0, dtype=np.float32)
    h, w = mask.shape
    # Summed-area table with a zero border: sat[i, j] = sum of mask[:i, :j]; integer counts
    # (exact, as float64 sums of 0/1 are, at half the memory traffic of float64)
    acc = np.int32 if h * w < 2**31 else np.int64
    sat = np.zeros((h + 1, w + 1), dtype=acc)
    np.cumsum(mask.astype(bool, copy=False), axis=0, dtype=acc, out=sat[1:, 1:])
    np.cumsum(sat[1:, 1:], axis=1, out=sat[1:, 1:])

    x0 = coords[:, 0] / mask_downsample
    y0 = coords[:, 1] / mask_downsample
    x1 = (coords[:, 0] + tile_size_level0) / mask_downsample
    y1 = (coords[:, 1] + tile_size_level0) / mask_downsample
    area = (x1 - x0) * (y1 - y0)
    covered = _integral(sat, x0, y0, x1, y1)
    return np.clip(covered / area, 0.0, 1.0).astype(np.float32)


def _integral(
    sat: np.ndarray, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray
) -> np.ndarray:
    """Sum of the mask over real-valued rectangles, via bilinear interpolation of the SAT.

    The SAT is piecewise bilinear in continuous coordinates for a piecewise-constant mask, so
    interpolating it gives the exact integral over fractional pixel rectangles.
    """

    def f(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        hh, ww = sat.shape[0] - 1, sat.shape[1] - 1
        x = np.clip(x, 0.0, ww)
        y = np.clip(y, 0.0, hh)
        xi = np.minimum(np.floor(x).astype(np.int64), ww - 1)
        yi = np.minimum(np.floor(y).astype(np.int64), hh - 1)
        fx = x - xi
        fy = y - yi
        a = sat[yi, xi]
        b = sat[yi, xi + 1]
        c = sat[yi + 1, xi]
        d = sat[yi + 1, xi + 1]
        return a * (1 - fx) * (1 - fy) + b * fx * (1 - fy) + c * (1 - fx) * fy + d * fx * fy

    return f(x1, y1) - f(x0, y1) - f(x1, y0) + f(x0, y0)
