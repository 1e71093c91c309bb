"""FLOPs, utilisation (30-55% with attention counted, slowly drifting), MFU, stragglers, step time."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fakerun.sim import rand
from fakerun.sim.collectives import COMM_JITTER, comm_plan

if TYPE_CHECKING:
    from fakerun.presets import ModelSpec
    from fakerun.sim.job import JobSpec, SlowNode

# The GPUs' utilisation (model FLOPs with attention counted, over the dense peak) always stays in this band
# (PRODUCT.md 6). Real runs: 38-43% Llama 3 405B on H100, ~48% BLOOM on A100, 52-58% torchtitan on A100, "up
# to 47%" Megatron-Core on H100 (PHYSICS.md 2); > ~80% would look fake. The 6N MFU is this times the 6N
# share of the work (attention_discount): the same band for long-sequence small models would make Megatron,
# which counts attention, print more TFLOP/s than the GPU can do (1.3B at seq 8192 on H100: ~580).
MFU_MIN = 0.30
MFU_MAX = 0.55
CENTER_MIN = 0.33
CENTER_MAX = 0.50
# FSDP's share of the DDP figure (see mfu_center).
FSDP_EFFICIENCY = 0.8
FSDP_CENTER_MIN = 0.31
# Exposed communication never takes more than this share of the fastest possible step.
MAX_EXPOSED_SHARE = 0.35
# Spread of compute time between ranks on a normal step (kernels, dataloader, clocks).
RANK_JITTER = 0.025
# Share of a bf16 step's compute time in the GEMMs FP8 can take (attention's softmax, norms, activations,
# optimizer and the casts stay as they are): at twice the rate, H100's FP8 Llama runs go ~1.4x faster
# end to end, NVIDIA's reported 1.3-1.5x for Transformer Engine FP8 training.
FP8_GEMM_SHARE = 0.6
# Straggler episodes (a slow or throttling GPU for a few to ~20 steps) and one-step hiccups (GC, dataloader).
EPISODE_BLOCK = 500
EPISODE_PROB = 0.3
HICCUP_PROB = 0.004


def model_flops_per_token(model: ModelSpec) -> float:
    """Training FLOPs per token by the 6N rule (2N forward + 4N backward); active parameters for MoE."""
    return 6.0 * model.active_params


def attention_flops_per_token(model: ModelSpec, seq_len: int) -> float:
    """The attention term Megatron adds to 6N: 12 * layers * hidden * seq (Narayanan et al. 2021 [mem]), with
    the attention's width (heads x head_dim: Megatron's kv_channels ratio, torchtitan's formula) as hidden."""
    return 12.0 * model.attention_layers * model.heads * model.head_dim * seq_len


@functools.lru_cache(maxsize=256)
def attention_discount(job: JobSpec) -> float:
    """The 6N share of the work a step does: 6N / (6N + attention), the MFU of a unit utilisation."""
    per_token = model_flops_per_token(job.model)
    return per_token / (per_token + attention_flops_per_token(job.model, job.seq_len))


def megatron_flops_per_step(job: JobSpec) -> float:
    """FLOPs of one iteration as Megatron-LM counts them for its "throughput per GPU (TFLOP/s/GPU)".

    megatron/training/training.py num_floating_point_operations (Narayanan et al. 2021 appendix; read in a
    copy of the core_r0.9-era function): 12 * B * s * l * h^2 * (attention (1 + kv/heads + s/h) * q/h
    + MLP f/h * top_k * 3/2 for SwiGLU + logits V / (2 l h)). B is the global batch in sequences.
    """
    m = job.model
    if m.hybrid:
        return _megatron_hybrid_flops(job)
    b, s, n_layers, h = job.global_batch, job.seq_len, m.layers, m.hidden
    q_ratio = m.heads * m.head_dim / h
    attention = (1.0 + m.kv_heads / m.heads + s / h) * q_ratio
    gated = 1.5 if m.mlp == "swiglu" else 1.0
    mlp = m.ffn_hidden / h * (m.top_k if m.is_moe else 1) * gated
    logits = m.vocab / (2.0 * n_layers * h)
    return 12.0 * b * s * n_layers * h * h * (attention + mlp + logits)


def _megatron_hybrid_flops(job: JobSpec) -> float:
    """num_floating_point_operations' hybrid_flops (core v0.15) for a Mamba hybrid stack: 3 x forward of
    its attention, MLP and Mamba layers and the logits."""
    m = job.model
    b, s, h = job.global_batch, job.seq_len, m.hidden
    p = m.head_dim * m.heads / h
    attn = 4 * b * s * h * p * (h + h * (m.kv_heads / m.heads) + s / 2)
    mlp = 4 * (m.ffn_hidden / h) * (1.5 if m.mlp == "swiglu" else 1.0) * b * s * h**2
    inner = 2 * h
    heads = inner // m.mamba_head_dim
    mamba = (
        2 * b * s * h * (2 * inner + 2 * m.mamba_groups * m.mamba_state + heads)
        + 7 * b * s * inner * m.mamba_state
        + 2 * b * s * inner * h
    )
    counts = {symbol: m.hybrid.count(symbol) for symbol in "*-M"}
    forward = counts["*"] * attn + counts["-"] * mlp + counts["M"] * mamba + 2 * b * s * h * m.vocab
    return 3.0 * forward


def torchtitan_flops_per_token(model: ModelSpec, seq_len: int) -> float:
    """torchtitan's get_dense_model_nparams_and_flops: 6 * (N - embedding) + 12 * l * heads * head_dim * s.

    The embedding table does no matmul; attention is counted without causal sparsity. Checked on excerpt 70
    (Llama 3 8B, seq 8192): 57.9 GFLOP/token * 5,615 tokens/s = 325 TFLOP/s, the printed 325.20.
    """
    n = (model.active_params if model.is_moe else model.params) - model.vocab * model.hidden
    return 6.0 * n + 12.0 * model.layers * model.heads * model.head_dim * seq_len


FRAMEWORKS = ("6n", "megatron", "torchtitan")


def framework_flops_per_step(job: JobSpec, framework: str = "6n") -> float:
    """FLOPs of one optimizer step as `framework` counts them for its TFLOP/s and MFU figures."""
    if framework == "megatron":
        return megatron_flops_per_step(job)
    if framework == "torchtitan":
        return torchtitan_flops_per_token(job.model, job.seq_len) * job.tokens_per_step
    if framework == "6n":
        return flops_per_step(job)
    raise ValueError(f"unknown FLOPs formula {framework!r} (choose from: {', '.join(FRAMEWORKS)})")


def framework_tflops_per_gpu(job: JobSpec, seconds: float, framework: str = "6n") -> float:
    """TFLOP/s per GPU a framework prints for a step of `seconds` (its FLOPs / GPUs / the step time).

    The step-time identity holds for every formula: tflops * 1e12 * GPUs * seconds = the framework's FLOPs.
    Pass the step's wall time as the worker measured it, warm-up included on iteration 1 (step.retimed).
    """
    return framework_flops_per_step(job, framework) / (job.world_size * seconds) / 1e12


def framework_mfu(job: JobSpec, seconds: float, framework: str = "6n") -> float:
    """MFU as a framework prints it: its TFLOP/s over the GPU's dense bf16 peak (torchtitan's mfu column)."""
    return framework_tflops_per_gpu(job, seconds, framework) * 1e12 / job.gpu.peak_flops


def flops_per_step(job: JobSpec) -> float:
    """Model FLOPs of one optimizer step: 6 * N * tokens_per_step (MFU is defined on this, not on HFU)."""
    return model_flops_per_token(job.model) * job.tokens_per_step


def compute_peak(job: JobSpec) -> float:
    """FLOP/s one GPU's utilisation is counted against: the dense bf16 peak, raised for FP8 GEMMs by their
    share of the time on a GPU with an FP8 rate (Amdahl: the rest runs as in bf16)."""
    peak = job.gpu.peak_flops
    if not job.fp8 or job.gpu.peak_fp8_tflops <= job.gpu.peak_bf16_tflops:
        return peak
    ratio = job.gpu.peak_bf16_tflops / job.gpu.peak_fp8_tflops
    return peak / (1.0 - FP8_GEMM_SHARE + FP8_GEMM_SHARE * ratio)


def step_time_for_mfu(job: JobSpec, mfu: float) -> float:
    """step time = 6 * N * tokens_per_step / (GPUs * MFU * peak)."""
    return flops_per_step(job) / (job.world_size * mfu * compute_peak(job))


def mfu_for_step_time(job: JobSpec, seconds: float) -> float:
    """The MFU a step time implies."""
    return flops_per_step(job) / (job.world_size * seconds * compute_peak(job))


def tflops_per_gpu(job: JobSpec, seconds: float) -> float:
    """Achieved model TFLOP/s per GPU for a step time (what Megatron prints as throughput per GPU)."""
    return flops_per_step(job) / (job.world_size * seconds) / 1e12


@functools.lru_cache(maxsize=256)
def utilisation_center(job: JobSpec) -> float:
    """The job's typical utilisation (attention counted): the GPU's usual figure less bubble, exposed comms,
    MoE and thin GEMMs."""
    mfu = job.gpu.mfu_typical
    if job.pp > 1:
        # 1F1B bubble: (p - 1) / (m + p - 1) of the step idles (Narayanan et al. 2021).
        mfu *= 1.0 - 0.5 * (job.pp - 1) / (job.grad_accum + job.pp - 1)
    if job.model.is_moe:
        mfu *= 0.85  # routing, load imbalance, grouped GEMMs (excerpt 26: Mixtral at ~24% on H100)
    width = job.model.hidden / job.tp
    mfu *= min(1.0, 0.8 + 0.2 * width / 1024.0)  # thin GEMMs do not saturate the tensor cores
    if job.zero_stage == 3 and job.dp_cp > 1:
        # FSDP / ZeRO-3 gathers every layer's weights twice a step and reduce-scatters its grads, and the
        # prefetch does not hide all of it: torchtitan's own Llama 3 8B logs on H100 show ~33% MFU (excerpt
        # 70, 325 of 989 TFLOP/s with attention counted) where TP/PP-free DDP/ZeRO-1 runs reach 40-47%
        # (PHYSICS.md 2). Applied before the clamp, so FSDP sits near the band's low end.
        mfu *= FSDP_EFFICIENCY
    if job.recompute == "full":
        mfu *= 0.85  # the forward runs twice: hardware does up to 8N of work per token for 6N of credit
    # The typical figures already include a usual bubble and usual exposed communication: count half of ours.
    plan = comm_plan(job)
    t0 = step_time_for_mfu(job, mfu * attention_discount(job))
    mfu *= 1.0 - 0.5 * plan.exposed_s / (t0 + plan.exposed_s)
    # FSDP may sit lower in the band than the usual floor (excerpt 70: 33% with attention counted).
    floor = FSDP_CENTER_MIN if job.zero_stage == 3 and job.dp_cp > 1 else CENTER_MIN
    return min(CENTER_MAX, max(floor, mfu))


def mfu_center(job: JobSpec) -> float:
    """The job's typical 6N MFU: its typical utilisation less the attention share of the work."""
    return utilisation_center(job) * attention_discount(job)


def base_mfu(job: JobSpec, step: int) -> float:
    """6N MFU of `step` before stragglers: the utilisation centre + slow seeded drift (O(1) at any step) + a
    little noise, kept in the band, times the 6N share of the work."""
    drift = 0.025 * rand.value_noise(job.seed, "mfu-slow", step / 150.0)
    drift += 0.012 * rand.value_noise(job.seed, "mfu-mid", step / 23.0)
    noise = 0.004 * rand.normal(job.seed, "mfu-noise", step)
    utilisation = min(MFU_MAX, max(MFU_MIN, utilisation_center(job) + drift + noise))
    return utilisation * attention_discount(job)


@dataclass(frozen=True)
class Straggler:
    """A rank slowing the whole step: `slowdown` times its usual compute time."""

    rank: int
    slowdown: float
    cause: str  # "thermal" (an episode of several steps) | "hiccup" (one step)


def straggler(job: JobSpec, step: int) -> Straggler | None:
    """The straggler of `step`, if any: rare and deterministic per (seed, step), the same on every rank."""
    block = step // EPISODE_BLOCK
    if rand.uniform(job.seed, "strag-episode", block) < EPISODE_PROB:
        length = 3 + int(20 * rand.uniform(job.seed, "strag-len", block))
        start = block * EPISODE_BLOCK + int(
            (EPISODE_BLOCK - length) * rand.uniform(job.seed, "strag-start", block)
        )
        if start <= step < start + length:
            rank = rand.hash64(job.seed, "strag-rank", block) % job.world_size
            return Straggler(rank, 1.06 + 0.14 * rand.uniform(job.seed, "strag-slow", block), "thermal")
    if rand.uniform(job.seed, "hiccup", step) < HICCUP_PROB:
        rank = rand.hash64(job.seed, "hiccup-rank", step) % job.world_size
        return Straggler(rank, 1.05 + 0.3 * rand.uniform(job.seed, "hiccup-slow", step), "hiccup")
    return None


def reported_mfu(job: JobSpec, step: int) -> tuple[float, float, Straggler | None]:
    """(reported MFU, MFU without the straggler, straggler) of `step`; its utilisation stays >= MFU_MIN."""
    base = base_mfu(job, step)
    s = straggler(job, step)
    if s is None:
        return base, base, None
    return max(MFU_MIN * attention_discount(job), base / s.slowdown), base, s


@functools.lru_cache(maxsize=256)
def exposed_fraction(job: JobSpec) -> float:
    """Share of the collective time that lengthens the step (the rest hides behind compute)."""
    plan = comm_plan(job)
    if plan.total_s <= 0:
        return 0.0
    t_min = step_time_for_mfu(job, MFU_MAX * attention_discount(job))
    cap = MAX_EXPOSED_SHARE * t_min / (plan.total_s * (1.0 + 3 * COMM_JITTER))
    return min(plan.exposed_fraction, cap)


# A slowed node's GPUs do not slow alike (each board throttles at its own point): each is this much off the
# node's factor, fixed for the episode, more than RANK_JITTER so that the same GPU stays the slowest.
SLOW_SPREAD = 0.06


def slow_node(job: JobSpec, node: int, step: int) -> SlowNode | None:
    """The slow-node episode `node` is in at `step`, if any (the strongest, should several overlap)."""
    active = [s for s in job.slow_nodes if s.node == node and s.start <= step <= s.end]
    return max(active, key=lambda s: s.factor, default=None)


def slow_factor(job: JobSpec, rank: int, step: int) -> float:
    """How many times its usual compute time `rank` takes at `step`: 1, or its node's slowdown."""
    s = slow_node(job, rank // job.nproc_per_node, step)
    if s is None:
        return 1.0
    u = rand.uniform(job.seed, "slow-gpu", rank, s.start)
    return s.factor * (1.0 - SLOW_SPREAD * u)


def slowest_factor(job: JobSpec, step: int) -> float:
    """The largest slowdown of any rank at `step` (1 when no node is slow): what every rank waits for."""
    ranks = (
        r
        for s in job.slow_nodes
        if s.start <= step <= s.end
        for r in range(s.node * job.nproc_per_node, (s.node + 1) * job.nproc_per_node)
    )
    return max((slow_factor(job, r, step) for r in ranks), default=1.0)


def net_stall_s(job: JobSpec, step: int) -> float:
    """Seconds a recovered NIC outage added to `step`'s collectives (0 on most steps)."""
    return sum(s.seconds for s in job.net_stalls if s.step == step)


def gating_rank(job: JobSpec, step: int, s: Straggler | None) -> int:
    """The rank every other rank waits for at `step`: the straggler, else a seeded pick."""
    if s is not None:
        return s.rank
    return rand.hash64(job.seed, "gate", step) % job.world_size


def expected_step_time(job: JobSpec) -> float:
    """The typical step time (at the MFU centre): what a progress bar's ETA should extrapolate with."""
    return step_time_for_mfu(job, mfu_center(job))


def eta_seconds(job: JobSpec, step: int) -> float:
    """Seconds left after `step` at the typical step time."""
    return max(job.total_steps - step, 0) * expected_step_time(job)


def first_step_overhead_s(job: JobSpec) -> float:
    """Extra wall time of an attempt's first step: kernel autotuning, lazy NCCL set-up, allocator growth."""
    # Real first steps are slow (torchtitan excerpt 70: 86 tokens/s at step 1, 5,615 at step 10). This sits
    # outside the step-time identity: a worker adds it to its wall clock, it never lowers the reported MFU.
    return 2.0 + 0.05 * job.model.layers / job.pp + 3.0 * rand.uniform(job.seed, "first-step", job.start_step)
