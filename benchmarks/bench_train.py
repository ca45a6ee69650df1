"""Training benchmark: throughput of `wsipipe train` (slides/s, scan tiles/s), the fraction of
the scan time the encoder is busy (data loading hidden behind compute), host peak RSS of a
training step vs tiles per slide N, and on a CUDA machine the same with ResNet-50, batch 16
slides, bf16, 256 px tiles: peak GPU memory for N = 10k, 50k, 250k (goal <= 5 GB).

    python -m benchmarks.bench_train            # full
    python -m benchmarks.bench_train --quick    # < 60 s on 2 CPU cores

Stores are built from a few dozen distinct synthetic H&E-like JPEG tiles repeated (so that a
250k-tile store is quick to write); reads and decodes are real.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Row, format_table, run_in_subprocess

BENCH = "train"
TINY = "test_resnet.r160_in1k"  # ~0.4 M parameter random-init encoder for CPU runs


# ---- synthetic stores ---------------------------------------------------------------------------
def _tile(rng: np.random.Generator, px: int, tumour: bool) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(rng.normal(0, 1, (px, px)), sigma=max(1.0, px / 64))
    base = np.array([228.0, 172.0, 198.0]) + 18 * noise[..., None] * np.array([0.3, 1.0, 0.6])
    if tumour:
        n = px * px // 90
        ys, xs = rng.integers(0, px - 3, n), rng.integers(0, px - 3, n)
        for y, x in zip(ys, xs, strict=True):
            base[y : y + 3, x : x + 3] = (95.0, 45.0, 125.0)
    return np.clip(base, 0, 255).astype(np.uint8)


def write_store(path: Path, sid: str, n: int, px: int, tumour: bool, distinct: int = 48) -> Path:
    """A store of ``n`` tiles cycling through ``distinct`` encoded tiles (10% tumour if set)."""
    from wsipipe.store import StoreMeta, create_store, encode_tile

    rng = np.random.default_rng([zlib.crc32(sid.encode()), n])
    normal = [encode_tile(_tile(rng, px, False), "jpeg") for _ in range(distinct)]
    tum = [encode_tile(_tile(rng, px, True), "jpeg") for _ in range(distinct // 4 or 1)]
    meta = StoreMeta(
        slide_id=sid, slide_path=f"/bench/{sid}.svs", slide_size=1, slide_md5_1mb="0" * 32,
        reader="openslide", slide_mpp=(0.5, 0.5), mpp_source="file", target_mpp=0.5,
        tile_px=px, level=0, downsample=1.0, read_px=px, tile_size_level0=px, overlap_px=0,
        pixels="jpeg", jpeg_quality=90, wsipipe_version="bench", config={},
    )  # fmt: skip
    step = 4096
    with create_store(path, "h5", meta) as w:
        for s in range(0, n, step):
            e = min(n, s + step)
            idx = np.arange(s, e)
            blobs = [tum[i % len(tum)] if tumour and i % 10 == 0 else normal[i % distinct]
                     for i in idx]  # fmt: skip
            coords = np.stack([idx * px, np.zeros_like(idx)], axis=1).astype(np.int64)
            w.append(coords, blobs, np.ones(e - s, dtype=np.float32))
    return path


def make_cohort(
    root: Path, big: list[int], n_small: int, px: int, n_train_small: int = 1
) -> tuple[Path, Path]:
    """Training slides: one per ``big`` N (tumour) + ``n_train_small`` small normal slides
    (symlinks to one store); validation: one small normal + one small tumour slide."""
    stores = root / "stores"
    rows = []
    for i, n in enumerate(big):
        write_store(stores / f"big{i}.h5", f"big{i}", n, px, tumour=True)
        rows.append((f"big{i}", "tumor", "train"))
    write_store(stores / "small.h5", "small", n_small, px, tumour=False)
    for i in range(n_train_small):
        (stores / f"small{i}.h5").symlink_to(stores / "small.h5")
        rows.append((f"small{i}", "normal", "train"))
    write_store(stores / "v0.h5", "v0", n_small, px, tumour=False)
    write_store(stores / "v1.h5", "v1", n_small, px, tumour=True)
    rows += [("v0", "normal", "val"), ("v1", "tumor", "val")]
    labels = root / "labels.csv"
    with labels.open("w", newline="") as fh:
        csv.writer(fh).writerows([("slide_id", "label", "split"), *rows])
    return labels, stores


# ---- throughput and encoder busy fraction --------------------------------------------------------
def bench_throughput(quick: bool, root: Path) -> list[Row]:
    import torch

    from wsipipe.train.config import load_train_config
    from wsipipe.train.inference import scan_slide
    from wsipipe.train.loop import fit, setup_run

    torch.set_num_threads(1)  # one core computes, one DataLoader worker decodes
    px, n, enc = (64, 400, TINY) if quick else (128, 2000, "resnet18")
    labels, _ = make_cohort(root, [n, n], n, px, n_train_small=2)
    cfg = load_train_config(None, {
        "labels": str(labels), "stores": str(root), "out": str(root / "run"), "encoder": enc,
        "pretrained": False, "dim": 128, "heads": 4, "dim_head": 32, "dim_inner": 256,
        "M": 16, "I": 128, "batch_size": 4, "epochs": 1, "warmup_epochs": 0, "device": "cpu",
        "workers": 1, "progress": False, "tensorboard": False, "calibrate_tiles": 256,
        "channels_last": False,
    })  # fmt: skip
    tr = setup_run(cfg)
    rec = fit(tr)[-1]
    case = f"{enc} {px}px, M=16 I=128 B=4, 1 core + 1 worker, N={n}"
    rows = [
        Row(BENCH, case, "train slides/s", rec["slides_per_s"], "slides/s"),
        Row(BENCH, case, "scan tiles/s", rec["scan_tiles_per_s"], "tiles/s"),
    ]
    # encoder busy fraction: streamed scan vs the bare encoder on the same, preloaded tiles
    model, pos = tr.model, 0
    model.eval()
    chunks = [(i.clone(), t.clone()) for i, t in tr.pipeline.stream([pos], cfg.I).slide(pos)]
    t_enc = t_scan = float("inf")
    with torch.no_grad():
        model.encoder(chunks[0][1])  # warm-up
    for _ in range(3):  # interleaved, best of 3 each
        t0 = time.perf_counter()
        with torch.no_grad():
            for _, tiles in chunks:
                model.encoder(tiles)
        t_enc = min(t_enc, time.perf_counter() - t0)
        t0 = time.perf_counter()
        scan_slide(model, tr.pipeline.stream([pos], cfg.I).slide(pos), tr.st)
        t_scan = min(t_scan, time.perf_counter() - t0)
    tr.close()
    frac = t_enc / t_scan
    rows += [
        Row(BENCH, case, "bare encoder tiles/s", n / t_enc, "tiles/s"),
        Row(BENCH, case, "streamed scan tiles/s", n / t_scan, "tiles/s"),
        Row(BENCH, case, "encoder busy fraction of scan", frac, "",
            f"goal >= 0.9 (data loading hidden); {'met' if frac >= 0.9 else 'not met'}"),
    ]  # fmt: skip
    return rows


# ---- host (and GPU) peak memory of one training step vs N ----------------------------------------
_PROBE = textwrap.dedent(
    """
    import gc, json, resource, torch
    torch.set_num_threads({threads})
    from wsipipe.train.config import load_train_config
    from wsipipe.train.loop import fit, setup_run
    cfg = load_train_config(None, {overrides!r})
    tr = setup_run(cfg)
    try:  # reset the peak RSS (VmHWM): the next reading covers the training step only
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pass
    rec = fit(tr)[-1]
    step = 0.0
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            step = int(line.split()[1]) / 1024
    del tr
    gc.collect()
    out = {{"main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "step_mb": step,
            "scan_tiles_per_s": rec["scan_tiles_per_s"], "train_s": rec["train_s"],
            "gpu_mb": rec.get("peak_gpu_mb", 0.0)}}
    print(json.dumps(out))
    """
)


def _probes(overrides: list[dict[str, Any]], threads: int, parallel: bool) -> list[dict]:
    """Run one probe subprocess per config (concurrently when ``parallel``: peak memory is
    per process, so running side by side does not change it; timings then are shared)."""
    if not parallel:
        return [run_in_subprocess(_PROBE.format(overrides=o, threads=threads), 3600)
                for o in overrides]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [
        subprocess.Popen([sys.executable, "-c", _PROBE.format(overrides=o, threads=threads)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for o in overrides
    ]  # fmt: skip
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise RuntimeError(f"benchmark subprocess failed:\n{stderr[-2000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def bench_memory_cpu(quick: bool, root: Path) -> list[Row]:
    ns = [1_000, 10_000] if quick else [1_000, 10_000, 50_000, 250_000]
    configs = []
    for n in ns:
        sub = root / f"mem{n}"
        labels, _ = make_cohort(sub, [n], 16, 32)
        configs.append({
            "labels": str(labels), "stores": str(sub), "out": str(sub / "run"), "encoder": TINY,
            "pretrained": False, "dim": 32, "heads": 2, "dim_head": 16, "dim_inner": 64,
            "M": 8, "I": 256, "batch_size": 2, "epochs": 1, "warmup_epochs": 0,
            "device": "cpu", "workers": 2, "progress": False, "tensorboard": False,
            "drop_ratio": 0.0, "calibrate_tiles": 64, "channels_last": False,
        })  # fmt: skip
    res = _probes(configs, threads=1, parallel=quick)
    rows = []
    for n, r in zip(ns, res, strict=True):
        case = f"1 step, B=2, tiny encoder 32px, N={n:,}"
        growth = (r["main_mb"] / res[0]["main_mb"] - 1) * 100
        wgrowth = (r["workers_mb"] / res[0]["workers_mb"] - 1) * 100
        sgrowth = (r["step_mb"] / res[0]["step_mb"] - 1) * 100
        rows += [
            Row(BENCH, case, "peak RSS main process", r["main_mb"], "MiB",
                f"{growth:+.1f}% vs N={ns[0]:,} (goal < 10%)"),
            Row(BENCH, case, "peak RSS main, training step only", r["step_mb"], "MiB",
                f"{sgrowth:+.1f}% vs N={ns[0]:,}"),
            Row(BENCH, case, "peak RSS per loader worker", r["workers_mb"], "MiB",
                f"{wgrowth:+.1f}% vs N={ns[0]:,}"),
        ]  # fmt: skip
        if not quick:
            rows.append(Row(BENCH, case, "scan tiles/s", r["scan_tiles_per_s"], "tiles/s"))
    return rows


def bench_memory_gpu(quick: bool, root: Path) -> list[Row]:
    """ResNet-50, batch 16 slides, bf16, 256 px, checkpointing: one step per N."""
    ns = [10_000] if quick else [10_000, 50_000, 250_000]
    rows = []
    for n in ns:
        sub = root / f"gpu{n}"
        labels, _ = make_cohort(sub, [n], 1000, 256, n_train_small=15)
        ov = {
            "labels": str(labels), "stores": str(sub), "out": str(sub / "run"),
            "encoder": "resnet50", "pretrained": False, "M": 32, "I": 512, "batch_size": 16,
            "micro_batch": 1, "epochs": 1, "warmup_epochs": 0, "device": "cuda",
            "precision": "bf16", "grad_checkpointing": True, "workers": min(6, os.cpu_count() or 1),
            "prefetch": 2, "progress": False, "tensorboard": False, "drop_ratio": 0.0,
            "calibrate_tiles": 512,
        }  # fmt: skip
        (r,) = _probes([ov], threads=4, parallel=False)
        case = f"ResNet-50 bf16 256px, M=32 I=512 B=16 (micro 1), N={n:,} + 15 x 1k"
        rows += [
            Row(BENCH, case, "peak GPU memory", r["gpu_mb"] / 1024, "GiB",
                f"goal <= 5 GB; {'met' if r['gpu_mb'] <= 5 * 1000**3 / 2**20 else 'not met'}"),
            Row(BENCH, case, "peak RSS main", r["main_mb"], "MiB"),
            Row(BENCH, case, "scan tiles/s", r["scan_tiles_per_s"], "tiles/s"),
        ]  # fmt: skip
    return rows


def run(quick: bool = False) -> list[Row]:
    import torch

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        root = Path(tmp)
        rows = bench_throughput(quick, root / "tp")
        rows += bench_memory_cpu(quick, root)
        if torch.cuda.is_available():
            rows += bench_memory_gpu(quick, root)
    return rows


if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
