"""``wsipipe heatmap``: a trained checkpoint's attention mapped back onto every slide.

For each slide (a patch store written by ``wsipipe tile``): one eval-mode streaming pass over
all its tiles (``attention_pass`` of :mod:`wsipipe.train.inference`) gives each tile's
attention (softmax of the
learned query over ALL tiles, per head and averaged), the IPS/DBPS selection flags and the
slide prediction; then the outputs of :mod:`wsipipe.heatmap.outputs` are written, and with
``--annotations`` the attention is evaluated against the annotated tumour.

Runs through :mod:`wsipipe.jobs` (skip done slides, lock, atomic publish, failure records).
The model is loaded once; one DataLoader (the training stage's chunk loader) streams the
tiles of all slides to do, decoding in worker processes. On a GPU, slides are pipelined:
slide k's outputs are written on a background thread while slide k+1 is scored, so the
outputs cost no GPU time. Output layout under ``--out``::

    config.yaml             resolved HeatmapConfig + checkpoint + its training config
    overlay/ gallery/ pyramid/ geojson/ scores/ predictions/ evaluation/   (per slide)
    predictions.csv         slide_id, pred, prob_<class>... for every slide of the run
    evaluation.csv          per-slide metrics + an ``overall`` row (with --annotations)
    summary.csv, status/    per-slide job records
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from wsipipe import __version__
from wsipipe.config import config_to_dict, save_config
from wsipipe.errors import ConfigError, WsipipeError
from wsipipe.fileio import check_slide_id
from wsipipe.heatmap.config import RUNTIME_FIELDS, HeatmapConfig
from wsipipe.heatmap.evaluate import evaluate_slide, tumour_fraction
from wsipipe.heatmap.outputs import SlideCanvas, load_canvas, write_slide_outputs, write_tables
from wsipipe.heatmap.render import normalise_scores, score_ranks
from wsipipe.heatmap.scores import ScoreTable
from wsipipe.jobs import Job, JobRunner, Outcome, run_staged_jobs, write_summary
from wsipipe.store import SlideSource, describe_store, find_store, list_stores, resolve_stores_dir
from wsipipe.train.inference import (
    ChunkPipeline,
    ChunkStream,
    LoadedModel,
    attention_pass,
    check_feature_dim,
    check_tiling,
    eval_forward,
    load_model,
    open_pipeline,
    training_stores,
)

_ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json")


def checkpoint_fingerprint(path: Path) -> str:
    """md5 of the checkpoint file (a changed model must redo every heatmap)."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def heatmap_hash(cfg: HeatmapConfig, fingerprint: str) -> str:
    data = {k: v for k, v in config_to_dict(cfg).items() if k not in RUNTIME_FIELDS}
    data["checkpoint"] = fingerprint
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class _Run:
    """Everything one run shares between its slides (model, loaders, folders)."""

    cfg: HeatmapConfig
    lm: LoadedModel
    pipeline: ChunkPipeline  # the tiles (or features) of the slides to do
    store_paths: dict[str, Path]
    chunks: ChunkStream  # one pass over all slides to do, in order
    canvases: ThreadPoolExecutor  # reads slide thumbnails while the model scores
    tissue_dir: Path | None
    annotations: Path | None

    def close(self) -> None:
        self.pipeline.close()
        self.canvases.shutdown(wait=True)


@dataclass
class _Scored:
    """One slide after its scoring pass: what its outputs are made of (all O(N) arrays)."""

    slide_id: str
    store_path: Path
    coords: np.ndarray  # (N, 2) level-0 top-lefts
    size: int  # tile footprint, level-0 px
    score: np.ndarray  # (N,) attention, softmax over all N tiles, mean over heads/tokens
    per_head: np.ndarray  # (N, H): per-head softmax over all N tiles, mean over tokens
    selected: np.ndarray  # (N,) bool: in M
    aux: np.ndarray  # (N,) bool: in the DBPS auxiliary buffer S
    probs: np.ndarray  # (C,) slide prediction
    canvas: Future[SlideCanvas]
    score_seconds: float


def _annotation_file(directory: Path, slide_id: str) -> Path | None:
    for suffix in _ANNOTATION_SUFFIXES:
        p = directory / f"{slide_id}{suffix}"
        if p.exists():
            return p
    return None


def score_slide(run: _Run, job: Job, tmp: Path) -> Callable[[], tuple[dict[str, Path], Any]]:
    """Stage 1 (this thread: the model and the tile stream): the slide's scoring pass and
    prediction. Returns stage 2, which writes the outputs into ``tmp`` (:func:`finish_slide`)
    and may run in another thread while the next slide is scored."""
    from wsipipe.store import open_store

    t0 = time.perf_counter()
    cfg, lm = run.cfg, run.lm
    pos: int = job.inputs["pos"]
    store_path = run.store_paths[job.slide_id]
    with open_store(store_path) as store:
        meta = store.meta
        coords = np.asarray(store.coords, dtype=np.int64)
    n = len(coords)
    size = int(meta.tile_size_level0)
    mpp = float(np.mean(meta.slide_mpp))
    tissue = run.tissue_dir / f"{job.slide_id}.geojson" if run.tissue_dir else None
    # the slide's thumbnail is read while the model scores the tiles
    canvas = run.canvases.submit(load_canvas, meta, store_path, mpp, coords, size, cfg, tissue)
    sp = attention_pass(lm.model, run.chunks.slide(pos), lm.settings, n)
    sel_idx = sp.scan.indices.cpu().numpy()
    tiles = run.pipeline.fetch(pos, sel_idx).result()
    probs = eval_forward(lm.model, tiles, sp.scan, lm.settings).numpy().astype(np.float64)

    order = sp.attention.indices.numpy()
    if len(order) != n or not np.array_equal(np.sort(order), np.arange(n)):
        raise RuntimeError(f"{store_path}: the pass scored {len(order)} of {n} tiles")
    score = np.empty(n, np.float64)
    score[order] = sp.attention.scores().double().numpy()
    per_head = np.empty((n, sp.attention.logits.shape[2]), np.float64)
    per_head[order] = sp.attention.per_head().double().numpy()
    selected = np.zeros(n, bool)
    selected[sel_idx] = True
    aux = np.zeros(n, bool)
    if sp.scan.aux_indices is not None:
        aux[sp.scan.aux_indices.cpu().numpy()] = True
    scored = _Scored(
        job.slide_id, store_path, coords, size, score, per_head, selected, aux, probs, canvas,
        time.perf_counter() - t0,
    )  # fmt: skip
    return lambda: finish_slide(run, scored, tmp)


def finish_slide(run: _Run, s: _Scored, tmp: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """Stage 2: evaluation against the annotations, the score table and every output file."""
    from wsipipe.store import open_store

    t1 = time.perf_counter()
    cfg, lm = run.cfg, run.lm
    extra: dict[str, np.ndarray] = {}
    evaluation: dict[str, Any] | None = None
    if run.annotations is not None:
        from wsipipe.geometry.annotations import read_annotations

        ann = _annotation_file(run.annotations, s.slide_id)
        tumour, exclusion = read_annotations(ann) if ann else ([], [])
        frac = tumour_fraction(s.coords, s.size, tumour, exclusion)
        extra["tumour_fraction"] = frac
        ev = evaluate_slide(
            s.slide_id, s.score, frac, s.selected, s.aux, cfg.top_k, cfg.tumour_threshold
        )
        evaluation = {**ev.to_row(), "annotations": str(ann) if ann else None}

    n = len(s.coords)
    table = ScoreTable(
        tile_index=np.arange(n, dtype=np.int64),
        coords=s.coords,
        score=s.score,
        score_norm=normalise_scores(
            s.score, cfg.normalise, cfg.percentile_low, cfg.percentile_high
        ),
        rank=score_ranks(s.score),
        selected=s.selected,
        aux=s.aux,
        per_head=s.per_head,
        extra=extra,
    )
    canvas = s.canvas.result()
    classes = lm.classes
    prediction = {
        "slide_id": s.slide_id,
        "pred": classes[int(np.argmax(s.probs))],
        "probs": dict(zip(classes, s.probs.tolist(), strict=True)),
        "n_tiles": n,
        "n_selected": int(s.selected.sum()),
        "n_aux": int(s.aux.sum()),
        "method": lm.config.method,
        "M": lm.config.M,
        "I": lm.settings.I,
        "S": lm.config.n_aux,
        "checkpoint": str(lm.checkpoint),
        "epoch": lm.epoch,
        "thumbnail": canvas.source,
        "wsipipe_version": __version__,
    }
    with open_store(s.store_path) as store:  # the gallery re-reads the top-k tiles
        outputs = write_slide_outputs(
            tmp, s.slide_id, table, canvas, store, s.store_path.suffix, prediction, evaluation,
            cfg,
        )  # fmt: skip
    info: dict[str, Any] = {
        "n_tiles": n,
        "pred": prediction["pred"],
        "prob": round(float(s.probs.max()), 4),
        "score_seconds": round(s.score_seconds, 3),
        "render_seconds": round(time.perf_counter() - t1, 3),
    }
    if evaluation is not None:
        for key in ("auc", "topk_in_tumour", "tumour_selected"):
            value = float(evaluation[key])
            info[key] = "" if math.isnan(value) else round(value, 4)
    return outputs, info


# ---- the batch ------------------------------------------------------------------------------


def _slide_ids(cfg: HeatmapConfig, stores_dir: Path) -> dict[str, Path]:
    if not cfg.slides:
        found = dict(list_stores(stores_dir))
        if not found:
            raise ConfigError(f"--stores {stores_dir}: no .h5 / .zarr stores; run `wsipipe tile`")
        return found
    out: dict[str, Path] = {}
    missing = []
    for sid in cfg.slides:
        check_slide_id(sid, "--slides")
        try:
            out[sid] = find_store(stores_dir, sid)
        except Exception:
            missing.append(sid)
    if missing:
        raise ConfigError(
            f"--slides: no store for {', '.join(missing)} in {stores_dir}; check the ids or "
            "run `wsipipe tile` for them"
        )
    return out


def run_heatmaps(
    cfg: HeatmapConfig,
    overwrite: bool = False,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Heatmaps for every slide of ``cfg``; failures are recorded, never stop the batch."""
    ckpt = Path(cfg.checkpoint)
    if not cfg.checkpoint or not ckpt.is_file():
        raise ConfigError(
            f"--checkpoint {cfg.checkpoint!r}: no such file; pass a run's checkpoints/best.pt"
        )
    if not cfg.stores:  # as `wsipipe predict`: the stores the model was trained on
        cfg = dataclasses.replace(cfg, stores=training_stores(ckpt))
    stores_dir = resolve_stores_dir(cfg.stores)
    root = stores_dir.parent if stores_dir.name == "stores" else stores_dir
    tissue_dir = Path(cfg.tissue_dir) if cfg.tissue_dir else root / "tissue"
    annotations = Path(cfg.annotations) if cfg.annotations else None
    if annotations is not None and not annotations.is_dir():
        raise ConfigError(f"--annotations {annotations}: not a directory of <slide_id>.xml")
    stores = _slide_ids(cfg, stores_dir)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = checkpoint_fingerprint(ckpt)
    runner = JobRunner(out, "heatmap", heatmap_hash(cfg, fingerprint), overwrite)
    todo = [sid for sid in stores if overwrite or not runner.is_done(sid)]
    outcomes = [Outcome(sid, "skipped", "already done") for sid in stores if sid not in todo]
    if on_outcome:
        for o in outcomes:
            on_outcome(o)
    specs, unusable = _describe(stores, todo)
    for o in unusable:  # a broken store fails its slide only, before any model work
        runner.write_status(o)
        if on_outcome:
            on_outcome(o)
    outcomes += unusable
    todo = [sid for sid in todo if sid in specs]
    lm = None
    if todo:
        lm, run = _prepare(
            cfg, stores, [specs[s] for s in todo], stores_dir, tissue_dir, annotations
        )
        jobs = [Job(sid, {"pos": i}) for i, sid in enumerate(todo)]
        try:
            # On a GPU, slide k's outputs are written (by the CPU) while slide k+1 is scored.
            # On the CPU the two would compete for the same cores (measured: no faster, a
            # little slower with the GIL), so there the stages run back to back.
            overlap = lm.settings.device.type != "cpu"
            first = partial(score_slide, run)
            outcomes += run_staged_jobs(runner, jobs, first, on_outcome, overlap=overlap)
        finally:
            run.close()
            del run
    _write_config(out, cfg, ckpt, fingerprint, lm)
    write_summary(out, outcomes)
    write_tables(out, list(stores))
    return outcomes


def _describe(
    stores: dict[str, Path], todo: list[str]
) -> tuple[dict[str, SlideSource], list[Outcome]]:
    """The tile sources of the usable stores; a failed Outcome for each broken one."""
    specs: dict[str, SlideSource] = {}
    failed: list[Outcome] = []
    for sid in todo:
        try:
            specs[sid] = describe_store(sid, stores[sid])
        except WsipipeError as exc:
            failed.append(Outcome(sid, "failed", " ".join(str(exc).split())))
    return specs, failed


def _prepare(
    cfg: HeatmapConfig,
    stores: dict[str, Path],
    sources: list[SlideSource],
    stores_dir: Path,
    tissue_dir: Path,
    annotations: Path | None,
) -> tuple[LoadedModel, _Run]:
    runtime = {"workers": cfg.workers, "features_dir": cfg.features_dir or None}
    lm = load_model(cfg.checkpoint, cfg.device, cfg.precision, cfg.chunk, runtime)
    check_tiling(lm, sources, cfg.allow_tiling_mismatch)
    pipeline, fdim = open_pipeline(lm.config, sources, stores_dir, lm.settings.device)
    check_feature_dim(lm, fdim)
    chunks = pipeline.stream(range(len(sources)), lm.settings.I)
    canvases = ThreadPoolExecutor(1, thread_name_prefix="heatmap-thumbnail")
    tdir = tissue_dir if tissue_dir.is_dir() else None
    return lm, _Run(cfg, lm, pipeline, stores, chunks, canvases, tdir, annotations)


def _write_config(
    out: Path, cfg: HeatmapConfig, ckpt: Path, fingerprint: str, lm: LoadedModel | None
) -> None:
    extra: dict[str, Any] = {
        "wsipipe_version": __version__,
        "checkpoint_md5": fingerprint,
    }
    if lm is not None:
        extra["train_config"] = config_to_dict(lm.config)
        extra["classes"] = list(lm.classes)
    save_config(cfg, out / "config.yaml", extra=extra)
