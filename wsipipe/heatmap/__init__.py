"""``wsipipe heatmap``: a trained model's attention mapped back onto slide coordinates.

Pure parts (numpy in, numpy out): :mod:`~wsipipe.heatmap.render` (normalisation, colour
maps, tile splatting, overlay, colour bar, gallery), :mod:`~wsipipe.heatmap.pyramid` (tiled
pyramidal TIFF with mpp), :mod:`~wsipipe.heatmap.geojson` (QuPath tile squares),
:mod:`~wsipipe.heatmap.evaluate` (annotations -> tile labels -> metrics),
:mod:`~wsipipe.heatmap.scores` (score tables). Orchestration: :mod:`~wsipipe.heatmap.scoring`
(one streaming pass per slide) and :mod:`~wsipipe.heatmap.run` (the batch command).
"""

from wsipipe.heatmap.config import HeatmapConfig
from wsipipe.heatmap.evaluate import (
    SlideEvaluation,
    evaluate_slide,
    summarise,
    topk_fraction,
    tumour_fraction,
)
from wsipipe.heatmap.figures import colour_bar, gallery
from wsipipe.heatmap.geojson import read_tiles_geojson, write_tiles_geojson
from wsipipe.heatmap.pyramid import PyramidGeometry, write_heatmap_tiff
from wsipipe.heatmap.render import (
    blend_overlay,
    colormap_lut,
    normalise_scores,
    score_ranks,
    splat_mean,
    tile_spans,
)
from wsipipe.heatmap.scores import ScoreTable, read_scores, write_scores, write_scores_csv

__all__ = [
    "HeatmapConfig",
    "PyramidGeometry",
    "ScoreTable",
    "SlideEvaluation",
    "blend_overlay",
    "colormap_lut",
    "colour_bar",
    "evaluate_slide",
    "gallery",
    "normalise_scores",
    "read_scores",
    "read_tiles_geojson",
    "score_ranks",
    "splat_mean",
    "summarise",
    "tile_spans",
    "topk_fraction",
    "tumour_fraction",
    "write_heatmap_tiff",
    "write_scores",
    "write_scores_csv",
    "write_tiles_geojson",
]
