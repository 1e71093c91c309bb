"""DeepSpeed's wall_clock_breakdown and memory_breakdown figures: an optimizer step's time split into its
micro-steps' engine timers, and the CUDA allocator and host RAM at each see_memory_usage call."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fakerun.sim import compute, rand
from fakerun.sim.collectives import comm_plan
from fakerun.sim.job import JobSpec
from fakerun.sim.memory import GIB, MIB, memory_breakdown, stage_params
from fakerun.sim.step import StepNumbers

__all__ = [
    "ENGINE_PHASES",
    "EngineTimes",
    "MemoryUsage",
    "OptimizerTimes",
    "StepTimes",
    "engine_times",
    "init_memory",
    "init_optimizer_ms",
    "micro_memory",
    "skipped_update_s",
    "total_times",
]

# Fused Adam on the rank's partition is memory-bound: it reads fp32 master, m, v and the gradient and
# writes master, m, v and the 16-bit copy (~36 bytes/param), at ~80% of the HBM bandwidth.
_ADAM_BYTES_PER_PARAM = 36.0
_HBM_EFFICIENCY = 0.8
# The optimizer's share of a step never exceeds this (tiny models on many GPUs).
_MAX_OPTIMIZER_SHARE = 0.2
# Shares of the optimizer's time: the overflow check (an inf/nan test of the gradients and its all-reduce,
# all an fp16 overflow step runs of it) and, of the update, the 16-bit copy-back (FP16_Optimizer's
# update_fp16: fp32 read, 16-bit write).
_OVERFLOW_CHECK_SHARE = 0.04
_COPY_BACK_SHARE = 0.15
# ZeRO-3's initialize_optimizer_states: zeroing the largest sub-group's fp32 gradient buffer (memset at HBM
# speed) and the loop's bookkeeping.
_INIT_STATE_BASE_MS = 0.4
# The see_memory_usage calls of one micro-step, in the order engine.forward/backward/step make them.
ENGINE_PHASES = (
    "Engine before forward",
    "Engine after forward",
    "Engine before backward",
    "Engine after backward",
    "Engine before step",
    "Engine after step",
)
# Host RAM: the OS and services, and per rank the interpreter with torch, CUDA's host side and the loader.
_HOST_BASE_GIB = 9.0
_HOST_PER_RANK_GIB = 4.2
# psutil's total (MemTotal) is the installed RAM less the kernel's reservations.
_HOST_TOTAL_SHARE = 0.985


@dataclass(frozen=True)
class EngineTimes:
    """The engine's timers of one micro-step (fwd_microstep ... step_microstep) or step (fwd ... step), ms."""

    fwd: float
    bwd: float  # bwd_inner + bwd_allreduce + the backward prologue (ZeRO's hooks and buffers)
    bwd_inner: float
    bwd_allreduce: float
    step: float


@dataclass(frozen=True)
class OptimizerTimes:
    """The optimizer's own timers on the boundary, ms: the overflow check and gradient norm; the fp32
    gradients' unscale-and-clip (ZeRO-1/2's optimizer_gradients also flattens the partition: `gradients`);
    Adam with (ZeRO) or without (FP16_Optimizer's basic_step: `adam`) the 16-bit copy-back (`copy_back`);
    and ZeRO-1/2's all-gather of the updated partitions. An overflowed step ran only the overflow check."""

    allgather: float
    overflow_check: float
    compute_norm: float
    gradients: float
    unscale: float
    step: float
    adam: float
    copy_back: float

    @property
    def zero3_step(self) -> float:
        """ZeRO-3's optimizer_step: every sub-group's fp32 gradients, unscale, Adam and copy-back."""
        return self.gradients + self.step


@dataclass(frozen=True)
class StepTimes:
    """An optimizer step's engine timers: one EngineTimes per micro-step, and the ZeRO optimizer's."""

    micro: tuple[EngineTimes, ...]
    optimizer: OptimizerTimes


@dataclass(frozen=True)
class MemoryUsage:
    """One see_memory_usage call: the allocator now and at its peak since the previous call (bytes), and the
    host's RAM in use (bytes) and its percent as psutil reports them."""

    allocated: float
    max_allocated: float
    reserved: float
    max_reserved: float
    host_used: float
    host_percent: float


def _optimizer_ms(job: JobSpec) -> float:
    """Fused Adam over the parameters this rank updates (its ZeRO partition), memory-bound."""
    dense, expert = stage_params(job, 0)
    params = (dense + expert) / (job.dp if job.zero_stage >= 1 else 1)
    bandwidth = max(job.gpu.mem_bandwidth_tbs, 1.0) * 1e12 * _HBM_EFFICIENCY
    return 1000.0 * _ADAM_BYTES_PER_PARAM * params / bandwidth


def _exposed_split(job: JobSpec) -> tuple[float, float]:
    """Shares of the exposed collective time that are gradient reductions and parameter all-gathers (the
    rest: tensor/pipeline/expert traffic inside forward and backward)."""
    plan = comm_plan(job)
    if plan.exposed_s <= 0:
        return 0.0, 0.0
    data = [o for o in plan.ops if o.group in ("dp", "edp")]
    reduce = sum(o.total_s * o.exposed for o in data if o.op != "all_gather")
    gather = sum(o.total_s * o.exposed for o in data if o.op == "all_gather")
    return reduce / plan.exposed_s, gather / plan.exposed_s


def _hook_share(job: JobSpec, bucket_elements: int) -> float:
    """ZeRO-2/3: the share of a backward's gradients reduced in the hooks, when a reduce bucket fills (the
    last, partial bucket is reduced in the backward's epilogue: bwd_allreduce)."""
    dense, expert = stage_params(job, 0)
    params = dense + expert
    if params <= 0 or bucket_elements <= 0:
        return 0.0
    return math.floor(params / bucket_elements) * bucket_elements / params


def _update_ms(job: JobSpec) -> float:
    """The optimizer's time at the boundary (the same on every rank), at most a share of a typical step."""
    cap = _MAX_OPTIMIZER_SHARE * 1000.0 * compute.expected_step_time(job)
    return min(_optimizer_ms(job), cap)


def skipped_update_s(job: JobSpec) -> float:
    """What an fp16 overflow saves a step: every rank skips the update after the overflow check."""
    return _update_ms(job) * (1.0 - _OVERFLOW_CHECK_SHARE) / 1000.0


def init_optimizer_ms(job: JobSpec, rank: int) -> float:
    """ZeRO-3's init_optimizer_state timer: zeroing the fp32 gradient buffer of the rank's partition."""
    dense, expert = stage_params(job, 0)
    bandwidth = max(job.gpu.mem_bandwidth_tbs, 1.0) * 1e12 * _HBM_EFFICIENCY
    memset_ms = 1000.0 * 4.0 * (dense + expert) / max(job.dp, 1) / bandwidth
    return _INIT_STATE_BASE_MS + memset_ms + 0.3 * rand.uniform(job.seed, "ds-init-optimizer", rank)


def engine_times(
    job: JobSpec,
    n: StepNumbers,
    *,
    overhead_s: float = 0.0,
    bucket_elements: int = 500_000_000,
    overflow: bool = False,
) -> StepTimes:
    """Rank n.rank's engine timers for each micro-step of step n.step: the step's compute, exposed
    collectives, wait for the slowest rank and (first step) warm-up, less the engine's untimed gaps.

    Over a step the timers add up to the step time the ThroughputTimer spans (n.step_time_s, warm-up
    included; an overflowed step's without the update it skipped, skipped_update_s), less a fraction of a
    millisecond per micro-step between the timed regions.
    """
    ga = max(job.grad_accum, 1)
    seed, rank, step = job.seed, n.rank, n.step

    def u(name: str, i: int = 0) -> float:
        return rand.uniform(seed, "ds-timer-" + name, rank, step, i)

    total_ms = 1000.0 * n.step_time_s
    exposed_ms = 1000.0 * n.exposed_comm_s
    overhead_ms = 1000.0 * overhead_s
    # This rank idles in the step's first blocking collective until the slowest rank gets there.
    wait_ms = max(0.0, total_ms - overhead_ms - exposed_ms - 1000.0 * n.compute_s)
    compute_ms = total_ms - overhead_ms - exposed_ms - wait_ms
    # Untimed: the script's call into engine.backward and the loss scaling (between fwd and bwd), and
    # engine.step's entry; the backward's prologue (ZeRO's hooks) is inside bwd but outside bwd_inner;
    # step() off the accumulation boundary only stops the timers.
    gaps = [0.12 + 0.2 * u("gap", i) for i in range(ga)]
    prologues = [0.05 + 0.12 * u("prologue", i) for i in range(ga)]
    idle_steps = [0.02 + 0.04 * u("idle", i) for i in range(ga - 1)]
    full_ms = _update_ms(job)
    optimizer_ms = full_ms * _OVERFLOW_CHECK_SHARE if overflow else full_ms
    work_ms = max(0.0, compute_ms - optimizer_ms - sum(gaps) - sum(prologues) - sum(idle_steps))

    reduce_share, gather_share = _exposed_split(job)
    reduce_ms = exposed_ms * reduce_share + wait_ms
    gather_ms = exposed_ms * gather_share
    other_ms = exposed_ms - exposed_ms * reduce_share - gather_ms
    fwd_share = 0.25 if job.recompute == "full" else 1.0 / 3.0
    if job.zero_stage == 3:
        # ZeRO-3 gathers each layer's parameters in forward and again in backward.
        other_ms += gather_ms
        gather_ms = 0.0
    # Micro-steps differ by a percent or so (kernels, the data); their mean is the step's.
    weights = [1.0 + 0.01 * rand.normal(seed, "ds-timer-micro", rank, step, i) for i in range(ga)]
    scale = ga / sum(weights)
    hooks = _hook_share(job, bucket_elements) if job.zero_stage >= 2 else 0.0
    out: list[EngineTimes] = []
    for i in range(ga):
        w = weights[i] * scale / ga
        boundary = i == ga - 1
        fwd = (work_ms + other_ms) * fwd_share * w
        inner = (work_ms + other_ms) * (1.0 - fwd_share) * w
        if i == 0:
            # The first step's warm-up (autotuning, lazy NCCL set-up, allocator growth) lands in its first
            # micro-step, a third in forward as the compute does.
            fwd += overhead_ms / 3.0
            inner += overhead_ms * 2.0 / 3.0
        if job.zero_stage >= 2:
            # ZeRO-2/3 reduce every micro-step's gradients: full buckets in the hooks, the rest after.
            inner += reduce_ms * hooks / ga
            allreduce = reduce_ms * (1.0 - hooks) / ga + 0.02 + 0.03 * u("epilogue", i)
        elif boundary:
            # DDP-style and ZeRO-1 engines communicate only at the accumulation boundary.
            allreduce = reduce_ms + 0.02 + 0.03 * u("epilogue", i)
        else:
            allreduce = 0.01 + 0.02 * u("epilogue", i)
        step_ms = optimizer_ms + gather_ms if boundary else idle_steps[i]
        bwd = prologues[i] + inner + allreduce
        out.append(EngineTimes(fwd, bwd, inner, allreduce, step_ms))
    # Inside the boundary's step(): the overflow check and gradient norm come first (untimed by ZeRO), then
    # the fp32 gradient partition (its flatten, then the unscale), Adam and its copy-back, and the
    # all-gather of the updated partitions.
    check = full_ms * _OVERFLOW_CHECK_SHARE
    norm = full_ms * (0.05 + 0.03 * u("opt-norm"))
    gradients = full_ms * (0.2 + 0.05 * u("opt-gradients"))
    update = full_ms - check - norm - gradients
    copy_back = update * _COPY_BACK_SHARE
    optimizer = OptimizerTimes(
        allgather=gather_ms,
        # The timer spans the check's kernels and all-reduce; the engine's step timer also spans its entry.
        overflow_check=check * (0.9 + 0.08 * u("opt-check")),
        compute_norm=norm,
        gradients=gradients,
        unscale=gradients * (0.45 + 0.1 * u("opt-unscale")),
        step=update,
        adam=update - copy_back,
        copy_back=copy_back,
    )
    return StepTimes(tuple(out), optimizer)


def total_times(micro: tuple[EngineTimes, ...]) -> EngineTimes:
    """The global timers of an accumulation boundary: each timer runs through every micro-step."""
    return EngineTimes(
        fwd=sum(t.fwd for t in micro),
        bwd=sum(t.bwd for t in micro),
        bwd_inner=sum(t.bwd_inner for t in micro),
        bwd_allreduce=sum(t.bwd_allreduce for t in micro),
        step=sum(t.step for t in micro),
    )


def _host(job: JobSpec, rank: int, call: int, extra: float = 0.0) -> tuple[float, float]:
    """(used bytes, percent) of psutil.virtual_memory() on rank's node at see_memory_usage call `call`."""
    total = job.cluster.ram_gib * GIB * _HOST_TOTAL_SHARE
    node = job.coords(rank).node
    base = (_HOST_BASE_GIB + _HOST_PER_RANK_GIB * job.nproc_per_node) * GIB
    base *= 1.0 + 0.08 * rand.uniform(job.seed, "ds-host-base", node)
    # The loaders' prefetch and Python's heap drift by some tens of MB between calls.
    drift = 0.06 * GIB * rand.value_noise(job.seed, "ds-host-drift", call / 40.0)
    used = min(total * 0.95, base + extra + drift)
    return used, round(100.0 * used / total, 1)


def _pages(nbytes: float) -> float:
    """The caching allocator's reservation for `nbytes`: whole 2 MiB pages."""
    return math.ceil(nbytes / (2 * MIB)) * 2 * MIB


def init_memory(job: JobSpec, rank: int) -> tuple[MemoryUsage, MemoryUsage]:
    """see_memory_usage's figures at the engine's "After args sanity test" and "Before configure distributed
    model": the script's model is still on the CPU (fp32), nothing on the GPU."""
    dense, expert = stage_params(job, 0)
    on_cpu = 4.0 * (dense + expert) * job.nproc_per_node
    out = []
    for call in (0, 1):
        used, pct = _host(job, rank, call, on_cpu)
        out.append(MemoryUsage(0.0, 0.0, 0.0, 0.0, used, pct))
    return out[0], out[1]


def micro_memory(
    job: JobSpec, rank: int, step: int, micro: int, *, first: bool, overflow: bool = False
) -> tuple[MemoryUsage, ...]:
    """see_memory_usage's figures at ENGINE_PHASES of micro-step `micro` of `step` (first: the run's first
    micro-step, when the allocator still grows; overflow: an fp16 overflow skipped the update). Each call
    resets the peaks, so each maximum is the phase's own: forward builds the activations, backward peaks
    (memory.py's max_allocated) and frees them, and the boundary's update holds the fp32 gradient
    partition for a while."""
    # DeepSpeed's ZeRO optimizers build their states in deepspeed.initialize: steady state from the start.
    m = memory_breakdown(job, rank)
    ga = max(job.grad_accum, 1)
    boundary = micro == ga - 1
    rest = m.allocated
    held = rest + m.activations + m.logits
    fwd_peak = held + m.buffers / 2.0
    dense, expert = stage_params(job, 0)
    partition = 4.0 * (dense + expert) / (job.dp if job.zero_stage >= 1 else 1)
    step_peak = min(rest + partition, m.max_allocated) if boundary and not overflow else rest
    frag = m.reserved / max(m.max_allocated, 1.0)
    # (allocated, peak since the previous call) per phase.
    phases = (
        (rest, rest),
        (held, fwd_peak),
        (held, held),
        (rest, m.max_allocated),
        (rest, rest),
        (rest, step_peak),
    )
    out: list[MemoryUsage] = []
    grown = 0.0
    call = 2 + ((step - 1) * ga + micro) * len(phases)
    for i, (allocated, peak) in enumerate(phases):
        grown = max(grown, peak)
        # The allocator keeps what it reserved; before the first backward it has reserved only what the
        # run has needed so far.
        reserved = min(m.reserved, _pages(grown * frag)) if first else m.reserved
        used, pct = _host(job, rank, call + i)
        out.append(MemoryUsage(allocated, peak, reserved, reserved, used, pct))
    return tuple(out)
