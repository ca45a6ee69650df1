"""What a part's case sees: the settings, the data folder, the recorder, the device, and
GPU memory probes (peak allocated / reserved since the last reset)."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.gpu.record import Recorder
from benchmarks.gpu.settings import Settings

GB = 1e9
GOAL_GB = 5.0  # the IPS paper's headline: 250k patches per slide, batch 16, in 5 GB


@dataclass
class Ctx:
    s: Settings
    work: Path  # data built by the parent (stores/, labels_*.csv, features/)
    rec: Recorder
    device: torch.device

    @property
    def stores(self) -> Path:
        return self.work / "stores"

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def reset_peak(self) -> None:
        """Peaks from here on; what an earlier case left (a run not yet collected, cached
        blocks) is freed first, so that it does not count."""
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gb(self, sync: bool = True) -> tuple[float, float]:
        """(max_memory_allocated, max_memory_reserved) in GB since :meth:`reset_peak`;
        NaN without CUDA. ``sync=False`` from another thread (the watchdog)."""
        if not self.cuda:
            return float("nan"), float("nan")
        if sync:
            torch.cuda.synchronize(self.device)
        return (
            torch.cuda.max_memory_allocated(self.device) / GB,
            torch.cuda.max_memory_reserved(self.device) / GB,
        )

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def default_device() -> torch.device:
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def goal_note(alloc_gb: float) -> str:
    if alloc_gb != alloc_gb:  # NaN
        return "n/a without CUDA"
    return f"goal <= {GOAL_GB:g} GB: {'met' if alloc_gb <= GOAL_GB else 'not met'}"
