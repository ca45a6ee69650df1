"""Scan benchmark: IPS / DBPS scan throughput against the bare encoder, scan memory vs N,
gradient-step time and memory vs M (fp32 / bf16 autocast, with / without checkpointing),
and, on a CUDA machine, the same with a ResNet-50 and batch 16 slides (peak GPU memory).

    python -m benchmarks.bench_scan            # full
    python -m benchmarks.bench_scan --quick    # < 60 s on 2 CPU cores
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator

import torch

from benchmarks.common import Row, format_table
from wsipipe.encoders import create_encoder
from wsipipe.models import (
    AggregatorConfig,
    CrossAttentionAggregator,
    FeatureEncoder,
    TaskSpec,
    dbps_scan,
    gradient_pass,
    ips_scan,
)
from wsipipe.models.selection import Chunk

BENCH = "scan"


def _agg(
    dim: int, heads: int = 8, dim_head: int = 64, inner: int = 2048
) -> CrossAttentionAggregator:
    cfg = AggregatorConfig(
        dim=dim, heads=heads, dim_head=dim_head, dim_inner=inner, tasks=(TaskSpec("label", 2),)
    )
    return CrossAttentionAggregator(cfg)


def _chunks(x: torch.Tensor, size: int) -> list[Chunk]:
    idx = torch.arange(x.shape[0])
    return [(idx[s : s + size], x[s : s + size]) for s in range(0, x.shape[0], size)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(
    fn: Callable[[], object], device: torch.device, reps: int, warmup: bool = True
) -> float:
    """Best wall time of ``reps`` calls (after one warm-up call), in seconds."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _encode_only(
    enc: torch.nn.Module, chunks: list[Chunk], device: torch.device, amp: torch.dtype | None = None
) -> None:
    """The ceiling: no-grad eval-mode encoder forward over the same chunks."""
    enc.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for _, x in chunks:
            enc(x.to(device, non_blocking=True))


def _throughput_rows(
    label: str,
    enc: torch.nn.Module,
    agg: CrossAttentionAggregator,
    tiles: torch.Tensor,
    size: int,
    device: torch.device,
    reps: int,
    amp: torch.dtype | None = None,
    ips_m: int | None = None,
    dbps_ms: tuple[int, int] | None = None,
) -> list[Row]:
    """tiles/s of the bare encoder and of the IPS (M=ips_m) / DBPS (M, S = dbps_ms) scans
    over the same chunks of ``size`` tiles, in the same run, interleaved (best of reps)."""
    chunks = _chunks(tiles, size)
    n = tiles.shape[0]
    enc.to(device)
    agg.to(device)
    work: dict[str, Callable[[], object]] = {
        "encoder forward only": lambda: _encode_only(enc, chunks, device, amp)
    }
    if ips_m is not None:
        work[f"IPS scan M={ips_m}"] = lambda: ips_scan(
            enc, agg, chunks, M=ips_m, device=device, amp_dtype=amp
        )
    if dbps_ms is not None:
        m, s = dbps_ms
        work[f"DBPS scan M={m} S={s}"] = lambda: dbps_scan(
            enc, agg, chunks, M=m, S=s, device=device, amp_dtype=amp
        )
    best = dict.fromkeys(work, float("inf"))
    for fn in work.values():  # warm-up
        fn()
    for _ in range(reps):  # interleaved so that load changes hit all alike
        for key, fn in work.items():
            best[key] = min(best[key], _best_time(fn, device, 1, warmup=False))
    t_enc = best["encoder forward only"]
    rows = []
    for key, t in best.items():
        note = (
            ""
            if key.startswith("encoder")
            else (f"{t_enc / t:.3f}x of encoder forward (goal >= 0.95)")
        )
        rows.append(Row(BENCH, f"{label}, N={n} I={size}: {key}", "tiles/s", n / t, "", note))
    return rows


# -- scan peak host memory vs N (fresh interpreter per N) -----------------------------------
_MEM_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    import torch
    from torch import nn
    from wsipipe.models import (AggregatorConfig, CrossAttentionAggregator, PatchEncoder,
                                TaskSpec, dbps_scan)
    torch.set_num_threads(1)
    N, M, S, I = int(sys.argv[1]), 64, 64, 256
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 8, stride=8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten())
    enc = PatchEncoder(net, 16, out_dim=256)
    agg = CrossAttentionAggregator(AggregatorConfig(dim=256, heads=8, dim_head=32,
                                                    dim_inner=512, tasks=(TaskSpec("y", 2),)))
    def chunks():
        g = torch.Generator().manual_seed(1)
        for s in range(0, N, I):
            k = min(I, N - s)
            yield torch.arange(s, s + k), torch.randint(0, 256, (k, 3, 64, 64),
                                                        dtype=torch.uint8, generator=g)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    dbps_scan(enc, agg, chunks(), M=M, S=S)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"base": base, "peak": peak, "sec": dt}))
    """
)


def _memory_rows(sizes: tuple[int, ...]) -> list[Row]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS="1")
    procs = {
        n: subprocess.Popen(
            [sys.executable, "-c", _MEM_SCRIPT, str(n)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in sizes
    }
    res = {}
    for n, p in procs.items():
        out, err = p.communicate(timeout=1200)
        if p.returncode != 0:
            raise RuntimeError(f"memory probe N={n} failed:\n{err[-2000:]}")
        res[n] = json.loads(out.strip().splitlines()[-1])
    first = sizes[0]
    rows = []
    for n in sizes:
        peak, inc = res[n]["peak"], res[n]["peak"] - res[n]["base"]
        growth = 100 * (peak / res[first]["peak"] - 1)
        rows.append(
            Row(
                BENCH,
                f"DBPS scan M=64 S=64 I=256 D=256, 64px tiles, N={n}",
                "peak RSS",
                peak,
                "MiB",
                f"scan's own {inc:.1f} MiB; {growth:+.1f}% vs N={first} (goal < 10%)",
            )
        )
    return rows


# -- gradient step --------------------------------------------------------------------------
class _HostPeak:
    """Peak host RSS above a baseline for one workload, in-process (Linux): glibc is asked to
    mmap large blocks (so frees return memory) and the kernel's high-water mark is reset."""

    def __init__(self) -> None:
        self.ok = False
        try:
            self.libc = ctypes.CDLL("libc.so.6")
            self.libc.mallopt(-3, 131072)  # M_MMAP_THRESHOLD: fixed, no dynamic growth
            self._reset()
            self.ok = True
        except OSError:
            pass

    @staticmethod
    def _status(key: str) -> float:
        with open("/proc/self/status") as f:
            match = re.search(rf"{key}:\s+(\d+) kB", f.read())
        return int(match.group(1)) / 1024 if match else float("nan")

    def _reset(self) -> float:
        self.libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        return self._status("VmRSS")

    def measure(self, fn: Callable[[], object]) -> float:
        """MiB of host memory ``fn`` needed above what was resident before it (nan if n/a)."""
        if not self.ok:
            fn()
            return float("nan")
        base = self._reset()
        fn()
        return self._status("VmHWM") - base


def _grad_case(
    enc: torch.nn.Module,
    agg: CrossAttentionAggregator,
    tiles: torch.Tensor,
    amp: torch.dtype | None,
    device: torch.device,
    reps: int,
    host: _HostPeak,
) -> tuple[float, float]:
    """One configuration: (step time s, peak memory MiB of one step: all GPU memory allocated
    on CUDA, host RSS above the pre-step level on CPU)."""
    params = [*enc.parameters(), *agg.parameters()]
    opt = torch.optim.SGD(params, lr=1e-4)
    target = torch.zeros(tiles.shape[0], dtype=torch.int64, device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=False)  # gradients stay allocated: peak = activations
        out = gradient_pass(enc, agg, tiles, amp_dtype=amp)
        torch.nn.functional.cross_entropy(out["label"], target).backward()
        opt.step()

    step()  # warm-up (allocates the gradients)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20  # all: weights included
    else:
        peak = host.measure(step)
    t = _best_time(step, device, reps, warmup=False)
    opt.zero_grad(set_to_none=True)
    return t, peak


def _grad_rows(
    name: str, px: int, ms: tuple[int, ...], batch: int, device: torch.device, reps: int
) -> list[Row]:
    """Gradient step (gradient pass + backward + SGD step) on B x M tiles, fp32/bf16 autocast,
    with and without gradient checkpointing of the encoder."""
    rows = []
    host = _HostPeak()
    agg = _agg(dim=512).to(device).train()
    for ckpt in (False, True):
        torch.manual_seed(0)
        enc = create_encoder(name, out_dim=512, grad_checkpointing=ckpt).to(device).train()
        for amp in (None, torch.bfloat16):
            for m in ms:
                tiles = torch.randint(0, 256, (batch, m, 3, px, px), dtype=torch.uint8)
                if device.type == "cuda":
                    tiles = tiles.pin_memory()
                case = (
                    f"{name} {px}px, B={batch} x M={m}, "
                    f"{'bf16' if amp else 'fp32'}, ckpt {'on' if ckpt else 'off'}"
                )
                try:
                    t, peak = _grad_case(enc, agg, tiles, amp, device, reps, host)
                except torch.cuda.OutOfMemoryError:
                    rows.append(Row(BENCH, case, "grad step", float("nan"), "", "out of memory"))
                    torch.cuda.empty_cache()
                    continue
                rows.append(
                    Row(BENCH, case, "grad step time", t, "s", f"{batch * m / t:.0f} tiles/s")
                )
                where = (
                    "GPU max allocated: weights + grads + activations"
                    if device.type == "cuda"
                    else "host RSS above the pre-step level (weights, grads excluded)"
                )
                rows.append(Row(BENCH, case, "step peak memory", peak, "MiB", where))
    return rows


def _gpu_rows(quick: bool) -> list[Row]:
    """ResNet-50, 224 px tiles, bf16; only on a CUDA machine."""
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    rows: list[Row] = []
    torch.manual_seed(0)
    enc = create_encoder("resnet50", out_dim=512, channels_last=True).to(dev)
    agg = _agg(dim=512).to(dev)
    n, size = (2048, 256) if quick else (16384, 512)
    tiles = torch.randint(0, 256, (n, 3, 224, 224), dtype=torch.uint8).pin_memory()
    label, bf16 = "resnet50 224px bf16 cuda", torch.bfloat16
    rows += _throughput_rows(label, enc, agg, tiles, size, dev, 2, bf16, 64, (64, 64))
    # scan peak GPU memory vs N: the same pinned chunk re-sent (content irrelevant)
    chunk = tiles[:size]
    for total in (4096, 16384) if quick else (4096, 16384, 65536):

        def gen(total: int = total) -> Iterator[Chunk]:
            for s in range(0, total, size):
                yield torch.arange(s, s + size), chunk

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        dbps_scan(enc, agg, gen(), M=64, S=64, amp_dtype=torch.bfloat16)
        rows.append(
            Row(
                BENCH,
                f"DBPS scan resnet50 bf16 cuda, I={size}, N={total}",
                "peak GPU memory",
                torch.cuda.max_memory_allocated(dev) / 2**30,
                "GiB",
            )
        )
    del tiles
    rows += _grad_rows(
        "resnet50", 224, (4, 8) if quick else (4, 8, 16, 32), batch=16, device=dev, reps=2
    )
    return rows


def _cpu_rows(quick: bool, threads: int) -> list[Row]:
    torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    tag = f"cpu {threads} thread{'s' if threads > 1 else ''}"
    torch.manual_seed(0)
    n, px, size = (192, 48, 64) if quick else (2048, 64, 128)
    tiles = torch.randint(0, 256, (n, 3, px, px), dtype=torch.uint8)
    enc = create_encoder("resnet18", out_dim=512)
    label = f"resnet18 {px}px fp32 {tag}"
    rows = _throughput_rows(label, enc, _agg(512), tiles, size, cpu, 5, None, 32, (32, 32))
    # precomputed features: the official CAMELYON16 settings (IPS M=I=5000; DBPS M=100,
    # I=500, S=400); the encoder is only LayerNorm + Linear, so selection overhead shows here
    feats = torch.randn(10000 if quick else 50000, 2048)
    fe = FeatureEncoder(2048, 512)
    agg = _agg(512)
    rows += _throughput_rows(
        f"features F=2048 D=512 {tag}", fe, agg, feats, 5000, cpu, reps=2, ips_m=5000
    )
    rows += _throughput_rows(
        f"features F=2048 D=512 {tag}", fe, agg, feats, 500, cpu, reps=2, dbps_ms=(100, 400)
    )
    return rows


def run(quick: bool = False) -> list[Row]:
    """Throughput is timed on 1 thread (stable on a shared machine: a loaded second core
    makes 2-thread timings swing by 2x) and, in full mode, on 2 threads too."""
    threads = max(1, min(2, os.cpu_count() or 1))
    rows = _memory_rows((1000, 4000) if quick else (1000, 4000, 16000, 65536))
    for t in (1,) if quick else sorted({1, threads}):
        rows += _cpu_rows(quick, t)
    torch.set_num_threads(1 if quick else threads)
    grad_px, grad_ms = (48, (8, 24)) if quick else (64, (16, 64, 256))
    rows += _grad_rows(
        "resnet18", grad_px, grad_ms, batch=1, device=torch.device("cpu"), reps=1 if quick else 2
    )
    if torch.cuda.is_available():
        rows += _gpu_rows(quick)
    else:
        skip = Row(BENCH, "cuda (resnet50, batch 16 slides)", "skipped", 0.0, "", "no CUDA")
        rows.append(skip)
    return rows


if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv[1:])))
