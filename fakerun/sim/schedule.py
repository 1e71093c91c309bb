"""Learning-rate schedules: linear warmup, then cosine (default), linear, constant, inverse-square-root or
warmup-stable-decay (WSD) down to min_lr, which holds after the decay's last step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fakerun.sim.job import JobSpec

SCHEDULES = ("cosine", "linear", "constant", "inverse-square-root", "wsd")
# WSD's annealing shapes (Megatron's --lr-wsd-decay-style): the coefficient of (peak - min_lr) at x, the
# share of the annealing steps done.
WSD_STYLES = ("exponential", "linear", "cosine", "minus_sqrt")
_ZETA_HALF = -1.4603545088095868  # zeta(1/2), for sums of 1/sqrt(i)
_ZETA_MINUS_HALF = -0.2078862250773545  # zeta(-1/2), for sums of sqrt(i)


@dataclass(frozen=True)
class Shape:
    """What a schedule needs beyond its peak, floor, warmup and end: WSD's annealing steps and style, and the
    samples per step (Megatron counts inverse-square-root in samples: no warmup: peak / sqrt(samples))."""

    wsd_steps: int = 0
    wsd_style: str = "exponential"
    samples_per_step: int = 1


_PLAIN = Shape()


def _wsd_coefficient(style: str, x: float) -> float:
    """OptimizerParamScheduler.get_lr's WSD annealing coefficient at x in [0, 1]."""
    if style == "linear":
        return 1.0 - x
    if style == "cosine":
        return 0.5 * (math.cos(math.pi * x) + 1.0)
    if style == "minus_sqrt":
        return 1.0 - math.sqrt(x)
    return 2.0 * math.pow(0.5, x) - 1.0  # exponential, Megatron's default


def warmup_stable_decay(warmup: int, total: int, ratio: float | None) -> tuple[int, int, int]:
    """torchtitan's linear_warmup_stable_decay in the "wsd" schedule's terms, (warmup, decay end, annealing
    steps): the warmup cut to the run, the decay over round(total x ratio) steps (all after the warmup when
    None, at most what the warmup leaves), ending one step past the run: torchtitan's stable phase counts a
    virtual last step, so the run's last lr stays above the floor."""
    warm = min(warmup, total)
    steps = total - warm if ratio is None else min(round(total * ratio), total - warm)
    return warm, total + 1, steps


def lr_at(
    step: int,
    *,
    peak: float,
    min_lr: float,
    warmup: int,
    total: int,
    kind: str = "cosine",
    shape: Shape = _PLAIN,
) -> float:
    """The learning rate at `step` (1-based optimizer steps; step 0 is before any update); `total` is the
    decay's last step, after which the lr stays at min_lr (Megatron's --lr-decay-iters)."""
    # Megatron's warmup: lr = peak * step / warmup: the first logged lr is peak/warmup, lr(warmup) = peak.
    if warmup > 0 and step < warmup:
        return peak * max(step, 0) / warmup
    if kind == "constant":
        return peak
    if kind == "inverse-square-root":
        if step > total:
            return min_lr
        u = shape.samples_per_step
        return max(min_lr, peak * math.sqrt(max(warmup * u, 1)) / math.sqrt(max(step * u, 1)))
    if step >= total:
        return min_lr
    if kind == "wsd":
        anneal_start = total - min(shape.wsd_steps, total - warmup)
        if step <= anneal_start:
            return peak
        x = (step - anneal_start) / (total - anneal_start)
        return min_lr + (peak - min_lr) * _wsd_coefficient(shape.wsd_style, x)
    progress = (step - warmup) / max(total - warmup, 1)
    if kind == "linear":
        # HF Trainer's default "linear" schedule (there with min_lr = 0).
        return peak + (min_lr - peak) * progress
    # Cosine to min_lr (10% of peak by default): GPT-3, Llama 2/3 recipes (PHYSICS.md 5).
    return min_lr + 0.5 * (peak - min_lr) * (1.0 + math.cos(math.pi * progress))


def job_shape(job: JobSpec) -> Shape:
    """The job's WSD annealing and samples per step."""
    return Shape(job.wsd_decay_steps, job.wsd_style, job.global_batch)


def lr(job: JobSpec, step: int) -> float:
    """The job's learning rate at `step`."""
    return lr_at(
        step,
        peak=job.lr,
        min_lr=job.min_lr,
        warmup=job.warmup_steps,
        total=job.decay_end,
        kind=job.lr_schedule,
        shape=job_shape(job),
    )


def _cos_sum(n: int, period: int) -> float:
    """sum_{j=0}^{n-1} cos(pi * j / period), in closed form (O(1) at any n)."""
    if n <= 0:
        return 0.0
    half = math.pi / (2.0 * period)
    return math.sin(n * half) * math.cos((n - 1) * half) / math.sin(half)


def _inv_sqrt_sum(n: int) -> float:
    """sum_{i=1}^{n} 1/sqrt(i) (Euler-Maclaurin with zeta(1/2): within 0.2% at n = 1, O(1) at any n)."""
    if n <= 0:
        return 0.0
    return 2.0 * math.sqrt(n) + _ZETA_HALF + 0.5 / math.sqrt(n) - 1.0 / (24.0 * math.sqrt(n) ** 3)


def _sqrt_sum(n: int) -> float:
    """sum_{j=1}^{n} sqrt(j) (Euler-Maclaurin with zeta(-1/2))."""
    if n <= 0:
        return 0.0
    return 2.0 / 3.0 * math.sqrt(n) ** 3 + 0.5 * math.sqrt(n) + _ZETA_MINUS_HALF + 1.0 / (24.0 * math.sqrt(n))


def _wsd_sum(style: str, n: int, span: int) -> float:
    """sum_{j=1}^{n} of the WSD annealing coefficient at j / span, in closed form."""
    if n <= 0:
        return 0.0
    if style == "linear":
        return n - n * (n + 1) / (2.0 * span)
    if style == "cosine":
        return 0.5 * n + 0.5 * (_cos_sum(n + 1, span) - 1.0)
    if style == "minus_sqrt":
        return n - _sqrt_sum(n) / math.sqrt(span)
    q = math.pow(0.5, 1.0 / span)
    return 2.0 * q * (1.0 - math.pow(q, n)) / (1.0 - q) - n


def _decay_area(s: int, first: int, r: float, warmup: int, total: int, kind: str, shape: Shape) -> float:
    """sum of lr_i / peak over the decay steps first..min(s, total - 1) of WSD or inverse-square-root (and
    inverse-square-root's last decay step, `total`, which is not yet min_lr)."""
    if kind == "wsd":
        anneal_start = total - min(shape.wsd_steps, total - warmup)
        stable = max(min(s, anneal_start) - first + 1, 0)
        n = max(min(s, total - 1) - anneal_start, 0)
        return stable + n * r + (1.0 - r) * _wsd_sum(shape.wsd_style, n, total - anneal_start)
    # inverse-square-root: peak * c / sqrt(i) until it meets min_lr at step i_r, min_lr after.
    u = shape.samples_per_step
    c = math.sqrt(max(warmup * u, 1) / u)
    last = min(s, total)
    i_r = min(int((c / r) ** 2) if r > 0 else last, last)
    falling = c * (_inv_sqrt_sum(i_r) - _inv_sqrt_sum(first - 1)) if i_r >= first else 0.0
    return falling + r * (last - max(i_r, first - 1))


def lr_area_at(
    step: int,
    *,
    peak: float,
    min_lr: float,
    warmup: int,
    total: int,
    kind: str = "cosine",
    shape: Shape = _PLAIN,
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
    if kind in ("wsd", "inverse-square-root"):
        end = total + 1 if kind == "inverse-square-root" else total  # the first step at min_lr
        tail = max(s - max(end, first) + 1, 0)
        area = _decay_area(s, first, r, warmup, total, kind, shape) + tail * r
        return s1 + area, (s - first + 1) - area
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
        total=job.decay_end,
        kind=job.lr_schedule,
        shape=job_shape(job),
    )
