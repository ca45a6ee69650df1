"""ASAP XML and GeoJSON annotations: round trips, CAMELYON group semantics, safe parsing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Polygon, box

from wsipipe.errors import ConfigError
from wsipipe.geometry.annotations import (
    read_annotations,
    read_asap_xml,
    read_geojson_annotations,
    write_asap_xml,
    write_geojson_annotations,
)

SQUARE = box(100.0, 200.0, 400.0, 500.0)
DONUT = Polygon(
    [(1000.5, 1000.25), (2000, 1000), (2000, 2000), (1000, 2000)],
    [[(1200, 1200), (1200, 1400), (1400, 1400), (1400, 1200)]],
)


def _coords(poly: Polygon) -> set[tuple[float, float]]:
    return {(float(x), float(y)) for x, y in poly.exterior.coords}


def _xml(body: str, groups: str = "") -> str:
    return (
        '<?xml version="1.0"?>\n<ASAP_Annotations><Annotations>'
        f"{body}</Annotations><AnnotationGroups>{groups}</AnnotationGroups></ASAP_Annotations>"
    )


def _annotation(group: str, pts: list[tuple[float, float]], kind: str = "Polygon") -> str:
    coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}" />' for i, (x, y) in enumerate(pts))
    return (
        f'<Annotation Name="a" Type="{kind}" PartOfGroup="{group}" Color="#F4FA58">'
        f"<Coordinates>{coords}</Coordinates></Annotation>"
    )


TRI = [(0.0, 0.0), (100.0, 0.0), (50.0, 80.0)]


def test_asap_round_trip_with_holes(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    write_asap_xml(path, [SQUARE, DONUT])
    text = path.read_text()
    assert "<ASAP_Annotations>" in text and 'PartOfGroup="Tumor"' in text
    assert 'Type="Polygon"' in text and "<AnnotationGroups>" in text
    tumour, exclusion = read_asap_xml(path)
    assert len(tumour) == 2 and len(exclusion) == 1
    assert _coords(tumour[0]) == _coords(SQUARE)
    assert _coords(tumour[1]) == _coords(Polygon(DONUT.exterior))  # exact floats survive
    assert exclusion[0].equals(Polygon(DONUT.interiors[0]))
    # tumour minus exclusion restores the polygon with its hole
    restored = shapely.union_all(tumour).difference(shapely.union_all(exclusion))
    assert restored.symmetric_difference(shapely.union_all([SQUARE, DONUT])).area < 1e-6


def test_asap_camelyon_group_semantics(tmp_path: Path) -> None:
    body = "".join(
        [
            _annotation("_0", TRI),
            _annotation("_1", [(x + 200, y) for x, y in TRI]),
            _annotation("Tumor", [(x + 400, y) for x, y in TRI]),
            _annotation("metastasis", [(x + 600, y) for x, y in TRI]),
            _annotation("_2", [(x + 10, y + 5) for x, y in [(0, 0), (20, 0), (10, 10)]]),
            _annotation("Exclusion", [(x + 210, y + 5) for x, y in [(0, 0), (20, 0), (10, 10)]]),
            _annotation("_0", [(5.0, 5.0)], kind="Dot"),
            _annotation("_0", [(5.0, 5.0), (9.0, 9.0)]),  # degenerate: skipped
        ]
    )
    path = tmp_path / "camelyon.xml"
    path.write_text(_xml(body, '<Group Name="_0" PartOfGroup="None" Color="#FF0000" />'))
    tumour, exclusion = read_annotations(path)
    assert len(tumour) == 4 and len(exclusion) == 2
    assert sorted(round(p.centroid.x) for p in tumour) == [50, 250, 450, 650]
    assert all(p.area == pytest.approx(4000.0) for p in tumour)
    assert all(p.area == pytest.approx(100.0) for p in exclusion)


def test_asap_coordinate_order_and_self_intersection(tmp_path: Path) -> None:
    # coordinates listed out of order, and a bow-tie that must be repaired
    shuffled = (
        '<Annotation Name="a" Type="Polygon" PartOfGroup="_0"><Coordinates>'
        '<Coordinate Order="2" X="50" Y="80" /><Coordinate Order="0" X="0" Y="0" />'
        '<Coordinate Order="1" X="100" Y="0" /></Coordinates></Annotation>'
    )
    bowtie = _annotation("_1", [(0, 0), (10, 10), (10, 0), (0, 10)])
    path = tmp_path / "o.xml"
    path.write_text(_xml(shuffled + bowtie))
    tumour, _ = read_asap_xml(path)
    assert tumour[0].area == pytest.approx(4000.0)
    assert all(p.is_valid for p in tumour)
    assert len(tumour) == 3 and sum(p.area for p in tumour[1:]) == pytest.approx(50.0)


@pytest.mark.parametrize(
    "payload",
    [
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
        "<ASAP_Annotations>&lol2;</ASAP_Annotations>",
        '<?xml version="1.0"?>\n<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        '<ASAP_Annotations><Annotations><Annotation PartOfGroup="&xxe;" />'
        "</Annotations></ASAP_Annotations>",
        '<?xml version="1.0"?>\n<!DOCTYPE ASAP_Annotations SYSTEM "http://example.com/a.dtd">'
        "<ASAP_Annotations />",
    ],
)
def test_asap_rejects_doctype_and_entities(tmp_path: Path, payload: str) -> None:
    path = tmp_path / "evil.xml"
    path.write_text(payload)
    with pytest.raises(ConfigError, match="DOCTYPE or ENTITY") as info:
        read_asap_xml(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ("<ASAP_Annotations><Annotations>", "not well-formed"),
        ("not xml at all", "not well-formed"),
        (
            _xml(_annotation("_0", [(0, 0), (1, 0), (0, 1)]).replace('X="0"', 'X="abc"', 1)),
            "not a number",
        ),
    ],
)
def test_asap_bad_xml_is_config_error(tmp_path: Path, payload: str, match: str) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(payload)
    with pytest.raises(ConfigError, match=match) as info:
        read_asap_xml(path)
    assert str(path) in str(info.value)


def test_geojson_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "a.geojson"
    write_geojson_annotations(path, [SQUARE, MultiPolygon([DONUT, box(0, 0, 5, 5)])])
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 3
    props = doc["features"][0]["properties"]
    assert props["objectType"] == "annotation" and props["classification"]["name"] == "Tumor"
    tumour, exclusion = read_annotations(path)
    assert exclusion == []
    assert tumour[0].equals(SQUARE)
    assert tumour[1].equals(DONUT) and len(tumour[1].interiors) == 1
    assert tumour[2].equals(box(0, 0, 5, 5))
    # deterministic output
    other = tmp_path / "b.geojson"
    write_geojson_annotations(other, [SQUARE, MultiPolygon([DONUT, box(0, 0, 5, 5)])])
    assert other.read_bytes() == path.read_bytes()


def _feature(geom: Polygon | MultiPolygon, cls: object = None) -> dict:
    props: dict = {"objectType": "annotation"}
    if cls is not None:
        props["classification"] = cls
    return {"type": "Feature", "geometry": shapely.geometry.mapping(geom), "properties": props}


def test_geojson_qupath_list_and_classes(tmp_path: Path) -> None:
    feats = [
        _feature(box(0, 0, 10, 10), {"name": "Tumor", "colorRGB": -3670016}),
        _feature(box(20, 0, 30, 10), {"name": "tumour"}),
        _feature(box(40, 0, 50, 10)),  # unclassified -> tumour
        _feature(box(60, 0, 70, 10), {"name": "Exclusion"}),
        _feature(box(80, 0, 90, 10), "_2"),  # classification as a bare string
        _feature(box(100, 0, 110, 10), {"name": "Ignore*"}),
        _feature(MultiPolygon([box(200, 0, 210, 10), box(220, 0, 230, 10)]), {"name": "Tumor"}),
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}},
        {"type": "Feature", "geometry": None, "properties": {}},
    ]
    path = tmp_path / "qupath.json"
    path.write_text(json.dumps(feats))  # QuPath "export as list"
    tumour, exclusion = read_annotations(path)
    assert sorted(p.bounds[0] for p in tumour) == [0, 20, 40, 200, 220]
    assert sorted(p.bounds[0] for p in exclusion) == [60, 80, 100]
    # a single Feature and a bare geometry are accepted too
    single = tmp_path / "one.geojson"
    single.write_text(json.dumps(feats[0]))
    assert read_geojson_annotations(single)[0][0].equals(box(0, 0, 10, 10))
    bare = tmp_path / "bare.geojson"
    bare.write_text(json.dumps(shapely.geometry.mapping(box(1, 1, 2, 2))))
    assert read_geojson_annotations(bare)[0][0].equals(box(1, 1, 2, 2))


@pytest.mark.parametrize(
    ("name", "payload", "match"),
    [
        ("bad.geojson", "{not json", "not valid JSON"),
        ("bad2.geojson", '{"type": "Topology"}', "Topology"),
        (
            "bad3.json",
            '{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": 5}}',
            "invalid GeoJSON Polygon geometry",
        ),
        ("bad.txt", "x", "extension"),
    ],
)
def test_geojson_errors(tmp_path: Path, name: str, payload: str, match: str) -> None:
    path = tmp_path / name
    path.write_text(payload)
    with pytest.raises(ConfigError, match=match) as info:
        read_annotations(path)
    assert str(path) in str(info.value)


def test_missing_file_and_bad_geometry(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="annotation file not found"):
        read_annotations(tmp_path / "nope.xml")
    with pytest.raises(ConfigError, match="not a Polygon"):
        write_asap_xml(tmp_path / "x.xml", [shapely.Point(1, 2)])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="not finite"):
        write_geojson_annotations(tmp_path / "x.geojson", [box(0, 0, np.inf, 1)])


@st.composite
def star_polygons(draw: st.DrawFn) -> Polygon:
    n = draw(st.integers(3, 24))
    radii = draw(st.lists(st.floats(5.0, 500.0), min_size=n, max_size=n))
    cx = draw(st.floats(0.0, 1e5))
    cy = draw(st.floats(0.0, 1e5))
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return Polygon(np.column_stack([cx + np.cos(theta) * radii, cy + np.sin(theta) * radii]))


@settings(max_examples=40, deadline=None)
@given(polys=st.lists(star_polygons(), min_size=1, max_size=4))
def test_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory, polys: list[Polygon]
) -> None:
    d = tmp_path_factory.mktemp("prop")
    write_asap_xml(d / "p.xml", polys, group="_0")
    write_geojson_annotations(d / "p.geojson", polys)
    for path in (d / "p.xml", d / "p.geojson"):
        tumour, exclusion = read_annotations(path)
        assert exclusion == []
        assert len(tumour) == len(polys)
        for got, want in zip(tumour, polys, strict=True):
            assert _coords(got) == _coords(want)
