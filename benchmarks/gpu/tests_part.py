"""Part 4, ``tests``: the ``gpu``-marked tests (``pytest -m gpu``) on this machine, counts."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

from benchmarks.common import Row
from benchmarks.gpu.context import Ctx
from benchmarks.gpu.settings import Settings, repo_root

_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def gpu_test_files() -> list[str]:
    """Test files that hold ``gpu``-marked tests (collecting only them is quicker)."""
    root = repo_root()
    return sorted(str(p.relative_to(root)) for p in (root / "tests").rglob("test_*.py")
                  if "mark.gpu" in p.read_text())  # fmt: skip


def tests_cases(s: Settings) -> list[dict[str, Any]]:
    return [{"step": "pytest -m gpu"}]


def tests_label(s: Settings, case: dict[str, Any]) -> str:
    return "pytest -m gpu (" + ", ".join(gpu_test_files()) + ")"


def counts(text: str) -> dict[str, int]:
    """{"passed": 3, "skipped": 1, ...} from pytest's summary line (the last that has one)."""
    found: dict[str, int] = {}
    for line in reversed(text.strip().splitlines()):
        hits = _COUNT.findall(line)
        if hits:
            for num, what in hits:
                found["errors" if what.startswith("error") else what] = int(num)
            break
    return found


def tests_case(ctx: Ctx, case: dict[str, Any]) -> list[Row]:
    files = gpu_test_files()
    if not files:
        raise RuntimeError("no test file under tests/ has a `mark.gpu` test")
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
    proc = subprocess.run(cmd, cwd=repo_root(), capture_output=True, text=True, check=False,
                          timeout=max(10.0, ctx.s.case_cap_s - 5))  # fmt: skip
    (ctx.rec.out / "logs").mkdir(exist_ok=True)
    (ctx.rec.out / "logs" / "pytest_gpu.log").write_text(proc.stdout + proc.stderr)
    got = counts(proc.stdout)
    if not got:
        raise RuntimeError(f"pytest rc {proc.returncode}: {(proc.stdout + proc.stderr)[-300:]}")
    label = tests_label(ctx.s, case)
    summary = ", ".join(f"{v} {k}" for k, v in got.items())
    kinds = ("passed", "failed", "errors", "skipped")
    return [Row("tests", label, f"tests {k}", float(got.get(k, 0)), "",
                summary if k == "passed" else "") for k in kinds]  # fmt: skip
