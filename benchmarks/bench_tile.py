"""Tiling throughput of ``wsipipe tile`` vs the JPEG decode ceiling, measured in one run.

Two generated Aperio-style slides, 40000x30000 px (quick: 12000x9000), tiled to 0.5 um/px:
one scanned at 0.25 um/px (every output tile needs 2x2 source tiles decoded, resized and
re-encoded) and one at 0.5 um/px (output tiles are the file's own tiles: the JPEG bitstream
is reused, or decoded and re-encoded with --no-reuse-jpeg). The decode ceiling decodes just
the source JPEG tiles that the kept output tiles need, with the same number of threads.

    python -m benchmarks.bench_tile [--quick]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from benchmarks.common import Row, format_table

REAL_HE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real" / "tiles"


def _texture() -> np.ndarray:
    """A 1000x1000 H&E texture (real image when the shared data is present)."""
    path = REAL_HE / "tiatoolbox_target_image.png"
    if path.exists():
        return np.asarray(Image.open(path).convert("RGB"))
    rng = np.random.default_rng(0)
    base = np.array([200, 120, 170], np.float32)
    return np.clip(base + rng.normal(0, 25, (1000, 1000, 3)), 0, 255).astype(np.uint8)


def _render_fn(tex: np.ndarray):
    th, tw = tex.shape[:2]

    def render(x: int, y: int, w: int, h: int, ds: float) -> np.ndarray:
        # Tissue everywhere but a 1000 px margin of glass; texture sampled at the downsample.
        ys = ((y + np.arange(h) * ds).astype(np.int64)) % th
        xs = ((x + np.arange(w) * ds).astype(np.int64)) % tw
        out = tex[ys[:, None], xs[None, :]]
        gx = x + np.arange(w) * ds
        gy = y + np.arange(h) * ds
        glass = (gx[None, :] < 1000) | (gy[:, None] < 1000)
        out = np.where(glass[..., None], np.uint8(240), out)
        return np.ascontiguousarray(out)

    return render


def _decode_ceiling(path: Path, coords: np.ndarray, size0: int, threads: int) -> float:
    """Seconds to decode the level-0 source JPEG tiles that the output tiles cover."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tw = page.tilewidth
        across = (page.imagewidth + tw - 1) // tw
        needed: set[int] = set()
        for x, y in coords:
            for ty in range(int(y) // tw, (int(y) + size0 - 1) // tw + 1):
                for tx in range(int(x) // tw, (int(x) + size0 - 1) // tw + 1):
                    needed.add(ty * across + tx)
        fh = tif.filehandle
        blobs = []
        for i in sorted(needed):
            fh.seek(page.dataoffsets[i])
            blobs.append(fh.read(page.databytecounts[i]))
        tables = page.jpegtables
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda b: imagecodecs.jpeg_decode(b, tables=tables), blobs))
    return time.perf_counter() - start


def run(quick: bool = False) -> list[Row]:
    from wsipipe.synth.svs import write_svs
    from wsipipe.tile.config import TileConfig
    from wsipipe.tile.inputs import SlideInput
    from wsipipe.tile.run import tile_slide

    width, height = (12000, 9000) if quick else (40000, 30000)
    tmp = Path(tempfile.mkdtemp(prefix="wsipipe-bench-tile-"))
    rows: list[Row] = []
    render = _render_fn(_texture())
    try:
        for scan_mpp in (0.25, 0.5):
            slide = tmp / f"slide_{scan_mpp}.svs"
            t0 = time.perf_counter()
            write_svs(slide, width, height, render, mpp=scan_mpp)
            gen_s = time.perf_counter() - t0
            print(f"  generated {slide.name} in {gen_s:.0f} s", file=sys.stderr)
            cases = [("reuse", True)] if scan_mpp == 0.5 else []
            cases.append(("decode+encode", False))
            for label, reuse in cases:
                for threads in (1, 2):
                    cfg = replace(TileConfig(), reuse_jpeg=reuse)
                    work = tmp / f"work_{scan_mpp}_{label}_{threads}"
                    work.mkdir()
                    t0 = time.perf_counter()
                    _, info = tile_slide(SlideInput("s", slide), cfg, work, threads=threads)
                    secs = time.perf_counter() - t0
                    n = int(info["n_tiles"])
                    from wsipipe.store import open_store

                    with open_store(work / "s.h5") as store:
                        coords = store.coords
                        size0 = store.meta.tile_size_level0
                        nbytes = sum(len(store.read_encoded(i)) for i in range(0, n, 50))
                        bytes_per_tile = nbytes / len(range(0, n, 50))
                    ceiling = _decode_ceiling(slide, coords, size0, threads)
                    case = f"{width}x{height} @ {scan_mpp} um/px -> 0.5, {label}, {threads} thr"
                    ratio = (n / secs) / (n / ceiling)
                    rows += [
                        Row("tile", case, "tiles/s", n / secs, "tiles/s",
                            f"{ratio:.2f}x decode ceiling (goal >= 0.7); {n} tiles; "
                            f"reused {info['jpeg_reused']}"),
                        Row("tile", case, "decode ceiling", n / ceiling, "tiles/s",
                            "decode of the source JPEG tiles only"),
                        Row("tile", case, "bytes/tile", bytes_per_tile, "B", "goal <= 30 KB"),
                    ]  # fmt: skip
                    shutil.rmtree(work)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
