"""Direct access to a TIFF level's JPEG tiles (the fast path) and a truncation check.

`level_index` maps a backend level to the TIFF page with the same dimensions and records its
tile table (offsets, byte counts, JPEGTables, colour space). The index is plain data, so it
pickles cheaply; `TileSource` reads raw tile bytes with ``os.pread`` on a file descriptor that
it opens lazily once per process (fork-safe), and decodes them with imagecodecs exactly as
tifffile / OpenSlide do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile

from wsipipe.slide.backends import one_line
from wsipipe.slide.dctscale import decode_reduced
from wsipipe.slide.jpeg import (
    PHOTOMETRIC_RGB,
    PHOTOMETRIC_YCBCR,
    JpegFormatError,
    standalone_jpeg,
)

TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
MAX_PAGES_SCANNED = 64
COMPRESSION_JPEG = 7
# OpenSlide vendors whose levels are plain TIFF tile grids (no overlaps, offsets or stitching).
FAST_OPENSLIDE_VENDORS = frozenset({"aperio", "generic-tiff"})


def is_tiff(path: Path) -> bool:
    """True when the file starts with a (Big)TIFF magic number."""
    try:
        with path.open("rb") as fh:
            return fh.read(4) in TIFF_MAGICS
    except OSError:
        return False


@contextlib.contextmanager
def quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's logger (it logs, rather than raises, on damaged files)."""
    logger = logging.getLogger("tifffile")
    previous = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = previous


def first_ifd_offset(head: bytes) -> int | None:
    """Offset of the first image directory from a (Big)TIFF header, None if no TIFF."""
    if head[:4] not in TIFF_MAGICS or len(head) < 16:
        return None
    order = "<" if head[:2] == b"II" else ">"
    if head[2:4] in (b"*\x00", b"\x00*"):
        return int(struct.unpack(order + "I", head[4:8])[0])
    return int(struct.unpack(order + "Q", head[8:16])[0])


def truncation_problem(path: Path) -> str | None:
    """A one-line description of a TIFF file cut short (first directory or tile/strip data
    beyond its end: a truncated download or copy), or None when it fits or is no TIFF."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        first = first_ifd_offset(fh.read(16))
    if first is None:
        return None
    if first >= size:
        return (
            f"the TIFF header points to its first directory at byte {first} but the file has "
            f"only {size} bytes (truncated download or copy?)"
        )
    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tif:
            for i, page in enumerate(tif.pages):
                if i >= MAX_PAGES_SCANNED:
                    break
                offsets = np.asarray(page.dataoffsets, dtype=np.int64)
                counts = np.asarray(page.databytecounts, dtype=np.int64)
                if offsets.size == 0:
                    continue
                ends = np.where(counts > 0, offsets + counts, 0)
                end = int(ends.max())
                if end > size:
                    return (
                        f"image data of TIFF page {i} ends at byte {end} but the file has only "
                        f"{size} bytes (truncated download or copy?)"
                    )
    except Exception:  # tifffile cannot parse it: leave the verdict to the backends
        return None
    return None


@dataclass(frozen=True, eq=False)
class LevelIndex:
    """Tile table of one TIFF page holding a pyramid level (level px, row-major tiles)."""

    page: int
    width: int
    height: int
    tile_width: int
    tile_height: int
    offsets: np.ndarray  # (tiles_down * tiles_across,) int64 byte offsets
    counts: np.ndarray  # (tiles_down * tiles_across,) int64 byte counts (0 = missing tile)
    jpegtables: bytes | None
    photometric: int  # 2 = RGB-coded JPEG (Aperio), 6 = YCbCr
    colorspace: str | None  # JPEG colour space passed to the decoder (None = default)

    @property
    def tiles_across(self) -> int:
        return -(-self.width // self.tile_width)

    @property
    def tiles_down(self) -> int:
        return -(-self.height // self.tile_height)


def level_index(
    path: Path, width: int, height: int, vendor: str | None, reader: str
) -> tuple[LevelIndex | None, str]:
    """Index of the tiled JPEG page whose size is width x height, or (None, why not)."""
    if reader == "openslide" and vendor not in FAST_OPENSLIDE_VENDORS:
        return None, f"openslide vendor {vendor!r} may stitch or offset tiles"
    if not is_tiff(path):
        return None, "not a TIFF file"
    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tif:
            if tif.is_ndpi:
                return None, "NDPI JPEG strips are not independent tiles"
            page_no, page = _find_page(tif, width, height)
            if page is None:
                return None, f"no tiled TIFF page of {width}x{height}"
            return _index_page(tif, page_no, page)
    except Exception as exc:  # the fast path is optional: any trouble means "use the backend"
        return None, f"TIFF unreadable by tifffile ({one_line(exc)})"


def _find_page(tif: tifffile.TiffFile, width: int, height: int) -> tuple[int, Any]:
    candidates: list[tuple[int, Any]] = []
    if tif.series:
        for lvl in tif.series[0].levels:
            key = lvl.keyframe
            candidates.append((getattr(key, "index", -1), key))
    for i, page in enumerate(tif.pages):
        if i >= MAX_PAGES_SCANNED:
            break
        candidates.append((i, page))
    for i, page in candidates:
        if (
            getattr(page, "is_tiled", False)
            and page.imagewidth == width
            and page.imagelength == height
        ):
            return (i if isinstance(i, int) else -1), page
    return -1, None


def _index_page(tif: tifffile.TiffFile, page_no: int, page: Any) -> tuple[LevelIndex | None, str]:
    if page.compression != COMPRESSION_JPEG:
        return None, f"compression {int(page.compression)} is not JPEG"
    if page.samplesperpixel != 3 or page.bitspersample != 8 or page.planarconfig != 1:
        return None, "not 8-bit interleaved RGB"
    photometric = int(page.photometric)
    if photometric not in (PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR) or page.extrasamples:
        return None, f"photometric {photometric} unsupported"
    if page.imagedepth != 1 or page.tiledepth != 1:
        return None, "volumetric tiles"
    offsets = np.asarray(page.dataoffsets, dtype=np.int64)
    counts = np.asarray(page.databytecounts, dtype=np.int64)
    across = -(-page.imagewidth // page.tilewidth)
    down = -(-page.imagelength // page.tilelength)
    if offsets.size != across * down or counts.size != offsets.size:
        return None, "tile table size does not match the tile grid"
    # Same colour-space rule as tifffile: RGB-coded JPEG without JFIF is decoded as RGB.
    colorspace = None
    if photometric == PHOTOMETRIC_RGB and not page.is_jfif:
        colorspace = "RGB"
    index = LevelIndex(
        page=page_no,
        width=int(page.imagewidth),
        height=int(page.imagelength),
        tile_width=int(page.tilewidth),
        tile_height=int(page.tilelength),
        offsets=offsets,
        counts=counts,
        jpegtables=bytes(page.jpegtables) if page.jpegtables else None,
        photometric=photometric,
        colorspace=colorspace,
    )
    return index, "ok"


@dataclass(eq=False)
class TileSource:
    """Reads and decodes raw tiles of one LevelIndex; picklable, reopens per process."""

    path: str
    index: LevelIndex
    _fd: int | None = field(default=None, repr=False)
    _pid: int = field(default=-1, repr=False)

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path, "index": self.index}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self.index = state["index"]
        self._fd = None
        self._pid = -1

    def _descriptor(self) -> int:
        pid = os.getpid()
        fd = self._fd
        if fd is not None and self._pid == pid:
            return fd
        # first use in this process (after a fork the inherited descriptor and lock are the
        # parent's): open our own; a racing thread at worst opens a second descriptor
        fd = os.open(self.path, os.O_RDONLY)
        self._fd, self._pid = fd, pid
        return fd

    def raw(self, col: int, row: int) -> bytes | None:
        """Stored bytes of tile (col, row), or None for a missing (sparse) tile."""
        k = row * self.index.tiles_across + col
        count = int(self.index.counts[k])
        if count <= 0:
            return None
        data = os.pread(self._descriptor(), count, int(self.index.offsets[k]))
        if len(data) != count:
            raise OSError(f"short read of tile ({col}, {row}): file truncated")
        return data

    def decode(self, data: bytes) -> np.ndarray:
        """(tile_height, tile_width, 3) uint8 RGB of one stored tile."""
        out: np.ndarray = imagecodecs.jpeg8_decode(
            data,
            tables=self.index.jpegtables,
            colorspace=self.index.colorspace,
            outcolorspace="RGB",
        )
        return out

    def standalone(self, data: bytes) -> bytes | None:
        return standalone_jpeg(data, self.index.jpegtables, self.index.colorspace)

    def decode_reduced(self, data: bytes, factor: int) -> np.ndarray:
        """(tile_height // factor, tile_width // factor, 3) uint8 RGB of one stored tile,
        decoded at 1/factor in the DCT domain (tables merged and colour space pinned first,
        so that it is the same image that `decode` gives, only reduced)."""
        stream = self.standalone(data)
        if stream is None:
            raise JpegFormatError("stored tile cannot be made a standalone JPEG")
        return decode_reduced(stream, factor, self.index.tile_width, self.index.tile_height)

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None
        self._pid = -1
