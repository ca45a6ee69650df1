"""Tissue masks <-> polygons, and polygons <-> GeoJSON.

Coordinate convention: mask pixel (row r, col c) covers the square [c, c+1) x [r, r+1) in
thumbnail units, with its centre at (c + 0.5, r + 0.5); level-0 coordinates are thumbnail
units times ``scale`` (level-0 px per thumbnail px). Polygons and GeoJSON are in level-0 px,
x to the right, y down (what QuPath and ASAP use). A mask pixel is inside a polygon when its
centre is (even-odd rule, so holes are holes).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import GeometryCollection, MultiPolygon, Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry
from skimage.measure import find_contours

from wsipipe.errors import ConfigError
from wsipipe.fileio import atomic_write_bytes

TISSUE_COLOR = (80, 200, 80)  # QuPath class colour of the tissue annotations (RGB)


# ------------------------------------------------------------------- mask -> polygons


def mask_to_polygons(mask: np.ndarray, scale: float, simplify_px: float = 1.0) -> list[Polygon]:
    """Tissue mask (H, W) bool in thumbnail px -> valid polygons with holes, in level-0 px.

    Boundaries are traced with marching squares at level 0.5 (through the pixel-edge
    midpoints, 8-connected foreground), then simplified by ``simplify_px`` thumbnail px
    (topology preserved), scaled by ``scale`` and made valid. Holes are kept; an island
    inside a hole is its own polygon. Sorted by area, largest first.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    m = np.pad(np.asarray(mask, dtype=bool), 1).astype(np.uint8)
    if not m.any():
        return []
    outers: list[Polygon] = []
    holes: list[np.ndarray] = []
    for c in find_contours(m, 0.5, fully_connected="high"):
        if len(c) < 4:
            continue
        xy = c[:, ::-1] - 0.5  # (row, col) in padded index -> (x, y) thumbnail units
        ring = shapely.LinearRing(xy)
        # Marching squares keeps the foreground on one side: outer rings come out
        # counter-clockwise in (x, y), holes clockwise.
        if ring.is_ccw:
            outers.append(Polygon(xy))
        else:
            holes.append(xy)

    hole_lists: list[list[np.ndarray]] = [[] for _ in outers]
    if holes and outers:
        # A vertex of a hole lies inside its own outer ring and outside any island within
        # the hole; of the outer rings containing it, the smallest is the hole's owner.
        tree = shapely.STRtree(outers)
        pts = shapely.points(np.array([h[0] for h in holes]))
        hole_idx, outer_idx = tree.query(pts, predicate="within")
        areas = shapely.area(np.array(outers, dtype=object))
        best: dict[int, int] = {}
        for hi, oi in zip(hole_idx.tolist(), outer_idx.tolist(), strict=True):
            if hi not in best or areas[oi] < areas[best[hi]]:
                best[hi] = oi
        for hi, oi in best.items():
            hole_lists[oi].append(holes[hi])

    polys: list[Polygon] = []
    for outer, hs in zip(outers, hole_lists, strict=True):
        geom: BaseGeometry = Polygon(outer.exterior.coords, hs)
        if simplify_px > 0:
            geom = geom.simplify(simplify_px, preserve_topology=True)
        geom = shapely.transform(geom, lambda xy: xy * scale)
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        polys.extend(_polygon_parts(geom))
    polys.sort(key=lambda p: -p.area)
    return polys


def _polygon_parts(geom: BaseGeometry) -> Iterator[Polygon]:
    """The non-empty polygons of a Polygon / MultiPolygon / GeometryCollection."""
    if isinstance(geom, Polygon):
        if not geom.is_empty and geom.area > 0:
            yield geom
    elif isinstance(geom, (MultiPolygon, GeometryCollection)):
        for g in geom.geoms:
            yield from _polygon_parts(g)


# ------------------------------------------------------------------- polygons -> mask


def polygons_to_mask(
    polys: Sequence[BaseGeometry], shape: tuple[int, int], scale: float
) -> np.ndarray:
    """Rasterise level-0 polygons (with holes) into a bool mask of ``shape`` (thumbnail px,
    level-0 / ``scale``). A pixel is set when its centre is inside a polygon (even-odd rule
    per polygon, union over polygons). Non-polygonal geometries are ignored.

    Exact scanline fill: cost O(edges x rows crossed + H x W), independent of vertex count
    per pixel.
    """
    h, w = int(shape[0]), int(shape[1])
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    diff = np.zeros(h * (w + 1), dtype=np.int32)
    for geom in polys:
        for poly in _polygon_parts(geom):
            rings = (poly.exterior, *poly.interiors)
            uv = [np.asarray(r.coords, dtype=np.float64) / scale - 0.5 for r in rings]
            _scan_fill(np.concatenate([_ring_edges(x) for x in uv], axis=0), h, w, diff)
    counts = np.cumsum(diff.reshape(h, w + 1)[:, :w], axis=1)
    return counts > 0


def _ring_edges(uv: np.ndarray) -> np.ndarray:
    """(N, 2) closed ring in pixel-centre units -> (N-1, 4) edges (u0, v0, u1, v1)."""
    return np.concatenate([uv[:-1], uv[1:]], axis=1)


def _scan_fill(edges: np.ndarray, h: int, w: int, diff: np.ndarray) -> None:
    """Add the even-odd interior of one polygon (all its ring edges) to ``diff``, a flat
    (h, w + 1) difference array: +1 where a run of inside pixels starts, -1 after it ends."""
    u0, v0, u1, v1 = edges.T
    keep = v0 != v1
    u0, v0, u1, v1 = u0[keep], v0[keep], u1[keep], v1[keep]
    vmin, vmax = np.minimum(v0, v1), np.maximum(v0, v1)
    # Rows r (pixel centres at v = r) with vmin <= r < vmax, clipped to the image.
    lo = np.maximum(np.ceil(vmin), 0).astype(np.int64)
    hi = np.minimum(np.ceil(vmax), h).astype(np.int64)  # exclusive
    n = np.maximum(hi - lo, 0)
    if n.sum() == 0:
        return
    idx = np.repeat(np.arange(len(n)), n)
    offs = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    rows = lo[idx] + offs
    xs = u0[idx] + (rows - v0[idx]) * (u1[idx] - u0[idx]) / (v1[idx] - v0[idx])
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    # Every row holds an even number of crossings: pair them (start, end).
    r = rows[0::2]
    c0 = np.clip(np.ceil(xs[0::2]), 0, w).astype(np.int64)
    c1 = np.clip(np.ceil(xs[1::2]), 0, w).astype(np.int64)
    ok = c1 > c0
    r, c0, c1 = r[ok], c0[ok], c1[ok]
    size = h * (w + 1)
    diff += np.bincount(r * (w + 1) + c0, minlength=size).astype(np.int32)
    diff -= np.bincount(r * (w + 1) + c1, minlength=size).astype(np.int32)


# ------------------------------------------------------------------------- GeoJSON


def _geometry_json(geom: BaseGeometry, ndigits: int = 2) -> dict[str, Any]:
    """GeoJSON geometry dict with plain lists and coordinates rounded to ``ndigits``."""

    def conv(obj: Any) -> Any:
        if isinstance(obj, (tuple, list)):
            if obj and isinstance(obj[0], (int, float)):
                return [round(float(v), ndigits) for v in obj]
            return [conv(o) for o in obj]
        return obj

    gj = mapping(geom)
    return {"type": gj["type"], "coordinates": conv(gj["coordinates"])}


def tissue_geojson(
    polys: Sequence[BaseGeometry],
    name: str = "Tissue",
    color: tuple[int, int, int] = TISSUE_COLOR,
) -> dict:
    """FeatureCollection that QuPath imports: one Feature per polygon, level-0 px, with
    properties ``{"objectType": "annotation", "classification": {"name": name,
    "color": [r, g, b]}}``."""
    features = []
    for geom in polys:
        if geom.is_empty:
            continue
        features.append(
            {
                "type": "Feature",
                "geometry": _geometry_json(geom),
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": name, "color": [int(c) for c in color]},
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


_HOW_TO_FIX = "give a GeoJSON of tissue polygons in level-0 px (e.g. QuPath: Export objects)"


def read_polygons_geojson(path: str | Path) -> list[BaseGeometry]:
    """Read polygons from GeoJSON: a FeatureCollection, a single Feature, a bare geometry, or
    a JSON list of Features (QuPath's export). Polygon and MultiPolygon (also inside a
    GeometryCollection) are kept, made valid if needed; other geometry types are skipped.
    Missing file, invalid JSON or no polygon -> ConfigError naming the file and the fix."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: tissue GeoJSON not found; {_HOW_TO_FIX}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read tissue GeoJSON ({e}); {_HOW_TO_FIX}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{p}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); {_HOW_TO_FIX}"
        ) from None
    out: list[BaseGeometry] = []
    for gj in _geometries(data):
        try:
            geom = shape(gj)
        except Exception as e:  # shapely raises several types on malformed coordinates
            raise ConfigError(
                f"{p}: malformed {gj.get('type')} geometry ({e}); {_HOW_TO_FIX}"
            ) from None
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        parts = list(_polygon_parts(geom))
        if len(parts) == 1:
            out.append(parts[0])
        elif parts:
            out.append(MultiPolygon(parts))
    if not out:
        raise ConfigError(f"{p}: no Polygon or MultiPolygon geometry found; {_HOW_TO_FIX}")
    return out


def _geometries(obj: Any) -> Iterator[dict]:
    """Polygonal GeoJSON geometry dicts found in a GeoJSON object or a list of them."""
    if isinstance(obj, list):
        for item in obj:
            yield from _geometries(item)
        return
    if not isinstance(obj, dict):
        return
    kind = obj.get("type")
    if kind == "FeatureCollection":
        yield from _geometries(obj.get("features") or [])
    elif kind == "Feature":
        if obj.get("geometry"):
            yield from _geometries(obj["geometry"])
    elif kind == "GeometryCollection":
        yield from _geometries(obj.get("geometries") or [])
    elif kind in ("Polygon", "MultiPolygon"):
        yield obj


def write_geojson(path: str | Path, obj: dict) -> None:
    """Write ``obj`` as JSON atomically: a temporary file in the same folder, then
    ``os.replace``, so readers never see a half-written file. Creates the parent folder."""
    atomic_write_bytes(Path(path), json.dumps(obj, separators=(",", ":")).encode("utf-8"))
