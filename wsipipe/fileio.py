"""The one place files are written durably: atomic writes, publishing, safe names.

Every output wsipipe writes goes through :func:`atomic_write` (or its text/bytes shorthands):
the content is written to a temporary sibling ``.<name>.<pid>.<random>.tmp``, flushed and
fsynced, then renamed over the target with ``os.replace`` (and the folder fsynced), so a
reader never sees a half-written file and a crash leaves the old version intact. The temp
name carries the writer's pid so that a later run can tell a dead writer's leftovers from a
live one's (:func:`remove_stale_temps`). A write that fails removes its temp file; one that
fails for want of space raises :class:`~wsipipe.errors.NoSpaceError` naming the folder.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from wsipipe.errors import ConfigError, NoSpaceError

SAFE_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+")
# .<name>.<pid>[.<8 hex>].tmp  (the pid tells whose leftover it is). Matched lazily with an
# 8-character random part, so a random part of digits only (2 % of them) is not the pid.
_TEMP_RE = re.compile(r"^\..+?\.(\d+)(?:\.[0-9a-f]{8})?\.tmp$")
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` is a write that failed because the file system is full / over quota."""
    return isinstance(exc, NoSpaceError) or (isinstance(exc, OSError) and exc.errno in _NO_SPACE)


def no_space_error(
    folder: str | Path, writing: str | Path | None = None, note: str = ""
) -> NoSpaceError:
    """The one-line error for a full file system at ``folder`` (while writing ``writing``)."""
    what = f" while writing {writing}" if writing else ""
    err = NoSpaceError(
        f"no space left on {folder}{what}{note}; free space there (or write elsewhere) and re-run"
    )
    err.path = None if writing is None else str(writing)
    return err


def check_slide_id(slide_id: str, source: str = "slide id") -> str:
    """Slide ids are file-name-safe names, never paths (``../x`` must not escape ``--out``)."""
    if (
        not slide_id
        or slide_id in (".", "..")
        or slide_id.startswith(".")
        or not set(slide_id) <= SAFE_ID_CHARS
    ):
        raise ConfigError(
            f"{source}: slide id {slide_id!r} is not a plain name; use letters, digits, "
            "'.', '_', '-', '+' only (no '/', no leading '.')"
        )
    return slide_id


def temp_path(path: str | Path) -> Path:
    """A fresh temporary sibling of ``path`` (same folder, so the final rename is atomic)."""
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_durably(tmp: Path, path: Path) -> None:
    """fsync the finished file ``tmp``, rename it over ``path``, fsync the folder."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to (by any library); on a clean exit
    it is fsynced and renamed into place, on an error it is removed and ``path`` untouched."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(p)
        try:
            yield tmp
            replace_durably(tmp, p)
        finally:
            with contextlib.suppress(OSError):  # never hide the write's own error
                tmp.unlink(missing_ok=True)
    except OSError as err:
        if is_no_space(err):
            raise no_space_error(p.parent, p, f" ({p.name} is unchanged)") from err
        raise


class _Recording:
    """A binary file wrapper that remembers the OSError of a failed write, for serialisers
    that replace it with their own error (torch.save raises "unexpected pos")."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._fh.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str) -> object:
        return getattr(self._fh, name)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` atomically and durably: ``write(fh)`` fills a binary temp file."""
    with atomic_path(path) as tmp, open(tmp, "xb") as fh:
        rec = _Recording(fh)
        try:
            write(rec)  # type: ignore[arg-type]
        except Exception as exc:
            if rec.error is not None and exc is not rec.error:
                raise rec.error from exc
            raise
        fh.flush()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy the file ``src`` to ``dst`` atomically (temp file, fsync, rename)."""
    with open(src, "rb") as fh:
        atomic_write(dst, lambda out: shutil.copyfileobj(fh, out, 1 << 20))


def atomic_write_csv(
    path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """A CSV with LF line ends (a field holding a comma or quote is quoted), atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def publish(src: Path, dst: Path) -> Path:
    """Move a finished file or directory into place atomically, replacing an old one.

    A directory cannot be swapped in one rename: the old one is first renamed aside, the new
    one renamed in, then the old one deleted, so a crash leaves either version intact.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        aside = dst.with_name(f".{dst.name}.old.{os.getpid()}")
        if dst.exists():
            os.replace(dst, aside)
        os.replace(src, dst)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        if dst.is_dir():
            shutil.rmtree(dst)
        os.replace(src, dst)
    fsync_dir(dst.parent)
    return dst


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie, dead but not yet reaped, does
    not: a killed worker's lock must not block the next run until its reaper comes by)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: the state is the field after the parenthesised command name
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def remove_stale_temps(folder: Path, pattern: re.Pattern[str] = _TEMP_RE) -> list[Path]:
    """Delete the temp files and folders in ``folder`` whose writer process is gone; a live
    writer's are kept. ``pattern`` matches a temp's name, its group 1 the writer's pid
    (default: ``.<name>.<pid>.<hex>.tmp``). Returns what was removed."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = pattern.match(p.name)
        if m is None or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed
