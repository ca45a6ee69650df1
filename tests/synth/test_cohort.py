"""generate_cohort: files, labels, stratified splits, annotations inside tissue, determinism."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import openslide
import pytest
import shapely

from wsipipe.errors import ConfigError
from wsipipe.geometry.annotations import read_annotations
from wsipipe.synth import Cohort, CohortConfig, generate_cohort, generate_slide, stratified_splits
from wsipipe.synth.layout import make_layout

TINY = CohortConfig(n_slides=4, width=2048, height=1536, seed=3)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    return generate_cohort(tmp_path_factory.mktemp("cohort"), TINY, workers=2)


def _rows(cohort: Cohort) -> list[dict[str, str]]:
    with cohort.labels_csv.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_files_and_labels(cohort: Cohort) -> None:
    root = cohort.root
    assert cohort.labels_csv == root / "labels.csv"
    assert cohort.annotations_dir == root / "annotations"
    assert [p.name for p in cohort.slides] == [f"synth_{i:03d}.svs" for i in range(4)]
    assert all(p.parent == root / "slides" and p.stat().st_size > 10_000 for p in cohort.slides)
    assert cohort.labels_csv.read_text().splitlines()[0] == "slide_id,label,split"
    rows = _rows(cohort)
    assert [r["slide_id"] for r in rows] == [p.stem for p in cohort.slides]
    assert Counter(r["label"] for r in rows) == {"tumor": 2, "normal": 2}
    assert {r["split"] for r in rows} <= {"train", "val", "test"}
    train = {r["label"] for r in rows if r["split"] == "train"}
    assert train == {"tumor", "normal"}  # both classes where possible
    # no stray temporary files
    assert sorted(p.name for p in (root / "slides").iterdir()) == [p.name for p in cohort.slides]


def test_slides_open_with_mpp(cohort: Cohort) -> None:
    for path in cohort.slides:
        with openslide.OpenSlide(str(path)) as s:
            assert s.properties["openslide.vendor"] == "aperio"
            assert float(s.properties["openslide.mpp-x"]) == pytest.approx(TINY.mpp)
            assert s.dimensions == (TINY.width, TINY.height)
            assert s.level_count == 2


def test_annotations_for_positives_inside_tissue(cohort: Cohort) -> None:
    for row, path in zip(_rows(cohort), cohort.slides, strict=True):
        xml = cohort.annotations_dir / f"{row['slide_id']}.xml"
        geo = cohort.annotations_dir / f"{row['slide_id']}.geojson"
        if row["label"] == "normal":
            assert not xml.exists() and not geo.exists()
            continue
        tumour, exclusion = read_annotations(xml)
        tumour_geo, _ = read_annotations(geo)
        assert tumour and not exclusion
        assert shapely.union_all(tumour).symmetric_difference(
            shapely.union_all(tumour_geo)
        ).area == pytest.approx(0.0, abs=1e-6)
        area = sum(p.area for p in tumour)
        assert 0.005 < area / (TINY.width * TINY.height) < 0.2
        with openslide.OpenSlide(str(path)) as s:
            for poly in tumour:
                inner = poly.buffer(-30)
                if inner.is_empty:
                    continue
                rng = np.random.default_rng(0)
                x0, y0, x1, y1 = inner.bounds
                pts = [
                    (x, y)
                    for x, y in zip(rng.uniform(x0, x1, 400), rng.uniform(y0, y1, 400), strict=True)
                    if inner.contains(shapely.Point(x, y))
                ][:20]
                assert pts
                for x, y in pts:
                    patch = np.asarray(
                        s.read_region((int(x) - 8, int(y) - 8), 0, (16, 16)).convert("RGB")
                    )
                    assert patch.mean() < 215  # stained tissue, not glass


def test_generate_slide_returns_rendered_polygons(tmp_path: Path) -> None:
    polys = generate_slide(tmp_path / "a.svs", 1024, 768, 0.5, seed=9, tumour=True, pen=False)
    lay = make_layout(1024, 768, 0.5, 9, tumour=True, pen=False)
    assert [p.wkb for p in polys] == [p.wkb for p in lay.tumour_polygons]
    assert polys and all(p.is_valid for p in polys)
    neg = generate_slide(tmp_path / "b.svs", 1024, 768, 0.5, seed=9, tumour=False, pen=True)
    assert neg == []
    assert (tmp_path / "b.svs").exists()


def test_deterministic_and_worker_independent(cohort: Cohort, tmp_path: Path) -> None:
    again = generate_cohort(tmp_path / "again", TINY, workers=1)
    assert again.labels_csv.read_bytes() == cohort.labels_csv.read_bytes()
    for a, b in zip(again.slides, cohort.slides, strict=True):
        assert _digest(a) == _digest(b)  # same bytes, hence same pixels
    for name in sorted(p.name for p in cohort.annotations_dir.iterdir()):
        assert (again.annotations_dir / name).read_bytes() == (
            cohort.annotations_dir / name
        ).read_bytes()


def test_other_seed_differs(cohort: Cohort, tmp_path: Path) -> None:
    cfg = CohortConfig(n_slides=2, width=1024, height=768, seed=4)
    other = generate_cohort(tmp_path / "other", cfg, workers=1)
    assert _digest(other.slides[0]) != _digest(cohort.slides[0])


def test_stratified_splits_default_fractions() -> None:
    labels = ["tumor"] * 6 + ["normal"] * 6
    splits = stratified_splits(labels, (0.5, 0.25, 0.25), seed=0)
    table = Counter(zip(labels, splits, strict=True))
    for cls in ("tumor", "normal"):
        assert table[(cls, "train")] == 3
        assert table[(cls, "val")] >= 1 and table[(cls, "test")] >= 1
    assert Counter(splits) == {"train": 6, "val": 3, "test": 3}
    assert stratified_splits(labels, (0.5, 0.25, 0.25), seed=0) == splits
    assert stratified_splits(labels, (0.5, 0.25, 0.25), seed=1) != splits


def test_stratified_splits_small_and_uneven() -> None:
    labels = ["tumor", "normal", "normal", "tumor"]
    splits = stratified_splits(labels, (0.5, 0.25, 0.25), seed=0)
    assert Counter(zip(labels, splits, strict=True))[("tumor", "train")] == 1
    assert Counter(zip(labels, splits, strict=True))[("normal", "train")] == 1
    # 3 per class: each class reaches every split
    labels = ["tumor"] * 3 + ["normal"] * 3
    splits = stratified_splits(labels, (0.5, 0.25, 0.25), seed=0)
    assert set(zip(labels, splits, strict=True)) == {
        (c, s) for c in ("tumor", "normal") for s in ("train", "val", "test")
    }
    # an empty split stays empty
    splits = stratified_splits(["tumor"] * 5 + ["normal"] * 7, (0.8, 0.2, 0.0), seed=0)
    assert "test" not in splits and splits.count("train") == 10


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_slides": 0}, "n_slides"),
        ({"width": 100}, "too small"),
        ({"mpp": -1.0}, "mpp"),
        ({"positive_fraction": 1.5}, "positive_fraction"),
        ({"pen_fraction": float("nan")}, "pen_fraction"),
        ({"splits": (0.5, 0.5, 0.5)}, "sum to 1"),
        ({"splits": (1.2, -0.2, 0.0)}, "non-negative"),
        ({"seed": -1}, "seed"),
        ({"tumour_fraction": (0.3, 0.1)}, "tumour_fraction"),
        ({"tumour_fraction": (0.0, 0.2)}, "tumour_fraction"),
        ({"tumour_fraction": (0.1, 0.2, 0.3)}, "tumour_fraction"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CohortConfig(**kwargs)


def test_all_positive_and_all_negative(tmp_path: Path) -> None:
    cfg = CohortConfig(n_slides=2, width=768, height=512, positive_fraction=1.0, pen_fraction=0.0)
    c = generate_cohort(tmp_path / "pos", cfg, workers=1)
    assert {r["label"] for r in _rows(c)} == {"tumor"}
    assert len(list(c.annotations_dir.glob("*.xml"))) == 2


def test_module_cli(tmp_path: Path) -> None:
    """``python -m wsipipe.synth`` is ``wsipipe synth``."""
    import subprocess
    import sys

    out = tmp_path / "cli"
    args = ["--out", str(out), "--n-slides", "2", "--width", "640", "--height", "512",
            "--workers", "1"]  # fmt: skip
    res = subprocess.run([sys.executable, "-m", "wsipipe.synth", *args], capture_output=True,
                         text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "(2 slides)" in res.stdout
    assert sorted(p.name for p in (out / "slides").iterdir()) == ["synth_000.svs", "synth_001.svs"]
    res = subprocess.run([sys.executable, "-m", "wsipipe.synth", "--out", str(out), "--mpp", "0"],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2 and "mpp" in res.stderr


def test_macro_tumour_fraction_gives_larger_burden() -> None:
    """--tumour-fraction 0.15,0.35 (the quick start's): each positive 4096 x 3072 slide holds
    well over 10 tiles' worth of tumour (256 px tiles), the default range far less."""

    def burden(fr: tuple[float, float]) -> list[float]:
        out = []
        for seed in range(12):
            lay = make_layout(4096, 3072, 0.5, seed, tumour=True, pen=False, tumour_fraction=fr)
            tissue = lay.tissue_geometry()
            tumour = shapely.union_all(lay.tumour_polygons)
            assert tumour.within(shapely.union_all([s.polygon() for s in lay.sections]).buffer(1))
            assert tumour.area / tissue.area < 0.4
            out.append(tumour.area / 256**2)
        return out

    macro, default = burden((0.15, 0.35)), burden((0.05, 0.16))
    assert min(macro) >= 8 and float(np.median(macro)) >= 12, macro
    assert float(np.median(default)) < 0.7 * float(np.median(macro)), (default, macro)


def test_synth_cli_tumour_fraction(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from wsipipe.cli import app

    out = tmp_path / "c"
    args = ["synth", "--out", str(out), "--n-slides", "2", "--width", "1024", "--height", "768"]
    res = CliRunner().invoke(app, [*args, "--tumour-fraction", "0.15,0.35"])
    assert res.exit_code == 0, res.output
    assert len(list((out / "slides").glob("*.svs"))) == 2
    res = CliRunner().invoke(app, [*args, "--tumour-fraction", "0.2"])
    assert isinstance(res.exception, ConfigError)
    assert "`tumour_fraction` must hold 2 values" in str(res.exception)
