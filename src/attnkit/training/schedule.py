"""Learning-rate schedules: linear warm-up, then inverse square root (Vaswani et al. 2017, §5.3) or cosine."""

from __future__ import annotations

import math

SCHEDULES = ("inverse_sqrt", "cosine", "constant")


def learning_rate(step: int, *, lr: float, warmup: int, schedule: str, max_steps: int) -> float:
    """The learning rate for optimiser step `step` (1-based): `lr` is the peak, reached after warm-up."""
    step = max(step, 1)
    if warmup > 0 and step <= warmup:
        return lr * step / warmup
    if schedule == "inverse_sqrt":
        return lr * math.sqrt(max(warmup, 1) / step)
    if schedule == "cosine":
        progress = min((step - warmup) / max(max_steps - warmup, 1), 1.0)
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "constant":
        return lr
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
