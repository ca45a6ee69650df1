"""Annotation rasterisation to tile level and the attention-vs-tumour metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from shapely.geometry import Polygon, box

from wsipipe.errors import ConfigError
from wsipipe.heatmap.evaluate import (
    evaluate_slide,
    summarise,
    topk_fraction,
    tumour_fraction,
)


def _grid(n: int, step: int) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(n) * step, np.arange(n) * step)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def test_tumour_fraction_with_exclusion_holes():
    coords = _grid(4, 100)  # 16 tiles of 100 px
    tumour = [box(100, 100, 300, 300), box(0, 350, 50, 400)]  # 4 full tiles + a quarter tile
    exclusion = [box(200, 200, 300, 250)]  # half of tile (2, 2) is excluded
    frac = tumour_fraction(coords, 100, tumour, exclusion)
    grid = frac.reshape(4, 4)  # [row y, col x]
    assert grid[1, 1] == 1.0 and grid[1, 2] == 1.0 and grid[2, 1] == 1.0
    assert grid[2, 2] == pytest.approx(0.5)
    assert grid[3, 0] == pytest.approx(0.25)
    assert grid[0].tolist() == [0, 0, 0, 0] and grid[:, 3].tolist() == [0, 0, 0, 0]
    assert tumour_fraction(coords, 100, []).tolist() == [0.0] * 16
    tri = Polygon([(0, 0), (100, 0), (0, 100)])
    assert tumour_fraction(coords[:1], 100, [tri])[0] == pytest.approx(0.5)


def test_topk_and_slide_evaluation_values():
    scores = np.array([0.5, 0.1, 0.3, 0.05, 0.05])
    frac = np.array([1.0, 0.2, 0.6, 0.5, 0.0])  # tumour tiles (>= 0.5): 0, 2, 3
    tumour = frac >= 0.5
    selected = np.array([True, False, True, False, False])
    aux = np.array([False, True, False, True, False])
    assert topk_fraction(scores, tumour, 2) == 1.0
    assert topk_fraction(scores, tumour, 3) == pytest.approx(2 / 3)
    ev = evaluate_slide("s1", scores, frac, selected, aux, k=2)
    assert ev.n_tiles == 5 and ev.n_tumour_tiles == 3 and ev.k == 2
    assert ev.topk_in_tumour == 1.0 and ev.topk_in_tumour_norm == 1.0
    assert ev.tumour_selected == pytest.approx(2 / 3)
    assert ev.tumour_selected_aux == 1.0
    assert ev.selected_in_tumour == 1.0
    # tumour scores 0.5, 0.3, 0.05 vs normal 0.1, 0.05: pairs won 2 + 2 + 0.5 of 6
    assert ev.auc == pytest.approx(4.5 / 6)
    row = ev.to_row()
    assert row["slide_id"] == "s1" and row["auc"] == round(4.5 / 6, 6)
    # top 4 = tiles 0, 2, 1, 3: 3 tumour tiles of 4; normalised by min(k, 3); tile 1 touches
    ev4 = evaluate_slide("s1", scores, frac, selected, aux, k=4)
    assert ev4.topk_in_tumour == 0.75 and ev4.topk_in_tumour_norm == 1.0
    assert ev4.topk_touching_tumour == 1.0
    # a higher threshold makes tile 3 (fraction 0.5) normal
    ev_t = evaluate_slide("s1", scores, frac, selected, aux, k=4, threshold=0.55)
    assert ev_t.n_tumour_tiles == 2 and ev_t.topk_in_tumour == 0.5
    neg = evaluate_slide("s2", scores, np.zeros(5), selected, None, k=2)
    assert math.isnan(neg.auc) and math.isnan(neg.topk_in_tumour)
    assert math.isnan(neg.tumour_selected) and math.isnan(neg.topk_touching_tumour)
    with pytest.raises(ConfigError, match="top_k"):
        evaluate_slide("s3", scores, frac, selected, k=0)
    overall = summarise([ev, neg])
    assert overall["n_slides"] == 2 and overall["n_auc"] == 1
    assert overall["auc"] == pytest.approx(4.5 / 6)
    assert overall["topk_in_tumour"] == 1.0
