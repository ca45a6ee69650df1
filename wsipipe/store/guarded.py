"""A file object for HDF5 writers that never lets the HDF5 library see a failed write.

When a write fails (disk full, quota, I/O error), HDF5 2.x leaves the file's metadata cache
in a state it can neither flush nor destroy: closing raises, and the garbage collector later
crashes the interpreter ("Can't destroy cache (slist already enabled?)", then a segfault).
:class:`GuardedFile` is handed to ``h5py.File`` instead of a path: after the first failed
write it keeps later writes in memory (a writer stops at its next append, so that is at most
the chunk cache and one append) and reads them back from there, so the library stays
consistent and closes cleanly. The caller then raises :attr:`GuardedFile.error` and deletes
the unusable file.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any


class GuardedFile(io.RawIOBase):
    """Binary read/write file at ``path`` (created or truncated) that records the first
    :class:`OSError` of a write or truncate in :attr:`error` instead of raising it."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.error: OSError | None = None
        self._pos = 0
        self._size = 0
        self._held: dict[int, bytes] = {}  # offset -> bytes not on disk (after an error)

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self._pos = pos
        elif whence == os.SEEK_CUR:
            self._pos += pos
        else:
            self._pos = self._size + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        n, pos = len(out), self._pos
        data = os.pread(self._fd, n, pos)
        out[: len(data)] = data
        out[len(data) :] = bytes(n - len(data))
        for off, held in self._held.items():  # later writes win: they come later
            a, z = max(off, pos), min(off + len(held), pos + n)
            if a < z:
                out[a - pos : z - pos] = held[a - off : z - off]
        self._pos += n
        return n

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += os.pwrite(self._fd, view[done:], self._pos + done)
            except OSError as err:
                self.error = _with_path(err, self.path)
        if self.error is not None:
            self._held.pop(self._pos, None)  # re-insert: the dict order is the write order
            self._held[self._pos] = bytes(view)
        self._pos += len(view)
        self._size = max(self._size, self._pos)
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self._fd, size)
            except OSError as err:
                self.error = _with_path(err, self.path)
        self._size = size
        return size

    def flush(self) -> None:
        pass  # nothing buffered here: every write went to the OS (or is held after an error)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
            self._held.clear()
        super().close()


def _with_path(err: OSError, path: Path) -> OSError:
    return err if err.filename else type(err)(err.errno, err.strerror, str(path))
