"""Running the parts time-boxed: each part in a child process (a CUDA error or a hang in one
part cannot take the others down), its cases one after the other under a watchdog.

Child (``python -m benchmarks.gpu --child PART``): runs the part's cases from ``--start``;
a case that raises gets a ``failed`` row and the next one runs; a case past its time box
gets a ``timed out`` row (with the peak GPU memory so far) and the child exits 124. Parent:
restarts the child after the case that killed it while the part's time box lasts.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import Row
from benchmarks.gpu.record import Recorder, failure
from benchmarks.gpu.settings import Settings, case_key, repo_root


@dataclass(frozen=True)
class Part:
    name: str
    cases: Callable[[Settings], list[dict[str, Any]]]
    label: Callable[[Settings, dict[str, Any]], str]
    run: Callable[[Any, dict[str, Any]], list[Row]]


def parts() -> dict[str, Part]:
    from benchmarks.gpu import scan_part, tests_part, train_parts

    return {
        "e2e": Part("e2e", train_parts.e2e_cases, train_parts.e2e_label, train_parts.e2e_case),
        "scan": Part("scan", scan_part.scan_cases, scan_part.scan_label, scan_part.scan_case),
        "features": Part("features", train_parts.features_cases, train_parts.features_label,
                         train_parts.features_case),
        "tests": Part("tests", tests_part.tests_cases, tests_part.tests_label,
                      tests_part.tests_case),
    }  # fmt: skip


# ---- the child -----------------------------------------------------------------------------
def child(part_name: str, work: Path, out: Path, start: int, deadline: float) -> int:
    import torch

    from benchmarks.gpu.context import Ctx, default_device

    s = Settings.from_json((work / "settings.json").read_text())
    part = parts()[part_name]
    # cuDNN autotuning stays off, as in wsipipe's own runs (the scans' last chunks of
    # different sizes would each be autotuned)
    ctx = Ctx(s, work, Recorder(out), default_device())
    for case in part.cases(s)[start:]:
        key, label = case_key(part.name, case), part.label(s, case)
        left = deadline - time.time()
        if left < 3:
            ctx.rec.row(failure(part.name, label, "skipped: the part's time box is spent"), key)
            ctx.rec.end(key)
            continue
        ctx.rec.start(key)
        box = min(left, s.case_cap_s)
        timer = threading.Timer(box, _timed_out, (ctx, part.name, label, key, box))
        timer.daemon = True
        timer.start()
        try:
            for row in part.run(ctx, case):
                ctx.rec.row(row, key)
        except Exception as exc:
            traceback.print_exc()
            ctx.rec.row(failure(part.name, label, f"{type(exc).__name__}: {exc}"), key)
            if ctx.cuda:
                torch.cuda.empty_cache()
        finally:
            timer.cancel()
        ctx.rec.end(key)
        gc.collect()  # the case's run (DataLoader workers, GPU tensors) is released now
    return 0


def _timed_out(ctx: Any, part: str, label: str, key: str, box: float) -> None:
    alloc, _ = ctx.peak_gb(sync=False)
    extra = f"; peak GPU allocated so far {alloc:.2f} GB" if alloc == alloc else ""
    ctx.rec.row(failure(part, label, f"timed out after {box:.0f} s (time box){extra}"), key)
    ctx.rec.end(key)
    sys.stderr.flush()
    os._exit(124)


# ---- the parent ----------------------------------------------------------------------------
def run_part(part: Part, s: Settings, work: Path, out: Path, deadline: float) -> None:
    """Run ``part``'s cases in child processes until done or ``deadline`` (time.time())."""
    rec = Recorder(out)
    cases = part.cases(s)
    keys = [case_key(part.name, c) for c in cases]
    log = out / "logs" / f"{part.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    root = repo_root()  # the child imports benchmarks (and wsipipe) from this checkout
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}  # fmt: skip
    start = 0
    while start < len(cases):
        if deadline - time.time() < 3:
            for c, k in zip(cases[start:], keys[start:], strict=True):
                rec.row(failure(part.name, part.label(s, c), "skipped: the part's time box "
                                "is spent"), k)  # fmt: skip
            return
        cmd = [sys.executable, "-m", "benchmarks.gpu", "--child", part.name, "--work", str(work),
               "--out", str(out), "--start", str(start), "--deadline", str(deadline)]  # fmt: skip
        with log.open("a") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=root, env=env,
                                    start_new_session=True)  # fmt: skip
            try:
                rc = proc.wait(timeout=max(5.0, deadline - time.time() + 20))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
        events = rec.events()
        ended = {e["end"] for e in events if "end" in e}
        started = {e["start"] for e in events if "start" in e}
        nxt = next((i for i in range(start, len(cases)) if keys[i] not in ended), len(cases))
        # the child died in case nxt (or, making no progress, before it): a failed row
        if nxt < len(cases) and (keys[nxt] in started or nxt == start):
            why = f"child process exited {rc}; see logs/{part.name}.log: {_tail(log)}"
            rec.row(failure(part.name, part.label(s, cases[nxt]), why), keys[nxt])
            rec.end(keys[nxt])
            nxt += 1
        start = nxt


def _tail(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "(no output)"
