"""Tiling throughput of ``wsipipe tile`` vs the JPEG decode ceiling, before and after, one run.

Two generated Aperio-style slides, 40000x30000 px (quick: 12000x9000), tiled to 0.5 um/px:
one scanned at 0.25 um/px (every output tile needs 2x2 source tiles decoded and reduced 2x,
then re-encoded) and one at 0.5 um/px (output tiles are the file's own tiles: the JPEG
bitstream is reused, or decoded and re-encoded with --no-reuse-jpeg).

The decode ceiling (unchanged definition) is the time to fully decode, with imagecodecs and
the same number of threads, just the source JPEG tiles that the kept output tiles cover; the
goal is tiling at >= 0.7x of that rate. The reduced path (resample="dct") does not decode
the source tiles in full, so it can pass 1.0x; the "1/2-scale decode ceiling" row shows the
rate of decoding the same tiles at 1/2 in the DCT domain and nothing else, its own limit.

Before and after are measured side by side, interleaved (each repeat runs every case once,
in a rotated order, then the ceilings), reported as best (min time) and median:

* before: resample="exact" (full decode + PIL BOX) and the chunk loop as it was (the store
  append waits for the chunk and the workers wait for the append: `_serial_chunks` below);
* after: the defaults: resample="dct" and the pipelined chunk loop of ``wsipipe.tile.run``;
* "exact, pipelined" isolates the chunk loop's share on the 0.25 um/px slide.

    python -m benchmarks.bench_tile [--quick] [--repeats N]
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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


def _render_fn(tex: np.ndarray) -> Callable[[int, int, int, int, float], np.ndarray]:
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


@dataclass(frozen=True)
class _Sources:
    """The stored level-0 JPEG tiles that a slide's kept output tiles cover, in RAM."""

    blobs: list[bytes]
    tables: bytes | None
    tile: int


def _source_tiles(path: Path, coords: np.ndarray, size0: int) -> _Sources:
    with tifffile.TiffFile(path) as tif:
        page: Any = tif.pages[0]
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
        return _Sources(blobs, page.jpegtables, tw)


def _decode_ceiling(src: _Sources, threads: int) -> tuple[float, float]:
    """(wall, CPU) seconds to fully decode the source JPEG tiles the output tiles cover."""
    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda b: imagecodecs.jpeg_decode(b, tables=src.tables), src.blobs))
    return time.perf_counter() - start, time.process_time() - cpu


def _reduced_ceiling(src: _Sources, threads: int) -> float:
    """Seconds to decode the same tiles at 1/2 in the DCT domain (what resample="dct" does)."""
    from wsipipe.slide.dctscale import decode_reduced
    from wsipipe.slide.jpeg import standalone_jpeg

    streams = [standalone_jpeg(b, src.tables, None) or b for b in src.blobs]
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda s: decode_reduced(s, 2, src.tile, src.tile), streams))
    return time.perf_counter() - start


def _serial_chunks(
    reader: Any, coords: np.ndarray, frac: np.ndarray, cfg: Any, threads: int
) -> Iterator[tuple[np.ndarray, np.ndarray, list[bytes] | None, int]]:
    """The chunk loop of wsipipe.tile.run before the pipelining (main at f62add2): each chunk
    is read and encoded, then appended, while the workers wait. "Before" runs use it."""
    from wsipipe.store import encode_tile
    from wsipipe.tile.run import CHUNK

    def one(xy: np.ndarray) -> tuple[bytes, bool]:
        x, y = int(xy[0]), int(xy[1])
        if cfg.pixels == "jpeg" and cfg.reuse_jpeg:
            raw = reader.read_encoded(x, y)
            if raw is not None:
                return raw, True
        return encode_tile(reader.read(x, y), cfg.pixels, cfg.jpeg_quality), False

    pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None
    mapper: Callable[..., Any] = pool.map if pool else map
    try:
        for start in range(0, len(coords), CHUNK):
            c, f = coords[start : start + CHUNK], frac[start : start + CHUNK]
            results = list(mapper(one, c))
            yield c, f, [r[0] for r in results], sum(r[1] for r in results)
    finally:
        if pool:
            pool.shutdown()


@contextlib.contextmanager
def _chunk_loop(serial: bool) -> Iterator[None]:
    import wsipipe.tile.run as tile_run

    current = tile_run._encoded_chunks
    if serial:
        tile_run._encoded_chunks = _serial_chunks
    try:
        yield
    finally:
        tile_run._encoded_chunks = current


@dataclass(frozen=True)
class _Case:
    scan_mpp: float
    label: str
    threads: int
    reuse: bool
    resample: str
    serial: bool


def _cases() -> list[_Case]:
    cases = []
    for threads in (1, 2):
        # with 1 thread there is no pool: the old and new chunk loops are the same code path
        cases.append(_Case(0.25, "before: exact", threads, False, "exact", threads > 1))
        if threads > 1:
            cases.append(_Case(0.25, "exact, pipelined", threads, False, "exact", False))
        cases.append(_Case(0.25, "after: dct", threads, False, "dct", False))
    for label, reuse in (("reuse", True), ("decode+encode", False)):
        for threads in (1, 2):
            if threads > 1:
                cases.append(_Case(0.5, f"before: {label}", threads, reuse, "dct", True))
            cases.append(_Case(0.5, f"after: {label}" if threads > 1 else label, threads,
                               reuse, "dct", False))  # fmt: skip
    return cases


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f} (1 min) / {five:.1f} (5 min)"


def run(quick: bool = False, repeats: int | None = None) -> list[Row]:
    from wsipipe.store import open_store
    from wsipipe.synth.svs import write_svs
    from wsipipe.tile.config import TileConfig
    from wsipipe.tile.inputs import SlideInput
    from wsipipe.tile.run import tile_slide

    repeats = repeats or (5 if quick else 3)
    width, height = (12000, 9000) if quick else (40000, 30000)
    size = f"{width}x{height}"
    tmp = Path(tempfile.mkdtemp(prefix="wsipipe-bench-tile-"))
    render = _render_fn(_texture())
    cases = _cases()
    # per run: (tiling wall s, ceiling wall s, tiling CPU s, ceiling CPU s)
    runs: dict[_Case, list[tuple[float, float, float, float]]] = {c: [] for c in cases}
    info: dict[_Case, dict[str, Any]] = {}
    per_tile_bytes: dict[_Case, float] = {}
    half: dict[int, list[float]] = {1: [], 2: []}
    load_start = _load()

    def tile_once(case: _Case, cfg: Any) -> tuple[float, float, dict[str, Any], Path]:
        work = tmp / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        with _chunk_loop(case.serial):
            t0, cpu = time.perf_counter(), time.process_time()
            _, stats = tile_slide(SlideInput("s", slides[case.scan_mpp]), cfg, work,
                                  threads=case.threads)  # fmt: skip
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu
        return wall, cpu, stats, work / "s.h5"

    try:
        slides, coords, sources = {}, {}, {}
        for scan_mpp in (0.25, 0.5):
            slides[scan_mpp] = tmp / f"slide_{scan_mpp}.svs"
            t0 = time.perf_counter()
            write_svs(slides[scan_mpp], width, height, render, mpp=scan_mpp)
            print(f"  generated {slides[scan_mpp].name} in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr)  # fmt: skip
            # the kept tiles (a coords-only run), for the ceilings measured beside each run
            probe = _Case(scan_mpp, "probe", 1, False, "dct", False)
            *_, store_path = tile_once(probe, replace(TileConfig(), pixels="none"))
            with open_store(store_path) as store:
                coords[scan_mpp] = np.asarray(store.coords)
                sources[scan_mpp] = _source_tiles(
                    slides[scan_mpp], coords[scan_mpp], store.meta.tile_size_level0
                )
        for r in range(repeats):
            k = r % len(cases)
            for case in cases[k:] + cases[:k]:
                src = sources[case.scan_mpp]
                ceiling, ceiling_cpu = _decode_ceiling(src, case.threads)  # paired, just before
                if case.scan_mpp == 0.25 and "dct" in case.label:
                    half[case.threads].append(_reduced_ceiling(src, case.threads))
                cfg = replace(TileConfig(), reuse_jpeg=case.reuse, resample=case.resample)
                secs, cpu, stats, store_path = tile_once(case, cfg)
                runs[case].append((secs, ceiling, cpu, ceiling_cpu))
                if case not in info:
                    info[case] = stats
                    with open_store(store_path) as store:
                        sample = range(0, len(store), 50)
                        total = sum(len(store.read_encoded(i)) for i in sample)
                        per_tile_bytes[case] = total / len(sample)
            print(f"  repeat {r + 1}/{repeats} done, {_load()}", file=sys.stderr)
        pixel_note = _pixel_difference(slides[0.25], coords[0.25])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_end = _load()

    rows = [Row("tile", f"{size}, {repeats} interleaved repeats", "machine load", 0, "",
                f"start: {load_start}; end: {load_end}; {os.cpu_count()} cores")]  # fmt: skip
    rows.append(Row("tile", f"{size} @ 0.25 um/px -> 0.5", "pixels dct vs exact", 0, "",
                    pixel_note))  # fmt: skip
    for scan_mpp in (0.25, 0.5):
        n_out = len(coords[scan_mpp])
        for threads in (1, 2):
            base = f"{size} @ {scan_mpp} um/px -> 0.5, {threads} thr"
            full = [run[1] for case, v in runs.items() for run in v
                    if (case.scan_mpp, case.threads) == (scan_mpp, threads)]  # fmt: skip
            ceilings = [("decode ceiling", full, "full decode of the source JPEG tiles only")]
            if scan_mpp == 0.25:
                ceilings.append(("1/2-scale decode ceiling", half[threads],
                                 "DCT-domain 1/2 decode of the same tiles only"))  # fmt: skip
            for metric, values, what in ceilings:
                med = n_out / statistics.median(values)
                rows.append(Row("tile", base, metric, n_out / min(values), "tiles/s",
                                f"{what}; median {med:,.0f}"))  # fmt: skip
            for case in cases:
                if (case.scan_mpp, case.threads) == (scan_mpp, threads):
                    rows.append(_case_row(case, size, runs[case], min(full), info[case],
                                          per_tile_bytes[case]))  # fmt: skip
    return rows


def _case_row(
    case: _Case, size: str, runs: list[tuple[float, float, float, float]], best_ceiling: float,
    stats: dict[str, Any], nbytes: float,
) -> Row:  # fmt: skip
    """tiles/s of the fastest run; ratios: best vs the best ceiling of the same slide and
    threads, the median of each run vs the ceiling measured just before it, and CPU seconds
    (ceiling / tiling: the work ratio, which the load of a shared machine moves least)."""
    n = int(stats["n_tiles"])
    secs = [r[0] for r in runs]
    paired = statistics.median(r[1] / r[0] for r in runs)
    cpu = statistics.median(r[3] / r[2] for r in runs)
    note = (
        f"{best_ceiling / min(secs):.2f}x decode ceiling best (goal >= 0.7), paired median "
        f"{paired:.2f}x, CPU-time {cpu:.2f}x; median {n / statistics.median(secs):,.0f} "
        f"tiles/s; {n} tiles; reused {stats['jpeg_reused']}; dct_factor "
        f"{stats['dct_factor']}; {nbytes:,.0f} B/tile"
    )
    case_name = f"{size} @ {case.scan_mpp} um/px -> 0.5, {case.label}, {case.threads} thr"
    return Row("tile", case_name, "tiles/s", n / min(secs), "tiles/s", note)


def _pixel_difference(path: Path, coords: np.ndarray, n: int = 200) -> str:
    """How far the reduced-scale tiles are from the exact resample on this slide (read, not
    stored: no JPEG re-encode in between)."""
    from wsipipe.slide import open_slide

    with open_slide(path) as slide:
        dct = slide.tile_reader(0.5, 256, resample="dct")
        exact = slide.tile_reader(0.5, 256, resample="exact")
        pick = coords[np.linspace(0, len(coords) - 1, min(n, len(coords))).astype(int)]
        diff = np.stack([np.abs(dct.read(x, y).astype(np.int16) - exact.read(x, y))
                         for x, y in pick])  # fmt: skip
    return (
        f"{len(pick)} tiles: mean |diff| {diff.mean():.2f}, p99 {np.percentile(diff, 99):.0f}, "
        f"max {diff.max()} grey levels"
    )


if __name__ == "__main__":
    reps = None
    if "--repeats" in sys.argv:
        reps = int(sys.argv[sys.argv.index("--repeats") + 1])
    print(format_table(run(quick="--quick" in sys.argv, repeats=reps)))
