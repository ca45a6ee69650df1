"""Tissue segmentation and pen-mark detection on a slide thumbnail (pure numpy).

Every length and area in :class:`TissueConfig` is in microns; ``segment_tissue`` converts
them to thumbnail pixels with the thumbnail's microns-per-pixel, so the same settings give the
same result whatever the scan resolution or thumbnail downsample.

Method, on an (H, W, 3) uint8 RGB thumbnail:

1. Pen ink (:func:`detect_pen`) is found by colour. H&E and IHC stains have green as (or
   close to) their weakest channel: haematoxylin is blue-purple, eosin pink, DAB brown, so
   their hue runs from ~250 deg (purple) through magenta/pink (~330 deg) to orange-brown
   (~15..40 deg). Inks are told apart by hue where stains do not go: blue and green inks have
   red as the weakest channel (hue 90..235 deg); red ink is pure red (blue about equal to
   green, hue -15..+10 deg) while eosin keeps blue well above green (~320..340 deg); black ink is
   darker than stained tissue at thumbnail resolution; faint red (low saturation, where
   eosin-heavy stains also go) only next to stronger ink. Pen strokes are large, so a pixel is
   pen only where most of a ~25 um window around it has ink colour (a majority vote that
   ignores nuclei, red cells, dust and hairlines yet keeps ink laid over tissue), and small
   pen objects are dropped.
2. Tissue is HSV saturation after a median blur, thresholded with Otsu's method computed on
   the non-pen pixels and clipped to ``[min_saturation, max_threshold]``: the floor keeps
   blank glass from ever producing tissue; the ceiling keeps pale tissue (faint eosin, loose
   stroma) when strongly stained tissue dominates the histogram. Dark pixels that are not
   saturated and not pen (greyish dense tissue) also count as tissue.
3. Morphological closing, the dilated pen mask subtracted, small objects removed, small holes
   filled (and pen subtracted again, so a filled hole never brings ink back); tissue pieces
   lying entirely along the pen (blurred ink edges) are dropped.

Adipose far from other tissue is mostly missed: at 8 um/px its thin membranes blur to a
saturation close to glass (~0.02..0.05). That is the usual, accepted trade-off.

Morphology uses Euclidean discs: a footprint up to 5 px radius, a distance transform beyond
(O(H*W) whatever the radius), so high-resolution inputs stay affordable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from wsipipe.errors import ConfigError
from wsipipe.slide.backends import to_rgb
from wsipipe.tile.config import TissueConfig

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity for tissue / pen objects
_FOUR = ndimage.generate_binary_structure(2, 1)  # 4-connectivity for holes (dual of 8)


@dataclass(frozen=True)
class TissueResult:
    """Masks at thumbnail resolution. ``tissue`` and ``pen`` are disjoint."""

    tissue: np.ndarray  # bool (H, W): tissue, pen already removed
    pen: np.ndarray  # bool (H, W): pen ink detected (never tissue)
    threshold: float  # saturation threshold used, in [0, 1]


# --------------------------------------------------------------------------- colour


def hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 -> (hue in degrees [0, 360), saturation, value, chroma), float32.

    Saturation = chroma / value (HSV), value = max channel / 255, chroma = (max - min) / 255.
    Hue is 0 where chroma is 0.
    """
    # Integer arithmetic on contiguous channels (uint8 / int16, no np.where): a few ms per
    # pass on a ~5 MP thumbnail instead of ~20 full-size float temporaries. A grey pixel
    # (max = min) takes the red branch with numerator 0, so its hue is 0 without a mask.
    r, g, b = (np.ascontiguousarray(rgb[..., i]) for i in range(3))
    mx8 = np.maximum(np.maximum(r, g), b)
    c8 = mx8 - np.minimum(np.minimum(r, g), b)  # uint8: max >= min
    is_r = mx8 == r
    is_g = (mx8 == g) & ~is_r
    is_b = ~(is_r | is_g)
    r16, g16, b16 = r.astype(np.int16), g.astype(np.int16), b.astype(np.int16)
    num = (g16 - b16) * is_r + (b16 - r16) * is_g + (r16 - g16) * is_b  # in [-255, 255]
    sextant = 2 * is_g.astype(np.int16) + 4 * is_b + 6 * (is_r & (num < 0))
    hue = num.astype(np.float32)
    hue /= np.maximum(c8, 1)  # c = 0 only where grey, whose numerator is 0
    hue += sextant
    hue *= 60
    c = c8.astype(np.float32)
    sat = c / np.maximum(mx8, 1)
    c *= np.float32(1 / 255)
    mx = mx8.astype(np.float32)
    mx *= np.float32(1 / 255)
    return hue, sat, mx, c


# ----------------------------------------------------------------------- morphology


_EDT_FROM_PX = 5.0  # discs larger than this use a distance transform, smaller a footprint


def _disc(radius: float) -> np.ndarray:
    """Footprint of the Euclidean disc x^2 + y^2 <= radius^2."""
    n = int(radius)
    yy, xx = np.mgrid[-n : n + 1, -n : n + 1]
    return np.asarray(xx * xx + yy * yy <= radius * radius)


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Dilation by a Euclidean disc of ``radius`` px (no-op below 1 px)."""
    if radius < 1.0 or not mask.any():
        return mask.copy()
    if radius <= _EDT_FROM_PX:
        return ndimage.binary_dilation(mask, structure=_disc(radius))
    return ndimage.distance_transform_edt(~mask) <= radius


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    """Erosion by a Euclidean disc; the image border is not treated as background."""
    if radius < 1.0 or mask.all():
        return mask.copy()
    if radius <= _EDT_FROM_PX:
        return ndimage.binary_erosion(mask, structure=_disc(radius), border_value=1)
    return ndimage.distance_transform_edt(mask) > radius


def closing(mask: np.ndarray, radius: float) -> np.ndarray:
    """Morphological closing by a disc of ``radius`` px (bridges gaps < 2 * radius)."""
    return _erode(_dilate(mask, radius), radius)


def remove_small_objects(mask: np.ndarray, min_area_px: float) -> np.ndarray:
    """Drop 8-connected True components with fewer than ``min_area_px`` pixels."""
    if min_area_px <= 1 or not mask.any():
        return mask.copy()
    labels, n = ndimage.label(mask, structure=_EIGHT)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_area_px
    keep[0] = False
    return keep[labels]


def fill_small_holes(mask: np.ndarray, max_area_px: float) -> np.ndarray:
    """Fill 4-connected False components smaller than ``max_area_px`` that do not touch the
    image border (background open to the border is not a hole)."""
    if max_area_px <= 0 or mask.all():
        return mask.copy()
    labels, n = ndimage.label(~mask, structure=_FOUR)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    small = sizes < max_area_px
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    small[border] = False
    small[0] = False
    return mask | small[labels]


def median_blur(channel: np.ndarray, size: int) -> np.ndarray:
    """Median of a (H, W) uint8 channel over a ``size`` x ``size`` square. 3 x 3 (the usual
    case at thumbnail resolution) uses a sorting network on shifted views with edge
    replication; larger windows a histogram-based rank filter (cost linear in ``size``)."""
    if size <= 1:
        return channel.copy()
    if size == 3:
        return _median3(channel)
    from skimage.filters import rank  # imported here: ~0.1 s, and 3 x 3 is the usual case

    return rank.median(channel, footprint=np.ones((size, size), dtype=bool))


# Compare-exchange network giving the median of 9 values in 19 steps (Paeth's network).
_MED9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
         (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))  # fmt: skip


def _median3(x: np.ndarray) -> np.ndarray:
    h, w = x.shape
    p = np.pad(x, 1, mode="edge")
    v = [p[i : i + h, j : j + w].copy() for i in range(3) for j in range(3)]
    for a, b in _MED9:
        lo = np.minimum(v[a], v[b])
        np.maximum(v[a], v[b], out=v[b])
        v[a] = lo
    return v[4]


def _odd_px(um: float, um_per_px: float) -> int:
    """A length in um -> an odd pixel window >= 3."""
    px = max(round(um / um_per_px), 3)
    return px if px % 2 == 1 else px + 1


# ---------------------------------------------------------------------------- pen


def pen_colour_mask(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel ink colour test on an (H, W, 3|4) uint8 image -> bool (H, W).

    Hue in degrees, saturation/value/chroma in [0, 1] (see :func:`hsv`):

    - green / teal ink: hue 90..200 (red the weakest channel by far, which stains never
      show), saturation >= 0.15, chroma >= 0.06;
    - blue ink: hue 200..235, saturation >= 0.3, chroma >= 0.08 (the bluish haematoxylin of
      IHC counterstains sits at saturation < 0.25 or hue > 235);
    - red ink: hue >= 345 or <= 10 (blue about equal to green; eosin keeps blue well above
      green, ~320..345 deg; DAB brown is orange, >= 15 deg), saturation >= 0.12 (below
      0.35 it is pen only next to stronger ink: see :func:`detect_pen`);
    - deep red ink (also red ink laid over pink tissue): hue >= 340 or <= 10, saturation
      >= 0.55 (eosin that saturated stays below ~340 deg); maroon (red over black): hue >= 335,
      saturation >= 0.55, value < 0.45;
    - black ink: value < 0.3, or value < 0.4 with saturation < 0.3 (stained tissue at
      thumbnail resolution is lighter; dark nuclei at high resolution are removed by the
      majority vote of :func:`detect_pen`).

    No size or density filter: see :func:`detect_pen`.
    """
    return _ink_and_faint_red(*hsv(to_rgb(rgb)))[0]


#: Faint red ink (saturation 0.12..0.35) overlaps eosin-rich tissue (hue 340..355 deg at
#: saturation 0.15..0.45 on red-leaning stains): it counts as pen only within one vote window
#: of pen found without it (:func:`_pen`), so ink edges stay pen while a slide stained
#: towards red keeps its tissue.
FAINT_RED_SAT = 0.12
STRONG_RED_SAT = 0.35


def _ink_and_faint_red(
    hue: np.ndarray, sat: np.ndarray, val: np.ndarray, chroma: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(ink colour (H, W) bool, the pixels that are ink only as faint red)."""
    green = (hue >= 90.0) & (hue < 200.0) & (sat >= 0.15) & (chroma >= 0.06)
    blue = (hue >= 200.0) & (hue <= 235.0) & (sat >= 0.3) & (chroma >= 0.08)
    red_hue = (hue >= 345.0) | (hue <= 10.0)
    red = red_hue & (sat >= STRONG_RED_SAT)
    deep_red = ((hue >= 340.0) | (hue <= 10.0)) & (sat >= 0.55)
    maroon = ((hue >= 335.0) | (hue <= 10.0)) & (sat >= 0.55) & (val < 0.45)
    black = (val < 0.3) | ((val < 0.4) & (sat < 0.3))
    strong = green | blue | red | deep_red | maroon | black
    faint = red_hue & (sat >= FAINT_RED_SAT) & ~strong
    return strong | faint, faint


def detect_pen(
    thumb: np.ndarray,
    um_per_px: float | None = None,
    cfg: TissueConfig | None = None,
) -> np.ndarray:
    """Pen ink (blue, green, red, black) on a thumbnail -> bool (H, W).

    thumb: (H, W, 3|4) uint8. ``um_per_px`` defaults to ``cfg.thumb_mpp``. A pixel is pen
    where at least ``cfg.pen_density`` of the ``cfg.pen_window_um`` square around it has ink
    colour (:func:`pen_colour_mask`): a majority vote that ignores nuclei, red blood cells,
    dust and hairlines but keeps ink laid over tissue, where ink and stain pixels mix. Pen
    objects below ``cfg.min_pen_area_um2`` are dropped. Faint red ink (saturation below
    STRONG_RED_SAT) is pen only within one vote window of the other ink's pen, so that an
    eosin-heavy stain is not taken for it. Not dilated: :func:`segment_tissue` grows it by
    ``cfg.pen_dilate_um`` before removing it from tissue.
    """
    cfg = cfg if cfg is not None else TissueConfig()
    um = _check_um_per_px(um_per_px if um_per_px is not None else cfg.thumb_mpp)
    return _pen(*hsv(to_rgb(thumb)), um, cfg)


def _pen(
    hue: np.ndarray,
    sat: np.ndarray,
    val: np.ndarray,
    chroma: np.ndarray,
    um: float,
    cfg: TissueConfig,
) -> np.ndarray:
    """Pen of the ink test without faint red, plus the pen of the whole ink test within one
    vote window of it: faint red ink edges count only next to strong ink (FAINT_RED_SAT)."""
    ink, faint = _ink_and_faint_red(hue, sat, val, chroma)
    strict = _pen_from_ink(ink & ~faint, um, cfg)
    if not strict.any() or not faint.any():
        return strict
    loose = _pen_from_ink(ink, um, cfg)
    return strict | (loose & _dilate(strict, cfg.pen_window_um / um))


def _pen_from_ink(raw: np.ndarray, um: float, cfg: TissueConfig) -> np.ndarray:
    """Majority vote over ``cfg.pen_window_um`` and the pen area filter (see detect_pen)."""
    if not raw.any():
        return raw
    k = _odd_px(cfg.pen_window_um, um)
    density = ndimage.uniform_filter(raw.astype(np.float32), size=k, mode="nearest")
    pen = density >= cfg.pen_density - 1e-6
    return remove_small_objects(pen, cfg.min_pen_area_um2 / um**2)


def drop_pen_halo(tissue: np.ndarray, pen: np.ndarray, halo_px: float) -> np.ndarray:
    """Drop tissue components that lie entirely within ``halo_px`` of ``pen``: slivers left
    along blurred ink edges, not tissue."""
    if halo_px < 1.0 or not pen.any() or not tissue.any():
        return tissue
    far = tissue & ~_dilate(pen, halo_px)
    labels, n = ndimage.label(tissue, structure=_EIGHT)
    keep = np.zeros(n + 1, dtype=bool)
    keep[np.unique(labels[far])] = True
    keep[0] = False
    return keep[labels]


# ------------------------------------------------------------------------- tissue


def _check_um_per_px(um_per_px: float) -> float:
    if not isinstance(um_per_px, (int, float)) or not math.isfinite(um_per_px) or um_per_px <= 0:
        raise ConfigError(
            f"thumbnail um_per_px={um_per_px!r} must be a positive number; check the slide's "
            "mpp (or give --mpp)"
        )
    return float(um_per_px)


def saturation_threshold(sat_u8: np.ndarray, valid: np.ndarray, cfg: TissueConfig) -> float:
    """Otsu threshold of the blurred saturation (uint8, 0..255) over ``valid`` pixels, in
    [0, 1], clipped to ``[cfg.min_saturation, cfg.max_threshold]``."""
    values = sat_u8[valid]
    if values.size == 0 or values.min() == values.max():
        otsu = cfg.max_threshold
    else:
        hist = np.bincount(values, minlength=256)
        otsu = float(threshold_otsu(hist=(hist, np.arange(256)))) / 255.0
    return float(min(max(otsu, cfg.min_saturation), cfg.max_threshold))


def segment_tissue(
    thumb: np.ndarray, um_per_px: float, cfg: TissueConfig = TissueConfig()
) -> TissueResult:
    """Tissue and pen masks of a thumbnail.

    thumb: (H, W, 3) uint8 RGB (or RGBA -> composite on white). um_per_px: microns per
    thumbnail pixel, used to convert every area/length in cfg to pixels so the same settings
    work at any scan resolution. Returns bool (H, W) masks and the saturation threshold.
    """
    um = _check_um_per_px(um_per_px)
    rgb = to_rgb(thumb)
    h, w = rgb.shape[:2]
    hue, sat, val, chroma = hsv(rgb)
    if cfg.remove_pen:
        pen = _pen(hue, sat, val, chroma, um, cfg)
        # +1 px: the pixels along an ink edge mix ink and stain at any resolution.
        pen_grown = _dilate(pen, cfg.pen_dilate_um / um + 1.0)
    else:
        pen_grown = np.zeros((h, w), dtype=bool)
    del hue, chroma

    k = _odd_px(cfg.median_um, um)
    sat_u8 = median_blur(np.round(sat * 255.0).astype(np.uint8), k)
    val_u8 = median_blur(np.round(val * 255.0).astype(np.uint8), k)
    threshold = saturation_threshold(sat_u8, ~pen_grown, cfg)

    # Strict '>' on the 8-bit scale: a threshold equal to the glass level never selects glass.
    tissue = sat_u8 > np.floor(threshold * 255.0)
    if cfg.dark_value > 0:
        tissue |= val_u8 < cfg.dark_value * 255.0
    tissue &= ~pen_grown
    tissue = closing(tissue, cfg.closing_um / um)
    tissue &= ~pen_grown
    min_area = cfg.min_tissue_area_um2 / um**2
    tissue = remove_small_objects(tissue, min_area)
    tissue = fill_small_holes(tissue, cfg.max_hole_area_um2 / um**2)
    tissue &= ~pen_grown
    tissue = remove_small_objects(tissue, min_area)
    tissue = drop_pen_halo(tissue, pen_grown, cfg.pen_halo_um / um)
    return TissueResult(tissue=tissue, pen=pen_grown, threshold=threshold)
