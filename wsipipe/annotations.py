"""Tumour annotations: ASAP XML (CAMELYON16) and GeoJSON (QuPath) read/write.

All coordinates are level-0 pixels (x to the right, y down), as in the slide file.

Group semantics follow CAMELYON16: annotations in groups ``_0``, ``_1``, ``Tumor`` (and any
other group) are tumour; groups ``_2`` / ``Exclusion`` are regions to exclude (non-tumour
areas inside a tumour annotation). In GeoJSON the feature classification name plays the role
of the group; unclassified features are tumour, and QuPath's ``Ignore*`` class counts as an
exclusion.

Readers return ``(tumour, exclusion)`` lists of valid shapely Polygons; self-intersecting
rings (common in hand-drawn CAMELYON annotations) are repaired with ``shapely.make_valid``
and split into their polygon parts.

XML is parsed with expat and refuses any DOCTYPE or ENTITY declaration, so neither external
entities nor entity-expansion bombs are possible.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from xml.parsers import expat
from xml.sax.saxutils import quoteattr

import shapely
from shapely.errors import ShapelyError
from shapely.geometry import GeometryCollection, MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from wsipipe.errors import ConfigError

__all__ = [
    "EXCLUSION_NAMES",
    "read_annotations",
    "read_asap_xml",
    "read_geojson_annotations",
    "write_asap_xml",
    "write_geojson_annotations",
]

#: Group / classification names (compared case-insensitively) that mark exclusion regions.
EXCLUSION_NAMES = frozenset({"_2", "exclusion", "exclude", "ignore", "ignore*"})

_ASAP_TUMOUR_COLOR = "#F4FA58"  # the colour CAMELYON16 annotations use
_ASAP_EXCLUSION_COLOR = "#64FE2E"


def _is_exclusion(name: str | None) -> bool:
    return name is not None and name.strip().lower() in EXCLUSION_NAMES


def _polygon_parts(geom: BaseGeometry) -> list[Polygon]:
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
            out.extend(_polygon_parts(part))
        return out
    return []


def _flatten_input(polygons: Iterable[Polygon | MultiPolygon]) -> list[Polygon]:
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


def _num_out(v: float) -> float:
    if not math.isfinite(v):
        raise ConfigError(f"annotation coordinate {v!r} is not finite; fix the polygon")
    return float(v)


def _fmt(v: float) -> str:
    """Shortest round-tripping decimal text of a coordinate."""
    return repr(_num_out(v))


# --------------------------------------------------------------------------------------------
# ASAP XML
# --------------------------------------------------------------------------------------------


def write_asap_xml(
    path: str | Path, polygons: Sequence[Polygon | MultiPolygon], group: str = "Tumor"
) -> None:
    """Write polygons (level-0 px) as a CAMELYON16-style ASAP XML file.

    Each polygon exterior becomes one ``<Annotation Type="Polygon" PartOfGroup=group>``;
    polygon holes are written to a second group, ``Exclusion`` (CAMELYON's ``_2`` when
    ``group`` is ``_0`` or ``_1``), so that :func:`read_asap_xml` returns them as exclusions.
    """
    polys = _flatten_input(polygons)
    excl_group = "_2" if group in ("_0", "_1") else "Exclusion"
    lines = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    index = 0

    def add(ring_coords: Sequence[tuple[float, ...]], grp: str, color: str) -> None:
        nonlocal index
        pts = list(ring_coords)
        if len(pts) > 1 and pts[0] == pts[-1]:
            pts = pts[:-1]  # ASAP rings are implicitly closed
        lines.append(
            f'\t\t<Annotation Name="Annotation {index}" Type="Polygon" '
            f"PartOfGroup={quoteattr(grp)} Color={quoteattr(color)}>"
        )
        lines.append("\t\t\t<Coordinates>")
        for order, pt in enumerate(pts):
            lines.append(
                f'\t\t\t\t<Coordinate Order="{order}" X="{_fmt(pt[0])}" Y="{_fmt(pt[1])}" />'
            )
        lines.append("\t\t\t</Coordinates>")
        lines.append("\t\t</Annotation>")
        index += 1

    has_holes = False
    for poly in polys:
        add(list(poly.exterior.coords), group, _ASAP_TUMOUR_COLOR)
    for poly in polys:
        for interior in poly.interiors:
            has_holes = True
            add(list(interior.coords), excl_group, _ASAP_EXCLUSION_COLOR)
    lines.append("\t</Annotations>")
    lines.append("\t<AnnotationGroups>")
    groups = [(group, _ASAP_TUMOUR_COLOR)] + ([(excl_group, _ASAP_EXCLUSION_COLOR)] * has_holes)
    for name, color in groups:
        lines.append(
            f'\t\t<Group Name={quoteattr(name)} PartOfGroup="None" Color={quoteattr(color)}>'
        )
        lines.append("\t\t\t<Attributes />")
        lines.append("\t\t</Group>")
    lines.append("\t</AnnotationGroups>")
    lines.append("</ASAP_Annotations>")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


class _AsapHandler:
    """Collects (group, type, [(order, x, y)]) per <Annotation> from expat events."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.annotations: list[tuple[str | None, str, list[tuple[float, float, float]]]] = []
        self._current: list[tuple[float, float, float]] | None = None

    def _num(self, value: str | None, what: str) -> float:
        if value is None:
            raise ConfigError(f"{self.path}: <Coordinate> without {what}; fix the XML")
        try:
            v = float(value.replace(",", "."))
        except ValueError:
            raise ConfigError(
                f"{self.path}: coordinate {what}={value!r} is not a number; fix the XML"
            ) from None
        if not math.isfinite(v):
            raise ConfigError(f"{self.path}: coordinate {what}={value!r} is not finite")
        return v

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        if tag == "Annotation":
            self._current = []
            self.annotations.append(
                (attrs.get("PartOfGroup"), attrs.get("Type", "Polygon"), self._current)
            )
        elif tag == "Coordinate" and self._current is not None:
            order = attrs.get("Order")
            x = self._num(attrs.get("X"), "X")
            y = self._num(attrs.get("Y"), "Y")
            o = self._num(order, "Order") if order is not None else float(len(self._current))
            self._current.append((o, x, y))

    def end(self, tag: str) -> None:
        if tag == "Annotation":
            self._current = None


def _parse_asap(path: Path, data: bytes) -> _AsapHandler:
    handler = _AsapHandler(path)
    parser = expat.ParserCreate()

    def forbid(*_args: Any) -> None:
        raise ConfigError(
            f"{path}: XML with a DOCTYPE or ENTITY declaration is refused for safety; "
            "remove the declaration"
        )

    parser.StartDoctypeDeclHandler = forbid
    parser.EntityDeclHandler = forbid
    parser.ExternalEntityRefHandler = forbid  # type: ignore[assignment]
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = handler.start
    parser.EndElementHandler = handler.end
    try:
        parser.Parse(data, True)
    except expat.ExpatError as err:
        raise ConfigError(f"{path}: not well-formed XML ({err}); fix or re-export it") from None
    return handler


def read_asap_xml(path: str | Path) -> tuple[list[Polygon], list[Polygon]]:
    """Read an ASAP XML file -> (tumour polygons, exclusion polygons), level-0 px.

    Groups ``_2`` and ``Exclusion`` are exclusions; every other group (``_0``, ``_1``,
    ``Tumor``, ...) is tumour. ``Polygon``, ``Spline`` and ``Rectangle`` annotations are
    read as polygons (splines by their control points); point annotations and rings with
    fewer than 3 points are skipped.
    """
    p = Path(path)
    data = _read_bytes(p)
    handler = _parse_asap(p, data)
    tumour: list[Polygon] = []
    exclusion: list[Polygon] = []
    for group, kind, coords in handler.annotations:
        if kind.lower() in ("dot", "pointset", "point"):
            continue
        pts = [(x, y) for _, x, y in sorted(coords, key=lambda c: c[0])]
        if len(pts) < 3:
            continue
        parts = _polygon_parts(Polygon(pts))
        (exclusion if _is_exclusion(group) else tumour).extend(parts)
    return tumour, exclusion


# --------------------------------------------------------------------------------------------
# GeoJSON
# --------------------------------------------------------------------------------------------


def write_geojson_annotations(
    path: str | Path, polygons: Sequence[Polygon | MultiPolygon], name: str = "Tumor"
) -> None:
    """Write polygons (level-0 px) as a QuPath-style GeoJSON FeatureCollection.

    Every feature is ``objectType: annotation`` with ``classification: {name, color}``;
    holes are kept as polygon interiors. Output is deterministic (no random ids).
    """
    polys = _flatten_input(polygons)
    features = []
    for poly in polys:
        oriented = orient(poly, 1.0)  # exterior counter-clockwise, holes clockwise
        rings = [oriented.exterior, *oriented.interiors]
        coords = [[[_num_out(x), _num_out(y)] for x, y, *_ in ring.coords] for ring in rings]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": coords},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": name, "color": [200, 0, 0]},
                },
            }
        )
    doc = {"type": "FeatureCollection", "features": features}
    Path(path).write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")


def _classification(props: dict[str, Any] | None) -> str | None:
    if not props:
        return None
    cls = props.get("classification")
    if isinstance(cls, dict):
        name = cls.get("name")
        return str(name) if name is not None else None
    if isinstance(cls, str):
        return cls
    # some exporters put the class in "name" / "class"
    for key in ("class", "label"):
        if isinstance(props.get(key), str):
            return str(props[key])
    return None


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
        return _features(doc.get("features", []), path)
    if kind == "Feature":
        return [(doc.get("properties"), doc.get("geometry"))]
    if kind in (
        "Polygon",
        "MultiPolygon",
        "GeometryCollection",
        "Point",
        "LineString",
        "MultiPoint",
        "MultiLineString",
    ):
        return [(None, doc)]
    raise ConfigError(
        f"{path}: GeoJSON object of type {kind!r} is not a Feature, FeatureCollection or geometry"
    )


def read_geojson_annotations(path: str | Path) -> tuple[list[Polygon], list[Polygon]]:
    """Read GeoJSON (FeatureCollection, QuPath feature list, Feature or bare geometry).

    Returns ``(tumour, exclusion)``: features classified ``Exclusion`` / ``_2`` /
    ``Ignore*`` are exclusions, all others (including unclassified) tumour.
    """
    p = Path(path)
    try:
        doc = json.loads(_read_bytes(p))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{p}: not valid JSON ({err}); fix or re-export it") from None
    tumour: list[Polygon] = []
    exclusion: list[Polygon] = []
    for props, geom in _features(doc, p):
        if geom is None:
            continue
        try:
            g = shape(geom)
        except (ValueError, TypeError, AttributeError, KeyError, ShapelyError) as err:
            raise ConfigError(f"{p}: invalid GeoJSON geometry ({err}); fix the file") from None
        parts = _polygon_parts(g)
        (exclusion if _is_exclusion(_classification(props)) else tumour).extend(parts)
    return tumour, exclusion


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"annotation file {path} does not exist; check the path") from None
    except OSError as err:
        raise ConfigError(f"annotation file {path} cannot be read ({err})") from None


def read_annotations(path: str | Path) -> tuple[list[Polygon], list[Polygon]]:
    """Read ``.xml`` (ASAP) or ``.geojson`` / ``.json`` annotations -> (tumour, exclusion)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".xml":
        return read_asap_xml(p)
    if suffix in (".geojson", ".json"):
        return read_geojson_annotations(p)
    raise ConfigError(
        f"annotation file {p} has extension {suffix!r}; use ASAP .xml or .geojson/.json"
    )
