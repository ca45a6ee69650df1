"""Format-independent parts of the patch store: the writer and reader base classes.

A store holds one slide's tiles: ``coords`` (N, 2) int64 level-0 (x, y) of each tile's
top-left corner, ``tissue_fraction`` (N,) float32 in [0, 1], the encoded tile pixels
(JPEG/PNG bytes, absent in a coords-only store) and the :class:`StoreMeta` attrs. Root attrs
also carry ``wsipipe_store_schema``, ``store_format``, ``n_tiles``, ``tiles_nbytes`` and
``complete``; ``complete`` becomes true only in :meth:`StoreWriter.close`, so a store whose
writer died is recognised as incomplete.

Readers are fork- and spawn-safe: handles open lazily on first access in each process (the
pid is remembered; a forked DataLoader worker reopens), and pickling drops all handles.
"""

from __future__ import annotations

import contextlib
import operator
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, SupportsIndex

import numpy as np

from wsipipe.errors import StoreError
from wsipipe.store.codec import decode_tile, decode_tile_reduced, reduced_factor
from wsipipe.store.meta import StoreMeta

#: Version of the on-disk layout written by this package.
STORE_SCHEMA = 1
RERUN = "re-run `wsipipe tile` for this slide"


class StoreWriter:
    """Append-only writer of one store (use :func:`wsipipe.store.create_store`).

    Tiles go to disk as they are appended (the zarr writer buffers at most one shard); only
    coordinates and tissue fractions (20 bytes per tile) are kept until :meth:`close`.
    Leaving the ``with`` block by an exception leaves the store incomplete on purpose.
    """

    def __init__(self, path: Path, meta: StoreMeta) -> None:
        self.path = path
        self.meta = meta
        self._has_pixels = meta.pixels != "none"
        self._coords: list[np.ndarray] = []
        self._tf: list[np.ndarray] = []
        self._n = 0
        self._nbytes = 0
        self._closed = False

    def __len__(self) -> int:
        return self._n

    def append(
        self,
        coords: np.ndarray,
        tiles: Sequence[bytes] | None,
        tissue_fraction: np.ndarray,
    ) -> None:
        """Append k tiles.

        Args:
            coords: (k, 2) integer level-0 (x, y) of the tiles' top-left corners.
            tiles: k encoded tiles (:func:`encode_tile` output); None for a coords-only store.
            tissue_fraction: (k,) fractions in [0, 1].
        """
        if self._closed:
            raise ValueError(f"StoreWriter for {self.path} is closed; cannot append")
        c = np.asarray(coords)
        if c.ndim != 2 or c.shape[1] != 2 or c.dtype.kind not in "iu":
            raise ValueError(f"coords must be a (k, 2) integer array, got {c.shape} {c.dtype}")
        k = c.shape[0]
        tf = np.asarray(tissue_fraction, dtype=np.float32)
        if tf.shape != (k,):
            raise ValueError(f"tissue_fraction must have shape ({k},), got {tf.shape}")
        if k and not (np.all(np.isfinite(tf)) and tf.min() >= 0.0 and tf.max() <= 1.0):
            raise ValueError("tissue_fraction values must lie in [0, 1]")
        if self._has_pixels:
            if tiles is None or len(tiles) != k:
                got = "None" if tiles is None else f"{len(tiles)} tiles"
                raise ValueError(f"expected {k} encoded tiles for {k} coords, got {got}")
            blobs = [bytes(t) for t in tiles]
            if any(len(b) == 0 for b in blobs):
                raise ValueError("an encoded tile is empty")
            self._write_tiles(blobs)
            self._nbytes += sum(len(b) for b in blobs)
        elif tiles is not None:
            raise ValueError(f"{self.path} is a coords-only store (pixels='none'); pass tiles=None")
        self._coords.append(c.astype(np.int64, copy=True))
        self._tf.append(tf.copy())
        self._n += k

    def close(self) -> None:
        """Write coords, tissue fractions, attrs and the final counts; mark the store complete."""
        if self._closed:
            return
        coords = np.concatenate(self._coords) if self._coords else np.zeros((0, 2), np.int64)
        tf = np.concatenate(self._tf) if self._tf else np.zeros((0,), np.float32)
        attrs = dict(self.meta.to_attrs())
        attrs.update(n_tiles=self._n, tiles_nbytes=self._nbytes)
        try:
            self._finish(coords, tf, attrs)
        finally:
            self._closed = True
            self._coords, self._tf = [], []

    def abort(self) -> None:
        """Release the files without marking the store complete."""
        if not self._closed:
            self._closed = True
            self._release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- format hooks ---------------------------------------------------------------------
    def _write_tiles(self, blobs: list[bytes]) -> None:
        raise NotImplementedError

    def _finish(self, coords: np.ndarray, tf: np.ndarray, attrs: dict[str, object]) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError


class PatchStore:
    """Read-only view of one complete store (use :func:`wsipipe.store.open_store`).

    ``coords`` and ``tissue_fraction`` load lazily; tile reads fetch exactly one tile's bytes.
    """

    #: attributes holding per-process handles/caches; dropped on fork, pickle and close
    _HANDLES: tuple[str, ...] = ()

    def __init__(self, path: Path, meta: StoreMeta, n: int, raw_reads: bool = True) -> None:
        self.path = path
        self.meta = meta
        self._n = n
        self._raw_reads = raw_reads
        self._px = meta.tile_px
        self._pixels = meta.pixels != "none"
        self._pid: int | None = None
        self._coords: np.ndarray | None = None
        self._tf: np.ndarray | None = None
        for name in self._HANDLES:
            setattr(self, name, None)

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, n={self._n}, pixels={self.meta.pixels!r})"
        )

    @property
    def coords(self) -> np.ndarray:
        """(N, 2) int64 level-0 (x, y) of each tile's top-left corner (read-only array)."""
        if self._coords is None:
            c = np.ascontiguousarray(self._load_array("coords"), dtype=np.int64).reshape(-1, 2)
            c.flags.writeable = False
            self._coords = c
        return self._coords

    @property
    def tissue_fraction(self) -> np.ndarray:
        """(N,) float32 tissue fraction of each tile, in [0, 1] (read-only array)."""
        if self._tf is None:
            t = np.ascontiguousarray(self._load_array("tissue_fraction"), dtype=np.float32)
            t.flags.writeable = False
            self._tf = t
        return self._tf

    def read_encoded(self, i: SupportsIndex) -> bytes:
        """Encoded (JPEG/PNG) bytes of tile ``i``; reads only that tile's bytes."""
        return bytes(self._fetch(self._check_index(i)))

    def read_tile(self, i: SupportsIndex) -> np.ndarray:
        """Decoded tile ``i`` as (tile_px, tile_px, 3) uint8."""
        i = self._check_index(i)
        out = np.empty((self._px, self._px, 3), np.uint8)
        self._decode_into(self._fetch(i), out, i)
        return out

    def read_tiles(self, indices: Sequence[int] | np.ndarray, min_px: int = 0) -> np.ndarray:
        """Decoded tiles in the order given: (k, tile_px, tile_px, 3) uint8.

        ``min_px`` > 0 (the size the caller will resize to) lets JPEG tiles be decoded at
        1/2, 1/4 or 1/8 scale in the DCT domain: tiles come back at the smallest such size
        that is still >= ``min_px`` (:func:`~wsipipe.store.codec.reduced_factor`), a
        low-pass reduction close to, not equal to, a resize of the full decode."""
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise IndexError(f"{self.path}: tile indices must be a 1-D integer sequence")
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self._n):
            bad = idx[(idx < 0) | (idx >= self._n)][0]
            raise IndexError(f"{self.path}: tile index {bad} out of range [0, {self._n})")
        if idx.size and not self._pixels:
            raise self._coords_only()
        f = reduced_factor(self._px, min_px)
        px = self._px // f
        out = np.empty((idx.size, px, px, 3), np.uint8)
        for j, i in enumerate(idx.tolist()):
            self._decode_into(self._fetch(i), out[j], i, f)
        return out

    def close(self) -> None:
        """Release file handles (a later read reopens them)."""
        self._drop_handles()
        self._pid = None

    def __enter__(self) -> PatchStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._drop_handles()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in (*self._HANDLES, "_coords", "_tf"):
            state[name] = None
        state["_pid"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # -- helpers ----------------------------------------------------------------------------
    def _check_index(self, i: SupportsIndex) -> int:
        try:
            j = operator.index(i)
        except TypeError:
            raise IndexError(f"{self.path}: tile index {i!r} is not an integer") from None
        if not 0 <= j < self._n:
            raise IndexError(f"{self.path}: tile index {j} out of range [0, {self._n})")
        if not self._pixels:
            raise self._coords_only()
        return j

    def _coords_only(self) -> StoreError:
        return StoreError(
            f"{self.path} is a coords-only store (pixels='none'); "
            "tiles are read from the slide at train time"
        )

    def _fetch(self, i: int) -> bytes | memoryview:
        pid = os.getpid()
        if self._pid != pid:
            if self._pid is not None:  # forked: forget the parent's handles, reopen ours
                self._forget_handles()
                self._pid = None
            try:
                self._open_handles()
            except StoreError:
                self._drop_handles()
                raise
            except (OSError, KeyError, ValueError) as err:
                self._drop_handles()
                raise StoreError(
                    f"patch store {self.path} cannot be read ({err}); {RERUN}"
                ) from err
            self._pid = pid
        return self._read_raw(i)

    def _decode_into(
        self, data: bytes | memoryview, out: np.ndarray, i: int, factor: int = 1
    ) -> None:
        try:
            if factor > 1:
                decode_tile_reduced(data, factor, out)
            else:
                decode_tile(data, out=out)
        except StoreError as err:
            raise StoreError(f"{self.path}: tile {i}: {err}") from None

    def _forget_handles(self) -> None:
        """After fork: close inherited fds in this process only, keep nothing."""
        self._drop_handles()

    # -- format hooks -------------------------------------------------------------------------
    def _open_handles(self) -> None:
        raise NotImplementedError

    def _drop_handles(self) -> None:
        raise NotImplementedError

    def _read_raw(self, i: int) -> bytes | memoryview:
        raise NotImplementedError

    def _load_array(self, name: str) -> np.ndarray:
        raise NotImplementedError


def check_complete(path: Path, attrs: dict[str, Any], kind: str) -> None:
    """A store's root attributes must say: a wsipipe store, this schema, writer finished."""
    if "wsipipe_store_schema" not in attrs:
        raise StoreError(f"{path} is {kind} but not a wsipipe patch store; {RERUN}")
    schema = int(attrs["wsipipe_store_schema"])
    if schema != STORE_SCHEMA:
        raise StoreError(
            f"patch store {path} has schema {schema}, this wsipipe reads {STORE_SCHEMA}; {RERUN}"
        )
    if not bool(attrs.get("complete", False)):
        raise StoreError(f"patch store {path} is incomplete (its writer never closed); {RERUN}")


def is_zarr_v3(path: Path) -> bool:
    """Whether ``path`` is a zarr v3 directory (has a ``zarr.json``); no zarr import."""
    return path.is_dir() and (path / "zarr.json").is_file()
