"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_ratio`` x base lr.

The schedule is a pure function of the optimiser step, so a resumed run continues with
exactly the learning rate the uninterrupted run would have used.
"""

from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 1e-3) -> float:
    """Multiplier of the base lr for optimiser step ``step`` (0-based).

    Warm-up: steps 0..warmup_steps-1 rise linearly, ``(step + 1) / warmup_steps``, reaching 1
    at the last warm-up step. Then cosine from 1 at ``warmup_steps`` to ``min_ratio`` at
    ``total_steps - 1``; steps past the end stay at ``min_ratio``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, {total_steps}], got {warmup_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps - 1
    if decay_steps <= 0:
        return 1.0 if step == warmup_steps else min_ratio
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_steps(
    n_slides: int, batch_size: int, epochs: int, warmup_epochs: float
) -> tuple[int, int, int]:
    """(steps per epoch, total steps, warm-up steps) for one rank's shard of slides."""
    per_epoch = max(1, math.ceil(n_slides / batch_size))
    total = per_epoch * epochs
    warmup = min(total, round(per_epoch * warmup_epochs))
    return per_epoch, total, warmup


class WarmupCosine:
    """Callable for ``torch.optim.lr_scheduler.LambdaLR`` (picklable, state-free)."""

    def __init__(self, total_steps: int, warmup_steps: int, min_ratio: float) -> None:
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.warmup_steps, self.min_ratio)
