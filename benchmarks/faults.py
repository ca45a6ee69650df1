"""Issue 13 faults against the real CLI, one table: ``python -m benchmarks.faults``.

Each case sets up a small batch (generated Aperio-like slides, a tiny random checkpoint), runs
``wsipipe`` in subprocesses, injects one fault and reports: the exit code, the message (first
line of interest), whether the batch went on past the fault, what was left behind (temp
files, job folders, locks) and whether the good outputs are intact. Disk-full cases mount a
small tmpfs and need root (skipped otherwise). Not a test (nothing is asserted); a run takes
about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from wsipipe.testing.fullfs import free_kb, nearly_full, skip_reason
from wsipipe.testing.slides import synthetic_rgb, write_aperio_like

REPO = Path(__file__).resolve().parents[1]
ENCODER = "test_resnet.r160_in1k"  # tiny timm model, random init: no weights download
COUNTS = re.compile(r"(\d+) done, (\d+) skipped(?:, (\d+) busy)?, (\d+) failed")


@dataclass
class Result:
    case: str
    exit: str
    message: str
    continued: str  # "yes" / "no" / "n/a"
    leftovers: str
    intact: str  # good outputs intact: "yes" / "no: ..." / "n/a"


@dataclass
class Env:
    root: Path
    slides: Path  # s0..s5.svs


def wsipipe(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsipipe", *map(str, args)], capture_output=True, text=True,
        timeout=timeout, env=_env(), cwd=REPO,
    )  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def message(res: subprocess.CompletedProcess[str] | str) -> str:
    """The line that says what happened: a traceback's last line, an ``error:`` line, the
    first per-slide failure or busy line, else the counts line."""
    text = res if isinstance(res, str) else res.stdout + "\n" + res.stderr
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if any("Segmentation fault" in ln for ln in lines):
        return "Fatal Python error: Segmentation fault"
    if any(ln.startswith("Traceback") for ln in lines):
        exc = [ln for ln in lines if re.match(r"^[A-Za-z_.]+(Error|Exception)\b", ln)]
        return "traceback: " + (exc[-1] if exc else lines[-1])
    for pat in (r"^error:", r"^\S+ (failed|busy): ", r"^warning:"):
        hit = [ln for ln in lines if re.match(pat, ln)]
        if hit:
            return hit[0]
    counts = [ln for ln in lines if COUNTS.search(ln)]
    return counts[-1] if counts else (lines[-1] if lines else "")


def counted(res: subprocess.CompletedProcess[str]) -> int | None:
    """How many slides the run's counts line accounts for (None: no counts line)."""
    m = COUNTS.search(res.stdout)
    return None if m is None else sum(int(g or 0) for g in m.groups())


def leftovers(out: Path) -> str:
    found = [p for p in out.rglob(".?*.tmp")] if out.is_dir() else []
    found += list((out / ".tmp").glob("*")) + list((out / "locks").glob("*"))
    return ", ".join(sorted(str(p.relative_to(out)) for p in found)) or "none"


def stores_intact(out: Path, ids: list[str]) -> str:
    from wsipipe.store import open_store

    bad = []
    for sid in ids:
        paths = list((out / "stores").glob(f"{sid}.*"))
        try:
            with open_store(paths[0]) as store:
                store.read_tile(0)
        except Exception as exc:
            bad.append(f"{sid} ({type(exc).__name__})")
    return "yes" if not bad else "no: " + ", ".join(bad)


def code(*results: subprocess.CompletedProcess[str]) -> str:
    return "/".join(str(r.returncode) for r in results)


# ---- cases ----------------------------------------------------------------------------------


def disk_full(env: Env, free: int, fmt: str) -> Result:
    case = f"disk {'full' if free == 0 else f'nearly full ({free} KB free)'}, --format {fmt}"
    reason = skip_reason()
    if reason:
        return Result(case, "-", f"skipped: {reason}", "-", "-", "-")
    ids = ["s0", "s1", "s2"]
    with tempfile.TemporaryDirectory(dir=env.root) as tmp, nearly_full(Path(tmp), 6000) as disk:
        out = disk / "out"
        wsipipe("tile", env.slides / "s0.svs", "--out", out, "--format", fmt)  # the good one
        with open(disk / "filler2", "wb", buffering=0) as fh:  # now leave `free` KB
            while free_kb(disk) > free:
                fh.write(bytes(1024))
        res = wsipipe("tile", *(env.slides / f"{s}.svs" for s in ids), "--out", out,
                      "--format", fmt)  # fmt: skip
        continued = "yes" if counted(res) == len(ids) else "no"
        return Result(case, code(res), message(res), continued, leftovers(out),
                      stores_intact(out, ["s0"]))  # fmt: skip


def killed_parent(env: Env) -> Result:
    case = "kill -9 of the parent, --workers 2"
    ids = [f"s{i}" for i in range(6)]
    out = env.root / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsipipe", "tile", str(env.slides), "--out", str(out),
         "--workers", "2"], env=_env(), cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "locks").glob("*.lock")):
        time.sleep(0.01)
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(3)
    alive = [p for p in workers if _running(p)]
    for p in alive:  # ours: do not leave them running
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    res = wsipipe("tile", env.slides, "--out", out)
    msg = f"{len(alive)} of {len(workers)} children alive 3 s after; re-run: {message(res)}"
    continued = "yes" if res.returncode == 0 and counted(res) == len(ids) else "no"
    return Result(case, f"-9/{res.returncode}", msg, continued, leftovers(out),
                  stores_intact(out, ids))  # fmt: skip


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def concurrent(env: Env) -> Result:
    case = "two concurrent runs, same --out"
    ids = [f"s{i}" for i in range(6)]
    out = env.root / "concurrent"
    cmd = [sys.executable, "-m", "wsipipe", "tile", str(env.slides), "--out", str(out)]
    procs = [subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    msg = " | ".join(COUNTS.search(r.stdout).group(0) if COUNTS.search(r.stdout) else message(r)
                     for r in results)  # fmt: skip
    continued = "yes" if all(counted(r) == len(ids) for r in results) else "no"
    return Result(case, code(*results), msg, continued, leftovers(out), stores_intact(out, ids))


def changed_slide(env: Env) -> list[Result]:
    work = env.root / "changed"
    (work / "slides").mkdir(parents=True)
    slide = work / "slides" / "s.svs"
    shutil.copyfile(env.slides / "s0.svs", slide)
    out = work / "tile"
    wsipipe("tile", slide, "--out", out)
    ckpt = checkpoint(work / "ckpt.pt", tile_px=256)
    shutil.copyfile(env.slides / "s1.svs", slide)  # another slide under the same name
    res = wsipipe("tile", slide, "--out", out)
    rows = [Result("changed slide: re-tile (expected: refused)", code(res), message(res),
                   "n/a", leftovers(out), "n/a")]  # fmt: skip
    hm = work / "heatmaps"
    res = wsipipe("heatmap", "--checkpoint", ckpt, "--stores", out, "--out", hm, "--device",
                  "cpu", "--workers", "0")  # fmt: skip
    rows.append(Result("changed slide: heatmap (expected: refused)", code(res), message(res),
                       "n/a", leftovers(hm), "n/a"))  # fmt: skip
    return rows


def mismatched_checkpoint(env: Env) -> list[Result]:
    work = env.root / "mismatch"
    out = work / "tile128"
    wsipipe("tile", env.slides / "s0.svs", "--out", out, "--tile-px", "128")
    rows = []
    for case, ckpt in (
        ("checkpoint from 256-px tiles on a 128-px store",
         checkpoint(work / "px256.pt", tile_px=256)),
        ("checkpoint whose weights do not match its config",
         checkpoint(work / "bad.pt", tile_px=128, weights_dim=48)),
    ):  # fmt: skip
        hm = work / f"heatmaps-{ckpt.stem}"
        res = wsipipe("heatmap", "--checkpoint", ckpt, "--stores", out, "--out", hm,
                      "--device", "cpu", "--workers", "0")  # fmt: skip
        rows.append(Result(case, code(res), message(res), "n/a", leftovers(hm), "n/a"))
    return rows


def checkpoint(path: Path, tile_px: int, weights_dim: int = 32) -> Path:
    """A tiny random-init checkpoint in the training format, recording 0.5 um/px tiles of
    ``tile_px``; ``weights_dim`` != 32 stores weights of another model than its config."""
    import torch

    from wsipipe.config import config_to_dict
    from wsipipe.train.checkpoint import save_checkpoint
    from wsipipe.train.config import TrainConfig
    from wsipipe.train.model import build_model

    def cfg(dim: int) -> TrainConfig:
        return TrainConfig(
            encoder=ENCODER, pretrained=False, dim=dim, heads=2, dim_head=16, dim_inner=64,
            M=4, I=16, S=4, device="cpu", workers=0, channels_last=False, batch_size=2,
        )  # fmt: skip

    torch.manual_seed(0)
    model = build_model(cfg(weights_dim), 2, 0)
    tiling = {"tile_px": [tile_px], "target_mpp": [0.5], "input_px": 0, "encoder": ENCODER}
    save_checkpoint(path, {
        "model": model.state_dict(), "epoch": 1, "step": 1, "config": config_to_dict(cfg(32)),
        "classes": ["normal", "tumor"], "feature_dim": 0, "tiling": tiling,
        "wsipipe_version": "faults",
    })  # fmt: skip
    return path


def bad_inputs(env: Env) -> list[Result]:
    rows = []
    for case, make in (("truncated slide among good ones", _truncated),
                       ("dangling symlink among good ones", _dangling)):  # fmt: skip
        folder = env.root / case.split()[0]
        folder.mkdir()
        for sid in ("s0", "s1"):
            (folder / f"{sid}.svs").symlink_to(env.slides / f"{sid}.svs")
        make(env, folder)
        out = env.root / f"{case.split()[0]}-out"
        res = wsipipe("tile", folder, "--out", out)
        n = counted(res)
        continued = "n/a" if n is None else ("yes" if n >= 2 else "no")
        rows.append(Result(case, code(res), message(res), continued, leftovers(out),
                           stores_intact(out, ["s0", "s1"])))  # fmt: skip
    return rows


def _truncated(env: Env, folder: Path) -> None:
    (folder / "cut.svs").write_bytes((env.slides / "s2.svs").read_bytes()[:60_000])


def _dangling(env: Env, folder: Path) -> None:
    (folder / "gone.svs").symlink_to(env.root / "no-such-slide.svs")


CASES: list[tuple[str, Callable[[Env], Result | list[Result]]]] = [
    ("disk-near-h5", lambda e: disk_full(e, 40, "h5")),
    ("disk-full-h5", lambda e: disk_full(e, 0, "h5")),
    ("disk-near-zarr", lambda e: disk_full(e, 40, "zarr")),
    ("kill", killed_parent),
    ("concurrent", concurrent),
    ("changed", changed_slide),
    ("checkpoint", mismatched_checkpoint),
    ("inputs", bad_inputs),
]


@contextlib.contextmanager
def environment() -> Iterator[Env]:
    with tempfile.TemporaryDirectory(prefix="wsipipe-faults-") as tmp:
        root = Path(tmp)
        slides = root / "slides"
        slides.mkdir()
        for i in range(6):
            write_aperio_like(slides / f"s{i}.svs", synthetic_rgb(768, 768, seed=i), mpp=0.5)
        yield Env(root, slides)


def format_results(rows: list[Result]) -> str:
    head = (
        "| case | exit | message (first line) | batch continued | leftovers | good output intact |"
    )
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        msg = r.message.replace("|", "/")
        if len(msg) > 220:
            msg = msg[:217] + "..."
        lines.append(
            f"| {r.case} | {r.exit} | {msg} | {r.continued} | {r.leftovers} | {r.intact} |"
        )
    return "\n".join(lines)


LEGEND = """\
Columns: *exit* is the exit code of the faulty run (a/b for two runs; -9/n: killed parent,
then the re-run); *message* its first line of interest (a traceback's last line, an
`error:` line, the first per-slide failure); *batch continued*: every slide of the batch
got an outcome (the kill case: the re-run completed every slide); *leftovers*: temp files,
job folders and locks left under the output folder; *good output intact*: the stores of
slides done before the fault (or beside it) still open and read. Changed-slide and
dangling-symlink cases belong to the input-discovery / fingerprint work (another branch):
they show today's behaviour."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated case keys: "
                    + ", ".join(k for k, _ in CASES))  # fmt: skip
    ap.add_argument("--write", action="store_true",
                    help="put the table into benchmarks/RESULTS.md")  # fmt: skip
    args = ap.parse_args()
    only = {k for k in args.only.split(",") if k}
    rows: list[Result] = []
    with environment() as env:
        for key, fn in CASES:
            if only and key not in only:
                continue
            t0 = time.perf_counter()
            try:
                got = fn(env)
            except Exception as exc:
                got = Result(key, "-", f"case failed: {type(exc).__name__}: {exc}", "-", "-", "-")
            for r in got if isinstance(got, list) else [got]:  # paths relative to the run
                r.message = r.message.replace(str(env.root), "$TMP")
                r.leftovers = r.leftovers.replace(str(env.root), "$TMP")
                rows.append(r)
            print(f"{key}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    table = format_results(rows)
    print(table)
    if args.write:
        from benchmarks.__main__ import machine
        from benchmarks.common import replace_section

        command = " ".join(["python -m benchmarks.faults", *sys.argv[1:]])
        root = "root: disk cases run" if skip_reason() is None else f"{skip_reason()}: skipped"
        section = (
            f"## Faults (issue 13)\n\nMachine: {machine()} ({root})  \n"
            f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}  \nCommand: `{command}`\n\n"
            f"{table}\n\n{LEGEND}\n"
        )
        replace_section(REPO / "benchmarks" / "RESULTS.md", "Faults (issue 13)", section)


if __name__ == "__main__":
    main()
