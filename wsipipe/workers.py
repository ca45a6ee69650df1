"""Worker processes that die with the run that started them.

A pool worker whose parent was killed (``kill -9``, OOM killer) would otherwise go on taking
queued slides, holding their locks, then idle: :func:`die_with_parent` (the pool's
initializer) asks Linux to send it SIGKILL when the parent dies (``PR_SET_PDEATHSIG``), and
:func:`parent_alive`, checked before each job, is the portable fallback.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
_parent_pid: int | None = None


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: remember the parent; on Linux, be killed when it dies."""
    global _parent_pid
    _parent_pid = parent_pid
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: parent_alive() between jobs still stops this worker
    if not parent_alive():  # the parent died before the request took effect
        os._exit(1)


def parent_alive() -> bool:
    """Whether the process that started this worker is still its parent (True outside a
    worker)."""
    return _parent_pid is None or os.getppid() == _parent_pid
