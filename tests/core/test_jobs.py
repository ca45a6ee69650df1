from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from wsipipe.errors import ConfigError, SlideError
from wsipipe.fileio import check_slide_id
from wsipipe.jobs import (
    Job,
    JobRunner,
    Started,
    run_jobs,
    run_staged_jobs,
    write_summary,
)


def good_work(job: Job, tmp: Path):
    (tmp / "a.txt").write_text(job.inputs.get("text", "new"))
    (tmp / "d").mkdir()
    (tmp / "d" / "x.bin").write_bytes(b"123")
    return {f"out/{job.slide_id}.txt": tmp / "a.txt", f"dirs/{job.slide_id}": tmp / "d"}, {
        "n_tiles": 3
    }


def failing_work(job: Job, tmp: Path):
    (tmp / "partial.txt").write_text("half")
    raise SlideError(f"{job.slide_id}.svs: truncated file; re-copy the slide")


def buggy_work(job: Job, tmp: Path):
    raise ZeroDivisionError("oops")


def test_done_then_skipped_and_status_written_last(tmp_path):
    r = JobRunner(tmp_path, "tile", "h1")
    o = r.run_one(Job("s1"), good_work)
    assert o.state == "done"
    assert (tmp_path / "out/s1.txt").read_text() == "new"
    assert (tmp_path / "dirs/s1/x.bin").read_bytes() == b"123"
    st = json.loads((tmp_path / "status/s1.json").read_text())
    assert st["state"] == "done" and st["n_tiles"] == 3
    assert sorted(st["outputs"]) == ["dirs/s1", "out/s1.txt"]
    assert not any((tmp_path / ".tmp").iterdir())  # temp folder cleaned
    assert not (tmp_path / "locks/s1.lock").exists()
    assert r.run_one(Job("s1"), good_work).state == "skipped"


def test_changed_config_or_missing_output_redoes(tmp_path):
    JobRunner(tmp_path, "tile", "h1").run_one(Job("s1"), good_work)
    assert JobRunner(tmp_path, "tile", "h2").run_one(Job("s1"), good_work).state == "done"
    (tmp_path / "out/s1.txt").unlink()  # user deleted one output
    assert JobRunner(tmp_path, "tile", "h2").run_one(Job("s1"), good_work).state == "done"


def test_failure_recorded_nothing_left_behind(tmp_path):
    r = JobRunner(tmp_path, "tile", "h1")
    o = r.run_one(Job("bad"), failing_work)
    assert o.state == "failed" and "truncated file" in o.reason and "\n" not in o.reason
    assert json.loads((tmp_path / "status/bad.json").read_text())["state"] == "failed"
    assert not (tmp_path / "out").exists()
    assert not any((tmp_path / ".tmp").iterdir())
    # A failed slide is not done: the next run tries it again.
    assert r.run_one(Job("bad"), good_work).state == "done"


def test_failed_overwrite_keeps_good_output(tmp_path):
    JobRunner(tmp_path, "tile", "h1").run_one(Job("s1", {"text": "good"}), good_work)
    o = JobRunner(tmp_path, "tile", "h1", overwrite=True).run_one(Job("s1"), failing_work)
    assert o.state == "failed"
    assert (tmp_path / "out/s1.txt").read_text() == "good"
    assert json.loads((tmp_path / "status/s1.json").read_text())["state"] == "done"
    assert "truncated" in (tmp_path / "status/s1.failed.json").read_text()


def test_internal_error_recorded_with_traceback(tmp_path):
    o = JobRunner(tmp_path, "tile", "h1").run_one(Job("s1"), buggy_work)
    assert o.state == "failed" and o.reason.startswith("internal error ZeroDivisionError")
    assert "Traceback" in json.loads((tmp_path / "status/s1.json").read_text())["traceback"]


def test_killed_run_leftovers_are_not_done(tmp_path):
    # What a SIGKILL mid-slide leaves: a temp folder and a lock of a dead process, no status.
    (tmp_path / ".tmp/s1.12345").mkdir(parents=True)
    (tmp_path / "locks").mkdir()
    dead = {"pid": 2**22 + 7, "host": socket.gethostname(), "started": 0}
    (tmp_path / "locks/s1.lock").write_text(json.dumps(dead))
    r = JobRunner(tmp_path, "tile", "h1")
    assert not r.is_done("s1")
    assert r.run_one(Job("s1"), good_work).state == "done"  # stale lock taken over


def test_live_lock_blocks_second_run(tmp_path):
    (tmp_path / "locks").mkdir()
    live = {"pid": os.getpid(), "host": socket.gethostname(), "started": 0}
    (tmp_path / "locks/s1.lock").write_text(json.dumps(live))
    o = JobRunner(tmp_path, "tile", "h1").run_one(Job("s1"), good_work)
    assert o.state == "busy" and "locked by pid" in o.reason and "delete" in o.reason
    assert o.info == {"holder_pid": os.getpid()}
    assert not (tmp_path / "status/s1.json").exists()  # busy is not a failure to record
    assert (tmp_path / "locks/s1.lock").exists()  # someone else's lock is left alone
    assert not (tmp_path / "out").exists()


def test_parallel_batch_continues_past_failures(tmp_path):
    r = JobRunner(tmp_path, "tile", "h1")
    jobs = [Job("a"), Job("b"), Job("c")]
    outcomes = run_jobs(r, jobs, good_work, workers=2)
    assert sorted(o.state for o in outcomes) == ["done"] * 3
    outcomes = run_jobs(JobRunner(tmp_path, "tile", "h2"), [Job("x"), Job("a")], failing_work)
    assert [o.state for o in outcomes] == ["failed", "failed"]
    summary = write_summary(tmp_path, outcomes)
    assert summary.read_text().splitlines()[0].startswith("slide_id,state,seconds,reason")


class _Staged:
    """A two-stage work function that logs the order in which stages start and end."""

    def __init__(self, fail: dict[str, str] | None = None) -> None:
        import threading

        self.log: list[str] = []
        self.fail = fail or {}
        self.main = threading.get_ident()
        self.second_threads: set[int] = set()

    def __call__(self, job: Job, tmp: Path):
        import threading
        import time

        sid = job.slide_id
        self.log.append(f"first {sid}")
        if self.fail.get(sid) == "first":
            raise SlideError(f"{sid}.svs: unreadable; re-copy the slide")
        (tmp / "half.txt").write_text("half")

        def second():
            self.second_threads.add(threading.get_ident())
            self.log.append(f"second {sid} start")
            time.sleep(0.05)  # long enough for the next job's first stage to run meanwhile
            assert (tmp / "half.txt").exists()  # the first stage's files are still there
            if self.fail.get(sid) == "second":
                raise ValueError("writer broke")
            (tmp / "a.txt").write_text(sid)
            self.log.append(f"second {sid} end")
            return {f"out/{sid}.txt": tmp / "a.txt"}, {"n": 1}

        return second


def test_staged_jobs_overlap_and_publish_in_order(tmp_path):
    r = JobRunner(tmp_path, "heatmap", "h1")
    work = _Staged()
    outcomes = run_staged_jobs(r, [Job("a"), Job("b"), Job("c")], work)
    assert [(o.slide_id, o.state) for o in outcomes] == [
        ("a", "done"),
        ("b", "done"),
        ("c", "done"),
    ]
    for sid in "abc":
        assert (tmp_path / f"out/{sid}.txt").read_text() == sid
        assert json.loads((tmp_path / f"status/{sid}.json").read_text())["state"] == "done"
    # b's first stage ran while a's second stage was running (the pipelining)
    assert work.log.index("first b") < work.log.index("second a end")
    assert work.main not in work.second_threads  # second stages run off the main thread
    assert not any((tmp_path / ".tmp").iterdir()) and not any((tmp_path / "locks").iterdir())
    again = run_staged_jobs(r, [Job("a"), Job("b")], _Staged())
    assert [o.state for o in again] == ["skipped", "skipped"]


@pytest.mark.parametrize("overlap", [True, False])
def test_staged_failures_fail_their_job_only_and_leave_nothing(tmp_path, overlap):
    r = JobRunner(tmp_path, "heatmap", "h1")
    work = _Staged(fail={"a": "first", "b": "second"})
    outcomes = run_staged_jobs(r, [Job("a"), Job("b"), Job("c")], work, overlap=overlap)
    assert [o.state for o in outcomes] == ["failed", "failed", "done"]
    assert "unreadable" in outcomes[0].reason
    assert outcomes[1].reason.startswith("internal error ValueError: writer broke")
    assert "Traceback" in json.loads((tmp_path / "status/b.json").read_text())["traceback"]
    assert not (tmp_path / "out/a.txt").exists() and not (tmp_path / "out/b.txt").exists()
    assert not any((tmp_path / ".tmp").iterdir())
    assert not any((tmp_path / "locks").iterdir())  # every lock released, failed ones too


def test_staged_without_overlap_runs_each_job_to_the_end_in_this_thread(tmp_path):
    work = _Staged()
    outcomes = run_staged_jobs(JobRunner(tmp_path, "heatmap", "h1"), [Job("a"), Job("b")], work,
                               overlap=False)  # fmt: skip
    assert [o.state for o in outcomes] == ["done", "done"]
    assert work.log == ["first a", "second a start", "second a end", "first b",
                        "second b start", "second b end"]  # fmt: skip
    assert work.second_threads == {work.main}


def test_staged_lock_is_held_until_the_second_stage_ends(tmp_path):
    r = JobRunner(tmp_path, "heatmap", "h1")
    started = r.begin(Job("a"), _Staged())
    assert isinstance(started, Started)
    # a concurrent run meanwhile finds the slide locked
    assert r.run_one(Job("a"), good_work).state == "busy"
    assert started.finish().state == "done"
    assert not (tmp_path / "locks/a.lock").exists()


@pytest.mark.parametrize("bad", ["../evil", "a/b", "", ".hidden", ".."])
def test_slide_ids_cannot_escape(bad):
    with pytest.raises(ConfigError, match="not a plain name"):
        check_slide_id(bad)
    assert check_slide_id("TCGA-AB-1234-01Z.DX1") == "TCGA-AB-1234-01Z.DX1"


def test_run_removes_dead_runs_temps_and_keeps_live_ones(tmp_path):
    dead, live = 2**22 + 7, os.getppid()  # above pid_max: never alive; our parent: alive
    planted = {
        "dead_job": tmp_path / ".tmp" / f"s1.{dead}",  # a killed run's job folder
        "dead_status": tmp_path / "status" / f".s1.json.{dead}.0badc0de.tmp",
        "dead_config": tmp_path / f".config.yaml.{dead}.tmp",
        "live_job": tmp_path / ".tmp" / f"s2.{live}",  # another live run's: untouched
        "live_status": tmp_path / "status" / f".s2.json.{live}.0badc0de.tmp",
    }
    for name, p in planted.items():
        if name.endswith("job"):
            (p / "stores").mkdir(parents=True)
            (p / "stores" / "half.h5").write_bytes(b"half")
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("half")
    outcomes = run_jobs(JobRunner(tmp_path, "tile", "h1"), [Job("s1")], good_work)
    assert [o.state for o in outcomes] == ["done"]
    assert {n for n, p in planted.items() if p.exists()} == {"live_job", "live_status"}


def test_summary_note_names_only_a_summary_this_run_wrote(tmp_path: Path) -> None:
    """The CLIs' last line points at summary.csv only when this run wrote it: a full disk
    leaves an earlier run's file in place, which must not pass for this run's. No clocks
    are compared (an NFS server's may differ from the node's)."""
    from wsipipe.fileio import atomic_write_text
    from wsipipe.jobs import file_state, summary_note

    path = tmp_path / "summary.csv"
    missing = "summary: not written (summary.csv: see the warning above)"
    assert file_state(path) is None
    assert summary_note(path, None) == missing  # never written
    atomic_write_text(path, "slide_id,state\n")
    assert summary_note(path, None) == f"summary: {path}"  # written by this run
    before = file_state(path)  # an earlier run's summary
    assert summary_note(path, before) == missing  # this run could not replace it
    os.utime(path, ns=(0, 0))  # even with a clock far in the past
    atomic_write_text(path, "slide_id,state\n")
    assert summary_note(path, before) == f"summary: {path}"
