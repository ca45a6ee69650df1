"""Writing Aperio-style pyramidal TIFFs: the one writer behind generated slides and heatmaps.

Page layout, as Aperio writes it and as OpenSlide (vendor ``aperio``), tiffslide / tifffile
(SVS series) and QuPath read it:

* page 0: level 0, tiled, ImageDescription ``Aperio Image Library ... |AppMag = ..|MPP = ..``
  and TIFF resolution tags (px/cm);
* page 1: a small stripped thumbnail (tifffile's SVS reader expects it there);
* pages 2..: the lower levels, tiled, each 1/4 of the previous.

Users: :mod:`wsipipe.synth.svs` (generated cohorts), :mod:`wsipipe.heatmap.pyramid` (heatmap
overlays) and :mod:`wsipipe.testing.slides` (test slides). They differ only in what the tiles
hold and how they are compressed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import tifffile

LEVEL_FACTOR = 4  # each level is 1/4 of the previous one, as Aperio writes them
_HEADER = "Aperio Image Library v12.0.15 \r\n"


def level_shapes(width: int, height: int, min_level_size: int) -> list[tuple[int, int]]:
    """(width, height) of each pyramid level: level 0, then //4 while the last is too large.

    A further level is added while the longest side of the last one exceeds
    ``min_level_size`` (and the new level is at least 1 px).
    """
    shapes = [(width, height)]
    while max(shapes[-1]) > min_level_size:
        w, h = shapes[-1]
        nw, nh = w // LEVEL_FACTOR, h // LEVEL_FACTOR
        if nw < 1 or nh < 1:
            break
        shapes.append((nw, nh))
    return shapes


def block_average(img: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks of an (H, W, C) uint8 image, rounded to uint8.

    Trailing rows/columns that do not fill a whole block are dropped: output is
    (H // factor, W // factor, C).
    """
    if factor == 1:
        return img
    h, w = img.shape[0] // factor, img.shape[1] // factor
    if factor * factor * 255 < 2**16:  # exact integer sums of strided views (fast path)
        src = img[: h * factor, : w * factor]
        rows = src[0::factor].astype(np.uint16)
        for k in range(1, factor):
            rows += src[k::factor]
        acc = rows[:, 0::factor].copy()
        for k in range(1, factor):
            acc += rows[:, k::factor]
        half = (factor * factor) // 2
        return ((acc + half) // (factor * factor)).astype(np.uint8)
    blocks = img[: h * factor, : w * factor].reshape(h, factor, w, factor, -1)
    return (blocks.mean(axis=(1, 3), dtype=np.float64) + 0.5).astype(np.uint8)


def _fields(fields: Sequence[tuple[str, str]]) -> str:
    return "".join(f"|{key} = {value}" for key, value in fields)


def level_description(
    width: int,
    height: int,
    tile: int,
    codec: str,
    fields: Sequence[tuple[str, str]],
    level_size: tuple[int, int] | None = None,
) -> str:
    """ImageDescription of a tiled level: ``width x height`` is level 0's size, ``codec``
    e.g. ``JPEG/RGB Q=90``; ``level_size`` (w, h) for the levels below 0; ``fields`` the
    ``|key = value`` pairs (AppMag and MPP first: OpenSlide reads them)."""
    head = f"{_HEADER}{width}x{height} [0,0 {width}x{height}] ({tile}x{tile})"
    if level_size is not None:
        head += f" -> {level_size[0]}x{level_size[1]}"
    return f"{head} {codec}{_fields(fields)}"


def thumbnail_description(
    width: int, height: int, thumb_size: tuple[int, int], fields: Sequence[tuple[str, str]]
) -> str:
    return f"{_HEADER}{width}x{height} -> {thumb_size[0]}x{thumb_size[1]} - {_fields(fields)}"


class AperioTiffWriter:
    """Writes the pages of one pyramid in Aperio's order (level 0, thumbnail, levels 1..).

    ``mpp``: um per level-0 px, written as the resolution tags of every tiled level (level
    0's resolution, as Aperio does; readers take downsamples from the level sizes). ``page``
    holds keyword arguments of ``tifffile.TiffWriter.write`` shared by all pages
    (compression, photometric ...), ``tiled`` more for the tiled levels only.
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        mpp: float | None,
        tile: int,
        page: dict[str, Any],
        tiled: dict[str, Any] | None = None,
    ) -> None:
        self._page = {"metadata": None, "software": False, **page}
        resolution: dict[str, Any] = {}
        if mpp is not None:  # None: a slide that records no resolution (tests of that case)
            res = 1e4 / mpp  # px per cm
            resolution = {"resolution": (res, res), "resolutionunit": "CENTIMETER"}
        self._tiled = {**self._page, "tile": (tile, tile), **resolution, **(tiled or {})}
        self._tif = tifffile.TiffWriter(Path(path), bigtiff=width * height * 3 > 2**31)
        self._pages = 0

    def level(
        self,
        data: np.ndarray | Iterator[np.ndarray] | Iterator[bytes],
        shape: tuple[int, int, int],
        description: str,
        **kwargs: Any,
    ) -> None:
        """A tiled level: an (h, w, 3) array or its tiles (arrays or encoded bytes) in
        row-major order. Level 0 must come first, the thumbnail right after it."""
        if self._pages == 1:
            raise RuntimeError("write the thumbnail page right after level 0")
        extra = {} if isinstance(data, np.ndarray) else {"shape": shape, "dtype": np.uint8}
        self._tif.write(data, description=description, **{**self._tiled, **extra, **kwargs})
        self._pages += 1

    def thumbnail(self, image: np.ndarray, description: str, **kwargs: Any) -> None:
        """The stripped thumbnail page (right after level 0)."""
        if self._pages != 1:
            raise RuntimeError("the thumbnail page comes right after level 0")
        self._tif.write(image, description=description, rowsperstrip=16, **{**self._page, **kwargs})
        self._pages += 1

    def close(self) -> None:
        self._tif.close()

    def __enter__(self) -> AperioTiffWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
