"""Nuclei for the procedural renderer: hashed slide-wide point sets, stamped discs.

All lengths are level-0 px (micrometre constants are divided by the slide's mpp); arrays
are float32. See :mod:`wsipipe.synth.tissue_render` for how they are composited.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from wsipipe.synth.noise import hash_uniform

__all__ = ["NORMAL_P", "TUMOUR_P", "Nuclei", "candidates", "mean_field", "stamp"]

F32 = np.float32

NORMAL_CELL_UM = 17.0  # grid pitch of normal nuclei
NORMAL_P = 0.5  # fraction of normal grid cells holding a nucleus
TUMOUR_CELL_UM = 11.5  # grid pitch of tumour nuclei
TUMOUR_P = 0.8


class Nuclei:
    """Attributes of a batch of candidate nuclei (1-D float32 arrays, level-0 px)."""

    def __init__(self, n: int) -> None:
        z = np.zeros(n, F32)
        self.cx, self.cy, self.a, self.b, self.angle = z, z.copy(), z.copy(), z.copy(), z.copy()
        self.e2, self.e3, self.intensity, self.rim = z.copy(), z.copy(), z.copy(), z.copy()

    def select(self, keep: np.ndarray) -> Nuclei:
        out = Nuclei(0)
        for k, v in vars(self).items():
            setattr(out, k, v[keep])
        return out


def candidates(
    seed: int,
    mpp: float,
    region: tuple[float, float, float, float],
    tumour: bool,
    fibre_angle: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> tuple[Nuclei, np.ndarray, np.ndarray]:
    """Candidate nuclei near ``region`` (x0, y0, x1, y1 level-0 px), one per grid cell.

    Normal nuclei sit on a jittered grid of pitch 17 um (regular spacing); tumour nuclei on
    a fully jittered 11.5 um grid (crowded). Every attribute is a hash of (seed, cell), so a
    nucleus is the same whichever region asks for it. ``fibre_angle(x, y)`` orients the
    spindle-shaped normal nuclei. Returns (nuclei, u_accept, u_kind), two uniforms per
    candidate for the caller's acceptance test.
    """

    def px(um: float) -> float:
        return um / mpp

    x0, y0, x1, y1 = region
    pitch = px(TUMOUR_CELL_UM if tumour else NORMAL_CELL_UM)
    reach = px(12.0)
    i = np.arange(math.floor((x0 - reach) / pitch), math.floor((x1 + reach) / pitch) + 1)
    j = np.arange(math.floor((y0 - reach) / pitch), math.floor((y1 + reach) / pitch) + 1)
    ii, jj = (v.ravel() for v in np.meshgrid(i, j))
    base = 100 if tumour else 0

    def u(k: int) -> np.ndarray:
        return hash_uniform(seed, ii, jj, base + k)

    n = Nuclei(ii.size)
    if tumour:
        n.cx = ((ii + u(0)) * pitch).astype(F32)
        n.cy = ((jj + u(1)) * pitch).astype(F32)
        big = u(12) < 0.06
        a = px(3.8) + px(2.0) * u(5) + big * px(2.5)
        elong = 1.0 + 0.6 * u(6)
        n.a, n.b = a.astype(F32), (a / elong).astype(F32)
        n.angle = (u(7) * np.pi).astype(F32)
        n.e2 = (0.13 * (2 * u(8) - 1)).astype(F32)
        n.e3 = (0.11 * (2 * u(9) - 1)).astype(F32)
        n.intensity = (1.25 + 0.55 * u(10) + 0.3 * big).astype(F32)
        n.rim = (0.45 * u(11)).astype(F32)
    else:
        n.cx = ((ii + 0.2 + 0.6 * u(0)) * pitch).astype(F32)
        n.cy = ((jj + 0.2 + 0.6 * u(1)) * pitch).astype(F32)
        spindle = u(4) < 0.35
        fib_angle = fibre_angle(n.cx, n.cy) + (u(7) - 0.5) * 0.5
        ra = px(2.5) + px(0.8) * u(5)
        n.a = np.where(spindle, px(4.5) + px(2.0) * u(5), ra).astype(F32)
        n.b = np.where(spindle, px(1.3) + px(0.5) * u(6), ra * (0.82 + 0.18 * u(6))).astype(F32)
        n.angle = np.where(spindle, fib_angle, u(7) * np.pi).astype(F32)
        n.intensity = (1.35 + 0.35 * u(8)).astype(F32)
        n.rim = np.zeros(ii.size, F32)
    return n, u(2), u(3)


def stamp(n: Nuclei, x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased nuclei on a (h, w) canvas at downsample 1: (coverage, H density)."""
    if n.cx.size == 0:
        return np.zeros((h, w), F32), np.zeros((h, w), F32)
    reach = float(np.max(np.maximum(n.a, n.b) * (1.0 + np.abs(n.e2) + np.abs(n.e3))))
    r = math.ceil(reach) + 1
    off = np.arange(-r, r + 1, dtype=np.int64)
    bx = np.floor(n.cx).astype(np.int64)
    by = np.floor(n.cy).astype(np.int64)
    dx = ((bx[:, None] + off) - n.cx[:, None]).astype(F32)  # (n, S)
    dy = ((by[:, None] + off) - n.cy[:, None]).astype(F32)
    ca, sa = np.cos(n.angle)[:, None, None], np.sin(n.angle)[:, None, None]
    p = (dx[:, None, :] * ca + dy[:, :, None] * sa) / n.a[:, None, None]
    q = (dy[:, :, None] * ca - dx[:, None, :] * sa) / n.b[:, None, None]
    rho = np.sqrt(p * p + q * q) + F32(1e-6)
    c = p / rho
    bound = 1.0 + n.e2[:, None, None] * (2 * c * c - 1) + n.e3[:, None, None] * (4 * c * c - 3) * c
    rmean = np.sqrt(n.a * n.b)[:, None, None]
    alpha = np.clip((bound - rho) * rmean + F32(0.5), 0.0, 1.0)
    rel = rho / bound
    profile = n.intensity[:, None, None] * (1.0 + n.rim[:, None, None] * (rel * rel - 0.55))
    ix = bx[:, None] + off - x0  # (n, S) columns
    iy = by[:, None] + off - y0  # (n, S) rows
    valid = (alpha > 0) & ((ix >= 0) & (ix < w))[:, None, :] & ((iy >= 0) & (iy < h))[:, :, None]
    flat = (iy[:, :, None] * w + ix[:, None, :])[valid]
    cov = np.bincount(flat, alpha[valid], minlength=h * w)
    dens = np.bincount(flat, (alpha * profile)[valid], minlength=h * w)
    return cov.reshape(h, w).astype(F32), dens.reshape(h, w).astype(F32)


def mean_field(t: np.ndarray, m: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Expected nuclear coverage and H density per px, given tissue t and tumour m fractions.

    Used instead of :func:`stamp` at downsample >= 1.5, where single nuclei are sub-pixel;
    matches the block average of the stamped level 0 in mean colour.
    """

    def px(um: float) -> float:
        return um / mpp

    area_n = 0.35 * math.pi * px(5.5) * px(1.55) + 0.65 * math.pi * px(2.9) ** 2 * 0.91
    cov_n = NORMAL_P * area_n / px(NORMAL_CELL_UM) ** 2
    a_t = px(4.8) + 0.06 * px(2.5)
    cov_t = min(0.95, TUMOUR_P * math.pi * a_t * a_t / 1.3 / px(TUMOUR_CELL_UM) ** 2)
    cov = (F32(cov_n) * (t - m) + F32(cov_t) * m).astype(F32)
    hn = F32(cov_n * 1.52) * (t - m) + F32(cov_t * 1.55) * m
    return cov, hn.astype(F32)
