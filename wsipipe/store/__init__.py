"""Patch stores: one slide's tile coordinates, encoded tile pixels and metadata.

Written once by ``wsipipe tile`` (:func:`create_store`), read many times at random by index
from DataLoader workers (:func:`open_store`). Two formats behind one interface: ``"h5"`` (one
HDF5 file, CLAM/TRIDENT-compatible ``coords``) and ``"zarr"`` (a zarr v3 directory with
sharded per-tile chunks).
"""

from wsipipe.store.api import create_store, open_store
from wsipipe.store.base import PatchStore, StoreWriter
from wsipipe.store.codec import PIXEL_FORMATS, decode_tile, encode_tile
from wsipipe.store.meta import FORMATS, STORE_SUFFIX, StoreMeta

__all__ = [
    "FORMATS",
    "PIXEL_FORMATS",
    "STORE_SUFFIX",
    "PatchStore",
    "StoreMeta",
    "StoreWriter",
    "create_store",
    "decode_tile",
    "encode_tile",
    "open_store",
]
