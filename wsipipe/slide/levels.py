"""Pure pyramid geometry: level choice, tile footprints, thumbnail and stripe plans.

Units: mpp = microns per pixel; "level-0 px" are pixels of the full-resolution level; a level's
downsample is level-0 px per level px.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from PIL import Image

MPP_TOLERANCE = 0.01  # a level "matches" a target mpp within 1 %


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def choose_level(
    level_mpps: Sequence[float], target_mpp: float, tolerance: float = MPP_TOLERANCE
) -> int:
    """Index of the coarsest level whose mpp is <= target_mpp * (1 + tolerance).

    Never upsamples, except when even level 0 is coarser than the target: then 0.
    ``level_mpps`` need not be sorted.
    """
    _check_positive("target_mpp", target_mpp)
    if not level_mpps:
        raise ValueError("a slide needs at least one level")
    limit = target_mpp * (1.0 + tolerance)
    best = -1
    for i, mpp in enumerate(level_mpps):
        if mpp <= limit and (best < 0 or mpp > level_mpps[best]):
            best = i
    return max(best, 0)


def mpp_matches(level_mpp: float, target_mpp: float, tolerance: float = MPP_TOLERANCE) -> bool:
    """True when a level's mpp equals the target within the relative tolerance."""
    return abs(level_mpp / target_mpp - 1.0) <= tolerance


@dataclass(frozen=True)
class TileGeometry:
    """How tiles of ``tile_px`` px at ``target_mpp`` lie on the slide and are read from it:
    the one place the level-0 footprint is computed (grid, reader and store all use it).

    ``tile_size_level0`` = round(tile_px * target_mpp / slide_mpp) is the footprint in level-0
    px; ``stride_level0`` = round((tile_px - overlap_px) * target_mpp / slide_mpp) the distance
    between neighbouring tiles; ``read_px`` = round(tile_size_level0 / downsample) the square
    size read at ``level`` before it is resized to ``tile_px``.
    """

    tile_px: int
    target_mpp: float
    level: int
    downsample: float
    level_mpp: float
    tile_size_level0: int
    read_px: int
    overlap_px: int = 0
    stride_level0: int = 0  # 0: no overlap, = tile_size_level0

    def __post_init__(self) -> None:
        if self.tile_px < 1 or self.read_px < 1 or self.tile_size_level0 < 1:
            raise ValueError(f"tile sizes must be >= 1 px, got {self}")
        if not 0 <= self.overlap_px < self.tile_px:
            raise ValueError(f"overlap_px must be in 0..tile_px-1, got {self.overlap_px}")
        if self.stride_level0 == 0:
            object.__setattr__(self, "stride_level0", self.tile_size_level0)

    @property
    def matches_level(self) -> bool:
        """The level's mpp equals the target within 1 %."""
        return mpp_matches(self.level_mpp, self.target_mpp)

    @property
    def resamples(self) -> bool:
        return self.read_px != self.tile_px


def tile_geometry(
    slide_mpp: float,
    level_downsamples: Sequence[float],
    target_mpp: float,
    tile_px: int,
    overlap_px: int = 0,
) -> TileGeometry:
    """Footprint, stride and read level of ``tile_px`` tiles at ``target_mpp`` overlapping by
    ``overlap_px`` output px (see TileGeometry)."""
    _check_positive("slide mpp", slide_mpp)
    _check_positive("target_mpp", target_mpp)
    if not isinstance(tile_px, int) or tile_px < 1:
        raise ValueError(f"tile_px must be a positive integer, got {tile_px!r}")
    level_mpps = [slide_mpp * d for d in level_downsamples]
    level = choose_level(level_mpps, target_mpp)
    downsample = float(level_downsamples[level])
    scale = target_mpp / slide_mpp  # level-0 px per output px
    size0 = max(1, round(tile_px * scale))
    read_px = max(1, round(size0 / downsample))
    return TileGeometry(
        tile_px=tile_px,
        target_mpp=float(target_mpp),
        level=level,
        downsample=downsample,
        level_mpp=level_mpps[level],
        tile_size_level0=size0,
        read_px=read_px,
        overlap_px=overlap_px,
        stride_level0=max(1, round((tile_px - overlap_px) * scale)),
    )


def resample_filter(src_px: int, dst_px: int) -> Image.Resampling:
    """PIL filter to resize src_px -> dst_px: BOX (exact area mean) for integer reductions,
    LANCZOS otherwise (non-integer reductions and upsampling)."""
    if src_px > dst_px and src_px % dst_px == 0:
        return Image.Resampling.BOX
    return Image.Resampling.LANCZOS


@dataclass(frozen=True)
class ThumbnailPlan:
    """A thumbnail of ``width`` x ``height`` px read from ``level``.

    ``downsample`` is level-0 px per thumbnail px (same in x and y); ``level_scale`` is level
    px per thumbnail px (= downsample / level downsample). Thumbnail pixel (i, j) covers level-0
    [i*downsample, (i+1)*downsample) x [j*downsample, (j+1)*downsample).
    """

    level: int
    width: int
    height: int
    downsample: float
    level_scale: float

    @property
    def read_width(self) -> int:
        """Level px to read across (may pass the level's right edge by < 1 thumbnail px)."""
        return max(1, math.ceil(self.width * self.level_scale - 1e-9))


def thumbnail_plan(
    width0: int,
    height0: int,
    slide_mpp: float,
    level_downsamples: Sequence[float],
    target_mpp: float,
) -> ThumbnailPlan:
    """Plan a thumbnail at ~target_mpp: never finer than level 0 (downsample >= 1)."""
    _check_positive("slide mpp", slide_mpp)
    _check_positive("target_mpp", target_mpp)
    downsample = max(target_mpp / slide_mpp, 1.0)
    level = choose_level([slide_mpp * d for d in level_downsamples], target_mpp)
    return ThumbnailPlan(
        level=level,
        width=max(1, round(width0 / downsample)),
        height=max(1, round(height0 / downsample)),
        downsample=downsample,
        level_scale=downsample / float(level_downsamples[level]),
    )


@dataclass(frozen=True)
class Stripe:
    """Thumbnail rows [row0, row1) come from level rows [level_y0, level_y1); ``box`` is the
    (left, upper, right, lower) float box inside that read, for PIL ``resize(box=...)``."""

    row0: int
    row1: int
    level_y0: int
    level_y1: int
    box: tuple[float, float, float, float]


def plan_stripes(plan: ThumbnailPlan, max_pixels: int, tile_height: int = 1) -> list[Stripe]:
    """Split the thumbnail read into horizontal stripes of at most ~max_pixels level px each.

    Each stripe covers whole thumbnail rows; its level height is rounded down to a multiple of
    ``tile_height`` (the file's tile height, so each file tile is decoded about once) but is
    never less than one tile row or one thumbnail row.
    """
    if max_pixels < 1 or tile_height < 1:
        raise ValueError("max_pixels and tile_height must be >= 1")
    scale = plan.level_scale
    level_rows = max_pixels // plan.read_width
    level_rows = max(tile_height, level_rows // tile_height * tile_height)
    rows_per_stripe = max(1, math.floor(level_rows / scale))
    return list(_iter_stripes(plan, rows_per_stripe))


def _iter_stripes(plan: ThumbnailPlan, rows_per_stripe: int) -> Iterator[Stripe]:
    scale = plan.level_scale
    right = plan.width * scale
    for row0 in range(0, plan.height, rows_per_stripe):
        row1 = min(plan.height, row0 + rows_per_stripe)
        top, bottom = row0 * scale, row1 * scale
        y0 = math.floor(top + 1e-9)
        y1 = max(y0 + 1, math.ceil(bottom - 1e-9))
        yield Stripe(row0, row1, y0, y1, (0.0, top - y0, right, bottom - y0))
