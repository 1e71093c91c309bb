"""One training step of one rank: every number a worker prints, as a pure function of (job, rank, step)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from fakerun.sim import compute, loss, rand
from fakerun.sim.collectives import comm_seconds
from fakerun.sim.gradnorm import clip_coefficient, grad_norm
from fakerun.sim.job import JobSpec
from fakerun.sim.memory import GIB, memory_breakdown
from fakerun.sim.schedule import lr


@dataclass(frozen=True)
class StepNumbers:
    """What rank `rank` knows after optimizer step `step` (1-based); shared values are equal on all ranks."""

    step: int
    rank: int
    tokens: int  # consumed after this step, whole job
    samples: int  # sequences consumed after this step
    loss: float  # all-reduced training loss (nan on a NaN step)
    ppl: float
    lr: float
    grad_norm: float  # before clipping, as Megatron / HF print it
    clip_coef: float  # min(1, clip / grad_norm)
    skipped: bool  # NaN step: the optimizer skipped the update
    spike: bool  # inside a loss spike
    compute_s: float  # this rank's compute time
    comm_s: float  # collective time of the step (total, before overlap)
    exposed_comm_s: float  # the part of it not hidden behind compute
    step_time_s: float  # wall time of the step: slowest rank + exposed comm
    mfu: float
    tflops_per_gpu: float
    tokens_per_s: float  # whole job
    tokens_per_s_per_gpu: float
    rank_tokens_per_s: float  # per GPU as this rank measures it (torchtitan's tps, last digits differ)
    mem_allocated_gib: float
    mem_max_allocated_gib: float
    mem_reserved_gib: float
    mem_gib: float  # torchtitan's "memory": max reserved GiB
    mem_pct: float  # of the device's memory
    gating_rank: int
    straggler_rank: int | None
    moe_aux_loss: float | None  # Megatron's load_balancing_loss for MoE models


def step_time(job: JobSpec, step: int, compute_times: Sequence[float], comm_s: float) -> float:
    """Wall time of a step: the slowest rank gates, then the exposed part of the collectives and any stall
    of theirs (a NIC outage that recovered)."""
    return max(compute_times) + comm_s * compute.exposed_fraction(job) + compute.net_stall_s(job, step)


def _aux_loss(job: JobSpec, step: int) -> float | None:
    if not job.model.is_moe:
        return None
    # Megatron's load_balancing_loss sits just above 1.0 once routing settles (excerpt 26: 1.018-1.020).
    return 1.015 + 0.25 * math.exp(-step / 150.0) + 0.002 * rand.normal(job.seed, "aux", step)


@dataclass(frozen=True)
class ComputeTiming:
    """What every rank's compute time at a step follows: the gating rank, the step time, the step time of
    healthy GPUs and the exposed communication (the coordinator sends it with each answer, so that a rank
    that prints nothing of its steps draws only its own jitter)."""

    gate: int
    t_step: float
    t_base: float
    exposed: float

    def compute_of(self, job: JobSpec, rank: int, step: int) -> float:
        """`rank`'s compute at `step`, slowed on a slow node."""
        if rank == self.gate:
            usual = self.t_step - self.exposed
        else:
            # Everyone else finishes a little early and waits in the next collective.
            u = rand.uniform(job.seed, "rank-step", rank, step)
            usual = (self.t_base - self.exposed) * (1.0 - compute.RANK_JITTER * u)
        return usual * compute.slow_factor(job, rank, step)

    def wire(self) -> list[float]:
        """The timing as a JSON list."""
        return [self.gate, self.t_step, self.t_base, self.exposed]

    @classmethod
    def from_wire(cls, value: object) -> ComputeTiming | None:
        """A timing read back from wire(); None if `value` is not one."""
        if not (isinstance(value, list) and len(value) == 4 and isinstance(value[0], int)):
            return None
        if not all(isinstance(v, float) for v in value[1:]):
            return None
        return cls(value[0], value[1], value[2], value[3])


@dataclass(frozen=True)
class _Timing:
    """A step's rank-independent figures: reported MFU, straggler, communication, and the compute timing."""

    mfu: float
    straggler: compute.Straggler | None
    comm: float
    timing: ComputeTiming


def _timing(job: JobSpec, step: int) -> _Timing:
    mfu, base, strag = compute.reported_mfu(job, step)
    t_step = compute.step_time_for_mfu(job, mfu)
    comm = comm_seconds(job, step)
    exposed = comm * compute.exposed_fraction(job)
    gate = compute.gating_rank(job, step, strag)
    return _Timing(
        mfu, strag, comm, ComputeTiming(gate, t_step, compute.step_time_for_mfu(job, base), exposed)
    )


def compute_timing(job: JobSpec, step: int) -> ComputeTiming:
    """The compute timing of `step`, the same for every rank."""
    return _timing(job, step).timing


def step_numbers(job: JobSpec, rank: int, step: int) -> StepNumbers:
    """All numbers of `step` for `rank`; pure and cheap (O(1) hash draws keyed by seed, rank and step)."""
    figures = _timing(job, step)
    timing = figures.timing
    mfu, comm, strag = figures.mfu, figures.comm, figures.straggler
    t_step, exposed, gate = timing.t_step, timing.exposed, timing.gate
    straggler_rank = strag.rank if strag is not None else None

    def slowed_compute(r: int) -> float:
        return timing.compute_of(job, r, step)

    t_compute = slowed_compute(rank)
    slowed = {
        r: slowed_compute(r)
        for s in job.slow_nodes
        if s.start <= step <= s.end
        for r in range(s.node * job.nproc_per_node, (s.node + 1) * job.nproc_per_node)
    }
    if slowed:
        # A slow node gates every step: the others wait for its slowest GPU in the collectives.
        slowest = max(slowed, key=lambda r: slowed[r])
        if slowed[slowest] > t_step - exposed:
            t_step, gate = slowed[slowest] + exposed, slowest
        # What a monitor names: the GPU with the largest slowdown, the same one all episode.
        straggler_rank = max(slowed, key=lambda r: compute.slow_factor(job, r, step))
    stall = compute.net_stall_s(job, step)
    # A NIC outage holds the step's collectives: its seconds count as exposed communication.
    comm, exposed, t_step = comm + stall, exposed + stall, t_step + stall
    if slowed or stall:
        mfu = compute.mfu_for_step_time(job, t_step)
    spike = loss.spike_at(job, step)
    train = loss.train_loss(job, step, spike)
    gn = grad_norm(job, step, spike)
    mem = memory_breakdown(job, rank, step)
    tokens_per_s = job.tokens_per_step / t_step
    per_gpu = tokens_per_s / job.world_size
    rank_tps = per_gpu * (1.0 + 0.0004 * rand.normal(job.seed, "tps", rank, step))
    return StepNumbers(
        step=step,
        rank=rank,
        tokens=step * job.tokens_per_step,
        samples=step * job.global_batch,
        loss=train,
        ppl=loss.perplexity(train),
        lr=lr(job, step),
        grad_norm=gn,
        clip_coef=clip_coefficient(job, gn),
        skipped=loss.is_nan_step(job, step),
        spike=spike is not None,
        compute_s=t_compute,
        comm_s=comm,
        exposed_comm_s=exposed,
        step_time_s=t_step,
        mfu=mfu,
        tflops_per_gpu=mfu * job.gpu.peak_bf16_tflops,
        tokens_per_s=tokens_per_s,
        tokens_per_s_per_gpu=per_gpu,
        rank_tokens_per_s=rank_tps,
        mem_allocated_gib=mem.allocated / GIB,
        mem_max_allocated_gib=mem.max_allocated / GIB,
        mem_reserved_gib=mem.reserved / GIB,
        mem_gib=mem.reserved / GIB,
        mem_pct=100.0 * mem.reserved / mem.capacity,
        gating_rank=gate,
        straggler_rank=straggler_rank,
        moe_aux_loss=_aux_loss(job, step),
    )


def retimed(n: StepNumbers, extra_s: float) -> StepNumbers:
    """A step's figures as measured over its wall time plus `extra_s` (the first step's warm-up; negative: an
    optimizer update the step skipped)."""
    f = n.step_time_s / (n.step_time_s + extra_s)
    return dataclasses.replace(
        n,
        step_time_s=n.step_time_s + extra_s,
        mfu=n.mfu * f,
        tflops_per_gpu=n.tflops_per_gpu * f,
        tokens_per_s=n.tokens_per_s * f,
        tokens_per_s_per_gpu=n.tokens_per_s_per_gpu * f,
        rank_tokens_per_s=n.rank_tokens_per_s * f,
    )
