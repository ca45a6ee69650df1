"""How a batch's per-slide outcomes are shown at the end of a run (tile, heatmap).

The table keeps each slide on one row; a reason too long for a table cell (a failure naming
a path) is printed whole on its own line below the table instead of being cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

STATES = ("done", "skipped", "busy", "failed")
COLOURS = {"done": "green", "skipped": "cyan", "busy": "yellow", "failed": "red"}
LONG_REASON = 48  # characters: longer reasons go below the table


def state_cell(outcome: Any) -> str:
    return f"[{COLOURS.get(outcome.state, 'white')}]{outcome.state}[/]"


def reason_cell(outcome: Any) -> str:
    return outcome.reason if len(outcome.reason) <= LONG_REASON else "(below)"


def long_reasons(outcomes: Sequence[Any]) -> list[str]:
    """``<slide> <state>: <reason>`` for every reason too long for the table, in slide order."""
    return [
        f"{o.slide_id} {o.state}: {o.reason}"
        for o in sorted(outcomes, key=lambda o: o.slide_id)
        if len(o.reason) > LONG_REASON
    ]


def counts_line(outcomes: Sequence[Any]) -> str:
    """``3 done, 0 skipped, 1 busy, 1 failed`` (busy only when some slide was)."""
    counts = {s: sum(o.state == s for o in outcomes) for s in STATES}
    shown = [s for s in STATES if s != "busy" or counts[s]]
    return ", ".join(f"{counts[s]} {s}" for s in shown)
