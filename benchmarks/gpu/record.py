"""Results of the GPU benchmark, written as they come: ``rows.jsonl`` (one event per line,
appended and flushed, so a run killed half-way keeps what it measured), ``table.md``
re-rendered after every row, and the RESULTS.md section with the machine and command."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.common import Row, format_table
from wsipipe.fileio import atomic_write_text

ROWS = "rows.jsonl"
TABLE = "table.md"
SECTION = "section.md"
HEADING = "### End to end on one GPU (`python -m benchmarks.gpu`, issue 15)"


class Recorder:
    """Appends events to ``out/rows.jsonl``: {"row": Row} or {"start"/"end": case key}."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / ROWS

    def _append(self, event: dict[str, Any]) -> None:
        line = json.dumps(event) + "\n"
        with self.path.open("ab+") as fh:
            if fh.tell() > 0:  # after a line cut by a kill, start a new one
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = "\n" + line
            fh.write(line.encode())
            fh.flush()
            os.fsync(fh.fileno())

    def row(self, row: Row, key: str = "") -> None:
        self._append({"row": asdict(row), "case": key})
        self.render()

    def start(self, key: str) -> None:
        self._append({"start": key, "t": time.time()})

    def end(self, key: str) -> None:
        self._append({"end": key, "t": time.time()})

    def events(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                continue
        return out

    def rows(self) -> list[Row]:
        return [Row(**e["row"]) for e in self.events() if "row" in e]

    def render(self) -> str:
        table = format_table(self.rows())
        atomic_write_text(self.out / TABLE, table + "\n")
        return table


def failure(bench: str, case: str, why: str) -> Row:
    """A row saying a case did not give its figures, and why (one line)."""
    line = " ".join(why.split())[:300]
    return Row(bench, case, "failed", math.nan, "", line)


# ---- the machine -----------------------------------------------------------------------------
def device_info() -> dict[str, str]:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda or "none"),
        "cpu_cores": str(os.cpu_count()),
        "device": "cpu (no CUDA)",
        "driver": "n/a",
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["device"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
        try:
            res = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=False,
            )  # fmt: skip
            info["driver"] = res.stdout.strip().splitlines()[0] if res.stdout.strip() else "?"
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = "unknown (no nvidia-smi)"
    return info


def section(table: str, info: dict[str, str], command: str, seconds: float) -> str:
    return (
        f"{HEADING}\n\nDevice: {info['device']}, driver {info['driver']}, CUDA "
        f"{info['cuda']}, {info['cpu_cores']} CPU cores  \nSoftware: torch {info['torch']}, "
        f"Python {info['python']}  \nDate: {time.strftime('%Y-%m-%d %H:%M %Z')}, "
        f"{seconds:.0f} s in all  \nCommand: `{command}` (what each part measures: "
        f"benchmarks/README.md, GPU)\n\n{table}\n"
    )


def merge_results(results: Path, text: str) -> None:
    """Put ``text`` (a ``### ...`` section) into the ``## GPU`` section of RESULTS.md,
    replacing an earlier run of this benchmark; the rest of the file is kept."""
    old = results.read_text() if results.exists() else "# Benchmark results\n"
    if "## GPU\n" not in old:
        old = old.rstrip() + "\n\n## GPU\n"
    head, gpu = old.split("## GPU\n", 1)
    nxt = gpu.find("\n## ")
    tail = gpu[nxt:] if nxt >= 0 else ""
    gpu = gpu[:nxt] if nxt >= 0 else gpu
    if HEADING in gpu:
        before, after = gpu.split(HEADING, 1)
        cut = after.find("\n### ")
        gpu = before + (after[cut + 1 :] if cut >= 0 else "")
    body = gpu.strip()
    gpu = "\n" + (body + "\n\n" if body else "") + text.rstrip() + "\n"
    atomic_write_text(results, head + "## GPU\n" + gpu + tail)
