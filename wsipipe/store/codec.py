"""Tile pixel codecs: JPEG (lossy, the default) and PNG (lossless), via imagecodecs.

imagecodecs wraps libjpeg-turbo and libpng; on 256 px H&E tiles it decodes JPEG ~10% faster
than Pillow and can decode straight into a caller-provided array (``out=``), which the patch
store uses to fill a batch without a copy (measured in ``benchmarks/bench_store.py``).
"""

from __future__ import annotations

from typing import cast

import imagecodecs
import numpy as np

from wsipipe.errors import ConfigError, StoreError
from wsipipe.slide.dctscale import DCT_FACTORS, decode_reduced

#: Values of ``StoreMeta.pixels``; "none" is a coords-only store (no tile pixels).
PIXEL_FORMATS = ("jpeg", "png", "none")

_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_END = b"\xff\xd9"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: zlib level for PNG: level 1 is ~2x faster to encode than 6 and within 1% in size on H&E.
_PNG_LEVEL = 1


def encode_tile(tile: np.ndarray, pixels: str, quality: int = 90) -> bytes:
    """Encode one RGB tile.

    Args:
        tile: (H, W, 3) uint8 RGB pixels.
        pixels: "jpeg" (4:2:0 chroma subsampling, ``quality`` 1-100) or "png" (lossless).
        quality: JPEG quality; ignored for PNG.

    Returns:
        The encoded bytes (a complete JPEG or PNG file).
    """
    if not isinstance(tile, np.ndarray) or tile.dtype != np.uint8 or tile.ndim != 3:
        raise ValueError(f"encode_tile needs an (H, W, 3) uint8 array, got {_describe(tile)}")
    if tile.shape[2] != 3 or tile.shape[0] == 0 or tile.shape[1] == 0:
        raise ValueError(f"encode_tile needs an (H, W, 3) uint8 array, got {_describe(tile)}")
    tile = np.ascontiguousarray(tile)
    if pixels == "jpeg":
        if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)):
            raise ConfigError(f"JPEG quality {quality!r} is not an integer; use 1-100 (e.g. 90)")
        if not 1 <= int(quality) <= 100:
            raise ConfigError(f"JPEG quality {quality} is out of range; use 1-100 (e.g. 90)")
        return bytes(imagecodecs.jpeg8_encode(tile, level=int(quality), subsampling="420"))
    if pixels == "png":
        return bytes(imagecodecs.png_encode(tile, level=_PNG_LEVEL))
    raise ConfigError(
        f"tile pixel format {pixels!r} cannot be encoded; use 'jpeg' or 'png' "
        "('none' stores coordinates only)"
    )


def decode_tile(data: bytes | bytearray | memoryview, out: np.ndarray | None = None) -> np.ndarray:
    """Decode one JPEG or PNG tile (format detected from its magic bytes).

    Args:
        data: the encoded tile, as written by :func:`encode_tile`.
        out: optional C-contiguous (H, W, 3) uint8 array to decode into (no extra copy).

    Returns:
        (H, W, 3) uint8 RGB pixels (``out`` itself when given).
    """
    head = bytes(data[:8])
    try:
        if head.startswith(_JPEG_MAGIC):
            if bytes(data[-2:]) != _JPEG_END:  # libjpeg pads a truncated image with grey
                raise RuntimeError("JPEG data is truncated (no end-of-image marker)")
            img = imagecodecs.jpeg8_decode(cast(bytes, data), out=out)
        elif head == _PNG_MAGIC:
            img = imagecodecs.png_decode(cast(bytes, data), out=out)
        else:
            raise StoreError(
                f"tile data starting {head!r} is neither JPEG nor PNG; the store is corrupt, "
                "re-run `wsipipe tile` for this slide"
            )
    except (RuntimeError, ValueError) as err:  # imagecodecs' codec errors are RuntimeErrors
        raise StoreError(
            f"tile data cannot be decoded ({err}); the store is corrupt, "
            "re-run `wsipipe tile` for this slide"
        ) from err
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise StoreError(
            f"decoded tile has shape {img.shape} {img.dtype}, expected (H, W, 3) uint8; "
            "re-run `wsipipe tile` for this slide"
        )
    return img


def reduced_factor(tile_px: int, min_px: int) -> int:
    """Largest f in (8, 4, 2) dividing ``tile_px`` with ``tile_px // f >= min_px``: a
    ``tile_px`` JPEG tile that is to be resized to ``min_px`` can be decoded at 1/f in the DCT
    domain (then resized the rest of the way, if at all); 1 when none fits.

    >>> reduced_factor(256, 64), reduced_factor(256, 96), reduced_factor(256, 256)
    (4, 2, 1)
    """
    if min_px <= 0:
        return 1
    for f in DCT_FACTORS:
        if tile_px % f == 0 and tile_px // f >= min_px:
            return f
    return 1


def decode_tile_reduced(
    data: bytes | bytearray | memoryview, factor: int, out: np.ndarray
) -> np.ndarray:
    """Decode one tile at 1/``factor`` of its size into ``out`` ((H/f, W/f, 3) uint8): JPEG in
    the DCT domain (libjpeg-turbo scaled IDCT, accurate DCT and upsampling), PNG in full and
    area-averaged (PIL BOX). Errors as :func:`decode_tile`."""
    head = bytes(data[:8])
    if not head.startswith(_JPEG_MAGIC):
        full = decode_tile(data)
        from PIL import Image

        h, w = out.shape[:2]
        out[:] = np.asarray(Image.fromarray(full).resize((w, h), Image.Resampling.BOX))
        return out
    h, w = out.shape[:2]
    try:
        if bytes(data[-2:]) != _JPEG_END:  # libjpeg pads a truncated image with grey
            raise ValueError("JPEG data is truncated (no end-of-image marker)")
        decode_reduced(cast(bytes, data), factor, w * factor, h * factor, out)
    except ValueError as err:  # simplejpeg's codec errors and JpegFormatError
        raise StoreError(
            f"tile data cannot be decoded at 1/{factor} ({err}); the store is corrupt, "
            "re-run `wsipipe tile` for this slide"
        ) from err
    return out


def _describe(obj: object) -> str:
    if isinstance(obj, np.ndarray):
        return f"shape {obj.shape} dtype {obj.dtype}"
    return type(obj).__name__
