"""DeepSpeed's dynamic fp16 loss scaler (runtime/fp16/loss_scaler.py DynamicLossScaler), step by step."""

from __future__ import annotations

from dataclasses import dataclass, replace

from fakerun.sim import rand

__all__ = ["ScalerState", "advance", "initial_state"]

# An fp16 run's gradients overflow above a scale of about 2**11-2**14 (loss scale logs settle there); a
# rare spike overflows at any scale. The ceiling is drawn once per job.
_CEILING_POWERS = (11, 12, 13, 14)
_RANDOM_OVERFLOW = 0.0015


@dataclass(frozen=True)
class ScalerState:
    """The scaler after some steps: DynamicLossScaler's cur_scale, cur_hysteresis, last_overflow_iter,
    cur_iter, and the engine's skipped_steps."""

    scale: float
    hysteresis: int
    last_overflow: int
    iteration: int
    skipped: int


@dataclass(frozen=True)
class ScaleStep:
    """One optimizer step's outcome: the scale it tried, whether it overflowed and what follows."""

    state: ScalerState  # after the step
    attempted: float
    overflow: bool
    hysteresis_before: int  # cur_hysteresis when the step overflowed (DeepSpeed's message names it)


def initial_state(initial_scale_power: int, hysteresis: int) -> ScalerState:
    """A fresh scaler: 2**initial_scale_power, full hysteresis."""
    return ScalerState(
        scale=float(2**initial_scale_power), hysteresis=hysteresis, last_overflow=-1, iteration=0, skipped=0
    )


def ceiling(seed: int) -> float:
    """The largest loss scale this job's gradients take without overflowing."""
    i = int(rand.uniform(seed, "loss-scale-ceiling") * len(_CEILING_POWERS))
    return float(2 ** _CEILING_POWERS[min(i, len(_CEILING_POWERS) - 1)])


def advance(
    state: ScalerState,
    seed: int,
    step: int,
    *,
    delayed_shift: int,
    window: int,
    min_scale: float = 1.0,
    factor: float = 2.0,
) -> ScaleStep:
    """The scaler through optimizer `step` (update_scale with consecutive_hysteresis False)."""
    attempted = state.scale
    overflow = attempted > ceiling(seed) or rand.uniform(seed, "loss-scale-overflow", step) < _RANDOM_OVERFLOW
    s = state
    if overflow:
        if delayed_shift == 1 or s.hysteresis == 1:
            s = replace(s, scale=max(s.scale / factor, min_scale))
        else:
            s = replace(s, hysteresis=s.hysteresis - 1)
        s = replace(s, last_overflow=s.iteration, skipped=s.skipped + 1)
    else:
        stable = (s.iteration - s.last_overflow) - 1
        if stable > 0 and stable % window == 0:
            s = replace(s, hysteresis=delayed_shift, scale=s.scale * factor)
    s = replace(s, iteration=s.iteration + 1)
    return ScaleStep(state=s, attempted=attempted, overflow=overflow, hysteresis_before=state.hysteresis)
