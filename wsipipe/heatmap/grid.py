"""Fast path for tiles on a regular lattice: images drawn by per-pixel table lookup.

When the tiles lie on a lattice of pitch = footprint with each cell at most once (the tiler's
usual layout), every pixel of an image belongs to exactly one cell (or none) by the
pixel-centre rule of :mod:`wsipipe.heatmap.render`. An image is then a lookup of a per-cell
table (colour, LUT index, ...) instead of a splat of the tiles; rows of pixels that fall in
the same cell row are identical, so each run of them is looked up once and repeated.

The cell of a pixel is computed with exactly the arithmetic of
:func:`~wsipipe.heatmap.render.tile_spans`, so the lookup covers the same pixels as splatting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TileGrid:
    """Tiles on a pitch-``step`` lattice, each cell at most once.

    origin: level-0 (x, y) of cell (0, 0); gw, gh: cells per row / column; cell: (N,) flat
    cell of each tile, row-major with stride gw + 1 (column gw and row gh mean "no cell").
    """

    origin: tuple[int, int]
    step: int
    gw: int
    gh: int
    cell: np.ndarray

    def table(self, per_tile: np.ndarray, fill: object) -> np.ndarray:
        """((gh + 1) * (gw + 1), ...) table: ``per_tile`` rows at the tiles' cells, else fill."""
        per_tile = np.asarray(per_tile)
        out = np.empty(((self.gh + 1) * (self.gw + 1), *per_tile.shape[1:]), per_tile.dtype)
        out[:] = np.asarray(fill, per_tile.dtype)
        out[self.cell] = per_tile
        return out

    def image(self, downsample: float, width: int, height: int) -> GridImage:
        """Per-pixel cells of a (height, width) image of ``downsample`` level-0 px per px."""
        cols = _axis_cells(width, downsample, self.origin[0], self.step, self.gw)
        rows = _axis_cells(height, downsample, self.origin[1], self.step, self.gh)
        return GridImage(self, rows, cols)


@dataclass(frozen=True)
class GridImage:
    """rows (h,), cols (w,): cell row / column of each pixel row / column (gh / gw = none)."""

    grid: TileGrid
    rows: np.ndarray
    cols: np.ndarray

    def lookup(self, table: np.ndarray, y0: int, y1: int, x0: int = 0, x1: int = -1) -> np.ndarray:
        """(y1 - y0, x1 - x0, ...) entries of a :meth:`TileGrid.table` for pixels
        [y0, y1) x [x0, x1) (x1 = -1: to the right edge)."""
        rows, counts = self.runs(table, y0, y1, x0, x1)
        return np.repeat(rows, counts, axis=0)

    def runs(
        self, table: np.ndarray, y0: int, y1: int, x0: int = 0, x1: int = -1
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`lookup` as (distinct rows, repeat counts): the pixel rows of [y0, y1) come
        in runs that share a cell row, hence their entries; ``np.repeat(rows, counts,
        axis=0)`` is the lookup."""
        stride = self.grid.gw + 1
        rows = self.rows[y0:y1]
        cols = self.cols[x0:] if x1 < 0 else self.cols[x0:x1]
        if len(rows) == 0:
            return table[np.zeros((0, len(cols)), np.intp)], np.zeros(0, np.intp)
        starts = np.flatnonzero(np.concatenate([[True], rows[1:] != rows[:-1]]))
        counts = np.diff(np.append(starts, len(rows)))
        return table[rows[starts, None] * stride + cols[None, :]], counts


def tile_grid(coords: np.ndarray, size: float) -> TileGrid | None:
    """The :class:`TileGrid` of tiles on a pitch-``size`` lattice (each cell once), else None
    (off-lattice or duplicate tiles, or a lattice so sparse that splatting is cheaper)."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if len(coords) == 0 or not float(size).is_integer() or size < 1:
        return None
    step = int(size)
    origin = coords.min(axis=0)
    rel = coords - origin
    if (rel % step).any():
        return None
    cells = rel // step
    gw, gh = int(cells[:, 0].max()) + 1, int(cells[:, 1].max()) + 1
    if (gw + 1) * (gh + 1) > 50 * len(coords) + 1024:
        return None
    flat = cells[:, 1] * (gw + 1) + cells[:, 0]
    if np.bincount(flat).max() > 1:
        return None  # two tiles in one cell
    return TileGrid((int(origin[0]), int(origin[1])), step, gw, gh, flat)


def _axis_cells(n_px: int, ds: float, origin: int, step: int, n_cells: int) -> np.ndarray:
    """Cell of each pixel along one axis; ``n_cells`` where none.

    Cell k spans pixels [b_k, b_k+1) with b_k = ceil((origin + k * step) / ds - 0.5): the
    bounds :func:`~wsipipe.heatmap.render.tile_spans` gives the tile in that cell.
    """
    edges = (origin + np.arange(n_cells + 1, dtype=np.int64) * step).astype(np.float64)
    bounds = np.ceil(edges / ds - 0.5).astype(np.int64)
    cell = np.searchsorted(bounds, np.arange(n_px), side="right") - 1
    return np.where((cell >= 0) & (cell < n_cells), cell, n_cells).astype(np.int64)
