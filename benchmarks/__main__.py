"""Run every benchmark and print one table: ``python -m benchmarks [--quick] [--only a,b]``.

Writes the table with the machine, date and command to ``benchmarks/RESULTS.md`` (CPU
section, or a GPU section when CUDA is available), keeping the other section.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path

from benchmarks.common import Row, format_table

ORDER = ["read", "tile", "store", "scan", "train", "heatmap"]
HERE = Path(__file__).resolve().parent


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores{gpu}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (< 1 min each)")
    parser.add_argument("--only", default="", help=f"comma list of: {', '.join(ORDER)}")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or ORDER
    rows: list[Row] = []
    failed = []
    for name in names:
        if not (HERE / f"bench_{name}.py").exists():
            print(f"[skip] benchmarks/bench_{name}.py not present", file=sys.stderr)
            continue
        start = time.perf_counter()
        print(f"[run] {name} ...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
            rows.extend(module.run(quick=args.quick))
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"[done] {name} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    table = format_table(rows)
    print(table)
    if not args.no_write and rows:
        write_results(table, args)
    return 1 if failed else 0


def write_results(table: str, args: argparse.Namespace) -> None:
    import torch

    kind = "GPU" if torch.cuda.is_available() else "CPU"
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    section = (
        f"## {kind}\n\nMachine: {machine()}  \nDate: {time.strftime('%Y-%m-%d %H:%M %Z')}  \n"
        f"Command: `{command.strip()}`\n\n{table}\n"
    )
    path = HERE / "RESULTS.md"
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    parts = {"CPU": "", "GPU": ""}
    for other in ("CPU", "GPU"):
        marker = f"## {other}\n"
        if marker in old:
            rest = old.split(marker, 1)[1]
            nxt = min((rest.find(f"## {o}\n") for o in ("CPU", "GPU") if f"## {o}\n" in rest),
                      default=-1)  # fmt: skip
            parts[other] = marker + (rest if nxt < 0 else rest[:nxt])
    if kind == "GPU":  # keep the section of `python -m benchmarks.gpu` (its own command)
        from benchmarks.gpu.record import HEADING

        if HEADING in parts["GPU"]:
            section = section.rstrip() + "\n\n" + HEADING + parts["GPU"].split(HEADING, 1)[1]
    parts[kind] = section
    body = "# Benchmark results\n\n" + "\n".join(p.rstrip() + "\n" for p in parts.values() if p)
    path.write_text(body)


if __name__ == "__main__":
    raise SystemExit(main())
