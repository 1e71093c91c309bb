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


def _cos_sum(n: int, period: int) -> float:
    """sum_{j=0}^{n-1} cos(pi * j / period), in closed form (O(1) at any n)."""
    if n <= 0:
        return 0.0
    half = math.pi / (2.0 * period)
    return math.sin(n * half) * math.cos((n - 1) * half) / math.sin(half)


def lr_area_at(
    step: int, *, peak: float, min_lr: float, warmup: int, total: int, kind: str = "cosine"
) -> tuple[float, float]:
    """(S1, S2) after optimizer steps 1..`step`, in peak-lr steps, in closed form.

    S1 = sum of lr_i / peak: the forward area of Tissue et al. 2024 ("Scaling law with learning rate
    annealing", arXiv 2408.11029), the progress the schedule has paid for. S2 = sum over the steps after the
    warmup of (1 - lr_i / peak): their annealing area with the momentum of the lr changes left out (decay
    factor 0), which every O(1) step needs; it is 0 for a constant schedule and grows as the lr cools down.
    """
    s = max(step, 0)
    if peak <= 0 or s == 0:
        return 0.0, 0.0
    m = min(s, warmup - 1) if warmup > 0 else 0
    s1 = m * (m + 1) / (2.0 * warmup) if warmup > 0 else 0.0
    first = max(warmup, 1)  # the first step at the decay part of the schedule
    if s < first:
        return s1, 0.0
    r = min_lr / peak
    if kind == "constant":
        n = s - first + 1
        return s1 + n, 0.0
    span = max(total - warmup, 1)
    # Steps first..min(s, total - 1) follow the decay (j = i - warmup); later ones sit at min_lr.
    j0 = first - warmup
    j1 = min(s, total - 1) - warmup
    n = max(j1 - j0 + 1, 0)
    if kind == "linear":
        # sum of 1 + (r - 1) * j / span over j0..j1
        decay = n + (r - 1.0) * (j0 + j1) * n / (2.0 * span)
    else:
        # sum of r + (1 - r) / 2 * (1 + cos(pi j / span)) over j0..j1
        cos = _cos_sum(j1 + 1, span) - _cos_sum(j0, span)
        decay = n * r + 0.5 * (1.0 - r) * (n + cos)
    tail = max(s - max(total, first) + 1, 0) if s >= total else 0
    post = n + tail
    area = decay + tail * r
    return s1 + area, post - area


def lr_area(job: JobSpec, step: int) -> tuple[float, float]:
    """The job's (S1, S2) learning-rate areas after `step` optimizer steps (see lr_area_at)."""
    return lr_area_at(
        step,
        peak=job.lr,
        min_lr=job.min_lr,
        warmup=job.warmup_steps,
        total=job.total_steps,
        kind=job.lr_schedule,
    )
