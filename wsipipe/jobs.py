"""Per-slide batch jobs: skip what is done, lock what is running, publish atomically.

Every stage that writes per-slide outputs (tile, heatmap) runs through :func:`run_jobs`, so the
rules live in one place:

* A slide is *done* when ``status/<slide_id>.json`` says ``done`` for the same config hash and
  every output it lists exists. The status record is written last, after the outputs were
  moved into place with ``os.replace``; a killed run therefore never looks done.
* Outputs are built under ``<out>/.tmp/<slide_id>.<pid>/`` and only published on success, so a
  failure never overwrites good outputs of an earlier run.
* ``locks/<slide_id>.lock`` is created with ``O_CREAT | O_EXCL`` and records owner pid, host
  and start time. A lock whose process is gone (same host) is stale and is taken over; a live
  one makes that slide *busy* for this run (not a failure: the other run is doing it).
* A failed slide is recorded with its one-line reason; the batch continues. A full disk is
  "no space left on <out>", and a failure that cannot even be recorded is still reported.
* A run starts by deleting the temp files and folders of dead runs (never a live one's).
* Worker processes die with the run that started them (they never keep slides locked).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from wsipipe import __version__
from wsipipe.errors import LockedError, NoSpaceError, WsipipeError, warn
from wsipipe.fileio import (
    atomic_write_text,
    is_no_space,
    no_space_error,
    pid_alive,
    publish,
    remove_stale_temps,
)
from wsipipe.workers import die_with_parent, parent_alive

# a job's temp folder: .tmp/<slide_id>.<pid>
_JOB_TMP_RE = re.compile(r"^.+\.(\d+)$")


@dataclass(frozen=True)
class Job:
    """One slide's unit of work for a stage."""

    slide_id: str
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    slide_id: str
    state: str  # "done" | "skipped" | "busy" (locked by a live run) | "failed"
    reason: str = ""
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


# A stage's work function: builds every output in `tmp_dir` and returns
# ({output name relative to the out dir: file or directory inside tmp_dir}, info dict).
WorkFn = Callable[[Job, Path], tuple[dict[str, Path], dict[str, Any]]]
# A work function in two stages: the first runs in the caller's thread and returns the
# second, which returns what a WorkFn returns. :func:`run_staged_jobs` runs job k's second
# stage in a background thread while job k+1's first stage runs (e.g. the heatmap: slide k's
# outputs are written while slide k+1 is scored).
FinishFn = Callable[[], tuple[dict[str, Path], dict[str, Any]]]
StagedWorkFn = Callable[[Job, Path], FinishFn]


def _ready(result: tuple[dict[str, Path], dict[str, Any]]) -> FinishFn:
    return lambda: result


@dataclass(frozen=True)
class JobRunner:
    out_dir: Path
    stage: str
    config_hash: str
    overwrite: bool = False

    # ---- paths -------------------------------------------------------------------------
    def status_path(self, slide_id: str) -> Path:
        return self.out_dir / "status" / f"{slide_id}.json"

    def lock_path(self, slide_id: str) -> Path:
        return self.out_dir / "locks" / f"{slide_id}.lock"

    def remove_stale(self) -> list[Path]:
        """Delete what dead runs left: job temp folders and atomic-write temps."""
        removed = remove_stale_temps(self.out_dir / ".tmp", _JOB_TMP_RE)
        for folder in (self.out_dir, self.out_dir / "status"):
            removed += remove_stale_temps(folder)
        return removed

    # ---- completion records ----------------------------------------------------------
    def read_status(self, slide_id: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.status_path(slide_id).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def is_done(self, slide_id: str) -> bool:
        st = self.read_status(slide_id)
        if not st or st.get("state") != "done" or st.get("stage") != self.stage:
            return False
        if st.get("config_hash") != self.config_hash:
            return False
        return all((self.out_dir / rel).exists() for rel in st.get("outputs", []))

    def write_status(self, outcome: Outcome, outputs: Sequence[str] = ()) -> None:
        record = {
            "slide_id": outcome.slide_id,
            "stage": self.stage,
            "state": outcome.state,
            "reason": outcome.reason,
            "config_hash": self.config_hash,
            "outputs": list(outputs),
            "seconds": round(outcome.seconds, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wsipipe_version": __version__,
            **{k: v for k, v in outcome.info.items() if k not in ("outputs",)},
        }
        atomic_write_text(self.status_path(outcome.slide_id), json.dumps(record, indent=1))

    # ---- locking -----------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, slide_id: str) -> Iterator[None]:
        path = self.lock_path(slide_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _attempt in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._break_if_stale(path, slide_id)  # raises LockedError if held by a live run
                continue
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(owner, fh)
            except BaseException:  # e.g. disk full: leave no empty lock behind
                with contextlib.suppress(OSError):
                    path.unlink()
                raise
            break
        else:
            raise LockedError(self._lock_message(path, slide_id))
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _break_if_stale(self, path: Path, slide_id: str) -> None:
        """Remove a lock whose owner process is gone; LockedError if the owner is alive."""
        try:
            info = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            info = {}
        if not info:
            # Being written right now, or unreadable: treat as held unless very old.
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                return
            if age < 60:
                raise LockedError(self._lock_message(path, slide_id))
        elif info.get("host") != socket.gethostname() or pid_alive(int(info.get("pid", -1))):
            raise LockedError(self._lock_message(path, slide_id, info), int(info.get("pid", -1)))
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    @staticmethod
    def _lock_message(path: Path, slide_id: str, info: dict[str, Any] | None = None) -> str:
        who = ""
        if info:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
            who = f" by pid {info.get('pid')} on {info.get('host')} since {started}"
        return (
            f"{slide_id}: locked{who} ({path}); another run is processing it. If no such "
            f"process is running, delete {path} and re-run"
        )

    # ---- one job -----------------------------------------------------------------------
    def run_one(self, job: Job, work: WorkFn) -> Outcome:
        started = self.begin(job, lambda j, tmp: _ready(work(j, tmp)))
        return started if isinstance(started, Outcome) else started.finish()

    def begin(self, job: Job, first: StagedWorkFn) -> Outcome | Started:
        """Run the first stage of ``job`` under its lock.

        Returns the job's :class:`Outcome` when it ends here (skipped, or failed and
        recorded), else a :class:`Started` that holds the lock until its ``finish()``.
        """
        start = time.perf_counter()
        if not self.overwrite and self.is_done(job.slide_id):
            return Outcome(job.slide_id, "skipped", "already done")
        tmp_dir = self.out_dir / ".tmp" / f"{job.slide_id}.{os.getpid()}"
        held = contextlib.ExitStack()
        locked = False
        try:
            held.enter_context(self.lock(job.slide_id))
            locked = True
            # Re-check under the lock: a concurrent run may have finished it meanwhile.
            if not self.overwrite and self.is_done(job.slide_id):
                held.close()
                return Outcome(job.slide_id, "skipped", "already done")
            shutil.rmtree(tmp_dir, ignore_errors=True)
            tmp_dir.mkdir(parents=True)
            finish = first(job, tmp_dir)
        except BaseException as exc:
            if locked:  # the temp folder is ours only once the lock is
                shutil.rmtree(tmp_dir, ignore_errors=True)
            held.close()
            if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: stop the run
                raise
            if isinstance(exc, LockedError):  # another live run is doing it: not a failure
                info = {} if exc.holder_pid is None else {"holder_pid": exc.holder_pid}
                return Outcome(job.slide_id, "busy", single_line(str(exc)), info=info)
            return self._failed(job, exc, start)
        return Started(self, job, tmp_dir, start, held, finish)

    def _failed(self, job: Job, exc: Exception, start: float) -> Outcome:
        """Record ``exc`` as the job's failure (one line; a traceback for internal errors)."""
        seconds = time.perf_counter() - start
        if is_no_space(exc):  # named by the output folder, whichever file hit it
            path = getattr(exc, "path", None) or getattr(exc, "filename", None)
            exc = no_space_error(self.out_dir, path)
        if isinstance(exc, WsipipeError):
            outcome = Outcome(job.slide_id, "failed", single_line(str(exc)), seconds)
        else:  # a bug or an unexpected library error: record, continue
            reason = f"internal error {type(exc).__name__}: {single_line(str(exc))}"
            trace = "".join(traceback.format_exception(exc))
            outcome = Outcome(job.slide_id, "failed", reason, seconds, info={"traceback": trace})
        return self.record_failure(outcome)

    def record_failure(self, outcome: Outcome) -> Outcome:
        """Write the failure's status; a failure to do so (disk full) is noted on the outcome
        (without a status the slide is simply not done, so the next run retries it)."""
        # A failure must not erase the record of an earlier good run of the same slide:
        # keep its "done" status (its outputs are still in place) and note the failure beside.
        try:
            previous = self.read_status(outcome.slide_id)
            if previous and previous.get("state") == "done":
                path = self.status_path(outcome.slide_id).with_suffix(".failed.json")
                atomic_write_text(path, json.dumps({**outcome.info, "reason": outcome.reason}))
            else:
                self.write_status(outcome)
        except (OSError, WsipipeError) as exc:
            note = f"status not recorded: {single_line(str(exc))}"
            return Outcome(outcome.slide_id, outcome.state, outcome.reason, outcome.seconds,
                           {**outcome.info, "status_error": note})  # fmt: skip
        return outcome


@dataclass
class Started:
    """A job whose first stage succeeded: its lock is held and its outputs are half built in
    ``tmp_dir`` until :meth:`finish` (call it exactly once, from any one thread)."""

    runner: JobRunner
    job: Job
    tmp_dir: Path
    start: float
    held: contextlib.ExitStack  # the slide's lock
    second: FinishFn

    def finish(self) -> Outcome:
        """Run the second stage, publish the outputs, write the status; release the lock."""
        runner, job = self.runner, self.job
        try:
            outputs, info = self.second()
            published = [publish(src, runner.out_dir / rel) for rel, src in outputs.items()]
            seconds = time.perf_counter() - self.start
            outcome = Outcome(job.slide_id, "done", seconds=seconds, info=info)
            runner.write_status(outcome, [str(p.relative_to(runner.out_dir)) for p in published])
            return outcome
        except Exception as exc:
            failure = exc
        finally:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.held.close()
        return runner._failed(job, failure, self.start)


def single_line(text: str) -> str:
    """``text`` on one line (whitespace runs, newlines included, become one space)."""
    return " ".join(text.split())


def run_jobs(
    runner: JobRunner,
    jobs: Sequence[Job],
    work: WorkFn,
    workers: int = 1,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run ``work`` for every job (``workers`` processes), never stopping at a failure."""
    outcomes: list[Outcome] = []
    runner.remove_stale()
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            outcome = runner.run_one(job, work)
            outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)
        return outcomes
    # spawn: slide backends (OpenSlide, HDF5) are not fork-safe once opened in a parent.
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    )
    with pool:
        futures = {pool.submit(_run_in_worker, runner, job, work): job for job in jobs}
        for fut in as_completed(futures):
            job = futures[fut]
            try:
                outcome = fut.result()
            except Exception as exc:  # the worker process itself died
                reason = f"worker crashed: {single_line(str(exc))}"
                outcome = runner.record_failure(Outcome(job.slide_id, "failed", reason))
            outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)
    return outcomes


def _run_in_worker(runner: JobRunner, job: Job, work: WorkFn) -> Outcome:
    """One job in a pool worker; a worker whose run is gone stops instead of taking it."""
    if not parent_alive():
        os._exit(1)
    return runner.run_one(job, work)


def run_staged_jobs(
    runner: JobRunner,
    jobs: Sequence[Job],
    first: StagedWorkFn,
    on_outcome: Callable[[Outcome], None] | None = None,
    overlap: bool = True,
) -> list[Outcome]:
    """Run ``jobs`` in order in this process. With ``overlap``, pipelined: job k's second
    stage runs in one background thread while job k+1's first stage runs here (at most one
    second stage in flight, so at most two jobs' data in memory); without, each job's two
    stages run back to back here. Outcomes come in job order; a failure in either stage
    fails that job only."""
    outcomes: list[Outcome] = []
    runner.remove_stale()

    def record(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)

    if not overlap:
        for job in jobs:
            started = runner.begin(job, first)
            record(started if isinstance(started, Outcome) else started.finish())
        return outcomes
    with ThreadPoolExecutor(1, thread_name_prefix=f"{runner.stage}-finish") as pool:
        pending: Future[Outcome] | None = None
        try:
            for job in jobs:
                started = runner.begin(job, first)
                if pending is not None:
                    record(pending.result())
                    pending = None
                if isinstance(started, Outcome):
                    record(started)
                else:
                    pending = pool.submit(started.finish)
        finally:  # an interrupt still lets the job in flight finish (or fail) cleanly
            if pending is not None:
                record(pending.result())
    return outcomes


def write_summary(
    out_dir: Path, outcomes: Sequence[Outcome], name: str = "summary.csv"
) -> Path | None:
    """Run summary CSV (slide_id,state,seconds,reason + info columns), written atomically.

    On a full disk it warns (one line) and returns None: the outcomes are still printed."""

    import csv
    import io

    info_keys = sorted({k for o in outcomes for k, v in o.info.items() if _scalar(v)})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["slide_id", "state", "seconds", "reason", *info_keys])
    for o in sorted(outcomes, key=lambda o: o.slide_id):
        extra = [o.info.get(k, "") if _scalar(o.info.get(k, "")) else "" for k in info_keys]
        writer.writerow([o.slide_id, o.state, f"{o.seconds:.2f}", o.reason, *extra])
    path = out_dir / name
    try:
        atomic_write_text(path, buf.getvalue())
    except NoSpaceError as err:
        warn(f"{err}; {name} not written (the table printed below lists every slide)")
        return None
    return path


def file_state(path: Path) -> tuple[int, int] | None:
    """(inode, mtime in ns) of ``path``, None when it does not exist: taken before and after
    a run, it tells whether the run replaced the file (no clocks compared)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def summary_note(path: Path, before: tuple[int, int] | None) -> str:
    """``summary: <path>`` when ``path`` changed since ``before`` (:func:`file_state` taken
    before the run), else a note that this run could not write it (write_summary warned
    why): a summary left by an earlier run is not passed off as this one's."""
    now = file_state(path)
    if now is not None and now != before:
        return f"summary: {path}"
    return f"summary: not written ({path.name}: see the warning above)"


def _scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool)) and not (isinstance(v, str) and "\n" in v)
