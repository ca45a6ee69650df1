"""The QC thumbnail: tissue contours, rejected pen areas and kept tiles drawn on the slide.

Pure numpy drawing (no PIL draw calls), so every pixel's colour is predictable:

- pen areas: tinted ``PEN_TINT`` of ``PEN_COLOR`` and outlined 1 px in ``PEN_COLOR``;
- kept tiles: 1 px ``TILE_COLOR`` outline of each tile square (tiles under
  ``MIN_OUTLINED_TILE_PX`` thumbnail px are tinted instead, outlines would fill them);
- tissue: 2 px ``TISSUE_COLOR`` contour, the last mask pixel inside the boundary and the
  first one outside it (4-neighbourhood), drawn last so it is never hidden.
"""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np

from wsipipe.fileio import atomic_write_bytes
from wsipipe.slide.backends import to_rgb

TISSUE_COLOR = (0, 220, 0)
PEN_COLOR = (255, 0, 255)
TILE_COLOR = (0, 120, 255)
PEN_TINT = 0.35  # opacity of the pen tint
TILE_TINT = 0.3  # opacity of the tile tint, used when tiles are too small to outline
MIN_OUTLINED_TILE_PX = 4.0  # tiles smaller than this (thumbnail px) are tinted, not outlined


def inner_boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask. The image border is not a boundary
    (the mask is extended by edge replication)."""
    p = np.pad(mask, 1, mode="edge")
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~interior


def outer_boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels outside the mask with a 4-neighbour inside it."""
    return inner_boundary(~mask)


def draw_qc(
    thumb: np.ndarray,
    tissue: np.ndarray,
    pen: np.ndarray | None = None,
    tiles: np.ndarray | None = None,
    tile_size: float | None = None,
) -> np.ndarray:
    """RGB uint8 (H, W, 3) image: the thumbnail with tissue contours drawn (green, 2 px),
    rejected pen areas tinted and outlined in magenta, and optionally kept tiles outlined
    (blue; tinted instead when smaller than ``MIN_OUTLINED_TILE_PX``).

    thumb: (H, W, 3|4) uint8 (RGBA composited on white); tissue, pen: bool (H, W);
    tiles: (N, 2) top-left (x, y) in THUMBNAIL px (may be fractional; rounded);
    tile_size: tile side in thumbnail px (required with ``tiles``). Pure: inputs unchanged.
    """
    rgb = to_rgb(thumb)
    h, w = rgb.shape[:2]
    tissue = _check_mask(tissue, (h, w), "tissue")
    out = rgb.copy()

    if pen is not None:
        pen = _check_mask(pen, (h, w), "pen")
        if pen.any():
            _tint(out, pen, PEN_COLOR, PEN_TINT)
            out[inner_boundary(pen)] = PEN_COLOR

    if tiles is not None and len(tiles):
        if tile_size is None or not tile_size > 0:
            raise ValueError(f"tile_size must be > 0 when tiles are given, got {tile_size}")
        tiles = np.asarray(tiles, dtype=np.float64)
        if tiles.ndim != 2 or tiles.shape[1] != 2:
            raise ValueError(f"tiles must be (N, 2) top-left (x, y), got shape {tiles.shape}")
        if tile_size >= MIN_OUTLINED_TILE_PX:
            out[_tile_outlines(tiles, float(tile_size), h, w)] = TILE_COLOR
        else:  # outlines would fill the tiles: tint their footprints instead
            area = _tile_areas(tiles, float(tile_size), h, w)
            _tint(out, area, TILE_COLOR, TILE_TINT)

    out[inner_boundary(tissue) | outer_boundary(tissue)] = TISSUE_COLOR
    return out


def _tint(img: np.ndarray, where: np.ndarray, color: tuple[int, int, int], alpha: float) -> None:
    """Blend ``color`` with opacity ``alpha`` into ``img`` (in place) where ``where``."""
    if where.any():
        blended = img[where].astype(np.float32) * (1 - alpha) + np.float32(alpha) * np.asarray(
            color, dtype=np.float32
        )
        img[where] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def _tile_bounds(
    tiles: np.ndarray, size: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inclusive pixel bounds (x0, y0, x1, y1) of each tile square, rounded."""
    x0 = np.round(tiles[:, 0]).astype(np.int64)
    y0 = np.round(tiles[:, 1]).astype(np.int64)
    x1 = np.maximum(np.round(tiles[:, 0] + size).astype(np.int64) - 1, x0)
    y1 = np.maximum(np.round(tiles[:, 1] + size).astype(np.int64) - 1, y0)
    return x0, y0, x1, y1


def _tile_areas(tiles: np.ndarray, size: float, h: int, w: int) -> np.ndarray:
    """Bool (H, W): union of the tile squares (2-D difference array + two cumsums)."""
    x0, y0, x1, y1 = _tile_bounds(tiles, size)
    xa, xb = np.clip(x0, 0, w), np.clip(x1 + 1, 0, w)
    ya, yb = np.clip(y0, 0, h), np.clip(y1 + 1, 0, h)
    ok = (xb > xa) & (yb > ya)
    xa, xb, ya, yb = xa[ok], xb[ok], ya[ok], yb[ok]
    d = np.zeros((h + 1, w + 1), dtype=np.int32)
    np.add.at(d, (ya, xa), 1)
    np.add.at(d, (ya, xb), -1)
    np.add.at(d, (yb, xa), -1)
    np.add.at(d, (yb, xb), 1)
    return d.cumsum(0).cumsum(1)[:h, :w] > 0


def _check_mask(mask: np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != shape:
        raise ValueError(f"{name} mask shape {m.shape} does not match the thumbnail {shape}")
    return m.astype(bool, copy=False)


def _tile_outlines(tiles: np.ndarray, size: float, h: int, w: int) -> np.ndarray:
    """Bool (H, W): 1 px outline of each square [x, x + size) x [y, y + size), rounded to
    whole pixels and clipped to the image."""
    x0, y0, x1, y1 = _tile_bounds(tiles, size)
    out = np.zeros((h, w), dtype=bool)
    rows, seg = _edge_lines(y0, y1, x0, x1, h, w)  # horizontal edges: rows y0, y1
    out[rows] |= seg
    cols, seg = _edge_lines(x0, x1, y0, y1, w, h)  # vertical edges: columns x0, x1
    out[:, cols] |= seg.T
    return out


def _edge_lines(
    e0: np.ndarray, e1: np.ndarray, s0: np.ndarray, s1: np.ndarray, n: int, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """The lines (rows, or columns when called transposed) e0 and e1 of each tile, each
    covering s0..s1 inclusive, clipped to ``n`` lines of ``length`` px: (line numbers (k,),
    bool (k, length)). A difference array (+1 at s0, -1 after s1) prefix-summed only over the
    lines that hold an edge: a tile lattice has ~2 per tile row, few of the image's lines."""
    inside = (s1 >= 0) & (s0 < length)
    ok0, ok1 = inside & (e0 >= 0) & (e0 < n), inside & (e1 >= 0) & (e1 < n)
    at_line = np.concatenate([e0[ok0], e1[ok1]])
    start = np.clip(np.concatenate([s0[ok0], s0[ok1]]), 0, length)
    stop = np.clip(np.concatenate([s1[ok0], s1[ok1]]) + 1, 0, length)
    lines, row = np.unique(at_line, return_inverse=True)
    diff = np.zeros((lines.size, length + 1), dtype=np.int32)
    np.add.at(diff, (row, start), 1)
    np.add.at(diff, (row, stop), -1)
    return lines, np.cumsum(diff, axis=1)[:, :length] > 0


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Write an (H, W, 3|4) or (H, W) uint8 image as PNG, atomically (temporary file in the
    same folder, then ``os.replace``). Creates the parent folder."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 image, got shape {arr.shape} dtype {arr.dtype}")
    # zlib level 1, RLE strategy, SUB filter (OpenCV's fast settings): 2.8x faster than PIL
    # at level 1 on a 2048 px QC image (64 vs 180 ms), ~13% larger, the same pixels
    data = imagecodecs.png_encode(np.ascontiguousarray(arr), level=1, strategy=3, filter=16)
    atomic_write_bytes(Path(path), bytes(data))
