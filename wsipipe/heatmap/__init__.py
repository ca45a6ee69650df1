"""``wsipipe heatmap``: a trained model's attention mapped back onto slide coordinates.

Pure parts (numpy in, numpy out): :mod:`~wsipipe.heatmap.render` (normalisation, colour
maps, tile splatting, overlay, colour bar, gallery), :mod:`~wsipipe.heatmap.pyramid` (tiled
pyramidal TIFF with mpp), :mod:`~wsipipe.heatmap.geojson` (QuPath tile squares),
:mod:`~wsipipe.heatmap.evaluate` (annotations -> tile labels -> metrics),
:mod:`~wsipipe.heatmap.scores` (score tables). Orchestration: one streaming pass per slide
(``attention_pass`` of :mod:`wsipipe.train.inference`)
(one streaming pass per slide) and :mod:`~wsipipe.heatmap.run` (the batch command).
"""

from __future__ import annotations

from wsipipe.lazy import lazy_exports

# name -> module; imported on first use (the CLI imports this package at start-up)
_EXPORTS = {
    "HeatmapConfig": "wsipipe.heatmap.config",
    "PyramidGeometry": "wsipipe.heatmap.pyramid",
    "ScoreTable": "wsipipe.heatmap.scores",
    "SlideEvaluation": "wsipipe.heatmap.evaluate",
    "blend_overlay": "wsipipe.heatmap.render",
    "colormap_lut": "wsipipe.heatmap.render",
    "colour_bar": "wsipipe.heatmap.figures",
    "evaluate_slide": "wsipipe.heatmap.evaluate",
    "gallery": "wsipipe.heatmap.figures",
    "normalise_scores": "wsipipe.heatmap.render",
    "read_scores": "wsipipe.heatmap.scores",
    "read_tiles_geojson": "wsipipe.heatmap.geojson",
    "score_ranks": "wsipipe.heatmap.render",
    "splat_mean": "wsipipe.heatmap.render",
    "summarise": "wsipipe.heatmap.evaluate",
    "tile_spans": "wsipipe.heatmap.render",
    "topk_fraction": "wsipipe.heatmap.evaluate",
    "tumour_fraction": "wsipipe.heatmap.evaluate",
    "write_heatmap_tiff": "wsipipe.heatmap.pyramid",
    "write_scores": "wsipipe.heatmap.scores",
    "write_scores_csv": "wsipipe.heatmap.scores",
    "write_tiles_geojson": "wsipipe.heatmap.geojson",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
