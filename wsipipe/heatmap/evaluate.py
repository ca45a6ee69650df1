"""Attention vs annotated tumour: annotations rasterised to tile level, and the metrics.

Per slide (N tiles with attention scores, the IPS/DBPS selection flags, and tumour /
exclusion polygons in level-0 px):

* ``tumour_fraction`` of each tile = area of (tile square ∩ (tumour \\ exclusion)) / tile area
  -- CAMELYON16 semantics: exclusion (group ``_2``) regions inside a tumour outline are not
  tumour; a tile is a *tumour tile* when its fraction >= ``threshold`` (default 0.5);
* ``auc``: tile-level ROC AUC of the attention score vs tumour tile (NaN when the slide has
  only one class);
* ``topk_in_tumour``: fraction of the k most attended tiles that are tumour tiles (at most
  n_tumour / k when a slide has fewer than k tumour tiles); ``topk_in_tumour_norm``: the same
  count divided by min(k, n_tumour) (1.0 = every tumour tile the top k could hold);
  ``topk_touching_tumour``: fraction of the top k that overlap the tumour at all;
  ``topk_min_in_tumour``: fraction of the top min(k, n_tumour) tiles that are tumour tiles
  (1.0 = the most attended tiles are exactly tumour, however few tumour tiles there are);
* ``tumour_selected``: fraction of the tumour tiles that are in the selected M (and
  ``tumour_selected_aux`` for M ∪ S with DBPS);
* ``selected_in_tumour``: fraction of the selected M that are tumour tiles.

Overall figures are the means over the slides where a metric is defined (macro average).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from wsipipe.errors import ConfigError
from wsipipe.geometry.polygons import tumour_fraction
from wsipipe.stats import roc_auc

__all__ = ["SlideEvaluation", "evaluate_slide", "summarise", "topk_fraction", "tumour_fraction"]


def topk_fraction(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of the k highest-scoring tiles (stable for ties) whose label is True."""
    y = np.asarray(labels, dtype=bool).reshape(-1)
    if len(y) == 0 or k < 1:
        return math.nan
    top = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    return float(y[top].mean())


def _frac(num: int, den: int) -> float:
    return float(num) / den if den else math.nan


@dataclass(frozen=True)
class SlideEvaluation:
    """Evaluation of one slide's attention against its annotations (see the module doc)."""

    slide_id: str
    n_tiles: int
    n_tumour_tiles: int
    k: int
    auc: float
    topk_in_tumour: float
    topk_in_tumour_norm: float
    topk_touching_tumour: float
    # the top min(k, tumour tiles) tiles inside tumour: 1.0 = the attention's top tiles are
    # exactly tumour, whatever the number of tumour tiles
    topk_min_in_tumour: float
    tumour_selected: float
    tumour_selected_aux: float
    selected_in_tumour: float

    def to_row(self) -> dict[str, object]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def evaluate_slide(
    slide_id: str,
    scores: np.ndarray,
    tumour_fraction: np.ndarray,
    selected: np.ndarray,
    aux: np.ndarray | None = None,
    k: int = 10,
    threshold: float = 0.5,
) -> SlideEvaluation:
    """Metrics of one slide. scores (N,); tumour_fraction (N,) in [0, 1] (a tile is tumour
    when >= ``threshold``); selected / aux (N,) bool (the M and the DBPS S buffers)."""
    if k < 1:
        raise ConfigError(f"heatmap: top_k = {k} must be >= 1")
    frac = np.asarray(tumour_fraction, dtype=np.float64).reshape(-1)
    y = frac >= threshold
    sel = np.asarray(selected, dtype=bool).reshape(-1)
    both = sel if aux is None else sel | np.asarray(aux, dtype=bool).reshape(-1)
    n_t = int(y.sum())
    kk = min(k, len(y))
    hits = topk_fraction(scores, y, kk) * kk if n_t else math.nan
    return SlideEvaluation(
        slide_id=slide_id,
        n_tiles=len(y),
        n_tumour_tiles=n_t,
        k=kk,
        auc=roc_auc(y, scores),
        topk_in_tumour=hits / kk if n_t else math.nan,
        topk_in_tumour_norm=hits / min(kk, n_t) if n_t else math.nan,
        topk_touching_tumour=topk_fraction(scores, frac > 0, kk) if n_t else math.nan,
        topk_min_in_tumour=topk_fraction(scores, y, min(kk, n_t)) if n_t else math.nan,
        tumour_selected=_frac(int((y & sel).sum()), n_t),
        tumour_selected_aux=_frac(int((y & both).sum()), n_t),
        selected_in_tumour=_frac(int((y & sel).sum()), int(sel.sum())) if n_t else math.nan,
    )


METRICS = (
    "auc",
    "topk_in_tumour",
    "topk_in_tumour_norm",
    "topk_touching_tumour",
    "topk_min_in_tumour",
    "tumour_selected",
    "tumour_selected_aux",
    "selected_in_tumour",
)


def summarise(evals: Sequence[SlideEvaluation]) -> dict[str, float | int]:
    """Macro means over the slides where each metric is defined, with their counts."""
    out: dict[str, float | int] = {"n_slides": len(evals)}
    for name in METRICS:
        vals = [getattr(e, name) for e in evals if not math.isnan(getattr(e, name))]
        out[name] = float(np.mean(vals)) if vals else math.nan
        out[f"n_{name}"] = len(vals)
    return out
