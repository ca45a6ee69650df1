"""Patch stores: one slide's tile coordinates, encoded tile pixels and metadata.

Written once by ``wsipipe tile`` (:func:`create_store`), read many times at random by index
from DataLoader workers (:func:`open_store`). Two formats behind one interface: ``"h5"`` (one
HDF5 file, CLAM/TRIDENT-compatible ``coords``) and ``"zarr"`` (a zarr v3 directory with
sharded per-tile chunks). :mod:`~wsipipe.store.lookup` finds a tiling run's stores by slide id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsipipe.lazy import lazy_exports

# name -> module, imported on first use: `wsipipe tile` re-runs that only skip done slides
# never load h5py / zarr
_EXPORTS = {
    "create_store": "wsipipe.store.api",
    "open_store": "wsipipe.store.api",
    "PatchStore": "wsipipe.store.base",
    "StoreWriter": "wsipipe.store.base",
    "PIXEL_FORMATS": "wsipipe.store.codec",
    "decode_tile": "wsipipe.store.codec",
    "encode_tile": "wsipipe.store.codec",
    "SlideSource": "wsipipe.store.lookup",
    "check_slide_unchanged": "wsipipe.store.lookup",
    "describe_store": "wsipipe.store.lookup",
    "find_store": "wsipipe.store.lookup",
    "list_stores": "wsipipe.store.lookup",
    "resolve_stores_dir": "wsipipe.store.lookup",
    "FORMATS": "wsipipe.store.meta",
    "STORE_SUFFIX": "wsipipe.store.meta",
    "StoreMeta": "wsipipe.store.meta",
}

if TYPE_CHECKING:
    from wsipipe.store.api import create_store, open_store
    from wsipipe.store.base import PatchStore, StoreWriter
    from wsipipe.store.codec import PIXEL_FORMATS, decode_tile, encode_tile
    from wsipipe.store.lookup import (
        SlideSource,
        check_slide_unchanged,
        describe_store,
        find_store,
        list_stores,
        resolve_stores_dir,
    )
    from wsipipe.store.meta import FORMATS, STORE_SUFFIX, StoreMeta
else:
    __getattr__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "FORMATS",
    "PIXEL_FORMATS",
    "STORE_SUFFIX",
    "PatchStore",
    "SlideSource",
    "StoreMeta",
    "StoreWriter",
    "check_slide_unchanged",
    "create_store",
    "decode_tile",
    "describe_store",
    "encode_tile",
    "find_store",
    "list_stores",
    "open_store",
    "resolve_stores_dir",
]
