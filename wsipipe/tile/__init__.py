"""Stage 1: tissue segmentation and tiling of slides into patch stores."""

from wsipipe.tile.config import TileConfig
from wsipipe.tile.inputs import SlideInput, resolve_slides

__all__ = ["SlideInput", "TileConfig", "resolve_slides"]
