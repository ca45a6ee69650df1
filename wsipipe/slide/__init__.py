"""Slide reading: OpenSlide with a tiffslide fallback, mpp-aware tiles, thumbnails.

>>> with open_slide("slide.svs") as slide:          # doctest: +SKIP
...     reader = slide.tile_reader(target_mpp=0.5, tile_px=256)
...     tile = reader.read(0, 0)                    # (256, 256, 3) uint8 RGB
"""

from __future__ import annotations

from wsipipe.slide.info import READERS, SlideInfo, slide_changes, slide_fingerprint
from wsipipe.slide.slide import Slide, open_slide
from wsipipe.slide.tiles import TileReader

__all__ = [
    "READERS", "Slide", "SlideInfo", "TileReader", "open_slide", "slide_changes",
    "slide_fingerprint",
]  # fmt: skip
