"""`wsipipe tile` end to end on real and generated slides (through the real CLI)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import shapely
from typer.testing import CliRunner

from tests.conftest import real_slide
from wsipipe.cli import app
from wsipipe.slide import open_slide
from wsipipe.store import open_store
from wsipipe.synth.svs import write_svs

runner = CliRunner()


def tile(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["tile", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def statuses(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "status").glob("*.json")}


def test_real_aperio_slide_end_to_end(tmp_path):
    slide = real_slide("CMU-1-Small-Region.svs")
    out = tmp_path / "out"
    code, text = tile(str(slide), "--out", str(out), "--tile-px", "128")
    assert code == 0, text
    store_path = out / "stores" / "CMU-1-Small-Region.h5"
    with open_store(store_path) as store:
        n = len(store)
        assert n > 20
        meta = store.meta
        assert meta.tile_px == 128 and meta.target_mpp == 0.5
        assert meta.slide_mpp[0] == pytest.approx(0.499, abs=1e-3)
        assert meta.reader == "openslide" and meta.mpp_source == "file"
        assert meta.config["tile_px"] == 128
        assert np.all(store.tissue_fraction >= 0.5)
        xy = store.coords
        assert xy.dtype == np.int64 and xy.shape == (n, 2)
        assert xy[:, 0].max() + meta.tile_size_level0 <= 2220
        assert xy[:, 1].max() + meta.tile_size_level0 <= 2967
        # Pixels read back from the store match the slide at the recorded coordinates.
        with open_slide(slide) as s:
            tr = s.tile_reader(meta.target_mpp, meta.tile_px)
            for i in np.linspace(0, n - 1, 5).astype(int):
                x, y = int(xy[i, 0]), int(xy[i, 1])
                got = store.read_tile(int(i)).astype(np.float32)
                err = np.abs(tr.read(x, y).astype(np.float32) - got).mean()
                shifted = np.abs(tr.read(x + 3, y + 3).astype(np.float32) - got).mean()
                assert err < 8.0  # JPEG q90, 4:2:0 chroma, on 20x H&E detail
                assert err < 0.6 * shifted  # and the tile sits where its coords say
    assert (out / "qc" / "CMU-1-Small-Region.png").stat().st_size > 1000
    geo = json.loads((out / "tissue" / "CMU-1-Small-Region.geojson").read_text())
    polys = [shapely.geometry.shape(f["geometry"]) for f in geo["features"]]
    assert polys and all(p.is_valid for p in polys)
    assert shapely.union_all(polys).bounds[2] <= 2220 + 1
    st = statuses(out)["CMU-1-Small-Region"]
    assert st["state"] == "done" and st["n_tiles"] == n
    assert "target_mpp: 0.5" in (out / "config.yaml").read_text()
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert rows[0]["state"] == "done"

    # A re-run skips the slide; --overwrite redoes it.
    mtime = store_path.stat().st_mtime_ns
    code, text = tile(str(slide), "--out", str(out), "--tile-px", "128")
    assert code == 0 and "1 skipped" in text
    assert store_path.stat().st_mtime_ns == mtime
    code, text = tile(str(slide), "--out", str(out), "--tile-px", "128", "--overwrite")
    assert code == 0 and "1 done" in text
    # Different settings on the same output: the slide is redone for the new settings.
    code, text = tile(str(slide), "--out", str(out), "--tile-px", "96")
    assert code == 0 and "1 done" in text
    with open_store(store_path) as store:
        assert store.meta.tile_px == 96


def test_jpeg2000_without_mpp_fails_clearly_then_works_with_override(tmp_path):
    slide = real_slide("tcga-cr-7395-01a-01-ts1.svs")
    out = tmp_path / "out"
    code, _ = tile(str(slide), "--out", str(out))
    assert code == 1
    st = statuses(out)["tcga-cr-7395-01a-01-ts1"]
    assert st["state"] == "failed"
    assert "--mpp" in st["reason"] and "tcga-cr-7395-01a-01-ts1.svs" in st["reason"]
    assert not (out / "stores").exists() or not any((out / "stores").iterdir())
    code, text = tile(str(slide), "--out", str(out), "--mpp", "0.5")
    assert code == 0, text
    with open_store(out / "stores" / "tcga-cr-7395-01a-01-ts1.h5") as store:
        assert len(store) > 10
        assert store.meta.mpp_source == "override"
        tile0 = store.read_tile(0)
        assert tile0.shape == (256, 256, 3) and tile0.std() > 5  # real content decoded


def test_per_slide_mpp_from_csv(tmp_path):
    slide = real_slide("tcga-cr-7395-01a-01-ts1.svs")
    listing = tmp_path / "slides.csv"
    listing.write_text(f"path,slide_id,mpp\n{slide},tcga_a,0.5\n")
    code, text = tile(str(listing), "--out", str(tmp_path / "out"), "--format", "zarr")
    assert code == 0, text
    with open_store(tmp_path / "out" / "stores" / "tcga_a.zarr") as store:
        assert store.meta.slide_mpp == (0.5, 0.5) and len(store) > 10


def test_bad_slides_do_not_stop_the_batch(tmp_path):
    good = real_slide("CMU-1-Small-Region.svs")
    dicom = real_slide("pathml_small_dicom.dcm")
    truncated = tmp_path / "in" / "truncated.svs"
    truncated.parent.mkdir()
    truncated.write_bytes(good.read_bytes()[:300_000])
    out = tmp_path / "out"
    code, _ = tile(str(dicom), str(truncated), str(good), "--out", str(out), "--tile-px", "128")
    assert code == 1
    st = statuses(out)
    assert st["CMU-1-Small-Region"]["state"] == "done"
    for bad, name in (("pathml_small_dicom", "pathml_small_dicom.dcm"),
                      ("truncated", "truncated.svs")):  # fmt: skip
        assert st[bad]["state"] == "failed"
        reason = st[bad]["reason"]
        assert name in reason and "\n" not in reason and "internal error" not in reason
    assert sorted(p.name for p in (out / "stores").iterdir()) == ["CMU-1-Small-Region.h5"]
    assert not any((out / ".tmp").iterdir())
    rows = {r["slide_id"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert rows["truncated"]["state"] == "failed" and rows["truncated"]["reason"]


def _blank(x: int, y: int, w: int, h: int, ds: float) -> np.ndarray:
    return np.full((h, w, 3), 242, np.uint8)


def test_slide_without_tissue_fails_with_reason(tmp_path):
    path = tmp_path / "blank.svs"
    write_svs(path, 2048, 2048, _blank, mpp=0.5)
    code, _ = tile(str(path), "--out", str(tmp_path / "out"))
    assert code == 1
    reason = statuses(tmp_path / "out")["blank"]["reason"]
    assert "no tile has" in reason and "blank.svs" in reason


def test_ome_tiff_through_tiffslide_fallback(tmp_path):
    slide = real_slide("qupath_OS-1-detail.ome.tif")
    out = tmp_path / "out"
    code, text = tile(str(slide), "--out", str(out), "--target-mpp", "0.25", "--tile-px", "128")
    assert code == 0, text
    with open_store(out / "stores" / "qupath_OS-1-detail.h5") as store:
        assert store.meta.reader == "tiffslide" and len(store) >= 4


def test_coords_only_store(tmp_path):
    slide = real_slide("CMU-1-Small-Region.svs")
    code, text = tile(str(slide), "--out", str(tmp_path), "--coords-only")
    assert code == 0, text
    with open_store(tmp_path / "stores" / "CMU-1-Small-Region.h5") as store:
        assert store.meta.pixels == "none" and len(store) > 5


def test_user_tissue_geojson_replaces_segmentation(tmp_path):
    slide = real_slide("CMU-1-Small-Region.svs")
    geo_dir = tmp_path / "tissue"
    geo_dir.mkdir()
    ring = [[0, 0], [1024, 0], [1024, 1024], [0, 1024], [0, 0]]
    square = {"type": "Feature", "properties": {},
              "geometry": {"type": "Polygon", "coordinates": [ring]}}  # fmt: skip
    (geo_dir / "CMU-1-Small-Region.geojson").write_text(json.dumps([square]))
    out = tmp_path / "out"
    code, text = tile(str(slide), "--out", str(out), "--tissue-geojson-dir", str(geo_dir))
    assert code == 0, text
    with open_store(out / "stores" / "CMU-1-Small-Region.h5") as store:
        # 0.5 um/px tiles of 256 px on a 0.499 um/px slide: ~257 level-0 px; 1024 px square
        # holds 3 x 3 whole tiles plus partial ones at >= 50 % coverage.
        assert 9 <= len(store) <= 16
        assert store.coords.max() < 1024


def test_killed_run_leaves_nothing_that_counts_as_done(tmp_path):
    path = tmp_path / "big.svs"
    from wsipipe.synth.cohort import generate_slide

    generate_slide(path, 8192, 6144, 0.25, seed=3, tumour=False, pen=False)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "wsipipe", "tile", str(path), "--out", str(out), "--pixels", "png"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / ".tmp").glob("*/*")):
        time.sleep(0.05)  # wait until the slide's store is being written
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "status" / "big.json").exists()
    assert not (out / "stores" / "big.h5").exists()
    code, text = tile(str(path), "--out", str(out), "--pixels", "png")
    assert code == 0 and "1 done" in text, text
    with open_store(out / "stores" / "big.h5") as store:
        assert len(store) > 50
    shutil.rmtree(out)


def test_store_records_the_stride_of_overlapping_tiles(tmp_path):
    slide = real_slide("CMU-1-Small-Region.svs")  # 0.499 um/px
    code, text = tile(str(slide), "--out", str(tmp_path), "--coords-only", "--tile-px", "128",
                      "--overlap-px", "32")  # fmt: skip
    assert code == 0, text
    with open_store(tmp_path / "stores" / "CMU-1-Small-Region.h5") as store:
        meta, xy = store.meta, store.coords
    assert meta.tile_size_level0 == round(128 * 0.5 / 0.499)
    assert meta.stride_level0 == round(96 * 0.5 / 0.499)
    offsets = np.unique(np.diff(np.unique(xy[:, 0])))
    assert offsets.min() == meta.stride_level0 and not (offsets % meta.stride_level0).any()
