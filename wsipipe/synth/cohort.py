"""A synthetic CAMELYON-like cohort: Aperio SVS slides, tumour annotations and labels.csv.

Layout of ``generate_cohort(out)``::

    out/slides/synth_000.svs ...        tiled pyramidal JPEG SVS (OpenSlide vendor "aperio")
    out/annotations/synth_001.xml       ASAP XML, group "Tumor" (positive slides only)
    out/annotations/synth_001.geojson   the same polygons as QuPath GeoJSON
    out/labels.csv                      slide_id,label,split  (label "normal" | "tumor")

Everything is a deterministic function of the :class:`CohortConfig` (same seed -> same
bytes), independent of the number of worker processes.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from shapely.geometry import Polygon

from wsipipe.geometry.annotations import write_asap_xml, write_geojson_annotations
from wsipipe.synth.config import DEFAULT_TUMOUR_FRACTION, CohortConfig
from wsipipe.synth.layout import make_layout
from wsipipe.synth.svs import write_svs
from wsipipe.synth.tissue_render import TissueRenderer

__all__ = [
    "SPLIT_NAMES",
    "Cohort",
    "CohortConfig",
    "generate_cohort",
    "generate_slide",
    "stratified_splits",
]

SPLIT_NAMES = ("train", "val", "test")


def cohort_dirs(out: str | Path) -> tuple[Path, Path, Path]:
    """(root, slides/, annotations/) of a cohort folder, created."""
    root = Path(out)
    for sub in ("slides", "annotations"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root, root / "slides", root / "annotations"


@dataclass(frozen=True)
class Cohort:
    root: Path
    slides: tuple[Path, ...]
    labels_csv: Path  # columns: slide_id,label,split   (label: "normal" | "tumor")
    annotations_dir: Path  # <slide_id>.xml (ASAP) and <slide_id>.geojson for positive slides


def generate_slide(
    path: str | Path,
    width: int,
    height: int,
    mpp: float,
    seed: int,
    tumour: bool,
    pen: bool,
    tumour_fraction: tuple[float, float] = DEFAULT_TUMOUR_FRACTION,
) -> list[Polygon]:
    """Write one synthetic slide (SVS) and return its tumour polygons in level-0 px.

    The polygons are empty for a negative slide (``tumour=False``).
    """
    layout = make_layout(
        width, height, mpp, seed, tumour=tumour, pen=pen, tumour_fraction=tumour_fraction
    )
    write_svs(path, width, height, TissueRenderer(layout), mpp)
    return list(layout.tumour_polygons)


def stratified_splits(
    labels: list[str], fractions: tuple[float, float, float], seed: int
) -> list[str]:
    """Assign "train"/"val"/"test" to each label, stratified by label.

    Per class, counts are ``round(n_class * fraction)`` by largest remainder (ties broken
    by a class-dependent rotation so that totals stay balanced); when a class has at least
    as many slides as there are non-empty splits, every such split gets at least one.
    Which slides go where is shuffled with ``seed``.
    """
    rng = np.random.default_rng([seed, 0x5B17])
    out = [""] * len(labels)
    k_splits = len(fractions)
    active = [s for s in range(k_splits) if fractions[s] > 0]
    for ci, cls in enumerate(sorted(set(labels))):
        idx = [i for i, lab in enumerate(labels) if lab == cls]
        n = len(idx)
        want = [n * f for f in fractions]
        counts = [math.floor(w) for w in want]
        order = sorted(
            range(k_splits), key=lambda s: (-(want[s] - counts[s]), (s - 1 - ci) % k_splits)
        )
        for s in order[: n - sum(counts)]:
            counts[s] += 1
        if n >= len(active):
            for s in active:
                while counts[s] == 0:
                    donor = max(range(k_splits), key=lambda d: counts[d])
                    counts[donor] -= 1
                    counts[s] += 1
        perm = [idx[i] for i in rng.permutation(n)]
        pos = 0
        for s, c in enumerate(counts):
            for i in perm[pos : pos + c]:
                out[i] = SPLIT_NAMES[s]
            pos += c
    return out


def _slide_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index, 0xC0]).generate_state(1)[0])


def _job(
    args: tuple[str, int, int, float, int, bool, bool, tuple[float, float]],
) -> list[Polygon]:
    return generate_slide(*args)


def _worker_init() -> None:
    """Keep freed numpy buffers in the worker's heap (glibc): rendering allocates many
    MB-sized temporaries, and returning each to the OS costs ~30 % of the run in page faults.
    Only done in the worker processes this module starts; harmless where unavailable."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 512 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1024 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def generate_cohort(
    out: str | Path, cfg: CohortConfig = CohortConfig(), workers: int | None = None
) -> Cohort:
    """Generate ``cfg.n_slides`` slides into ``out`` (see the module docstring for layout).

    Slides are rendered in ``workers`` processes (default: all CPU cores, at most one per
    slide); the output does not depend on ``workers``. Existing files are overwritten.
    """
    root, slides_dir, ann_dir = cohort_dirs(out)
    n = cfg.n_slides
    rng = np.random.default_rng([cfg.seed, 0xC0407])
    n_pos = round(n * cfg.positive_fraction)
    positive = np.zeros(n, bool)
    positive[rng.permutation(n)[:n_pos]] = True
    # pen strokes, spread evenly over both classes so pen is no shortcut to the label
    pen = np.zeros(n, bool)
    for cls in (True, False):
        idx = np.flatnonzero(positive == cls)
        k = round(len(idx) * cfg.pen_fraction)
        pen[rng.permutation(idx)[:k]] = True
    labels = ["tumor" if p else "normal" for p in positive]
    splits = stratified_splits(labels, cfg.splits, cfg.seed)
    ids = [f"synth_{i:03d}" for i in range(n)]
    paths = [slides_dir / f"{sid}.svs" for sid in ids]
    jobs = [
        (
            str(paths[i]),
            cfg.width,
            cfg.height,
            cfg.mpp,
            _slide_seed(cfg.seed, i),
            bool(positive[i]),
            bool(pen[i]),
            cfg.tumour_fraction,
        )
        for i in range(n)
    ]
    n_workers = min(n, workers if workers is not None else (os.cpu_count() or 1))
    if n_workers <= 1:
        polygons = [_job(j) for j in jobs]
    else:
        # fork where available: no re-import of the caller's __main__ (scripts without a
        # main guard work) and no start-up cost
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_worker_init) as pool:
            polygons = list(pool.map(_job, jobs))
    for sid, is_pos, polys in zip(ids, positive, polygons, strict=True):
        xml, geo = ann_dir / f"{sid}.xml", ann_dir / f"{sid}.geojson"
        if is_pos:
            write_asap_xml(xml, polys, group="Tumor")
            write_geojson_annotations(geo, polys, name="Tumor")
        else:  # a re-run with other labels must not leave stale annotations behind
            xml.unlink(missing_ok=True)
            geo.unlink(missing_ok=True)
    labels_csv = root / "labels.csv"
    rows = ["slide_id,label,split"] + [
        f"{sid},{lab},{spl}" for sid, lab, spl in zip(ids, labels, splits, strict=True)
    ]
    labels_csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return Cohort(root=root, slides=tuple(paths), labels_csv=labels_csv, annotations_dir=ann_dir)
