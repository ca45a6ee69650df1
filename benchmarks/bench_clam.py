"""``wsipipe tile --coords-only`` vs CLAM's ``create_patches_fp.py``, whole process, by slide size.

    python -m benchmarks.bench_clam --clam PATH [--clam-python PY] [--repeats 3] [--quick]

CLAM is not a dependency: PATH is a checkout of github.com/mahmoodlab/CLAM and PY an
interpreter with its tiling requirements (opencv-python-headless, openslide-python, h5py,
pandas, matplotlib, tqdm, pillow; default: this one). Slides: the real CMU-1-Small-Region
(2220x2967, 0.499 um/px) and TCGA-CR-7395 (4443x3567, JPEG 2000, no mpp recorded: wsipipe
is told 0.5 with ``--mpp``) of the shared data, and generated
Aperio-style SVS at 0.5 um/px, 12000x9000 and 40000x30000 (``--quick``: not the largest).
Both tools make 256 px tiles, no overlap, from level 0 of slides scanned at ~0.5 um/px (so
the same grid): CLAM as its README runs it (``--seg --patch --stitch``: contours, coordinates,
stitched preview), wsipipe with its defaults (``--coords-only``: tissue mask, pen and QC,
coordinates, QC image). Each repeat runs both tools on every slide, the order alternating;
whole-process wall time and CPU time (children's rusage), best and median, and the tile
counts (they differ: the two tissue detectors are not the same).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import Row, format_table, timed_process

BENCH = "vs CLAM"
REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real" / "slides"
REAL_HE = REAL.parent / "tiles" / "tiatoolbox_target_image.png"


def _texture() -> np.ndarray:
    from PIL import Image

    if REAL_HE.exists():
        return np.asarray(Image.open(REAL_HE).convert("RGB"))
    rng = np.random.default_rng(0)
    base = np.array([200, 120, 170], np.float32)
    return np.clip(base + rng.normal(0, 25, (1000, 1000, 3)), 0, 255).astype(np.uint8)


def _generated(path: Path, width: int, height: int) -> Path:
    """An Aperio-style SVS at 0.5 um/px: H&E texture with a glass margin of 1/8 per side."""
    from wsipipe.synth.svs import write_svs

    tex = _texture()
    th, tw = tex.shape[:2]

    def render(x: int, y: int, w: int, h: int, ds: float) -> np.ndarray:
        gx, gy = x + np.arange(w) * ds, y + np.arange(h) * ds
        out = tex[(gy.astype(np.int64) % th)[:, None], (gx.astype(np.int64) % tw)[None, :]]
        glass = (np.abs(gx[None, :] / width - 0.5) > 0.375) | (
            np.abs(gy[:, None] / height - 0.5) > 0.375
        )
        return np.ascontiguousarray(np.where(glass[..., None], np.uint8(240), out))

    write_svs(path, width, height, render, mpp=0.5)
    return path


def _count_clam(out: Path, stem: str) -> int:
    import h5py

    h5 = out / "patches" / f"{stem}.h5"
    if not h5.exists():
        return 0
    with h5py.File(h5, "r") as f:
        return int(f["coords"].shape[0])


def _count_wsipipe(out: Path, stem: str) -> int:
    from wsipipe.store import open_store

    with open_store(out / "stores" / f"{stem}.h5") as st:
        return int(np.asarray(st.coords).shape[0])


def run(clam: Path, clam_python: str, repeats: int, quick: bool) -> list[Row]:
    tmp = Path(tempfile.mkdtemp(prefix="wsipipe-bench-clam-"))
    try:
        slides = [REAL / "CMU-1-Small-Region.svs", REAL / "tcga-cr-7395-01a-01-ts1.svs"]
        slides = [s for s in slides if s.exists()]
        sizes = [(12000, 9000)] + ([] if quick else [(40000, 30000)])
        for w, h in sizes:
            slides.append(_generated(tmp / f"gen_{w}x{h}.svs", w, h))
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        counts: dict[tuple[str, str], int] = {}
        for r in range(repeats):
            for slide in slides:
                src = tmp / "src" / slide.stem
                src.mkdir(parents=True, exist_ok=True)
                if not (src / slide.name).exists():
                    (src / slide.name).symlink_to(slide.resolve())
                tools = ["clam", "wsipipe"] if r % 2 == 0 else ["wsipipe", "clam"]
                for tool in tools:
                    out = tmp / "out" / tool
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir(parents=True)
                    if tool == "clam":
                        cmd = [clam_python, "create_patches_fp.py", "--source", str(src),
                               "--save_dir", str(out), "--patch_size", "256",
                               "--step_size", "256", "--seg", "--patch", "--stitch"]  # fmt: skip
                        times.setdefault((slide.stem, tool), []).append(timed_process(cmd, clam))
                        counts[(slide.stem, tool)] = _count_clam(out, slide.stem)
                    else:
                        cmd = [sys.executable, "-m", "wsipipe", "tile", str(slide),
                               "--out", str(out), "--coords-only", "--tile-px", "256",
                               "--mpp", "0.5"]  # fmt: skip
                        times.setdefault((slide.stem, tool), []).append(timed_process(cmd, tmp))
                        counts[(slide.stem, tool)] = _count_wsipipe(out, slide.stem)
        rows: list[Row] = []
        for slide in slides:
            c, wsp = times[(slide.stem, "clam")], times[(slide.stem, "wsipipe")]
            best_c, best_w = min(t for t, _ in c), min(t for t, _ in wsp)
            med_c = statistics.median(t for t, _ in c)
            med_w = statistics.median(t for t, _ in wsp)
            case = slide.stem
            rows += [
                Row(BENCH, case, "CLAM create_patches_fp.py wall", best_c, "s",
                    f"median {med_c:.2f} s; CPU {min(u for _, u in c):.2f} s; "
                    f"{counts[(case, 'clam')]:,} tiles"),
                Row(BENCH, case, "wsipipe tile --coords-only wall", best_w, "s",
                    f"median {med_w:.2f} s; CPU {min(u for _, u in wsp):.2f} s; "
                    f"{counts[(case, 'wsipipe')]:,} tiles"),
                Row(BENCH, case, "wsipipe speed-up over CLAM", best_c / best_w, "x",
                    f"median {med_c / med_w:.2f}x (goal > 1 on every size)"),
            ]  # fmt: skip
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_clam", description=__doc__)
    p.add_argument("--clam", required=True, type=Path, help="a checkout of mahmoodlab/CLAM")
    p.add_argument("--clam-python", default=sys.executable, help="interpreter for CLAM")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="no 40000x30000 slide")
    a = p.parse_args(argv)
    script = a.clam / "create_patches_fp.py"
    if not script.exists():
        p.error(f"--clam {a.clam}: no create_patches_fp.py there; clone mahmoodlab/CLAM")
    print(format_table(run(a.clam.resolve(), a.clam_python, a.repeats, a.quick)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
