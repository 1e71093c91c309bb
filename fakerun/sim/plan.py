"""The scaling-law planner: compute-optimal parameters and tokens for a budget; budgets from GPU-days."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fakerun.sim.loss import LAWS, Law

if TYPE_CHECKING:
    from fakerun.presets import GpuSpec

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class Plan:
    """The compute-optimal model for a budget under one law."""

    law: str
    compute: float  # FLOPs
    n_params: float
    tokens: float
    loss: float
    tokens_per_param: float


def _law(law: str | Law) -> Law:
    if isinstance(law, Law):
        return law
    try:
        return LAWS[law]
    except KeyError:
        raise ValueError(f"unknown scaling law {law!r} (choose from: {', '.join(LAWS)})") from None


def optimal_params(compute: float, law: str | Law = "chinchilla") -> float:
    """N minimising L(N, D) with C = 6ND: G (C/6)^(b/(a+b)), G = (a A / (b B))^(1/(a+b)), a=alpha, b=beta."""
    lw = _law(law)
    if compute <= 0:
        raise ValueError(f"compute must be positive, got {compute}")
    g = (lw.alpha * lw.A / (lw.beta * lw.B)) ** (1.0 / (lw.alpha + lw.beta))
    return float(g * (compute / 6.0) ** (lw.beta / (lw.alpha + lw.beta)))


def compute_optimal(compute: float, law: str | Law = "chinchilla") -> Plan:
    """Compute-optimal parameters, tokens and predicted loss for `compute` FLOPs (Hoffmann et al. 2022)."""
    lw = _law(law)
    n = optimal_params(compute, lw)
    d = compute / (6.0 * n)
    return Plan(lw.name, compute, n, d, lw.loss(n, d), d / n)


def plan_for_params(n_params: float, compute: float, law: str | Law = "chinchilla") -> Plan:
    """A fixed-size model spending `compute` FLOPs: its tokens and predicted loss (to compare)."""
    lw = _law(law)
    d = compute / (6.0 * n_params)
    return Plan(lw.name, compute, n_params, d, lw.loss(n_params, d), d / n_params)


def compute_budget(gpus: int, days: float, mfu: float, gpu: GpuSpec) -> float:
    """FLOPs a run delivers: GPUs x seconds x MFU x peak dense BF16 rate."""
    if gpus <= 0 or days <= 0 or not 0 < mfu <= 1:
        raise ValueError(f"need gpus > 0, days > 0 and 0 < mfu <= 1, got {gpus}, {days}, {mfu}")
    return gpus * days * SECONDS_PER_DAY * mfu * gpu.peak_flops


def train_seconds(compute: float, gpus: int, mfu: float, gpu: GpuSpec) -> float:
    """Wall time to spend `compute` FLOPs on `gpus` GPUs at `mfu`."""
    return compute / (gpus * mfu * gpu.peak_flops)


def optimal_curve(computes: list[float], law: str | Law = "chinchilla") -> list[Plan]:
    """Compute-optimal plans along a list of budgets (the loss-vs-compute plot)."""
    return [compute_optimal(c, law) for c in computes]


def isoflop_curve(
    compute: float, law: str | Law = "chinchilla", points: int = 41
) -> list[tuple[float, float]]:
    """(N, loss) from 1/30 to 30 times the optimal size at a fixed budget (Chinchilla's IsoFLOP profile)."""
    lw = _law(law)
    n0 = optimal_params(compute, lw)
    out = []
    for i in range(points):
        n = n0 * math.exp(math.log(30.0) * (2.0 * i / max(points - 1, 1) - 1.0))
        out.append((n, lw.loss(n, compute / (6.0 * n))))
    return out
