"""A training budget in the form a user gives it (FLOPs, GPU-hours, GPU-days, dollars), as FLOPs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from fakerun.presets import GpuSpec

SECONDS_PER_HOUR = 3_600.0
HOURS_PER_DAY = 24.0
# The MFU a budget given in GPU time assumes before an architecture is chosen: large dense runs reach 38-43%
# (Llama 3 405B on H100, Dubey et al. 2024, section 3.3.4); the simulator's own figure replaces it once the
# planner has a design.
DEFAULT_MFU = 0.40
# Below this the published laws (fitted from ~1e18 FLOPs) say nothing useful; above, it is not a plan: a
# million H100s at 40% for a century deliver ~1.2e30.
MIN_FLOPS = 1e15
MAX_FLOPS = 1e30


class BudgetError(ValueError):
    """A budget that cannot be planned, with one line saying why."""


@dataclass(frozen=True)
class Budget:
    """Training FLOPs and how they were given: directly, or as GPU time on a GPU at an MFU."""

    flops: float
    given: str  # "flops", "gpu-hours", "gpu-days" or "dollars"
    gpu: GpuSpec | None = None
    gpu_hours: float | None = None
    gpus: int | None = None  # the GPU count when given (as --gpus with --days)
    days: float | None = None
    dollars: float | None = None
    price_per_gpu_hour: float | None = None
    mfu: float | None = None
    mfu_source: str = ""  # "default", "given" or "simulator"

    def with_mfu(self, mfu: float, source: str) -> Budget:
        """The same GPU time at another MFU (a budget given in FLOPs does not change)."""
        if self.gpu_hours is None or self.gpu is None:
            return self
        flops = gpu_time_flops(self.gpu_hours, self.gpu, mfu)
        return dataclasses.replace(self, flops=flops, mfu=mfu, mfu_source=source)


def gpu_time_flops(gpu_hours: float, gpu: GpuSpec, mfu: float) -> float:
    """FLOPs that GPU time delivers: GPU-seconds x MFU x the GPU's peak dense BF16 rate."""
    return gpu_hours * SECONDS_PER_HOUR * mfu * gpu.peak_flops


def train_seconds(flops: float, gpus: int, mfu: float, gpu: GpuSpec) -> float:
    """Wall time to spend `flops` on `gpus` GPUs at `mfu`."""
    return flops / (gpus * mfu * gpu.peak_flops)


def _positive(name: str, value: float | None) -> None:
    if value is not None and (not value > 0 or math.isinf(value)):
        raise BudgetError(f"{name} must be a positive number, got {value:g}")


def make_budget(
    *,
    flops: float | None = None,
    gpu_hours: float | None = None,
    gpus: int | None = None,
    days: float | None = None,
    dollars: float | None = None,
    price_per_gpu_hour: float | None = None,
    gpu: GpuSpec | None = None,
    mfu: float | None = None,
) -> Budget:
    """The budget from exactly one of: flops; gpu_hours; gpus and days; dollars and price_per_gpu_hour.

    GPU-time forms need the GPU (its peak rate) and an MFU (DEFAULT_MFU when not given).
    """
    for name, value in (
        ("--flops", flops),
        ("--gpu-hours", gpu_hours),
        ("--gpus", gpus),
        ("--days", days),
        ("--dollars", dollars),
        ("--price-per-gpu-hour", price_per_gpu_hour),
    ):
        _positive(name, value)
    if mfu is not None and not 0 < mfu <= 1:
        raise BudgetError(f"--mfu must be in (0, 1], got {mfu:g}")
    forms = {
        "--flops": flops is not None,
        "--gpu-hours": gpu_hours is not None,
        "--days": days is not None,
        "--dollars": dollars is not None,
    }
    chosen = [name for name, on in forms.items() if on]
    if len(chosen) != 1:
        what = "no budget" if not chosen else f"{' and '.join(chosen)} contradict each other"
        raise BudgetError(f"{what}: give one of --flops, --gpu-hours, --gpus with --days, --dollars")
    if days is not None and gpus is None:
        raise BudgetError("--days needs --gpus (a budget in GPU-days)")
    if dollars is not None and price_per_gpu_hour is None:
        raise BudgetError("--dollars needs --price-per-gpu-hour")
    if flops is not None:
        if mfu is not None:
            raise BudgetError("--mfu applies to budgets in GPU time, not to --flops")
        return _checked(Budget(flops, "flops", gpu=gpu, gpus=gpus))
    # --gpus without --days is not a budget by itself: the GPU count the design must use.
    if gpu is None:
        raise BudgetError("a budget in GPU time needs --gpu or --cluster (the GPU's peak FLOP/s)")
    if days is not None and gpus is not None:
        given, hours = "gpu-days", gpus * days * HOURS_PER_DAY
    elif dollars is not None and price_per_gpu_hour is not None:
        given, hours = "dollars", dollars / price_per_gpu_hour
    else:
        given, hours = "gpu-hours", float(gpu_hours or 0.0)
    rate, source = (DEFAULT_MFU, "default") if mfu is None else (mfu, "given")
    budget = Budget(
        gpu_time_flops(hours, gpu, rate),
        given,
        gpu=gpu,
        gpu_hours=hours,
        gpus=gpus,
        days=days,
        dollars=dollars,
        price_per_gpu_hour=price_per_gpu_hour,
        mfu=rate,
        mfu_source=source,
    )
    return _checked(budget)


def _checked(budget: Budget) -> Budget:
    if budget.flops < MIN_FLOPS:
        raise BudgetError(f"{budget.flops:.3g} FLOPs is below {MIN_FLOPS:.0e}: too small to plan")
    if budget.flops > MAX_FLOPS:
        raise BudgetError(f"{budget.flops:.3g} FLOPs is above {MAX_FLOPS:.0e}: not a plannable budget")
    return budget


__all__ = [
    "DEFAULT_MFU",
    "MAX_FLOPS",
    "MIN_FLOPS",
    "Budget",
    "BudgetError",
    "gpu_time_flops",
    "make_budget",
    "train_seconds",
]
