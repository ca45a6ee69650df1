"""Real H&E texture for the real-texture cohort: sources, tissue masks, colour match, crops.

A :class:`TextureSource` is a slide (anything :func:`wsipipe.slide.open_slide` reads) or a
plain image (PNG/JPEG/flat TIFF, with its mpp given), optionally restricted to boxes. All
sources of a cohort are resampled to one *working* resolution (the coarsest source's mpp, or
the cohort's when that is coarser) by the same antialiased resize, so normal and tumour
texture carry the same optical bandwidth; the composed slide is resampled once more, as a
whole, to the cohort's mpp (:mod:`wsipipe.synth.real`).

Only tissue is sampled: a crop must lie in a source region with >= ``min_cover`` of its
pixels tissue, using the tiler's own segmentation (:func:`wsipipe.tile.tissue.segment_tissue`
at 2 um/px). :func:`match_appearance` then matches the pools' sharpness and H&E stain
(:mod:`wsipipe.synth.appearance`), so that tumour and normal tissue look scanned and stained
alike and only morphology tells them apart.

The default sources (:func:`default_sources`) are two real slides in ``../shared/data/real``:
normal skin from ``CMU-1-Small-Region.svs`` (0.499 um/px as recorded) and squamous cell
carcinoma from ``tcga-cr-7395-01a-01-ts1.svs``, which records no mpp; see
:data:`TCGA_CR_7395_MPP` for the scale assumed and why, and :data:`TCGA_CR_7395_TUMOUR_BOXES`
for the regions used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from wsipipe.errors import ConfigError, MissingMppError, SlideOpenError
from wsipipe.synth.appearance import (
    apply_od_gains,
    blur,
    fine_energy,
    mean_od,
    od_gains,
    sharpness_sigma,
)
from wsipipe.tile.tissue import segment_tissue

__all__ = [
    "CMU_1_SMALL_REGION",
    "DEFAULT_REAL_DIR",
    "TCGA_CR_7395",
    "TCGA_CR_7395_MPP",
    "TCGA_CR_7395_TUMOUR_BOXES",
    "CropSampler",
    "Matched",
    "TexturePool",
    "TextureSource",
    "default_sources",
    "load_pool",
    "match_appearance",
    "parse_source",
    "source_mpp",
]

#: The repository's shared real data (``<repo>/../shared/data/real``), used by default.
DEFAULT_REAL_DIR = (Path(__file__).resolve().parents[2] / ".." / "shared/data/real").resolve()

CMU_1_SMALL_REGION = "slides/CMU-1-Small-Region.svs"
TCGA_CR_7395 = "slides/tcga-cr-7395-01a-01-ts1.svs"

#: Assumed level-0 um/px of ``tcga-cr-7395-01a-01-ts1.svs`` (the file records none).
#: Estimated from two internal scales, both pointing at ~0.8-1.0 um/px (range 0.7..1.0):
#: (1) round, dark, lymphocyte-like nuclei (haematoxylin channel, Otsu, solidity > 0.9,
#: eccentricity < 0.75) have a median equivalent diameter of 4.9 px in the lymphoid stroma
#: of this slide and 8.4 px in CMU-1-Small-Region (0.499 um/px) measured the same way: a
#: ratio of 1.7, i.e. 0.85 um/px; by eye they are 6-8 px, 5.5-7 um at 0.85; (2) the whole
#: section spans 4443 x 3567 px, 3.8 x 3.0 mm at 0.85 um/px, a plausible frozen section
#: (at 0.25-0.5 um/px it would be an implausibly small 1-2 mm). Red cells, ~10 px across
#: where they lie singly, agree within the blur of the JPEG 2000 file.
TCGA_CR_7395_MPP = 0.85

#: Level-0 boxes (x0, y0, x1, y1) of tcga-cr-7395 that are carcinoma nests (large polygonal
#: eosinophilic cells, keratinisation), hand-picked on a 256-px grid and checked by eye at
#: full resolution; the fibrous / lymphoid stroma bands between the nests are left out.
TCGA_CR_7395_TUMOUR_BOXES: tuple[tuple[int, int, int, int], ...] = (
    (700, 900, 1300, 1300),
    (1800, 700, 2300, 1150),
    (2850, 1350, 3500, 1900),
    (3300, 2450, 3800, 3000),
    (2300, 2050, 2800, 2500),
    (600, 1750, 1100, 2200),
    (1300, 2300, 1800, 2800),
)

_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
_MASK_MPP = 2.0  # um/px at which tissue is segmented (TissueConfig's finest allowed)
_MAX_REGION_PX = 64 * 2**20  # pixels read per region (at the pyramid level read)


@dataclass(frozen=True)
class TextureSource:
    """One real H&E source: a slide or an image, optionally only some level-0 boxes of it.

    ``mpp`` overrides (slides) or gives (images) the level-0 microns per pixel; ``boxes``
    are ``(x0, y0, x1, y1)`` level-0 px, empty = the whole image.
    """

    path: Path
    mpp: float | None = None
    boxes: tuple[tuple[int, int, int, int], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.mpp is not None and not (math.isfinite(self.mpp) and 0.05 <= self.mpp <= 20):
            raise ConfigError(
                f"{self.path}: texture source mpp={self.mpp!r} must be 0.05..20 um/px"
            )
        boxes = tuple(tuple(int(v) for v in b) for b in self.boxes)
        for b in boxes:
            if len(b) != 4 or b[2] - b[0] < 16 or b[3] - b[1] < 16 or min(b) < 0:
                raise ConfigError(
                    f"{self.path}: box {b} must be (x0, y0, x1, y1) level-0 px with x1-x0 and "
                    "y1-y0 >= 16 and no negative coordinate"
                )
        object.__setattr__(self, "boxes", boxes)

    @property
    def is_image(self) -> bool:
        return self.path.suffix.lower() in _IMAGE_SUFFIXES


def parse_source(spec: str) -> TextureSource:
    """A source from its command-line spec ``PATH`` or ``PATH@MPP`` (the level-0 microns per
    pixel: needed for images, which record none; it overrides a slide's own)."""
    path, sep, mpp = spec.rpartition("@")
    if not sep or Path(spec).is_file():  # no '@', or one that is part of the file's path
        path, mpp = spec, ""
    try:
        value = float(mpp) if mpp else None
    except ValueError:
        raise ConfigError(
            f"texture source {spec!r}: {mpp!r} after '@' is not a number; write PATH@MPP, "
            "e.g. tumour.png@0.5"
        ) from None
    if not Path(path).is_file():
        raise ConfigError(f"texture source {path}: no such file; give a slide or image path")
    return TextureSource(Path(path), mpp=value)


def default_sources(real_dir: str | Path | None = None) -> tuple[TextureSource, TextureSource]:
    """(normal, tumour) sources from the shared real data (see the module docstring)."""
    root = Path(real_dir) if real_dir is not None else DEFAULT_REAL_DIR
    normal, tumour = root / CMU_1_SMALL_REGION, root / TCGA_CR_7395
    for p in (normal, tumour):
        if not p.is_file():
            raise ConfigError(
                f"real texture source {p} not found; give --real-dir (the folder with "
                f"{CMU_1_SMALL_REGION} and {TCGA_CR_7395}) or your own sources"
            )
    return (
        TextureSource(normal),
        TextureSource(tumour, mpp=TCGA_CR_7395_MPP, boxes=TCGA_CR_7395_TUMOUR_BOXES),
    )


# ----------------------------------------------------------------------------------- reading


def _open_image(src: TextureSource) -> np.ndarray:
    try:
        with Image.open(src.path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{src.path}: cannot read the texture image ({exc})") from exc


def _try_slide(src: TextureSource):  # type: ignore[no-untyped-def]
    """The source as an open Slide, or None for a plain image (or a file no slide reader
    opens but PIL does, e.g. a flat TIFF)."""
    from wsipipe.slide import open_slide

    if src.is_image:
        return None
    try:
        return open_slide(src.path, mpp=src.mpp)
    except SlideOpenError:
        if not src.path.is_file():
            raise
        return None


def source_mpp(src: TextureSource) -> float:
    """Level-0 um/px of a source: its ``mpp``, else the one its slide file records."""
    if src.mpp is not None:
        return float(src.mpp)
    slide = _try_slide(src)
    if slide is None:
        raise ConfigError(
            f"{src.path}: an image records no microns per pixel; give it as PATH@MPP "
            "(e.g. --tumour tile.png@0.5) or TextureSource(mpp=...)"
        )
    with slide:
        try:
            return float(slide.mpp)
        except MissingMppError:  # the reader's fix (--mpp) means the cohort's mpp here
            raise MissingMppError(
                f"{src.path}: no microns-per-pixel recorded in the slide; give it as PATH@MPP "
                "(e.g. --tumour slide.svs@0.25) or TextureSource(mpp=...)"
            ) from None


def _resize(img: np.ndarray, scale: float) -> np.ndarray:
    """Antialiased resize of an (H, W, 3) uint8 image by ``scale`` (the one resampling path
    every source goes through; LANCZOS, which low-passes when shrinking)."""
    if abs(scale - 1.0) < 1e-6:
        return img
    h, w = img.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))


def _read_regions(src: TextureSource, mpp: float, work_mpp: float) -> list[np.ndarray]:
    """The source's boxes (or whole image) as (H, W, 3) uint8 at ``work_mpp``."""
    slide = _try_slide(src)
    regions: list[np.ndarray] = []
    if slide is None:
        img = _open_image(src)
        h, w = img.shape[:2]
        for x0, y0, x1, y1 in src.boxes or ((0, 0, w, h),):
            if x1 > w or y1 > h:
                raise ConfigError(f"{src.path}: box {(x0, y0, x1, y1)} exceeds the {w}x{h} image")
            regions.append(_resize(img[y0:y1, x0:x1], mpp / work_mpp))
        return regions
    with slide:
        w, h = slide.info.width, slide.info.height
        level = slide.best_level(work_mpp)
        ds = slide.info.level_downsamples[level]
        for x0, y0, x1, y1 in src.boxes or ((0, 0, w, h),):
            if x1 > w or y1 > h:
                raise ConfigError(f"{src.path}: box {(x0, y0, x1, y1)} exceeds the {w}x{h} slide")
            lw, lh = max(1, int((x1 - x0) / ds)), max(1, int((y1 - y0) / ds))
            if lw * lh > _MAX_REGION_PX:
                raise ConfigError(
                    f"{src.path}: region {(x0, y0, x1, y1)} is {lw}x{lh} px at level {level}; "
                    "give smaller TextureSource boxes"
                )
            region = slide.read_region(x0, y0, level, lw, lh)
            regions.append(_resize(region, mpp * ds / work_mpp))
    return regions


def _tissue_mask(region: np.ndarray, work_mpp: float) -> np.ndarray:
    """(H, W) bool tissue of a region at ``work_mpp``: the tiler's segmentation at 2 um/px
    (pen ink and glass excluded), scaled back up (nearest)."""
    h, w = region.shape[:2]
    scale = work_mpp / max(_MASK_MPP, work_mpp)
    small = _resize(region, scale) if scale < 1 else region
    mask = segment_tissue(small, work_mpp / scale).tissue
    if mask.shape != (h, w):
        mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST))
    return mask


# --------------------------------------------------------------------------------- the pools


@dataclass(frozen=True)
class TexturePool:
    """Texture regions of one class at one resolution, with their tissue masks."""

    name: str
    mpp: float  # um/px of every region
    regions: tuple[np.ndarray, ...]  # (H, W, 3) uint8 each
    masks: tuple[np.ndarray, ...]  # (H, W) bool tissue, one per region
    origins: tuple[str, ...] = ()  # the source file of each region, for error messages

    def tissue_pixels(self) -> np.ndarray:
        """(N, 3) uint8 of every tissue pixel."""
        return np.concatenate([r[m] for r, m in zip(self.regions, self.masks, strict=True)])

    def inner_masks(self, px: int = 6) -> tuple[np.ndarray, ...]:
        """Tissue masks eroded by ``px`` (statistics away from the tissue edges)."""
        return tuple(ndimage.binary_erosion(m, iterations=px) for m in self.masks)

    def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> TexturePool:
        """The same pool with ``fn`` applied to every region (masks unchanged)."""
        return TexturePool(
            self.name, self.mpp, tuple(fn(r) for r in self.regions), self.masks, self.origins
        )


_MIN_TISSUE_PX = 100  # fewer tissue pixels than this in a source region: nothing to cut


def load_pool(name: str, sources: Sequence[TextureSource], work_mpp: float) -> TexturePool:
    """Read ``sources`` and resample them to ``work_mpp`` (>= every source's mpp), with
    their tissue masks."""
    if not sources:
        raise ConfigError(f"no {name} texture source given; pass at least one TextureSource")
    regions: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    origins: list[str] = []
    for src in sources:
        mpp = source_mpp(src)
        if mpp > work_mpp * 1.001:
            raise ConfigError(
                f"{src.path}: source mpp {mpp} is coarser than the working mpp {work_mpp}"
            )
        for region in _read_regions(src, mpp, work_mpp):
            mask = _tissue_mask(region, work_mpp)
            if mask.sum() < _MIN_TISSUE_PX:
                raise ConfigError(
                    f"{name} texture {src.path}: {int(mask.sum())} tissue pixels at "
                    f"{work_mpp:g} um/px in a {region.shape[1]}x{region.shape[0]} px region; "
                    "give a source (or box) with tissue in it"
                )
            regions.append(region)
            masks.append(mask)
            origins.append(str(src.path))
    return TexturePool(name, work_mpp, tuple(regions), tuple(masks), tuple(origins))


@dataclass(frozen=True)
class Matched:
    """What :func:`match_appearance` did to each pool (for the cohort manifest)."""

    fine_energy: tuple[float, ...]  # sharpness statistic before matching, per pool
    blur_sigma_px: tuple[float, ...]  # Gaussian sigma applied, per pool
    mean_od: tuple[tuple[float, float, float], ...]  # tissue mean RGB OD before, per pool
    od_gains: tuple[tuple[float, float, float], ...]  # per-channel OD gains applied, per pool


def _rounded(v: np.ndarray) -> tuple[float, float, float]:
    return (round(float(v[0]), 4), round(float(v[1]), 4), round(float(v[2]), 4))


def match_appearance(
    pools: Sequence[TexturePool], stain: bool = True, sharpness: bool = True
) -> tuple[list[TexturePool], Matched]:
    """Match every pool's sharpness to the blurriest pool's and its per-channel stain
    density to the first pool's (see :mod:`wsipipe.synth.appearance`)."""
    inner = [p.inner_masks() for p in pools]
    energies = [fine_energy(p.regions, m) for p, m in zip(pools, inner, strict=True)]
    sigmas = [0.0] * len(pools)
    out = list(pools)
    if sharpness:
        target = min(energies)
        sigmas = [
            sharpness_sigma(p.regions, m, target, e)
            for p, m, e in zip(pools, inner, energies, strict=True)
        ]
        out = [p.map(partial(blur, sigma=s)) for p, s in zip(out, sigmas, strict=True)]
    ods = [mean_od(p.tissue_pixels(), f"{p.name} texture") for p in out]
    gains = [od_gains(od, ods[0]) if stain else np.ones(3) for od in ods]
    out = [p.map(partial(apply_od_gains, gains=g)) for p, g in zip(out, gains, strict=True)]
    info = Matched(
        fine_energy=tuple(round(e, 5) for e in energies),
        blur_sigma_px=tuple(round(s, 4) for s in sigmas),
        mean_od=tuple(_rounded(v) for v in ods),
        od_gains=tuple(_rounded(g) for g in gains),
    )
    return out, info


# --------------------------------------------------------------------------------- sampling


class CropSampler:
    """Random ``patch`` x ``patch`` crops of a pool's tissue, randomly flipped / rotated.

    A crop's top-left is drawn uniformly among the positions (on a 4-px lattice) whose
    window is at least ``min_cover`` tissue.
    """

    _LATTICE = 4

    def __init__(self, pool: TexturePool, patch: int, min_cover: float = 0.97) -> None:
        self.pool, self.patch = pool, int(patch)
        cand: list[np.ndarray] = []
        for i, mask in enumerate(pool.masks):
            h, w = mask.shape
            ok = np.zeros((0, 0), bool)
            if h >= patch and w >= patch:
                sat = np.zeros((h + 1, w + 1), np.int64)
                sat[1:, 1:] = mask.cumsum(0).cumsum(1)
                ys = np.arange(0, h - patch + 1, self._LATTICE)
                xs = np.arange(0, w - patch + 1, self._LATTICE)
                yy, xx = np.meshgrid(ys, xs, indexing="ij")
                y1, x1 = yy + patch, xx + patch
                cover = (sat[y1, x1] - sat[yy, x1] - sat[y1, xx] + sat[yy, xx]) / (patch * patch)
                ok = cover >= min_cover
            if not ok.any():  # a source the user gave must never be dropped silently
                origin = pool.origins[i] if i < len(pool.origins) else f"region {i}"
                raise ConfigError(
                    f"{pool.name} texture {origin}: no {patch}x{patch} px window (at "
                    f"{pool.mpp:g} um/px; the region is {w}x{h} px) is >= {min_cover:.0%} "
                    "tissue; give a larger tissue region, or a smaller piece_um"
                )
            cand.append(np.stack([np.full(ok.sum(), i), yy[ok], xx[ok]], axis=1))
        self.candidates = np.concatenate(cand) if cand else np.zeros((0, 3), np.int64)
        if len(self.candidates) == 0:
            raise ConfigError(f"{pool.name} texture: no source region given")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n, patch, patch, 3) uint8 crops."""
        p = self.patch
        pick = self.candidates[rng.integers(0, len(self.candidates), n)]
        turns = rng.integers(0, 4, n)
        flips = rng.integers(0, 2, n)
        out = np.empty((n, p, p, 3), np.uint8)
        for k, (i, y, x) in enumerate(pick):
            crop = self.pool.regions[i][y : y + p, x : x + p]
            crop = np.rot90(crop, int(turns[k]))
            out[k] = crop[:, ::-1] if flips[k] else crop
        return out
