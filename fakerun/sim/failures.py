"""Failure scenarios as data: who fails, when, how it exits, and the numbers the real messages carry."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fakerun.names import FAILURE_KINDS, RANDOM_FAILURE
from fakerun.sim import rand
from fakerun.sim.collectives import comm_plan, grad_buckets
from fakerun.sim.job import NetStall, SlowNode

if TYPE_CHECKING:
    from fakerun.sim.job import JobSpec

# Scenarios that are the loss curve's, not a process's: training goes on.
CURVE_KINDS = frozenset({"loss-spike", "nan", "slow-node"})
# Llama 3's pre-training (Dubey et al. 2024, table 5): 419 unexpected interruptions in 54 days on 16,384
# H100s, i.e. per GPU-hour; and the share of each cause, mapped onto the scenarios that look like it.
INTERRUPTIONS_PER_GPU_HOUR = 419 / (54 * 24 * 16_384)
RANDOM_MIX = {
    "xid": 0.301 + 0.041,  # faulty GPU, SDC
    "ecc": 0.172,  # HBM3 memory
    "node-loss": 0.121 + 0.054 + 0.02,  # host maintenance, network switch/cable, host/power
    "nccl-timeout": 0.084 + 0.017,  # network, NIC
    "crash": 0.129,  # software bugs
    "segfault": 0.027,  # dependency bugs in native code
    "hang": 0.029,  # GPU hangs, unknown
}
# The share of RANDOM_MIX past these kinds: none. The scenarios a random draw can produce.
RANDOM_KINDS = tuple(RANDOM_MIX)
# torch.distributed's default NCCL watchdog timeout (excerpts 05, 07: Timeout(ms)=600000).
WATCHDOG_TIMEOUT_MS = 600_000
# An IB queue pair resends an unacknowledged packet after its local ACK timeout, 4.096 us x 2^NCCL_IB_TIMEOUT,
# NCCL_IB_RETRY_CNT times, then fails the work request with IBV_WC_RETRY_EXC_ERR (NCCL 2.29.7's defaults,
# transport/net_ib/connect.cc: 20 and 7). A link back within the window loses nothing but time.
IB_ACK_TIMEOUT_S = 4.096e-6 * 2**20
IB_RETRY_WINDOW_S = IB_ACK_TIMEOUT_S * (7 + 1)
# How long a flapping link stays down (assumption: a port bounce takes seconds, a reseated cable or a
# rebooting switch minutes), log-uniform: about 7 in 10 come back within the retry window.
NIC_OUTAGE_S = (1.0, 180.0)
# A slow node: its GPUs' compute time times this (a hard thermal throttle halves the clocks or worse), for
# the rest of the run half the time, else for a few hundred steps (a fan replaced, a link retrained).
SLOW_FACTOR = (1.3, 2.5)
SLOW_STEPS = (100, 500)
SLOW_CAUSES = ("thermal", "nvlink")


@dataclass(frozen=True)
class Failure:
    """One planned failure: its kind, the step it strikes, the ranks that die and how they exit."""

    kind: str
    step: int
    rank: int  # the rank at fault (the first rank of the node for node-loss)
    node: int
    ranks: tuple[int, ...]  # ranks whose process ends (empty when training goes on or hangs)
    exit_code: int | None  # as torchrun reports it: negative for a signal, None when nobody exits
    signal: str | None
    seconds: float = 0.0  # nic-flap: the step's stall (it recovers), or until the IB retries give up

    @property
    def strikes(self) -> bool:
        """Whether it strikes processes (else it is the physics': the loss curve, slow steps)."""
        return self.kind not in CURVE_KINDS and not (self.kind == "nic-flap" and not self.ranks)


def plan_failure(
    job: JobSpec, kind: str, *, step: int | None = None, rank: int | None = None, horizon: int | None = None
) -> Failure:
    """Where and how `kind` strikes: a seeded step in the middle of the run (or `horizon` steps) and rank."""
    if kind not in FAILURE_KINDS:
        raise ValueError(f"unknown failure {kind!r} (choose from: {', '.join(FAILURE_KINDS)})")
    first = job.start_step + 1
    last = max(first, job.start_step + (horizon if horizon is not None else job.total_steps - job.start_step))
    if step is None:
        # 30-70% of the way: late enough for logged steps and a checkpoint, early enough to be seen.
        span = last - first
        step = first + int(span * (0.3 + 0.4 * rand.uniform(job.seed, "fail-step", first)))
    if rank is None:
        rank = rand.hash64(job.seed, "fail-rank", step) % job.world_size
    if not 0 <= rank < job.world_size:
        raise ValueError(f"failure rank {rank} outside [0, {job.world_size})")
    node = rank // job.nproc_per_node
    if kind == "node-loss":
        ranks = tuple(range(node * job.nproc_per_node, (node + 1) * job.nproc_per_node))
        return Failure(kind, step, ranks[0], node, ranks, -9, "SIGKILL")
    if kind == "nic-flap":
        lo, hi = NIC_OUTAGE_S
        outage = lo * (hi / lo) ** rand.uniform(job.seed, "nic-outage", step, node)
        if outage < IB_RETRY_WINDOW_S:
            # Traffic resumes at the first retransmission after the link is back.
            stall = math.ceil(outage / IB_ACK_TIMEOUT_S) * IB_ACK_TIMEOUT_S
            return Failure(kind, step, rank, node, (), None, None, stall)
        ranks = tuple(range(node * job.nproc_per_node, (node + 1) * job.nproc_per_node))
        return Failure(kind, step, rank, node, ranks, -6, "SIGABRT", IB_RETRY_WINDOW_S)
    exits: dict[str, tuple[int | None, str | None]] = {
        "crash": (1, None),  # an uncaught Python exception
        "oom": (1, None),  # torch.OutOfMemoryError, uncaught
        "segfault": (-11, "SIGSEGV"),
        "sigkill": (-9, "SIGKILL"),
        # CUDA errors surface in the NCCL watchdog first, which terminates the process (std::abort).
        "xid": (-6, "SIGABRT"),
        "illegal-memory-access": (-6, "SIGABRT"),
        "ecc": (-6, "SIGABRT"),
        # Every rank of the stuck collective times out; the watchdog aborts the process (std::abort).
        "nccl-timeout": (-6, "SIGABRT"),
    }
    if kind in exits:
        code, sig = exits[kind]
        ranks = tuple(range(job.world_size)) if kind == "nccl-timeout" else (rank,)
        return Failure(kind, step, rank, node, ranks, code, sig)
    return Failure(kind, step, rank, node, (), None, None)


def parse_spec(spec: str) -> tuple[str, int | None, int | None]:
    """`SCENARIO[@STEP][:RANK]` (the command line checked it) as (scenario, step, rank)."""
    head, _, rank = spec.partition(":")
    kind, _, step = head.partition("@")
    return kind, (int(step) if step else None), (int(rank) if rank else None)


def plan_failures(
    job: JobSpec, specs: Sequence[str], *, first: int, last: int, step_s: float
) -> tuple[Failure, ...]:
    """The failures of --fake-fail's specs for a run of steps first..last: each where it says, else seeded
    in the run; `random` draws from the rates of large runs (none if the run is too short to meet one)."""
    out: list[Failure] = []
    for index, spec in enumerate(specs):
        kind, step, rank = parse_spec(spec)
        if kind == RANDOM_FAILURE:
            drawn = random_failure(job, index, first=first, last=last, step_s=step_s)
            if drawn is None:
                continue
            kind, step = drawn
        horizon = last - job.start_step
        if step is not None and not first <= step <= last:
            raise ValueError(f"--fake-fail {spec}: step {step} is outside this run's steps {first}-{last}")
        out.append(plan_failure(job, kind, step=step, rank=rank, horizon=horizon))
    return tuple(sorted(out, key=lambda f: f.step))


def random_failure(
    job: JobSpec, index: int, *, first: int, last: int, step_s: float
) -> tuple[str, int] | None:
    """When the first interruption of a job this size strikes (exponential at Llama 3's rate per GPU-hour)
    and what it is (by Llama 3's causes); None when the run ends first."""
    per_hour = INTERRUPTIONS_PER_GPU_HOUR * job.world_size
    u = rand.uniform(job.seed, "fail-random-time", index)
    hours = -math.log(max(1.0 - u, 1e-300)) / per_hour
    step = first + int(hours * 3600.0 / max(step_s, 1e-9))
    if step > last:
        return None
    pick = rand.uniform(job.seed, "fail-random-kind", index) * sum(RANDOM_MIX.values())
    for kind, share in RANDOM_MIX.items():
        pick -= share
        if pick < 0:
            return kind, step
    return RANDOM_KINDS[-1], step


def with_failure(job: JobSpec, failure: Failure) -> JobSpec:
    """The job whose physics carries the failure: a forced spike, 1-3 NaN steps, a slow node from the
    failure's step on, or the stall of a NIC outage that recovered."""
    if failure.kind == "loss-spike":
        return dataclasses.replace(job, spike_steps=(*job.spike_steps, failure.step))
    if failure.kind == "nan":
        n = 1 + int(3 * rand.uniform(job.seed, "nan-run", failure.step))
        return dataclasses.replace(job, nan_steps=(*job.nan_steps, *range(failure.step, failure.step + n)))
    if failure.kind == "slow-node":
        lo, hi = SLOW_FACTOR
        factor = lo + (hi - lo) * rand.uniform(job.seed, "slow-factor", failure.step, failure.node)
        if rand.uniform(job.seed, "slow-until-end", failure.step, failure.node) < 0.5:
            end = max(job.total_steps, failure.step)
        else:
            short, long = SLOW_STEPS
            span = (long - short) * rand.uniform(job.seed, "slow-len", failure.step)
            end = failure.step + short + int(span)
        cause = SLOW_CAUSES[int(rand.uniform(job.seed, "slow-cause", failure.step) < 0.4)]
        slow = SlowNode(failure.node, failure.step, end, factor, cause)
        return dataclasses.replace(job, slow_nodes=(*job.slow_nodes, slow))
    if failure.kind == "nic-flap" and not failure.strikes:
        stall = NetStall(failure.step, failure.node, failure.rank, failure.seconds)
        return dataclasses.replace(job, net_stalls=(*job.net_stalls, stall))
    return job


@dataclass(frozen=True)
class WatchdogNumbers:
    """The figures of ProcessGroupNCCL's "Watchdog caught collective operation timeout" lines."""

    seq_num: int
    op_type: str  # ALLREDUCE | _REDUCE_SCATTER_BASE
    numel_in: int
    numel_out: int
    timeout_ms: int
    ran_for_ms: int
    last_enqueued: int
    last_completed: int


def watchdog_numbers(
    job: JobSpec, rank: int, step: int, timeout_ms: int = WATCHDOG_TIMEOUT_MS
) -> WatchdogNumbers:
    """Numbers for a data-parallel gradient collective stuck at `step`, as `rank` reports them."""
    plan = comm_plan(job)
    per_step = max(1, sum(op.count for op in plan.ops if op.group == "dp"))
    buckets = grad_buckets(job) or (2.0 * job.model.params / (job.tp * job.pp),)
    grad_bytes = 4.0 if job.fp32_grad_buffer else 2.0
    numel = int(buckets[len(buckets) // 2] / grad_bytes)
    seq = per_step * max(step - 1, 0) + 1 + len(buckets) // 2
    if job.zero_stage == 0:
        op, numel_out = "ALLREDUCE", numel
    else:
        # FSDP / distributed optimizer: a flat reduce-scatter, NumelIn = dp x NumelOut (excerpt 05), over the
        # data x context parallel ranks.
        op, numel_out = "_REDUCE_SCATTER_BASE", max(numel // job.dp_cp, 1)
        numel = numel_out * job.dp_cp
    # The watchdog polls every ~100 ms: each rank notices a little past the timeout, at its own moment.
    ran_for = timeout_ms + 20 + int(100 * rand.uniform(job.seed, "watchdog", rank, step))
    return WatchdogNumbers(seq, op, numel, numel_out, timeout_ms, ran_for, seq + 2, seq - 1)
