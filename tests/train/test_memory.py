"""Host peak RSS of a training step is flat in the number of tiles per slide (subprocess)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.train.synthstores import write_store

REPO = Path(__file__).resolve().parents[2]
PX = 32


def _cohort(root: Path, n: int) -> tuple[Path, Path]:
    stores = root / "stores"
    rows = []
    for sid, tiles, label, split in (
        ("big", n, "tumor", "train"),
        ("small", 16, "normal", "train"),
        ("v0", 16, "normal", "val"),
        ("v1", 16, "tumor", "val"),
    ):
        write_store(
            stores / f"{sid}.h5",
            sid,
            tiles,
            tiles // 10 if label == "tumor" else 0,
            seed=len(sid) + tiles,
            px=PX,
            chunk=2048,
        )
        rows.append((sid, label, split))
    labels = root / "labels.csv"
    with labels.open("w", newline="") as fh:
        csv.writer(fh).writerows([("slide_id", "label", "split"), *rows])
    return labels, stores


def _probe(roots_ns: list[tuple[Path, int]], workers: int) -> list[dict[str, float]]:
    """Run the probes concurrently (each is single-threaded), one subprocess per N."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for root, n in roots_ns:
        labels, stores = _cohort(root, n)
        cmd = [
            sys.executable,
            "-m",
            "tests.train.rss_probe",
            str(labels),
            str(stores),
            str(root / "run"),
            str(workers),
        ]
        procs.append(
            subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def test_peak_rss_flat_1k_to_32k(tmp_path: Path) -> None:
    small, big = 1000, 32000
    a, b = _probe([(tmp_path / "a", small), (tmp_path / "b", big)], workers=2)
    assert b["tiles"] >= big > a["tiles"]  # the big slide really was scanned
    raw_mb = big * PX * PX * 3 / 2**20  # the big slide's decoded tiles, if they were all held
    # main process (lifetime peak, and peak during the training step alone); loader workers
    for key in ("main_mb", "step_mb", "workers_mb"):
        growth = b[key] - a[key]
        assert growth < 0.10 * a[key], (key, a, b)
        assert growth < 0.25 * raw_mb, (key, a, b, raw_mb)
