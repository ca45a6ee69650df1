"""Parts 1 and 3: training steps through the real loop (``setup_run`` + ``train_epoch``:
B slides scanned from their stores by the DataLoader workers, the M selected tiles re-read,
one gradient pass, AdamW), on a cohort whose training split is exactly one batch.

Part 1, ``e2e``: the ``camelyon16-e2e`` preset (ResNet-50, bf16 autocast, channels_last,
M / I from the preset, S = the default), one slide of N tiles + B - 1 small ones, with and
without gradient checkpointing: step time and peak GPU memory.

Part 3, ``features``: the ``camelyon16-ips`` / ``camelyon16-dbps`` presets (frozen
ResNet-50 features, F = 2048) on B slides of N feature rows: step time (second step, warm)
and peak GPU memory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Row
from benchmarks.gpu import data
from benchmarks.gpu.context import Ctx, goal_note
from benchmarks.gpu.settings import PRESET, Settings

DATA = {"step": "data"}
_QUIET = {"progress": False, "tensorboard": False, "epochs": 2, "warmup_epochs": 0}


# ---- part 1: end to end --------------------------------------------------------------------
def e2e_cases(s: Settings) -> list[dict[str, Any]]:
    from benchmarks.gpu.settings import e2e_cases as cases

    return [DATA, *cases(s)]


def _e2e_overrides(ctx: Ctx, case: dict[str, Any]) -> dict[str, Any]:
    s = ctx.s
    tag = f"{case['method']}_{case['n']}_{'ck' if case['ckpt'] else 'nock'}"
    ov: dict[str, Any] = {
        "labels": str(ctx.work / f"labels_big{case['n']}_b{s.batch}.csv"),
        "stores": str(ctx.stores), "out": str(ctx.work / "runs" / tag),
        "method": case["method"], "grad_checkpointing": case["ckpt"], "batch_size": s.batch,
        "workers": s.workers, "device": str(ctx.device), "pretrained": False,
        "calibrate_bn": False, **_QUIET,
    }  # fmt: skip
    if s.e2e_encoder != "resnet50":  # smoke: a small encoder
        ov["encoder"] = s.e2e_encoder
    return ov


def e2e_label(s: Settings, case: dict[str, Any]) -> str:
    if case.get("step") == "data":
        return f"data: {s.tile_px} px zarr stores, N = {', '.join(f'{n:,}' for n in s.e2e_ns)}"
    from wsipipe.train.config import load_train_config

    cfg = load_train_config(PRESET, {"method": case["method"], "encoder": s.e2e_encoder})
    ms = f"M={cfg.M} I={cfg.I}" + (f" S={cfg.S}" if cfg.method == "dbps" else "")
    return (
        f"{cfg.method.upper()} {cfg.encoder} {s.tile_px}px, {ms} B={s.batch}, "
        f"N={case['n']:,} + {s.batch - 1} x {s.small_n}, ckpt {'on' if case['ckpt'] else 'off'}"
    )


def e2e_data(ctx: Ctx) -> list[Row]:
    s = ctx.s
    t0 = time.perf_counter()
    pool, where = data.tile_pool(s.tile_px, given=ctx.s.tiles)
    data.write_store(ctx.stores, "small", s.small_n, pool, s.tile_px)
    for n in s.e2e_ns:
        data.write_store(ctx.stores, f"big{n}", n, pool, s.tile_px)
        data.batch_cohort(ctx.work, ctx.stores, f"big{n}", "small", s.batch)
    n_all = sum(s.e2e_ns) + s.small_n
    if ctx.cuda:  # CUDA, cuDNN and cuBLAS start up here, not in the first step timed
        warm_up(ctx)
    return [Row("e2e", e2e_label(s, DATA), "build time", time.perf_counter() - t0, "s",
                f"{n_all:,} tiles written; {where}")]  # fmt: skip


def reserved_note(ctx: Ctx) -> str:
    return "held by the caching allocator" if ctx.cuda else "n/a without CUDA"


def precision(cfg: Any, ctx: Ctx) -> str:
    from wsipipe.train.model import amp_dtype_for

    amp = amp_dtype_for(cfg.precision, ctx.device)
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]


def warm_up(ctx: Ctx) -> None:
    """One bf16 forward and backward of the preset's encoder on two tiles."""
    from wsipipe.encoders import create_encoder

    enc = create_encoder(ctx.s.e2e_encoder, out_dim=8, channels_last=True).to(ctx.device)
    x = torch.zeros(2, 3, ctx.s.tile_px, ctx.s.tile_px, dtype=torch.uint8, device=ctx.device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        enc(x).float().sum().backward()
    ctx.sync()


def train_step(ctx: Ctx, overrides: dict[str, Any], config: str, steps: int) -> dict[str, Any]:
    """``steps`` epochs of one step each through ``train_epoch``; the last step's record
    with peak GPU memory (allocated / reserved over all the steps) and the setup time."""
    from wsipipe.train.config import load_train_config
    from wsipipe.train.loop import setup_run, train_epoch
    from wsipipe.train.progress import RunProgress

    cfg = load_train_config(config, overrides)
    t0 = time.perf_counter()
    run = setup_run(cfg)
    try:
        setup_s = time.perf_counter() - t0
        ctx.reset_peak()
        prog = RunProgress(False, True)
        rec: dict[str, Any] = {}
        for epoch in range(steps):
            rec = train_epoch(run, epoch, prog)
            if run.cfg.scans and rec["train_slides"] != cfg.batch_size:
                raise RuntimeError(f"expected one step of {cfg.batch_size} slides, got {rec}")
        alloc, reserved = ctx.peak_gb()
        rec.update(setup_s=setup_s, alloc_gb=alloc, reserved_gb=reserved, cfg=run.cfg)
        return rec
    finally:
        run.close()


def e2e_case(ctx: Ctx, case: dict[str, Any]) -> list[Row]:
    if case.get("step") == "data":
        return e2e_data(ctx)
    r = train_step(ctx, _e2e_overrides(ctx, case), PRESET, steps=1)
    label = e2e_label(ctx.s, case)
    note = (
        f"first step, {precision(r['cfg'], ctx)}: scan {r['scan_s']:.1f} s at "
        f"{r['scan_tiles_per_s']:,.0f} tiles/s + gradient pass {r['grad_s']:.2f} s"
    )
    return [
        Row("e2e", label, "step time", r["train_s"], "s", note),
        Row("e2e", label, "peak GPU allocated", r["alloc_gb"], "GB", goal_note(r["alloc_gb"])),
        Row("e2e", label, "peak GPU reserved", r["reserved_gb"], "GB", reserved_note(ctx)),
    ]


# ---- part 3: features mode at the papers' settings ----------------------------------------
def features_cases(s: Settings) -> list[dict[str, Any]]:
    from benchmarks.gpu.settings import features_cases as cases

    return [DATA, *cases(s)]


def _features_dir(work: Path) -> Path:
    return work / "features" / "resnet50"


def _features_overrides(ctx: Ctx, preset: str) -> dict[str, Any]:
    s = ctx.s
    return {
        "labels": str(ctx.work / f"labels_feat_b{s.features_batch}.csv"),
        "stores": str(ctx.stores), "out": str(ctx.work / "runs" / preset),
        "features_dir": str(_features_dir(ctx.work)), "batch_size": s.features_batch,
        "workers": min(s.workers, 4), "device": str(ctx.device), **_QUIET,
    }  # fmt: skip


def features_label(s: Settings, case: dict[str, Any]) -> str:
    if case.get("step") == "data":
        return f"data: features cache, {s.features_batch + 2} slides x N={s.features_n:,}"
    from wsipipe.train.config import load_train_config

    cfg = load_train_config(case["preset"])
    ms = f"M={cfg.M} I={cfg.I}" + (f" S={cfg.S}" if cfg.method == "dbps" else "")
    return (
        f"{cfg.method.upper()} features F={s.features_dim} ({case['preset']}), {ms} "
        f"B={s.features_batch}, N={s.features_n:,} per slide"
    )


def features_data(ctx: Ctx) -> list[Row]:
    from wsipipe.train.config import load_train_config

    s = ctx.s
    t0 = time.perf_counter()
    pool, _ = data.tile_pool(s.tile_px, limit=4, given=ctx.s.tiles)
    src = data.write_store(ctx.stores, "feat", s.features_n, pool, s.tile_px)
    labels = data.batch_cohort(ctx.work, ctx.stores, "feat", "feat", s.features_batch)
    cfg = load_train_config("camelyon16-ips", _features_overrides(ctx, "camelyon16-ips"))
    data.features_cache(ctx.stores, _features_dir(ctx.work), labels, cfg, s.features_dim)
    del src
    return [Row("features", features_label(s, DATA), "build time", time.perf_counter() - t0,
                "s", "random float16 rows, one file linked per slide")]  # fmt: skip


def features_case(ctx: Ctx, case: dict[str, Any]) -> list[Row]:
    if case.get("step") == "data":
        return features_data(ctx)
    preset = case["preset"]
    r = train_step(ctx, _features_overrides(ctx, preset), preset, steps=2)
    label = features_label(ctx.s, case)
    note = (
        f"second step (warm), {precision(r['cfg'], ctx)}: scan {r['scan_s']:.2f} s at "
        f"{r['scan_tiles_per_s']:,.0f} rows/s + gradient pass {r['grad_s']:.3f} s"
    )
    return [
        Row("features", label, "step time", r["train_s"], "s", note),
        Row(
            "features",
            label,
            "peak GPU allocated",
            r["alloc_gb"],
            "GB",
            "over both steps" if ctx.cuda else "n/a without CUDA",
        ),
        Row("features", label, "peak GPU reserved", r["reserved_gb"], "GB", reserved_note(ctx)),
    ]
