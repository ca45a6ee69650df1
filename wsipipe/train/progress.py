"""Console output of a run: a rich progress bar (slides/s, tiles/s, loss) and epoch lines.

Only rank 0 prints; with ``enabled=False`` (tests, non-interactive jobs) nothing is drawn
but the per-epoch summary line still goes to stderr.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any


class RunProgress:
    def __init__(self, enabled: bool, main: bool) -> None:
        from rich.console import Console

        self.main = main
        self.console = Console(stderr=True, quiet=not main)
        self._progress: Any = None
        self._task: Any = None
        self._t0 = 0.0
        self.enabled = enabled and main

    def __enter__(self) -> RunProgress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[stats]}"),
                console=self.console,
                transient=True,
            )
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def start(self, description: str, total: int) -> None:
        self._t0 = time.perf_counter()
        if self._progress is not None:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(description, total=total, stats="")

    def advance(self, n: int, slides: int, tiles: int, loss: float | None = None) -> None:
        if self._progress is None or self._task is None:
            return
        dt = max(time.perf_counter() - self._t0, 1e-9)
        stats = f"{slides / dt:.2f} slides/s  {tiles / dt:,.0f} tiles/s"
        if loss is not None:
            stats += f"  loss {loss:.4f}"
        self._progress.update(self._task, advance=n, stats=stats)

    def log(self, text: str) -> None:
        if not self.main:
            return
        if self._progress is not None:
            self._progress.console.print(text, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)
