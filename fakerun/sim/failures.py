"""Failure scenarios as data: who fails, when, how it exits, and the numbers the real messages carry."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fakerun.sim import rand
from fakerun.sim.collectives import comm_plan, grad_buckets
from fakerun.sim.memory import GIB, MIB, memory_breakdown

if TYPE_CHECKING:
    from fakerun.sim.job import JobSpec

FAILURE_KINDS = ("crash", "segfault", "oom", "nccl-timeout", "hang", "node-loss", "loss-spike", "nan")
# --fake-fail's name for "one of FAILURE_KINDS, chosen by the seed".
RANDOM_FAILURE = "random"
# torch.distributed's default NCCL watchdog timeout (excerpts 05, 07: Timeout(ms)=600000).
WATCHDOG_TIMEOUT_MS = 600_000


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
    exits: dict[str, tuple[int | None, str | None]] = {
        "crash": (1, None),  # an uncaught Python exception
        "oom": (1, None),  # torch.OutOfMemoryError, uncaught
        "segfault": (-11, "SIGSEGV"),
        # Every rank of the stuck collective times out; the watchdog aborts the process (std::abort).
        "nccl-timeout": (-6, "SIGABRT"),
    }
    if kind in exits:
        code, sig = exits[kind]
        ranks = tuple(range(job.world_size)) if kind == "nccl-timeout" else (rank,)
        return Failure(kind, step, rank, node, ranks, code, sig)
    return Failure(kind, step, rank, node, (), None, None)


def with_failure(job: JobSpec, failure: Failure) -> JobSpec:
    """The job whose loss curve carries the failure: a forced spike, or 1-3 NaN steps."""
    if failure.kind == "loss-spike":
        return dataclasses.replace(job, spike_steps=(*job.spike_steps, failure.step))
    if failure.kind == "nan":
        n = 1 + int(3 * rand.uniform(job.seed, "nan-run", failure.step))
        return dataclasses.replace(job, nan_steps=(*job.nan_steps, *range(failure.step, failure.step + n)))
    return job


@dataclass(frozen=True)
class OomNumbers:
    """The figures of torch's "CUDA out of memory. Tried to allocate ..." message, in GiB."""

    device: int
    tried_gib: float
    capacity_gib: float
    free_gib: float
    in_use_gib: float
    allocated_gib: float
    reserved_unallocated_gib: float


def oom_numbers(job: JobSpec, rank: int, step: int) -> OomNumbers:
    """Numbers for an OOM on `rank`: the fp32 logits of a micro batch no longer fit what is left."""
    mb = memory_breakdown(job, rank, step)
    # torch sees a little less than nvidia-smi's total (e.g. 79.1 GiB on an 81,559 MiB H100) [mem].
    capacity = (job.gpu.memory_mib - 550) * MIB
    free = (0.2 + 1.2 * rand.uniform(job.seed, "oom-free", rank, step)) * GIB
    tried = max(4.0 * job.seq_len * job.micro_batch * job.model.vocab / job.tp, free + 0.5 * GIB)
    in_use = capacity - free
    unallocated = (1.0 + 2.0 * rand.uniform(job.seed, "oom-frag", rank)) * GIB
    # At the failing allocation the process has grown to fill the device: PyTorch's share is what is left.
    allocated = max(in_use - mb.overhead - unallocated, 0.0)
    return OomNumbers(
        device=rank % job.nproc_per_node,
        tried_gib=tried / GIB,
        capacity_gib=capacity / GIB,
        free_gib=free / GIB,
        in_use_gib=in_use / GIB,
        allocated_gib=allocated / GIB,
        reserved_unallocated_gib=unallocated / GIB,
    )


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


def watchdog_numbers(job: JobSpec, rank: int, step: int) -> WatchdogNumbers:
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
        # FSDP / distributed optimizer: a flat reduce-scatter, NumelIn = dp x NumelOut (excerpt 05).
        op, numel_out = "_REDUCE_SCATTER_BASE", max(numel // job.dp, 1)
        numel = numel_out * job.dp
    ran_for = WATCHDOG_TIMEOUT_MS + 40 + int(80 * rand.uniform(job.seed, "watchdog", rank, step))
    return WatchdogNumbers(seq, op, numel, numel_out, WATCHDOG_TIMEOUT_MS, ran_for, seq + 2, seq - 1)
