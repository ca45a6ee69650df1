"""`open_slide` and `Slide`: one slide behind OpenSlide, tiffslide or wsidicom, in mpp terms."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsipipe.errors import ConfigError, MissingMppError, SlideOpenError
from wsipipe.slide.backends import Backend, one_line, open_backend
from wsipipe.slide.dctscale import DEFAULT_RESAMPLE
from wsipipe.slide.dicom import check_series_folder, is_dicom_file, is_dicom_input
from wsipipe.slide.info import READERS, SlideInfo, broken_link
from wsipipe.slide.levels import (
    TileGeometry,
    choose_level,
    plan_stripes,
    thumbnail_plan,
    tile_geometry,
)
from wsipipe.slide.tiffindex import (
    LevelIndex,
    TileSource,
    level_index,
    quiet_tifffile,
    truncation_problem,
)
from wsipipe.slide.tiles import TileReader, check_tile_args

# Level pixels read per thumbnail stripe (RGB: 3 bytes each, RGBA from OpenSlide: 4).
THUMBNAIL_STRIPE_PIXELS = 8 * 1024 * 1024


def _check_mpp_override(path: Path, mpp: float | None) -> float | None:
    if mpp is None:
        return None
    try:
        value = float(mpp)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(
            f"{path}: mpp override {mpp!r} is invalid; pass the scanner's microns per pixel "
            "as a positive number such as 0.25"
        )
    return value


def auto_readers(path: Path) -> tuple[str, ...]:
    """Readers "auto" tries, in order: OpenSlide, then tiffslide for files, then wsidicom for
    DICOM (a series folder or a DICOM file)."""
    if path.is_dir():
        return ("openslide", "wsidicom")
    files = ("openslide", "tiffslide")
    return (*files, "wsidicom") if is_dicom_file(path) else files


def _failure_hint(path: Path) -> str:
    if is_dicom_input(path):
        return (
            "check that it is a complete, standard DICOM VL whole-slide image series (its "
            "instance files in one folder, with ImageType and PixelSpacing); re-export it from "
            "the scanner or PACS, or convert it to tiled TIFF"
        )
    return (
        "check that the file is a complete whole-slide image in a format OpenSlide or "
        "tiffslide reads (e.g. SVS, NDPI, tiled TIFF, DICOM) and convert other formats to "
        "tiled TIFF"
    )


def open_slide(path: str | Path, reader: str = "auto", mpp: float | None = None) -> Slide:
    """Open a slide with OpenSlide, falling back to tiffslide (files) and wsidicom (DICOM).

    ``path`` is a slide file, or a folder holding the instance files of one DICOM series.
    ``reader`` = "auto" | "openslide" | "tiffslide" | "wsidicom" (a name forces that one);
    ``mpp`` overrides the file's microns per level-0 pixel (x and y). Raises ConfigError for an
    unknown reader or bad mpp, SlideOpenError (one line: file, each backend's reason, hint)
    when nothing opens the file (missing, truncated, corrupt or unsupported).
    """
    p = Path(path)
    if reader != "auto" and reader not in READERS:
        raise ConfigError(
            f"{p}: unknown slide reader {reader!r}; use 'auto', "
            + ", ".join(f"'{r}'" for r in READERS[:-1])
            + f" or '{READERS[-1]}'"
        )
    override = _check_mpp_override(p, mpp)
    if not p.exists():
        raise SlideOpenError(
            broken_link(p) or f"{p}: slide file not found; check the path in the slides list"
        )
    if p.is_dir():
        check_series_folder(p)  # a DICOM series folder is one slide
    else:
        _check_complete(p)
    names = auto_readers(p) if reader == "auto" else (reader,)
    reasons: list[str] = []
    for name in names:
        try:
            with quiet_tifffile():
                backend = open_backend(p, name)
        except Exception as exc:  # every backend failure is a reason, never a crash
            reasons.append(f"{name}: {one_line(exc)}")
            continue
        return Slide(backend, override)
    raise SlideOpenError(f"{p}: no reader could open it ({'; '.join(reasons)}); {_failure_hint(p)}")


def _check_complete(p: Path) -> None:
    try:
        problem = truncation_problem(p)
    except OSError as exc:
        raise SlideOpenError(
            f"{p}: cannot read the file ({exc.strerror or one_line(exc)}); check its permissions"
        ) from exc
    if problem is not None:
        raise SlideOpenError(f"{p}: {problem}; re-download or re-copy the slide")


class Slide:
    """An open slide. Use as a context manager or call `close()`.

    ``info`` is what the file records; ``mpp`` is the effective level-0 microns per pixel
    (override, else the file's). Pickling a Slide reopens it (same reader, same override).
    """

    def __init__(self, backend: Backend, mpp_override: float | None = None) -> None:
        self._backend = backend
        self.info: SlideInfo = backend.info
        self.path = Path(backend.path)
        self.reader: str = backend.name
        self._override = mpp_override
        self._indexes: dict[int, tuple[LevelIndex | None, str]] = {}
        # the last whole-level thumbnail read (level, y0, RGB rows): a second thumbnail of a
        # level read in one stripe (segmentation, then QC image) is resized from it, not read
        # and decoded again; at most THUMBNAIL_STRIPE_PIXELS px, dropped on close
        self._level_read: tuple[int, int, np.ndarray] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (open_slide, (str(self.path), self.reader, self._override))

    def __repr__(self) -> str:
        size = f"{self.info.width}x{self.info.height}"
        return f"Slide({str(self.path)!r}, reader={self.reader!r}, {size})"

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the backend (TileReaders made from this slide reopen their own)."""
        self._backend.close()
        self._level_read = None

    @property
    def closed(self) -> bool:
        return self._backend.closed

    # -- resolution -----------------------------------------------------------------------------
    @property
    def mpp(self) -> float:
        """Effective level-0 microns per pixel: the override, else the file's mean of x and y."""
        if self._override is not None:
            return self._override
        values = [v for v in (self.info.mpp_x, self.info.mpp_y) if v is not None]
        if not values:
            raise MissingMppError(
                f"{self.path}: no microns-per-pixel recorded in the slide; pass --mpp 0.25 "
                "(or an `mpp` column in the slides CSV) with the scanner's true value"
            )
        return sum(values) / len(values)

    @property
    def mpp_source(self) -> str:
        """Where ``mpp`` comes from: "override" (given to open_slide) or "file"."""
        return "override" if self._override is not None else "file"

    def _check_level(self, level: int) -> int:
        n = self.info.level_count
        if isinstance(level, bool) or not isinstance(level, int | np.integer):
            raise ConfigError(f"{self.path}: level {level!r} is not an integer")
        if not 0 <= int(level) < n:
            raise ConfigError(f"{self.path}: level {level} does not exist; use 0..{n - 1}")
        return int(level)

    def level_mpp(self, level: int) -> float:
        """Microns per pixel of pyramid ``level`` (slide mpp x level downsample)."""
        return self.mpp * self.info.level_downsamples[self._check_level(level)]

    def best_level(self, target_mpp: float) -> int:
        """Coarsest level whose mpp is <= target_mpp * 1.01 (level 0 if all are coarser)."""
        check_tile_args(self.path, target_mpp, 1)
        mpps = [self.mpp * d for d in self.info.level_downsamples]
        return choose_level(mpps, float(target_mpp))

    # -- pixels ---------------------------------------------------------------------------------
    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB of pyramid ``level``; (x, y) is the top-left in level-0
        px. Outside the slide and transparent areas are white."""
        level = self._check_level(level)
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, int | np.integer) or value < 1:
                raise ConfigError(f"{self.path}: region {name} {value!r} must be >= 1 px")
        return self._backend.read_rgb(int(x), int(y), level, int(width), int(height))

    def thumbnail(
        self, target_mpp: float, *, stripe_pixels: int = THUMBNAIL_STRIPE_PIXELS
    ) -> tuple[np.ndarray, float]:
        """RGB thumbnail at ~target_mpp (e.g. 8 um/px) and its downsample (level-0 px per
        thumbnail px, the same for x and y; >= 1, so never finer than level 0).

        Reads the best pyramid level in horizontal stripes of ~stripe_pixels level px, each
        area-averaged (PIL BOX) into its thumbnail rows: memory is about the thumbnail plus one
        stripe even for a single-level gigapixel slide.
        """
        check_tile_args(self.path, target_mpp, 1)
        info = self.info
        plan = thumbnail_plan(
            info.width, info.height, self.mpp, info.level_downsamples, float(target_mpp)
        )
        ds = info.level_downsamples[plan.level]
        tile_h = self._backend.tile_height(plan.level) or 1
        out = np.empty((plan.height, plan.width, 3), dtype=np.uint8)
        stripes = plan_stripes(plan, stripe_pixels, tile_h)
        for stripe in stripes:
            rows = stripe.level_y1 - stripe.level_y0
            # level-0 y whose level row is level_y0 (or a fraction past it when ds is not an
            # integer), for both backends' mappings (x / ds, and int(x / ds) in tiffslide)
            y0 = math.ceil(stripe.level_y0 * ds - 1e-9)
            region = self._read_level_rows(plan.level, y0, plan.read_width, rows, len(stripes))
            left, top, right, bottom = stripe.box
            box = (left, top, min(right, float(plan.read_width)), min(bottom, float(rows)))
            small = Image.fromarray(region).resize(
                (plan.width, stripe.row1 - stripe.row0), Image.Resampling.BOX, box=box
            )
            out[stripe.row0 : stripe.row1] = np.asarray(small)
        return out, plan.downsample

    def _read_level_rows(
        self, level: int, y0: int, width: int, rows: int, n_stripes: int
    ) -> np.ndarray:
        """``rows`` x ``width`` RGB px of ``level`` from level-0 y ``y0``. A one-stripe read
        takes the whole level and is kept; later requests inside it are sliced from it."""
        last = self._level_read
        if last is not None and last[:2] == (level, y0):
            cached = last[2]
            if cached.shape[0] >= rows and cached.shape[1] >= width:
                return cached[:rows, :width]
        if n_stripes > 1 or y0 != 0:
            return self._backend.read_rgb(0, y0, level, width, rows)
        level_w, level_h = self.info.level_dimensions[level]
        whole = self._backend.read_rgb(0, 0, level, max(width, level_w), max(rows, level_h))
        self._level_read = (level, 0, whole)
        return whole[:rows, :width]

    def tile_geometry(self, target_mpp: float, tile_px: int, overlap_px: int = 0) -> TileGeometry:
        """Footprint, stride and read level of ``tile_px`` tiles at ``target_mpp`` here."""
        check_tile_args(self.path, target_mpp, tile_px)
        return tile_geometry(
            self.mpp, self.info.level_downsamples, float(target_mpp), int(tile_px), overlap_px
        )

    def tile_reader(
        self,
        target_mpp: float,
        tile_px: int,
        *,
        fast_path: bool = True,
        resample: str = DEFAULT_RESAMPLE,
    ) -> TileReader:
        """A TileReader for ``tile_px`` px tiles at ``target_mpp`` (fast_path=False forces the
        backend's read_region for every tile). ``resample``: "dct" (default) reduces 2x, 4x or
        8x while decoding stored JPEG tiles where the grid allows it, "exact" always decodes
        in full and area-averages (see :mod:`wsipipe.slide.dctscale`)."""
        geometry = self.tile_geometry(target_mpp, tile_px)
        level_size = self.info.level_dimensions[geometry.level]
        source, reason = None, "disabled"
        if fast_path:
            source, reason = self._fast_source(geometry)
        return TileReader(
            self.path,
            self.reader,
            geometry,
            level_size,
            source,
            reason,
            backend=self._backend,
            resample=resample,
        )

    def _fast_source(self, geometry: TileGeometry) -> tuple[TileSource | None, str]:
        # Aligned stored tiles are decoded directly whether or not the level matches the
        # target: when it does not, the decoded region is resized exactly as a backend read
        # would be (e.g. 2x2 tiles at 0.25 um/px -> one 0.5 um/px tile). The TileReader
        # checks that the read size is a whole number of file tiles.
        level = geometry.level
        if level not in self._indexes:
            w, h = self.info.level_dimensions[level]
            self._indexes[level] = level_index(self.path, w, h, self.info.vendor, self.reader)
        index, reason = self._indexes[level]
        if index is None:
            return None, reason
        return TileSource(str(self.path), index), "ok"
