"""`wsipipe tile` into a nearly full disk: one line per slide, the batch goes on, nothing
half-written left behind; once space is freed a re-run completes every slide.

Needs root (a small tmpfs is mounted); skipped otherwise. Runs the CLI in a subprocess: on
the unfixed code HDF5 crashed the interpreter (segfault), which must fail the test, not kill
pytest.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from wsipipe.testing.fullfs import nearly_full, skip_reason
from wsipipe.testing.slides import synthetic_rgb, write_aperio_like

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    for i in range(3):
        write_aperio_like(folder / f"s{i}.svs", synthetic_rgb(768, 768, seed=i), mpp=0.5)
    return folder


def tile(slides: Path, out: Path, fmt: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "wsipipe", "tile", str(slides), "--out", str(out),
           "--format", fmt]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "COLUMNS": "100",
        "PATH": "/usr/bin:/bin"})  # fmt: skip


def leftovers(out: Path) -> list[str]:
    """Temp files, job temp folders and locks: what a finished run must not leave."""
    found = [p for p in out.rglob(".?*.tmp")]
    found += list((out / ".tmp").glob("*")) + list((out / "locks").glob("*"))
    return sorted(str(p.relative_to(out)) for p in found)


@pytest.mark.parametrize(("fmt", "free"), [("h5", 12), ("h5", 200), ("zarr", 40)])
def test_full_disk_fails_each_slide_in_one_line(tmp_path, slides, fmt, free):
    with nearly_full(tmp_path / "mnt", free) as disk:
        out = disk / "out"
        res = tile(slides, out, fmt)
        text = res.stdout + res.stderr
        assert res.returncode == 1, text  # a failed batch, not a crash (139) or an abort
        assert "Traceback" not in text and "Segmentation" not in text, text
        assert "internal error" not in text, text
        for i in range(3):
            line = next(ln for ln in res.stdout.splitlines() if ln.startswith(f"s{i} failed:"))
            assert line.startswith(f"s{i} failed: no space left on {out}"), line
        assert "0 done, 0 skipped, 3 failed" in res.stdout, text
        assert leftovers(out) == []
        if (out / "summary.csv").exists():  # written when there was room for it
            rows = list(csv.DictReader((out / "summary.csv").open()))
            assert [r["state"] for r in rows] == ["failed"] * 3
        else:  # the last line does not point at a file that is not there
            assert "summary: not written" in res.stdout, res.stdout
        (disk / "filler").unlink()  # space freed: the same command now completes
        res = tile(slides, out, fmt)
        assert res.returncode == 0 and "3 done, 0 skipped, 0 failed" in res.stdout, res.stdout
        assert leftovers(out) == []
        suffix = ".h5" if fmt == "h5" else ".zarr"
        assert sorted(p.name for p in (out / "stores").iterdir()) == [
            f"s{i}{suffix}" for i in range(3)
        ]
