"""Writing one slide's heatmap outputs from its O(N) per-tile results (files in a folder).

Inputs are the per-tile arrays (coords, scores, flags), the store metadata and the slide
(for the thumbnail, its size and mpp); outputs are built in a temporary folder and returned
as {relative output path: file} for :mod:`wsipipe.jobs` to publish atomically:

    overlay/<id>.png        thumbnail + colour map over tissue, colour bar, top-k outlined
    gallery/<id>.png        the top-k tiles with rank and score
    pyramid/<id>.tif        tiled pyramidal heatmap TIFF with mpp (OpenSlide, QuPath, ASAP)
    geojson/<id>.geojson    tile squares with the scores as QuPath measurements
    scores/<id>.csv         the per-tile table; scores/<id>.h5|.zarr the same arrays
    predictions/<id>.json   slide prediction, buffer sizes, checkpoint
    evaluation/<id>.json    attention vs annotated tumour (with --annotations)

:func:`write_tables` then gathers the per-slide JSONs of a run into ``predictions.csv``,
``evaluation.csv`` (with an ``overall`` row) and ``evaluation_summary.json``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsipipe.fileio import atomic_write_text
from wsipipe.heatmap.config import HeatmapConfig
from wsipipe.heatmap.evaluate import METRICS, summarise
from wsipipe.heatmap.figures import colour_bar, draw_outlines, gallery, with_colour_bar
from wsipipe.heatmap.geojson import write_tiles_geojson
from wsipipe.heatmap.grid import find_lattice
from wsipipe.heatmap.png import write_png
from wsipipe.heatmap.pyramid import PyramidGeometry, write_heatmap_tiff
from wsipipe.heatmap.render import (
    blend_overlay,
    colormap_lut,
    tile_spans,
    top_k,
)
from wsipipe.heatmap.scores import ScoreTable, write_scores, write_scores_csv

if TYPE_CHECKING:
    from wsipipe.store import StoreMeta


@dataclass(frozen=True)
class SlideCanvas:
    """What the renderers need from the slide: size, mpp and a thumbnail.

    thumb (h, w, 3) uint8 at ``thumb_ds`` level-0 px per px; tissue (h, w) bool or None;
    ``source`` says where the thumbnail came from ("slide" or "blank: <why>").
    """

    width: int
    height: int
    mpp: float
    thumb: np.ndarray
    thumb_ds: float
    tissue: np.ndarray | None
    source: str


def overlay_mpp(cfg: HeatmapConfig, width: int, height: int, mpp: float) -> float:
    """The overlay resolution (um/px): ``overlay_mpp``, refined when the slide's longest side
    would be under ``overlay_min_px`` px, coarsened when over ``overlay_max_px``, never
    finer than the slide."""
    longest_um = max(width, height) * mpp
    target = min(cfg.overlay_mpp, longest_um / cfg.overlay_min_px)
    return max(target, longest_um / cfg.overlay_max_px, mpp)


def load_canvas(
    meta: StoreMeta,
    store_path: Path,
    mpp: float,
    coords: np.ndarray,
    size_level0: int,
    cfg: HeatmapConfig,
    tissue_geojson: Path | None,
) -> SlideCanvas:
    """Thumbnail of the store's slide at the overlay resolution (a white canvas if the slide
    is gone, or changed since it was tiled: its pixels would not be the tiles')."""
    from wsipipe.errors import SlideError, StoreError
    from wsipipe.slide import open_slide
    from wsipipe.store import check_slide_unchanged

    try:
        check_slide_unchanged(meta, store_path)
        with open_slide(meta.slide_path, reader=meta.reader, mpp=mpp) as slide:
            w, h = slide.info.width, slide.info.height
            thumb, ds = slide.thumbnail(overlay_mpp(cfg, w, h, mpp))
        source = "slide"
    except (SlideError, StoreError, FileNotFoundError) as exc:
        # the store still has everything the heatmap needs; only the backdrop is missing
        w = int(coords[:, 0].max()) + size_level0 if len(coords) else size_level0
        h = int(coords[:, 1].max()) + size_level0 if len(coords) else size_level0
        ds = overlay_mpp(cfg, w, h, mpp) / mpp
        thumb = np.full((max(1, math.ceil(h / ds)), max(1, math.ceil(w / ds)), 3), 255, np.uint8)
        source = f"blank: {' '.join(str(exc).split())[:160]}"
    tissue = None
    if tissue_geojson is not None and tissue_geojson.exists():
        from wsipipe.geometry import polygons_to_mask, read_tissue_geojson

        polys = read_tissue_geojson(tissue_geojson)
        tissue = polygons_to_mask(polys, thumb.shape[:2], ds)
    return SlideCanvas(w, h, mpp, thumb, float(ds), tissue, source)


def _ticks(table: ScoreTable, cfg: HeatmapConfig) -> list[tuple[float, str]]:
    n = len(table)
    if cfg.normalise == "rank":
        return [(1.0, "rank 1"), (0.5, f"rank {max(1, n // 2)}"), (0.0, f"rank {n}")]
    s = table.score
    if cfg.normalise == "percentile":
        lo, hi = np.percentile(s, [cfg.percentile_low, cfg.percentile_high])
        return [
            (1.0, f"p{cfg.percentile_high:g} {hi:.2e}"),
            (0.0, f"p{cfg.percentile_low:g} {lo:.2e}"),
        ]
    return [(1.0, f"max {s.max():.2e}"), (0.0, f"min {s.min():.2e}")]


def render_overlay(
    canvas: SlideCanvas,
    table: ScoreTable,
    size_level0: int,
    cfg: HeatmapConfig,
    pitch: int | None = None,
) -> np.ndarray:
    """The overlay image (thumbnail + colour map + top-k outlines + colour bar); ``pitch``:
    the tiling's stride (level-0 px) when the store records it."""
    lut = colormap_lut(cfg.colormap)
    ds = canvas.thumb_ds
    spans = tile_spans(table.coords, size_level0, ds)
    sigma = cfg.smooth_um / (canvas.mpp * ds) if cfg.smooth_um > 0 else 0.0
    grid = None
    if sigma <= 0 and (lattice := find_lattice(table.coords, size_level0, pitch)) is not None:
        grid = lattice.image(ds, canvas.thumb.shape[1], canvas.thumb.shape[0])
    img = blend_overlay(
        canvas.thumb, spans, table.score_norm, lut, cfg.alpha, sigma, canvas.tissue, grid=grid
    )
    top = top_k(table.score, cfg.top_k)
    tile_px = size_level0 / ds
    width = max(1, round(tile_px / 10))
    labels = [str(r + 1) for r in range(len(top))] if tile_px >= 14 else None
    img = draw_outlines(img, spans[top], (0, 0, 0), width, labels)
    bar = colour_bar(min(max(img.shape[0], 120), 400), lut, _ticks(table, cfg))
    return with_colour_bar(img, bar)


def read_top_tiles(
    store: Any, slide_path: str, reader: str, mpp: float, idx: np.ndarray
) -> np.ndarray:
    """(k, px, px, 3) uint8 pixels of store tiles ``idx`` (from the slide if coords-only;
    StoreError if it changed since it was tiled)."""
    meta = store.meta
    if meta.pixels != "none":
        order = np.argsort(idx)
        tiles = store.read_tiles(idx[order])
        out = np.empty_like(tiles)
        out[order] = tiles
        return out
    from wsipipe.slide import open_slide
    from wsipipe.slide.dctscale import stored_resample
    from wsipipe.store import check_slide_unchanged

    check_slide_unchanged(meta, store.path, slide_path)
    coords = store.coords
    with open_slide(slide_path, reader=reader, mpp=mpp) as slide:
        resample = stored_resample(meta.config)  # the pixels the store was tiled with
        tr = slide.tile_reader(meta.target_mpp, meta.tile_px, resample=resample)
        return np.stack([tr.read(int(coords[i, 0]), int(coords[i, 1])) for i in idx])


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def write_slide_outputs(
    tmp: Path,
    slide_id: str,
    table: ScoreTable,
    canvas: SlideCanvas,
    store: Any,
    store_suffix: str,
    prediction: dict[str, Any],
    evaluation: dict[str, Any] | None,
    cfg: HeatmapConfig,
) -> dict[str, Path]:
    """Write every output of one slide into ``tmp``; return {relative path: file}.

    The independent writers (pyramid, overlay, gallery, then GeoJSON, CSV) run on up to
    ``cfg.threads`` threads, at most one per CPU (numpy and zlib release the GIL); the tables
    that record the prediction are written last.
    """
    meta = store.meta
    size = int(meta.tile_size_level0)
    pitch = meta.stride_level0  # None for stores written before it was recorded
    mpp = canvas.mpp
    lut = colormap_lut(cfg.colormap)
    outputs: dict[str, Path] = {}
    notes: dict[str, Any] = {}

    # Two phases, each writer of a phase on its own thread (at most one per CPU): first the
    # writers whose work is long numpy / zlib calls that release the GIL, then the two
    # pure-Python text writers. A text writer holds the GIL almost all the time, so a writer
    # that needs it back after every TIFF tile (the pyramid) would stall beside it.
    phases = [
        (["pyramid"] if cfg.pyramid else []) + ["overlay", "gallery"],
        (["geojson"] if cfg.geojson else []) + ["csv"],
    ]
    cpus = available_cpus()
    workers = min(cfg.threads, max(len(p) for p in phases), cpus)
    tiff_threads = max(1, min(4, cfg.threads, cpus - workers + 1))

    def out(rel: str) -> Path:
        path = tmp / rel.replace("/", "__")
        outputs[rel] = path
        return path

    def overlay() -> None:
        write_png(out(f"overlay/{slide_id}.png"), render_overlay(canvas, table, size, cfg, pitch))

    def top_gallery() -> None:
        top = top_k(table.score, cfg.top_k)
        try:
            tiles = read_top_tiles(store, meta.slide_path, meta.reader, mpp, top)
        except Exception as exc:  # the gallery is a convenience: never fail a slide for it
            notes["gallery_error"] = " ".join(str(exc).split())[:200]
            tiles = np.zeros((0, 8, 8, 3), np.uint8)
        captions = [
            f"#{r + 1} {table.score[i]:.2e}{' M' if table.selected[i] else ''}"
            for r, i in enumerate(top[: len(tiles)])
        ]
        write_png(out(f"gallery/{slide_id}.png"), gallery(tiles, captions, 5, cfg.gallery_px))

    def pyramid() -> None:
        geo = PyramidGeometry.for_mpp(canvas.width, canvas.height, mpp, cfg.pyramid_mpp)
        notes.update(pyramid_mpp=geo.mpp, pyramid_downsample=geo.downsample)
        write_heatmap_tiff(
            out(f"pyramid/{slide_id}.tif"), geo, table.coords, size, table.score_norm, lut,
            cfg.smooth_um, cfg.pyramid_compression, threads=tiff_threads, pitch=pitch,
        )  # fmt: skip

    def tiles_geojson() -> None:
        meas: dict[str, np.ndarray] = {
            "attention": table.score,
            "attention_norm": table.score_norm,
            "rank": table.rank,
            "selected": table.selected.astype(np.int64),
            "aux": table.aux.astype(np.int64),
            **table.extra,
        }
        colours = lut[np.clip(np.rint(table.score_norm * 255), 0, 255).astype(np.intp)]
        write_tiles_geojson(out(f"geojson/{slide_id}.geojson"), table.coords, size, meas, colours)

    def scores_csv() -> None:
        write_scores_csv(out(f"scores/{slide_id}.csv"), table)

    by_name = {
        "geojson": tiles_geojson,
        "pyramid": pyramid,
        "overlay": overlay,
        "csv": scores_csv,
        "gallery": top_gallery,
    }
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="heatmap") as pool:
            for phase in phases:
                for fut in [pool.submit(by_name[name]) for name in phase]:
                    fut.result()  # re-raises a writer's error
    else:
        for phase in phases:
            for name in phase:
                by_name[name]()

    prediction = {**prediction, **notes}
    attrs = {
        "slide_id": slide_id,
        "slide_path": meta.slide_path,
        "patch_size": int(meta.read_px),
        "patch_level": int(meta.level),
        "tile_px": int(meta.tile_px),
        "target_mpp": float(meta.target_mpp),
        "prediction": prediction,
    }
    write_scores(out(f"scores/{slide_id}{store_suffix}"), table, size, attrs)
    text = json.dumps(_clean(prediction), indent=1)
    out(f"predictions/{slide_id}.json").write_text(text + "\n")
    if evaluation is not None:
        out(f"evaluation/{slide_id}.json").write_text(json.dumps(_clean(evaluation), indent=1))
    return outputs


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_tables(out: Path, slide_ids: list[str]) -> None:
    """``predictions.csv`` and (when evaluated) ``evaluation.csv`` from the per-slide JSONs."""
    preds = []
    for sid in slide_ids:
        p = out / "predictions" / f"{sid}.json"
        if p.exists():
            preds.append(json.loads(p.read_text()))
    if preds:
        classes = list(preds[0]["probs"])
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["slide_id", "pred", *[f"prob_{c}" for c in classes], "n_tiles"])
        for rec in preds:
            probs = [f"{rec['probs'].get(c, float('nan')):.6f}" for c in classes]
            w.writerow([rec["slide_id"], rec["pred"], *probs, rec["n_tiles"]])
        atomic_write_text(out / "predictions.csv", buf.getvalue())
    evals = []
    for sid in slide_ids:
        p = out / "evaluation" / f"{sid}.json"
        if p.exists():
            evals.append(json.loads(p.read_text()))
    if not evals:
        return
    from wsipipe.heatmap.evaluate import SlideEvaluation

    fields = [f for f in SlideEvaluation.__dataclass_fields__]
    objs = [
        SlideEvaluation(**{k: (math.nan if e.get(k) is None else e[k]) for k in fields})  # type: ignore[arg-type]
        for e in evals
    ]
    overall = summarise(objs)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(fields)
    for e in objs:
        w.writerow([_fmt(getattr(e, f)) for f in fields])
    w.writerow(["overall", sum(e.n_tiles for e in objs), sum(e.n_tumour_tiles for e in objs),
                objs[0].k, *[_fmt(overall[m]) for m in METRICS]])  # fmt: skip
    atomic_write_text(out / "evaluation.csv", buf.getvalue())
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in overall.items()}
    atomic_write_text(out / "evaluation_summary.json", json.dumps(clean, indent=1) + "\n")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6f}"
    return str(v)
