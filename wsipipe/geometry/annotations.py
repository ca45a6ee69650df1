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

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.parsers import expat
from xml.sax.saxutils import quoteattr

from shapely.geometry import MultiPolygon, Polygon

from wsipipe.errors import ConfigError
from wsipipe.fileio import atomic_write_text
from wsipipe.geometry.geojson import (
    classification,
    finite,
    read_bytes,
    read_geojson,
    write_geojson_annotations,
)
from wsipipe.geometry.polygons import flatten_polygons, polygon_parts

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


def _fmt(v: float) -> str:
    """Shortest round-tripping decimal text of a coordinate."""
    return repr(finite(v))


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
    polys = flatten_polygons(polygons)
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
    atomic_write_text(path, "\n".join(lines) + "\n")


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
    data = read_bytes(p, "annotation file", "check the path")
    handler = _parse_asap(p, data)
    tumour: list[Polygon] = []
    exclusion: list[Polygon] = []
    for group, kind, coords in handler.annotations:
        if kind.lower() in ("dot", "pointset", "point"):
            continue
        pts = [(x, y) for _, x, y in sorted(coords, key=lambda c: c[0])]
        if len(pts) < 3:
            continue
        parts = polygon_parts(Polygon(pts))
        (exclusion if _is_exclusion(group) else tumour).extend(parts)
    return tumour, exclusion


def read_geojson_annotations(path: str | Path) -> tuple[list[Polygon], list[Polygon]]:
    """Read GeoJSON (FeatureCollection, QuPath feature list, Feature or bare geometry).

    Returns ``(tumour, exclusion)``: features classified ``Exclusion`` / ``_2`` /
    ``Ignore*`` are exclusions, all others (including unclassified) tumour.
    """
    tumour: list[Polygon] = []
    exclusion: list[Polygon] = []
    for props, geom in read_geojson(path, "annotation file", "fix or re-export it"):
        parts = polygon_parts(geom)
        (exclusion if _is_exclusion(classification(props)) else tumour).extend(parts)
    return tumour, exclusion


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------


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
