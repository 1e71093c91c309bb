"""Per-GPU memory: weights, gradients and Adam states sharded by TP/PP/EP and ZeRO, activations, overheads."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fakerun.sim import rand

if TYPE_CHECKING:
    from fakerun.presets import ModelSpec
    from fakerun.sim.job import JobSpec

GIB = float(1 << 30)
MIB = float(1 << 20)

# Mixed-precision Adam (ZeRO paper, Rajbhandari et al. 2020 [mem], PHYSICS.md 6): bf16 weights 2 + bf16
# grads 2 + fp32 master 4 + m 4 + v 4 = 16 bytes/param. Megatron's distributed optimizer keeps fp32 grads (4):
# 1.2359B params, d=8 -> (2 + 4 + 12/8) bytes = 8839 MiB, the "weight and optimizer" line of excerpt 08.
WEIGHT_BYTES = 2.0
OPTIMIZER_BYTES = 12.0
# Bytes per parameter of (weights, optimizer states) by JobSpec.state_layout. "mixed": the above. "fp32":
# FSDP2's MixedPrecisionPolicy and AMP keep the (sharded) parameters in fp32, so they are Adam's master copy
# and only m and v add 8 (torchtitan: 8.03B / 8 GPUs x 4 = 3.74 GiB for the model after init). "bf16":
# torchtune's dtype=bf16 trains bf16 parameters and AdamW keeps m and v in their dtype (2 + 2), no master.
STATE_BYTES = {"mixed": (WEIGHT_BYTES, OPTIMIZER_BYTES), "fp32": (4.0, 8.0), "bf16": (2.0, 4.0)}
# Memory nvidia-smi counts beyond PyTorch's "reserved": excerpt 08 shows 12,232 MiB reserved, 16,273 MiB used.
CUDA_CONTEXT_GIB = 0.6  # context + lazily loaded kernels
WORKSPACE_GIB = 0.25  # cuBLAS / cuDNN workspaces
NCCL_GROUP_GIB = 0.5  # NCCL channel buffers per communicator in use
NVLS_GIB = 1.5  # NVLink SHARP buffers
STRAY_CONTEXT_GIB = 0.3  # other local ranks' stray contexts on device 0 (excerpt 40: local rank 0 +2 GB)


@dataclass(frozen=True)
class MemoryBreakdown:
    """One rank's memory in bytes, with the allocated / max-allocated / reserved trio PyTorch reports."""

    weights: float
    grads: float
    optimizer: float
    activations: float
    logits: float
    buffers: float
    allocated: float  # torch.cuda.memory_allocated() between steps
    max_allocated: float  # torch.cuda.max_memory_allocated(): the peak during a step
    reserved: float  # torch.cuda.memory_reserved(): the caching allocator's segments
    overhead: float  # CUDA context, workspaces and NCCL buffers (outside PyTorch's allocator)
    used: float  # what nvidia-smi shows for the process
    capacity: float

    @property
    def allocated_gib(self) -> float:
        """Allocated memory in GiB."""
        return self.allocated / GIB

    @property
    def max_allocated_gib(self) -> float:
        """Peak allocated memory in GiB."""
        return self.max_allocated / GIB

    @property
    def reserved_gib(self) -> float:
        """Reserved memory in GiB."""
        return self.reserved / GIB

    @property
    def used_gib(self) -> float:
        """Device memory in use as nvidia-smi sees it, in GiB."""
        return self.used / GIB

    @property
    def used_mib(self) -> int:
        """Device memory in use as nvidia-smi prints it, in MiB."""
        return int(self.used // MIB)

    @property
    def capacity_gib(self) -> float:
        """Device memory in GiB."""
        return self.capacity / GIB

    @property
    def fits(self) -> bool:
        """Whether the rank fits on its GPU."""
        return self.used <= self.capacity


def stage_params(job: JobSpec, pp_rank: int) -> tuple[float, float]:
    """(dense, expert) parameters held by one rank of pipeline stage `pp_rank`, after TP and EP sharding."""
    m = job.model
    dense_layer, expert_layer, router = m.layer_params()
    n = job.stage_layers(pp_rank)
    first = sum(job.stage_layers(p) for p in range(pp_rank))
    if m.hybrid:
        # Each layer of a hybrid stack is its own block: the stage's own layers, not n mean layers (Megatron
        # prints the exact count per rank).
        dense = float(m.hybrid_params(first, first + n))
        expert = 0.0
    elif m.is_moe:
        # The model's first dense_layers layers have one MLP of ffn_hidden in place of the experts.
        plain = max(0, min(first + n, m.dense_layers) - first)
        moe = n - plain
        dense = float(moe * (dense_layer + router))
        dense += plain * m.plain_layer_params()
        expert = float(moe * m.experts * expert_layer)
    else:
        dense = float(n * (dense_layer + expert_layer))
        expert = 0.0
    emb = m.vocab * m.hidden
    if pp_rank == 0:
        dense += emb + (m.max_position * m.hidden if m.position == "learned" else 0)
    if pp_rank == job.pp - 1:
        dense += m.hidden * (2 if m.norm == "layernorm" and m.bias != "none" else 1)
        # Megatron keeps a copy of tied embeddings on the last stage; an untied LM head lives there anyway.
        if not m.tied_embeddings or job.pp > 1:
            dense += emb
    return dense / job.tp, expert / (job.expert_tp * job.ep)


def _mlp_coefficient(m: ModelSpec, ffn: int) -> float:
    """Saved bytes per token per hidden unit of one MLP of hidden size `ffn`."""
    r = ffn / m.hidden
    # GPT (GELU, 4h): 19 bytes with r = 4 (Korthikanti et al. 2022 [mem]). SwiGLU keeps the input plus gate,
    # up and their product: 2 + 6r (23 for Llama's r = 3.5).
    return 2.0 + 6.0 * r if m.mlp == "swiglu" else 3.0 + 4.0 * r


def _moe_layers(m: ModelSpec) -> int:
    """Layers whose MLP is the experts (a MoE model's first dense_layers have a dense MLP of ffn_hidden)."""
    return m.layers - min(m.dense_layers, m.layers) if m.is_moe else 0


def activation_coefficient(job: JobSpec) -> float:
    """Activation bytes per token per hidden unit of one layer (the mean over a MoE model's dense and expert
    layers), as in Korthikanti et al. 2022's 34: attention 11 + 4 for the layer norms + the MLP's."""
    m = job.model
    mlp = _mlp_coefficient(m, m.ffn_hidden)
    moe = _moe_layers(m)
    if moe:
        # Each token's top_k routed copies through an expert's MLP (its own hidden size), and the shared
        # experts' MLP every token passes through.
        routed = m.top_k * _mlp_coefficient(m, m.expert_ffn or m.ffn_hidden)
        routed += _mlp_coefficient(m, m.shared_ffn) if m.shared_ffn else 0.0
        mlp = (moe * routed + (m.layers - moe) * mlp) / m.layers
    return 11.0 + 4.0 + mlp


def op_sac_coefficient(job: JobSpec) -> float:
    """Saved bytes per token per hidden unit of one layer under torchtitan's per-op selective checkpointing
    (activation_checkpoint.py's policy): the layer's input, the attention output, every other matmul
    output (the others and every elementwise op recomputed), the MoE all-to-all outputs under expert
    parallelism; the routed experts' grouped matmuls are not in the save list and are recomputed."""
    m = job.model
    h, q, kv = m.hidden, m.heads * m.head_dim, m.kv_heads * m.head_dim

    def mm_outputs(ffn: int) -> int:
        return 2 * ffn + h if m.mlp == "swiglu" else ffn + h

    attention = q + 2 * kv + h  # wq, wk, wv and wo outputs
    moe = _moe_layers(m)
    dense_mm = attention + mm_outputs(m.ffn_hidden)
    moe_mm = attention + (mm_outputs(m.shared_ffn) if m.shared_ffn else 0)
    # dispatch and combine: each token's top_k copies, in bf16, each way
    a2a = 2.0 * 2 * m.top_k * h if moe and job.ep > 1 else 0.0
    # bf16: half the matmul outputs at 2 bytes each, the input and the attention output
    per_layer = ((m.layers - moe) * dense_mm + moe * (moe_mm + a2a)) / m.layers + 2.0 * (h + q)
    return per_layer / h


def layer_activation_bytes(job: JobSpec) -> float:
    """Saved activations of one layer for one micro batch on one rank (sequence parallel when tp > 1; its
    share of each sequence under context parallelism)."""
    m = job.model
    s, b, h = job.local_seq_len, job.micro_batch, m.hidden
    coefficient = op_sac_coefficient(job) if job.recompute == "op" else activation_coefficient(job)
    per_layer = s * b * h * coefficient / job.tp
    if job.recompute == "none":
        # Eager attention keeps the a*s*s score and softmax tensors: 5*a*s/h more per sbh (Korthikanti eq. 2).
        per_layer += 5.0 * m.heads * s * s * b / job.tp
    return per_layer


def _recomputed_layer_bytes(job: JobSpec) -> float:
    """One layer's activations as its recompute rebuilds them in backward (full or per-op checkpointing)."""
    return job.local_seq_len * job.micro_batch * job.model.hidden * activation_coefficient(job) / job.tp


def in_flight_microbatches(job: JobSpec, pp_rank: int) -> int:
    """Micro batches whose activations a stage holds at once under 1F1B: pp - stage on the first stages."""
    if job.pp == 1:
        return 1
    return max(1, min(job.pp - pp_rank, job.grad_accum))


def _group_count(job: JobSpec) -> int:
    return sum(1 for size in (job.dp, job.tp, job.pp, job.ep, job.cp) if size > 1)


@functools.lru_cache(maxsize=8192)
def _breakdown(job: JobSpec, pp_rank: int, phase: int, local0: bool, frag_key: int) -> MemoryBreakdown:
    # phase: 0 = after loading (no grads or optimizer yet), 1 = first step of a fresh run, 2 = steady state.
    m = job.model
    dense, expert = stage_params(job, pp_rank)
    total = dense + expert
    d = job.dp_cp  # context-parallel ranks hold the same weights: ZeRO shards over them too
    edp = job.expert_dp  # expert states are sharded over the ranks holding the same experts
    grad_b = 4.0 if job.fp32_grad_buffer else 2.0
    z = job.zero_stage
    weight_b, optimizer_b = STATE_BYTES[job.state_layout]
    weights = weight_b * (total if z < 3 else dense / d + expert / edp)
    grads = grad_b * (total if z < 2 else dense / d + expert / edp)
    optimizer = optimizer_b * (total if z == 0 else dense / d + expert / edp)
    if job.lora_rank:
        # LoRA: the frozen base has no gradient or Adam state; the adapters (this stage's share) have both.
        adapters = total * job.adapter_params / m.params
        weights += weight_b * adapters
        grads = grad_b * adapters / (d if z >= 2 else 1)
        optimizer = optimizer_b * adapters / (d if z >= 1 else 1)

    n_layers = job.stage_layers(pp_rank)
    flight = in_flight_microbatches(job, pp_rank)
    if job.recompute == "full":
        # Only each layer's input is kept; one layer at a time is recomputed in full during backward.
        kept = 2.0 * job.local_seq_len * job.micro_batch * m.hidden / job.tp
        acts = flight * n_layers * kept + _recomputed_layer_bytes(job)
    elif job.recompute == "op":
        acts = flight * n_layers * layer_activation_bytes(job) + _recomputed_layer_bytes(job)
    else:
        acts = flight * n_layers * layer_activation_bytes(job)
    logits = 0.0
    if pp_rank == job.pp - 1:
        # bf16 logits plus the fp32 copy the cross-entropy works on: 6 bytes per vocab entry per token.
        logits = 6.0 * job.local_seq_len * job.micro_batch * m.vocab / job.tp
    if z == 3:
        dense_layer, expert_layer, router = m.layer_params()
        layer_full = dense_layer + router + (m.experts * expert_layer / job.ep if m.is_moe else expert_layer)
        # FSDP holds the gathered current layer and the prefetched next one.
        buffers = 2 * WEIGHT_BYTES * layer_full / job.tp
    else:
        buffers = 2 * 25.0 * MIB  # DDP / distributed-optimizer bucket buffers

    if phase == 0:
        allocated = weights
        max_allocated = weights
    elif phase == 1:
        # Adam states appear at the end of the first step, after activations are freed (torchtitan excerpt 70:
        # 33 GiB at step 1, 45 GiB by step 10).
        allocated = weights + grads + optimizer
        max_allocated = max(weights + grads + acts + logits + buffers, allocated)
    else:
        allocated = weights + grads + optimizer
        max_allocated = allocated + acts + logits + buffers
    # Caching allocator: reserved exceeds the peak by 2-5% (excerpt 08: 12,004 -> 12,232 MB), in 2 MiB pages.
    frag = 0.02 + 0.03 * rand.uniform(job.seed, "mem-frag", frag_key)
    reserved = math.ceil(max_allocated * (1.0 + frag) / (2 * MIB)) * 2 * MIB
    overhead = (CUDA_CONTEXT_GIB + WORKSPACE_GIB + NCCL_GROUP_GIB * _group_count(job)) * GIB
    if job.cluster.nvls and job.nproc_per_node > 1 and (job.dp_cp > 1 or job.tp > 1):
        overhead += NVLS_GIB * GIB
    if local0 and not job.device_first:
        overhead += STRAY_CONTEXT_GIB * (job.nproc_per_node - 1) * GIB
    return MemoryBreakdown(
        weights=weights,
        grads=grads if phase else 0.0,
        optimizer=optimizer if phase else 0.0,
        activations=acts,
        logits=logits,
        buffers=buffers,
        allocated=allocated,
        max_allocated=max_allocated,
        reserved=float(reserved),
        overhead=overhead,
        used=reserved + overhead,
        capacity=job.gpu.memory_mib * MIB,
    )


def _phase(job: JobSpec, step: int | None) -> int:
    if step is None:
        return 2
    if step <= 0:
        return 0
    return 1 if job.start_step == 0 and step == 1 else 2


def memory_breakdown(job: JobSpec, rank: int, step: int | None = None) -> MemoryBreakdown:
    """One rank's memory at `step` (None: steady state; 0: after loading; 1: first step of a fresh run)."""
    c = job.coords(rank)
    return _breakdown(job, c.pp_rank, _phase(job, step), c.local_rank == 0, rank)


def peak_memory(job: JobSpec) -> tuple[int, MemoryBreakdown]:
    """(pipeline stage, breakdown) of the fullest GPU in steady state, with local rank 0's extra contexts."""
    best: tuple[int, MemoryBreakdown] | None = None
    for stage in range(job.pp):
        mb = _breakdown(job, stage, 2, job.nproc_per_node > 1, -1)
        if best is None or mb.used > best[1].used:
            best = (stage, mb)
    assert best is not None
    return best


def check_fits(job: JobSpec) -> None:
    """Raise a one-line ValueError with the numbers when the job would not fit in GPU memory."""
    stage, mb = peak_memory(job)
    if mb.fits:
        return
    raise ValueError(
        f"{job.model.name} would not fit: {mb.used_gib:.1f} GiB per GPU needed on pipeline stage {stage} "
        f"(weights {mb.weights / GIB:.1f}, grads {mb.grads / GIB:.1f}, optimizer {mb.optimizer / GIB:.1f}, "
        f"activations {(mb.activations + mb.logits) / GIB:.1f}, CUDA/NCCL {mb.overhead / GIB:.1f} GiB) "
        f"but {job.gpu.display_name} has {mb.capacity_gib:.1f} GiB, with tp={job.tp} pp={job.pp} dp={job.dp} "
        f"zero={job.zero_stage} recompute={job.recompute} micro_batch={job.micro_batch}; "
        f"use more GPUs, more tensor/pipeline parallelism or a smaller micro batch"
    )


@dataclass(frozen=True)
class OomFigures:
    """The numbers of torch's "CUDA out of memory" message on the rank that fails, in bytes."""

    tried_to_allocate: float
    capacity: float  # "GPU 0 has a total capacity of"
    free: float  # "of which ... is free"
    in_use: float  # "this process has ... memory in use" (PyTorch's reserved + CUDA context and NCCL)
    allocated: float  # "Of the allocated memory ... is allocated by PyTorch"
    reserved_unallocated: float  # "and ... is reserved by PyTorch but unallocated"


def oom_figures(job: JobSpec) -> OomFigures:
    """What the fullest rank's failing allocation looks like: the device nearly full, one tensor too many."""
    stage, mb = peak_memory(job)
    capacity = mb.capacity
    # The allocator has grabbed all but a sliver (0.2-1.5% of the device) before the request that fails.
    free = capacity * (0.002 + 0.013 * rand.uniform(job.seed, "oom-free", stage))
    in_use = capacity - free
    pytorch = max(in_use - mb.overhead, 0.0)
    reserved_unallocated = pytorch * (0.01 + 0.03 * rand.uniform(job.seed, "oom-frag", stage))
    allocated = pytorch - reserved_unallocated
    # The request that fails: the largest single tensor of the step (logits, a layer's saved activations, an
    # FSDP gathered layer), at least what the step still lacks past the free sliver, in 2 MiB pages.
    largest = max(mb.logits, layer_activation_bytes(job), mb.buffers / 2.0, 2 * MIB)
    need = mb.used - in_use + free
    tried = math.ceil(max(largest, min(need, largest * 4.0), free + 2 * MIB) / (2 * MIB)) * 2 * MIB
    return OomFigures(float(tried), capacity, free, in_use, allocated, reserved_unallocated)


def feasibility(job: JobSpec) -> tuple[bool, str]:
    """(fits, one line): the fullest GPU's memory against its capacity, with the breakdown."""
    stage, mb = peak_memory(job)
    verdict = "fits" if mb.fits else "does not fit"
    return mb.fits, (
        f"{job.model.name} {verdict}: {mb.used_gib:.1f} GiB per GPU needed on pipeline stage {stage} of "
        f"{mb.capacity_gib:.1f} GiB on {job.gpu.display_name} (weights {mb.weights / GIB:.1f}, grads "
        f"{mb.grads / GIB:.1f}, optimizer {mb.optimizer / GIB:.1f}, activations "
        f"{(mb.activations + mb.logits) / GIB:.1f}, buffers {mb.buffers / GIB:.1f}, CUDA/NCCL "
        f"{mb.overhead / GIB:.1f} GiB) with tp={job.tp} pp={job.pp} dp={job.dp} {job.sharding} "
        f"recompute={job.recompute} micro_batch={job.micro_batch}"
    )
