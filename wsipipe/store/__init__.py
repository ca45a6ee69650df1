"""Patch stores: one slide's tile coordinates, encoded tile pixels and metadata.

Written once by ``wsipipe tile`` (:func:`create_store`), read many times at random by index
from DataLoader workers (:func:`open_store`). Two formats behind one interface: ``"h5"`` (one
HDF5 file, CLAM/TRIDENT-compatible ``coords``) and ``"zarr"`` (a zarr v3 directory with
sharded per-tile chunks). :mod:`~wsipipe.store.lookup` finds a tiling run's stores by slide id.
"""

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
