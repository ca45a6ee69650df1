"""Stage 1: tissue segmentation and tiling of slides into patch stores."""

from wsipipe.tile.config import TileConfig
from wsipipe.tile.inputs import SlideSpec, resolve_slides

__all__ = ["SlideSpec", "TileConfig", "resolve_slides"]
