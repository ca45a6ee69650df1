"""Shared helpers for the benchmarks: one row type, one table printer, peak-RSS probes.

Every benchmark module exposes ``run(quick: bool) -> list[Row]``; ``python -m benchmarks``
runs them all and prints one table.
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Row:
    benchmark: str  # e.g. "tile", "store", "scan"
    case: str  # e.g. "h5 random read, 1 core"
    metric: str  # e.g. "tiles/s"
    value: float
    unit: str = ""
    note: str = ""  # e.g. "0.82x of decode ceiling (goal >= 0.7)"


def format_table(rows: list[Row]) -> str:
    """Render rows as a Markdown table (readable in a terminal and in RESULTS.md)."""
    header = "| benchmark | case | metric | value | unit | note |"
    lines = [header, "|---|---|---|---:|---|---|"]
    for r in rows:
        value = f"{r.value:,.3g}" if abs(r.value) < 100 else f"{r.value:,.0f}"
        lines.append(f"| {r.benchmark} | {r.case} | {r.metric} | {value} | {r.unit} | {r.note} |")
    return "\n".join(lines)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_in_subprocess(code: str, timeout: float = 600.0) -> dict:
    """Run ``code`` in a fresh interpreter; it must print one JSON object on its last line.

    Used to measure peak RSS of one workload without the parent's allocations mixed in.
    """
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rows_to_json(rows: list[Row]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=1)


def replace_section(path: Path, heading: str, section: str) -> None:
    """Put ``section`` (text starting with ``## <heading>``) into the Markdown file ``path``
    in place of its ``## <heading>`` section (up to the next ``## ``), or append it; every
    other section is kept as it was."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    chunks = re.split(r"(?m)^(?=## )", old)
    head, sections = chunks[0], chunks[1:]
    title = f"## {heading}"
    new = section.rstrip() + "\n"
    hits = [i for i, c in enumerate(sections) if c.splitlines()[0].strip() == title]
    if hits:
        sections[hits[0]] = new
    else:
        sections.append(new)
    path.write_text(head.rstrip() + "\n\n" + "\n".join(c.rstrip() + "\n" for c in sections))


def timed_process(
    cmd: list[str], cwd: Path | str, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """(wall s, CPU s of the process and its children) of one command; raises on failure
    with the end of its output."""
    import time

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu
