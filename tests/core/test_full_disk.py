"""Writes on a full disk (a small tmpfs; root only, skipped otherwise): one-line errors that
name the folder, no temp file, no empty lock, the failure still reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsipipe.errors import NoSpaceError, SlideError
from wsipipe.fileio import atomic_write_text
from wsipipe.jobs import Job, JobRunner
from wsipipe.testing.fullfs import nearly_full, skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))


def failing_work(job: Job, tmp: Path):
    raise SlideError(f"{job.slide_id}.svs: truncated file; re-copy the slide")


def good_work(job: Job, tmp: Path):
    (tmp / "a.txt").write_text("x")
    return {f"out/{job.slide_id}.txt": tmp / "a.txt"}, {}


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_atomic_write_on_a_full_disk(tmp_path):
    with nearly_full(tmp_path / "mnt", 0) as disk:
        target = disk / "cfg" / "config.yaml"
        target.parent.mkdir()
        with pytest.raises(NoSpaceError) as err:
            atomic_write_text(target, "x" * 100_000)
        msg = str(err.value)
        assert msg.startswith(f"no space left on {target.parent} while writing {target}"), msg
        assert "\n" not in msg
        assert files(disk) == ["filler"]  # the temp file is gone


def test_failure_on_a_full_disk_is_reported_not_raised(tmp_path):
    with nearly_full(tmp_path / "mnt", 0) as disk:
        out = disk / "out"
        for sub in ("status", "locks", ".tmp"):
            (out / sub).mkdir(parents=True)
        r = JobRunner(out, "tile", "h1")
        for work in (failing_work, good_work):  # even the lock cannot be written
            o = r.run_one(Job("s1"), work)
            assert o.state == "failed"
            assert o.reason.startswith(f"no space left on {out}"), o.reason
            assert o.info["status_error"].startswith("status not recorded: no space left on")
        assert files(disk) == ["filler"]  # no empty lock, no temp status, no job folder
        assert not any((out / ".tmp").iterdir()) and not any((out / "locks").iterdir())


def fill_then_fail(job: Job, tmp: Path):
    """Takes the last free byte of the disk (the lock is already written), then fails."""
    with open(tmp.parents[2] / "more-filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(bytes(4096))
        except OSError:
            pass
    # longer than the page the lock frees when it is released, so the status cannot fit
    raise SlideError(f"{job.slide_id}.svs: truncated file; re-copy the slide{'.' * 6000}")


def test_failure_reported_when_its_status_cannot_be_written(tmp_path):
    with nearly_full(tmp_path / "mnt", 64) as disk:
        out = disk / "out"
        o = JobRunner(out, "tile", "h1").run_one(Job("s1"), fill_then_fail)
        assert o.state == "failed"
        assert o.reason.startswith("s1.svs: truncated file;")  # the cause, not ENOSPC
        assert o.info["status_error"].startswith(
            f"status not recorded: no space left on {out / 'status'} while writing"
        )
        assert files(out) == []  # no status, no temp status, no lock, no job folder
