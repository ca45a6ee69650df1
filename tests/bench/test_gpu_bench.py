"""The GPU benchmark's pieces (``benchmarks/gpu``): its data (real zarr stores, cohorts
that the training loop loads, a features cache that training accepts), its records and
RESULTS.md merge, the pytest summary parser, the case order; and its smoke run end to end
(slow), every row present."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.common import Row
from benchmarks.gpu import data
from benchmarks.gpu.record import HEADING, Recorder, failure, merge_results
from benchmarks.gpu.runner import parts
from benchmarks.gpu.scan_part import gpu_jpeg_chunks
from benchmarks.gpu.settings import case_key, e2e_cases, full_settings, smoke_settings
from benchmarks.gpu.tests_part import counts, gpu_test_files
from wsipipe.store import open_store

ROOT = Path(__file__).resolve().parents[2]


# ---- data -----------------------------------------------------------------------------------
def test_stores_are_real_reused_when_complete_and_rebuilt_when_not(tmp_path: Path) -> None:
    pool, where = data.tile_pool(64, limit=8)
    assert len(pool) == 8 and all(b[:3] == b"\xff\xd8\xff" for b in pool)
    assert where.startswith("real H&E JPEG tiles from ")  # shared/data/real/tiles is here
    path = data.write_store(tmp_path, "s1", 300, pool, 64)
    with open_store(path) as st:
        assert len(st) == 300
        tiles = st.read_tiles(np.array([0, 8, 299]))
    assert tiles.shape == (3, 64, 64, 3) and np.array_equal(tiles[0], tiles[1])  # pool cycles
    mtime = (path / "zarr.json").stat().st_mtime_ns
    assert data.write_store(tmp_path, "s1", 300, pool, 64) == path  # complete: reused
    assert (path / "zarr.json").stat().st_mtime_ns == mtime
    data.write_store(tmp_path, "s1", 200, pool, 64)  # another N: rebuilt
    with open_store(path) as st:
        assert len(st) == 200
    # a store whose writer died (never marked complete) is rebuilt, not taken for done
    shutil_dead = tmp_path / "s2.zarr"
    from wsipipe.store import create_store

    w = create_store(shutil_dead, "zarr", data._meta("s2", 64))
    w.append(np.zeros((4, 2), np.int64), pool[:4], np.ones(4, np.float32))
    w.abort()
    assert data.write_store(tmp_path, "s2", 50, pool, 64) == shutil_dead
    with open_store(shutil_dead) as st:
        assert len(st) == 50
    assert not list(tmp_path.glob(".*partial*"))


def test_tile_pool_falls_back_to_synthetic_tiles() -> None:
    pool, where = data.tile_pool(600, limit=4)  # larger than every real tile here
    assert where == "synthetic H&E-like tiles (no real 600 px JPEG tiles found)"
    assert len(pool) == 4 and len(set(pool)) == 4
    from wsipipe.store.codec import decode_tile

    assert decode_tile(pool[0]).shape == (600, 600, 3)


def test_tiles_folder_without_jpegs_is_one_line_error(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--tiles", str(tmp_path), "--out",
         str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"--tiles {tmp_path}: no .jpg tiles there; give a folder of JPEG tiles (e.g. "
        "shared/data/real/tiles) or leave it out"
    ]
    assert not (tmp_path / "o").exists()


def test_batch_cohort_loads_as_one_batch_and_features_cache_is_accepted(tmp_path: Path) -> None:
    from wsipipe.train.cohort import load_cohort
    from wsipipe.train.config import load_train_config
    from wsipipe.train.features import cached_spec

    stores = tmp_path / "stores"
    pool, _ = data.tile_pool(32, limit=4)
    data.write_store(stores, "big", 120, pool, 32)
    data.write_store(stores, "small", 10, pool, 32)
    labels = data.batch_cohort(tmp_path, stores, "big", "small", 4)
    cfg = load_train_config("camelyon16-ips", {"labels": str(labels), "stores": str(stores),
                                               "batch_size": 4})  # fmt: skip
    co = load_cohort(cfg)
    assert [co.specs[i].slide_id for i in co.train] == ["big", "small_0", "small_1", "small_2"]
    assert [co.specs[i].n_tiles for i in co.train] == [120, 10, 10, 10]
    assert len(co.val) == 2 and sorted(co.labels[co.val].tolist()) == [0, 1]
    fdir = tmp_path / "features"
    data.features_cache(stores, fdir, labels, cfg, 48)
    for spec in co.specs:
        got = cached_spec(fdir, spec, cfg)
        assert got is not None and got.feature_dim == 48 and got.n_tiles == spec.n_tiles
    other = replace(cfg, encoder="resnet18")  # another extractor: the cache is not its own
    assert cached_spec(fdir, co.specs[0], other) is None


def test_jpeg_decode_chunks_match_the_store_decode(tmp_path: Path) -> None:
    """torchvision's decoder (here on the CPU; nvJPEG under ``-m gpu``) sees the same tiles."""
    pool, _ = data.tile_pool(64, limit=16)
    path = data.write_store(tmp_path, "j", 70, pool, 64)
    got = list(gpu_jpeg_chunks(str(path), 70, 32, torch.device("cpu")))
    assert [c[0].tolist() for c in got] == [list(range(0, 32)), list(range(32, 64)),
                                            list(range(64, 70))]  # fmt: skip
    tiles = torch.cat([c[1] for c in got]).permute(0, 2, 3, 1).numpy()
    with open_store(path) as st:
        ref = st.read_tiles(np.arange(70))
    diff = np.abs(tiles.astype(int) - ref.astype(int))
    assert tiles.shape == ref.shape and diff.mean() < 1.0 and np.percentile(diff, 99) <= 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nvjpeg_decode_matches_the_store_decode(tmp_path: Path) -> None:
    pool, _ = data.tile_pool(256, limit=16)
    path = data.write_store(tmp_path, "j", 40, pool, 256)
    got = list(gpu_jpeg_chunks(str(path), 40, 16, torch.device("cuda", 0)))
    assert all(t.device.type == "cuda" and t.dtype == torch.uint8 for _, t in got)
    tiles = torch.cat([t for _, t in got]).permute(0, 2, 3, 1).cpu().numpy()
    with open_store(path) as st:
        ref = st.read_tiles(np.arange(40))
    diff = np.abs(tiles.astype(int) - ref.astype(int))
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 12


# ---- records ---------------------------------------------------------------------------------
def test_recorder_keeps_rows_of_a_run_cut_off_mid_line(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    rec.start("e2e:a")
    rec.row(Row("e2e", "case a", "step time", 1.5, "s"), "e2e:a")
    rec.end("e2e:a")
    with rec.path.open("a") as fh:
        fh.write('{"row": {"benchmark": "e2e", "ca')  # killed while writing
    rec.row(failure("e2e", "case b", "timed out\nafter 3 s"), "e2e:b")
    rows = rec.rows()
    assert [r.case for r in rows] == ["case a", "case b"]
    assert rows[1].metric == "failed" and math.isnan(rows[1].value)
    assert rows[1].note == "timed out after 3 s"
    table = (tmp_path / "table.md").read_text().splitlines()
    assert table[2] == "| e2e | case a | step time | 1.5 | s |  |"
    assert table[3] == "| e2e | case b | failed | nan |  | timed out after 3 s |"


def test_merge_results_replaces_its_own_section_only(tmp_path: Path) -> None:
    res = tmp_path / "RESULTS.md"
    res.write_text("# Benchmark results\n\n## CPU\n\ncpu table\n")
    merge_results(res, f"{HEADING}\n\nrun 1\n")
    text = res.read_text()
    assert text.startswith("# Benchmark results\n\n## CPU\n\ncpu table\n")
    assert text.endswith(f"## GPU\n\n{HEADING}\n\nrun 1\n")
    res.write_text(text.replace("## GPU\n\n", "## GPU\n\nNot measured yet.\n\n### other\n\nx\n\n")
                   + "\n## Later\n\nkeep\n")  # fmt: skip
    merge_results(res, f"{HEADING}\n\nrun 2\n")
    text = res.read_text()
    assert "run 1" not in text and text.count(HEADING) == 1
    assert (
        "cpu table" in text and "### other\n\nx\n" in text and text.endswith("## Later\n\nkeep\n")
    )
    assert (
        text.index("### other") < text.index(HEADING) < text.index("run 2") < text.index("## Later")
    )


def test_pytest_summary_counts() -> None:
    out = "....s\n==== 5 passed, 2 skipped, 1531 deselected in 12.30s ====\n"
    assert counts(out) == {"passed": 5, "skipped": 2, "deselected": 1531}
    assert counts("x\n1 failed, 3 passed, 2 errors in 1.0s\n") == {
        "failed": 1, "passed": 3, "errors": 2}  # fmt: skip
    assert counts("ImportError: no module\n") == {}


def test_gpu_marked_tests_exist() -> None:
    files = gpu_test_files()
    assert {"tests/models/test_gpu.py", "tests/train/test_gpu.py",
            "tests/bench/test_gpu_bench.py"} <= set(files)  # fmt: skip


# ---- what runs -------------------------------------------------------------------------------
def test_e2e_cases_put_the_headline_first_and_cover_every_n() -> None:
    s = full_settings()
    cases = e2e_cases(s)
    assert [(c["method"], c["n"], c["ckpt"]) for c in cases[:6]] == [
        ("ips", 10_000, True), ("dbps", 10_000, True), ("ips", 250_000, True),
        ("dbps", 250_000, True), ("ips", 10_000, False), ("dbps", 10_000, False),
    ]  # fmt: skip
    on = {(c["method"], c["n"]) for c in cases if c["ckpt"]}
    assert on == {(m, n) for m in ("ips", "dbps") for n in (10_000, 50_000, 250_000)}
    assert len({case_key("e2e", c) for c in cases}) == len(cases)
    assert sum(s.shares.values()) == pytest.approx(1.0)
    assert s.with_budget(s.budget_s / 2).case_cap_s == pytest.approx(s.case_cap_s / 2)


def test_full_run_labels_its_cases_uniquely() -> None:
    """The device run's cases (ResNet-50, ViT-B/16 at its fixed 224 px, the papers'
    presets) are labelled without error, one label per case."""
    s = full_settings()
    for part in parts().values():
        labels = [part.label(s, c) for c in part.cases(s)]
        assert len(set(labels)) == len(labels)
    scan = parts()["scan"]
    assert [scan.label(s, c) for c in scan.cases(s)][1:] == [
        "resnet50 256px, I=256, N=10,000",
        "vit_base_patch16_224 224px, I=256, N=4,096",
    ]
    e2e = parts()["e2e"]
    assert e2e.label(s, e2e.cases(s)[4]) == (  # [0] is the data step
        "DBPS resnet50 256px, M=32 I=256 S=96 B=16, N=250,000 + 15 x 500, ckpt on"
    )
    feats = parts()["features"]
    assert [feats.label(s, c) for c in feats.cases(s)][1:] == [
        "IPS features F=2048 (camelyon16-ips), M=5000 I=5000 B=16, N=10,000 per slide",
        "DBPS features F=2048 (camelyon16-dbps), M=100 I=500 S=400 B=16, N=10,000 per slide",
    ]


@pytest.mark.slow
def test_time_box_ends_the_run_with_a_row_for_every_case(tmp_path: Path) -> None:
    """A budget too small for the part: cases past their box get `timed out` / `skipped`
    rows, the run ends soon after the budget, and the table still has every case."""
    out = tmp_path / "out"
    t0 = time.time()
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--smoke", "--only", "features", "--out",
         str(out), "--budget", "6"], cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    elapsed = time.time() - t0
    assert res.returncode in (0, 1), res.stderr[-2000:]
    rows = Recorder(out).rows()
    s = smoke_settings().with_budget(6)
    part = parts()["features"]
    labels = {r.case for r in rows}
    assert {part.label(s, c) for c in part.cases(s)} <= labels
    assert not {r.benchmark for r in rows} - {"features"}  # --only: nothing else ran
    for r in rows:
        if r.metric == "failed":
            assert r.note.startswith(("timed out after", "skipped: the part's time box",
                                      "child process exited")), r.note  # fmt: skip
    assert res.returncode == (1 if any(r.metric == "failed" for r in rows) else 0)
    assert elapsed < 6 + 20 + 60  # budget + the parent's grace + start-up on a busy machine


@pytest.mark.slow
def test_smoke_run_gives_every_row(tmp_path: Path) -> None:
    """``--smoke``: every part at tiny sizes on the CPU; under 2 minutes on 2 idle cores (the
    generous budget keeps it from timing out on a loaded machine)."""
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--smoke", "--out", str(out), "--budget", "900"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [Row(**json.loads(ln)["row"]) for ln in (out / "rows.jsonl").read_text().splitlines()
            if '"row"' in ln]  # fmt: skip
    assert not [r for r in rows if r.metric == "failed"]
    s = smoke_settings()
    table = (out / "table.md").read_text()
    for part in parts().values():
        for case in part.cases(s):
            assert f"| {part.name} | {part.label(s, case)} |" in table
    by = {(r.benchmark, r.metric) for r in rows}
    assert {("e2e", "step time"), ("e2e", "peak GPU allocated"), ("e2e", "peak GPU reserved"),
            ("scan", "bare encoder forward"), ("scan", "streamed scan, 1 workers"),
            ("scan", "scan, GPU JPEG decode"), ("features", "step time"),
            ("tests", "tests passed"), ("tests", "tests skipped")} <= by  # fmt: skip
    n_scan = {r.case for r in rows if r.benchmark == "scan" and r.metric.startswith("streamed")}
    assert len(n_scan) == 2  # the CNN and the ViT
    got = {r.metric: r.value for r in rows if r.benchmark == "tests"}
    # no CUDA here: every gpu-marked test is collected and skipped, none fails
    assert got["tests skipped"] >= 6 and got["tests passed"] == 0
    assert got["tests failed"] == 0 and got["tests errors"] == 0
    section = (out / "section.md").read_text()
    assert section.startswith(HEADING) and "torch " + torch.__version__ in section
    assert "Command: `python -m benchmarks.gpu --smoke" in section
