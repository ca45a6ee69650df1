"""Tile GeoJSON: valid FeatureCollection, polygons coincide with the tiles, QuPath fields."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import shapely
from shapely.geometry import box

from wsipipe.heatmap.geojson import _num, read_tiles_geojson, write_tiles_geojson


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
    assert np.allclose(meas["attention"], scores, rtol=6e-8, atol=0)  # 8 significant digits
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


def _reference_geojson(coords, size, measurements, colors, object_type, classification):
    """Reference: the feature-by-feature writer (each value on its own; floats to 8
    significant digits, as the scores CSV)."""
    xy = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    names = [json.dumps(str(name)) for name in measurements]
    cls = f', "classification": {{"name": {json.dumps(classification)}}}' if classification else ""

    def text(v):
        if isinstance(v, (bool, np.bool_)):
            return "1" if v else "0"
        if isinstance(v, (int, np.integer)):
            return str(int(v))
        f = float(v)
        return f"{f:.8g}" if np.isfinite(f) else "null"

    out = ['{"type": "FeatureCollection", "features": [\n']
    for i in range(len(xy)):
        xa, ya = str(xy[i, 0]), str(xy[i, 1])
        xb, yb = _num(xy[i, 0] + float(size)), _num(xy[i, 1] + float(size))
        ring = f"[[{xa}, {ya}], [{xb}, {ya}], [{xb}, {yb}], [{xa}, {yb}], [{xa}, {ya}]]"
        meas = ", ".join(
            f'{{"name": {nm}, "value": {text(v[i])}}}'
            for nm, v in zip(names, measurements.values(), strict=True)
        )
        colour = "" if colors is None else ', "color": [{}, {}, {}]'.format(*colors[i].tolist())
        out.append(
            f'{"," if i else ""}{{"type": "Feature", "geometry": {{"type": "Polygon", '
            f'"coordinates": [{ring}]}}, "properties": {{"objectType": {json.dumps(object_type)}, '
            f'"name": "tile {i}"{colour}{cls}, "measurements": [{meas}]}}}}\n'
        )
    return "".join(out) + "]}\n"


@pytest.mark.parametrize("size", [512, 300.5])
def test_text_equals_the_feature_by_feature_reference(monkeypatch, size):
    import wsipipe.heatmap.geojson as gj

    monkeypatch.setattr(gj, "_CHUNK", 7)  # several chunks, one partial
    rng = np.random.default_rng(7)
    n = 30
    coords = rng.integers(-1000, 90_000, (n, 2))
    attention = rng.random(n) / n
    attention[[3, 8, 9]] = [np.nan, np.inf, -np.inf]
    meas = {
        "attention": attention,
        "attention_norm": rng.random(n).astype(np.float32),
        "rank": rng.permutation(n) + 1,
        "selected": rng.random(n) < 0.3,
        'odd "name" {with} %s %d': rng.integers(0, 2, n).astype(np.int64),
        "tumour_fraction": np.where(rng.random(n) < 0.5, 1.0, rng.random(n)),
    }
    colours = rng.integers(0, 256, (n, 3))
    for cols, cls, otype in ((colours, "Heat {%s}", "tile"), (None, None, "detection")):
        buf = io.StringIO()
        write_tiles_geojson(buf, coords, size, meas, cols, otype, cls)
        assert buf.getvalue() == _reference_geojson(coords, size, meas, cols, otype, cls)
        doc = json.loads(buf.getvalue())
        assert len(doc["features"]) == n
        m = doc["features"][4]["properties"]["measurements"]
        assert m[0]["value"] == float(f"{attention[4]:.8g}")
        assert m[4]["name"] == 'odd "name" {with} %s %d'
