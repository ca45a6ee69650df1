"""``TileConfig`` (with ``TissueConfig``): everything that determines a slide's tiling outputs.

Plain dataclasses, no heavy imports: the CLI builds its options from them at start-up."""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, fields
from typing import Any, Literal

from wsipipe.cli_config import bad_value, opt


@dataclass(frozen=True)
class TissueConfig:
    """Tissue-segmentation settings; lengths in um, areas in um^2, colours in [0, 1]."""

    thumb_mpp: float = opt(8.0, "Segmentation thumbnail resolution, um/px (2..64)",
                           flag="--thumb-mpp")  # fmt: skip
    min_tissue_area_um2: float = opt(
        10_000.0, "Tissue objects smaller than this (um^2) are dropped"
    )
    max_hole_area_um2: float = opt(5_000.0, "Holes smaller than this (um^2) are filled")
    closing_um: float = opt(16.0, "Morphological closing radius, um")
    median_um: float = opt(24.0, "Median blur window, um (odd px size >= 3)")
    min_saturation: float = opt(0.05, "Floor on the Otsu threshold (HSV saturation, 0..1)")
    remove_pen: bool = opt(True, "Detect pen ink (blue, green, black, red) and remove it")
    max_threshold: float = opt(0.08, "Ceiling on the Otsu threshold, so pale tissue stays tissue")
    dark_value: float = opt(0.45, "Unsaturated pixels darker than this HSV value are tissue")
    pen_window_um: float = opt(24.0, "Window of the ink-colour majority vote, um")
    pen_density: float = opt(0.5, "Fraction of ink-coloured pixels in that window that is pen")
    min_pen_area_um2: float = opt(5_000.0, "Pen objects smaller than this (um^2) are ignored")
    pen_dilate_um: float = opt(24.0, "Pen mask grown by this (um) before it leaves the tissue")
    pen_halo_um: float = opt(100.0, "Tissue pieces lying entirely this close (um) to pen go")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "remove_pen":
                if not isinstance(value, bool):
                    _bad_tissue("remove_pen", value, "must be true or false")
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                _bad_tissue(f.name, value, "must be a finite number")
        if not 2.0 <= self.thumb_mpp <= 64.0:
            _bad_tissue("thumb_mpp", self.thumb_mpp, "is outside 2..64 um/px")
        nonneg = (
            "min_tissue_area_um2",
            "max_hole_area_um2",
            "closing_um",
            "median_um",
            "pen_window_um",
            "min_pen_area_um2",
            "pen_dilate_um",
            "pen_halo_um",
        )
        for name in nonneg:
            if getattr(self, name) < 0:
                _bad_tissue(name, getattr(self, name), "must be >= 0")
        if not 0.0 <= self.min_saturation <= self.max_threshold <= 1.0:
            _bad_tissue("min_saturation", self.min_saturation,
                        f"and max_threshold = {self.max_threshold} need 0 <= min_saturation "
                        "<= max_threshold <= 1")  # fmt: skip
        if not 0.0 < self.pen_density <= 1.0:
            _bad_tissue("pen_density", self.pen_density, "must be in (0, 1]")
        if not 0.0 <= self.dark_value <= 1.0:
            _bad_tissue("dark_value", self.dark_value, "must be in 0..1 (0 = off)")


StoreFormat = Literal["h5", "zarr"]
PixelMode = Literal["jpeg", "png", "none"]
ReaderChoice = Literal["auto", "openslide", "tiffslide", "wsidicom"]
Resample = Literal["dct", "exact"]


@dataclass(frozen=True)
class TileConfig:
    """Settings of ``wsipipe tile``; the CLI and a YAML file fill the same fields.

    Runtime options that do not change the outputs (workers, overwrite) are not part of it,
    so its hash tells whether an existing store is still valid for the current settings.
    """

    target_mpp: float = opt(0.5, "Resolution of the stored tiles, um/px")
    tile_px: int = opt(256, "Stored tile size, px")
    overlap_px: int = opt(0, "Overlap between neighbouring tiles, in output px")
    min_tissue: float = opt(0.5, "Minimum tissue fraction of a tile's footprint to keep it")
    # h5 meets the read-speed target and is CLAM/TRIDENT compatible
    format: StoreFormat = opt("h5", "Store format")
    pixels: PixelMode = opt(
        "jpeg", "Tile pixels: jpeg, png (lossless) or none (coords only, read the slide later)"
    )
    jpeg_quality: int = opt(90, "JPEG quality of re-encoded tiles")
    reuse_jpeg: bool = opt(True, "Copy the slide's own JPEG when a tile is one stored tile")
    reader: ReaderChoice = opt(
        "auto", "Slide reader; auto tries OpenSlide, then tiffslide / wsidicom"
    )
    # "dct": tiles reduced 2x/4x/8x (e.g. 0.25 -> 0.5 um/px) are decoded at that scale in
    # libjpeg-turbo's DCT domain, ~2x faster, within ~1 grey level of the exact area mean on
    # average; "exact": full decode + area mean (PIL BOX), the pixels of wsipipe <= 0.1.0
    resample: Resample = opt(
        "dct", "Reduced tiles: dct (decoded at 1/2..1/8 scale, fast) or exact (area mean)"
    )
    mpp: float | None = opt(
        None, "Level-0 mpp for slides that record none (a slides CSV `mpp` column overrides)"
    )
    tissue_geojson_dir: str | None = opt(
        None, "Folder of <slide_id>.geojson tissue polygons to use instead of segmenting"
    )
    tissue: TissueConfig = opt(factory=TissueConfig)

    def __post_init__(self) -> None:
        if not 0.05 <= self.target_mpp <= 64:
            _bad("target_mpp", self.target_mpp, "is outside 0.05..64 um/px")
        if not 16 <= self.tile_px <= 4096:
            _bad("tile_px", self.tile_px, "is outside 16..4096")
        if not 0 <= self.overlap_px < self.tile_px:
            _bad("overlap_px", self.overlap_px, f"must be in 0..tile_px-1 ({self.tile_px - 1})")
        if not 0.0 <= self.min_tissue <= 1.0:
            _bad("min_tissue", self.min_tissue, "must be a fraction in 0..1")
        if not 1 <= self.jpeg_quality <= 100:
            _bad("jpeg_quality", self.jpeg_quality, "must be in 1..100")
        for name, kind in (("format", StoreFormat), ("pixels", PixelMode),
                           ("reader", ReaderChoice), ("resample", Resample)):  # fmt: skip
            choices = typing.get_args(kind)
            if getattr(self, name) not in choices:
                _bad(name, getattr(self, name), f"is not one of {', '.join(choices)}")
        if self.mpp is not None and not 0.01 <= self.mpp <= 100:
            _bad("mpp", self.mpp, "is not a plausible microns-per-pixel (0.01..100)")


def _bad(name: str, value: Any, why: str) -> None:
    raise bad_value("tile", TileConfig, name, value, why)


def _bad_tissue(name: str, value: Any, why: str) -> None:
    _bad(f"tissue.{name}", value, why)
