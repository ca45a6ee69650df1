"""Tile squares as a GeoJSON FeatureCollection that QuPath imports with their scores.

Each tile becomes one ``Feature`` with a closed square ``Polygon`` in slide level-0 px
(x right, y down, as QuPath's image coordinates) and ``properties``:

* ``objectType``: ``"tile"`` (QuPath creates tile objects; ``"detection"`` also works),
* ``measurements``: a list of ``{"name": .., "value": ..}`` (the format every QuPath version
  reads; 0.4+ also accepts a mapping) -- e.g. ``attention``, ``attention_norm``, ``rank``,
* ``color``: the tile's colour-map colour ``[r, g, b]``, so the tiles show coloured at once,
* ``name``: ``"tile <index>"``.

In QuPath: File > Import objects from file (or drag the file onto the slide), then
Measure > Show measurement maps > ``attention`` to colour the tiles by any measurement.

The file is written feature by feature (never the whole document in memory as objects).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import numpy as np


def _num(v: float) -> str:
    """A JSON number (NaN/inf -> null: QuPath reads it as a missing value)."""
    f = float(v)
    if not math.isfinite(f):
        return "null"
    if f.is_integer() and abs(f) < 2**53:
        return str(int(f))
    return repr(f)


def _column_text(values: np.ndarray) -> list[str]:
    """JSON texts of a column, vectorised by dtype (integers, bools, floats)."""
    v = np.asarray(values).reshape(-1)
    if v.dtype == bool:
        return ["1" if b else "0" for b in v.tolist()]
    if np.issubdtype(v.dtype, np.integer):
        return [str(i) for i in v.tolist()]
    f = v.astype(np.float64)
    text = [repr(x) for x in f.tolist()]
    for i in np.flatnonzero(~np.isfinite(f)).tolist():
        text[i] = "null"
    return text


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
    optional QuPath class name given to every tile.
    """
    xy = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    n = len(xy)
    cols = {name: np.asarray(v).reshape(-1) for name, v in measurements.items()}
    for name, v in cols.items():
        if len(v) != n:
            raise ValueError(f"measurement {name!r} has {len(v)} values for {n} tiles")
    rgb = None if colors is None else np.asarray(colors, dtype=np.int64).reshape(-1, 3)
    names = [json.dumps(str(name)) for name in cols]
    cls = f', "classification": {{"name": {json.dumps(classification)}}}' if classification else ""
    otype = json.dumps(object_type)

    texts = [_column_text(v) for v in cols.values()]
    x0 = [str(v) for v in xy[:, 0].tolist()]
    y0 = [str(v) for v in xy[:, 1].tolist()]
    x1 = [_num(v) for v in (xy[:, 0] + float(size_level0)).tolist()]
    y1 = [_num(v) for v in (xy[:, 1] + float(size_level0)).tolist()]
    rgb_text = None if rgb is None else [f"{r}, {g}, {b}" for r, g, b in rgb.tolist()]

    def write(fh: IO[str]) -> None:
        fh.write('{"type": "FeatureCollection", "features": [\n')
        for i in range(n):
            xa, ya, xb, yb = x0[i], y0[i], x1[i], y1[i]
            ring = f"[[{xa}, {ya}], [{xb}, {ya}], [{xb}, {yb}], [{xa}, {yb}], [{xa}, {ya}]]"
            meas = ", ".join(
                f'{{"name": {nm}, "value": {t[i]}}}' for nm, t in zip(names, texts, strict=True)
            )
            colour = "" if rgb_text is None else f', "color": [{rgb_text[i]}]'
            fh.write(
                f'{"," if i else ""}{{"type": "Feature", "geometry": {{"type": "Polygon", '
                f'"coordinates": [{ring}]}}, "properties": {{"objectType": {otype}, '
                f'"name": "tile {i}"{colour}{cls}, "measurements": [{meas}]}}}}\n'
            )
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
