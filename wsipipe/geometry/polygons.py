"""Tissue masks <-> polygons (pure numpy / shapely).

Coordinate convention: mask pixel (row r, col c) covers the square [c, c+1) x [r, r+1) in
thumbnail units, with its centre at (c + 0.5, r + 0.5); level-0 coordinates are thumbnail
units times ``scale`` (level-0 px per thumbnail px). Polygons and GeoJSON are in level-0 px,
x to the right, y down (what QuPath and ASAP use). A mask pixel is inside a polygon when its
centre is (even-odd rule, so holes are holes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import shapely
from shapely.geometry import GeometryCollection, MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry
from skimage.measure import find_contours

from wsipipe.errors import ConfigError

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
        polys.extend(polygon_parts(geom))
    polys.sort(key=lambda p: -p.area)
    return polys


def polygon_parts(geom: BaseGeometry) -> list[Polygon]:
    """Valid, non-empty polygon parts of any geometry (lines and points are dropped)."""
    if geom.is_empty:
        return []
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    if isinstance(geom, Polygon):
        return [geom] if geom.area > 0 else []
    if isinstance(geom, MultiPolygon | GeometryCollection):
        out: list[Polygon] = []
        for part in geom.geoms:
            out.extend(polygon_parts(part))
        return out
    return []


def flatten_polygons(polygons: Iterable[BaseGeometry]) -> list[Polygon]:
    """The non-empty Polygons of Polygons and MultiPolygons; any other geometry is a
    ConfigError (writers accept polygons only)."""
    out: list[Polygon] = []
    for p in polygons:
        if isinstance(p, MultiPolygon):
            out.extend(p.geoms)
        elif isinstance(p, Polygon):
            out.append(p)
        else:
            raise ConfigError(
                f"annotation geometry {type(p).__name__} is not a Polygon; "
                "pass shapely Polygons or MultiPolygons"
            )
    return [p for p in out if not p.is_empty]


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
        for poly in polygon_parts(geom):
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


# ------------------------------------------------------------------- tiles in polygons


def tumour_fraction(
    coords: np.ndarray,
    size_level0: float,
    tumour: Sequence[Polygon],
    exclusion: Sequence[Polygon] = (),
) -> np.ndarray:
    """(N,) float32 fraction of each tile's area inside tumour minus exclusion.

    coords (N, 2) level-0 (x, y) top-left; tiles are squares of ``size_level0`` px. Only
    tiles whose square intersects the tumour are measured exactly (an STR-tree query).
    """
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    out = np.zeros(len(xy), np.float32)
    if len(xy) == 0 or not tumour:
        return out
    region = shapely.union_all(list(tumour))
    if exclusion:
        region = shapely.difference(region, shapely.union_all(list(exclusion)))
    if region.is_empty:
        return out
    s = float(size_level0)
    boxes = shapely.box(xy[:, 0], xy[:, 1], xy[:, 0] + s, xy[:, 1] + s)
    tree = shapely.STRtree(boxes)
    hits = tree.query(region, predicate="intersects")
    if len(hits):
        shapely.prepare(region)
        inter = shapely.intersection(boxes[hits], region)
        out[hits] = np.clip(shapely.area(inter) / (s * s), 0.0, 1.0)
    return out
