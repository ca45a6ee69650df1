"""Patch-store metadata: what was tiled, from which slide, how (one frozen record per store)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from wsipipe.errors import StoreError
from wsipipe.store.codec import PIXEL_FORMATS

#: Store formats: an "h5" store is one HDF5 file, a "zarr" store a zarr v3 directory.
FORMATS = ("h5", "zarr")
STORE_SUFFIX = {"h5": ".h5", "zarr": ".zarr"}
#: Slide readers a store may record.
READERS = ("openslide", "tiffslide", "wsidicom")
MPP_SOURCES = ("file", "override")

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
    reader: str  # "openslide" | "tiffslide" | "wsidicom"
    slide_mpp: tuple[float, float]  # (x, y) level-0 um/px actually used
    mpp_source: str  # "file" | "override"
    target_mpp: float
    tile_px: int  # stored tile size (px)
    level: int  # pyramid level read from
    downsample: float  # level-0 px per px of `level`
    read_px: int  # tile size read at `level` (CLAM's patch_size)
    tile_size_level0: int  # footprint of a tile in level-0 px (TRIDENT's patch_size_level0)
    overlap_px: int  # overlap between neighbouring tiles, in stored-tile px
    pixels: str  # "jpeg" | "png" | "none" (coords-only store)
    jpeg_quality: int | None
    wsipipe_version: str
    config: dict[str, object] = field(hash=False)  # full resolved tiling config (JSON-able)
    level_dim: tuple[int, int] | None = None  # (width, height) of `level`, px; optional
    # distance between neighbouring tiles' top-lefts, level-0 px (footprint minus overlap);
    # None in stores written before it was recorded
    stride_level0: int | None = None

    def __post_init__(self) -> None:
        for name in ("slide_id", "slide_path", "wsipipe_version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise StoreError(f"store metadata {name}={value!r} must be a non-empty string")
        _set(self, "slide_size", _int("slide_size", self.slide_size, minimum=1))
        md5 = self.slide_md5_1mb
        if not isinstance(md5, str) or not _MD5_RE.match(md5.lower()):
            raise StoreError(
                f"store metadata slide_md5_1mb={md5!r} is not a 32-digit md5 hex digest; "
                "pass hashlib.md5(first_mib).hexdigest()"
            )
        _set(self, "slide_md5_1mb", md5.lower())
        _choice("reader", self.reader, READERS)
        _choice("mpp_source", self.mpp_source, MPP_SOURCES)
        _choice("pixels", self.pixels, PIXEL_FORMATS)
        mpp = _pair("slide_mpp", self.slide_mpp, float)
        for v in mpp:
            _check_positive("slide_mpp", v, self.slide_mpp)
        _set(self, "slide_mpp", mpp)
        _set(self, "target_mpp", _float("target_mpp", self.target_mpp))
        _set(self, "downsample", _float("downsample", self.downsample))
        for name in ("tile_px", "read_px", "tile_size_level0"):
            _set(self, name, _int(name, getattr(self, name), minimum=1))
        _set(self, "level", _int("level", self.level, minimum=0))
        _set(self, "overlap_px", _int("overlap_px", self.overlap_px, minimum=0))
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
        if self.pixels == "jpeg":
            q = _int("jpeg_quality", self.jpeg_quality, minimum=1)
            if q > 100:
                raise StoreError(f"store metadata jpeg_quality={q} must be 1-100; {_FIX}")
            _set(self, "jpeg_quality", q)
        elif self.jpeg_quality is not None:
            raise StoreError(
                f"store metadata jpeg_quality={self.jpeg_quality!r} must be None when "
                f"pixels={self.pixels!r}; {_FIX}"
            )
        if self.stride_level0 is not None:
            _set(self, "stride_level0", _int("stride_level0", self.stride_level0, minimum=1))
        if self.level_dim is not None:
            dims = _pair("level_dim", self.level_dim, int)
            if min(dims) < 1:
                raise StoreError(f"store metadata level_dim={self.level_dim!r} must be positive")
            _set(self, "level_dim", dims)
        if not isinstance(self.config, dict) or not all(isinstance(k, str) for k in self.config):
            raise StoreError(
                f"store metadata config must be a dict with string keys, got "
                f"{type(self.config).__name__}; pass the resolved tiling config"
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

        ``jpeg_quality``, ``level_dim`` and ``stride_level0`` are left out when None.
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
                if f.name in ("jpeg_quality", "level_dim", "stride_level0"):
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


def _set(obj: StoreMeta, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise StoreError(f"store metadata {name}={value!r} is not one of {', '.join(allowed)}")


def _int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise StoreError(f"store metadata {name}={value!r} must be an integer; {_FIX}")
    if int(value) < minimum:
        raise StoreError(f"store metadata {name}={value!r} must be >= {minimum}; {_FIX}")
    return int(value)


def _float(name: str, value: object) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise StoreError(f"store metadata {name}={value!r} must be a number; {_FIX}")
    v = float(value)
    _check_positive(name, v, value)
    return v


def _check_positive(name: str, v: float, shown: object) -> None:
    if not math.isfinite(v) or v <= 0:
        raise StoreError(f"store metadata {name}={shown!r} must be finite and > 0; {_FIX}")


def _pair(name: str, value: object, kind: type) -> tuple[Any, Any]:
    if not isinstance(value, (tuple, list, np.ndarray)) or len(value) != 2:
        raise StoreError(f"store metadata {name}={value!r} must be a pair (x, y); {_FIX}")
    out = []
    for v in value:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)):
            raise StoreError(f"store metadata {name}={value!r} must hold numbers; {_FIX}")
        if kind is int and float(v) != int(v):
            raise StoreError(f"store metadata {name}={value!r} must hold integers; {_FIX}")
        out.append(kind(v))
    return out[0], out[1]
