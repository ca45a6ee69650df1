"""The wsidicom backend: DICOM WSI series that OpenSlide cannot open (or `--reader wsidicom`).

Opened on a series folder or one instance file (see `wsipipe.slide.dicom`). Levels are the
series' pyramid levels, finest first; downsamples are computed as OpenSlide does (mean of the
width and height ratios to level 0); mpp is the base level's DICOM PixelSpacing (mm/px) x 1000.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from wsipipe.slide.backends import level_window, read_error, to_rgb
from wsipipe.slide.dicom import series_files
from wsipipe.slide.info import SlideInfo, positive_float

INSTALL_HINT = "not installed; pip install 'wsipipe[dicom]'"


def um_from_mm(value: object) -> float | None:
    """DICOM PixelSpacing (mm per px) as microns per px, None when absent or not positive.
    12 significant digits drop the float noise of x1000 (0.000499 mm -> 0.499, not
    0.49899999999999994), as OpenSlide's property text does."""
    mm = positive_float(value)
    return None if mm is None else float(f"{mm * 1000.0:.12g}")


def objective_power(dataset: Any) -> float | None:
    """OpticalPathSequence[0].ObjectiveLensPower of a level's dataset, as OpenSlide reads it."""
    try:
        return positive_float(dataset.OpticalPathSequence[0].get("ObjectiveLensPower"))
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


class WsiDicomBackend:
    name = "wsidicom"

    def __init__(self, path: Path) -> None:
        try:
            import wsidicom
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        self.path = path
        files = series_files(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about non-conformant values
            self._wsi = wsidicom.WsiDicom.open(files)
        self.closed = False
        try:
            self._levels = sorted(self._wsi.pyramid, key=lambda lvl: -lvl.size.width)
            self.info = self._read_info()
        except Exception:
            self.close()
            raise

    def _read_info(self) -> SlideInfo:
        dims = tuple((int(lvl.size.width), int(lvl.size.height)) for lvl in self._levels)
        w0, h0 = dims[0]
        base = self._levels[0]
        try:
            spacing = base.pixel_spacing  # SizeMm: width = column spacing (x), height = rows
            mpp_x, mpp_y = um_from_mm(spacing.width), um_from_mm(spacing.height)
        except Exception:  # no PixelSpacing recorded: the slide has no mpp (--mpp needed)
            mpp_x = mpp_y = None
        datasets = getattr(base, "datasets", None) or [None]
        return SlideInfo(
            path=str(self.path),
            reader=self.name,
            vendor="dicom",
            width=w0,
            height=h0,
            level_dimensions=dims,
            level_downsamples=tuple((w0 / w + h0 / h) / 2.0 for w, h in dims),
            mpp_x=mpp_x,
            mpp_y=mpp_y,
            objective_power=objective_power(datasets[0]),
        )

    def tile_height(self, level: int) -> int | None:
        return int(self._levels[level].tile_size.height)

    def read_rgb(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        from wsidicom.geometry import Point, Region, Size

        # wsidicom refuses reads past the level's edge: read the part inside, paint the rest
        win = level_window(self.info, x, y, level, width, height)
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        if win.empty:
            return out
        region = Region(Point(win.x0, win.y0), Size(win.x1 - win.x0, win.y1 - win.y0))
        try:
            image = np.asarray(self._levels[level].get_region(region))
        except Exception as exc:
            raise read_error(self.path, self.name, f"{width}x{height} at ({x}, {y})", exc) from exc
        rgb = to_rgb(image, self.path)
        out[win.y0 - win.ly : win.y1 - win.ly, win.x0 - win.lx : win.x1 - win.lx] = rgb
        return out

    def close(self) -> None:
        if not self.closed:
            self._wsi.close()
            self.closed = True
