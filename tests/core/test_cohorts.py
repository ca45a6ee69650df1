"""Labels CSVs for CAMELYON16 and TCGA layouts, on fake trees of empty slide files."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from wsipipe.errors import ConfigError
from wsipipe.labels.cli import labels_command
from wsipipe.labels.cohorts import (
    camelyon16_labels,
    parse_tcga_barcode,
    read_camelyon16_reference,
    tcga_labels,
)
from wsipipe.labels.splits import stratified_folds, stratified_split


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# ---- splitting ---------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    n_a=st.integers(0, 30),
    n_b=st.integers(0, 30),
    val=st.floats(0.0, 0.4),
    test=st.floats(0.0, 0.4),
    seed=st.integers(0, 10_000),
)
def test_stratified_split_properties(
    n_a: int, n_b: int, val: float, test: float, seed: int
) -> None:
    strata = {f"a{i}": "A" for i in range(n_a)} | {f"b{i}": "B" for i in range(n_b)}
    out = stratified_split(strata, [("test", test), ("val", val)], seed)
    assert set(out) == set(strata)
    for label, n in (("A", n_a), ("B", n_b)):
        got = Counter(out[k] for k, v in strata.items() if v == label)
        if n:
            assert got["train"] >= 1  # the rest split always keeps one
        if n >= 3:
            for name, frac in (("test", test), ("val", val)):
                if frac > 0:
                    assert got[name] >= 1
                    assert abs(got[name] - n * frac) <= 1.0 + 1e-9
    assert stratified_split(strata, [("test", test), ("val", val)], seed) == out


def test_stratified_split_rejects_bad_fractions() -> None:
    with pytest.raises(ConfigError, match="sum to >= 1"):
        stratified_split({"a": "x"}, [("test", 0.6), ("val", 0.5)])
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        stratified_split({"a": "x"}, [("val", -0.1)])


def test_stratified_folds_balanced_per_label() -> None:
    strata = {f"a{i}": "A" for i in range(11)} | {f"b{i}": "B" for i in range(7)}
    folds = stratified_folds(strata, 5, seed=3)
    sizes = Counter(folds.values())
    assert set(sizes) == set(range(5))
    assert max(sizes.values()) - min(sizes.values()) <= 1
    for label in ("A", "B"):
        per = Counter(f for k, f in folds.items() if strata[k] == label)
        assert max(per.values()) - min(per.values()) <= 1
    with pytest.raises(ConfigError, match=">= 2"):
        stratified_folds(strata, 1)


# ---- CAMELYON16 --------------------------------------------------------------------------


@pytest.fixture
def c16(tmp_path: Path) -> Path:
    root = tmp_path / "CAMELYON16"
    for i in range(1, 11):
        _touch(root / "training" / "normal" / f"normal_{i:03d}.tif")
    for i in range(1, 9):
        _touch(root / "training" / "tumor" / f"tumor_{i:03d}.tif")
    for i in range(1, 7):
        _touch(root / "testing" / "images" / f"test_{i:03d}.tif")
    _touch(root / "training" / "lesion_annotations" / "tumor_001.xml")
    (root / "testing" / "reference.csv").write_text(
        "Test_001,Tumor,Micro,Primary\nTest_002,Normal\nTest_003,Normal\n"
        "Test_004,Tumor,Macro,Primary\nTest_005,Normal\n"  # test_006 missing: unlabelled
    )
    return root


def test_camelyon16_labels_layout(c16: Path, tmp_path: Path) -> None:
    out = tmp_path / "work" / "labels.csv"
    result = camelyon16_labels(c16, out, val_fraction=0.2, seed=0)
    rows = {r["slide_id"]: r for r in _rows(out)}
    assert len(rows) == 24 and len(result.rows) == 24
    assert list(_rows(out)[0]) == ["slide_id", "label", "split", "patient_id", "path"]
    assert rows["normal_003"]["label"] == "normal"
    assert rows["tumor_008"]["label"] == "tumor"
    # test labels from reference.csv (case-insensitive names), missing ones unlabelled
    assert [rows[f"test_{i:03d}"]["label"] for i in range(1, 7)] == [
        "tumor", "normal", "normal", "tumor", "normal", "",
    ]  # fmt: skip
    assert {rows[f"test_{i:03d}"]["split"] for i in range(1, 7)} == {"test"}
    # validation carved from training, stratified: round(10*0.2)=2 normal, round(8*0.2)=2 tumour
    counts = result.counts()
    assert counts[("val", "normal")] == 2 and counts[("val", "tumor")] == 2
    assert counts[("train", "normal")] == 8 and counts[("train", "tumor")] == 6
    # paths relative to the CSV's folder resolve to the slide files
    for r in rows.values():
        assert (out.parent / r["path"]).resolve().is_file()
        assert Path(r["path"]).stem == r["slide_id"]


def test_camelyon16_labels_feed_tile_and_train(c16: Path, tmp_path: Path) -> None:
    """The CSV is a valid slide list for `wsipipe tile` and a valid labels CSV for training."""
    from wsipipe.labels.table import read_labels_csv, training_splits
    from wsipipe.tile.inputs import resolve_slides

    out = tmp_path / "labels.csv"
    camelyon16_labels(c16, out)
    specs = resolve_slides([str(out)])
    assert {s.slide_id for s in specs} == {r["slide_id"] for r in _rows(out)}
    assert all(s.path.resolve() == (out.parent / s.path).resolve() for s in specs)
    table = read_labels_csv(out)
    assert table.classes == ("normal", "tumor")
    train, val = training_splits(table)
    assert len(train) == 14 and len(val) == 4


def test_camelyon16_seed_and_folds(c16: Path, tmp_path: Path) -> None:
    a = camelyon16_labels(c16, tmp_path / "a.csv", seed=1)
    b = camelyon16_labels(c16, tmp_path / "b.csv", seed=1)
    c = camelyon16_labels(c16, tmp_path / "c.csv", seed=2)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert [r.split for r in a.rows] != [r.split for r in c.rows]
    assert [r.split for r in a.rows] == [r.split for r in b.rows]

    camelyon16_labels(c16, tmp_path / "f.csv", folds=3, seed=0)
    rows = _rows(tmp_path / "f.csv")
    assert "fold" in rows[0]
    for r in rows:
        if r["split"] == "test":
            assert r["fold"] == ""
        else:
            assert r["fold"] in {"0", "1", "2"}
            assert (r["split"] == "val") == (r["fold"] == "0")
    per_fold = Counter(r["fold"] for r in rows if r["split"] != "test")
    assert sorted(per_fold.values()) == [6, 6, 6]


def test_camelyon16_exclude_and_errors(c16: Path, tmp_path: Path) -> None:
    res = camelyon16_labels(c16, tmp_path / "x.csv", exclude=["Test_002", "normal_001"])
    ids = {r.slide_id for r in res.rows}
    assert "test_002" not in ids and "normal_001" not in ids and len(ids) == 22
    with pytest.raises(ConfigError, match="no training/ folder"):
        camelyon16_labels(tmp_path / "nowhere", tmp_path / "y.csv")
    bad = tmp_path / "ref.csv"
    bad.write_text("Test_001,Tumor\nTest_002,maybe\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_camelyon16_reference(bad)
    header = tmp_path / "ref2.csv"
    header.write_text("image,class\ntest_001.tif,tumor\n")
    assert read_camelyon16_reference(header) == {"test_001": "tumor"}


# ---- TCGA --------------------------------------------------------------------------------

UUID = "d4ff32cd-38cf-40ea-8213-45c2b100ac01"


def test_parse_tcga_barcode() -> None:
    b = parse_tcga_barcode(f"TCGA-05-4244-01Z-00-DX1.{UUID}.svs")
    assert (b.patient_id, b.sample_type, b.slide_type, b.is_tumour) == (
        "TCGA-05-4244", 1, "DX", True,
    )  # fmt: skip
    n = parse_tcga_barcode("tcga-ab-12cd-11A-01-TS1.x.svs")
    assert (n.patient_id, n.sample_type, n.slide_type, n.is_tumour) == (
        "TCGA-AB-12CD", 11, "TS", False,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="not a TCGA barcode"):
        parse_tcga_barcode("slide_001.svs")


def _tcga_tree(root: Path, project: str, n_patients: int, offset: int) -> list[Path]:
    """GDC-like download: <project>/<file uuid>/<barcode>.<uuid>.svs, 1-3 slides per patient."""
    files = []
    for i in range(n_patients):
        patient = f"TCGA-{offset + i:02d}-{1000 + i:04d}"
        kinds = ["01Z-00-DX1", "01Z-00-DX2", "01A-01-TS1"][: 1 + i % 3]
        for j, kind in enumerate(kinds):
            name = f"{patient}-{kind}.{i:08d}-{j:04d}-aaaa-bbbb-cccccccccccc.svs"
            files.append(_touch(root / f"TCGA-{project}" / f"uuid{offset + i}{j}" / name))
    return files


def test_tcga_folder_labels_patient_level_splits(tmp_path: Path) -> None:
    _tcga_tree(tmp_path, "LUAD", 20, 10)
    _tcga_tree(tmp_path, "LUSC", 16, 50)
    out = tmp_path / "labels.csv"
    for seed in range(5):
        res = tcga_labels(
            [tmp_path / "TCGA-LUAD", tmp_path / "TCGA-LUSC"], out, seed=seed,
            val_fraction=0.2, test_fraction=0.2,
        )  # fmt: skip
        rows = _rows(out)
        assert len(rows) == len(res.rows) == 39 + 31  # 1-3 slides per patient
        splits: dict[str, set[str]] = defaultdict(set)
        for r in rows:
            assert r["patient_id"] == r["slide_id"][:12]
            splits[r["patient_id"]].add(r["split"])
        assert all(len(s) == 1 for s in splits.values()), "a patient is in two splits"
        labels = Counter((r["split"], r["label"]) for r in rows)
        for split in ("train", "val", "test"):
            assert labels[(split, "LUAD")] > 0 and labels[(split, "LUSC")] > 0
        pts = Counter(next(iter(s)) for s in splits.values())
        assert pts["test"] == round(20 * 0.2) + round(16 * 0.2)
        assert pts["val"] == round(20 * 0.2) + round(16 * 0.2)


def test_tcga_filters_and_folds(tmp_path: Path) -> None:
    _tcga_tree(tmp_path, "LUAD", 9, 10)
    _tcga_tree(tmp_path, "LUSC", 9, 50)
    dirs = [tmp_path / "TCGA-LUAD", tmp_path / "TCGA-LUSC"]
    res = tcga_labels(dirs, tmp_path / "dx.csv", diagnostic_only=True)
    assert res.rows and all("-DX" in r.slide_id for r in res.rows)
    res = tcga_labels(dirs, tmp_path / "f.csv", folds=3, test_fraction=0.2, seed=4)
    fold_of: dict[str, set[str]] = defaultdict(set)
    for r in _rows(tmp_path / "f.csv"):
        fold_of[r["patient_id"]].add(r["fold"])
        if r["split"] == "test":
            assert r["fold"] == ""
        else:
            assert (r["split"] == "val") == (r["fold"] == "0")
    assert all(len(f) == 1 for f in fold_of.values())
    folds = Counter(next(iter(f)) for f in fold_of.values() if f != {""})
    assert set(folds) == {"0", "1", "2"} and max(folds.values()) - min(folds.values()) <= 1


def test_tcga_label_map_by_patient_and_slide(tmp_path: Path) -> None:
    files = _tcga_tree(tmp_path, "ALL", 8, 20)
    patients = sorted({f.name[:12] for f in files})
    clinical = tmp_path / "clinical.csv"
    clinical.write_text(
        "case_submitter_id,project_id\n"
        + "".join(f"{p},{'TCGA-KIRC' if k % 2 else 'TCGA-KIRP'}\n" for k, p in enumerate(patients))
    )
    res = tcga_labels(
        [tmp_path / "TCGA-ALL"], tmp_path / "l.csv", clinical, label_column="project_id",
        val_fraction=0.25, test_fraction=0.25,
    )  # fmt: skip
    want = {p: ("TCGA-KIRC" if k % 2 else "TCGA-KIRP") for k, p in enumerate(patients)}
    assert all(r.label == want[r.patient_id] for r in res.rows)
    # the same table as GDC's tab-separated clinical.tsv
    tsv = tmp_path / "clinical.tsv"
    tsv.write_text(clinical.read_text().replace(",", "\t"))
    res2 = tcga_labels([tmp_path / "TCGA-ALL"], tmp_path / "t.csv", tsv, label_column="project_id")
    assert [r.label for r in res2.rows] == [r.label for r in res.rows]

    # slide-level map keyed by the barcode without the uuid; one slide left out -> error
    by_slide = tmp_path / "slides.csv"
    stems = sorted(f.name.split(".")[0] for f in files)
    by_slide.write_text(
        "slide_id,label\n" + "".join(f"{s},x{i % 2}\n" for i, s in enumerate(stems[1:]))
    )
    with pytest.raises(ConfigError, match="1 slide\\(s\\) have no label"):
        tcga_labels([tmp_path / "TCGA-ALL"], tmp_path / "s.csv", by_slide)
    res = tcga_labels([tmp_path / "TCGA-ALL"], tmp_path / "s.csv", by_slide, skip_unlabelled=True)
    assert len(res.rows) == len(files) - 1


def test_tcga_errors(tmp_path: Path) -> None:
    _touch(tmp_path / "odd" / "slide_001.svs")
    with pytest.raises(ConfigError, match="not a TCGA barcode"):
        tcga_labels([tmp_path / "odd"], tmp_path / "l.csv")
    with pytest.raises(ConfigError, match="no such slide file"):
        tcga_labels([tmp_path / "missing"], tmp_path / "l.csv")
    _touch(tmp_path / "TCGA-ONE" / f"TCGA-AA-0001-01Z-00-DX1.{UUID}.svs")
    with pytest.raises(ConfigError, match="one folder per class"):
        tcga_labels([tmp_path / "TCGA-ONE"], tmp_path / "l.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no slide files"):
        tcga_labels([tmp_path / "empty"], tmp_path / "l.csv")


# ---- CLI ---------------------------------------------------------------------------------


def test_labels_command(c16: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command("labels")(labels_command)
    app.command("noop")(lambda: None)  # keep `labels` a sub-command
    runner = CliRunner()
    out = tmp_path / "cli.csv"
    res = runner.invoke(app, ["labels", "camelyon16", str(c16), "--out", str(out), "--folds", "2"])
    assert res.exit_code == 0, res.output
    assert "test" in res.output and len(_rows(out)) == 24
    assert {r["fold"] for r in _rows(out)} == {"0", "1", ""}
    res = runner.invoke(app, ["labels", "gtex", str(c16), "--out", str(out)])
    assert isinstance(res.exception, ConfigError) and "camelyon16, tcga" in str(res.exception)
