"""Slide metadata (`SlideInfo`), property parsing, broken-symlink reasons and the cheap file
fingerprint."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from wsipipe.errors import SlideOpenError
from wsipipe.slide.dicom import folder_fingerprint

READERS = ("openslide", "tiffslide", "wsidicom")

FINGERPRINT_BYTES = 1 << 20


@dataclass(frozen=True)
class SlideInfo:
    """What a slide file records about itself, as read by one backend.

    Dimensions are in pixels, (width, height) per pyramid level, level 0 first; downsamples
    are level-0 pixels per level pixel. ``mpp_x`` / ``mpp_y`` are microns per level-0 pixel as
    recorded by the file (None when absent) -- an override given to `open_slide` is not
    reflected here but in ``Slide.mpp``.
    """

    path: str
    reader: str
    vendor: str | None
    width: int
    height: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp_x: float | None
    mpp_y: float | None
    objective_power: float | None

    def __post_init__(self) -> None:
        if self.reader not in READERS:
            raise ValueError(f"{self.path}: unknown reader {self.reader!r}; use one of {READERS}")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"{self.path}: empty slide ({self.width}x{self.height})")
        if not self.level_dimensions or len(self.level_dimensions) != len(self.level_downsamples):
            raise ValueError(f"{self.path}: level dimensions and downsamples disagree")
        if self.level_dimensions[0] != (self.width, self.height):
            raise ValueError(f"{self.path}: level 0 is not {self.width}x{self.height}")
        for name in ("mpp_x", "mpp_y", "objective_power"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{self.path}: {name}={value!r} must be positive or None")

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable dict (tuples become lists)."""
        return {
            "path": self.path,
            "reader": self.reader,
            "vendor": self.vendor,
            "width": self.width,
            "height": self.height,
            "level_dimensions": [[w, h] for w, h in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp_x": self.mpp_x,
            "mpp_y": self.mpp_y,
            "objective_power": self.objective_power,
        }


def positive_float(value: object) -> float | None:
    """Parse a metadata value as a finite positive float; None when absent or unusable."""
    if value is None:
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number <= 0:
        return None
    return number


def info_from_properties(
    path: Path,
    reader: str,
    properties: Mapping[str, str],
    level_dimensions: tuple[tuple[int, int], ...],
    level_downsamples: tuple[float, ...],
) -> SlideInfo:
    """Build a SlideInfo from a backend's property map (keys prefixed ``openslide.`` or
    ``tiffslide.`` as the reader names them; OpenSlide takes a DICOM mpp from PixelSpacing)."""
    prefix = f"{reader}."
    vendor = properties.get(prefix + "vendor")
    width, height = level_dimensions[0]
    return SlideInfo(
        path=str(path),
        reader=reader,
        vendor=str(vendor) if vendor else None,
        width=int(width),
        height=int(height),
        level_dimensions=tuple((int(w), int(h)) for w, h in level_dimensions),
        level_downsamples=tuple(float(d) for d in level_downsamples),
        mpp_x=positive_float(properties.get(prefix + "mpp-x")),
        mpp_y=positive_float(properties.get(prefix + "mpp-y")),
        objective_power=positive_float(properties.get(prefix + "objective-power")),
    )


def broken_link(path: Path) -> str:
    """Why ``path`` is an unusable symlink ("dangling symlink -> target", "symlink loop"),
    or "" when it is not a symlink or its target exists."""
    if not path.is_symlink():
        return ""
    try:
        path.resolve(strict=True)
    except FileNotFoundError:
        return (
            f"{path}: dangling symlink -> {os.readlink(path)} (the target does not exist); "
            "restore the target or remove the link"
        )
    except (RuntimeError, OSError):  # RuntimeError: Python < 3.13 on a loop; OSError: ELOOP
        return (
            f"{path}: symlink loop ({path} -> {os.readlink(path)} leads back to itself); "
            "point the link at the slide or remove it"
        )
    return ""


def slide_fingerprint(path: str | Path, md5: bool = True) -> dict[str, object]:
    """Cheap identity of a slide file: ``{"size": bytes, "mtime_ns": modification time,
    "md5_first_mb": hex}`` where the md5 covers the first MiB (or the whole file if smaller);
    for a DICOM series folder, the size of its DICOM files, the newest one's mtime and the md5
    of each one's name and first MiB. ``md5`` False: size and mtime only (a stat, no read).

    The one fingerprint of wsipipe: tiling records it in the store (:class:`StoreMeta`), and
    :func:`slide_changes` compares a slide against it."""
    p = Path(path)
    if p.is_dir():
        return folder_fingerprint(p, md5)
    try:
        st = p.stat()
        out: dict[str, object] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if md5:
            with p.open("rb") as fh:
                head = fh.read(FINGERPRINT_BYTES)
            out["md5_first_mb"] = hashlib.md5(head, usedforsecurity=False).hexdigest()
    except OSError as exc:
        raise SlideOpenError(
            f"{p}: cannot read the file for its fingerprint ({exc.strerror or exc}); "
            "check the path and permissions"
        ) from exc
    return out


def slide_changes(path: str | Path, size: int, md5: str, mtime_ns: int | None = None) -> str:
    """What differs between the slide at ``path`` and a recorded fingerprint ("" = nothing).

    Size and modification time are compared first (a stat); the md5 of the first MiB is
    read only when the size matches but the mtime differs or was not recorded (stores written
    before it was), so a slide copied or touched without a change still matches."""
    now = slide_fingerprint(path, md5=False)
    if now["size"] != size:
        return f"size {size} -> {now['size']} bytes"
    if mtime_ns is not None and now["mtime_ns"] == mtime_ns:
        return ""
    if slide_fingerprint(path)["md5_first_mb"] != md5:
        return ("mtime and " if mtime_ns is not None else "") + "md5 of the first MiB differ"
    return ""
