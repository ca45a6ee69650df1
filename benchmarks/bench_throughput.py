"""Issue 14, items 2-4: throughput at the limit on CPU, before vs after, in one run.

"before" is the wsipipe package of another revision (default: the merge base of HEAD and
main), exported with ``git archive`` to a temporary folder; "after" is this checkout. Every
measurement runs in a fresh interpreter with one tree or the other first on PYTHONPATH, the
two alternating (order rotated each repeat), so that the shared machine's load hits both
alike; min and median over the repeats are reported.

    python -m benchmarks.bench_throughput [--repeats 3] [--before REV] [--quick]

Cases:
  scan     training scan of ``wsipipe train`` (ChunkPipeline, 1 loader worker, 1 compute
           thread) over 4 slides of N tiles streamed back to back, as an epoch streams
           them: ResNet-18 on 256 px JPEG tiles resized to 64 px, IPS M=16 I=128,
           ``--precision auto``; vs the bare encoder forward on the same preloaded tiles,
           at the scan's precision and at fp32.
  loader   the loader's read + decode + resize of 256 px tiles to 64 px, tiles per CPU-s.
  dbps     DBPS scan in features mode (F=2048, D=512, N=10k, I=500, M=100, S=400) vs the
           bare feature encoder, thread CPU time (one thread).
  startup  process wall (and CPU) time of ``wsipipe tile --coords-only`` on
           CMU-1-Small-Region: a fresh run and a re-run that only skips the done slide.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from benchmarks.common import Row, format_table, timed_process

BENCH = "throughput"
REPO = Path(__file__).resolve().parents[1]
SLIDE = (REPO / ".." / "shared" / "data" / "real" / "slides" / "CMU-1-Small-Region.svs").resolve()


def export_tree(rev: str, dest: Path) -> Path:
    """The ``wsipipe`` package of git revision ``rev`` under ``dest`` (a PYTHONPATH root)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "wsipipe"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}


def _py(tree: Path, code: str, *args: str, timeout: float = 1800) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=_env(tree), capture_output=True, text=True,
        timeout=timeout, check=False, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess ({tree}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- scan (item 2) --------------------------------------------------------------------------
_SCAN = textwrap.dedent(
    """
    import json, sys, time, torch
    torch.set_num_threads(1)
    import wsipipe
    from wsipipe.train.config import load_train_config
    from wsipipe.train.inference import scan_slide
    from wsipipe.train.loop import setup_run
    root, n = sys.argv[1], int(sys.argv[2])
    cfg = load_train_config(None, {
        "labels": root + "/labels.csv", "stores": root, "out": sys.argv[3],
        "encoder": "resnet18", "pretrained": False, "input_px": 64,
        "M": 16, "I": 128, "batch_size": 4, "epochs": 1, "warmup_epochs": 0,
        "device": "cpu", "workers": 1, "progress": False, "tensorboard": False,
        "calibrate_tiles": 64, "channels_last": False, "precision": "auto"})
    tr = setup_run(cfg)
    model, pos = tr.model, 0
    # the training loop's scan settings (after: bf16 selection where the CPU has it)
    st = tr.st.for_selection() if hasattr(tr.st, "for_selection") else tr.st
    model.eval()
    chunks = [(i.clone(), t.clone()) for i, t in tr.pipeline.stream([pos], cfg.I).slide(pos)]
    # R slides streamed back to back, as an epoch streams them: the loader's first chunk is
    # waited for once per stream (per epoch in training), not once per slide
    R = 4
    def bare(amp):
        with torch.no_grad(), torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            for _ in range(R):
                for _, tiles in chunks:
                    model.encoder(tiles)
    def scan():
        stream = tr.pipeline.stream([pos] * R, cfg.I)
        for _ in range(R):
            scan_slide(model, stream.slide(pos), st)
    bare(st.amp_dtype); scan()  # warm-up (and the loader worker's first chunks)
    best = {"enc": 9e9, "enc32": 9e9, "scan": 9e9}
    for _ in range(4):
        for key, fn in (("enc", lambda: bare(st.amp_dtype)), ("scan", scan),
                        ("enc32", lambda: bare(None))):
            t0 = time.perf_counter(); fn(); best[key] = min(best[key], time.perf_counter() - t0)
    tr.close()
    print(json.dumps({"n": n * R, "amp": str(st.amp_dtype), **best}))
    """
)

_LOADER = textwrap.dedent(
    """
    import json, sys, time, numpy as np, torch
    torch.set_num_threads(1)
    from wsipipe.store import describe_store
    from wsipipe.train.data import SourceCache
    spec = describe_store("big0", sys.argv[1])
    idx = np.arange(spec.n_tiles)
    cache = SourceCache()
    cache.read(spec, idx[:64], 64)
    best = 9e9
    for _ in range(3):
        t0 = time.thread_time()
        cache.read(spec, idx, 64)
        best = min(best, time.thread_time() - t0)
    print(json.dumps({"n": int(idx.size), "cpu_s": best}))
    """
)


def make_scan_cohort(root: Path, n: int) -> Path:
    from benchmarks.bench_train import make_cohort

    make_cohort(root, [n], 64, 256, n_train_small=1)
    return root


# ---- DBPS features (item 3) -----------------------------------------------------------------
_DBPS = textwrap.dedent(
    """
    import json, time, torch
    torch.set_num_threads(1)
    from wsipipe.models import (AggregatorConfig, CrossAttentionAggregator, FeatureEncoder,
                                TaskSpec, dbps_scan)
    torch.manual_seed(0)
    feats = torch.randn(10000, 2048)
    fe = FeatureEncoder(2048, 512)
    agg = CrossAttentionAggregator(AggregatorConfig(dim=512, heads=8, dim_head=64,
                                   dim_inner=2048, tasks=(TaskSpec("label", 2),)))
    idx = torch.arange(feats.shape[0])
    chunks = [(idx[s:s + 500], feats[s:s + 500]) for s in range(0, feats.shape[0], 500)]
    def enc():
        fe.eval()
        with torch.no_grad():
            for _, x in chunks:
                fe(x)
    def scan():
        dbps_scan(fe, agg, chunks, M=100, S=400)
    enc(); scan()
    best = {"enc": 9e9, "scan": 9e9, "enc_wall": 9e9, "scan_wall": 9e9}
    for _ in range(5):
        for key, fn in (("enc", enc), ("scan", scan)):
            t0, w0 = time.thread_time(), time.perf_counter(); fn()
            best[key] = min(best[key], time.thread_time() - t0)
            best[key + "_wall"] = min(best[key + "_wall"], time.perf_counter() - w0)
    print(json.dumps(best))
    """
)


# ---- start-up (item 4) ----------------------------------------------------------------------
def tile_process(tree: Path, out: Path) -> tuple[float, float]:
    """(wall s, CPU s) of one ``wsipipe tile --coords-only`` process."""
    cmd = [sys.executable, "-m", "wsipipe", "tile", str(SLIDE), "--out", str(out), "--coords-only"]
    return timed_process(cmd, tempfile.gettempdir(), _env(tree))


def _stats(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


def run(quick: bool = False, repeats: int = 3, before_rev: str | None = None) -> list[Row]:
    rev = before_rev or subprocess.run(
        ["git", "-C", str(REPO), "merge-base", "HEAD", "main"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    n = 512 if quick else 1024
    res: dict[str, dict[str, list]] = {"before": {}, "after": {}}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench_tp_") as tmp:
        root = Path(tmp)
        trees = {"before": export_tree(rev, root / "before"), "after": REPO}
        cohort = make_scan_cohort(root / "cohort", n)
        store = str(cohort / "stores" / "big0.h5")
        for r in range(repeats):
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for side in order:
                tree, acc = trees[side], res[side]
                out = root / f"tile_{side}_{r}"
                acc.setdefault("fresh", []).append(tile_process(tree, out))
                acc.setdefault("skip", []).append(tile_process(tree, out))
                shutil.rmtree(out, ignore_errors=True)
                acc.setdefault("dbps", []).append(_py(tree, _DBPS))
                acc.setdefault("loader", []).append(_py(tree, _LOADER, store))
                acc.setdefault("scan", []).append(
                    _py(tree, _SCAN, str(cohort), str(n), str(root / f"run_{side}_{r}"))
                )
            load.append(os.getloadavg()[0])
    note_load = f"load avg {min(load):.1f}-{max(load):.1f} on {os.cpu_count()} cores"
    rows: list[Row] = []
    for side in ("before", "after"):
        acc = res[side]
        tag = f"{side} ({rev[:8]})" if side == "before" else "after (this tree)"
        # scan vs encoder
        sc = acc["scan"]
        amp = sc[0]["amp"]
        ratios = [s["enc"] / s["scan"] for s in sc]
        ratios32 = [s["enc32"] / s["scan"] for s in sc]
        tps = [s["n"] / s["scan"] for s in sc]
        case = f"train scan resnet18 256->64px, IPS M=16 I=128, 1 thread + 1 worker, {tag}"
        lo, med = _stats(ratios)
        rows += [
            Row(BENCH, case, "scan tiles/s", max(tps), "tiles/s",
                f"median {statistics.median(tps):,.0f}; autocast {amp}"),
            Row(BENCH, case, "scan / bare encoder, same precision", max(ratios), "x",
                f"min {lo:.3f}, median {med:.3f} (goal >= 0.95)"),
            Row(BENCH, case, "scan / bare encoder fp32", max(ratios32), "x",
                f"min {min(ratios32):.3f}, median {statistics.median(ratios32):.3f}"),
        ]  # fmt: skip
        ld = [x["n"] / x["cpu_s"] for x in acc["loader"]]
        rows.append(Row(BENCH, f"loader 256->64px read+decode+resize, {tag}", "tiles/CPU-s",
                        max(ld), "tiles/s", f"median {statistics.median(ld):,.0f}"))  # fmt: skip
        db = acc["dbps"]
        r_cpu = [x["enc"] / x["scan"] for x in db]
        r_wall = [x["enc_wall"] / x["scan_wall"] for x in db]
        rows.append(Row(
            BENCH, f"DBPS features F=2048 D=512 N=10k I=500 M=100 S=400, 1 thread, {tag}",
            "scan / encoder forward (CPU time)", max(r_cpu), "x",
            f"min {min(r_cpu):.3f}, median {statistics.median(r_cpu):.3f} (goal >= 0.95); "
            f"wall: best {max(r_wall):.3f}, median {statistics.median(r_wall):.3f}",
        ))  # fmt: skip
        for key, label in (("fresh", "fresh run"), ("skip", "skip-only re-run")):
            walls = [w for w, _ in acc[key]]
            cpus = [c for _, c in acc[key]]
            goal = " (goal < 1 s)" if key == "skip" else ""
            rows.append(Row(
                BENCH, f"wsipipe tile --coords-only CMU-1-Small-Region, {label}, {tag}",
                "process wall time", min(walls), "s",
                f"median {statistics.median(walls):.2f} s{goal}; CPU min "
                f"{min(cpus):.2f} s, median {statistics.median(cpus):.2f} s",
            ))  # fmt: skip
    rows.append(Row(BENCH, "machine", "load", max(load), "", note_load))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_throughput")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--before", default=None, help="git revision of 'before' (default: merge base)")
    a = p.parse_args(argv)
    print(format_table(run(a.quick, a.repeats, a.before)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
