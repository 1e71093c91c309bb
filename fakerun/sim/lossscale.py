"""fp16 loss scaling as Megatron's DynamicGradScaler does it: a pure, seeded function of (job, seed, step)."""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
from dataclasses import dataclass

from fakerun.sim import loss, rand
from fakerun.sim.job import JobSpec
from fakerun.sim.schedule import lr
from fakerun.sim.step import StepNumbers

# The largest scale whose scaled gradients stay finite: fp16 GPT runs settle between 2**12 and 2**17 (excerpt
# 27: 2**32 falls to 4096 in 21 skipped iterations; BigScience's V100 runs sat at 4096-16384, excerpt 25).
SAFE_LOG2 = (12, 17)
# Gradients shrink as training goes on: the scale the run tolerates doubles about this often (in steps).
SAFE_DOUBLING_STEPS = 40_000
SAFE_LOG2_MAX = 20
# Now and then a batch overflows at any scale (a rare large gradient): mean steps between such overflows.
RANDOM_OVERFLOW_EVERY = 4000


@dataclass(frozen=True)
class LossScale:
    """The loss scale after a step's optimizer update and the skipped iterations so far (this one too)."""

    scale: float
    skipped: int  # iterations skipped from step 1 to this step
    skipped_now: bool  # this iteration's gradients overflowed: no update, the lr scheduler did not step


@dataclass(frozen=True)
class _Timeline:
    """Every change of the scaler's state from step 1: (step, scale after it, skipped so far, a skip)."""

    steps: tuple[int, ...]
    scales: tuple[float, ...]
    skipped: tuple[int, ...]
    skips: tuple[bool, ...]


def _safe_scale(seed: int, step: int) -> float:
    """The largest scale that does not overflow at `step` (drawn per run, growing as gradients shrink)."""
    k = SAFE_LOG2[0] + int(rand.uniform(seed, "loss-scale-safe") * (SAFE_LOG2[1] - SAFE_LOG2[0] + 1))
    return 2.0 ** min(SAFE_LOG2_MAX, k + step // SAFE_DOUBLING_STEPS)


def _random_overflows(seed: int, last: int) -> list[int]:
    """Steps (ascending) at which a batch overflows whatever the scale: gaps drawn per overflow."""
    out: list[int] = []
    s, k = 0, 0
    while True:
        u = rand.uniform(seed, "loss-scale-gap", k)
        s += 1 + int(-math.log(max(u, 1e-12)) * RANDOM_OVERFLOW_EVERY)
        k += 1
        if s > last:
            return out
        out.append(s)


@functools.lru_cache(maxsize=16)
def _timeline(job: JobSpec, seed: int) -> _Timeline:
    """The scaler's state changes up to job.total_steps, in O(overflows + growths)."""
    steps: list[int] = []
    scales: list[float] = []
    skipped_l: list[int] = []
    skips: list[bool] = []
    last = job.total_steps
    # A NaN step (the failure scenario) overflows whatever the scale, as a random overflow does.
    randoms = sorted({*_random_overflows(seed, last), *(s for s in job.nan_steps if 1 <= s <= last)})
    r = 0
    scale, growth, hyst, skipped = job.initial_loss_scale, 0, job.hysteresis, 0
    s = 1
    while s <= last:
        while r < len(randoms) and randoms[r] < s:
            r += 1
        random_now = r < len(randoms) and randoms[r] == s
        if scale > _safe_scale(seed, s) or random_now:
            # Megatron: found_inf -> growth tracker 0, hysteresis tracker - 1, halve once it reaches 0.
            skipped += 1
            growth = 0
            hyst -= 1
            if hyst <= 0:
                scale = max(scale * 0.5, job.min_loss_scale)
            steps.append(s)
            scales.append(scale)
            skipped_l.append(skipped)
            skips.append(True)
            s += 1
            continue
        grow_at = s + (job.loss_scale_window - growth) - 1  # the clean step that completes the window
        nxt = randoms[r] if r < len(randoms) else last + 1
        if nxt <= grow_at:
            growth += nxt - s
            s = nxt
            continue
        if grow_at > last:
            break
        # A whole window of clean steps: x2 and the hysteresis tracker back to full.
        scale *= 2.0
        growth, hyst = 0, job.hysteresis
        steps.append(grow_at)
        scales.append(scale)
        skipped_l.append(skipped)
        skips.append(False)
        s = grow_at + 1
    return _Timeline(tuple(steps), tuple(scales), tuple(skipped_l), tuple(skips))


def loss_scale(job: JobSpec, seed: int, step: int) -> LossScale:
    """The loss scale printed after `step` (1-based) and the skipped iterations so far; bf16: 1.0, none."""
    if job.precision != "fp16" or step < 1:
        return LossScale(1.0, 0, False)
    if job.static_loss_scale is not None:
        return LossScale(job.static_loss_scale, 0, False)
    t = _timeline(job, seed)
    i = bisect.bisect_right(t.steps, step) - 1
    if i < 0:
        return LossScale(job.initial_loss_scale, 0, False)
    return LossScale(t.scales[i], t.skipped[i], t.steps[i] == step and t.skips[i])


def skipped_between(job: JobSpec, seed: int, after: int, upto: int) -> int:
    """Iterations skipped in (after, upto]: Megatron's 'number of skipped iterations' of a log interval."""
    return loss_scale(job, seed, upto).skipped - loss_scale(job, seed, after).skipped


def with_skips(job: JobSpec, n: StepNumbers) -> StepNumbers:
    """A step's figures as an fp16 run shows them: skipped iterations advance neither the lr nor the model."""
    skipped = loss_scale(job, job.seed, n.step).skipped
    if not skipped:
        return n
    done = n.step - skipped  # optimizer updates so far: the lr scheduler and the weights are this far
    if done < 1:
        # No update yet: the scheduler's initial lr (0 in a warmup, the peak without one).
        return dataclasses.replace(n, lr=lr(job, 0))
    value = loss.train_loss(job, done)
    return dataclasses.replace(n, lr=lr(job, done), loss=value, ppl=loss.perplexity(value))
