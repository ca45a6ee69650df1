"""Reduced-scale JPEG decoding in the DCT domain (libjpeg-turbo's 1/2, 1/4 and 1/8 scales).

A tile that is read at ``read_px`` and stored at ``tile_px = read_px / r`` (e.g. a 0.25 um/px
slide tiled at 0.5 um/px: r = 2) need not be decoded in full and then area-averaged: libjpeg
can run each 8x8 block's inverse DCT at (8/f)x(8/f) from the block's lowest frequencies,
which skips most of the IDCT, colour conversion and the resize. The result is a low-pass
reduction, not the exact area mean: it differs by about one grey level on average and by a
few levels at sharp edges (the tolerance is pinned in tests/slide/test_dctscale.py).

Pure functions here: which factor a geometry allows, and decoding one standalone JPEG
stream (tables merged, colour space pinned: see :mod:`wsipipe.slide.jpeg`) at 1/f.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import simplejpeg

from wsipipe.slide.jpeg import JpegFormatError

#: ``resample`` modes of a TileReader / TileConfig: "dct" reduces 2x/4x/8x in the DCT domain
#: wherever the tile grid allows it (exact path elsewhere), "exact" always decodes in full
#: and area-averages (PIL BOX; LANCZOS for non-integer factors).
RESAMPLE_MODES = ("dct", "exact")
DEFAULT_RESAMPLE = "dct"
DCT_FACTORS = (8, 4, 2)  # the power-of-two scales whose geometry is exact


def stored_resample(config: Mapping[str, object]) -> str:
    """The resample mode a patch store's tiles were made with, from its recorded TileConfig
    (stores written before the option existed: "exact"), so that tiles read back from the
    slide (coords-only stores) have the pixels the store was made with."""
    mode = config.get("resample", "exact")
    return mode if isinstance(mode, str) and mode in RESAMPLE_MODES else "exact"


def dct_factor(reduction: int, tile_width: int, tile_height: int) -> int:
    """Largest f in (8, 4, 2) that divides the integer ``reduction`` (read px per output px)
    and both file tile sides, so that each stored tile maps to whole pixels at 1/f; 1 when
    none does (then the exact path is used).

    >>> dct_factor(2, 256, 256), dct_factor(16, 256, 256), dct_factor(3, 256, 256)
    (2, 8, 1)
    """
    for f in DCT_FACTORS:
        if reduction % f == 0 and tile_width % f == 0 and tile_height % f == 0:
            return f
    return 1


def decode_reduced(
    stream: bytes, factor: int, width: int, height: int, out: np.ndarray | None = None
) -> np.ndarray:
    """(height // factor, width // factor, 3) uint8 RGB of a standalone JPEG of width x height
    px, decoded at 1/factor in the DCT domain (accurate integer IDCT, smooth chroma
    upsampling). Raises JpegFormatError when the stream is not that size, ValueError when
    libjpeg-turbo cannot decode it. Releases the GIL while decoding. ``out``: a C-contiguous
    (height // factor, width // factor, 3) uint8 array to decode into (returned).
    """
    size = simplejpeg.decode_jpeg_header(stream)[:2]  # (height, width) of the full image
    if size != (height, width):
        raise JpegFormatError(f"JPEG is {size[1]}x{size[0]} px, expected {width}x{height}")
    h, w = height // factor, width // factor
    # simplejpeg picks the smallest libjpeg scale whose output is >= (min_height, min_width)
    img: np.ndarray = simplejpeg.decode_jpeg(
        stream, colorspace="RGB", min_height=h, min_width=w, strict=True, buffer=out
    )
    if img.shape != (h, w, 3):
        raise JpegFormatError(
            f"reduced decode gave {img.shape}, expected {(h, w, 3)} for a {width}x{height} "
            f"tile at 1/{factor}"
        )
    return img
