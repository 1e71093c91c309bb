"""Gradient norm: large early, decaying to ~0.2-0.4, noisy, leading loss spikes; clipped at 1.0."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

from fakerun.sim import rand
from fakerun.sim.loss import Spike, is_nan_step, spike_at

if TYPE_CHECKING:
    from fakerun.sim.job import JobSpec


def grad_norm_floor(job: JobSpec) -> float:
    """Late-training grad norm: 0.13-0.27 BLOOM-176B, 0.23-0.36 mid-size, ~0.3-0.5 small (PHYSICS.md 5)."""
    log_n = math.log10(job.model.params)
    return 0.22 + 0.12 * min(max((10.5 - log_n) / 2.0, 0.0), 1.5)


def _spike_multiplier(spike: Spike | None) -> float:
    if spike is None:
        return 1.0
    t = spike.age
    # The grad norm leads: 0.24, 0.95, 2.4, 15.9, 145, 960 over BLOOM's spike (excerpt 22), then falls fast.
    shape = ((t + 1) / 4.0) ** 3 if t <= 3 else math.exp(-(t - 3) / 2.5)
    return 1.0 + (spike.grad_peak - 1.0) * shape


@functools.lru_cache(maxsize=256)
def _early_peak(job: JobSpec) -> float:
    # Early peak of 6-20 around step 5-15 (torchtitan Llama3-8B: 4.5 at step 1, 16 at step 10; excerpt 08:
    # 33 at iteration 10); MoE routers roughly double it (26-46 at steps 4-5, excerpt 70).
    return (6.0 + 14.0 * rand.uniform(job.seed, "gn-peak")) * (2.0 if job.model.is_moe else 1.0)


def expected_grad_norm(job: JobSpec, step: int) -> float:
    """The noiseless grad norm at `step`."""
    floor = grad_norm_floor(job)
    peak = _early_peak(job)
    tau = max(20.0, 0.03 * job.warmup_steps)
    s = max(step, 0)
    early = peak * (1.0 - math.exp(-s / 3.0)) / (1.0 + float((s / tau) ** 1.2))
    # Grad norms creep up slowly as the learning rate anneals late in a run.
    late = 1.0 + 0.3 * min(s / max(job.total_steps, 1), 1.0)
    return floor * late + early


def _finetune_grad_norm(job: JobSpec, step: int) -> float:
    # SFT: 1-3 most steps, noisy, isolated spikes of 7-15 without loss spikes (excerpts 60, 61).
    level = 1.2 + 1.5 * rand.uniform(job.seed, "gn-ft-level")
    early = 1.0 + 2.0 * math.exp(-step / 20.0)
    noise = math.exp(0.3 * rand.normal(job.seed, "gn-noise", step))
    burst = 1.0
    if rand.uniform(job.seed, "gn-ft-burst", step) < 0.02:
        burst = 3.0 + 4.0 * rand.uniform(job.seed, "gn-ft-size", step)
    return level * early * noise * burst


_UNSET: object = object()


def grad_norm(job: JobSpec, step: int, spike: object = _UNSET) -> float:
    """The global grad norm before clipping, as Megatron and HF print it (the same on every rank)."""
    if is_nan_step(job, step):
        return math.nan
    sp = spike_at(job, step) if spike is _UNSET else spike
    mult = _spike_multiplier(sp if isinstance(sp, Spike) else None)
    if job.regime == "finetune":
        return _finetune_grad_norm(job, step) * mult
    noise = math.exp(0.10 * rand.normal(job.seed, "gn-noise", step))
    return expected_grad_norm(job, step) * noise * mult


def clip_coefficient(job: JobSpec, norm: float) -> float:
    """The factor clip_grad_norm_ applies: min(1, clip / norm)."""
    if math.isnan(norm) or norm <= 0:
        return 1.0
    return min(1.0, job.grad_clip / (norm + 1e-6))
