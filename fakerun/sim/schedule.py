"""Learning-rate schedules: linear warmup, then cosine (default), linear or constant decay to min_lr, or
torchtitan's warmup-stable-decay (wsd_kind)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fakerun.sim.job import JobSpec

# torchtitan's lr_scheduler.decay_type: how linear_warmup_stable_decay's decay phase falls.
WSD_DECAYS = ("linear", "sqrt", "cosine")


class _Schedules(tuple[str, ...]):
    """The plain schedule names; `in` also accepts torchtitan's warmup-stable-decay kinds (wsd_kind)."""

    def __contains__(self, kind: object) -> bool:
        return super().__contains__(kind) or (isinstance(kind, str) and _wsd(kind) is not None)


SCHEDULES = _Schedules(("cosine", "linear", "constant"))


def wsd_kind(decay: str, ratio: float | None = None) -> str:
    """The schedule name of torchtitan's linear_warmup_stable_decay with this decay_type and decay_ratio
    (None: the decay takes every step after the warmup)."""
    if decay not in WSD_DECAYS or (ratio is not None and not 0.0 <= ratio <= 1.0):
        raise ValueError(f"no warmup-stable-decay schedule with decay {decay!r} and ratio {ratio!r}")
    return f"wsd-{decay}" if ratio is None else f"wsd-{decay}-{ratio!r}"


def _wsd(kind: str) -> tuple[str, float | None] | None:
    """(decay_type, decay_ratio) of a wsd_kind name, None for any other name."""
    parts = kind.split("-", 2)
    if len(parts) < 2 or parts[0] != "wsd" or parts[1] not in WSD_DECAYS:
        return None
    if len(parts) == 2:
        return parts[1], None
    try:
        ratio = float(parts[2])
    except ValueError:
        return None
    return (parts[1], ratio) if 0.0 <= ratio <= 1.0 else None


def _wsd_phases(warmup: int, total: int, ratio: float | None) -> tuple[int, int, int]:
    """build_lr_schedulers' (warmup, stable, decay) steps: the warmup at most the run, the decay
    round(total * ratio) at most what the warmup leaves, and a virtual last step in the stable phase so the
    last step's lr stays above the floor."""
    warm = min(warmup, total)
    decay = total - warm if ratio is None else min(round(total * ratio), total - warm)
    return warm, total + 1 - warm - decay, decay


def _wsd_factor(
    step: int, warmup: int, total: int, decay_type: str, ratio: float | None, floor: float
) -> float:
    """linear_warmup_stable_decay's multiplier of the peak lr at optimizer step `step` (1-based: LambdaLR's
    index is the steps already taken, step - 1)."""
    warm, stable, decay = _wsd_phases(warmup, total, ratio)
    current = max(step, 1) - 1
    if current < warm:
        return (current + 1) / warm
    if current < warm + stable:
        return 1.0
    # Past the run (a decay of 0 steps, or steps beyond it): the floor, never below it.
    progress = min((current + 1 - warm - stable) / decay, 1.0) if decay > 0 else 1.0
    if decay_type == "linear":
        adjustment = 1.0 - progress
    elif decay_type == "sqrt":
        adjustment = 1.0 - math.sqrt(progress)
    else:
        adjustment = 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (1.0 - floor) * adjustment


def lr_at(step: int, *, peak: float, min_lr: float, warmup: int, total: int, kind: str = "cosine") -> float:
    """The learning rate at `step` (1-based optimizer steps; step 0 is before any update)."""
    wsd = _wsd(kind)
    if wsd is not None:
        floor = min_lr / peak if peak > 0 else 0.0
        return peak * _wsd_factor(step, warmup, total, wsd[0], wsd[1], floor)
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
    wsd = _wsd(kind)
    if wsd is not None:
        return _wsd_area(s, min_lr / peak, warmup, total, *wsd)
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


def _sqrt_sum(n: int) -> float:
    """sum_{j=1}^{n} sqrt(j): exact below 64 terms, else Euler-Maclaurin (error below 1e-9)."""
    if n < 64:
        return math.fsum(math.sqrt(j) for j in range(1, n + 1))
    # zeta(-1/2) is the constant of the expansion.
    root = math.sqrt(n)
    return (
        2.0 / 3.0 * n * root
        + 0.5 * root
        - 0.207886224977354566
        + 1.0 / (24.0 * root)
        - 1.0 / (1920.0 * n * n * root)
    )


def _wsd_area(
    s: int, floor: float, warmup: int, total: int, decay_type: str, ratio: float | None
) -> tuple[float, float]:
    """lr_area_at of torchtitan's warmup-stable-decay after steps 1..s, in closed form."""
    warm, stable, decay = _wsd_phases(warmup, total, ratio)
    m = min(s, warm)
    s1 = m * (m + 1) / (2.0 * warm) if warm > 0 else 0.0
    flat = min(max(s - warm, 0), stable)
    # Decay steps j = 1, 2, ... at progress j / decay; from j = decay on, the floor.
    n_all = max(s - warm - stable, 0)
    n = min(n_all, max(decay - 1, 0))
    if decay_type == "linear":
        falling = n - n * (n + 1) / (2.0 * decay) if n else 0.0
    elif decay_type == "sqrt":
        falling = n - _sqrt_sum(n) / math.sqrt(decay) if n else 0.0
    else:
        falling = 0.5 * (n + _cos_sum(n + 1, decay) - 1.0) if n else 0.0
    decay_area = n_all * floor + (1.0 - floor) * falling
    return s1 + flat + decay_area, n_all - decay_area


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
