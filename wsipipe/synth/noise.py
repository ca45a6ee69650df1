"""Deterministic, seamless noise for procedural slide rendering (pure numpy).

Two kinds of noise, both functions of GLOBAL level-0 coordinates so that any region of a
slide renders the same pixels no matter how the slide is cut into tiles:

* hashed lattice value noise (:func:`value_noise_grid`, :func:`value_noise_points`) for
  smooth large-scale fields (scale >= ~20 px): the lattice values are an integer hash of
  (seed, lattice x, lattice y), so no state is needed;
* periodic textures (:func:`periodic_texture`), band-limited white noise filtered in the
  Fourier domain (hence exactly periodic), sampled by index (cheap) for fine detail such as
  collagen fibres, chromatin or sensor noise.

Arrays are float32; coordinates are level-0 px (x to the right, y down).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

__all__ = [
    "coarse_axis",
    "hash_uniform",
    "periodic_texture",
    "sample_texture",
    "sample_texture_grid",
    "upsample_linear",
    "value_noise_grid",
    "value_noise_points",
]

_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
_PX = np.uint32(0x8DA6B343)
_PY = np.uint32(0xD8163841)
_PS = np.uint32(0xCB1AB31F)
_PK = np.uint32(0x9E3779B9)


def _mix(h: np.ndarray) -> np.ndarray:
    """A 32-bit integer finaliser (xorshift-multiply), elementwise on uint32."""
    h = h ^ (h >> np.uint32(16))
    h = h * _M1
    h = h ^ (h >> np.uint32(15))
    h = h * _M2
    return h ^ (h >> np.uint32(16))


def hash_uniform(seed: int, ix: np.ndarray, iy: np.ndarray, salt: int = 0) -> np.ndarray:
    """Uniform [0, 1) float32 from a hash of (seed, salt, ix, iy); ix/iy int arrays, broadcast."""
    with np.errstate(over="ignore"):
        ax = np.asarray(ix).astype(np.int64).astype(np.uint32)
        ay = np.asarray(iy).astype(np.int64).astype(np.uint32)
        s = np.uint32(seed & 0xFFFFFFFF) * _PS + np.uint32(salt & 0xFFFFFFFF) * _PK
        h = _mix(ax * _PX ^ _mix(ay * _PY ^ s))
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def value_noise_grid(
    seed: int, xs: np.ndarray, ys: np.ndarray, scale: float, salt: int = 0
) -> np.ndarray:
    """Smooth value noise in [-1, 1] on the grid ys x xs (1-D level-0 px) -> (len(ys), len(xs)).

    Lattice spacing ``scale`` px; smoothstep interpolation between hashed lattice values.
    """
    fx = np.asarray(xs, np.float64) / scale
    fy = np.asarray(ys, np.float64) / scale
    ix0 = np.floor(fx).astype(np.int64)
    iy0 = np.floor(fy).astype(np.int64)
    sx = _smooth((fx - ix0).astype(np.float32))
    sy = _smooth((fy - iy0).astype(np.float32))
    lx0, ly0 = int(ix0.min()), int(iy0.min())
    lx = np.arange(lx0, int(ix0.max()) + 2)
    ly = np.arange(ly0, int(iy0.max()) + 2)
    lattice = hash_uniform(seed, lx[None, :], ly[:, None], salt) * 2.0 - 1.0  # (ny, nx)
    cx = ix0 - lx0
    along_x = lattice[:, cx] * (1.0 - sx) + lattice[:, cx + 1] * sx  # (ny, W)
    ry = iy0 - ly0
    out = along_x[ry] * (1.0 - sy)[:, None] + along_x[ry + 1] * sy[:, None]
    return out.astype(np.float32)


def value_noise_points(
    seed: int, xs: np.ndarray, ys: np.ndarray, scale: float, salt: int = 0
) -> np.ndarray:
    """Value noise at scattered points (same field as :func:`value_noise_grid`)."""
    fx = np.asarray(xs, np.float64) / scale
    fy = np.asarray(ys, np.float64) / scale
    ix = np.floor(fx).astype(np.int64)
    iy = np.floor(fy).astype(np.int64)
    sx = _smooth((fx - ix).astype(np.float32))
    sy = _smooth((fy - iy).astype(np.float32))

    def v(dx: int, dy: int) -> np.ndarray:
        return hash_uniform(seed, ix + dx, iy + dy, salt) * 2.0 - 1.0

    top = v(0, 0) * (1.0 - sx) + v(1, 0) * sx
    bottom = v(0, 1) * (1.0 - sx) + v(1, 1) * sx
    return (top * (1.0 - sy) + bottom * sy).astype(np.float32)


def periodic_texture(
    rng: np.random.Generator,
    size: int,
    sigma_along: float,
    sigma_across: float | None = None,
    angle: float = 0.0,
) -> np.ndarray:
    """A (size, size) float32 texture, periodic in both axes, zero mean and unit std.

    White noise low-pass filtered by a Gaussian of std ``sigma_along`` px along direction
    ``angle`` (radians, from the x axis) and ``sigma_across`` px across it (isotropic when
    None). ``sigma_along >> sigma_across`` gives fibre-like streaks along ``angle``.
    """
    if size < 2 or size & (size - 1):
        raise ValueError(f"periodic texture size {size} must be a power of two")
    across = sigma_along if sigma_across is None else sigma_across
    white = rng.standard_normal((size, size), dtype=np.float32)
    ky = (np.fft.fftfreq(size) * 2.0 * np.pi).astype(np.float32)[:, None]
    kx = (np.fft.rfftfreq(size) * 2.0 * np.pi).astype(np.float32)[None, :]
    ca, sa = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    k_along = kx * ca + ky * sa
    k_across = ky * ca - kx * sa
    gain = np.exp(
        np.float32(-0.5) * ((k_along * sigma_along) ** 2 + (k_across * across) ** 2)
    ).astype(np.float32)
    tex = scipy.fft.irfft2(scipy.fft.rfft2(white) * gain, s=(size, size)).astype(np.float32)
    tex -= tex.mean()
    tex /= tex.std() + np.float32(1e-12)
    return tex


def sample_texture_grid(tex: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Texture values at the grid ys x xs (floored, wrapping); (len(ys), len(xs)) float32."""
    mask = tex.shape[0] - 1
    ix = np.floor(np.asarray(xs)).astype(np.int64) & mask
    iy = np.floor(np.asarray(ys)).astype(np.int64) & mask
    return tex.take(iy, axis=0).take(ix, axis=1)


def sample_texture(tex: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Texture values (nearest texel, wrapping) at arbitrary float coordinates (broadcast)."""
    n = tex.shape[0]
    ix = np.floor(xs).astype(np.int32) & np.int32(n - 1)
    iy = np.floor(ys).astype(np.int32) & np.int32(n - 1)
    return tex.ravel().take(iy * np.int32(n) + ix)


def coarse_axis(coords: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A coarse axis at global multiples of ``spacing`` covering increasing ``coords``.

    Returns (coarse coordinates, index of the coarse sample at or below each coordinate,
    fractional position in [0, 1) towards the next one). The lattice is anchored at 0, so
    a coordinate gets the same interpolation weights whatever region it is rendered in.
    Use with :func:`upsample_linear` to evaluate a smooth field cheaply.
    """
    g = np.asarray(coords, np.float64) / spacing
    fl = np.floor(g)
    k0 = fl[0]
    idx = (fl - k0).astype(np.int64)
    frac = (g - fl).astype(np.float32)
    coarse = (k0 + np.arange(int(idx[-1]) + 2)) * spacing
    return coarse, idx, frac


def upsample_linear(
    coarse: np.ndarray, ix: np.ndarray, fx: np.ndarray, iy: np.ndarray, fy: np.ndarray
) -> np.ndarray:
    """Bilinear interpolation of a (len(cy), len(cx)) coarse field to (len(iy), len(ix))."""
    along = coarse[:, ix] * (1.0 - fx) + coarse[:, ix + 1] * fx
    fy2 = fy[:, None]
    return (along[iy] * (1.0 - fy2) + along[iy + 1] * fy2).astype(np.float32)
