"""Write a tiled, pyramidal, JPEG-compressed Aperio-style SVS from a render callback.

The page layout is Aperio's (:mod:`wsipipe.slide.aperio_writer`): level 0, a stripped JPEG
thumbnail, then levels at downsample 4, 16, ...; OpenSlide reports vendor ``aperio``.

Level 0 is rendered and written tile by tile through an iterator; it is never whole in
memory. Lower levels are exact 4x4 block averages of the rendered level 0: level 1 is
accumulated while level 0 is written (in RAM when small, else in a temporary memory-mapped
file next to the output), and each further level is block-averaged from the previous one.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from wsipipe.errors import ConfigError
from wsipipe.fileio import atomic_path
from wsipipe.slide.aperio_writer import (
    LEVEL_FACTOR,
    AperioTiffWriter,
    block_average,
    level_description,
    level_shapes,
    thumbnail_description,
)

__all__ = ["RenderFn", "block_average", "level_shapes", "write_svs"]

#: render(x, y, w, h, downsample) -> (h, w, 3) uint8, (x, y) the top-left in level-0 px.
RenderFn = Callable[[int, int, int, int, float], np.ndarray]

_THUMB_MAX = 768  # longest side of the thumbnail page, px
_RAM_LIMIT_BYTES = 256 * 2**20  # larger level-1 buffers go to a memory-mapped temp file
_RENDER_BLOCK = 1024  # level-0 px rendered per call along x (several tiles at once)


def _check_args(
    path: Path,
    width: int,
    height: int,
    mpp: float,
    tile: int,
    quality: int,
    min_level_size: int,
) -> None:
    if width < 16 or height < 16:
        raise ConfigError(f"{path}: slide size {width}x{height} is too small; use >= 16x16 px")
    if not (math.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"{path}: mpp={mpp!r} must be a positive number of um per pixel")
    if tile < 16 or tile % 16:
        raise ConfigError(f"{path}: tile={tile} must be a multiple of 16 (e.g. 256)")
    if not 1 <= quality <= 100:
        raise ConfigError(f"{path}: JPEG quality={quality} must be in 1..100")
    if min_level_size < 1:
        raise ConfigError(f"{path}: min_level_size={min_level_size} must be >= 1")


def _pad_to(block: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pad an (h', w', 3) block to (h, w, 3) by repeating the last row/column."""
    ph, pw = h - block.shape[0], w - block.shape[1]
    if ph == 0 and pw == 0:
        return block
    return np.pad(block, ((0, ph), (0, pw), (0, 0)), mode="edge")


def _alloc(shape: tuple[int, int, int], tmpdir: Path, keep: list[Path]) -> np.ndarray:
    """A zeroed uint8 array; memory-mapped in ``tmpdir`` when larger than the RAM limit."""
    nbytes = shape[0] * shape[1] * shape[2]
    if nbytes <= _RAM_LIMIT_BYTES:
        return np.zeros(shape, np.uint8)
    fd, name = tempfile.mkstemp(prefix=".wsipipe-level-", suffix=".u8", dir=tmpdir)
    os.close(fd)
    keep.append(Path(name))
    return np.lib.format.open_memmap(name, mode="w+", dtype=np.uint8, shape=shape)


def _level0_tiles(
    render: RenderFn, width: int, height: int, tile: int, level1: np.ndarray | None
) -> Iterator[np.ndarray]:
    """Yield level-0 tiles in row-major order, rendering several tiles per call.

    While doing so, write the 4x4 block average of each rendered row band into ``level1``.
    """
    f = LEVEL_FACTOR
    block_w = max(tile, (_RENDER_BLOCK // tile) * tile)
    for y in range(0, height, tile):
        th = min(tile, height - y)
        for bx in range(0, width, block_w):
            bw = min(block_w, width - bx)
            block = np.asarray(render(bx, y, bw, th, 1.0))
            if block.shape != (th, bw, 3) or block.dtype != np.uint8:
                raise ConfigError(
                    f"render({bx}, {y}, {bw}, {th}, 1.0) returned {block.shape} {block.dtype}; "
                    f"it must return ({th}, {bw}, 3) uint8"
                )
            if level1 is not None:
                small = block_average(block, f)
                y1, x1 = y // f, bx // f
                hh = min(small.shape[0], level1.shape[0] - y1)
                ww = min(small.shape[1], level1.shape[1] - x1)
                level1[y1 : y1 + hh, x1 : x1 + ww] = small[:hh, :ww]
            for tx in range(0, bw, tile):
                yield _pad_to(block[:, tx : tx + tile], tile, tile)


def _array_tiles(arr: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    for y in range(0, arr.shape[0], tile):
        for x in range(0, arr.shape[1], tile):
            yield _pad_to(np.ascontiguousarray(arr[y : y + tile, x : x + tile]), tile, tile)


def _downsample_into(src: np.ndarray, dst: np.ndarray, factor: int) -> None:
    """dst = block_average(src, factor), processed in row bands (src may be a memmap)."""
    band = max(1, 2048 // factor)
    for y in range(0, dst.shape[0], band):
        y2 = min(dst.shape[0], y + band)
        part = block_average(np.asarray(src[y * factor : y2 * factor]), factor)
        dst[y:y2] = part[:, : dst.shape[1]]


def _thumbnail(src: np.ndarray) -> np.ndarray:
    """Shrink an image by an integer block average so its longest side is <= _THUMB_MAX."""
    factor = max(1, math.ceil(max(src.shape[:2]) / _THUMB_MAX))
    factor = min(factor, src.shape[0], src.shape[1])
    out = np.empty((src.shape[0] // factor, src.shape[1] // factor, 3), np.uint8)
    _downsample_into(src, out, factor)
    return out


def write_svs(
    path: str | Path,
    width: int,
    height: int,
    render: RenderFn,
    mpp: float,
    tile: int = 256,
    quality: int = 90,
    app_mag: float | None = None,
    min_level_size: int = 1024,
) -> None:
    """Write a tiled, pyramidal, JPEG-compressed Aperio-style SVS.

    Args:
        path: output file (written via a temporary name in the same folder, then renamed).
        width, height: level-0 size in px.
        render: ``render(x, y, w, h, downsample)`` returns the (h, w, 3) uint8 RGB region
            whose top-left is (x, y) in level-0 px at ``downsample`` level-0 px per output
            px. This writer only calls it with downsample 1.0 (lower levels are exact block
            averages of level 0), for regions up to ``1024 x tile`` px.
        mpp: microns per level-0 pixel (written as ``MPP =`` and as TIFF resolution).
        tile: tile edge in px (multiple of 16).
        quality: JPEG quality 1..100.
        app_mag: objective power written as ``AppMag``; default ``10 / mpp`` (20 at 0.5).
        min_level_size: add levels with downsample 4, 16, ... while the last level's longest
            side exceeds this.

    Colours are stored as JPEG/YCbCr (4:2:0), which OpenSlide and tiffslide both decode to
    the same RGB.
    """
    out = Path(path)
    _check_args(out, width, height, mpp, tile, quality, min_level_size)
    mag = float(app_mag) if app_mag is not None else round(10.0 / mpp, 3)
    shapes = level_shapes(width, height, min_level_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch: list[Path] = []
    f = LEVEL_FACTOR
    # Level 1 is accumulated while level 0 is written; it feeds every smaller level and the
    # thumbnail (without a pyramid it serves the thumbnail only).
    level1_shape = (height // f, width // f, 3)
    page: dict[str, Any] = {
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": quality},
    }
    fields = [("AppMag", f"{mag:g}"), ("MPP", f"{mpp:.6g}")]
    codec = f"JPEG/RGB Q={quality}"
    try:
        level1 = _alloc(level1_shape, out.parent, scratch)
        with (
            atomic_path(out) as tmp_out,
            AperioTiffWriter(tmp_out, width, height, mpp, tile, page) as tif,
        ):
            tif.level(
                _level0_tiles(render, width, height, tile, level1),
                (height, width, 3),
                level_description(width, height, tile, codec, fields),
            )
            levels: list[np.ndarray] = [level1]
            for w, h in shapes[2:]:
                nxt = _alloc((h, w, 3), out.parent, scratch)
                _downsample_into(levels[-1], nxt, f)
                levels.append(nxt)
            thumb = _thumbnail(levels[-1])
            tif.thumbnail(
                thumb,
                thumbnail_description(width, height, (thumb.shape[1], thumb.shape[0]), fields),
            )
            for index, arr in enumerate(levels[: len(shapes) - 1], start=1):
                lw, lh = shapes[index]
                tif.level(
                    _array_tiles(arr, tile),
                    (lh, lw, 3),
                    level_description(width, height, tile, codec, fields, (lw, lh)),
                )
            del levels, level1
    finally:
        for p in scratch:
            p.unlink(missing_ok=True)
