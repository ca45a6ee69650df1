"""HeatmapConfig: every field is a YAML key and a ``wsipipe heatmap`` option.

Precedence: dataclass default <- ``--config`` YAML <- CLI options (None = not given). The
model settings (method, M, I, S, encoder, input size) come from the checkpoint's saved
training config; only runtime settings (device, precision, loader workers, chunk size) can
be changed here.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Any, Literal

from wsipipe.cli_config import bad_value, opt
from wsipipe.config import Precision, check_device

Normalise = Literal["rank", "percentile", "minmax"]
Colormap = Literal["jet", "viridis", "inferno", "gray"]
Compression = Literal["deflate", "jpeg", "none"]


@dataclass(frozen=True)
class HeatmapConfig:
    """Settings of one ``wsipipe heatmap`` run (units in the comments)."""

    # ---- inputs / outputs -------------------------------------------------------------
    checkpoint: str = opt("", "Trained checkpoint (a `wsipipe train` run's checkpoints/best.pt)")
    stores: str = opt(
        "", "`wsipipe tile --out` directory (or its stores/ folder)", shown="the training run's"
    )
    out: str = opt("heatmaps", "Output folder")
    slides: tuple[str, ...] = opt((), "Slide ids to map", shown="all stores")
    annotations: str = opt(
        "", "Folder of <slide_id>.xml (ASAP) / .geojson (QuPath) tumour annotations: "
        "evaluate the attention against them"
    )  # fmt: skip
    tissue_dir: str = opt(
        "", "Folder of <slide_id>.geojson tissue polygons", shown="<tile out>/tissue"
    )
    features_dir: str = opt(
        "", "Features-mode checkpoints: the feature cache to read and extend with slides the "
        "training did not embed", shown="the training run's"
    )  # fmt: skip
    # ---- scoring (runtime; the model comes from the checkpoint) ---------------------------
    device: str = opt("auto", "auto | cpu | cuda | cuda:N (auto = cuda if present)")
    precision: Precision = opt("auto", "Encoder autocast (auto = bf16 on CUDA, fp32 on CPU)")
    workers: int = opt(2, "Tile-decoding loader processes (0 = decode in the main process)")
    chunk: int = opt(0, "Tiles encoded per step (0 = the checkpoint's I)")
    threads: int = opt(4, "Threads writing each slide's outputs")
    allow_tiling_mismatch: bool = opt(
        False, "Use stores tiled at another tile size or um/px than the training's"
    )
    # ---- rendering ----------------------------------------------------------------------
    normalise: Normalise = opt("rank", "Score -> colour")
    percentile_low: float = opt(1.0, "With --normalise percentile: low clip percentile")
    percentile_high: float = opt(99.0, "With --normalise percentile: high clip percentile")
    colormap: Colormap = opt("jet", "Colour map")
    alpha: float = opt(0.5, "Overlay opacity over tissue")
    smooth_um: float = opt(0.0, "Gaussian smoothing sigma, um (0 = exact tile squares)")
    overlay_mpp: float = opt(8.0, "Overlay PNG resolution, um/px ...")
    overlay_min_px: int = opt(1024, "... refined so that its longest side is at least this ...")
    overlay_max_px: int = opt(4096, "... and coarsened so that it is at most this")
    top_k: int = opt(10, "Top tiles outlined, shown in the gallery and evaluated")
    gallery_px: int = opt(192, "Gallery cell size, px")
    pyramid: bool = opt(True, "Write the pyramidal TIFF")
    pyramid_mpp: float = opt(4.0, "Pyramidal TIFF resolution, um/px (an integer downsample)")
    pyramid_compression: Compression = opt("deflate", "Pyramidal TIFF tile compression")
    geojson: bool = opt(True, "Write the tile GeoJSON")
    # ---- evaluation ---------------------------------------------------------------------
    tumour_threshold: float = opt(0.5, "A tile is tumour when at least this fraction is annotated")

    def __post_init__(self) -> None:
        for name, kind in (("normalise", Normalise), ("colormap", Colormap)):
            choices = typing.get_args(kind)
            if getattr(self, name) not in choices:
                _bad(name, getattr(self, name), f"must be one of {', '.join(choices)}")
        if not 0.0 <= self.percentile_low < self.percentile_high <= 100.0:
            _bad(
                "percentile_low",
                (self.percentile_low, self.percentile_high),
                "must satisfy 0 <= percentile_low < percentile_high <= 100",
            )
        if not 0.0 <= self.alpha <= 1.0:
            _bad("alpha", self.alpha, "must be in [0, 1]")
        if not (math.isfinite(self.smooth_um) and self.smooth_um >= 0):
            _bad("smooth_um", self.smooth_um, "must be >= 0 (0 = no smoothing)")
        for name in ("overlay_mpp", "pyramid_mpp"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                _bad(name, value, "must be > 0 um/px")
        positive = {
            "overlay_min_px": self.overlay_min_px,
            "overlay_max_px": self.overlay_max_px,
            "top_k": self.top_k,
            "gallery_px": self.gallery_px,
            "threads": self.threads,
        }
        for name, value in positive.items():
            if value < 1:
                _bad(name, value, "must be >= 1")
        if self.overlay_min_px > self.overlay_max_px:
            _bad("overlay_min_px", self.overlay_min_px, "must be <= overlay_max_px")
        if self.workers < 0:
            _bad("workers", self.workers, "must be >= 0 (0 = read in the main process)")
        if self.chunk < 0:
            _bad("chunk", self.chunk, "must be >= 0 (0 = the checkpoint's I)")
        if not 0.0 < self.tumour_threshold <= 1.0:
            _bad("tumour_threshold", self.tumour_threshold, "must be in (0, 1]")
        check_device(self.device, "heatmap")
        if self.pyramid_compression not in ("deflate", "jpeg", "none"):
            _bad("pyramid_compression", self.pyramid_compression, "must be deflate, jpeg or none")


def _bad(name: str, value: Any, why: str) -> None:
    raise bad_value("heatmap", HeatmapConfig, name, value, why)


#: Fields that do not change what a slide's outputs contain (the checkpoint FILE is hashed).
RUNTIME_FIELDS = ("checkpoint", "out", "slides", "device", "workers", "threads", "features_dir",
                  "allow_tiling_mismatch")  # fmt: skip
