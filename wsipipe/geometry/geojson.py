"""GeoJSON in level-0 px, as QuPath imports and exports it: one reader, the writers.

:func:`read_geojson` is the only GeoJSON parser: it accepts a FeatureCollection, a single
Feature, a bare geometry, or a JSON list of Features (QuPath's "Export objects") and returns
(properties, geometry) pairs; tissue polygons (:func:`read_tissue_geojson`) and tumour
annotations (:func:`read_geojson_annotations`) are views of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shapely.errors import ShapelyError
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from wsipipe.errors import ConfigError
from wsipipe.fileio import atomic_write_bytes
from wsipipe.geometry.polygons import flatten_polygons, polygon_parts

TISSUE_COLOR = (80, 200, 80)  # QuPath class colour of the tissue annotations (RGB)
TUMOUR_COLOR = (200, 0, 0)
_GEOMETRY_TYPES = frozenset(
    {"Polygon", "MultiPolygon", "GeometryCollection", "Point", "LineString", "MultiPoint",
     "MultiLineString"}
)  # fmt: skip
_TISSUE_FIX = "give a GeoJSON of tissue polygons in level-0 px (e.g. QuPath: Export objects)"

Feature = tuple[dict[str, Any] | None, BaseGeometry]


def read_bytes(path: Path, what: str, fix: str) -> bytes:
    """The file's bytes, or a ConfigError naming it, what it should be and the fix."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found (no such file); {fix}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read {what} ({err}); {fix}") from None


def read_geojson(path: str | Path, what: str = "GeoJSON", fix: str = "fix or re-export it") -> (
    list[Feature]
):  # fmt: skip
    """(properties, shapely geometry) of every feature / geometry in a GeoJSON file.

    A missing file, invalid JSON, an object that is no Feature, FeatureCollection or geometry,
    or a malformed geometry is a ConfigError naming the file, ``what`` it is and the ``fix``.
    """
    p = Path(path)
    try:
        doc = json.loads(read_bytes(p, what, fix))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{p}: not valid JSON ({err}); {fix}") from None
    out: list[Feature] = []
    for props, gj in _features(doc, p):
        if not gj:
            continue
        try:
            geom = shape(gj)
        except (ValueError, TypeError, AttributeError, KeyError, ShapelyError) as err:
            kind = gj.get("type") if isinstance(gj, dict) else type(gj).__name__
            raise ConfigError(f"{p}: invalid GeoJSON {kind} geometry ({err}); {fix}") from None
        out.append((props, geom))
    return out


def _features(doc: Any, path: Path) -> list[tuple[dict[str, Any] | None, Any]]:
    """(properties, geometry dict) pairs of a FeatureCollection, feature list or geometry."""
    if isinstance(doc, list):
        out: list[tuple[dict[str, Any] | None, Any]] = []
        for item in doc:
            out.extend(_features(item, path))
        return out
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: GeoJSON must be an object or a list of features")
    kind = doc.get("type")
    if kind == "FeatureCollection":
        return _features(doc.get("features") or [], path)
    if kind == "Feature":
        return [(doc.get("properties"), doc.get("geometry"))]
    if kind in _GEOMETRY_TYPES:
        return [(None, doc)]
    raise ConfigError(
        f"{path}: GeoJSON object of type {kind!r} is not a Feature, FeatureCollection or geometry"
    )


# ---- tissue --------------------------------------------------------------------------------


def read_tissue_geojson(path: str | Path) -> list[BaseGeometry]:
    """Tissue polygons of a GeoJSON file: one (Multi)Polygon per feature with polygonal
    parts (made valid if needed); lines and points are skipped. No polygon at all is a
    ConfigError naming the file and the fix."""
    out: list[BaseGeometry] = []
    for _, geom in read_geojson(path, "tissue GeoJSON", _TISSUE_FIX):
        parts = polygon_parts(geom)
        if len(parts) == 1:
            out.append(parts[0])
        elif parts:
            out.append(MultiPolygon(parts))
    if not out:
        raise ConfigError(f"{path}: no Polygon or MultiPolygon geometry found; {_TISSUE_FIX}")
    return out


def geometry_json(geom: BaseGeometry, ndigits: int = 2) -> dict[str, Any]:
    """GeoJSON geometry dict with plain lists and coordinates rounded to ``ndigits``."""

    def conv(obj: Any) -> Any:
        if isinstance(obj, (tuple, list)):
            if obj and isinstance(obj[0], (int, float)):
                return [round(float(v), ndigits) for v in obj]
            return [conv(o) for o in obj]
        return obj

    gj = mapping(geom)
    return {"type": gj["type"], "coordinates": conv(gj["coordinates"])}


def _annotation_feature(geometry: dict[str, Any], name: str, color: Sequence[int]) -> dict:
    return {
        "type": "Feature",
        "geometry": geometry,
        "properties": {
            "objectType": "annotation",
            "classification": {"name": name, "color": [int(c) for c in color]},
        },
    }


def tissue_geojson(
    polys: Sequence[BaseGeometry],
    name: str = "Tissue",
    color: tuple[int, int, int] = TISSUE_COLOR,
) -> dict:
    """FeatureCollection that QuPath imports: one Feature per polygon, level-0 px, with
    properties ``{"objectType": "annotation", "classification": {"name": name,
    "color": [r, g, b]}}``."""
    features = [
        _annotation_feature(geometry_json(geom), name, color) for geom in polys if not geom.is_empty
    ]
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | Path, obj: dict) -> None:
    """Write ``obj`` as compact JSON, atomically (:mod:`wsipipe.fileio`)."""
    atomic_write_bytes(Path(path), json.dumps(obj, separators=(",", ":")).encode("utf-8"))


# ---- tumour annotations --------------------------------------------------------------------


def classification(props: dict[str, Any] | None) -> str | None:
    """The class name of a feature: QuPath's ``classification.name`` (or a plain string),
    else a ``class`` / ``label`` property."""
    if not props:
        return None
    cls = props.get("classification")
    if isinstance(cls, dict):
        name = cls.get("name")
        return str(name) if name is not None else None
    if isinstance(cls, str):
        return cls
    for key in ("class", "label"):
        if isinstance(props.get(key), str):
            return str(props[key])
    return None


def write_geojson_annotations(
    path: str | Path, polygons: Sequence[Polygon | MultiPolygon], name: str = "Tumor"
) -> None:
    """Write polygons (level-0 px) as a QuPath-style GeoJSON FeatureCollection.

    Every feature is ``objectType: annotation`` with ``classification: {name, color}``;
    holes are kept as polygon interiors. Output is deterministic (no random ids).
    """
    features = []
    for poly in flatten_polygons(polygons):
        oriented = orient(poly, 1.0)  # exterior counter-clockwise, holes clockwise
        rings = [oriented.exterior, *oriented.interiors]
        coords = [[[finite(x), finite(y)] for x, y, *_ in ring.coords] for ring in rings]
        features.append(
            _annotation_feature({"type": "Polygon", "coordinates": coords}, name, TUMOUR_COLOR)
        )
    doc = {"type": "FeatureCollection", "features": features}
    text = json.dumps(doc, separators=(",", ":")) + "\n"
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def finite(v: float) -> float:
    """A coordinate as float; a non-finite one is a ConfigError."""
    if not math.isfinite(v):
        raise ConfigError(f"annotation coordinate {v!r} is not finite; fix the polygon")
    return float(v)
