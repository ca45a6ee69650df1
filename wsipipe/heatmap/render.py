"""Pure rendering of per-tile scores: normalisation, colour maps, tile splatting, overlays.

Every function takes numpy arrays and returns numpy arrays; nothing reads or writes files.

Geometry convention (shared by the overlay PNG and the pyramidal TIFF): a tile whose top-left
is (x, y) in level-0 px with footprint ``size`` level-0 px covers the half-open square
[x, x + size) x [y, y + size). An output image of ``downsample`` level-0 px per pixel has
pixel (i, j) centred at level-0 ((i + 0.5) * downsample, (j + 0.5) * downsample); the pixel
belongs to every tile that contains its centre. Pixels covered by several (overlapping) tiles
show the mean of their values; pixels covered by none are NaN ("no tile": not coloured).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from wsipipe.errors import ConfigError
from wsipipe.heatmap.grid import GridImage

NORMALISATIONS = ("rank", "percentile", "minmax")

# Colour maps as per-channel (position, value) anchors in [0, 1], linearly interpolated.
Anchors = tuple[tuple[float, float], ...]
_JET: tuple[Anchors, Anchors, Anchors] = (
    ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
)


def _channels(*points: tuple[float, float, float, float]) -> tuple[Anchors, Anchors, Anchors]:
    """(position, r, g, b) anchors -> per-channel anchors."""
    r = tuple((p[0], p[1]) for p in points)
    g = tuple((p[0], p[2]) for p in points)
    b = tuple((p[0], p[3]) for p in points)
    return r, g, b


_VIRIDIS = _channels(
    (0.0, 0.267, 0.005, 0.329),
    (0.125, 0.278, 0.173, 0.478),
    (0.25, 0.231, 0.318, 0.545),
    (0.375, 0.173, 0.443, 0.557),
    (0.5, 0.129, 0.565, 0.553),
    (0.625, 0.153, 0.678, 0.506),
    (0.75, 0.361, 0.784, 0.388),
    (0.875, 0.667, 0.863, 0.196),
    (1.0, 0.993, 0.906, 0.144),
)
_INFERNO = _channels(
    (0.0, 0.001, 0.0, 0.014),
    (0.125, 0.133, 0.047, 0.298),
    (0.25, 0.341, 0.063, 0.431),
    (0.375, 0.541, 0.133, 0.416),
    (0.5, 0.735, 0.216, 0.330),
    (0.625, 0.890, 0.349, 0.200),
    (0.75, 0.978, 0.549, 0.039),
    (0.875, 0.976, 0.788, 0.196),
    (1.0, 0.988, 1.0, 0.643),
)
_GRAY = _channels((0.0, 0.0, 0.0, 0.0), (1.0, 1.0, 1.0, 1.0))
COLORMAPS: dict[str, tuple[Anchors, Anchors, Anchors]] = {
    "jet": _JET,
    "viridis": _VIRIDIS,
    "inferno": _INFERNO,
    "gray": _GRAY,
}


# ---- scores ---------------------------------------------------------------------------------


def score_ranks(scores: np.ndarray) -> np.ndarray:
    """(N,) int64 ranks, 1 = highest score; ties keep the tile order (stable)."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    ranks = np.empty(len(s), dtype=np.int64)
    ranks[order] = np.arange(1, len(s) + 1)
    return ranks


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices (into ``scores``) of the k highest scores, best first (stable for ties)."""
    s = np.asarray(scores, dtype=np.float64)
    return np.argsort(-s, kind="stable")[: max(0, int(k))]


def normalise_scores(
    scores: np.ndarray, method: str = "rank", low: float = 1.0, high: float = 99.0
) -> np.ndarray:
    """Map raw scores (N,) to [0, 1] (float32) for colouring.

    ``rank``: (rank from the bottom) / (N - 1), ties get their mean rank -- a uniform spread
    whatever the score distribution (softmax scores are ~1/N and very skewed).
    ``percentile``: linear between the ``low`` and ``high`` percentiles, clipped.
    ``minmax``: linear between min and max. A constant input maps to 0.5 (1.0 for N = 1).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be (N,), got {s.shape}")
    if method not in NORMALISATIONS:
        raise ConfigError(
            f"heatmap: normalise = {method!r} is not one of {', '.join(NORMALISATIONS)}"
        )
    n = len(s)
    if n == 0:
        return np.zeros(0, np.float32)
    if n == 1:
        return np.ones(1, np.float32)
    if method == "rank":
        return ((rankdata(s) - 1.0) / (n - 1)).astype(np.float32)
    if method == "percentile":
        if not 0.0 <= low < high <= 100.0:
            raise ConfigError(
                f"heatmap: percentiles ({low}, {high}) must satisfy 0 <= low < high <= 100"
            )
        lo, hi = np.percentile(s, [low, high])
    else:
        lo, hi = float(s.min()), float(s.max())
    if not hi > lo:
        return np.full(n, 0.5, np.float32)
    return np.clip((s - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


# ---- colour -------------------------------------------------------------------------------


def colormap_lut(name: str, n: int = 256) -> np.ndarray:
    """(n, 3) uint8 lookup table of a colour map (``jet``, ``viridis``, ``inferno``, ``gray``)."""
    if name not in COLORMAPS:
        raise ConfigError(f"heatmap: colormap = {name!r} is not one of {', '.join(COLORMAPS)}")
    x = np.linspace(0.0, 1.0, n)
    lut = np.stack(
        [np.interp(x, [p for p, _ in ch], [v for _, v in ch]) for ch in COLORMAPS[name]], axis=1
    )
    return np.round(lut * 255.0).astype(np.uint8)


def value_indices(values: np.ndarray, n: int = 256) -> np.ndarray:
    """Values in [0, 1] (NaN allowed, mapped to 0) -> LUT indices 0..n-1 (int)."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
    return np.clip(np.rint(v * (n - 1)), 0, n - 1).astype(np.intp)


def colorize(values: np.ndarray, lut: np.ndarray, background: Sequence[int]) -> np.ndarray:
    """(h, w) values in [0, 1] with NaN = no tile -> (h, w, 3) uint8 colours."""
    out = lut[value_indices(values, len(lut))]
    out[np.isnan(values)] = np.asarray(background, dtype=np.uint8)
    return out


# ---- geometry -----------------------------------------------------------------------------


def tile_spans(coords: np.ndarray, size_level0: float, downsample: float) -> np.ndarray:
    """Pixel extent of each tile in an image of ``downsample`` level-0 px per px.

    coords (N, 2) level-0 (x, y) top-left; returns (N, 4) int64 (x0, y0, x1, y1), half-open,
    by the pixel-centre rule of the module docstring (empty when a tile covers no centre).
    """
    c = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if not downsample > 0 or not size_level0 > 0:
        raise ValueError(f"downsample ({downsample}) and tile size ({size_level0}) must be > 0")
    lo = np.ceil(c / downsample - 0.5)
    hi = np.ceil((c + size_level0) / downsample - 0.5)
    return np.concatenate([lo, hi], axis=1).astype(np.int64)


def splat_mean(
    spans: np.ndarray, values: np.ndarray, region: tuple[int, int, int, int]
) -> np.ndarray:
    """Mean value of the tiles covering each pixel of ``region`` = (x, y, w, h) in px.

    spans (N, 4) from :func:`tile_spans`, values (N,). Returns (h, w) float32, NaN where no
    tile covers the pixel. Exact for any overlap: box sums via 2-D difference arrays, so the
    cost is O(N + w * h) and memory a few (h + 1) x (w + 1) arrays.
    """
    rx, ry, w, h = (int(v) for v in region)
    sp = np.asarray(spans, dtype=np.int64).reshape(-1, 4)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    x0 = np.clip(sp[:, 0] - rx, 0, w)
    x1 = np.clip(sp[:, 2] - rx, 0, w)
    y0 = np.clip(sp[:, 1] - ry, 0, h)
    y1 = np.clip(sp[:, 3] - ry, 0, h)
    keep = (x1 > x0) & (y1 > y0) & np.isfinite(v)
    if not keep.any():
        return np.full((h, w), np.nan, np.float32)
    x0, x1, y0, y1, v = x0[keep], x1[keep], y0[keep], y1[keep], v[keep]
    stride = w + 1
    idx = np.concatenate([y0 * stride + x0, y0 * stride + x1, y1 * stride + x0, y1 * stride + x1])
    size = (h + 1) * stride
    sign = np.concatenate([np.ones_like(v), -np.ones_like(v), -np.ones_like(v), np.ones_like(v)])
    total = np.bincount(idx, weights=sign * np.tile(v, 4), minlength=size)
    count = np.bincount(idx, weights=sign, minlength=size)
    total = total.reshape(h + 1, stride).cumsum(0).cumsum(1)[:h, :w]
    count = np.rint(count.reshape(h + 1, stride).cumsum(0).cumsum(1)[:h, :w])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return mean.astype(np.float32)


def _box_radius(sigma_px: float) -> int:
    """Radius r of the box (width 2r + 1) whose 3-fold repetition has std ~ sigma_px."""
    return round((float(np.sqrt(4.0 * sigma_px * sigma_px + 1.0)) - 1.0) / 2.0)


def smooth_valid(values: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian-like smoothing of an (h, w) map with NaN holes (normalised convolution).

    Three passes of a box filter per axis (std ~ ``sigma_px``; O(1) per pixel whatever the
    sigma; zeros beyond the edges). Only valid pixels contribute and only valid pixels get a
    value (NaN stays NaN), so the smoothing never bleeds colour onto glass.
    """
    from scipy.ndimage import uniform_filter1d

    r = _box_radius(sigma_px) if sigma_px > 0 else 0
    if r < 1:
        return values
    valid = ~np.isnan(values)
    # numerator (masked values) and denominator (valid weights) filtered together: (2, h, w);
    # running box means (scipy), so both carry the same factor (2r + 1)^-6
    acc = np.stack([np.where(valid, values, 0.0), valid]).astype(np.float64)
    for axis in (-1, -2):
        for _ in range(3):
            acc = uniform_filter1d(acc, 2 * r + 1, axis=axis, mode="constant", cval=0.0)
    num, den = acc[0], acc[1]
    enough = den * float(2 * r + 1) ** 6 > 0.5  # at least half a valid pixel's weight
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(valid & enough, num / np.maximum(den, 1e-300), np.nan)
    return out.astype(np.float32)


def smoothing_margin(sigma_px: float) -> int:
    """Halo (px) a region needs so that smoothing inside it equals smoothing the whole map."""
    r = _box_radius(sigma_px) if sigma_px > 0 else 0
    return 0 if r < 1 else 3 * r + 1


def render_values(
    spans: np.ndarray,
    values: np.ndarray,
    region: tuple[int, int, int, int],
    sigma_px: float = 0.0,
) -> np.ndarray:
    """(h, w) float32 map of ``region`` (x, y, w, h): tile means, optionally smoothed.

    With smoothing, the region is rendered with a halo and cropped, so adjacent regions
    (stripes, TIFF tiles) join seamlessly.
    """
    rx, ry, w, h = region
    m = smoothing_margin(sigma_px)
    if m == 0:
        return splat_mean(spans, values, region)
    big = splat_mean(spans, values, (rx - m, ry - m, w + 2 * m, h + 2 * m))
    return smooth_valid(big, sigma_px)[m : m + h, m : m + w]


# ---- overlay --------------------------------------------------------------------------------


def _blend_runs(
    out: np.ndarray,
    y: int,
    cells: np.ndarray,
    counts: np.ndarray,
    keep: np.ndarray,
    colour: np.ndarray,
    tissue: np.ndarray | None,
    buf: np.ndarray,
) -> None:
    """:func:`blend_overlay` on pixel rows y.. that come in runs sharing their LUT indices
    (cells (r, w), counts (r,)): the fixed-point factors are looked up once per run (r rows,
    not every pixel) and broadcast over the run's rows."""
    if not (cells >= 0).any():
        return
    k_rows = np.take(keep, cells, axis=0, mode="wrap")  # (r, w, 1)
    c_rows = np.take(colour, cells, axis=0, mode="wrap")  # (r, w, 3)
    for k, c, n in zip(k_rows, c_rows, counts.tolist(), strict=True):
        where = True if tissue is None else tissue[y : y + n, :, None]
        _blend_into(out[y : y + n], k, c, buf[:n], where)
        y += n


def _blend_into(
    base: np.ndarray, keep: np.ndarray, colour: np.ndarray, buf: np.ndarray, where: Any = True
) -> None:
    """base (n, w, 3) uint8 <- (base * keep + colour) >> 8 (uint16 fixed point, see
    :func:`blend_overlay`; <= 255 by construction) where ``where``; ``buf``: scratch."""
    blended = np.multiply(base, keep, out=buf, dtype=np.uint16)
    blended += colour
    blended >>= 8
    np.copyto(base, blended, casting="unsafe", where=where)


def blend_overlay(
    thumb: np.ndarray,
    spans: np.ndarray,
    values: np.ndarray,
    lut: np.ndarray,
    alpha: float = 0.5,
    sigma_px: float = 0.0,
    tissue: np.ndarray | None = None,
    stripe: int = 512,
    grid: GridImage | None = None,
) -> np.ndarray:
    """Alpha-blend colour-mapped tile values over a thumbnail, only where tiles (and tissue) are.

    thumb (h, w, 3) uint8; spans in thumbnail px (:func:`tile_spans` with the thumbnail's
    downsample); values (N,) in [0, 1]; tissue (h, w) bool or None. Rendered in row stripes
    so temporary memory is O(stripe * w), whatever the slide size. Returns (h, w, 3) uint8.
    ``grid``: the tiles' :class:`~wsipipe.heatmap.grid.GridImage` for this thumbnail (tiles
    on a regular lattice, no smoothing): the same image by per-pixel lookup, not splatting.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"heatmap: alpha = {alpha} must be in [0, 1]")
    h, w = thumb.shape[:2]
    if tissue is not None and tissue.shape != (h, w):
        raise ValueError(f"tissue mask {tissue.shape} does not match thumbnail {(h, w)}")
    if grid is not None and (len(grid.rows), len(grid.cols)) != (h, w):
        raise ValueError(f"grid image {(len(grid.rows), len(grid.cols))} != thumbnail {(h, w)}")
    n_lut = len(lut)
    # pixel = (thumb * keep + colour) >> 8 in uint16 fixed point with 8 fraction bits: within
    # one grey level of thumb * (1 - alpha) + lut * alpha, at half the memory traffic of
    # float32. keep = round(256 (1 - alpha)); colour = lut * (256 - keep) + 128 (rounding);
    # the weights sum to 256, so the largest value is 255 * 256 + 128 (no overflow).
    # Index -1 (the extra last row, reached by mode="wrap"): keep 256, colour 128, i.e. the
    # thumbnail as it is.
    k_fix = round(256 * (1.0 - alpha))
    keep = np.full((n_lut + 1, 1), 256, np.uint16)  # one factor for the 3 channels
    keep[:n_lut] = k_fix
    colour = np.full((n_lut + 1, 3), 128, np.uint16)
    colour[:n_lut] = np.asarray(lut, np.uint16) * (256 - k_fix) + 128
    cell_index = None
    if grid is not None:
        # LUT index of each (row class, column class); -1: no tile or no finite value there
        cls = grid.table(values)
        cell_index = np.where(np.isnan(cls), -1, value_indices(cls, n_lut)).astype(np.int16)
    out = np.array(thumb[..., :3], dtype=np.uint8, copy=True)
    # per-pixel buffers allocated once and reused by every stripe: fresh multi-MB temporaries
    # per stripe cost more in page faults than the arithmetic itself
    rows = min(stripe, h)
    k_buf = np.empty((rows, w, 1), np.uint16)
    c_buf = np.empty((rows, w, 3), np.uint16)
    f_buf = np.empty((rows, w, 3), np.uint16)
    for y in range(0, h, stripe):
        sh = min(stripe, h - y)
        if cell_index is not None and grid is not None:
            cells, counts = grid.runs(cell_index, y, y + sh)  # (r, w) distinct pixel rows
            if 2 * len(counts) <= sh:  # runs of 2+ identical rows: blend a run at a time
                _blend_runs(out, y, cells, counts, keep, colour, tissue, f_buf)
                continue
            index = np.repeat(cells, counts, axis=0)
        else:
            vals = render_values(spans, values, (0, y, w, sh), sigma_px)
            index = value_indices(vals, n_lut)
            index[np.isnan(vals)] = -1
        if tissue is not None:
            index = np.where(tissue[y : y + sh], index, -1)
        if not (index >= 0).any():
            continue
        k = np.take(keep, index, axis=0, out=k_buf[:sh], mode="wrap")  # (sh, w, 1)
        c = np.take(colour, index, axis=0, out=c_buf[:sh], mode="wrap")  # (sh, w, 3)
        _blend_into(out[y : y + sh], k, c, f_buf[:sh])
    return out
