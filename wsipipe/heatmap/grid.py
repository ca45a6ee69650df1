"""Fast path for tiles on a regular lattice: images drawn by per-pixel table lookup.

When the tiles lie on a lattice (pitch ``step``, each lattice point at most once) -- the
tiler's layout, with or without overlap -- the tiles covering a pixel column are a run of
lattice columns that depends only on the column, and likewise for rows. A pixel's value (the
mean of the tiles covering it) is then an entry of a small table indexed by (row class, column
class), where a class is a run of lattice cells: an image is a lookup in that table instead
of a splat of the tiles. Rows of pixels in the same row class are identical, so each run of
them is looked up once and repeated.

The cells covering a pixel are computed with exactly the arithmetic of
:func:`~wsipipe.heatmap.render.tile_spans` (the pixel-centre rule), so the lookup covers the
same pixels as splatting and averages the same tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Lattice:
    """Tiles of edge ``size`` on a pitch-``step`` lattice, each lattice point at most once
    (``size > step``: neighbours overlap and are averaged).

    origin: level-0 (x, y) of cell (0, 0); gw, gh: cells per row / column; cell: (N,) flat
    cell (row-major, stride gw) of each tile.
    """

    origin: tuple[int, int]
    step: int
    size: float
    gw: int
    gh: int
    cell: np.ndarray

    def image(self, downsample: float, width: int, height: int) -> GridImage:
        """Row / column classes of a (height, width) image of ``downsample`` level-0 px per px."""
        cols, x_runs = _axis_classes(
            width, downsample, self.origin[0], self.step, self.size, self.gw
        )
        rows, y_runs = _axis_classes(
            height, downsample, self.origin[1], self.step, self.size, self.gh
        )
        return GridImage(self, rows, cols, y_runs, x_runs)


@dataclass(frozen=True)
class GridImage:
    """rows (h,), cols (w,): class of each pixel row / column; y_runs (ry, 2), x_runs (rx, 2):
    the half-open run of lattice rows / columns [a, b) covering each class (a == b: none)."""

    grid: Lattice
    rows: np.ndarray
    cols: np.ndarray
    y_runs: np.ndarray
    x_runs: np.ndarray

    def table(self, values: np.ndarray) -> np.ndarray:
        """(ry * rx,) float64 table of pixel values from per-tile ``values`` (N,): the mean of
        the finite values of the tiles covering each (row class, column class), NaN where
        there is none. Index: row class * rx + column class."""
        g = self.grid
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        ok = np.isfinite(v)
        total = np.bincount(g.cell[ok], weights=v[ok], minlength=g.gw * g.gh)
        count = np.bincount(g.cell[ok], minlength=g.gw * g.gh).astype(np.float64)
        (ya, yb), (xa, xb) = self.y_runs.T[:, :, None], self.x_runs.T[:, None, :]
        if (self.y_runs[:, 1] - self.y_runs[:, 0]).max(initial=0) <= 1 and (
            self.x_runs[:, 1] - self.x_runs[:, 0]
        ).max(initial=0) <= 1:
            # at most one cell per class (no overlap): read the cell itself, exactly
            flat = np.minimum(ya, g.gh - 1) * g.gw + np.minimum(xa, g.gw - 1)
            has = (yb > ya) & (xb > xa)
            s, n = np.where(has, total[flat], 0.0), np.where(has, count[flat], 0.0)
        else:  # sums over runs of cells by 2-D prefix sums
            s, n = _rect_sums(total, g, ya, yb, xa, xb), _rect_sums(count, g, ya, yb, xa, xb)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(n > 0.5, s / np.maximum(n, 1.0), np.nan)
        return out.reshape(-1)

    @property
    def stride(self) -> int:
        return len(self.x_runs)

    def padded(self, height: int, width: int) -> GridImage:
        """The same image extended to (height, width) with pixels covered by no tile."""
        none_y, none_x = _none_class(self.y_runs), _none_class(self.x_runs)
        rows = np.concatenate([self.rows, np.full(height - len(self.rows), none_y, np.int64)])
        cols = np.concatenate([self.cols, np.full(width - len(self.cols), none_x, np.int64)])
        return GridImage(self.grid, rows, cols, self.y_runs, self.x_runs)

    def lookup(self, table: np.ndarray, y0: int, y1: int, x0: int = 0, x1: int = -1) -> np.ndarray:
        """(y1 - y0, x1 - x0, ...) entries of a table of :meth:`table`'s layout (or any table
        of per-class entries in that order) for pixels [y0, y1) x [x0, x1) (x1 = -1: to the
        right edge)."""
        rows, counts = self.runs(table, y0, y1, x0, x1)
        return np.repeat(rows, counts, axis=0)

    def runs(
        self, table: np.ndarray, y0: int, y1: int, x0: int = 0, x1: int = -1
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`lookup` as (distinct rows, repeat counts): the pixel rows of [y0, y1) come
        in runs that share a row class, hence their entries; ``np.repeat(rows, counts,
        axis=0)`` is the lookup."""
        rows = self.rows[y0:y1]
        cols = self.cols[x0:] if x1 < 0 else self.cols[x0:x1]
        if len(rows) == 0:
            return table[np.zeros((0, len(cols)), np.intp)], np.zeros(0, np.intp)
        starts = np.flatnonzero(np.concatenate([[True], rows[1:] != rows[:-1]]))
        counts = np.diff(np.append(starts, len(rows)))
        return table[rows[starts, None] * self.stride + cols[None, :]], counts


def find_lattice(coords: np.ndarray, size: float, pitch: int | None = None) -> Lattice | None:
    """The :class:`Lattice` of tiles of edge ``size`` on a lattice, else None (off-lattice or
    duplicate tiles, or a lattice so sparse or fine that splatting is cheaper). The pitch is
    the tiler's stride when the store records it (``pitch``) and every offset is a multiple
    of it; else (stores written before the stride was recorded) the gcd of the offsets."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if len(coords) == 0 or not size > 0:
        return None
    origin = coords.min(axis=0)
    rel = coords - origin
    if pitch is not None and pitch > 0 and not (rel % pitch).any():
        step = int(pitch)
    else:
        step = int(np.gcd.reduce(rel.reshape(-1))) or max(1, int(np.ceil(size)))
    if 8 * step < size:  # a tile would span over 8 x 8 lattice cells: splat instead
        return None
    cells = rel // step
    gw, gh = int(cells[:, 0].max()) + 1, int(cells[:, 1].max()) + 1
    if gw * gh > 50 * len(coords) + 1024:
        return None
    flat = cells[:, 1] * gw + cells[:, 0]
    if np.bincount(flat).max() > 1:
        return None  # two tiles at one lattice point
    return Lattice((int(origin[0]), int(origin[1])), step, float(size), gw, gh, flat)


def _axis_classes(
    n_px: int, ds: float, origin: int, step: int, size: float, n_cells: int
) -> tuple[np.ndarray, np.ndarray]:
    """(class of each pixel (n_px,), runs (r, 2)) along one axis.

    Cell k's tile covers pixels [lo_k, hi_k) with lo_k = ceil((origin + k step) / ds - 0.5)
    and hi_k = ceil((origin + k step + size) / ds - 0.5), as :func:`tile_spans`; both grow
    with k, so the cells covering pixel x are the run [#{hi_k <= x}, #{lo_k <= x}).
    """
    starts = (origin + np.arange(n_cells, dtype=np.int64) * step).astype(np.float64)
    lo = np.ceil(starts / ds - 0.5).astype(np.int64)
    hi = np.ceil((starts + size) / ds - 0.5).astype(np.int64)
    px = np.arange(n_px)
    a = np.searchsorted(hi, px, side="right")
    b = np.searchsorted(lo, px, side="right")
    empty = b <= a
    a, b = np.where(empty, 0, a), np.where(empty, 0, b)
    # classes: the distinct runs, plus the empty one (padding beyond the edge uses it)
    keys = np.concatenate([a * (n_cells + 1) + b, [0]])
    uniq, inverse = np.unique(keys, return_inverse=True)
    runs = np.stack([uniq // (n_cells + 1), uniq % (n_cells + 1)], axis=1)
    return inverse[:n_px].astype(np.int64), runs


def _none_class(runs: np.ndarray) -> int:
    """Index of the empty run (always present, see :func:`_axis_classes`)."""
    return int(np.flatnonzero(runs[:, 1] <= runs[:, 0])[0])


def _rect_sums(
    per_cell: np.ndarray,
    g: Lattice,
    ya: np.ndarray,
    yb: np.ndarray,
    xa: np.ndarray,
    xb: np.ndarray,
) -> np.ndarray:
    """Sums of ``per_cell`` (gh * gw,) over cell rows [ya, yb) x columns [xa, xb) (arrays
    that broadcast), by a 2-D prefix sum."""
    p = np.zeros((g.gh + 1, g.gw + 1), np.float64)
    p[1:, 1:] = per_cell.reshape(g.gh, g.gw).cumsum(axis=0).cumsum(axis=1)
    return p[yb, xb] - p[ya, xb] - p[yb, xa] + p[ya, xa]
