"""Collective times over NVLink and NICs (ring, tree, NVLS, hierarchical) and the per-step comm plan."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fakerun.sim import rand
from fakerun.sim.memory import MIB, stage_params

if TYPE_CHECKING:
    from fakerun.presets import ClusterSpec
    from fakerun.sim.job import JobSpec

# Bytes at which per-message overheads (protocol switch, channel set-up) cost as much as the bandwidth term:
# busbw reaches ~50% of peak around 16 MiB and saturates near 512 MiB ([MLE] network/README.md 1246; fitted on
# 8 x A100 16 MiB 0.277 ms / 1 GiB 8.2 ms, excerpt 32, and 8 x H200 16 MiB 0.13 ms, excerpt 33).
S_HALF = 8 * MIB
# NCCL's LL protocol: low latency, ~12% of the bandwidth; it wins below ~1 MiB (excerpt 32: 32 KiB in 44 us).
LL_EFFICIENCY = 0.12
# Tree all-reduce moves the same bytes as ring but pipelines less well inside a node.
TREE_PENALTY = 1.05
# Fixed cost of any collective that leaves the node (network proxy, RDMA set-up): 2-node all-reduces of small
# messages take 2-4x the single-node time ([MLE] network/README.md 1400-1455: 6-120x on slower fabrics).
NET_BASE_S = 8e-6
# Point-to-point copies reach ~80% of the per-direction NVLink rate.
P2P_EFFICIENCY = 0.8

OPS = ("all_reduce", "reduce_scatter", "all_gather", "all_to_all", "send_recv")

# PyTorch DDP: bucket_cap_mb=25 and a 1 MiB first bucket (torch.distributed DDP docs [mem]).
DDP_BUCKET_BYTES = 25 * MIB
DDP_FIRST_BUCKET_BYTES = 1 * MIB
# Megatron DDP: bucket_size = max(40M, 1M * dp) elements, closed at parameter boundaries; excerpt 08 reports
# 17 buckets for Llama 3.2 1B: one per layer (61M elements each) plus the embedding.
MEGATRON_BUCKET_ELEMENTS = 40_000_000


@dataclass(frozen=True)
class CollectiveTime:
    """One collective: what, over how many ranks and nodes, which algorithm, how long."""

    op: str
    nbytes: float
    ranks: int
    nodes: int
    algo: str
    seconds: float

    @property
    def algbw(self) -> float:
        """nccl-tests' algorithm bandwidth, bytes/s: size / time."""
        return self.nbytes / self.seconds if self.seconds > 0 else 0.0

    @property
    def busbw(self) -> float:
        """nccl-tests' bus bandwidth, bytes/s: algbw * 2(n-1)/n for all_reduce, (n-1)/n for the others."""
        return self.algbw * bus_factor(self.op, self.ranks)


def bus_factor(op: str, n: int) -> float:
    """Bytes each rank moves per byte of payload (NVIDIA/nccl-tests doc/PERFORMANCE.md)."""
    if n <= 1:
        return 0.0
    if op == "all_reduce":
        return 2.0 * (n - 1) / n
    if op == "send_recv":
        return 1.0
    return (n - 1) / n


def _ring_steps(op: str, n: int) -> int:
    if n <= 1:
        return 0
    if op == "all_reduce":
        return 2 * (n - 1)
    if op == "send_recv":
        return 1
    return n - 1


def ring_allreduce_time(nbytes: float, n: int, busbw: float, latency: float) -> float:
    """Textbook ring all-reduce: 2(n-1)/n * S / busbw + 2(n-1) * latency (bytes, bytes/s, seconds)."""
    if n <= 1:
        return 0.0
    return 2.0 * (n - 1) / n * nbytes / busbw + 2.0 * (n - 1) * latency


def tree_allreduce_time(nbytes: float, n: int, busbw: float, latency: float) -> float:
    """Double binary tree all-reduce: ring's bandwidth term, but 2 * ceil(log2 n) latency hops."""
    if n <= 1:
        return 0.0
    return 2.0 * (n - 1) / n * nbytes / busbw + 2.0 * math.ceil(math.log2(n)) * latency


def _wire(factor: float, nbytes: float, bw: float) -> float:
    """Seconds on the wire: NCCL's Simple protocol (full bandwidth, fixed overhead) or LL, the faster."""
    return min(factor * (nbytes + S_HALF) / bw, factor * nbytes / (bw * LL_EFFICIENCY))


def node_nic_bytes(cluster: ClusterSpec, ranks_per_node: int) -> float:
    """Achievable bytes/s out of one node for `ranks_per_node` ranks: the NICs nearest them, x efficiency."""
    # Rail-optimised nodes give each GPU its own NIC (DGX H100: 8 x NDR400); ranks on half the GPUs reach
    # half the NICs (excerpt 51: CUDA_VISIBLE_DEVICES=0,2,4,6 with NCCL_CROSS_NIC=0 uses 4).
    share = min(max(ranks_per_node, 1), cluster.gpus_per_node) / cluster.gpus_per_node
    nics = max(1, round(cluster.nics_per_node * share))
    return nics * cluster.nic_gbps / 8.0 * 1e9 * cluster.nic_efficiency


def collective_time(
    cluster: ClusterSpec, op: str, nbytes: float, ranks: int, ranks_per_node: int
) -> CollectiveTime:
    """One collective of `nbytes` (payload per rank) over `ranks`, `ranks_per_node` of them per node."""
    n = max(ranks, 1)
    g = max(min(ranks_per_node, n), 1)
    k = math.ceil(n / g)
    if n == 1 or nbytes <= 0:
        return CollectiveTime(op, nbytes, n, k, "NONE", 0.0)
    a_in = cluster.intra_latency_us * 1e-6
    a_out = cluster.inter_latency_us * 1e-6
    b_in = cluster.intra_busbw_gbs * 1e9
    if op == "send_recv":
        bw = cluster.nic_bytes_per_gpu if k > 1 else cluster.gpu.link_gbs * 1e9 * P2P_EFFICIENCY
        return CollectiveTime(op, nbytes, n, k, "P2P", nbytes / bw + (NET_BASE_S + a_out if k > 1 else a_in))
    if k == 1:
        algo = "RING"
        if op == "all_reduce" and cluster.nvls and g > 2:
            # NVLink SHARP reduces in the switch: 473-482 GB/s busbw on 8 x H100/H200 (excerpts 33, 35).
            algo, b_in = "NVLS", cluster.nvls_busbw_gbs * 1e9
        lat = _ring_steps(op, n) * a_in
        return CollectiveTime(op, nbytes, n, k, algo, lat + _wire(bus_factor(op, n), nbytes, b_in))
    # Across nodes NCCL is hierarchical: the intra-node phase runs on NVLink while only 1/g of the payload
    # per GPU crosses the NICs; the two phases pipeline, so the slower one dominates (PHYSICS.md 3;
    # 4 x 8 B200 on EFA: 1 GiB in ~5.7 ms, excerpt 34).
    b_out = cluster.nic_bytes_per_gpu
    if op == "all_to_all":
        intra = _wire((g - 1) / n, nbytes, b_in)
        inter = _wire((n - g) / n, nbytes, b_out)
    else:
        intra = _wire(bus_factor(op, g), nbytes, b_in) if g > 1 else 0.0
        # NCCL's rings run through every GPU: each ring enters and leaves each node once, so a node's NICs
        # carry the whole ring volume, 2(n-1)/n * S for an all-reduce. busbw is therefore capped by the NICs
        # the node's ranks use (per-NIC rate x NICs x efficiency): 2 x 4 H100 on 4 NDR400 NICs cap at
        # 4 x 46.5 = 186 GB/s and measure 159 at 256 MiB (excerpt 51; 46-48 GB/s per NIC, nccl-tests#290).
        inter = _wire(bus_factor(op, n), nbytes, node_nic_bytes(cluster, g))
    bw_time = max(intra, inter) + 0.1 * min(intra, inter)
    # A flat ring visits every rank: of its hops, k per pass cross the network.
    steps = _ring_steps(op, n)
    net = min(steps, (2 if op == "all_reduce" else 1) * k)
    ring = NET_BASE_S + (steps - net) * a_in + net * a_out + bw_time
    if op == "all_reduce":
        tree_lat = _ring_steps(op, g) * a_in + 2 * math.ceil(math.log2(k)) * a_out
        tree = NET_BASE_S + tree_lat + bw_time * TREE_PENALTY
        if tree < ring:
            return CollectiveTime(op, nbytes, n, k, "TREE", tree)
    return CollectiveTime(op, nbytes, n, k, "RING", ring)


def allreduce_time(cluster: ClusterSpec, nbytes: float, ranks: int, ranks_per_node: int) -> float:
    """Seconds for one all-reduce of `nbytes` over `ranks` ranks, `ranks_per_node` per node."""
    return collective_time(cluster, "all_reduce", nbytes, ranks, ranks_per_node).seconds


# ----------------------------------------------------------------------------------------------------
# The per-step communication plan of one rank


@dataclass(frozen=True)
class CommOp:
    """A kind of collective a rank runs `count` times per optimizer step."""

    group: str  # dp | edp | tp | pp | ep | cp
    op: str
    nbytes: float
    count: int
    seconds: float  # one call
    exposed: float  # fraction of its time not hidden behind compute
    algo: str
    ranks: int
    nodes: int

    @property
    def total_s(self) -> float:
        """Seconds per step spent in this op."""
        return self.seconds * self.count


@dataclass(frozen=True)
class CommPlan:
    """All the collectives of one optimizer step on the busiest pipeline stage."""

    ops: tuple[CommOp, ...]
    buckets: tuple[float, ...]  # data-parallel gradient buckets in bytes, in reduction order
    total_s: float
    exposed_s: float

    @property
    def exposed_fraction(self) -> float:
        """Share of the communication time on the critical path."""
        return self.exposed_s / self.total_s if self.total_s > 0 else 0.0


def _per_node(job: JobSpec, stride: int, size: int) -> int:
    """Members of a group with rank stride `stride` that share a node."""
    return max(1, min(size, job.nproc_per_node // stride)) if stride <= job.nproc_per_node else 1


def _busiest_stage(job: JobSpec) -> int:
    return max(range(job.pp), key=lambda s: sum(stage_params(job, s)))


def grad_buckets(job: JobSpec) -> tuple[float, ...]:
    """Gradient buckets (bytes) of the busiest stage's trained parameters, in the order backward fills."""
    if job.lora_rank:
        # LoRA: DDP reduces only parameters that require grad, the adapters: the buckets at their share.
        share = job.adapter_params / job.model.params
        return tuple(b * share for b in _dense_buckets(job))
    return _dense_buckets(job)


def _dense_buckets(job: JobSpec) -> tuple[float, ...]:
    stage = _busiest_stage(job)
    dense, _ = stage_params(job, stage)
    grad_bytes = 4.0 if job.fp32_grad_buffer else 2.0
    if job.zero_stage == 0:
        total = dense * grad_bytes
        if total <= DDP_FIRST_BUCKET_BYTES:
            return (total,)
        rest = total - DDP_FIRST_BUCKET_BYTES
        full, tail = divmod(rest, DDP_BUCKET_BYTES)
        buckets = [DDP_BUCKET_BYTES] * int(full) + ([tail] if tail > 0 else [])
        return (DDP_FIRST_BUCKET_BYTES, *buckets)
    # Megatron: whole layers until a bucket holds >= 40M elements; the embedding closes the last one.
    m = job.model
    dense_layer, expert_layer, router = m.layer_params()
    layer = (dense_layer + router + (0 if m.is_moe else expert_layer)) / job.tp
    limit = max(MEGATRON_BUCKET_ELEMENTS, 1_000_000 * job.dp_cp)
    out: list[float] = []
    acc = 0.0
    n_layers = job.stage_layers(stage)
    for _ in range(n_layers):
        acc += layer
        if acc >= limit:
            out.append(acc * grad_bytes)
            acc = 0.0
    rest = dense - n_layers * layer + acc
    if rest > 0:
        out.append(rest * grad_bytes)
    return tuple(out)


@functools.lru_cache(maxsize=256)
def comm_plan(job: JobSpec) -> CommPlan:
    """The collectives of one step: DP gradient sync, TP activations, PP sends, MoE all-to-all, context
    parallel K/V exchange."""
    c = job.cluster
    m = job.model
    stage = _busiest_stage(job)
    dense, expert = stage_params(job, stage)
    n_layers = job.stage_layers(stage)
    ga = job.grad_accum
    # One bf16 activation tensor of a micro batch (the rank's share of each sequence under context parallel).
    act_bytes = 2.0 * job.local_seq_len * job.micro_batch * m.hidden
    grad_bytes = 4.0 if job.fp32_grad_buffer else 2.0
    ops: list[CommOp] = []

    def add(
        group: str, op: str, nbytes: float, count: int, ranks: int, per_node: int, exposed: float
    ) -> None:
        if ranks <= 1 or count <= 0 or nbytes <= 0:
            return
        t = collective_time(c, op, nbytes, ranks, per_node)
        ops.append(CommOp(group, op, nbytes, count, t.seconds, exposed, t.algo, t.ranks, t.nodes))

    # Gradients are reduced over the data x context parallel ranks (they hold the same weights).
    dp = job.dp_cp
    buckets = grad_buckets(job) if dp > 1 else ()
    dp_node = _per_node(job, job.tp, dp)
    if dp > 1:
        if job.zero_stage == 0:
            # DDP overlaps bucket all-reduces with backward; only the last bucket is fully exposed.
            for i, b in enumerate(buckets):
                add("dp", "all_reduce", b, 1, dp, dp_node, 1.0 if i == len(buckets) - 1 else 0.1)
        elif job.zero_stage in (1, 2):
            # Distributed optimizer: reduce-scatter the grads (overlapped with backward), all-gather the
            # updated bf16 params (overlapped with the next forward).
            for i, b in enumerate(buckets):
                add("dp", "reduce_scatter", b, 1, dp, dp_node, 1.0 if i == len(buckets) - 1 else 0.1)
                add("dp", "all_gather", b * 2.0 / grad_bytes, 1, dp, dp_node, 0.2)
        else:
            # FSDP: per layer, all-gather params for forward and again for backward, reduce-scatter grads.
            layer = dense / max(n_layers, 1)
            add("dp", "all_gather", 2.0 * layer, 2 * n_layers, dp, dp_node, 0.15)
            add("dp", "reduce_scatter", grad_bytes * layer, n_layers, dp, dp_node, 0.15)
    edp = job.expert_dp
    if m.is_moe and edp > 1 and expert > 0:
        edp_node = _per_node(job, job.expert_tp * job.ep, edp)
        add(
            "edp",
            "reduce_scatter" if job.zero_stage else "all_reduce",
            expert * grad_bytes,
            1,
            edp,
            edp_node,
            0.3,
        )
        if job.zero_stage:
            add("edp", "all_gather", expert * 2.0, 1, edp, edp_node, 0.3)
    if job.tp > 1:
        # Megatron TP with sequence parallelism: 2 all-gathers + 2 reduce-scatters per layer, forward and
        # backward: the volume of 4 all-reduces; mostly on the critical path (Korthikanti et al. 2022).
        add("tp", "all_reduce", act_bytes, 4 * n_layers * ga, job.tp, job.tp, 0.7)
    if job.pp > 1:
        inter = job.tp * dp >= job.nproc_per_node
        add("pp", "send_recv", act_bytes / job.tp, 2 * ga, 2, 1 if inter else 2, 0.5)
    if m.is_moe and job.ep > 1:
        # Token dispatch and combine, forward and backward: 4 all-to-alls per MoE layer per micro batch.
        ep_node = _per_node(job, job.expert_tp, job.ep)  # the expert grid: ep ranks one etp apart
        add("ep", "all_to_all", act_bytes * m.top_k / job.tp, 4 * n_layers * ga, job.ep, ep_node, 0.8)
    if job.cp > 1:
        # Ring attention: each rank's K and V chunk (its heads' share) goes round the cp ranks, cp - 1 hops
        # per attention layer forward; backward passes the K/V chunk and its gradient, twice the volume.
        # Each hop hides behind the attention of the chunk in hand (Liu et al. 2023, Ring Attention).
        kv_chunk = 2.0 * 2.0 * job.local_seq_len * job.micro_batch * m.kv_heads * m.head_dim / job.tp
        attention = round(n_layers * m.attention_layers / m.layers)
        cp_node = _per_node(job, job.tp, job.cp)
        add("cp", "send_recv", kv_chunk, 3 * (job.cp - 1) * attention * ga, job.cp, cp_node, 0.2)

    total = sum(o.total_s for o in ops)
    exposed = sum(o.total_s * o.exposed for o in ops)
    return CommPlan(tuple(ops), tuple(buckets), total, exposed)


COMM_JITTER = 0.03  # per-step spread of collective times (shared: one NCCL schedule for all ranks)


def comm_jitter(job: JobSpec, step: int) -> float:
    """Multiplier on this step's collective times, within [0.92, 1.08]."""
    return 1.0 + max(-0.08, min(0.08, COMM_JITTER * rand.normal(job.seed, "comm", step)))


def comm_seconds(job: JobSpec, step: int) -> float:
    """Total collective time of `step` on one rank (what the coordinator passes to step.step_time)."""
    return comm_plan(job).total_s * comm_jitter(job, step)


@functools.lru_cache(maxsize=64)
def _bucket_collectives(job: JobSpec) -> tuple[CollectiveTime, ...]:
    """The gradient buckets' collectives before the step's jitter (the same every step of a job)."""
    op = "all_reduce" if job.zero_stage == 0 else "reduce_scatter"
    per_node = _per_node(job, job.tp, job.dp_cp)
    return tuple(collective_time(job.cluster, op, b, job.dp_cp, per_node) for b in comm_plan(job).buckets)


def bucket_allreduces(job: JobSpec, step: int) -> tuple[CollectiveTime, ...]:
    """This step's data-parallel gradient collectives, one per bucket, for "AllReduce" log lines."""
    j = comm_jitter(job, step)
    return tuple(
        CollectiveTime(t.op, t.nbytes, t.ranks, t.nodes, t.algo, t.seconds * j)
        for t in _bucket_collectives(job)
    )
