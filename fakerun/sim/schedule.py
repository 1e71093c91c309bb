"""Learning-rate schedules: linear warmup, then cosine (default), linear or constant decay to min_lr."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fakerun.sim.job import JobSpec

SCHEDULES = ("cosine", "linear", "constant")


def lr_at(step: int, *, peak: float, min_lr: float, warmup: int, total: int, kind: str = "cosine") -> float:
    """The learning rate at `step` (1-based optimizer steps; step 0 is before any update)."""
    # Megatron's warmup: lr = peak * step / warmup: the first logged lr is peak/warmup, lr(warmup) = peak.
    if warmup > 0 and step < warmup:
        return peak * max(step, 0) / warmup
    if kind == "constant":
        return peak
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(total - warmup, 1)
    if kind == "linear":
        # HF Trainer's default "linear" schedule (there with min_lr = 0).
        return peak + (min_lr - peak) * progress
    # Cosine to min_lr (10% of peak by default): GPT-3, Llama 2/3 recipes (PHYSICS.md 5).
    return min_lr + 0.5 * (peak - min_lr) * (1.0 + math.cos(math.pi * progress))


def lr(job: JobSpec, step: int) -> float:
    """The job's learning rate at `step`."""
    return lr_at(
        step,
        peak=job.lr,
        min_lr=job.min_lr,
        warmup=job.warmup_steps,
        total=job.total_steps,
        kind=job.lr_schedule,
    )
