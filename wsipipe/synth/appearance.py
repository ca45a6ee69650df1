"""Matching the appearance of texture sources: stain density per channel, and sharpness.

Two real sources differ in stain batch and in scanner optics; left alone, a tile's colour or
blur would tell its source -- and so the class -- apart, and a texture check would measure
that artefact. Both are matched to a reference here, on pixel arrays.

* Stain: in optical density, OD = -ln((RGB + 1) / 256), a stain's absorbance scales with its
  amount (Beer-Lambert), so each channel's OD is multiplied by the ratio of the reference's
  mean tissue OD to the source's (:func:`od_gains`, :func:`apply_od_gains`). Glass (OD ~ 0)
  stays glass and no colour outside the sources' own range appears. (Macenko stain
  transfer was tried: the tumour source's weak haematoxylin gives it a degenerate H-E plane
  and the result was over-saturated; a mean shift in L*a*b* tints glass and clefts cyan.)
* Sharpness: the share of fine-scale energy, ``var(g - G1 g) / var(g - G4 g)`` over tissue
  (g the grey level, G_s a Gaussian blur of s px), is independent of contrast. Sharper pools
  are blurred with the Gaussian sigma (found by bisection) that brings theirs down to the
  blurriest pool's.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from wsipipe.errors import ConfigError

__all__ = ["apply_od_gains", "blur", "fine_energy", "mean_od", "od_gains", "sharpness_sigma"]

F32 = np.float32
_MAX_STAT_PX = 1 << 21  # pixels a statistic is computed from (a strided subsample beyond)


def _od(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> float32 optical density."""
    return -np.log((rgb.astype(F32) + F32(1.0)) * F32(1.0 / 256.0))


def mean_od(pixels: np.ndarray, name: str = "texture") -> np.ndarray:
    """(3,) float64 mean optical density of (N, 3) uint8 tissue pixels."""
    px = pixels.reshape(-1, 3)
    if len(px) < 100:
        raise ConfigError(f"{name}: only {len(px)} tissue pixels; the source has too little tissue")
    step = max(1, len(px) // _MAX_STAT_PX)
    return _od(px[::step]).mean(axis=0, dtype=np.float64)


def od_gains(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(3,) per-channel OD gains mapping mean OD ``source`` onto ``reference`` (both (3,))."""
    return np.asarray(reference, np.float64) / np.maximum(np.asarray(source, np.float64), 1e-3)


def apply_od_gains(rgb: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 with each channel's optical density multiplied by ``gains``."""
    if np.allclose(gains, 1.0):
        return rgb
    out = F32(256.0) * np.exp(-_od(rgb) * np.asarray(gains, F32)) - F32(1.0)
    return np.clip(out + F32(0.5), 0, 255).astype(np.uint8)


def blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W, 3) uint8 Gaussian-blurred by ``sigma`` px (0 = unchanged)."""
    if sigma <= 0:
        return rgb
    out = ndimage.gaussian_filter(rgb.astype(F32), (sigma, sigma, 0.0))
    return np.clip(out + F32(0.5), 0, 255).astype(np.uint8)


def fine_energy(
    regions: tuple[np.ndarray, ...], inner: tuple[np.ndarray, ...], sigma: float = 0.0
) -> float:
    """var(g - G1 g) / var(g - G4 g) over the ``inner`` (tissue, away from its edges) masks
    of the regions, after an optional Gaussian blur of ``sigma`` px: the share of fine
    detail, in (0, 1); 0 without tissue."""
    num = den = 0.0
    for rgb, mask in zip(regions, inner, strict=True):
        g = rgb.astype(F32).mean(axis=-1)
        if sigma > 0:
            g = ndimage.gaussian_filter(g, sigma)
        fine = (g - ndimage.gaussian_filter(g, 1.0))[mask]
        mid = (g - ndimage.gaussian_filter(g, 4.0))[mask]
        num += float(np.square(fine, dtype=np.float64).sum())
        den += float(np.square(mid, dtype=np.float64).sum())
    return num / den if den > 0 else 0.0


def sharpness_sigma(
    regions: tuple[np.ndarray, ...],
    inner: tuple[np.ndarray, ...],
    target: float,
    current: float | None = None,
) -> float:
    """Gaussian sigma (px, 0..3, to ~0.01 px) that brings the regions' :func:`fine_energy`
    (``current``, computed when not given) down to ``target``; 0 when they are no sharper."""
    if (current if current is not None else fine_energy(regions, inner)) <= target * 1.01:
        return 0.0
    lo, hi = 0.0, 3.0
    for _ in range(8):
        mid = 0.5 * (lo + hi)
        if fine_energy(regions, inner, mid) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
