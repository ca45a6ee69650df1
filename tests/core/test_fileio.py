"""wsipipe.fileio: atomic durable writes keep the old file on failure; stale temps removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wsipipe.errors import NoSpaceError
from wsipipe.fileio import (
    atomic_path,
    atomic_write,
    atomic_write_text,
    pid_alive,
    publish,
    remove_stale_temps,
    temp_path,
)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_failed_write_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"good")

    def boom(fh: object) -> None:
        fh.write(b"half")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    with pytest.raises(NoSpaceError) as err:
        atomic_write(target, boom)
    assert str(err.value).startswith(
        f"no space left on {tmp_path} while writing {target} (a.bin is unchanged); free space"
    )
    assert target.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_atomic_path_for_library_writers(tmp_path: Path) -> None:
    target = tmp_path / "x.npy"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".x.npy.")
        tmp.write_bytes(b"abc")
        assert not target.exists()
    assert target.read_bytes() == b"abc"


def test_publish_swaps_a_directory(tmp_path: Path) -> None:
    old, new = tmp_path / "out", tmp_path / "new"
    old.mkdir()
    (old / "f").write_text("old")
    new.mkdir()
    (new / "f").write_text("new")
    publish(new, old)
    assert (old / "f").read_text() == "new" and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_remove_stale_temps_only_removes_dead_writers(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".last.pt.{dead_pid}.0a1b2c3d.tmp"
    stale.write_bytes(b"x")
    mine = temp_path(tmp_path / "last.pt")
    mine.write_bytes(b"y")
    live = tmp_path / f".config.yaml.{os.getppid()}.tmp"  # a live process (our parent)
    live.write_bytes(b"z")
    keep = tmp_path / "last.pt"
    keep.write_bytes(b"k")
    removed = remove_stale_temps(tmp_path)
    assert removed == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, live.name, "last.pt"])


def test_a_live_writers_temp_with_an_all_digit_random_part_is_kept(tmp_path: Path) -> None:
    """The random part of a temp name may be digits only (uuid hex, 2 % of names): it must
    not be read as the writer's pid."""
    mine = tmp_path / f".last.pt.{os.getpid()}.20055154.tmp"
    parent = tmp_path / f".slide.2024.{os.getppid()}.tmp"  # digits in the name, no random part
    for p in (mine, parent):
        p.write_bytes(b"y")
    assert remove_stale_temps(tmp_path) == []
    assert mine.exists() and parent.exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_a_zombie_is_not_alive() -> None:
    proc = subprocess.Popen(["true"])  # exits at once; not reaped until wait()
    try:
        deadline = time.time() + 10
        stat = Path(f"/proc/{proc.pid}/stat")
        while time.time() < deadline and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.01)
        assert not pid_alive(proc.pid)  # dead, though os.kill(pid, 0) still succeeds
        assert pid_alive(os.getpid())
    finally:
        proc.wait()
