"""Entry points: create a store for writing, open one for reading (format from its content)."""

from __future__ import annotations

import shutil
from pathlib import Path

from wsipipe.errors import ConfigError, StoreError
from wsipipe.store.base import RERUN, PatchStore, StoreWriter, is_zarr_v3
from wsipipe.store.h5 import H5PatchStore, H5StoreWriter, is_hdf5
from wsipipe.store.meta import FORMATS, StoreMeta

# zarr (~0.15 s to import) is imported only when a zarr store is written or read


def create_store(
    path: str | Path, fmt: str, meta: StoreMeta, *, overwrite: bool = False
) -> StoreWriter:
    """Start writing a store at ``path`` exactly (no temp name, no rename: the caller does that).

    Args:
        path: file (h5) or directory (zarr) to create; parent directories are created.
        fmt: "h5" or "zarr".
        meta: the store's metadata.
        overwrite: replace an existing store at ``path`` (a zarr directory is only removed if
            it holds a ``zarr.json``); otherwise an existing path is an error.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"store format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    if not isinstance(meta, StoreMeta):
        raise TypeError(f"meta must be a StoreMeta, got {type(meta).__name__}")
    p = Path(path)
    if p.exists() or p.is_symlink():
        if not overwrite:
            raise StoreError(f"{p} already exists; delete it or write the store to a new path")
        if p.is_dir() and not p.is_symlink():
            if not is_zarr_v3(p):
                raise StoreError(f"{p} is a directory but not a zarr store; refusing to delete it")
            shutil.rmtree(p)
        else:
            p.unlink()
    p.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "h5":
        return H5StoreWriter(p, meta)
    from wsipipe.store.zarrstore import ZarrStoreWriter

    return ZarrStoreWriter(p, meta)


def open_store(path: str | Path, *, raw_reads: bool = True) -> PatchStore:
    """Open a complete store for reading; the format is detected from the content.

    Args:
        path: an ``.h5`` file or ``.zarr`` directory written by :func:`create_store`.
        raw_reads: fetch tile bytes with one positional read each (default, fast); False reads
            through h5py / zarr-python (for checking, or stores rewritten by other tools).

    Raises:
        StoreError: the path is missing, not a store, unreadable or incomplete.
    """
    p = Path(path)
    if not p.exists():
        raise StoreError(f"patch store {p} does not exist; {RERUN}")
    if p.is_dir():
        if is_zarr_v3(p):
            from wsipipe.store.zarrstore import ZarrPatchStore

            return ZarrPatchStore.open(p, raw_reads)
        if (p / ".zgroup").is_file():
            raise StoreError(f"patch store {p} is a zarr v2 group; wsipipe writes v3, {RERUN}")
        raise StoreError(f"{p} is a directory without zarr.json, not a zarr v3 store; {RERUN}")
    if is_hdf5(p):
        return H5PatchStore.open(p, raw_reads)
    raise StoreError(
        f"{p} is neither an HDF5 file nor a zarr v3 directory, so not a patch store; {RERUN}"
    )
