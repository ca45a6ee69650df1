"""``python -m benchmarks.gpu [--smoke] [--out DIR] [--write]``: see :mod:`benchmarks.gpu`."""

from __future__ import annotations

import argparse
import math
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.gpu import ORDER
from benchmarks.gpu.record import ROWS, SECTION, Recorder, device_info, merge_results, section
from benchmarks.gpu.runner import child, parts, run_part
from benchmarks.gpu.settings import full_settings, repo_root, smoke_settings


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (< 2 min)")
    p.add_argument("--out", default="gpu-bench-out", help="results folder (rows, table, logs)")
    p.add_argument("--work", default="", help="data folder (default: a temp dir, removed)")
    p.add_argument(
        "--write",
        action="store_true",
        help="also put the table into benchmarks/RESULTS.md (## GPU), copied to --out",
    )
    p.add_argument("--tiles", default="", help="folder of real .jpg tiles to build stores of")
    p.add_argument("--budget", type=float, default=0.0, help="seconds in all (0 = the mode's)")
    p.add_argument("--only", default="", help=f"comma list of parts: {', '.join(ORDER)}")
    for hidden in ("--child", "--start", "--deadline"):  # the parent's calls to its children
        p.add_argument(hidden, default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Path(args.out).resolve()
    if args.child:
        return child(args.child, Path(args.work), out, int(args.start), float(args.deadline))
    only = [n.strip() for n in args.only.split(",") if n.strip()] or ORDER
    unknown = sorted(set(only) - set(ORDER))
    if unknown:
        print(f"--only {args.only}: unknown part(s) {', '.join(unknown)}; use {', '.join(ORDER)}",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.tiles and not any(Path(args.tiles).glob("*.jpg")):
        print(f"--tiles {args.tiles}: no .jpg tiles there; give a folder of JPEG tiles "
              "(e.g. shared/data/real/tiles) or leave it out", file=sys.stderr)  # fmt: skip
        return 2
    s = smoke_settings() if args.smoke else full_settings()
    if args.budget > 0:
        s = s.with_budget(args.budget)
    if args.tiles:
        s = replace(s, tiles=str(Path(args.tiles).resolve()))
    t0 = time.time()
    deadline = t0 + s.budget_s
    out.mkdir(parents=True, exist_ok=True)
    (out / ROWS).unlink(missing_ok=True)  # a fresh run: the rows of an old one would mix in
    own_work = not args.work
    work = Path(args.work or tempfile.mkdtemp(prefix="wsipipe-gpubench-")).resolve()
    (work / "stores").mkdir(parents=True, exist_ok=True)
    (work / "settings.json").write_text(s.to_json())
    command = "python -m benchmarks.gpu " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    rec = Recorder(out)
    try:
        todo = [n for n in ORDER if n in only]
        for i, name in enumerate(todo):
            share = s.shares[name] / sum(s.shares[n] for n in todo[i:])
            part_deadline = time.time() + share * max(0.0, deadline - time.time())
            print(f"[gpu bench] {name}: {part_deadline - time.time():.0f} s box", file=sys.stderr)
            run_part(parts()[name], s, work, out, part_deadline)
            print(rec.render(), file=sys.stderr)
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    table = rec.render()
    text = section(table, device_info(), command.strip(), time.time() - t0)
    (out / SECTION).write_text(text)
    if args.write:
        results = repo_root() / "benchmarks" / "RESULTS.md"
        merge_results(results, text)
        shutil.copyfile(results, out / "RESULTS.md")
    print(text)
    failed = [r for r in rec.rows() if r.metric == "failed" or (math.isnan(r.value) and
              "without CUDA" not in r.note)]  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
