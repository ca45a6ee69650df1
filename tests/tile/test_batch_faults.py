"""`wsipipe tile` under batch faults: the parent killed with workers running, a slide locked
by another live run, a failure reason too long for the results table."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wsipipe.cli import app
from wsipipe.testing.slides import synthetic_rgb, write_aperio_like

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    for i in range(6):
        write_aperio_like(folder / f"s{i}.svs", synthetic_rgb(768, 768, seed=i), mpp=0.5)
    return folder


def tile(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["tile", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def children(pid: int) -> list[int]:
    """Live (non-zombie) processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_workers_die_with_their_killed_parent(tmp_path, slides):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "wsipipe", "tile", str(slides), "--out", str(out),
           "--workers", "2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "locks").glob("*.lock")):
        time.sleep(0.01)  # a worker holds a slide: the others are queued
    workers = children(proc.pid)
    assert workers, "the run has no worker processes"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 5
    while time.time() < deadline and any(running(p) for p in workers):
        time.sleep(0.05)
    assert not [p for p in workers if running(p)], "workers outlived their parent"
    code, text = tile(str(slides), "--out", str(out))
    assert code == 0, text
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert sorted(r["slide_id"] for r in rows) == [f"s{i}" for i in range(6)]
    assert {r["state"] for r in rows} <= {"done", "skipped"}, rows
    assert not any((out / "locks").iterdir()) and not any((out / ".tmp").iterdir())


def test_slide_locked_by_a_live_run_is_busy_not_failed(tmp_path, slides):
    out = tmp_path / "out"
    holder = subprocess.Popen(["sleep", "60"])  # stands for the other run's process
    try:
        (out / "locks").mkdir(parents=True)
        lock = {"pid": holder.pid, "host": socket.gethostname(), "started": time.time()}
        (out / "locks" / "s1.lock").write_text(json.dumps(lock))
        code, text = tile(str(slides / "s0.svs"), str(slides / "s1.svs"), "--out", str(out))
        assert code == 0, text  # busy alone does not fail the run
        assert "1 done, 0 skipped, 1 busy, 0 failed" in text, text
        rows = {r["slide_id"]: r for r in csv.DictReader((out / "summary.csv").open())}
        assert rows["s0"]["state"] == "done"
        assert rows["s1"]["state"] == "busy" and rows["s1"]["holder_pid"] == str(holder.pid)
        assert f"locked by pid {holder.pid}" in rows["s1"]["reason"]
        assert not (out / "status" / "s1.json").exists()  # nothing recorded for it
        assert (out / "locks" / "s1.lock").exists()  # the holder's lock is left alone
    finally:
        holder.kill()
        holder.wait()
    code, text = tile(str(slides / "s0.svs"), str(slides / "s1.svs"), "--out", str(out))
    assert code == 0 and "1 done, 1 skipped, 0 failed" in text, text  # holder gone: stale


def test_long_failure_reason_is_printed_whole(tmp_path, slides):
    folder = tmp_path / ("a-long-folder-name-for-the-slides-" * 3)
    folder.mkdir()
    bad = folder / "cut.svs"
    bad.write_bytes((slides / "s0.svs").read_bytes()[:50_000])  # a truncated copy
    out = tmp_path / "out"
    code, text = tile(str(bad), "--out", str(out))
    assert code == 1
    reason = json.loads((out / "status" / "cut.json").read_text())["reason"]
    assert str(bad) in reason and len(reason) > 150
    assert f"cut failed: {reason}" in text.splitlines(), text
