"""HDF5 patch store (one ``.h5`` file), readable by CLAM and TRIDENT tools.

Layout::

    /coords            (N, 2) int64 level-0 (x, y); CLAM/TRIDENT attrs (see _clam_attrs)
    /tissue_fraction   (N,) float32
    /tiles             (total_bytes,) uint8, unfiltered, 1 MiB chunks: encoded tiles back to back
    /tile_offsets      (N + 1,) int64: tile i is tiles[tile_offsets[i]:tile_offsets[i + 1]]
    root attrs         StoreMeta.to_attrs() + wsipipe_store_schema, store_format, n_tiles,
                       tiles_nbytes, complete

One blob + offsets beats a vlen-bytes dataset on random reads: the blob is unfiltered, so the
reader maps each chunk's file offset once and fetches tile i with a single ``os.pread`` of
exactly its bytes (no HDF5 call per read, ~10x less overhead than h5py indexing; see
``benchmarks/bench_store.py``). Files whose blob was rewritten with filters (e.g. by
h5repack) still open, through h5py (slower).

Files are opened read-only with HDF5 file locking off, so many DataLoader worker processes
(and NFS/Lustre mounts without lock support) can read one file at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from wsipipe.errors import StoreError
from wsipipe.store.base import RERUN, STORE_SCHEMA, PatchStore, StoreWriter, check_complete
from wsipipe.store.guarded import GuardedFile
from wsipipe.store.meta import StoreMeta

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_BLOB_CHUNK = 1 << 20  # bytes per HDF5 chunk of the tile blob


def _clam_attrs(meta: StoreMeta) -> dict[str, Any]:
    """Attrs on /coords in the CLAM / TRIDENT conventions.

    ``patch_size`` is the size read at ``patch_level`` (CLAM), so TRIDENT's legacy reader
    (patch_size, patch_level) recovers the right level-0 footprint; TRIDENT's magnification
    attrs are deliberately absent because its ``patch_size`` means the target-resolution
    size, which would conflict.
    """
    attrs: dict[str, Any] = {
        "patch_size": meta.read_px,
        "patch_level": meta.level,
        "patch_size_level0": meta.tile_size_level0,
        "downsample": np.array([meta.downsample, meta.downsample], np.float64),
        "name": meta.slide_id,
        "overlap": meta.overlap_px,
        "target_mpp": meta.target_mpp,
        "tile_px": meta.tile_px,
    }
    if meta.level_dim is not None:
        attrs["level_dim"] = np.array(meta.level_dim, np.int64)
        attrs["downsampled_level_dim"] = np.array(meta.level_dim, np.int64)
    return attrs


class H5StoreWriter(StoreWriter):
    """Writes through a :class:`GuardedFile`: a failed write (disk full) is raised as that
    ``OSError`` at the next append or at close, after the HDF5 file was closed cleanly."""

    def __init__(self, path: Path, meta: StoreMeta) -> None:
        super().__init__(path, meta)
        try:
            self._io = GuardedFile(path)
        except OSError as err:
            raise StoreError(
                f"cannot create HDF5 store {path} ({err}); check the output dir"
            ) from err
        self._f = h5py.File(self._io, "w", locking=False, rdcc_nbytes=4 * _BLOB_CHUNK)
        self._f.attrs.update(
            wsipipe_store_schema=STORE_SCHEMA, store_format="h5", complete=False, n_tiles=0
        )
        self._blob: h5py.Dataset | None = None
        self._sizes: list[int] = []
        if self._has_pixels:
            self._blob = self._f.create_dataset(
                "tiles", shape=(0,), maxshape=(None,), chunks=(_BLOB_CHUNK,), dtype=np.uint8
            )

    def _write_tiles(self, blobs: list[bytes]) -> None:
        assert self._blob is not None  # invariant: pixels != "none"
        data = np.frombuffer(b"".join(blobs), np.uint8)
        start = self._blob.shape[0]
        self._blob.resize((start + data.size,))
        self._blob[start:] = data
        self._sizes.extend(len(b) for b in blobs)
        if self._io.error is not None:  # stop reading the slide: nothing more can be stored
            raise self._io.error

    def _finish(self, coords: np.ndarray, tf: np.ndarray, attrs: dict[str, object]) -> None:
        f = self._f
        try:
            ds = f.create_dataset("coords", data=coords, dtype=np.int64)
            ds.attrs.update(_clam_attrs(self.meta))
            f.create_dataset("tissue_fraction", data=tf, dtype=np.float32)
            if self._has_pixels:
                offsets = np.zeros(len(self._sizes) + 1, np.int64)
                np.cumsum(self._sizes, out=offsets[1:])
                f.create_dataset("tile_offsets", data=offsets)
            f.attrs.update(attrs)
            f.flush()
            f.attrs["complete"] = True
        finally:
            self._release()
        if self._io.error is not None:
            raise self._io.error

    def _release(self) -> None:
        try:
            self._f.close()
        finally:
            self._io.close()


class H5PatchStore(PatchStore):
    _HANDLES = ("_fd", "_h5", "_blob", "_offsets", "_chunk", "_chunk_pos", "_base")

    _fd: int | None
    _h5: h5py.File | None
    _blob: h5py.Dataset | None
    _offsets: np.ndarray | None
    _chunk: int | None
    _chunk_pos: np.ndarray | None
    _base: int | None

    @classmethod
    def open(cls, path: Path, raw_reads: bool = True) -> H5PatchStore:
        try:
            with _h5open(path) as f:
                attrs = dict(f.attrs)
                check_complete(path, attrs, "an HDF5 file")
                meta = _meta(path, attrs)
                n = int(attrs["n_tiles"])
                names = ["coords", "tissue_fraction"]
                if meta.pixels != "none":
                    names += ["tiles", "tile_offsets"]
                for name in names:
                    if name not in f:
                        raise StoreError(f"HDF5 store {path} lacks dataset '{name}'; {RERUN}")
                shapes = {name: f[name].shape for name in names}
        except (OSError, KeyError, ValueError, TypeError) as err:
            raise StoreError(f"HDF5 store {path} is unreadable ({err}); {RERUN}") from err
        want = {"coords": (n, 2), "tissue_fraction": (n,), "tile_offsets": (n + 1,)}
        for name, shape in shapes.items():
            if name in want and shape != want[name]:
                raise StoreError(
                    f"HDF5 store {path}: dataset '{name}' has shape {shape}, expected "
                    f"{want[name]}; {RERUN}"
                )
        return cls(path, meta, n, raw_reads)

    def _open_handles(self) -> None:
        f = _h5open(self.path)
        keep = False
        try:
            self._offsets = f["tile_offsets"][:]
            blob = f["tiles"]
            if self._raw_reads and _unfiltered_bytes(blob):
                if blob.chunks is None:
                    self._base = blob.id.get_offset() or 0
                    self._fd = os.open(self.path, os.O_RDONLY)
                    return
                pos = _chunk_positions(blob)
                if pos is not None:
                    self._chunk, self._chunk_pos = blob.chunks[0], pos
                    self._fd = os.open(self.path, os.O_RDONLY)
                    return
            keep = True  # filtered or unusual layout: read through h5py
            self._h5, self._blob = f, blob
        finally:
            if not keep:
                f.close()

    def _drop_handles(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)  # type: ignore[arg-type]
        if getattr(self, "_h5", None) is not None:
            self._h5.close()  # type: ignore[union-attr]
        for name in self._HANDLES:
            setattr(self, name, None)

    def _read_raw(self, i: int) -> bytes | memoryview:
        offs, fd = self._offsets, self._fd
        assert offs is not None  # set by _open_handles
        a = int(offs[i])
        b = int(offs[i + 1])
        pos = self._chunk_pos
        if pos is not None:
            chunk = self._chunk
            assert chunk is not None and fd is not None
            c0, r0 = divmod(a, chunk)
            if (b - 1) // chunk == c0:
                return os.pread(fd, b - a, int(pos[c0]) + r0)
            parts = []
            while a < b:
                c, r = divmod(a, chunk)
                n = min(b - a, chunk - r)
                parts.append(os.pread(fd, n, int(pos[c]) + r))
                a += n
            return b"".join(parts)
        if self._base is not None:
            assert fd is not None
            return os.pread(fd, b - a, self._base + a)
        assert self._blob is not None
        return self._blob[a:b].tobytes()

    def _load_array(self, name: str) -> np.ndarray:
        try:
            with _h5open(self.path) as f:
                return np.asarray(f[name][:])
        except (OSError, KeyError) as err:
            raise StoreError(
                f"HDF5 store {self.path}: cannot read '{name}' ({err}); {RERUN}"
            ) from err


def is_hdf5(path: Path) -> bool:
    """True if ``path`` is a file starting with the HDF5 signature."""
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == HDF5_MAGIC
    except OSError:
        return False


def _h5open(path: Path) -> h5py.File:
    return h5py.File(path, "r", locking=False)


def _meta(path: Path, attrs: dict[str, Any]) -> StoreMeta:
    try:
        return StoreMeta.from_attrs(attrs)
    except StoreError as err:
        raise StoreError(f"patch store {path}: {err}") from None


def _unfiltered_bytes(ds: h5py.Dataset) -> bool:
    return bool(ds.dtype == np.uint8 and ds.id.get_create_plist().get_nfilters() == 0)


def _chunk_positions(ds: h5py.Dataset) -> np.ndarray | None:
    """File offset of each chunk of an unfiltered 1-D chunked dataset; None if any is missing."""
    (chunk,) = ds.chunks
    n_chunks = -(-ds.shape[0] // chunk)
    pos = np.full(n_chunks, -1, np.int64)

    def visit(info: Any) -> None:
        k = info.chunk_offset[0] // chunk
        if k < n_chunks and info.size == chunk:
            pos[k] = info.byte_offset

    if n_chunks:
        if hasattr(ds.id, "chunk_iter"):
            ds.id.chunk_iter(visit)
        else:  # older HDF5
            for k in range(ds.id.get_num_chunks()):
                visit(ds.id.get_chunk_info(k))
    return None if (pos < 0).any() else pos
