"""Tile squares as a GeoJSON FeatureCollection that QuPath imports with their scores.

Each tile becomes one ``Feature`` with a closed square ``Polygon`` in slide level-0 px
(x right, y down, as QuPath's image coordinates) and ``properties``:

* ``objectType``: ``"tile"`` (QuPath creates tile objects; ``"detection"`` also works),
* ``measurements``: a list of ``{"name": .., "value": ..}`` (the format every QuPath version
  reads; 0.4+ also accepts a mapping) -- e.g. ``attention``, ``attention_norm``, ``rank``;
  floats with 8 significant digits (QuPath keeps measurements as 32-bit floats; the exact
  values are in the scores file), NaN/inf as ``null``,
* ``color``: the tile's colour-map colour ``[r, g, b]``, so the tiles show coloured at once,
* ``name``: ``"tile <index>"``.

In QuPath: File > Import objects from file (or drag the file onto the slide), then
Measure > Show measurement maps > ``attention`` to colour the tiles by any measurement.

The file is written a chunk of features at a time (never the whole document in memory).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from wsipipe.heatmap.rows import format_rows


def _num(v: float) -> str:
    """A JSON number (NaN/inf -> null: QuPath reads it as a missing value)."""
    f = float(v)
    if not math.isfinite(f):
        return "null"
    if f.is_integer() and abs(f) < 2**53:
        return str(int(f))
    return repr(f)


def _column(values: np.ndarray) -> tuple[str, Sequence[object]]:
    """(%-conversion, values) of one measurement column: integers and bools as integers,
    floats with 8 significant digits (the scores CSV's precision), NaN/inf as ``null``."""
    v = np.asarray(values).reshape(-1)
    if v.dtype == bool or np.issubdtype(v.dtype, np.integer):
        return "%d", v.tolist()
    f = v.astype(np.float64)
    finite = np.isfinite(f)
    if finite.all():
        return "%.8g", f.tolist()
    text = [f"{x:.8g}" for x in f.tolist()]
    for i in np.flatnonzero(~finite).tolist():
        text[i] = "null"
    return "%s", text


def _corner_text(start: np.ndarray, size: float) -> Sequence[object]:
    """``start + size`` (the far corner of each tile): integers, or JSON number texts."""
    if float(size).is_integer() and (len(start) == 0 or np.abs(start).max() < 2**52):
        return (start + int(size)).tolist()
    return [_num(v) for v in (start + float(size)).tolist()]


def _escape(text: str) -> str:
    """``text`` as a literal inside a %-format template."""
    return text.replace("%", "%%")


_CHUNK = 8192  # features formatted and written at a time


def write_tiles_geojson(
    path: str | Path | IO[str],
    coords: np.ndarray,
    size_level0: float,
    measurements: Mapping[str, np.ndarray],
    colors: np.ndarray | None = None,
    object_type: str = "tile",
    classification: str | None = None,
) -> None:
    """Write one Feature per tile (see the module docstring).

    coords (N, 2) level-0 (x, y) top-left; size_level0: tile edge in level-0 px;
    measurements: name -> (N,) numbers; colors: (N, 3) uint8 or None; classification: an
    optional QuPath class name given to every tile. Features are formatted from one
    template, ``_CHUNK`` at a time (the text of one chunk in memory at once).
    """
    xy = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    n = len(xy)
    cols = {name: np.asarray(v).reshape(-1) for name, v in measurements.items()}
    for name, v in cols.items():
        if len(v) != n:
            raise ValueError(f"measurement {name!r} has {len(v)} values for {n} tiles")
    rgb = None if colors is None else np.asarray(colors, dtype=np.int64).reshape(-1, 3)
    cls = f', "classification": {{"name": {json.dumps(classification)}}}' if classification else ""
    # one %-template per feature, applied to a whole chunk at once (:func:`format_rows`); the
    # fields, in order: the ring's corners x0 y0 x1 y0 x1 y1 x0 y1 x0 y0, index, [r g b],
    # measurements. Each feature starts with the "," that separates it from the previous one.
    ring = "[[%s, %s], [%s, %s], [%s, %s], [%s, %s], [%s, %s]]"
    colour = "" if rgb is None else ', "color": [%d, %d, %d]'
    head = (
        ',{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [' + ring + "]}, "
        '"properties": {"objectType": ' + _escape(json.dumps(object_type)) + ", "
        '"name": "tile %d"' + colour + _escape(cls) + ', "measurements": ['
    )
    names = [f'{{"name": {_escape(json.dumps(str(name)))}, "value": ' for name in cols]

    def chunk_text(s: int, e: int) -> str:
        x, y = xy[s:e, 0], xy[s:e, 1]
        x0, y0 = x.tolist(), y.tolist()
        x1, y1 = _corner_text(x, size_level0), _corner_text(y, size_level0)
        fields: list[Sequence[object]] = [x0, y0, x1, y0, x1, y1, x0, y1, x0, y0, list(range(s, e))]
        if rgb is not None:
            fields += [c.tolist() for c in rgb[s:e].T]
        conv = []
        for v in cols.values():
            spec, values = _column(v[s:e])
            conv.append(spec)
            fields.append(values)
        meas = ", ".join(name + spec + "}" for name, spec in zip(names, conv, strict=True))
        return format_rows(head + meas + "]}}\n", fields)

    def write(fh: IO[str]) -> None:
        fh.write('{"type": "FeatureCollection", "features": [\n')
        for s in range(0, n, _CHUNK):
            text = chunk_text(s, min(n, s + _CHUNK))
            fh.write(text if s else text[1:])  # no "," before the first feature
        fh.write("]}\n")

    if isinstance(path, (str, Path)):
        with open(path, "w", encoding="utf-8") as fh:
            write(fh)
    else:
        write(path)


def read_tiles_geojson(path: str | Path) -> tuple[list[object], dict[str, np.ndarray]]:
    """Read back a file of :func:`write_tiles_geojson`: (shapely polygons, measurements).

    For tests and tools; loads the whole document.
    """
    from shapely.geometry import shape

    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    polys = [shape(f["geometry"]) for f in doc["features"]]
    meas: dict[str, list[float]] = {}
    for f in doc["features"]:
        for m in f["properties"].get("measurements", []):
            value = m["value"]
            meas.setdefault(m["name"], []).append(np.nan if value is None else value)
    return polys, {k: np.asarray(v, dtype=np.float64) for k, v in meas.items()}
