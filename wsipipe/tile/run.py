"""``wsipipe tile``: one slide -> tissue -> grid -> patch store, QC image and tissue GeoJSON.

:func:`tile_slide` does one slide's work into a temporary folder; :func:`tile_slides` runs it
for a batch through :mod:`wsipipe.jobs` (skip done, lock, publish atomically, record failures).

Output layout under ``--out``::

    config.yaml              resolved TileConfig (+ version)
    stores/<id>.h5|.zarr     patch store (coords, tiles, metadata incl. the config)
    qc/<id>.png              thumbnail with tissue contours, pen areas and kept tiles
    tissue/<id>.geojson      tissue polygons, level-0 px (QuPath imports it)
    status/<id>.json         per-slide completion record (written last)
    summary.csv              one row per slide of this run
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from wsipipe import __version__
from wsipipe.config import config_hash, config_to_dict, save_config
from wsipipe.errors import ConfigError, NoTissueError, WsipipeError
from wsipipe.jobs import Job, JobRunner, Outcome, run_jobs, single_line, write_summary
from wsipipe.slide import Slide, open_slide, slide_fingerprint
from wsipipe.slide.levels import TileGeometry
from wsipipe.store.meta import STORE_SUFFIX, Reader, StoreMeta
from wsipipe.tile.config import TileConfig
from wsipipe.tile.grid import tile_grid, tissue_fractions
from wsipipe.tile.inputs import SlideInput

CHUNK = 256  # tiles read/encoded/appended per step: bounds memory to CHUNK encoded tiles


def tile_slide(
    spec: SlideInput, cfg: TileConfig, tmp_dir: Path, threads: int = 1
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Tile one slide into ``tmp_dir``; return ({relative output: tmp path}, info)."""
    # imported here, not at module level: a re-run that only skips done slides never pays
    # for scipy / scikit-image / shapely / h5py (~0.6 s of start-up)
    from wsipipe.geometry import (
        mask_to_polygons,
        polygons_to_mask,
        read_tissue_geojson,
        tissue_geojson,
        write_geojson,
    )
    from wsipipe.store import create_store
    from wsipipe.tile.qc import draw_qc, save_png
    from wsipipe.tile.tissue import segment_tissue

    with _open(spec, cfg) as slide:
        mpp = slide.mpp  # raises MissingMppError with the fix when unknown
        thumb, thumb_ds = slide.thumbnail(cfg.tissue.thumb_mpp)
        um_per_thumb_px = mpp * thumb_ds

        pen = None
        if cfg.tissue_geojson_dir:
            polys = read_tissue_geojson(_tissue_geojson_path(cfg.tissue_geojson_dir, spec))
            mask = polygons_to_mask(polys, thumb.shape[:2], thumb_ds)
        else:
            seg = segment_tissue(thumb, um_per_thumb_px, cfg.tissue)
            mask, pen = seg.tissue, seg.pen
            polys = mask_to_polygons(mask, thumb_ds)

        info = slide.info
        geometry = slide.tile_geometry(cfg.target_mpp, cfg.tile_px, cfg.overlap_px)
        grid = tile_grid(info.width, info.height, geometry)
        frac = tissue_fractions(grid.coords, grid.tile_size_level0, mask, thumb_ds)
        keep = frac >= max(cfg.min_tissue, 1e-6)
        coords, frac = grid.coords[keep], frac[keep]
        if len(coords) == 0:
            raise NoTissueError(
                f"{spec.path}: no tile has >= {cfg.min_tissue:.0%} tissue "
                f"({int(mask.sum())} tissue px on the {thumb.shape[1]}x{thumb.shape[0]} "
                "thumbnail); if the slide has tissue, lower --min-tissue or give "
                "--tissue-geojson-dir"
            )

        reader = slide.tile_reader(cfg.target_mpp, cfg.tile_px, resample=cfg.resample)
        meta = _store_meta(spec, cfg, slide, geometry)
        store_rel = f"stores/{spec.slide_id}{STORE_SUFFIX[cfg.format]}"
        store_tmp = tmp_dir / Path(store_rel).name
        n_reused = 0
        with create_store(store_tmp, cfg.format, meta) as writer:
            for chunk_coords, chunk_frac, tiles, reused in _encoded_chunks(
                reader, coords, frac, cfg, threads
            ):
                writer.append(chunk_coords, tiles, chunk_frac)
                n_reused += reused
        qc_img, qc_ds = _qc_thumbnail(slide, thumb, thumb_ds)
    qc_mask = _resize_mask(mask, qc_img.shape[:2])
    qc_pen = _resize_mask(pen, qc_img.shape[:2]) if pen is not None else None
    qc_tmp = tmp_dir / f"{spec.slide_id}.png"
    save_png(
        qc_tmp, draw_qc(qc_img, qc_mask, qc_pen, coords / qc_ds, grid.tile_size_level0 / qc_ds)
    )
    geo_tmp = tmp_dir / f"{spec.slide_id}.geojson"
    write_geojson(geo_tmp, tissue_geojson(polys))

    outputs = {
        store_rel: store_tmp,
        f"qc/{spec.slide_id}.png": qc_tmp,
        f"tissue/{spec.slide_id}.geojson": geo_tmp,
    }
    stats: dict[str, Any] = {
        "n_tiles": len(coords),
        "n_grid": grid.n_tiles,
        "mpp": round(mpp, 5),
        "mpp_source": slide.mpp_source,
        "reader": slide.reader,
        "level": reader.level,
        "fast_path": bool(reader.fast),
        "dct_factor": int(reader.dct_factor),
        "jpeg_reused": n_reused,
    }
    return outputs, stats


QC_LONG_SIDE = 2048  # px: QC images are at most this big and at least ~1/4 of it


def _qc_thumbnail(slide: Slide, thumb: np.ndarray, thumb_ds: float) -> tuple[np.ndarray, float]:
    """A thumbnail large enough to judge the segmentation by eye.

    Read from the first pyramid level at least as coarse as needed for a ``QC_LONG_SIDE``
    image (so no large level is decoded); single-level slides are read in stripes.
    """
    need = max(1.0, max(slide.info.width, slide.info.height) / QC_LONG_SIDE)
    coarser = [d for d in slide.info.level_downsamples if d >= need * 0.999]
    ds = min(coarser) if coarser else need
    if ds >= thumb_ds * 0.9:  # the segmentation thumbnail is already that large
        return thumb, thumb_ds
    return slide.thumbnail(slide.mpp * ds)


def _resize_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to (H, W) = ``shape``."""
    from PIL import Image

    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 0


def _open(spec: SlideInput, cfg: TileConfig) -> Slide:
    """Open a slide with its mpp: a per-slide CSV value overrides the file's; the run-wide
    ``--mpp`` only fills in for slides that record none (a batch of mixed scanners keeps
    every slide's true mpp)."""
    slide = open_slide(spec.path, reader=cfg.reader, mpp=spec.mpp)
    if spec.mpp is None and cfg.mpp is not None and slide.info.mpp_x is None:
        slide.close()
        slide = open_slide(spec.path, reader=cfg.reader, mpp=cfg.mpp)
    return slide


def _tissue_geojson_path(directory: str, spec: SlideInput) -> Path:
    for suffix in (".geojson", ".json"):
        p = Path(directory) / f"{spec.slide_id}{suffix}"
        if p.exists():
            return p
    raise ConfigError(
        f"{spec.path}: --tissue-geojson-dir given but {Path(directory) / spec.slide_id}.geojson "
        "does not exist; add it or drop the option to segment tissue automatically"
    )


def _store_meta(
    spec: SlideInput, cfg: TileConfig, slide: Slide, geometry: TileGeometry
) -> StoreMeta:
    fp = slide_fingerprint(spec.path)
    mpp = slide.mpp
    level_w, level_h = slide.info.level_dimensions[geometry.level]
    return StoreMeta(
        slide_id=spec.slide_id,
        slide_path=str(Path(spec.path).resolve()),
        slide_size=int(fp["size"]),  # type: ignore[call-overload]
        slide_md5_1mb=str(fp["md5_first_mb"]),
        slide_mtime_ns=int(fp["mtime_ns"]),  # type: ignore[call-overload]
        reader=cast(Reader, slide.reader),
        slide_mpp=(mpp, mpp),
        mpp_source="override" if slide.mpp_source == "override" else "file",
        target_mpp=cfg.target_mpp,
        tile_px=cfg.tile_px,
        level=geometry.level,
        downsample=float(geometry.downsample),
        read_px=int(geometry.read_px),
        tile_size_level0=int(geometry.tile_size_level0),
        stride_level0=int(geometry.stride_level0),
        overlap_px=cfg.overlap_px,
        level_dim=(int(level_w), int(level_h)),
        pixels=cfg.pixels,
        jpeg_quality=cfg.jpeg_quality if cfg.pixels == "jpeg" else None,
        wsipipe_version=__version__,
        config=config_to_dict(cfg),
    )


def _encoded_chunks(
    reader: Any, coords: np.ndarray, frac: np.ndarray, cfg: TileConfig, threads: int
) -> Iterator[tuple[np.ndarray, np.ndarray, list[bytes] | None, int]]:
    """Yield (coords, fractions, encoded tiles or None, n reused) in chunks of CHUNK tiles.

    JPEG decode/resize/encode release the GIL, so ``threads`` > 1 overlaps them. With a pool,
    the next chunk is submitted before this one is yielded: the workers keep decoding while
    the caller appends to the store (h5py holds the GIL), with at most 2 chunks in memory.
    """

    from wsipipe.store import encode_tile

    def one(xy: np.ndarray) -> tuple[bytes, bool]:
        x, y = int(xy[0]), int(xy[1])
        if cfg.pixels == "jpeg" and cfg.reuse_jpeg:
            raw = reader.read_encoded(x, y)
            if raw is not None:
                return raw, True
        return encode_tile(reader.read(x, y), cfg.pixels, cfg.jpeg_quality), False

    if cfg.pixels == "none":
        for start in range(0, len(coords), CHUNK):
            yield coords[start : start + CHUNK], frac[start : start + CHUNK], None, 0
        return
    pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None
    mapper: Callable[..., Any] = pool.map if pool else map  # pool.map submits at once
    inflight: deque[tuple[np.ndarray, np.ndarray, Iterator[tuple[bytes, bool]]]] = deque()

    def finish() -> tuple[np.ndarray, np.ndarray, list[bytes], int]:
        c, f, pending = inflight.popleft()
        results = list(pending)
        return c, f, [r[0] for r in results], sum(r[1] for r in results)

    try:
        for start in range(0, len(coords), CHUNK):
            c = coords[start : start + CHUNK]
            inflight.append((c, frac[start : start + CHUNK], mapper(one, c)))
            if pool is None or len(inflight) > 1:
                yield finish()
        while inflight:
            yield finish()
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)


# ---- batch ------------------------------------------------------------------------------


def _work(job: Job, tmp_dir: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """Module-level (picklable) work function for :func:`wsipipe.jobs.run_jobs`."""
    return tile_slide(job.inputs["spec"], job.inputs["cfg"], tmp_dir, job.inputs["threads"])


def tile_slides(
    specs: list[SlideInput],
    cfg: TileConfig,
    out_dir: Path,
    workers: int = 1,
    threads: int = 1,
    overwrite: bool = False,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Tile every slide; failures are recorded and never stop the batch.

    Before any work, a slide fails (and is not run) when its input is unreadable (a dangling
    or looping symlink: ``spec.error``) or when it is done but the slide changed since it was
    tiled (``--overwrite`` re-tiles it instead)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml", extra={"wsipipe_version": __version__})
    runner = JobRunner(out_dir, "tile", _tile_hash(cfg), overwrite)
    outcomes: list[Outcome] = []
    jobs = []
    for s in specs:
        refused = _refused(runner, s)
        if refused:
            # recorded beside an earlier run's "done" record, which it keeps
            outcome = runner.record_failure(Outcome(s.slide_id, "failed", single_line(refused)))
            outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)
        else:
            jobs.append(Job(s.slide_id, {"spec": s, "cfg": cfg, "threads": threads}))
    outcomes += run_jobs(runner, jobs, _work, workers=workers, on_outcome=on_outcome)
    write_summary(out_dir, outcomes)
    return outcomes


def _refused(runner: JobRunner, spec: SlideInput) -> str:
    """Why ``spec`` fails before any work ("" = run it): its input is unreadable, or its
    slide is done but no longer the one its store was tiled from."""
    if spec.error:
        return spec.error
    if runner.overwrite or not runner.is_done(spec.slide_id):
        return ""
    from wsipipe.store import check_slide_unchanged, open_store

    status = runner.read_status(spec.slide_id) or {}
    stores = [rel for rel in status.get("outputs", []) if str(rel).startswith("stores/")]
    try:
        for rel in stores:
            store_path = runner.out_dir / rel
            with open_store(store_path) as store:
                meta = store.meta
            check_slide_unchanged(meta, store_path, spec.path)
    except WsipipeError as exc:
        return str(exc)
    return ""


def _tile_hash(cfg: TileConfig) -> str:
    # The global mpp override is per-run input, recorded per store; it does not change which
    # settings a store was made with in a way that should force re-tiling of other slides.
    return config_hash(replace(cfg, mpp=None))
