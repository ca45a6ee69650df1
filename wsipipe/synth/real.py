"""A CAMELYON-like cohort made of REAL H&E texture: normal tissue with small tumour foci.

>>> from wsipipe.synth.real import RealCohortConfig, generate_real_cohort
>>> cohort = generate_real_cohort("real_cohort", RealCohortConfig(n_slides=32))  # doctest: +SKIP

or ``wsipipe synth --texture real --out real_cohort``. Layout (as ``wsipipe synth``)::

    out/slides/real_000.svs ...       tiled pyramidal JPEG SVS (Aperio), the cohort's mpp
    out/annotations/real_001.xml      ASAP XML, group "Tumor" (positive slides only)
    out/annotations/real_001.geojson  the same polygons as QuPath GeoJSON
    out/labels.csv                    slide_id,label,split,patient_id,path; split train|test
    out/cohort.json                   the config, sources and per-slide statistics

Each slide: 1-3 irregular tissue sections with holes on glass (the shapes of
:mod:`wsipipe.synth.layout`), filled with texture quilted from random crops of the normal
source(s); a positive slide gets 1-3 (``max_foci``) soft-edged irregular foci quilted from the
tumour source(s). The tumour burden (tumour area / tissue area) is drawn uniformly from
``tumour_fraction`` (default 0.4-9 %), the largest focus enlarged where needed so that at
least ``min_tumour_tiles`` tiles of the default tile grid (256 px at 0.5 um/px) are >= 50 %
tumour -- the heatmap's definition of a tumour tile -- which makes the smallest positives
1-3 tumour-tile slides. The annotations are the foci outlines in level-0 px (the 0.5 level of
their soft masks).

No shortcut to the label: slide size, tissue sections, holes and colour jitter are drawn the
same way for both classes; both sources are resampled to one working resolution by the same
filter; the jitter (in optical density) is applied to the whole composed slide, foci
included, and the slide is then resampled to the cohort's mpp and JPEG-encoded as a whole.
Everything is a deterministic function of the config, the sources and the seed, whatever
the number of worker processes.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import shapely
from PIL import Image
from shapely.geometry import Polygon

from wsipipe.errors import ConfigError
from wsipipe.geometry.annotations import write_asap_xml, write_geojson_annotations
from wsipipe.synth.cohort import _slide_seed, _worker_init, cohort_dirs
from wsipipe.synth.layout import Blob, _harmonics, _make_holes, _make_sections
from wsipipe.synth.real_render import ColourJitter, compose_slide
from wsipipe.synth.real_sources import (
    CropSampler,
    Matched,
    TextureSource,
    default_sources,
    load_pool,
    match_appearance,
    source_mpp,
)
from wsipipe.synth.svs import write_svs

__all__ = [
    "RealCohort",
    "RealCohortConfig",
    "RealSlideLayout",
    "RealTextures",
    "SlideStats",
    "build_textures",
    "generate_real_cohort",
    "make_real_layout",
    "render_real_slide",
]

DEFAULT_REAL_TUMOUR_FRACTION = (0.004, 0.09)
_SECTION_FILL = (0.86, 0.96)  # sections span this share of their cell: ~60 % of the slide


@dataclass(frozen=True)
class RealCohortConfig:
    """What :func:`generate_real_cohort` makes. Sizes in level-0 px, lengths in um."""

    n_slides: int = 32
    # 16 x 12 tiles of 256 px at 0.5 um/px; ~60-110 of them tissue
    width: int = 4096
    height: int = 3072
    mpp: float = 0.5
    seed: int = 0
    positive_fraction: float = 0.5
    test_fraction: float = 0.25  # per class, the rest is train; no val split
    # tumour area / tissue area of a positive slide, drawn uniformly per slide
    tumour_fraction: tuple[float, float] = DEFAULT_REAL_TUMOUR_FRACTION
    max_foci: int = 3
    # tiles of tile_px at tile_mpp (the grid ``wsipipe tile`` lays from (0, 0)) of which at
    # least min_tumour_tiles per positive slide are >= 50 % tumour
    min_tumour_tiles: int = 1
    tile_px: int = 256
    tile_mpp: float = 0.5
    piece_um: float = 140.0  # size of the texture pieces (crops are twice as large)
    seam_um: float = 6.0  # width over which neighbouring pieces blend
    match_stain: bool = True  # re-stain every pool with the normal pool's H&E (Macenko)
    match_sharpness: bool = True  # blur sharper pools to the blurriest pool's detail
    colour_jitter: float = 1.0  # per-slide stain jitter strength, 0 = none
    quality: int = 90  # JPEG quality of the slides

    def __post_init__(self) -> None:
        if self.n_slides < 2:
            raise ConfigError(f"RealCohortConfig.n_slides={self.n_slides} must be >= 2")
        if self.width < 1024 or self.height < 1024:
            raise ConfigError(
                f"RealCohortConfig size {self.width}x{self.height} is too small; use >= 1024 px"
            )
        if self.width * self.height > 2**28:
            raise ConfigError(
                f"RealCohortConfig size {self.width}x{self.height} exceeds 268 Mpx; a slide is "
                "composed in memory, use a smaller one"
            )
        for name, lo, hi in (("mpp", 0.1, 10.0), ("tile_mpp", 0.1, 10.0)):
            v = getattr(self, name)
            if not (math.isfinite(v) and lo <= v <= hi):
                raise ConfigError(f"RealCohortConfig.{name}={v!r} must be in {lo}..{hi} um/px")
        for name in ("positive_fraction", "test_fraction"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0.0 < v < 1.0):
                raise ConfigError(f"RealCohortConfig.{name}={v!r} must be in (0, 1)")
        tf = tuple(self.tumour_fraction)
        if not (len(tf) == 2 and all(math.isfinite(v) for v in tf) and 0 < tf[0] <= tf[1] < 0.5):
            raise ConfigError(
                f"RealCohortConfig.tumour_fraction={self.tumour_fraction!r} must be two "
                "fractions 0 < low <= high < 0.5, e.g. (0.004, 0.09)"
            )
        if not 1 <= self.max_foci <= 8:
            raise ConfigError(f"RealCohortConfig.max_foci={self.max_foci} must be in 1..8")
        if not 0 <= self.min_tumour_tiles <= 20:
            raise ConfigError(
                f"RealCohortConfig.min_tumour_tiles={self.min_tumour_tiles} must be in 0..20"
            )
        if not 16 <= self.tile_px <= 4096:
            raise ConfigError(f"RealCohortConfig.tile_px={self.tile_px} must be in 16..4096")
        if not (10.0 <= self.piece_um <= 1000.0 and 0.0 < self.seam_um < self.piece_um / 2):
            raise ConfigError(
                f"RealCohortConfig piece_um={self.piece_um}, seam_um={self.seam_um}: need "
                "10 <= piece_um <= 1000 and 0 < seam_um < piece_um / 2"
            )
        if not (math.isfinite(self.colour_jitter) and 0.0 <= self.colour_jitter <= 3.0):
            raise ConfigError(
                f"RealCohortConfig.colour_jitter={self.colour_jitter!r} must be in 0..3"
            )
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"RealCohortConfig.quality={self.quality} must be in 1..100")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"RealCohortConfig.seed={self.seed} must be in 0..2**32-1")


# ------------------------------------------------------------------------------------ layout


@dataclass(frozen=True)
class RealSlideLayout:
    """Everything random about one slide; level-0 px throughout."""

    width: int
    height: int
    mpp: float
    seed: int
    jitter: ColourJitter
    sections: tuple[Blob, ...]
    holes: tuple[Blob, ...]
    foci: tuple[Blob, ...]
    tumour_polygons: tuple[Polygon, ...] = field(compare=False)
    tissue_area: float  # px^2, sections minus holes
    n_tumour_tiles: int  # tiles of the config's grid that are >= 50 % tumour

    @property
    def tumour_area(self) -> float:
        return float(sum(p.area for p in self.tumour_polygons))

    @property
    def burden(self) -> float:
        """Tumour area / tissue area."""
        return self.tumour_area / self.tissue_area


def _tissue_geometry(sections: list[Blob], holes: list[Blob]) -> shapely.Geometry:
    tissue = shapely.union_all([s.polygon() for s in sections])
    if holes:
        tissue = tissue.difference(shapely.union_all([h.polygon() for h in holes]))
    return tissue


def count_tumour_tiles(
    polygons: list[Polygon], width: int, height: int, mpp: float, cfg: RealCohortConfig
) -> int:
    """Tiles of the ``wsipipe tile`` grid (cfg.tile_px at cfg.tile_mpp) >= 50 % tumour."""
    from wsipipe.geometry.polygons import tumour_fraction
    from wsipipe.slide.levels import tile_geometry
    from wsipipe.tile.grid import tile_grid

    grid = tile_grid(width, height, tile_geometry(mpp, [1.0], cfg.tile_mpp, cfg.tile_px))
    frac = tumour_fraction(grid.coords, grid.tile_size_level0, polygons)
    return int((frac >= 0.5).sum())


def _unit_focus(rng: np.random.Generator) -> tuple[Blob, float]:
    """An irregular focus shape of unit scale at the origin, and its polygon's area."""
    harm = _harmonics(rng, 7, 0.22, decay=0.6)
    elong = float(rng.uniform(1.0, 1.6))
    angle = float(rng.uniform(0, np.pi))
    blob = Blob(0.0, 0.0, math.sqrt(elong), 1.0 / math.sqrt(elong), angle, harm)
    return blob, float(blob.polygon().area)


def _place_foci(
    rng: np.random.Generator,
    tissue: shapely.Geometry,
    areas: list[float],
    mpp: float,
    strict: bool = True,
) -> list[Blob] | None:
    """One focus of each area (px^2), wholly inside the tissue at least 15 um from its edges
    and holes and from the other foci; None when one does not fit. ``strict=False`` (for
    narrow sections) lets a focus run over the tissue's edges and holes: only 15 um from
    the other foci is kept, and the caller clips it to the tissue.

    Centres are drawn at random in the free tissue (256 candidates); the focus's inscribed
    radius must be clear of the free region's boundary (strict), and each such centre is
    tried with four turns of the shape.
    """
    gap = 15.0 / mpp
    allowed = tissue.buffer(-gap) if strict else tissue
    foci: list[Blob] = []
    for area in areas:
        if allowed.is_empty:
            return None
        unit, unit_area = _unit_focus(rng)
        s = math.sqrt(area / unit_area)
        ring = np.asarray(unit.polygon(64).exterior.coords)
        r_min = float(np.hypot(ring[:, 0], ring[:, 1]).min()) * s  # inscribed-ish radius
        x0, y0, x1, y1 = allowed.bounds
        xs, ys = rng.uniform(x0, x1, 256), rng.uniform(y0, y1, 256)
        shapely.prepare(allowed)
        inside = shapely.contains_xy(allowed, xs, ys)
        xs, ys = xs[inside], ys[inside]
        room = shapely.distance(allowed.boundary, shapely.points(xs, ys))
        keep = room >= r_min if strict else np.ones(len(xs), bool)
        placed = None
        for x, y in zip(xs[keep], ys[keep], strict=True):
            for turn in range(4):
                angle = unit.angle + turn * np.pi / 4
                blob = Blob(float(x), float(y), unit.a * s, unit.b * s, angle, unit.harmonics)
                poly = blob.polygon()
                if allowed.contains(poly) if strict else allowed.intersects(poly):
                    placed = blob, poly
                    break
            if placed is not None:
                break
        if placed is None:
            return None
        foci.append(placed[0])
        allowed = allowed.difference(placed[1].buffer(gap))
    return foci


def make_real_layout(
    width: int, height: int, mpp: float, seed: int, tumour: bool, cfg: RealCohortConfig
) -> RealSlideLayout:
    """Draw one slide's layout from ``seed`` (see the module docstring).

    Raises ConfigError when the foci cannot meet ``cfg.min_tumour_tiles`` within the burden
    range (a slide too small for its tiles, or too little tissue).
    """
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0x2EA1])
    jitter = ColourJitter.draw(rng, cfg.colour_jitter)
    sections = _make_sections(rng, width, height, fill=_SECTION_FILL)
    holes = _make_holes(rng, sections, [], mpp)
    tissue = _tissue_geometry(sections, holes)
    tissue_area = float(tissue.area)

    def layout(foci: list[Blob], polys: list[Polygon], n_tiles: int) -> RealSlideLayout:
        return RealSlideLayout(
            width, height, mpp, int(seed) & 0xFFFFFFFF, jitter, tuple(sections), tuple(holes),
            tuple(foci), tuple(polys), tissue_area, n_tiles,
        )  # fmt: skip

    if not tumour:
        return layout([], [], 0)
    lo, hi = cfg.tumour_fraction
    target = float(rng.uniform(lo, hi))
    n = int(rng.integers(1, cfg.max_foci + 1))
    shares = np.sort(rng.dirichlet(np.ones(n)))[::-1]  # the largest focus first
    tile = cfg.tile_px * cfg.tile_mpp / mpp
    # a focus needs > half a tile's area to make a tumour tile; 0.55 leaves room for its shape
    min_first = 0.55 * tile * tile if cfg.min_tumour_tiles else 0.0
    cap = hi * tissue_area
    # Tries: 30 with the drawn foci, wholly inside the tissue; 30 with one focus, allowed
    # over edges and holes (narrow sections). Every 3 failures enlarge the largest focus.
    for attempt in range(60):
        strict = attempt < 30
        if not strict:
            shares = np.ones(1)
        areas = [float(a) for a in shares * target * tissue_area]
        grow = 1.2 ** ((attempt % 30) // 3)
        areas[0] = min(max(areas[0], min_first) * grow, cap - sum(areas[1:]))
        if areas[0] <= 0:
            break
        foci = _place_foci(rng, tissue, areas, mpp, strict)
        if foci is None:
            continue
        polys = [p for f in foci for p in _parts(f.polygon().intersection(tissue))]
        burden = sum(p.area for p in polys) / tissue_area
        if not lo <= burden <= hi + 1e-9:  # clipping took too much
            continue
        n_tiles = count_tumour_tiles(polys, width, height, mpp, cfg)
        if n_tiles >= cfg.min_tumour_tiles:
            return layout(foci, polys, n_tiles)
    raise ConfigError(
        f"slide seed {seed}: no tumour foci with >= {cfg.min_tumour_tiles} tumour tiles fit in "
        f"{tissue_area / tile**2:.0f} tiles of tissue at <= {hi:.1%} burden; use larger "
        "slides, a higher tumour_fraction or min_tumour_tiles=0"
    )


def _parts(geom: shapely.Geometry) -> list[Polygon]:
    parts = getattr(geom, "geoms", [geom])
    return [p for p in parts if isinstance(p, Polygon) and not p.is_empty]


# ------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class RealTextures:
    """Crop samplers of the normal and tumour pools at the working resolution."""

    work_mpp: float
    normal: CropSampler
    tumour: CropSampler
    sources: dict[str, list[str]]  # {"normal": [...], "tumour": [...]} paths, for cohort.json
    matched: Matched  # what appearance matching did (normal pool first)
    key: tuple[float, float, bool, bool]  # the config fields they were built for

    def check(self, cfg: RealCohortConfig) -> None:
        """Raise unless these textures were built for ``cfg``'s texture settings."""
        if self.key != _texture_key(cfg):
            raise ConfigError(
                f"textures were built for (mpp, piece_um, match_stain, match_sharpness) = "
                f"{self.key}, the config has {_texture_key(cfg)}; rebuild them with "
                "build_textures(normal, tumour, cfg)"
            )


def _texture_key(cfg: RealCohortConfig) -> tuple[float, float, bool, bool]:
    return (cfg.mpp, cfg.piece_um, cfg.match_stain, cfg.match_sharpness)


def build_textures(
    normal: list[TextureSource], tumour: list[TextureSource], cfg: RealCohortConfig
) -> RealTextures:
    """Load both pools at one working resolution (the coarsest source or cohort mpp),
    match their sharpness and stain (``cfg.match_sharpness`` / ``match_stain``; the normal
    pool is the stain reference) and index their crops."""
    if not normal or not tumour:
        raise ConfigError("a real-texture cohort needs at least one normal and one tumour source")
    work_mpp = max([cfg.mpp] + [source_mpp(s) for s in [*normal, *tumour]])
    pools = [load_pool("normal", normal, work_mpp), load_pool("tumour", tumour, work_mpp)]
    pools, matched = match_appearance(pools, cfg.match_stain, cfg.match_sharpness)
    patch = 2 * max(8, round(cfg.piece_um / work_mpp))
    return RealTextures(
        work_mpp=work_mpp,
        normal=CropSampler(pools[0], patch),
        tumour=CropSampler(pools[1], patch),
        sources={"normal": [str(s.path) for s in normal], "tumour": [str(s.path) for s in tumour]},
        matched=matched,
        key=_texture_key(cfg),
    )


def render_real_slide(
    layout: RealSlideLayout, textures: RealTextures, cfg: RealCohortConfig
) -> np.ndarray:
    """(height, width, 3) uint8 level-0 pixels of a slide: composed at the working
    resolution, then resized (bicubic) as a whole to the slide's mpp."""
    w, h, mpp = layout.width, layout.height, layout.mpp
    ratio = textures.work_mpp / mpp  # level-0 px per working px (>= 1)
    size = (max(1, round(w / ratio)), max(1, round(h / ratio)))
    scale = (w / size[0], h / size[1])
    rng = np.random.default_rng([layout.seed, 0x7E47])
    work = compose_slide(
        size, scale, layout.sections, layout.holes, layout.foci,
        textures.normal, textures.tumour, layout.jitter, rng,
        seam=cfg.seam_um / textures.work_mpp,
        tissue_edge=3.0 / mpp, focus_edge=8.0 / mpp,
    )  # fmt: skip
    if size == (w, h):
        return work
    return np.asarray(Image.fromarray(work).resize((w, h), Image.Resampling.BICUBIC))


# ---------------------------------------------------------------------------------- cohort


@dataclass(frozen=True)
class SlideStats:
    slide_id: str
    seed: int  # make_real_layout(width, height, mpp, seed, label == "tumor", cfg) redraws it
    label: str  # "tumor" | "normal"
    split: str  # "train" | "test"
    tissue_area_px: float
    tumour_area_px: float
    burden: float  # tumour / tissue area
    n_foci: int
    n_tumour_tiles: int  # >= 50 % tumour tiles on the config's tile grid


@dataclass(frozen=True)
class RealCohort:
    root: Path
    slides: tuple[Path, ...]
    labels_csv: Path  # slide_id,label,split,patient_id,path  (split: train | test)
    annotations_dir: Path  # <slide_id>.xml (ASAP) and .geojson for positive slides
    stats: tuple[SlideStats, ...]
    work_mpp: float  # resolution the texture was composed at


_TEXTURES: RealTextures | None = None  # set in each worker (and in-process) before jobs run


def _init(textures: RealTextures) -> None:
    global _TEXTURES
    _worker_init()
    _TEXTURES = textures


def _job(args: tuple[str, int, bool, RealCohortConfig]) -> RealSlideLayout:
    path, seed, positive, cfg = args
    if _TEXTURES is None:  # pragma: no cover - _init always runs first
        raise RuntimeError("real-texture worker used before its initialiser ran")
    layout = make_real_layout(cfg.width, cfg.height, cfg.mpp, seed, positive, cfg)
    pixels = render_real_slide(layout, _TEXTURES, cfg)
    write_svs(
        path, cfg.width, cfg.height, lambda x, y, w, h, _ds: pixels[y : y + h, x : x + w],
        cfg.mpp, quality=cfg.quality,
    )  # fmt: skip
    return layout


def generate_real_cohort(
    out: str | Path,
    cfg: RealCohortConfig = RealCohortConfig(),
    normal: list[TextureSource] | None = None,
    tumour: list[TextureSource] | None = None,
    real_dir: str | Path | None = None,
    workers: int | None = None,
    textures: RealTextures | None = None,
) -> RealCohort:
    """Generate ``cfg.n_slides`` real-texture slides into ``out`` (layout: module docstring).

    ``normal`` / ``tumour``: texture sources (slides or images with their mpp); each
    defaults to the shared real data in ``real_dir`` (default ``<repo>/../shared/data/real``,
    see :func:`~wsipipe.synth.real_sources.default_sources`). ``textures``: pools already
    built by :func:`build_textures` for this config (then the sources are not read again).
    Slides are rendered in ``workers`` processes (default: all cores); the output does not
    depend on it.
    """
    from wsipipe.config import atomic_write_text
    from wsipipe.labels.cohorts import LabelRow, write_labels_csv
    from wsipipe.labels.splits import stratified_split

    if textures is None:
        if normal is None or tumour is None:
            d_normal, d_tumour = default_sources(real_dir)
            normal = normal if normal is not None else [d_normal]
            tumour = tumour if tumour is not None else [d_tumour]
        textures = build_textures(list(normal), list(tumour), cfg)
    textures.check(cfg)
    root, slides_dir, ann_dir = cohort_dirs(out)
    n = cfg.n_slides
    rng = np.random.default_rng([cfg.seed, 0x2EA1C0])
    positive = np.zeros(n, bool)
    positive[rng.permutation(n)[: round(n * cfg.positive_fraction)]] = True
    ids = [f"real_{i:03d}" for i in range(n)]
    labels = ["tumor" if p else "normal" for p in positive]
    strata = dict(zip(ids, labels, strict=True))
    splits = stratified_split(strata, [("test", cfg.test_fraction)], cfg.seed)
    paths = [slides_dir / f"{sid}.svs" for sid in ids]
    jobs = [(str(paths[i]), _slide_seed(cfg.seed, i), bool(positive[i]), cfg) for i in range(n)]
    n_workers = min(n, workers if workers is not None else (os.cpu_count() or 1))
    if n_workers <= 1:
        _init(textures)
        layouts = [_job(j) for j in jobs]
    else:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(
            n_workers, mp_context=ctx, initializer=_init, initargs=(textures,)
        ) as pool:
            layouts = list(pool.map(_job, jobs))
    stats = []
    for sid, lab, lay in zip(ids, labels, layouts, strict=True):
        xml, geo = ann_dir / f"{sid}.xml", ann_dir / f"{sid}.geojson"
        if lay.tumour_polygons:
            write_asap_xml(xml, list(lay.tumour_polygons), group="Tumor")
            write_geojson_annotations(geo, list(lay.tumour_polygons), name="Tumor")
        else:  # a re-run with other labels must not leave stale annotations behind
            xml.unlink(missing_ok=True)
            geo.unlink(missing_ok=True)
        stat = SlideStats(
            sid, lay.seed, lab, splits[sid], round(lay.tissue_area, 1),
            round(lay.tumour_area, 1), round(lay.burden, 6), len(lay.foci), lay.n_tumour_tiles,
        )  # fmt: skip
        stats.append(stat)
    labels_csv = write_labels_csv(
        [LabelRow(s.slide_id, s.label, s.split, p) for s, p in zip(stats, paths, strict=True)],
        root / "labels.csv",
    )
    manifest = {
        "config": asdict(cfg),
        "work_mpp": textures.work_mpp,
        "sources": textures.sources,
        "appearance": asdict(textures.matched),
        "slides": [asdict(s) for s in stats],
    }
    atomic_write_text(root / "cohort.json", json.dumps(manifest, indent=1) + "\n")
    return RealCohort(
        root=root,
        slides=tuple(paths),
        labels_csv=labels_csv,
        annotations_dir=ann_dir,
        stats=tuple(stats),
        work_mpp=textures.work_mpp,
    )
