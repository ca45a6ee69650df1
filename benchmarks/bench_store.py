"""Patch-store benchmark: size per tile, write and random-read throughput, h5 vs zarr.

Tiles are random 256 px crops (rotated/flipped) of the real H&E images in
``../shared/data/real/tiles``. Reads are random indices, single process, warm page cache;
"tiles/s" is wall clock, "tiles/CPU-s" divides by this process's CPU time (all threads), which
is the per-core figure and is robust to other load on the machine.

Targets (brief): <= 30 KB per 256 px tile at JPEG q90; random read + decode >= 2,000 tiles/s
per core.

    python -m benchmarks.bench_store            # ~10k tiles
    python -m benchmarks.bench_store --quick     # < 60 s
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from benchmarks.common import Row, format_table
from wsipipe.store import (
    FORMATS,
    STORE_SUFFIX,
    StoreMeta,
    create_store,
    decode_tile,
    encode_tile,
    open_store,
)

REAL_TILES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real" / "tiles"
H_AND_E = [
    *(f"TCGA-3X-AAVA-01Z-00-DX1_0_0_{i}_506.jpg" for i in range(6)),
    "TCGA-AD-6964-01Z-00-DX1_tile_16896_20480.jpg",
    "TCGA-AD-6964-01Z-00-DX1_tile_22016_11776.jpg",
    "TCGA-AD-6964-01Z-00-DX1_tile_23040_25088.jpg",
    "tiatoolbox_target_image.png",
    "tiles__tissue-level0-4302-10273-4814-10785.png",
    "tiles__tissue-level0-7352-11762-7864-12274.png",
    "tiles__high-nuclei-score-level0.png",
    "tiles__medium-nuclei-score-level0.png",
]
PX = 256
READ_TARGET = 2000.0
SIZE_TARGET = 30_000.0
B = "store"


def he_crops(n: int, seed: int = 0) -> list[np.ndarray]:
    """n random PX x PX crops (random 90-degree rotation and flip) of the real H&E images."""
    images = []
    for name in H_AND_E:
        path = REAL_TILES / name
        if path.exists():
            images.append(np.asarray(Image.open(path).convert("RGB")))
    images = [im for im in images if min(im.shape[:2]) >= PX]
    if not images:
        raise FileNotFoundError(f"no real H&E tiles under {REAL_TILES.resolve()}")
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        im = images[k % len(images)]
        y = int(rng.integers(0, im.shape[0] - PX + 1))
        x = int(rng.integers(0, im.shape[1] - PX + 1))
        crop = np.rot90(im[y : y + PX, x : x + PX], int(rng.integers(4)))
        out.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return out


def bench_meta(pixels: str) -> StoreMeta:
    return StoreMeta(
        slide_id="bench",
        slide_path="/bench/slide.svs",
        slide_size=1,
        slide_md5_1mb="0" * 32,
        reader="openslide",
        slide_mpp=(0.25, 0.25),
        mpp_source="file",
        target_mpp=0.5,
        tile_px=PX,
        level=0,
        downsample=1.0,
        read_px=2 * PX,
        tile_size_level0=2 * PX,
        overlap_px=0,
        pixels=pixels,
        jpeg_quality=90 if pixels == "jpeg" else None,
        wsipipe_version="bench",
        config={},
    )


def rate(fn: Callable[[int], object], items: list[int]) -> tuple[float, float]:
    """(items per wall second, items per CPU second) of fn over items."""
    fn(items[0])  # warm: opens handles, loads indexes
    w0, c0 = time.perf_counter(), time.process_time()
    for i in items:
        fn(i)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return len(items) / wall, len(items) / max(cpu, 1e-9)


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_store(path: Path, fmt: str, pixels: str, blobs: list[bytes], n: int) -> float:
    """Write n tiles (cycling through blobs) in appends of 256; returns tiles/s."""
    coords = np.stack([np.arange(n) * 512, np.zeros(n, np.int64)], axis=1)
    tf = np.ones(n, np.float32)
    t0 = time.perf_counter()
    with create_store(path, fmt, bench_meta(pixels)) as w:
        for s in range(0, n, 256):
            e = min(n, s + 256)
            w.append(coords[s:e], [blobs[i % len(blobs)] for i in range(s, e)], tf[s:e])
    return n / (time.perf_counter() - t0)


def bench_format(
    tmp: Path, fmt: str, pixels: str, blobs: list[bytes], n: int, n_reads: int
) -> list[Row]:
    rows: list[Row] = []
    tag = f"{fmt} {pixels}"
    path = tmp / f"{pixels}{STORE_SUFFIX[fmt]}"
    w_rate = write_store(path, fmt, pixels, blobs, n)
    per_tile = du(path) / n
    size_note = f"on disk, {n} tiles"
    if pixels == "jpeg":
        size_note += f"; target <= {SIZE_TARGET / 1000:.0f} KB: " + (
            "met" if per_tile <= SIZE_TARGET else "MISSED"
        )
    rows.append(Row(B, f"{tag} size", "bytes/tile", per_tile, "B", size_note))
    rows.append(Row(B, f"{tag} write", "tiles/s", w_rate, "tiles/s", "pre-encoded tiles"))
    idx = np.random.default_rng(1).integers(0, n, n_reads).tolist()
    with open_store(path) as store:
        wall, cpu = rate(store.read_tile, idx)
        note = f"{cpu:,.0f} tiles/CPU-s"
        if pixels == "jpeg":
            note += f"; target >= {READ_TARGET:,.0f}/core: " + (
                "met" if cpu >= READ_TARGET else "MISSED"
            )
        rows.append(Row(B, f"{tag} random read+decode, 1 core", "tiles/s", wall, "tiles/s", note))
        batches = [idx[j : j + 64] for j in range(0, len(idx) - 63, 64)]
        bw, bc = rate(lambda j: store.read_tiles(batches[j]), list(range(len(batches))))
        rows.append(
            Row(
                B,
                f"{tag} read_tiles(64 random), 1 core",
                "tiles/s",
                bw * 64,
                "tiles/s",
                f"{bc * 64:,.0f} tiles/CPU-s",
            )
        )
        wall, cpu = rate(store.read_encoded, idx)
        rows.append(
            Row(B, f"{tag} random read only", "tiles/s", wall, "tiles/s", f"{cpu:,.0f}/CPU-s")
        )
    with open_store(path, raw_reads=False) as slow:
        k = min(len(idx), 300 if fmt == "zarr" else 2000)
        wall, _ = rate(slow.read_encoded, idx[:k])
        lib = "h5py" if fmt == "h5" else "zarr-python"
        rows.append(
            Row(
                B,
                f"{tag} random read only via {lib}",
                "tiles/s",
                wall,
                "tiles/s",
                "raw_reads=False (fallback path), for comparison",
            )
        )
    return rows


def bench_h5_vlen(tmp: Path, blobs: list[bytes], n: int, n_reads: int) -> Row:
    """The alternative HDF5 layout: one vlen uint8 dataset, read with h5py by index."""
    path = tmp / "vlen.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("tiles", (n,), dtype=h5py.vlen_dtype(np.uint8), chunks=(256,))
        for s in range(0, n, 256):
            e = min(n, s + 256)
            arr = np.empty(e - s, dtype=object)
            arr[:] = [np.frombuffer(blobs[i % len(blobs)], np.uint8) for i in range(s, e)]
            ds[s:e] = arr
    idx = np.random.default_rng(1).integers(0, n, n_reads).tolist()
    with h5py.File(path, "r", locking=False) as f:
        ds = f["tiles"]
        wall, _ = rate(lambda i: ds[i].tobytes(), idx)
    return Row(
        B, "h5 vlen-bytes layout, read only via h5py", "tiles/s", wall, "tiles/s", "not used"
    )


def run(quick: bool = False) -> list[Row]:
    n_unique, n, n_reads, n_png = (96, 2000, 1000, 100) if quick else (512, 10_000, 5000, 400)
    try:
        crops = he_crops(n_unique)
    except FileNotFoundError as err:
        return [Row(B, "skipped", "-", 0.0, "", str(err))]
    rows: list[Row] = []

    t0 = time.perf_counter()
    jpegs = [encode_tile(c, "jpeg", 90) for c in crops]
    enc_rate = len(crops) / (time.perf_counter() - t0)
    sizes = np.array([len(j) for j in jpegs])
    rows.append(
        Row(
            B,
            "JPEG q90 encode",
            "bytes/tile",
            float(sizes.mean()),
            "B",
            f"p95 {np.percentile(sizes, 95):,.0f} B; encode {enc_rate:,.0f} tiles/s",
        )
    )
    pngs = [encode_tile(c, "png") for c in crops[:n_png]]
    t0 = time.perf_counter()
    for c in crops[:n_png]:
        encode_tile(c, "png")
    png_rate = n_png / (time.perf_counter() - t0)
    rows.append(
        Row(
            B,
            "PNG encode",
            "bytes/tile",
            float(np.mean([len(p) for p in pngs])),
            "B",
            f"encode {png_rate:,.0f} tiles/s (zlib level 1)",
        )
    )
    items = list(range(len(jpegs)))
    _, cpu = rate(lambda i: decode_tile(jpegs[i]), items * 4)
    rows.append(
        Row(B, "JPEG decode only (imagecodecs)", "tiles/CPU-s", cpu, "tiles/s", "decode ceiling")
    )
    _, cpu = rate(lambda i: np.asarray(Image.open(io.BytesIO(jpegs[i])).convert("RGB")), items * 4)
    rows.append(Row(B, "JPEG decode only (Pillow)", "tiles/CPU-s", cpu, "tiles/s", "not used"))

    with tempfile.TemporaryDirectory(prefix="wsipipe-bench-store-") as d:
        tmp = Path(d)
        for fmt in FORMATS:
            rows += bench_format(tmp, fmt, "jpeg", jpegs, n, n_reads)
            rows += bench_format(tmp, fmt, "png", pngs, n_png * 2, min(n_reads, 500))
        rows.append(bench_h5_vlen(tmp, jpegs, n, n_reads))
        rows.append(bench_guarded_write(tmp, jpegs, n))
    return rows


def bench_guarded_write(tmp: Path, blobs: list[bytes], n: int, rounds: int = 5) -> Row:
    """The HDF5 writer's GuardedFile (Python file object, survives a full disk) against
    HDF5's own POSIX driver: the same blob appends, interleaved, median of ``rounds``."""
    import statistics

    import h5py

    from wsipipe.store.guarded import GuardedFile

    def once(guarded: bool) -> float:
        path = tmp / "guarded.h5"
        t0 = time.perf_counter()
        io = GuardedFile(path) if guarded else None
        with h5py.File(io or path, "w", locking=False, rdcc_nbytes=4 << 20) as f:
            ds = f.create_dataset("tiles", (0,), maxshape=(None,), chunks=(1 << 20,),
                                  dtype=np.uint8)  # fmt: skip
            for s in range(0, n, 256):
                data = b"".join(blobs[i % len(blobs)] for i in range(s, min(n, s + 256)))
                start = ds.shape[0]
                ds.resize((start + len(data),))
                ds[start:] = np.frombuffer(data, np.uint8)
        if io is not None:
            io.close()
        rate = n / (time.perf_counter() - t0)
        path.unlink()
        return rate

    posix, guarded = [], []
    for _ in range(rounds):
        posix.append(once(False))
        guarded.append(once(True))
    ratio = statistics.median(guarded) / statistics.median(posix)
    note = (f"median {statistics.median(guarded):,.0f} vs {statistics.median(posix):,.0f} "
            f"tiles/s, {rounds} interleaved rounds of {n} tiles")  # fmt: skip
    return Row(B, "h5 write: GuardedFile / POSIX driver", "ratio", ratio, "x", note)


if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv[1:])))
