"""Composing a real-texture slide: quilted texture, soft masks, glass, colour jitter.

Everything here works at the cohort's *working* resolution (``work_mpp``, the coarsest source
resolution) and returns an (H, W, 3) uint8 image at that resolution; :mod:`wsipipe.synth.real`
resamples the whole composed slide to the cohort's mpp in one step, so normal texture, tumour
foci and their borders all pass through the same resampling and the same colour jitter.

Quilting: a canvas is tiled by random crops (:class:`~wsipipe.synth.real_sources.CropSampler`,
random flips and 90-degree turns) on a grid of stride ``patch - overlap`` with a random phase;
neighbouring crops are feathered across the overlap with smoothstep weights and normalised by
the summed weight, which softens the seams. Normal background and tumour foci are quilted by
the same function with the same patch size, so seams are no cue to the class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wsipipe.synth.layout import Blob
from wsipipe.synth.real_sources import CropSampler

__all__ = ["ColourJitter", "compose_slide", "quilt"]

F32 = np.float32


@dataclass(frozen=True)
class ColourJitter:
    """Per-slide stain variation, applied to the whole composed slide in optical density:
    OD' = density * (OD @ mix.T), with OD = -ln((RGB + 1) / 256)."""

    mix: tuple[tuple[float, ...], ...]  # 3x3, near the identity
    density: float
    glass: tuple[float, float, float]  # RGB of empty glass before the jitter

    @staticmethod
    def draw(rng: np.random.Generator, strength: float) -> ColourJitter:
        """A random jitter; ``strength`` 0 gives none (identity, glass 242)."""
        mix = np.eye(3) * (1.0 + strength * rng.uniform(-0.12, 0.12, 3))
        mix += strength * rng.normal(0.0, 0.03, (3, 3)) * (1.0 - np.eye(3))
        density = 1.0 + strength * float(rng.uniform(-0.15, 0.15))
        glass = 242.0 + strength * (rng.normal(0.0, 1.5) + rng.normal(0.0, 1.0, 3))
        return ColourJitter(
            mix=tuple(tuple(float(v) for v in row) for row in mix),
            density=density,
            glass=(float(glass[0]), float(glass[1]), float(glass[2])),
        )

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) float32 in 0..255 -> (H, W, 3) uint8."""
        od = -np.log((rgb + F32(1.0)) * F32(1.0 / 256.0))
        m = np.asarray(self.mix, F32).T * F32(self.density)
        out = F32(256.0) * np.exp(-(od @ m)) - F32(1.0)
        return np.clip(out + F32(0.5), 0, 255).astype(np.uint8)


def _edge_ramp(patch: int, border: int) -> np.ndarray:
    """(patch, patch) float32: 1 inside, smoothstep down to ~0 over ``border`` px at the edges
    (so no crop ends in a hard line)."""
    i = (np.arange(patch, dtype=np.float64) + 0.5) / max(border, 1)
    t = np.clip(np.minimum(i, i[::-1]), 0.0, 1.0)
    r = t * t * (3.0 - 2.0 * t) + 1e-6
    return (r[:, None] * r[None, :]).astype(F32)


def _cut_noise(rng: np.random.Generator, n: int, patch: int, cells: int = 4) -> np.ndarray:
    """(n, patch, patch) float32 smooth random fields (bilinear upsampling of a
    ``cells`` x ``cells`` standard-normal grid), one per crop."""
    coarse = rng.normal(0.0, 1.0, (n, cells, cells)).astype(F32)
    t = np.linspace(0.0, cells - 1.0, patch, dtype=F32)
    i0 = np.minimum(t.astype(np.int64), cells - 2)
    f = (t - i0)[None, :]
    rows = coarse[:, i0] * (F32(1.0) - f[..., None]) + coarse[:, i0 + 1] * f[..., None]
    return rows[:, :, i0] * (F32(1.0) - f) + rows[:, :, i0 + 1] * f


def quilt(
    sampler: CropSampler,
    height: int,
    width: int,
    rng: np.random.Generator,
    seam: float,
    wiggle: float = 0.35,
) -> np.ndarray:
    """(height, width, 3) float32 texture quilted from random crops of ``sampler``.

    A noisy Voronoi mosaic: crop centres on a grid of spacing ``cell = patch // 2`` (random
    phase, each centre moved by up to cell / 3), every pixel a weighted mean of the crops
    over it with weights ``exp(s * (wiggle * noise - d / cell))`` -- d the distance to the
    crop's centre, noise a smooth random field per crop, s = cell / (2 seam) -- so each
    crop shows an irregular piece about a cell across, blending into its neighbours over
    about ``seam`` px. No straight seams and no grid of blocks.
    """
    p = sampler.patch
    cell = p // 2
    jit = cell // 3
    oy, ox = (int(v) for v in rng.integers(0, cell, 2))
    cys = np.arange(-oy, height + cell, cell)
    cxs = np.arange(-ox, width + cell, cell)
    n = len(cys) * len(cxs)
    crops = sampler.sample(rng, n)
    noise = _cut_noise(rng, n, p)
    shifts = rng.integers(-jit, jit + 1, (n, 2))
    c = (p - 1) / 2.0
    yy, xx = np.mgrid[0:p, 0:p].astype(F32)
    dist = np.sqrt((yy - F32(c)) ** 2 + (xx - F32(c)) ** 2) / F32(cell)  # (p, p)
    log_ramp = np.log(_edge_ramp(p, max(2, p // 16)))
    sharp = F32(cell / (2.0 * max(seam, 0.5)))
    # log-weights of each crop at its pixels; normalised by the running maximum below
    pad = p + jit  # crops reach p + jit px beyond the canvas on either side
    num = np.zeros((height + 2 * pad, width + 2 * pad, 3), F32)
    den = np.zeros((height + 2 * pad, width + 2 * pad, 1), F32)
    k = 0
    for cy in cys:
        for cx in cxs:
            y = int(cy + shifts[k, 0] - p // 2)
            x = int(cx + shifts[k, 1] - p // 2)
            logw = sharp * (F32(wiggle) * noise[k] - dist) + log_ramp
            w = np.exp(logw + sharp * F32(0.5))[..., None]  # +0.5: keep values near 1
            sl = (slice(y + pad, y + pad + p), slice(x + pad, x + pad + p))
            num[sl] += w * crops[k]
            den[sl] += w
            k += 1
    win = (slice(pad, pad + height), slice(pad, pad + width))
    return num[win] / np.maximum(den[win], F32(1e-30))


def _alpha(blob: Blob, xs: np.ndarray, ys: np.ndarray, edge_px: float) -> np.ndarray:
    """Soft inside-mask of a blob: 0.5 exactly on its boundary, ramping over ``edge_px``."""
    sd = blob.signed_distance(xs[None, :], ys[:, None])
    return np.clip(F32(0.5) + sd / F32(edge_px), 0.0, 1.0).astype(F32)


def _coarse_alpha(
    blobs: tuple[Blob, ...], xs: np.ndarray, ys: np.ndarray, edge_px: float, step: int = 4
) -> np.ndarray:
    """(len(ys), len(xs)) soft union of blobs, from their max signed distance computed at
    every ``step``-th point and bilinearly interpolated (exact at those points)."""
    h, w = len(ys), len(xs)
    iy = np.unique(np.append(np.arange(0, h, step), h - 1))
    ix = np.unique(np.append(np.arange(0, w, step), w - 1))
    sd = np.full((len(iy), len(ix)), -np.inf, F32)
    for blob in blobs:
        np.maximum(sd, blob.signed_distance(xs[ix][None, :], ys[iy][:, None]), out=sd)
    # separable linear interpolation to every pixel, rows then columns
    fy = np.interp(np.arange(h), iy, np.arange(len(iy))).astype(F32)
    fx = np.interp(np.arange(w), ix, np.arange(len(ix))).astype(F32)
    y0 = np.minimum(fy.astype(np.int64), len(iy) - 2)
    x0 = np.minimum(fx.astype(np.int64), len(ix) - 2)
    ty, tx = (fy - y0)[:, None], (fx - x0)[None, :]
    rows = sd[y0] * (F32(1.0) - ty) + sd[y0 + 1] * ty
    full = rows[:, x0] * (F32(1.0) - tx) + rows[:, x0 + 1] * tx
    return np.clip(F32(0.5) + full / F32(edge_px), 0.0, 1.0).astype(F32)


def _window(
    blob: Blob, scale: tuple[float, float], height: int, width: int, margin: float
) -> tuple[int, int, int, int] | None:
    """Work-px window (x0, y0, x1, y1) around a blob's bbox (level-0 px / ``scale``)."""
    sx, sy = scale
    bx0, by0, bx1, by1 = blob.bbox(margin)
    x0, y0 = max(0, math.floor(bx0 / sx)), max(0, math.floor(by0 / sy))
    x1, y1 = min(width, math.ceil(bx1 / sx) + 1), min(height, math.ceil(by1 / sy) + 1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def compose_slide(
    size: tuple[int, int],
    scale: tuple[float, float],
    sections: tuple[Blob, ...],
    holes: tuple[Blob, ...],
    foci: tuple[Blob, ...],
    normal: CropSampler,
    tumour: CropSampler,
    jitter: ColourJitter,
    rng: np.random.Generator,
    seam: float,
    tissue_edge: float,
    focus_edge: float,
) -> np.ndarray:
    """(h, w, 3) uint8 slide at the working resolution, ``size = (w, h)``.

    ``scale``: level-0 px per working px along x and y (the blobs are in level-0 px);
    ``tissue_edge`` / ``focus_edge``: widths in level-0 px of the soft ramps at the tissue /
    hole edges and at the tumour foci's edges; ``seam``: see :func:`quilt` (working px).
    """
    w, h = size
    # level-0 coordinates of the working pixels' centres
    xs = (np.arange(w, dtype=F32) + F32(0.5)) * F32(scale[0]) - F32(0.5)
    ys = (np.arange(h, dtype=F32) + F32(0.5)) * F32(scale[1]) - F32(0.5)
    # the sections' signed distance is smooth: evaluated on a 4x coarser grid, upsampled
    tissue = _coarse_alpha(sections, xs, ys, tissue_edge)
    for hole in holes:
        win = _window(hole, scale, h, w, tissue_edge)
        if win is not None:
            x0, y0, x1, y1 = win
            a = _alpha(hole, xs[x0:x1], ys[y0:y1], tissue_edge)
            tissue[y0:y1, x0:x1] *= F32(1.0) - a
    # everything but the foci is drawn first: a positive slide and its negative twin (same
    # seed, no foci) differ only where the foci are
    img = quilt(normal, h, w, rng, seam)
    glass = np.asarray(jitter.glass, F32) + rng.normal(0.0, 1.0, (h, w, 1)).astype(F32)
    for focus in foci:
        win = _window(focus, scale, h, w, focus_edge)
        if win is None:
            continue
        x0, y0, x1, y1 = win
        a = _alpha(focus, xs[x0:x1], ys[y0:y1], focus_edge)[..., None]
        tex = quilt(tumour, y1 - y0, x1 - x0, rng, seam)
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (F32(1.0) - a) + tex * a
    t = tissue[..., None]
    img = glass * (F32(1.0) - t) + img * t
    return jitter.apply(img)
