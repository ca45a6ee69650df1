"""The slide backends behind one small interface: read an RGB region, close.

OpenSlide and tiffslide here; wsidicom (DICOM series) in `wsipipe.slide.wsidicom_backend`.
All return (height, width, 3) uint8 RGB with everything outside the image or transparent
composited onto white, and turn backend exceptions into one-line `SlideError`s.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from wsipipe.errors import SlideError
from wsipipe.slide.dicom import openslide_entry
from wsipipe.slide.info import SlideInfo, info_from_properties


class Backend(Protocol):
    name: str
    path: Path
    info: SlideInfo
    closed: bool

    def read_rgb(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray: ...

    def tile_height(self, level: int) -> int | None: ...

    def close(self) -> None: ...


def one_line(exc: BaseException) -> str:
    """An exception as a single line (type name when it has no message), at most 300 chars."""
    text = " ".join(str(exc).split())
    return (text or type(exc).__name__)[:300]


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(h, w, 4) uint8 straight-alpha RGBA -> (h, w, 3) uint8 RGB over a white background."""
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.uint16)[..., None]
    rgb = rgba[..., :3].astype(np.uint16)
    out = (rgb * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def to_rgb(arr: np.ndarray, path: Path | str = "image") -> np.ndarray:
    """Normalise a (h, w[, c]) uint8 array to (h, w, 3) RGB (gray replicated, alpha on white);
    ``path`` names the source in errors."""
    if arr.dtype != np.uint8:
        raise SlideError(
            f"{path}: pixel type {arr.dtype} is not 8-bit; wsipipe reads 8-bit brightfield "
            "RGB slides -- convert the slide to 8-bit RGB first"
        )
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[2]
    if channels == 3:
        return np.ascontiguousarray(arr)
    if channels == 1:
        return np.ascontiguousarray(np.repeat(arr, 3, axis=2))
    if channels == 4:
        return composite_on_white(arr)
    raise SlideError(
        f"{path}: {channels} channels per pixel; wsipipe reads RGB or gray slides -- "
        "export an RGB rendering of this slide first"
    )


@dataclass(frozen=True)
class LevelWindow:
    """A read of width x height level px whose top-left is level (lx, ly), and its part
    inside the level: [x0, x1) x [y0, y1) in level px (``empty`` when nothing is inside)."""

    lx: int
    ly: int
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def empty(self) -> bool:
        return self.x1 <= self.x0 or self.y1 <= self.y0


def level_window(
    info: SlideInfo, x: int, y: int, level: int, width: int, height: int
) -> LevelWindow:
    """Where a read at level-0 (x, y) falls in ``level``: level coordinates are
    int(x / downsample), as tiffslide maps them."""
    ds = info.level_downsamples[level]
    lw, lh = info.level_dimensions[level]
    lx, ly = int(x / ds), int(y / ds)
    return LevelWindow(lx, ly, max(lx, 0), max(ly, 0), min(lx + width, lw), min(ly + height, lh))


def _info(path: Path, reader: str, props: dict[str, Any], slide: Any) -> SlideInfo:
    """SlideInfo of an OpenSlide or TiffSlide handle (the same API)."""
    dims, downs = tuple(slide.level_dimensions), tuple(slide.level_downsamples)
    return info_from_properties(path, reader, props, dims, downs)


def read_error(path: Path, reader: str, where: str, exc: BaseException) -> SlideError:
    return SlideError(
        f"{path}: {reader} failed reading {where}: {one_line(exc)}; the file may be truncated "
        "or corrupt -- re-copy it or exclude it from the slides list"
    )


class OpenSlideBackend:
    name = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        self.path = path
        # a DICOM series folder: OpenSlide opens the series from one of its instance files
        self._slide = openslide.OpenSlide(str(openslide_entry(path)))
        self.closed = False
        props = dict(self._slide.properties)
        self._props = props
        self.info = _info(path, self.name, props, self._slide)

    def tile_height(self, level: int) -> int | None:
        value = self._props.get(f"openslide.level[{level}].tile-height")
        return int(value) if value and str(value).isdigit() else None

    def read_rgb(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        try:
            image = self._slide.read_region((x, y), level, (width, height))
            rgba = np.asarray(image)
        except Exception as exc:
            raise read_error(self.path, self.name, f"{width}x{height} at ({x}, {y})", exc) from exc
        return composite_on_white(rgba)

    def close(self) -> None:
        if not self.closed:
            self._slide.close()
            self.closed = True


class TiffSlideBackend:
    name = "tiffslide"

    def __init__(self, path: Path) -> None:
        import tiffslide

        self.path = path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "hamamatsu metadata partially implemented"
            self._slide = tiffslide.TiffSlide(str(path))
            props: dict[str, Any] = dict(self._slide.properties)
        self.closed = False
        self._props = props
        self.info = _info(path, self.name, props, self._slide)

    def tile_height(self, level: int) -> int | None:
        value = self._props.get(f"tiffslide.level[{level}].tile-height")
        try:
            return int(value) if value else None
        except (TypeError, ValueError):
            return None

    def read_rgb(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        # clip to the level ourselves and fill the rest with white (tiffslide pads with black)
        win = level_window(self.info, x, y, level, width, height)
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        if win.empty:
            return out
        lx, ly, x0, y0, x1, y1 = win.lx, win.ly, win.x0, win.y0, win.x1, win.y1
        try:
            # unpadded: tiffslide returns just the in-bounds part [y0:y1, x0:x1]
            arr = self._slide.read_region(
                (x, y), level, (width, height), as_array=True, padding=False
            )
        except Exception as exc:
            raise read_error(self.path, self.name, f"{width}x{height} at ({x}, {y})", exc) from exc
        rgb = to_rgb(np.asarray(arr), self.path)
        h, w = min(rgb.shape[0], y1 - y0), min(rgb.shape[1], x1 - x0)
        out[y0 - ly : y0 - ly + h, x0 - lx : x0 - lx + w] = rgb[:h, :w]
        return out

    def close(self) -> None:
        if not self.closed:
            self._slide.close()
            self.closed = True


def _wsidicom(path: Path) -> Backend:
    from wsipipe.slide.wsidicom_backend import WsiDicomBackend  # lazy: it imports this module

    return WsiDicomBackend(path)


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "openslide": OpenSlideBackend,
    "tiffslide": TiffSlideBackend,
    "wsidicom": _wsidicom,
}


def open_backend(path: Path, reader: str) -> Backend:
    """Open ``path`` with the named backend; exceptions propagate (callers classify them)."""
    return BACKENDS[reader](path)
