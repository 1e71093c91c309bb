"""DeepSpeed's dynamic fp16 loss scaler (runtime/fp16/loss_scaler.py DynamicLossScaler), step by step, and
what its skipped steps hold back: the engine's configured lr scheduler and the weights."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from fakerun.dsconfig import DsConfig
from fakerun.sim import ds_breakdown, loss, rand
from fakerun.sim.job import JobSpec
from fakerun.sim.schedule import lr as job_lr
from fakerun.sim.step import StepNumbers, retimed

__all__ = ["ScalerState", "advance", "engine_numbers", "engine_step", "initial_state", "scheduler_lr"]

# The configured schedulers whose lr this module computes (lr_schedules.py); the others keep the job's.
_WARMUP_SCHEDULERS = ("WarmupLR", "WarmupDecayLR")

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


def scheduler_lr(ds: DsConfig, job: JobSpec, updates: int) -> float | None:
    """The lr of the config's WarmupLR / WarmupDecayLR after `updates` scheduler steps (None: another
    scheduler or none); the float operations are lr_schedules.py's, so the printed digits match."""
    if ds.scheduler not in _WARMUP_SCHEDULERS:
        return None
    low = ds.warmup_min_lr
    high = ds.warmup_max_lr if ds.warmup_max_lr is not None else job.lr
    if updates < 1:
        return low  # set at construction: get_lr() before the first step returns min_lrs
    iteration = updates - 1  # last_batch_iteration counts from -1
    warmup = max(2, ds.warmup_num_steps if ds.warmup_num_steps is not None else job.warmup_steps)
    if iteration < warmup:
        if ds.warmup_type == "linear":
            gamma = iteration / warmup
        else:
            gamma = (1.0 / math.log(warmup)) * math.log(iteration + 1)
    elif ds.scheduler == "WarmupDecayLR":
        total = ds.total_num_steps if ds.total_num_steps is not None else job.total_steps
        gamma = max(0.0, float(total - iteration) / float(max(1.0, total - warmup)))
    else:
        gamma = 1.0
    return low + ((high - low) * gamma)


def engine_numbers(job: JobSpec, ds: DsConfig, n: StepNumbers, skipped: int) -> StepNumbers:
    """A step's figures as DeepSpeed's engine shows them after `skipped` overflowed steps: those moved
    neither the lr scheduler nor the weights (_take_model_step steps the scheduler only without overflow)."""
    updates = n.step - skipped
    lr = scheduler_lr(ds, job, updates)
    if not skipped:
        return n if lr is None else replace(n, lr=lr)
    if lr is None:
        lr = job_lr(job, updates)
    value = loss.train_loss(job, updates) if updates >= 1 else n.loss
    return replace(n, lr=lr, loss=value, ppl=loss.perplexity(value))


def engine_step(
    job: JobSpec, ds: DsConfig, state: ScalerState, n: StepNumbers
) -> tuple[StepNumbers, ScaleStep | None]:
    """Optimizer step `n.step` through DeepSpeed's engine from scaler `state`: the fp16 scaler's outcome
    (None without fp16) and the figures the skips so far leave; an overflowed step is shorter by the update
    every rank skipped."""
    if ds.precision != "fp16":
        return engine_numbers(job, ds, n, state.skipped), None
    # ZeRO's DynamicLossScaler has hysteresis; stage 0's FP16_Optimizer / FP16_UnfusedOptimizer halve the
    # scale at every overflow (their _update_scale).
    shift = ds.hysteresis if ds.zero_stage > 0 else 1
    scaled = advance(
        state,
        job.seed,
        n.step,
        delayed_shift=shift,
        window=ds.loss_scale_window,
        min_scale=ds.min_loss_scale,
    )
    numbers = engine_numbers(job, ds, n, scaled.state.skipped)
    if scaled.overflow:
        saved = ds_breakdown.skipped_update_s(job)
        numbers = retimed(replace(numbers, compute_s=numbers.compute_s - saved), -saved)
    return numbers, scaled
