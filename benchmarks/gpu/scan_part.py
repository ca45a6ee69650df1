"""Part 2, ``scan``: tiles/s of the streamed scan (the IPS scan of ``scan_slide`` fed by the
run's ``ChunkPipeline``: DataLoader workers read the zarr store and decode JPEG on the CPU)
against the bare encoder forward on GPU-resident tiles, same chunk size I and precision, for
a ResNet-50 and a ViT-B/16 (goal >= 0.9); and the same scan fed by GPU JPEG decoding
(``torchvision.io.decode_jpeg`` on the device, the store's encoded bytes read by one thread).

Variants are timed interleaved, best of ``reps`` after a warm-up each.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmarks.common import Row
from benchmarks.gpu import data
from benchmarks.gpu.context import Ctx
from benchmarks.gpu.settings import PRESET, Settings

DATA = {"step": "data"}
GOAL = 0.9


def _px(s: Settings, encoder: str) -> int:
    from wsipipe.train.encoding import fixed_input_px

    return fixed_input_px(encoder) or s.tile_px


def _sid(encoder: str) -> str:
    return "scan_" + "".join(c if c.isalnum() else "_" for c in encoder)


def scan_cases(s: Settings) -> list[dict[str, Any]]:
    from benchmarks.gpu.settings import scan_cases as cases

    return [DATA, *cases(s)]


def scan_label(s: Settings, case: dict[str, Any]) -> str:
    if case.get("step") == "data":
        return "data: scan stores, " + ", ".join(
            f"{_px(s, e)} px N={s.scan_n[e]:,}" for e in s.scan_encoders
        )
    from wsipipe.train.config import load_train_config

    cfg = load_train_config(PRESET)
    return f"{case['encoder']} {_px(s, case['encoder'])}px, I={cfg.I}, N={case['n']:,}"


def scan_data(ctx: Ctx) -> list[Row]:
    t0 = time.perf_counter()
    where = ""
    for enc in ctx.s.scan_encoders:
        px = _px(ctx.s, enc)
        pool, where = data.tile_pool(px, given=ctx.s.tiles)
        data.write_store(ctx.stores, _sid(enc), ctx.s.scan_n[enc], pool, px)
        data.write_store(ctx.stores, f"warm{px}", ctx.s.warm_n, pool, px)
    return [Row("scan", scan_label(ctx.s, DATA), "build time", time.perf_counter() - t0, "s",
                where)]  # fmt: skip


def gpu_jpeg_chunks(
    path: str, n: int, size: int, device: torch.device
) -> Iterator[tuple[Tensor, Tensor]]:
    """Chunks of the store's tiles decoded by ``torchvision.io.decode_jpeg`` on ``device``
    (nvJPEG on CUDA); the encoded bytes of chunk i+1 are read on a thread meanwhile."""
    from torchvision.io import decode_jpeg

    from wsipipe.store import open_store

    store = open_store(path)

    def read(start: int) -> tuple[np.ndarray, list[Tensor]]:
        idx = np.arange(start, min(n, start + size))
        blobs = [torch.frombuffer(bytearray(store.read_encoded(int(i))), dtype=torch.uint8)
                 for i in idx]  # fmt: skip
        return idx, blobs

    starts = deque(range(0, n, size))
    with ThreadPoolExecutor(1, thread_name_prefix="bench-jpeg") as pool:
        pending = deque(pool.submit(read, starts.popleft()) for _ in range(min(2, len(starts))))
        while pending:
            idx, blobs = pending.popleft().result()
            if starts:
                pending.append(pool.submit(read, starts.popleft()))
            tiles = torch.stack(decode_jpeg(blobs, device=device))  # (k, 3, H, W) uint8
            yield torch.from_numpy(idx), tiles
    store.close()


def _best(fns: dict[str, Callable[[], object]], reps: int, sync: Callable[[], None]) -> dict:
    for fn in fns.values():  # warm-up: workers start, cuDNN picks its kernels
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for key, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[key] = min(best[key], time.perf_counter() - t0)
    return best


def scan_case(ctx: Ctx, case: dict[str, Any]) -> list[Row]:
    if case.get("step") == "data":
        return scan_data(ctx)
    from wsipipe.models._scan import encode, eval_no_grad
    from wsipipe.store import describe_store
    from wsipipe.train.config import load_train_config
    from wsipipe.train.encoding import resolve_input
    from wsipipe.train.inference import ScanSettings, open_pipeline, scan_slide
    from wsipipe.train.model import build_model

    s, enc, n = ctx.s, case["encoder"], case["n"]
    px = _px(s, enc)
    sources = [describe_store(_sid(enc), ctx.stores / f"{_sid(enc)}.zarr"),
               describe_store(f"warm{px}", ctx.stores / f"warm{px}.zarr")]  # fmt: skip
    cfg = load_train_config(PRESET, {"encoder": enc, "pretrained": False,
                                     "device": str(ctx.device)})  # fmt: skip
    cfg = resolve_input(cfg, sources)
    torch.manual_seed(0)
    model = build_model(cfg, 2).to(ctx.device).eval()
    st = ScanSettings.of(cfg, ctx.device)
    pipes = {w: open_pipeline(replace(cfg, workers=w), sources, ctx.stores, ctx.device)[0]
             for w in s.scan_workers}  # fmt: skip
    try:
        first = next(iter(pipes.values()))
        chunks = first.stream([0], cfg.I).slide(0)
        resident = [(i.to(ctx.device), t.to(ctx.device)) for i, t in chunks]

        def bare() -> None:
            with eval_no_grad(model.encoder):
                for _, tiles in resident:
                    encode(model.encoder, tiles, ctx.device, st.amp_dtype)

        def streamed(w: int) -> Callable[[], object]:
            def go() -> None:
                stream = pipes[w].stream([1, 0], cfg.I)  # the warm slide, then the timed one
                scan_slide(model, stream.slide(1), st)
                t0 = time.perf_counter()
                scan_slide(model, stream.slide(0), st)
                times.setdefault(w, []).append(time.perf_counter() - t0)

            return go

        times: dict[int, list[float]] = {}
        fns: dict[str, Callable[[], object]] = {"bare": bare}
        fns |= {f"stream{w}": streamed(w) for w in s.scan_workers}
        fns["gpujpeg"] = lambda: scan_slide(
            model, gpu_jpeg_chunks(sources[0].path, n, cfg.I, ctx.device), st
        )
        best = _best(fns, s.reps, ctx.sync)
    finally:
        for p in pipes.values():
            p.close()
    label = scan_label(s, case)
    prec = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[st.amp_dtype]
    t_bare = best["bare"]
    rows = [Row("scan", label, "bare encoder forward", n / t_bare, "tiles/s",
                f"{prec}, tiles resident on {ctx.device.type}, eval, no grad")]  # fmt: skip
    for w in s.scan_workers:
        t = min(times[w][1:] or times[w])  # the warm-up pass excluded
        ratio = t_bare / t
        met = "met" if ratio >= GOAL else "not met"
        note = f"{ratio:.2f}x of bare (goal >= {GOAL}: {met}); JPEG decoded on the CPU"
        rows.append(Row("scan", label, f"streamed scan, {w} workers", n / t, "tiles/s", note))
    ratio = t_bare / best["gpujpeg"]
    rows.append(Row("scan", label, "scan, GPU JPEG decode", n / best["gpujpeg"], "tiles/s",
                    f"{ratio:.2f}x of bare; torchvision.io.decode_jpeg on {ctx.device.type}, "
                    "1 reader thread; not wired into the pipeline"))  # fmt: skip
    return rows
