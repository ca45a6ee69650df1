"""HeatmapConfig: every field is a YAML key and a ``wsipipe heatmap`` option.

Precedence: dataclass default <- ``--config`` YAML <- CLI options (None = not given). The
model settings (method, M, I, S, encoder, input size) come from the checkpoint's saved
training config; only runtime settings (device, precision, loader workers, chunk size) can
be changed here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from wsipipe.errors import ConfigError
from wsipipe.heatmap.render import COLORMAPS, NORMALISATIONS

Normalise = Literal["rank", "percentile", "minmax"]
Compression = Literal["deflate", "jpeg", "none"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class HeatmapConfig:
    """Settings of one ``wsipipe heatmap`` run (units in the comments)."""

    # ---- inputs / outputs -------------------------------------------------------------
    checkpoint: str = ""  # a training run's checkpoints/best.pt (or last.pt)
    stores: str = ""  # `wsipipe tile --out` directory (or its stores/ subdirectory)
    out: str = "heatmaps"  # output directory
    slides: tuple[str, ...] = ()  # slide ids to map; () = every store in --stores
    annotations: str = ""  # folder of <slide_id>.xml (ASAP) / .geojson / .json (QuPath)
    tissue_dir: str = ""  # folder of <slide_id>.geojson tissue polygons; "" = <tile out>/tissue
    # features-mode checkpoints: the feature cache to read (and extend with slides the training
    # did not embed); "" = the checkpoint's own setting (default: <tile out>/features/...)
    features_dir: str = ""
    # ---- scoring (runtime; the model comes from the checkpoint) ---------------------------
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Precision = "auto"  # encoder autocast; auto = bf16 on CUDA, fp32 on CPU
    workers: int = 2  # DataLoader processes reading/decoding tiles
    chunk: int = 0  # tiles encoded per step; 0 = the checkpoint's I
    threads: int = 4  # threads writing a slide's outputs (overlay, pyramid, GeoJSON, ...)
    # ---- rendering ----------------------------------------------------------------------
    normalise: Normalise = "rank"  # score -> colour: rank | percentile | minmax
    percentile_low: float = 1.0  # with normalise=percentile: clip range (percent)
    percentile_high: float = 99.0
    colormap: str = "jet"  # jet | viridis | inferno | gray
    alpha: float = 0.5  # overlay opacity of the colour map over tissue
    smooth_um: float = 0.0  # Gaussian smoothing sigma (um); 0 = exact tile squares
    overlay_mpp: float = 8.0  # overlay PNG resolution (um/px) ...
    overlay_min_px: int = 1024  # ... refined so that its longest side is >= this ...
    overlay_max_px: int = 4096  # ... and coarsened so that it is <= this
    top_k: int = 10  # tiles outlined on the overlay, shown in the gallery, and evaluated
    gallery_px: int = 192  # gallery cell size (px)
    pyramid: bool = True  # write the pyramidal TIFF
    pyramid_mpp: float = 4.0  # heatmap TIFF resolution (um/px), rounded to an integer downsample
    pyramid_compression: Compression = "deflate"
    geojson: bool = True  # write the tile GeoJSON
    # ---- evaluation ---------------------------------------------------------------------
    tumour_threshold: float = 0.5  # a tile is tumour when >= this fraction of it is annotated

    def __post_init__(self) -> None:
        if self.normalise not in NORMALISATIONS:
            _bad("normalise", self.normalise, f"must be one of {', '.join(NORMALISATIONS)}")
        if self.colormap not in COLORMAPS:
            _bad("colormap", self.colormap, f"must be one of {', '.join(COLORMAPS)}")
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
        if not _DEVICE_RE.match(self.device):
            _bad("device", self.device, "must be auto, cpu, cuda or cuda:N")
        if self.pyramid_compression not in ("deflate", "jpeg", "none"):
            _bad("pyramid_compression", self.pyramid_compression, "must be deflate, jpeg or none")


def _bad(name: str, value: Any, why: str) -> None:
    flag = name.replace("_", "-")
    raise ConfigError(f"heatmap config: `{name}` = {value!r} {why}; fix --{flag} or the YAML")


#: Fields that do not change what a slide's outputs contain (the checkpoint FILE is hashed).
RUNTIME_FIELDS = ("checkpoint", "out", "slides", "device", "workers", "threads", "features_dir")
