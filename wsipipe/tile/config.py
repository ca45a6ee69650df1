"""``TileConfig``: everything that determines a slide's tiling outputs."""

from __future__ import annotations

from dataclasses import dataclass, field

from wsipipe.errors import ConfigError
from wsipipe.slide.dctscale import DEFAULT_RESAMPLE, RESAMPLE_MODES
from wsipipe.tile.tissue import TissueConfig

STORE_FORMATS = ("h5", "zarr")
PIXEL_MODES = ("jpeg", "png", "none")
READER_CHOICES = ("auto", "openslide", "tiffslide")


@dataclass(frozen=True)
class TileConfig:
    """Settings of ``wsipipe tile``; the CLI and a YAML file fill the same fields.

    Runtime options that do not change the outputs (workers, overwrite) are not part of it,
    so its hash tells whether an existing store is still valid for the current settings.
    """

    target_mpp: float = 0.5  # microns per pixel of the stored tiles
    tile_px: int = 256  # stored tile size in px
    overlap_px: int = 0  # overlap between neighbouring tiles, in output px
    min_tissue: float = 0.5  # minimum tissue fraction of a tile's footprint to keep it
    format: str = (
        "h5"  # "h5" (default: meets the read-speed target, CLAM/TRIDENT compatible) | "zarr"
    )
    pixels: str = (
        "jpeg"  # "jpeg" | "png" (lossless) | "none" (coords-only: read slide at train time)
    )
    jpeg_quality: int = 90
    reuse_jpeg: bool = True  # copy the slide's own JPEG tile when it is exactly one output tile
    # "dct": tiles reduced 2x/4x/8x (e.g. 0.25 -> 0.5 um/px) are decoded at that scale in
    # libjpeg-turbo's DCT domain, ~2x faster, within ~1 grey level of the exact area mean on
    # average | "exact": full decode + area mean (PIL BOX), the pixels of wsipipe <= 0.1.0
    resample: str = DEFAULT_RESAMPLE
    reader: str = "auto"  # "auto" (OpenSlide, then tiffslide) | "openslide" | "tiffslide"
    mpp: float | None = None  # level-0 mpp for slides that record none (CSV `mpp` overrides)
    tissue_geojson_dir: str | None = None  # use <dir>/<slide_id>.geojson instead of segmenting
    tissue: TissueConfig = field(default_factory=TissueConfig)

    def __post_init__(self) -> None:
        if not 0.05 <= self.target_mpp <= 64:
            raise ConfigError(f"target_mpp={self.target_mpp} is outside 0.05..64 um/px")
        if not 16 <= self.tile_px <= 4096:
            raise ConfigError(f"tile_px={self.tile_px} is outside 16..4096")
        if not 0 <= self.overlap_px < self.tile_px:
            raise ConfigError(f"overlap_px={self.overlap_px} must be in 0..tile_px-1")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ConfigError(f"min_tissue={self.min_tissue} must be a fraction in 0..1")
        if self.format not in STORE_FORMATS:
            raise ConfigError(f"format={self.format!r}; choose one of {', '.join(STORE_FORMATS)}")
        if self.pixels not in PIXEL_MODES:
            raise ConfigError(f"pixels={self.pixels!r}; choose one of {', '.join(PIXEL_MODES)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality={self.jpeg_quality} must be in 1..100")
        if self.resample not in RESAMPLE_MODES:
            raise ConfigError(
                f"resample={self.resample!r}; choose one of {', '.join(RESAMPLE_MODES)}"
            )
        if self.reader not in READER_CHOICES:
            raise ConfigError(f"reader={self.reader!r}; choose one of {', '.join(READER_CHOICES)}")
        if self.mpp is not None and not 0.01 <= self.mpp <= 100:
            raise ConfigError(f"mpp={self.mpp} is not a plausible microns-per-pixel (0.01..100)")
