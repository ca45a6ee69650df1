"""Masks <-> level-0 polygons, and GeoJSON that QuPath reads and writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box

from wsipipe.errors import ConfigError
from wsipipe.geometry import (
    mask_to_polygons,
    polygons_to_mask,
    read_tissue_geojson,
    tissue_geojson,
    write_geojson,
)
from wsipipe.geometry.geojson import TISSUE_COLOR


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def scene_mask() -> np.ndarray:
    """A section with a hole, an island inside the hole, a blob and a diagonal pair."""
    m = np.zeros((120, 160), dtype=bool)
    yy, xx = np.mgrid[0:120, 0:160]
    m |= ((xx - 60) / 45.0) ** 2 + ((yy - 60) / 40.0) ** 2 <= 1
    m &= ~(((xx - 60) ** 2 + (yy - 60) ** 2) <= 18**2)  # hole
    m |= ((xx - 60) ** 2 + (yy - 60) ** 2) <= 6**2  # island in the hole
    m[20:50, 120:150] = True  # square blob
    m[100, 130] = m[101, 131] = True  # two pixels touching diagonally
    return m


@pytest.mark.parametrize("scale", [1.0, 16.0, 7.3])
def test_mask_polygons_mask_round_trip(scale: float) -> None:
    m = scene_mask()
    exact = mask_to_polygons(m, scale, simplify_px=0.0)
    np.testing.assert_array_equal(polygons_to_mask(exact, m.shape, scale), m)
    simple = mask_to_polygons(m, scale)  # default 1 px simplification
    assert all(p.is_valid for p in simple)
    assert iou(polygons_to_mask(simple, m.shape, scale), m) > 0.95


def test_polygons_are_level0_with_holes_and_islands() -> None:
    m = scene_mask()
    polys = mask_to_polygons(m, 4.0, simplify_px=0.0)
    assert all(isinstance(p, Polygon) and p.is_valid for p in polys)
    assert polys[0].area >= polys[-1].area  # largest first
    section = polys[0]
    assert len(section.interiors) == 1  # the hole ...
    island = [p for p in polys if p.within(Polygon(section.interiors[0]))]
    assert len(island) == 1  # ... and the island in it, as its own polygon
    # Areas follow the pixel counts (corners cut by marching squares lose < 2%).
    total = sum(p.area for p in polys) / 4.0**2
    assert total == pytest.approx(m.sum(), rel=0.02)


def test_square_bounds_are_pixel_edges_times_scale() -> None:
    m = np.zeros((40, 50), dtype=bool)
    m[10:20, 20:30] = True  # rows 10..19, cols 20..29
    (poly,) = mask_to_polygons(m, 4.0, simplify_px=0.0)
    assert poly.bounds == pytest.approx((80.0, 40.0, 120.0, 80.0))
    assert poly.area == pytest.approx((100 - 4 * 0.125) * 16)  # four corners cut by 1/8 px


def test_mask_touching_the_border_and_empty_mask() -> None:
    assert mask_to_polygons(np.zeros((10, 10), dtype=bool), 2.0) == []
    full = np.ones((10, 12), dtype=bool)
    (poly,) = mask_to_polygons(full, 2.0, simplify_px=0.0)
    np.testing.assert_array_equal(polygons_to_mask([poly], full.shape, 2.0), full)


def test_polygons_to_mask_even_odd_and_pixel_centres() -> None:
    ring = Polygon([(0, 0), (80, 0), (80, 80), (0, 80)], [[(20, 20), (60, 20), (60, 60), (20, 60)]])
    m = polygons_to_mask([ring], (12, 12), 8.0)  # 8 level-0 px per mask px
    # Pixel (r, c) centre is ((c + .5) * 8, (r + .5) * 8): inside [0, 80) except the hole.
    assert m[0, 0] and m[9, 9] and not m[10, 10] and not m[0, 10]
    # the hole [20, 60) holds the pixel centres 20..52: rows/cols 2..6 (a centre on the edge
    # belongs to the side after it, so neighbouring polygons never share a pixel)
    assert not m[2, 2] and not m[6, 6] and not m[2, 5] and m[1, 5] and m[7, 5]
    assert m.sum() == 100 - 25  # 10x10 pixels minus the 5x5 hole


def test_polygons_to_mask_unions_and_accepts_multipolygons() -> None:
    a, b = box(0, 0, 40, 40), box(20, 20, 60, 60)
    m1 = polygons_to_mask([a, b], (10, 10), 10.0)
    m2 = polygons_to_mask([MultiPolygon([a, box(70, 0, 90, 20)])], (10, 10), 10.0)
    assert m1.sum() == 16 + 16 - 4  # overlap counted once
    assert m2.sum() == 16 + 4
    assert polygons_to_mask([LineString([(0, 0), (50, 50)])], (10, 10), 10.0).sum() == 0


def test_polygons_outside_the_mask_are_clipped() -> None:
    m = polygons_to_mask([box(-100, -100, 25, 1000)], (8, 8), 10.0)
    assert m[:, :2].all() and not m[:, 3:].any()  # col 2 centre at 25: boundary, outside


def test_tissue_geojson_is_what_qupath_imports() -> None:
    polys = mask_to_polygons(scene_mask(), 8.0)
    gj = tissue_geojson(polys)
    assert gj["type"] == "FeatureCollection"
    assert len(gj["features"]) == len(polys)
    for f in gj["features"]:
        assert f["type"] == "Feature"
        assert f["geometry"]["type"] == "Polygon"
        assert f["properties"] == {
            "objectType": "annotation",
            "classification": {"name": "Tissue", "color": list(TISSUE_COLOR)},
        }
    json.dumps(gj)  # plain JSON types only
    named = tissue_geojson(polys[:1], name="Tumor", color=(200, 0, 0))
    assert named["features"][0]["properties"]["classification"] == {
        "name": "Tumor",
        "color": [200, 0, 0],
    }


def test_geojson_round_trip(tmp_path: Path) -> None:
    polys = mask_to_polygons(scene_mask(), 8.0)
    path = tmp_path / "sub" / "slide.geojson"
    write_geojson(path, tissue_geojson(polys))
    back = read_tissue_geojson(path)
    assert len(back) == len(polys)
    for p, q in zip(polys, back, strict=True):
        assert len(q.interiors) == len(p.interiors)
        assert p.symmetric_difference(q).area < 1e-3 * p.area + 1.0  # coords rounded to 0.01
    assert [f.name for f in path.parent.iterdir()] == ["slide.geojson"]  # no temp file left
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # normal permissions, not mkstemp's


def test_write_geojson_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "t.geojson"
    path.write_text("old")
    write_geojson(path, tissue_geojson([box(0, 0, 10, 10)]))
    assert json.loads(path.read_text())["type"] == "FeatureCollection"


def qupath_feature(geom: dict, name: str = "Tissue") -> dict:
    return {
        "type": "Feature",
        "id": "4b5c5f2e-0000-4000-8000-000000000000",
        "geometry": geom,
        "properties": {"objectType": "annotation", "classification": {"name": name}},
    }


def test_qupath_list_of_features(tmp_path: Path) -> None:
    features = [
        qupath_feature(shapely.geometry.mapping(box(0, 0, 100, 50))),
        qupath_feature(
            shapely.geometry.mapping(MultiPolygon([box(200, 0, 220, 20), box(300, 0, 310, 10)]))
        ),
        qupath_feature(shapely.geometry.mapping(LineString([(0, 0), (5, 5)]))),
        qupath_feature(shapely.geometry.mapping(Point(3, 3))),
        {"type": "Feature", "geometry": None, "properties": {}},
    ]
    path = tmp_path / "qupath.json"
    path.write_text(json.dumps(features))
    geoms = read_tissue_geojson(path)
    assert [g.geom_type for g in geoms] == ["Polygon", "MultiPolygon"]
    assert geoms[0].area == pytest.approx(5000) and geoms[1].area == pytest.approx(500)


def test_single_feature_bare_geometry_and_collection(tmp_path: Path) -> None:
    sq = shapely.geometry.mapping(box(0, 0, 10, 10))
    cases = {
        "feature.geojson": qupath_feature(sq),
        "bare.geojson": sq,
        "collection.geojson": {
            "type": "GeometryCollection",
            "geometries": [sq, shapely.geometry.mapping(Point(1, 1))],
        },
    }
    for name, obj in cases.items():
        (tmp_path / name).write_text(json.dumps(obj))
        (g,) = read_tissue_geojson(tmp_path / name)
        assert g.area == pytest.approx(100), name


def test_invalid_polygon_is_made_valid(tmp_path: Path) -> None:
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}
    path = tmp_path / "bowtie.geojson"
    path.write_text(json.dumps(bowtie))
    (g,) = read_tissue_geojson(path)
    assert g.is_valid and g.area == pytest.approx(50)


def test_bad_json_raises_config_error_with_file_name(tmp_path: Path) -> None:
    path = tmp_path / "broken.geojson"
    path.write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(ConfigError, match=r"broken\.geojson: not valid JSON"):
        read_tissue_geojson(path)


def test_no_polygon_raises_config_error(tmp_path: Path) -> None:
    path = tmp_path / "points.geojson"
    path.write_text(json.dumps(qupath_feature(shapely.geometry.mapping(Point(1, 2)))))
    with pytest.raises(ConfigError, match=r"points\.geojson: no Polygon"):
        read_tissue_geojson(path)
    with pytest.raises(ConfigError, match=r"missing\.geojson: tissue GeoJSON not found"):
        read_tissue_geojson(tmp_path / "missing.geojson")


def test_malformed_coordinates_raise_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [[["a", "b"]]]}))
    with pytest.raises(ConfigError, match=r"bad\.geojson: invalid GeoJSON Polygon geometry"):
        read_tissue_geojson(path)
