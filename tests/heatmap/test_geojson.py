"""Tile GeoJSON: valid FeatureCollection, polygons coincide with the tiles, QuPath fields."""

from __future__ import annotations

import io
import json

import numpy as np
import shapely
from shapely.geometry import box

from wsipipe.heatmap.geojson import read_tiles_geojson, write_tiles_geojson


def test_polygons_coincide_with_tiles_and_carry_measurements(tmp_path):
    rng = np.random.default_rng(3)
    coords = rng.integers(0, 50_000, size=(57, 2))
    scores = rng.random(57) / 57
    ranks = np.argsort(np.argsort(-scores)) + 1
    colours = rng.integers(0, 256, size=(57, 3))
    path = tmp_path / "tiles.geojson"
    write_tiles_geojson(
        path, coords, 512, {"attention": scores, "rank": ranks}, colors=colours,
        classification="Heatmap",
    )  # fmt: skip
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 57
    polys, meas = read_tiles_geojson(path)
    for (x, y), poly in zip(coords, polys, strict=True):
        assert poly.is_valid and shapely.equals(poly, box(x, y, x + 512, y + 512))
        assert poly.area == 512 * 512
        assert poly.exterior.is_ccw  # right-hand rule in (x, y) coordinates
    assert np.allclose(meas["attention"], scores, rtol=1e-12)
    assert meas["rank"].tolist() == ranks.tolist()
    f = doc["features"][5]
    props = f["properties"]
    assert props["objectType"] == "tile" and props["name"] == "tile 5"
    assert props["color"] == colours[5].tolist()
    assert props["classification"] == {"name": "Heatmap"}
    ring = f["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 5
    assert {m["name"] for m in props["measurements"]} == {"attention", "rank"}


def test_non_finite_values_become_null_and_empty_collection_is_valid():
    buf = io.StringIO()
    write_tiles_geojson(buf, np.array([[0, 0], [10, 0]]), 10, {"a": np.array([np.nan, 1.5])})
    doc = json.loads(buf.getvalue())
    assert [f["properties"]["measurements"][0]["value"] for f in doc["features"]] == [None, 1.5]
    assert "color" not in doc["features"][0]["properties"]
    empty = io.StringIO()
    write_tiles_geojson(empty, np.zeros((0, 2)), 10, {})
    assert json.loads(empty.getvalue()) == {"type": "FeatureCollection", "features": []}
