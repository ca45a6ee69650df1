"""A small file system with a chosen amount of free space, for disk-full tests.

:func:`nearly_full` mounts a tmpfs (root only) and fills it with a filler file until
``free_kb`` KiB are left; :func:`skip_reason` says why that is impossible here (not root,
no ``mount``), so tests and the fault benchmark can skip with that reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path


def skip_reason() -> str | None:
    """Why a tmpfs cannot be mounted here, or None when it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "mounting a small tmpfs needs root"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "no mount/umount command"
    return None


def free_kb(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // 1024


@contextlib.contextmanager
def nearly_full(mount_point: Path, free: int, size_kb: int = 8192) -> Iterator[Path]:
    """Mount a ``size_kb`` KiB tmpfs at ``mount_point`` with ``free`` KiB left free;
    ``mount_point / "filler"`` holds the rest (delete it to free the space). Unmounted on
    exit. Raises RuntimeError with the reason when it cannot be mounted."""
    reason = skip_reason()
    if reason:
        raise RuntimeError(reason)
    mount_point.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mount_point)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"cannot mount a tmpfs: {res.stderr.strip() or res.returncode}")
    try:
        with open(mount_point / "filler", "wb") as fh:
            fh.write(bytes(max(0, free_kb(mount_point) - free - 8) * 1024))
            fh.flush()
            while free_kb(mount_point) > free:  # tmpfs counts whole pages: top up slowly
                fh.write(bytes(1024))
                fh.flush()
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
