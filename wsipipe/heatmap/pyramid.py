"""A tiled pyramidal TIFF of a heatmap that slide viewers open and overlay on the slide.

The file is Aperio-like so that OpenSlide (vendor ``aperio``), tiffslide/tifffile (SVS
series) and QuPath/ASAP read its dimensions and microns-per-pixel:

* page 0: level 0, tiled RGB (256 px tiles, deflate by default), ImageDescription
  ``Aperio Image Library ... |AppMag = ..|MPP = ..`` plus TIFF resolution tags (px/cm);
* page 1: a small stripped thumbnail (tifffile's SVS reader expects it there);
* pages 2..: lower levels, each 1/4 of the previous (as Aperio writes them).

Geometry: the heatmap's level 0 has ``downsample`` (an integer) slide level-0 px per pixel,
so it covers the slide's full physical extent at ``mpp = slide_mpp * downsample``; its pixel
(i, j) shows the (mean) colour of the tile(s) containing the slide point
((i + 0.5) * downsample, (j + 0.5) * downsample). A viewer that scales images by their mpp
overlays it exactly on the slide.

Memory: every TIFF tile is rendered on its own from the O(N) tile scores -- by a per-pixel
lookup in a table of colours when the tiles lie on a lattice (the tiler's layout, with or
without overlap; :mod:`wsipipe.heatmap.grid`), else by averaging the tiles found through a
bucket index -- so no level is ever held whole in memory.

Viewing it over the slide (the transform is a pure scale by ``Downsample``, recorded in the
description together with the slide's size):

* QuPath: add the slide and the heatmap TIFF to a project; open the slide, then
  Analyze > Interactive image alignment, add the heatmap as overlay, set its scale to
  ``Downsample`` (no rotation or shift) and choose the opacity. For a quick look import
  ``geojson/<id>.geojson`` instead (File > Import objects) and colour the tiles by the
  ``attention`` measurement (Measure > Show measurement maps).
* ASAP: open the slide, then load the TIFF as an overlay image; ASAP stretches an overlay
  to the slide by the ratio of their dimensions, which is ``Downsample`` here.
* Python: ``openslide.OpenSlide(tif)`` / ``tiffslide.TiffSlide(tif)`` report the heatmap's
  dimensions and ``mpp-x`` / ``mpp-y``; heatmap pixel (i, j) <-> slide level-0
  ((i + 0.5) * Downsample, (j + 0.5) * Downsample).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from wsipipe.errors import ConfigError
from wsipipe.heatmap.grid import Lattice, find_lattice
from wsipipe.heatmap.png import zlib_compress
from wsipipe.heatmap.render import colorize, render_values, smoothing_margin, tile_spans
from wsipipe.slide.aperio_writer import (
    LEVEL_FACTOR,
    AperioTiffWriter,
    level_description,
    level_shapes,
    thumbnail_description,
)

COMPRESSIONS = ("deflate", "jpeg", "none")
_THUMB_MAX = 512  # longest side of the thumbnail page
_BUFFER_BYTES = 16 * 2**20  # tiles handed to the compression threads at a time
_ZLIB_LEVEL = 2  # zlib-ng level of deflate tiles (its fast strategy: steady speed)


@dataclass(frozen=True)
class PyramidGeometry:
    """Size and resolution of a heatmap pyramid for one slide.

    slide_width, slide_height: slide level-0 size (px); slide_mpp: um per slide level-0 px;
    downsample: slide level-0 px per heatmap level-0 px (integer >= 1); tile: TIFF tile edge
    (px, multiple of 16); min_level_size: add coarser levels while the last one's longest side
    exceeds this.
    """

    slide_width: int
    slide_height: int
    slide_mpp: float
    downsample: int
    tile: int = 256
    min_level_size: int = 512

    def __post_init__(self) -> None:
        if self.slide_width < 1 or self.slide_height < 1:
            raise ConfigError(
                f"heatmap pyramid: slide size {self.slide_width}x{self.slide_height} must be "
                "positive"
            )
        if not (math.isfinite(self.slide_mpp) and self.slide_mpp > 0):
            raise ConfigError(f"heatmap pyramid: slide mpp {self.slide_mpp!r} must be > 0")
        if self.downsample < 1:
            raise ConfigError(f"heatmap pyramid: downsample {self.downsample} must be >= 1")
        if self.tile < 16 or self.tile % 16:
            raise ConfigError(f"heatmap pyramid: tile {self.tile} must be a multiple of 16")
        if self.min_level_size < 1:
            raise ConfigError(f"heatmap pyramid: min_level_size {self.min_level_size} must be >= 1")

    @classmethod
    def for_mpp(
        cls, slide_width: int, slide_height: int, slide_mpp: float, target_mpp: float, **kw: int
    ) -> PyramidGeometry:
        """Geometry whose level-0 resolution is the integer downsample closest to target_mpp."""
        if not target_mpp > 0:
            raise ConfigError(f"heatmap: pyramid_mpp = {target_mpp} must be > 0")
        ds = max(1, round(target_mpp / slide_mpp))
        return cls(slide_width, slide_height, slide_mpp, ds, **kw)

    @property
    def width(self) -> int:
        return -(-self.slide_width // self.downsample)

    @property
    def height(self) -> int:
        return -(-self.slide_height // self.downsample)

    @property
    def mpp(self) -> float:
        """um per heatmap level-0 px."""
        return self.slide_mpp * self.downsample

    def levels(self) -> list[tuple[int, int, int]]:
        """(width, height, slide level-0 px per px) of each level, level 0 first."""
        shapes = level_shapes(self.width, self.height, self.min_level_size)
        return [(w, h, self.downsample * LEVEL_FACTOR**i) for i, (w, h) in enumerate(shapes)]


def _bucket_index(
    spans: np.ndarray, tile: int, grid_w: int, grid_h: int, margin: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each TIFF tile (row-major id), the tiles (rows of ``spans``) that may touch it.

    Returns (order, starts): ``order[starts[c]:starts[c + 1]]`` are the span indices of
    cell c. Spans are widened by ``margin`` px (smoothing halo).
    """
    n_cells = grid_w * grid_h
    if len(spans) == 0:
        return np.zeros(0, np.int64), np.zeros(n_cells + 1, np.int64)
    cx0 = np.clip((spans[:, 0] - margin) // tile, 0, grid_w - 1)
    cx1 = np.clip((spans[:, 2] - 1 + margin) // tile, 0, grid_w - 1)
    cy0 = np.clip((spans[:, 1] - margin) // tile, 0, grid_h - 1)
    cy1 = np.clip((spans[:, 3] - 1 + margin) // tile, 0, grid_h - 1)
    nonempty = (spans[:, 2] > spans[:, 0]) & (spans[:, 3] > spans[:, 1])
    nx = np.where(nonempty, cx1 - cx0 + 1, 0)
    ny = np.where(nonempty, cy1 - cy0 + 1, 0)
    counts = nx * ny
    owner = np.repeat(np.arange(len(spans)), counts)
    # position of each (span, cell) pair within its span's nx * ny block
    first = np.repeat(np.cumsum(counts) - counts, counts)
    local = np.arange(int(counts.sum())) - first
    cells = (cy0[owner] + local // nx[owner]) * grid_w + (cx0[owner] + local % nx[owner])
    order = np.argsort(cells, kind="stable")
    starts = np.searchsorted(cells[order], np.arange(n_cells + 1))
    return owner[order], starts


def _level_tiles(
    spans: np.ndarray,
    values: np.ndarray,
    width: int,
    height: int,
    tile: int,
    sigma_px: float,
    lut: np.ndarray,
    background: Sequence[int],
) -> Iterator[np.ndarray]:
    """Yield the (tile, tile, 3) uint8 tiles of one level in row-major order (general path:
    any tile layout, overlaps averaged, optional smoothing)."""
    gw, gh = -(-width // tile), -(-height // tile)
    order, starts = _bucket_index(spans, tile, gw, gh, smoothing_margin(sigma_px))
    blank = np.empty((tile, tile, 3), np.uint8)
    blank[:] = np.asarray(background, np.uint8)
    for cell in range(gw * gh):
        members = order[starts[cell] : starts[cell + 1]]
        if len(members) == 0:
            yield blank
            continue
        ty, tx = divmod(cell, gw)
        region = (tx * tile, ty * tile, tile, tile)
        vals = render_values(spans[members], values[members], region, sigma_px)
        # pixels beyond the level's edge stay background (padding of edge tiles)
        vals[max(0, height - ty * tile) :, :] = np.nan
        vals[:, max(0, width - tx * tile) :] = np.nan
        yield colorize(vals, lut, background)


def _grid_level_tiles(
    grid: Lattice,
    values: np.ndarray,
    lut: np.ndarray,
    background: Sequence[int],
    ds: float,
    width: int,
    height: int,
    tile: int,
) -> Iterator[np.ndarray]:
    """Yield the tiles of one level by per-pixel lookup in the level's table of colours
    (fast path of a :class:`~wsipipe.heatmap.grid.Lattice`)."""
    tw, th = -(-width // tile) * tile, -(-height // tile) * tile
    # padding beyond the level's edge (edge tiles): no tile, i.e. background
    image = grid.image(ds, width, height).padded(th, tw)
    colours = colorize(image.table(values), lut, background)  # (classes, 3)
    for ty in range(0, th, tile):
        # a whole row of tiles in two array operations (few GIL round trips per tile)
        rows, counts = image.runs(colours, ty, ty + tile)  # (runs, tw, 3)
        band = np.repeat(rows.reshape(len(rows), tw // tile, tile, 3), counts, axis=0)
        yield from np.ascontiguousarray(band.transpose(1, 0, 2, 3))


def _deflate(tile: np.ndarray) -> bytes:
    """One TIFF tile as deflate (a zlib stream); zlib-ng is ~4x faster than the libdeflate /
    zlib level 1 tifffile would use on heatmap tiles, and its output smaller."""
    return zlib_compress(tile, _ZLIB_LEVEL)


def _encoded(
    tiles: Iterator[np.ndarray], encode: Callable[[np.ndarray], bytes], threads: int, batch: int
) -> Iterator[bytes]:
    """``encode`` applied to ``tiles`` in order, ``batch`` tiles at a time on ``threads``."""
    if threads <= 1:
        yield from map(encode, tiles)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads, thread_name_prefix="heatmap-tiff") as pool:
        while chunk := list(islice(tiles, batch)):
            yield from pool.map(encode, chunk)


def _fields(geo: PyramidGeometry) -> list[tuple[str, str]]:
    return [("AppMag", f"{10.0 / geo.mpp:.6g}"), ("MPP", f"{geo.mpp:.8g}")]


def _description(geo: PyramidGeometry, w: int, h: int, level: int, compression: str) -> str:
    extra = [
        ("wsipipe", "heatmap"),
        ("SlideWidth", str(geo.slide_width)),
        ("SlideHeight", str(geo.slide_height)),
        ("Downsample", str(geo.downsample)),
    ]
    return level_description(
        geo.width, geo.height, geo.tile, f"{compression.upper()}/RGB",
        _fields(geo) + extra, (w, h) if level > 0 else None,
    )  # fmt: skip


def write_heatmap_tiff(
    path: str | Path,
    geo: PyramidGeometry,
    coords: np.ndarray,
    size_level0: float,
    values: np.ndarray,
    lut: np.ndarray,
    smooth_um: float = 0.0,
    compression: str = "deflate",
    background: Sequence[int] = (255, 255, 255),
    jpeg_quality: int = 90,
    threads: int = 1,
    pitch: int | None = None,
) -> None:
    """Write the heatmap pyramid of one slide (see the module docstring).

    coords (N, 2) slide level-0 (x, y) tile top-lefts; size_level0: tile footprint in slide
    level-0 px; values (N,) in [0, 1] (normalised scores); lut (256, 3) uint8 colour map;
    smooth_um: Gaussian sigma in um (0 = exact tile squares); pixels with no tile get
    ``background``; ``threads`` compress TIFF tiles in parallel (at most ~16 MB of tiles in
    flight); ``pitch``: the tiling's stride when known. ``path`` is written as given (the
    caller publishes it atomically).
    """
    if compression not in COMPRESSIONS:
        raise ConfigError(
            f"heatmap: pyramid_compression = {compression!r} is not one of "
            f"{', '.join(COMPRESSIONS)}"
        )
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if len(coords) != len(values):
        raise ValueError(f"{len(coords)} coords but {len(values)} values")
    comp: dict[str, object] = {"compression": None}
    if compression == "deflate":
        comp = {"compression": "zlib"}  # the tiles come compressed (:func:`_deflate`)
    elif compression == "jpeg":
        comp = {"compression": "jpeg", "compressionargs": {"level": jpeg_quality}}
    tiled = {"maxworkers": max(1, threads), "buffersize": _BUFFER_BYTES, **comp}
    levels = geo.levels()
    grid = find_lattice(coords, size_level0, pitch) if smooth_um <= 0 else None
    batch = max(1, _BUFFER_BYTES // (geo.tile * geo.tile * 3))
    page = {"photometric": "rgb"}
    with AperioTiffWriter(path, geo.width, geo.height, geo.mpp, geo.tile, page, tiled) as tif:
        for index, (w, h, ds) in enumerate(levels):
            tiles: Iterator[np.ndarray]
            if grid is not None:
                tiles = _grid_level_tiles(grid, values, lut, background, ds, w, h, geo.tile)
            else:
                spans = tile_spans(coords, size_level0, ds)
                sigma = smooth_um / (geo.slide_mpp * ds) if smooth_um > 0 else 0.0
                tiles = _level_tiles(spans, values, w, h, geo.tile, sigma, lut, background)
            data: Iterator[np.ndarray] | Iterator[bytes] = tiles
            if compression == "deflate":  # compressed here, written as they are by tifffile
                data = _encoded(tiles, _deflate, threads, batch)
            tif.level(data, (h, w, 3), _description(geo, w, h, index, compression))
            if index == 0:
                _write_thumbnail(
                    tif, geo, coords, size_level0, values, lut, smooth_um, background, grid
                )


def _write_thumbnail(
    tif: AperioTiffWriter,
    geo: PyramidGeometry,
    coords: np.ndarray,
    size_level0: float,
    values: np.ndarray,
    lut: np.ndarray,
    smooth_um: float,
    background: Sequence[int],
    grid: Lattice | None = None,
) -> None:
    factor = max(1, math.ceil(max(geo.width, geo.height) / _THUMB_MAX))
    w, h = max(1, geo.width // factor), max(1, geo.height // factor)
    ds = geo.downsample * factor
    if grid is not None:  # lookup, as the levels
        image = grid.image(ds, w, h)
        thumb = image.lookup(colorize(image.table(values), lut, background), 0, h)
    else:
        sigma = smooth_um / (geo.slide_mpp * ds) if smooth_um > 0 else 0.0
        vals = render_values(tile_spans(coords, size_level0, ds), values, (0, 0, w, h), sigma)
        thumb = colorize(vals, lut, background)
    desc = thumbnail_description(geo.width, geo.height, (w, h), _fields(geo))
    tif.thumbnail(thumb, desc, compression="zlib")
