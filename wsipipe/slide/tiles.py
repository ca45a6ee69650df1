"""`TileReader`: square tiles at a target mpp, with the aligned-JPEG fast path.

A tile whose top-left is (x, y) in level-0 px covers ``tile_size_level0`` level-0 px; it is read
as ``read_px`` x ``read_px`` px at ``level`` and resized to ``tile_px``. When the level matches the
target mpp and the tile lies on the file's tile grid, the stored JPEG tiles are decoded directly
(about 5x faster than a backend read_region, same pixels); otherwise the backend reads it.

With ``resample="dct"`` a tile reduced by 2, 4 or 8 (or a multiple of those) is decoded at that
scale in libjpeg-turbo's DCT domain straight from the stored tiles (:mod:`wsipipe.slide.dctscale`:
about twice as fast, a close low-pass instead of the exact area mean); positions the reduced
grid cannot place exactly, or that touch the level's edge tiles, take the exact path.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsipipe.errors import ConfigError
from wsipipe.slide.backends import Backend, open_backend
from wsipipe.slide.dctscale import DEFAULT_RESAMPLE, RESAMPLE_MODES, dct_factor
from wsipipe.slide.levels import TileGeometry, resample_filter
from wsipipe.slide.tiffindex import TileSource


class TileReader:
    """Reads (tile_px, tile_px, 3) uint8 RGB tiles; picklable and fork-safe.

    Attributes: ``level`` read from, its ``downsample``, ``read_px`` (size read at ``level``),
    ``tile_size_level0`` (footprint in level-0 px), ``tile_px``, ``target_mpp``, and ``fast``
    (True when aligned tiles are decoded straight from the file; ``fast_reason`` says why not).
    ``resample`` is "dct" or "exact" (see the module docstring); ``dct_factor`` is the scale
    (2, 4, 8) at which stored tiles are decoded for the reduced path, 1 when it is not used.
    Backend and file handles are opened lazily in each process that reads.
    """

    def __init__(
        self,
        path: Path,
        reader: str,
        geometry: TileGeometry,
        level_size: tuple[int, int],
        source: TileSource | None,
        fast_reason: str,
        backend: Backend | None = None,
        resample: str = DEFAULT_RESAMPLE,
    ) -> None:
        if resample not in RESAMPLE_MODES:
            raise ConfigError(
                f"{path}: resample {resample!r} is unknown; use one of {', '.join(RESAMPLE_MODES)}"
            )
        self.path = path
        self.reader = reader
        self.geometry = geometry
        self.level = geometry.level
        self.downsample = geometry.downsample
        self.read_px = geometry.read_px
        self.tile_size_level0 = geometry.tile_size_level0
        self.tile_px = geometry.tile_px
        self.target_mpp = geometry.target_mpp
        self.level_size = level_size
        # the stored tiles of `level` (None: backend only); the exact fast path needs the read
        # to be whole file tiles, the reduced path (below) only needs the index
        self.fast = source is not None
        self.fast_reason = "ok" if source is not None else fast_reason
        if source is not None:
            tw, th = source.index.tile_width, source.index.tile_height
            if geometry.read_px % tw or geometry.read_px % th:
                self.fast = False
                self.fast_reason = (
                    f"read size {geometry.read_px}px is not a multiple of the file tile {tw}x{th}"
                )
        self._source = source
        self._filter = resample_filter(geometry.read_px, geometry.tile_px)
        self.resample = resample
        self.dct_factor = 1
        reduction, rest = divmod(geometry.read_px, geometry.tile_px)
        if resample == "dct" and source is not None and reduction > 1 and rest == 0:
            index = source.index
            self.dct_factor = dct_factor(reduction, index.tile_width, index.tile_height)
        self._reduced_px = geometry.read_px // self.dct_factor  # side of the 1/f region
        self._reduced_filter = resample_filter(self._reduced_px, geometry.tile_px)
        self._shared = backend  # the Slide's backend, used while open in this process
        self._shared_pid = os.getpid()
        self._own: Backend | None = None  # opened by this reader, in process _own_pid
        self._own_pid = -1
        self._lock = threading.Lock()
        self._lock_pid = os.getpid()

    # -- pickling: ship geometry and the tile table, never handles --------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_shared=None, _own=None, _own_pid=-1, _lock=None, _lock_pid=-1)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._lock_pid = os.getpid()

    def _backend(self) -> Backend:
        """This process's backend: the Slide's while it is open here, else our own."""
        pid = os.getpid()
        shared = self._shared
        if shared is not None and pid == self._shared_pid and not shared.closed:
            return shared
        own = self._own
        if own is not None and pid == self._own_pid and not own.closed:
            return own
        if self._lock_pid != pid:  # forked: a lock copied from the parent may be held
            self._lock, self._lock_pid = threading.Lock(), pid
        with self._lock:
            own = self._own
            if own is None or pid != self._own_pid or own.closed:
                own = open_backend(self.path, self.reader)
                self._own, self._own_pid = own, pid
        return own

    # -- reading --------------------------------------------------------------------------------
    def read(self, x: int, y: int) -> np.ndarray:
        """(tile_px, tile_px, 3) uint8 RGB tile whose top-left is (x, y) in level-0 px."""
        x, y = int(x), int(y)
        if self.dct_factor > 1:
            small = self._read_reduced(x, y)
            if small is not None:
                return self._resize(small, self._reduced_filter)
        region = self._read_fast(x, y) if self.fast else None
        if region is None:
            region = self._backend().read_rgb(x, y, self.level, self.read_px, self.read_px)
        return self._resize(region, self._filter)

    def _resize(self, region: np.ndarray, resample: Image.Resampling) -> np.ndarray:
        """(tile_px, tile_px, 3) from a square (n, n, 3) region (returned as is if n fits)."""
        if region.shape[0] == self.tile_px:
            return region
        image = Image.fromarray(region).resize((self.tile_px, self.tile_px), resample)
        return np.array(image)

    def read_encoded(self, x: int, y: int) -> bytes | None:
        """The file's own JPEG for this tile as a standalone stream, or None.

        Only when the tile is exactly one aligned, complete file tile at a level matching the
        target (no resampling) and the stream can be made to decode to the same pixels as
        `read` (tables merged in; an Adobe marker added for RGB-coded JPEG).
        """
        source = self._source
        if source is None or self.read_px != self.tile_px:
            return None
        index = source.index
        if not (index.tile_width == index.tile_height == self.read_px):
            return None
        cell = self._aligned_cell(int(x), int(y))
        if cell is None:
            return None
        col, row = cell
        if (col + 1) * index.tile_width > index.width or (row + 1) * index.tile_height > (
            index.height
        ):
            return None  # edge tile: the stored tile holds padding that read() paints white
        try:
            data = source.raw(col, row)
        except OSError:
            return None
        return None if data is None else source.standalone(data)

    def _aligned_cell(self, x: int, y: int) -> tuple[int, int] | None:
        """(col, row) of the file tile whose top-left is level-0 (x, y), if exactly aligned."""
        assert self._source is not None
        index = self._source.index
        # the backends map level-0 x to level x / downsample (tiffslide: int(x / downsample));
        # only an exactly integral result is a position both read without resampling
        lx, ly = x / self.downsample, y / self.downsample
        if not (lx.is_integer() and ly.is_integer()) or lx < 0 or ly < 0:
            return None
        ix, iy = int(lx), int(ly)
        if ix % index.tile_width or iy % index.tile_height:
            return None
        return ix // index.tile_width, iy // index.tile_height

    def _read_fast(self, x: int, y: int) -> np.ndarray | None:
        """read_px x read_px at `level` from stored tiles, or None to use the backend."""
        source = self._source
        assert source is not None
        cell = self._aligned_cell(x, y)
        if cell is None:
            return None
        index = source.index
        tw, th = index.tile_width, index.tile_height
        col0, row0 = cell
        ncols, nrows = self.read_px // tw, self.read_px // th
        try:
            if ncols == 1 and nrows == 1:
                return self._one_tile(source, col0, row0)
            out = np.full((self.read_px, self.read_px, 3), 255, dtype=np.uint8)
            for j in range(nrows):
                for i in range(ncols):
                    tile = self._one_tile(source, col0 + i, row0 + j)
                    if tile is None:
                        return None
                    out[j * th : (j + 1) * th, i * tw : (i + 1) * tw] = tile
            return out
        except Exception:  # undecodable or unreadable stored tile: let the backend decide
            return None

    def _read_reduced(self, x: int, y: int) -> np.ndarray | None:
        """The read_px square at `level` reduced by dct_factor f, decoded at 1/f from the
        stored tiles: (read_px / f, read_px / f, 3), or None to take the exact path.

        Any position whose level px are multiples of f is placed exactly on the reduced grid
        (also unaligned ones, e.g. overlapping tiles); the file tiles it covers must be
        complete, because a reduced block mixes the padding of a partial edge tile into its
        valid pixels.
        """
        source = self._source
        assert source is not None
        f = self.dct_factor
        lx, ly = x / self.downsample, y / self.downsample
        if not (lx.is_integer() and ly.is_integer()) or lx < 0 or ly < 0:
            return None
        ix, iy = int(lx), int(ly)
        if ix % f or iy % f:
            return None
        index = source.index
        tw, th = index.tile_width, index.tile_height
        col0, row0 = ix // tw, iy // th
        col1, row1 = (ix + self.read_px - 1) // tw, (iy + self.read_px - 1) // th
        if (col1 + 1) * tw > index.width or (row1 + 1) * th > index.height:
            return None  # touches a partial edge tile or lies outside the level
        n, stw, sth = self._reduced_px, tw // f, th // f
        ox, oy = ix // f, iy // f  # region origin on the reduced level grid
        out = np.empty((n, n, 3), dtype=np.uint8)
        try:
            for row in range(row0, row1 + 1):
                ty = row * sth
                y0, y1 = max(ty, oy), min(ty + sth, oy + n)
                for col in range(col0, col1 + 1):
                    tx = col * stw
                    x0, x1 = max(tx, ox), min(tx + stw, ox + n)
                    dst = out[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
                    data = source.raw(col, row)
                    if data is None:  # sparse tile: white, as the backends render it
                        dst[...] = 255
                        continue
                    tile = source.decode_reduced(data, f)  # (sth, stw, 3)
                    dst[...] = tile[y0 - ty : y1 - ty, x0 - tx : x1 - tx]
        except Exception:  # undecodable stored tile: the exact path (then the backend) decides
            return None
        return out

    def _one_tile(self, source: TileSource, col: int, row: int) -> np.ndarray | None:
        """Decoded file tile (col, row) with parts outside the level painted white."""
        index = source.index
        tw, th = index.tile_width, index.tile_height
        valid_w = min(tw, index.width - col * tw)
        valid_h = min(th, index.height - row * th)
        if valid_w <= 0 or valid_h <= 0 or col >= index.tiles_across or row >= index.tiles_down:
            return np.full((th, tw, 3), 255, dtype=np.uint8)
        data = source.raw(col, row)
        if data is None:  # sparse tile: backends render it transparent -> white
            return np.full((th, tw, 3), 255, dtype=np.uint8)
        tile = source.decode(data)
        if tile.shape != (th, tw, 3):
            return None
        if valid_w < tw or valid_h < th:
            tile[valid_h:] = 255
            tile[:, valid_w:] = 255
        return tile

    def close(self) -> None:
        """Release handles this reader opened itself (the Slide's stay with the Slide)."""
        if self._own is not None and self._own_pid == os.getpid():
            self._own.close()
        self._own = None
        if self._source is not None:
            self._source.close()

    def __enter__(self) -> TileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TileReader({self.path.name!r}, {self.tile_px}px @ {self.target_mpp} mpp: "
            f"level {self.level}, read {self.read_px}px, fast={self.fast}, "
            f"resample={self.resample!r}, dct_factor={self.dct_factor})"
        )


def check_tile_args(path: Path, target_mpp: float, tile_px: int) -> None:
    """ConfigError for a non-positive target mpp or tile size."""
    if not isinstance(tile_px, int | np.integer) or isinstance(tile_px, bool) or tile_px < 1:
        raise ConfigError(f"{path}: tile size {tile_px!r} px is invalid; use e.g. 256")
    try:
        ok = float(target_mpp) > 0 and np.isfinite(float(target_mpp))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{path}: target mpp {target_mpp!r} is invalid; use e.g. 0.5")
