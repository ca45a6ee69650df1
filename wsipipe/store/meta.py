"""Patch-store metadata: what was tiled, from which slide, how (one frozen record per store)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np

from wsipipe.config import coerce_fields
from wsipipe.errors import StoreError

#: Store formats: an "h5" store is one HDF5 file, a "zarr" store a zarr v3 directory.
FORMATS = ("h5", "zarr")
STORE_SUFFIX = {"h5": ".h5", "zarr": ".zarr"}
#: Slide readers a store may record.
Reader = Literal["openslide", "tiffslide", "wsidicom"]

_OPTIONAL = ("jpeg_quality", "level_dim", "stride_level0", "slide_mtime_ns")  # may be absent
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
_FIX = "fix the tiling config or re-run `wsipipe tile` for this slide"


@dataclass(frozen=True)
class StoreMeta:
    """Metadata of one slide's patch store.

    Sizes are in pixels, mpp in micrometres per pixel. ``level_dim`` (width, height of pyramid
    level ``level``, in px) is optional; when given, the HDF5 store writes CLAM's ``level_dim``
    attribute from it.
    """

    slide_id: str
    slide_path: str
    slide_size: int  # bytes (a DICOM series folder: of its DICOM files)
    slide_md5_1mb: str  # md5 hex of the slide's first MiB
    reader: Reader
    slide_mpp: tuple[float, float]  # (x, y) level-0 um/px actually used
    mpp_source: Literal["file", "override"]
    target_mpp: float
    tile_px: int  # stored tile size (px)
    level: int  # pyramid level read from
    downsample: float  # level-0 px per px of `level`
    read_px: int  # tile size read at `level` (CLAM's patch_size)
    tile_size_level0: int  # footprint of a tile in level-0 px (TRIDENT's patch_size_level0)
    overlap_px: int  # overlap between neighbouring tiles, in stored-tile px
    pixels: Literal["jpeg", "png", "none"]  # "none": a coords-only store
    jpeg_quality: int | None
    wsipipe_version: str
    config: dict[str, object] = field(hash=False)  # full resolved tiling config (JSON-able)
    level_dim: tuple[int, int] | None = None  # (width, height) of `level`, px; optional
    # distance between neighbouring tiles' top-lefts, level-0 px (footprint minus overlap);
    # None in stores written before it was recorded
    stride_level0: int | None = None
    # the slide's modification time (ns) when tiled, for the cheap "slide changed?" check
    # (with slide_size); None in stores written before it was recorded (md5 only then)
    slide_mtime_ns: int | None = None

    def __post_init__(self) -> None:
        coerce_fields(self, StoreError, _FIX)  # types (h5py / zarr give numpy values)
        for name in ("slide_id", "slide_path", "wsipipe_version"):
            if not getattr(self, name):
                raise StoreError(f"store metadata {name} is empty; {_FIX}")
        if not _MD5_RE.match(self.slide_md5_1mb.lower()):
            raise StoreError(
                f"store metadata slide_md5_1mb={self.slide_md5_1mb!r} is not a 32-digit md5 "
                "hex digest; pass hashlib.md5(first_mib).hexdigest()"
            )
        object.__setattr__(self, "slide_md5_1mb", self.slide_md5_1mb.lower())
        positive = {
            "slide_mpp": min(self.slide_mpp, key=lambda v: v if v == v else -1.0),  # nan too
            "target_mpp": self.target_mpp,
            "downsample": self.downsample, "slide_size": self.slide_size,
            "tile_px": self.tile_px, "read_px": self.read_px,
            "tile_size_level0": self.tile_size_level0,
            "stride_level0": 1 if self.stride_level0 is None else self.stride_level0,
            "level_dim": 1 if self.level_dim is None else min(self.level_dim),
        }  # fmt: skip
        for name, v in positive.items():
            if not (math.isfinite(v) and v > 0):
                raise StoreError(
                    f"store metadata {name}={getattr(self, name)!r} must be > 0; {_FIX}"
                )
        for name in ("level", "overlap_px"):
            if getattr(self, name) < 0:
                raise StoreError(
                    f"store metadata {name}={getattr(self, name)} must be >= 0; {_FIX}"
                )
        if self.overlap_px >= self.tile_px:
            raise StoreError(
                f"store metadata overlap_px={self.overlap_px} must be smaller than "
                f"tile_px={self.tile_px}; {_FIX}"
            )
        footprint = self.read_px * self.downsample
        if abs(footprint - self.tile_size_level0) > 2.0 + 0.05 * self.tile_size_level0:
            raise StoreError(
                f"store metadata tile_size_level0={self.tile_size_level0} disagrees with "
                f"read_px*downsample={footprint:g}; {_FIX}"
            )
        if self.pixels == "jpeg" and not (self.jpeg_quality and 1 <= self.jpeg_quality <= 100):
            raise StoreError(
                f"store metadata jpeg_quality={self.jpeg_quality!r} must be 1-100; {_FIX}"
            )
        if self.pixels != "jpeg" and self.jpeg_quality is not None:
            raise StoreError(
                f"store metadata jpeg_quality={self.jpeg_quality!r} must be None when "
                f"pixels={self.pixels!r}; {_FIX}"
            )
        try:
            json.dumps(self.config, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise StoreError(
                f"store metadata config is not JSON-serialisable ({err}); convert paths and "
                "arrays in the tiling config to strings and lists"
            ) from err

    def to_attrs(self) -> dict[str, object]:
        """Flat attrs (str, int, float, list) storable in HDF5 and zarr; config as JSON string.

        ``jpeg_quality``, ``level_dim``, ``stride_level0`` and ``slide_mtime_ns`` are left
        out when None.
        """
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = list(value)
            elif f.name == "config":
                value = json.dumps(value, sort_keys=True)
            out[f.name] = value
        return out

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, object]) -> StoreMeta:
        """Inverse of :meth:`to_attrs`; extra keys are ignored, numpy scalars/arrays accepted."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in attrs:
                if f.name in _OPTIONAL:
                    kwargs[f.name] = None
                    continue
                raise StoreError(
                    f"store attribute {f.name!r} is missing; the store was not written by "
                    "wsipipe or is damaged, re-run `wsipipe tile` for this slide"
                )
            value = _plain(attrs[f.name])
            if f.name == "config" and isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as err:
                    raise StoreError(
                        f"store attribute 'config' is not valid JSON ({err}); "
                        "re-run `wsipipe tile` for this slide"
                    ) from err
            if isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
        return cls(**kwargs)


def _plain(value: object) -> object:
    """numpy scalar/array/bytes (as h5py and zarr return them) -> plain Python value."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value
