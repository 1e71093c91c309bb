"""Architectures for a parameter budget (model families) and the simulated job that trains one (design)."""

from __future__ import annotations

import dataclasses
import math
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from fakerun import presets
from fakerun.limits import MAX_NNODES
from fakerun.presets import ClusterSpec, GpuSpec, ModelSpec
from fakerun.sim import checkpoint, compute, memory
from fakerun.sim.job import JobSpec, make_job

__all__ = [
    "DEFAULT_DAYS",
    "FAMILIES",
    "DecoderFamily",
    "Design",
    "Family",
    "batch_tokens",
    "design",
    "flops_per_token",
    "get_family",
    "launch_command",
    "peak_lr",
    "register_family",
    "sbatch_script",
]

# An emitted architecture's exact parameter count is within this share of the target (issue 13).
TOLERANCE = 0.02
# Megatron's --make-vocab-size-divisible-by default: vocabularies are padded to a multiple of it (GPT-2's
# 50257 -> 50304, as nanoGPT and Megatron train it); Llama 3's 128256 already is one.
VOCAB_MULTIPLE = 128
# Width over depth the families aim for: Llama 3 8B 4096/32 = 128, 405B 16384/126 = 130, 3.2 1B 2048/16 = 128
# (Kaplan et al. 2020, fig. 5: the loss is flat within a few percent for d/L from ~20 to ~200).
ASPECT = 128.0
# DeepSeek LLM (DeepSeek-AI 2024, arXiv 2401.02954, sec. 3.1, eq. 1): near-optimal batch size in tokens and
# peak learning rate as power laws of the compute budget C = M * D (M: non-embedding FLOPs per token).
BATCH_COEFF, BATCH_EXP = 0.2920, 0.3271
LR_COEFF, LR_EXP = 0.3118, -0.1250
BATCH_LR_SOURCE = (
    "DeepSeek LLM (DeepSeek-AI 2024, arXiv:2401.02954), eq. 1: B = 0.2920 C^0.3271, lr = 0.3118 C^-0.125"
)
# DeepSeek LLM's 2000 warm-up steps (sec. 2.3), at most a tenth of a short run.
WARMUP_STEPS = 2000
# Cosine decay to a tenth of the peak (Hoffmann et al. 2022, sec. 3 and appendix B; Llama 3's schedule).
MIN_LR_RATIO = 0.1
# With gpus=None: the fewest power-of-two GPUs (whole nodes beyond one) finishing within this many days.
DEFAULT_DAYS = 30.0
# Assumption: a node draws this many times its GPUs' power (CPUs, memory, NICs, NVSwitches, fans):
# NVIDIA's DGX H100 datasheet gives 10.2 kW max for a system of 8 x 700 W GPUs (1.82). GPUs are taken at
# their TDP, where training holds them. Facility overhead (PUE) is not included.
NODE_OVERHEAD = 10.2 / (8 * 0.7)
FRAMEWORKS = ("megatron", "torchtitan")
_TP = (1, 2, 4, 8)
_MICRO_BATCHES = (1, 2, 4, 8)
_RECOMPUTE = ("none", "selective", "full")


# ----------------------------------------------------------------------------------------------------
# Families


class Family(Protocol):
    """A model family: an architecture with an exact parameter count for any size."""

    def architecture(self, target_params: float, *, seq_len: int, vocab: int) -> ModelSpec:
        """The family's model of about `target_params` parameters (ModelSpec.params within 2%)."""
        ...


def _llama_ffn(hidden: int) -> int:
    """Llama's SwiGLU width: int(1.3 * int(8d/3)) up to a multiple of 256, 1024 from d=4096 and 4096 from
    d=8192 (Meta's ffn_dim_multiplier 1.3 and multiple_of: 8B 14336, 70B 28672)."""
    multiple = 256 if hidden < 4096 else 1024 if hidden < 8192 else 4096
    return -(-int(1.3 * int(8 * hidden / 3)) // multiple) * multiple


def _widths() -> Iterator[int]:
    """The width ladder: multiples of 64 below 1024 (head_dim 64), of 128 to 2048 (head_dim 128), then of
    1024 (multiples of 8 heads for 8 KV heads, as Llama 3's 3072, 4096, 8192 and 16384)."""
    yield from range(64, 1024, 64)
    yield from range(1024, 2048, 128)
    yield from range(2048, 65536 + 1, 1024)


@dataclass(frozen=True)
class DecoderFamily:
    """Llama-style decoders (RMSNorm, RoPE, SwiGLU, no biases, untied embeddings), dense or with Mixtral's
    experts; the target counts every parameter (a MoE model's total, its active count reported beside it)."""

    name: str
    experts: int = 1
    top_k: int = 1

    def _spec(self, hidden: int, layers: int, seq_len: int, vocab: int) -> ModelSpec:
        head_dim = 64 if hidden < 1024 else 128
        heads = hidden // head_dim
        # Grouped-query attention with 8 KV heads from 16 heads up (Llama 3 2.3B and larger), else MHA.
        kv = 8 if heads >= 16 else heads
        moe = self.experts > 1
        label = f"{self.name}-plan-{layers}x{hidden}"
        return ModelSpec(
            name=label,
            display_name=f"{self.name} {hidden}x{layers}" + (f" ({self.experts} experts)" if moe else ""),
            family=self.name,
            layers=layers,
            hidden=hidden,
            ffn_hidden=_llama_ffn(hidden),
            heads=heads,
            kv_heads=kv,
            vocab=vocab,
            seq_len=seq_len,
            max_position=seq_len,
            experts=self.experts,
            top_k=self.top_k if moe else 1,
        )

    def architecture(self, target_params: float, *, seq_len: int, vocab: int) -> ModelSpec:
        """The width closest to ASPECT times the depth among those whose depth hits the target within 2%."""
        if not (target_params > 0 and math.isfinite(target_params)):
            raise ValueError(f"target parameters must be a positive number, got {target_params}")
        if seq_len < 1 or vocab < 1:
            raise ValueError(f"need seq_len >= 1 and vocab >= 1, got {seq_len} and {vocab}")
        padded = -(-vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        best: tuple[float, ModelSpec] | None = None
        for hidden in _widths():
            one = self._spec(hidden, 1, seq_len, padded)
            per_layer = self._spec(hidden, 2, seq_len, padded).params - one.params
            base = one.params - per_layer  # embeddings, LM head and final norm
            if base >= target_params * (1.0 + TOLERANCE):
                break  # the embeddings alone overshoot, and they grow with the width
            layers = max(1, round((target_params - base) / per_layer))
            if abs(base + layers * per_layer - target_params) > TOLERANCE * target_params:
                continue
            score = abs(math.log(hidden / layers / ASPECT))
            if best is None or score < best[0]:
                best = (score, self._spec(hidden, layers, seq_len, padded))
        if best is None:
            raise ValueError(
                f"no {self.name} architecture has {target_params:.3g} parameters within {TOLERANCE:.0%} with "
                f"a vocabulary of {padded} (its embeddings take {2 * padded * 64:,} at the narrowest width)"
            )
        return best[1]


FAMILIES: dict[str, Family] = {
    "llama": DecoderFamily("llama"),
    "mixtral": DecoderFamily("mixtral", experts=8, top_k=2),
}


def register_family(name: str, family: Family) -> None:
    """Add (or replace) a family under `name`."""
    if not name or not name.strip():
        raise ValueError("a family needs a name")
    FAMILIES[name] = family


def get_family(name: str) -> Family:
    """A registered family by name; ValueError naming the choices."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r} (choose from: {', '.join(FAMILIES)})") from None


# ----------------------------------------------------------------------------------------------------
# Batch and learning rate


def flops_per_token(model: ModelSpec, seq_len: int) -> float:
    """DeepSeek LLM's M: non-embedding training FLOPs per token, attention included (6 N_non-emb + 12 l h s),
    with the active parameters of a MoE model."""
    non_embedding = model.active_params - model.embedding_params()
    return 6.0 * non_embedding + compute.attention_flops_per_token(model, seq_len)


def batch_tokens(compute_flops: float) -> float:
    """DeepSeek LLM's near-optimal batch size in tokens for a budget of M * D FLOPs."""
    return float(BATCH_COEFF * compute_flops**BATCH_EXP)


def peak_lr(compute_flops: float) -> float:
    """DeepSeek LLM's near-optimal peak learning rate for a budget of M * D FLOPs."""
    return float(LR_COEFF * compute_flops**LR_EXP)


# ----------------------------------------------------------------------------------------------------
# The design


@dataclass(frozen=True)
class Design:
    """A planned run: the simulated job (model, parallelism, batch, schedule) and what it costs."""

    job: JobSpec
    framework: str
    cluster: str  # as --fake-cluster takes it
    gpu: str | None  # --fake-gpu when the cluster's own GPU was replaced, else None
    tokens: float  # planned training tokens
    compute: float  # DeepSeek's C = M * D, FLOPs (the batch and lr fits' argument)
    model_flops: float  # 6 N D with active parameters, FLOPs (what MFU counts)
    batch_tokens_fit: float  # the fit's batch before rounding to the layout, tokens
    step_seconds: float  # the simulated job's typical step time (sim/compute.expected_step_time)
    mfu: float  # its 6N MFU (sim/compute.mfu_center)
    memory_gib: float  # the fullest GPU's memory in use, GiB
    days: float
    gpu_hours: float
    energy_kwh: float  # GPUs at TDP times NODE_OVERHEAD
    cost: float | None  # gpu_hours x price_per_gpu_hour, None without a price
    checkpoint_bytes: int  # a full checkpoint (bf16 weights, fp32 master and Adam states)
    checkpoint_save_seconds: float
    node_overhead: float = NODE_OVERHEAD
    sources: tuple[str, ...] = (BATCH_LR_SOURCE,)

    @property
    def model(self) -> ModelSpec:
        """The planned architecture."""
        return self.job.model

    @property
    def gpus(self) -> int:
        """GPUs of the job."""
        return self.job.world_size

    @property
    def nodes(self) -> int:
        """Nodes of the job."""
        return self.job.nnodes

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step."""
        return self.job.tokens_per_step

    @property
    def steps(self) -> int:
        """Optimizer steps of the run."""
        return self.job.total_steps


def _cluster(cluster: str | ClusterSpec, gpu: str | GpuSpec | None) -> tuple[ClusterSpec, str, str | None]:
    """(the cluster with its GPU, its --fake-cluster name, the --fake-gpu name or None)."""
    c = presets.load_cluster(cluster) if isinstance(cluster, str) else cluster
    name = cluster if isinstance(cluster, str) else c.name
    if gpu is None:
        return c, name, None
    g = presets.load_gpu(gpu) if isinstance(gpu, str) else gpu
    return presets.with_gpu(c, g), name, (gpu if isinstance(gpu, str) else g.name)


@dataclass(frozen=True)
class _Layout:
    """One point of the search: parallel sizes and memory knobs."""

    tp: int
    pp: int
    ep: int
    recompute: str
    micro_batch: int


def _layouts(model: ModelSpec, world: int, npn: int) -> Iterator[_Layout]:
    """The layouts Megatron's arguments can express on `world` GPUs: TP inside a node dividing the heads and
    KV heads, PP dividing the layers, EP dividing the experts and the data-parallel ranks."""
    for tp in _TP:
        if tp > npn or npn % tp or world % tp or model.heads % tp or model.kv_heads % tp:
            continue
        # Megatron wants the layers to divide evenly over the stages (no --decoder-first-pipeline-num-layers).
        pps = [p for p in range(1, model.layers + 1) if (world // tp) % p == 0 and model.layers % p == 0]
        for pp in pps:
            dp = world // (tp * pp)
            eps = [e for e in (1, 2, 4, 8) if model.experts % e == 0 and dp % e == 0] if model.is_moe else [1]
            for ep in eps:
                for rc in _RECOMPUTE:
                    for mbs in _MICRO_BATCHES:
                        yield _Layout(tp, pp, ep, rc, mbs)


def _zero_stage(framework: str) -> int:
    """The sharding the framework's launch sets: Megatron's distributed optimizer (ZeRO-1)."""
    if framework == "megatron":
        return 1
    raise ValueError(f"unknown framework {framework!r} (choose from: megatron)")


def _schedule(tokens: float, seq_len: int, gbs: int) -> tuple[int, int]:
    """(total steps, warm-up steps) of `tokens` in steps of `gbs` sequences."""
    total = max(1, math.ceil(tokens / (gbs * seq_len)))
    return total, min(WARMUP_STEPS, total // 10)


def _best_job(
    model: ModelSpec,
    tokens: float,
    cluster: ClusterSpec,
    storage: presets.StorageSpec,
    gpus: int,
    seq_len: int,
    framework: str,
    c_flops: float,
) -> JobSpec | None:
    """The fastest job by the simulator's typical step time among the layouts that fit, or None."""
    npn = min(gpus, cluster.gpus_per_node)
    if gpus % npn:
        raise ValueError(f"{gpus} GPUs are not a whole number of {cluster.gpus_per_node}-GPU nodes")
    nnodes = gpus // npn
    # Three significant digits: the launch command's --lr and --min-lr give back exactly these.
    lr = float(f"{peak_lr(c_flops):.3g}")
    min_lr = float(f"{lr * MIN_LR_RATIO:.3g}")
    want = batch_tokens(c_flops) / seq_len  # sequences
    best: tuple[tuple[float, int, int], JobSpec] | None = None
    zero = _zero_stage(framework)
    for lay in _layouts(model, gpus, npn):
        unit = gpus // (lay.tp * lay.pp) * lay.micro_batch
        gbs = max(1, round(want / unit)) * unit
        total, warmup = _schedule(tokens, seq_len, gbs)
        try:
            job = make_job(
                model,
                cluster,
                storage,
                nnodes=nnodes,
                nproc_per_node=npn,
                global_batch=gbs,
                seq_len=seq_len,
                lr=lr,
                min_lr=min_lr,
                warmup_steps=warmup,
                total_steps=total,
                zero_stage=zero,
                tp=lay.tp,
                pp=lay.pp,
                ep=lay.ep,
                recompute=lay.recompute,
                micro_batch=lay.micro_batch,
            )
        except ValueError:
            continue  # does not fit (memory.check_fits) or the layout does not tile the world
        seconds = compute.expected_step_time(job) * total
        # Ties (the utilisation band clamps): the simpler layout, less recompute.
        key = (seconds, job.tp * job.pp * job.ep, _RECOMPUTE.index(job.recompute))
        if best is None or key < best[0]:
            best = (key, job)
    return best[1] if best else None


def _gpu_counts(npn: int) -> Iterator[int]:
    """GPU counts tried when none is given: 1, 2, 4 ... a node, then powers of two of whole nodes."""
    n = 1
    while n < npn:
        yield n
        n *= 2
    nodes = 1
    while nodes <= MAX_NNODES:
        yield nodes * npn
        nodes *= 2


def design(
    model: ModelSpec,
    tokens: float,
    *,
    cluster: str | ClusterSpec,
    gpus: int | None,
    seq_len: int,
    gpu: str | GpuSpec | None = None,
    framework: str = "megatron",
    price_per_gpu_hour: float | None = None,
    max_days: float = DEFAULT_DAYS,
) -> Design:
    """The fastest layout that fits memory on `gpus` GPUs of `cluster` (None: the fewest power-of-two GPUs
    finishing within `max_days`), with the fitted batch and lr, its time, energy, cost and checkpoints."""
    if not (tokens > 0 and math.isfinite(tokens)):
        raise ValueError(f"tokens must be a positive number, got {tokens}")
    if gpus is not None and gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    if price_per_gpu_hour is not None and not price_per_gpu_hour >= 0:
        raise ValueError(f"price per GPU-hour must be >= 0, got {price_per_gpu_hour}")
    if not max_days > 0:
        raise ValueError(f"max_days must be positive, got {max_days}")
    _zero_stage(framework)
    spec, cluster_name, gpu_name = _cluster(cluster, gpu)
    storage = presets.load_storage(spec.storage)
    if model.seq_len != seq_len or model.max_position < seq_len:
        model = dataclasses.replace(model, seq_len=seq_len, max_position=max(model.max_position, seq_len))
    c_flops = flops_per_token(model, seq_len) * tokens
    counts = [gpus] if gpus is not None else list(_gpu_counts(spec.gpus_per_node))
    job: JobSpec | None = None
    for count in counts:
        job = _best_job(model, tokens, spec, storage, count, seq_len, framework, c_flops)
        if job is None:
            continue
        if gpus is not None or compute.expected_step_time(job) * job.total_steps <= max_days * 86_400.0:
            break
    if job is None:
        where = f"{gpus} GPUs" if gpus is not None else "any GPU count"
        raise ValueError(f"{model.name} fits in memory on no layout of {where} of {spec.name}")
    step = compute.expected_step_time(job)
    seconds = step * job.total_steps
    gpu_hours = job.world_size * seconds / 3600.0
    return Design(
        job=job,
        framework=framework,
        cluster=cluster_name,
        gpu=gpu_name,
        tokens=tokens,
        compute=c_flops,
        model_flops=compute.model_flops_per_token(model) * tokens,
        batch_tokens_fit=batch_tokens(c_flops),
        step_seconds=step,
        mfu=compute.mfu_center(job),
        memory_gib=memory.peak_memory(job)[1].used_gib,
        days=seconds / 86_400.0,
        gpu_hours=gpu_hours,
        energy_kwh=gpu_hours * spec.gpu.tdp_w / 1000.0 * NODE_OVERHEAD,
        cost=None if price_per_gpu_hour is None else gpu_hours * price_per_gpu_hour,
        checkpoint_bytes=checkpoint.checkpoint_bytes(model),
        checkpoint_save_seconds=checkpoint.usual_save_seconds(job),
    )


# ----------------------------------------------------------------------------------------------------
# Launching it


def _megatron_args(d: Design) -> list[str]:
    """pretrain_gpt.py's arguments building exactly the design's model and job (Megatron-LM core)."""
    job, m = d.job, d.job.model
    args = [
        *("--num-layers", str(m.layers), "--hidden-size", str(m.hidden)),
        *("--ffn-hidden-size", str(m.ffn_hidden), "--num-attention-heads", str(m.heads)),
    ]
    if m.kv_heads != m.heads:
        args += ["--group-query-attention", "--num-query-groups", str(m.kv_heads)]
    args += [
        *("--seq-length", str(job.seq_len), "--max-position-embeddings", str(m.max_position)),
        *("--position-embedding-type", "rope", "--normalization", "RMSNorm", "--swiglu"),
        *("--untie-embeddings-and-output-weights", "--disable-bias-linear"),
    ]
    if m.is_moe:
        args += [
            *("--num-experts", str(m.experts), "--moe-router-topk", str(m.top_k)),
            *("--moe-router-load-balancing-type", "aux_loss", "--moe-aux-loss-coeff", "1e-2"),
            *("--moe-grouped-gemm", "--expert-model-parallel-size", str(job.ep)),
        ]
    # _NullTokenizer adds its end-of-document id after the --vocab-size ids; Megatron then pads the table to
    # a multiple of --make-vocab-size-divisible-by x tp, which must leave the planned vocabulary as it is.
    args += ["--tokenizer-type", "NullTokenizer", "--vocab-size", str(m.vocab - 1)]
    if m.vocab % (128 * job.tp):
        args += ["--make-vocab-size-divisible-by", str(math.gcd(m.vocab // job.tp, 128))]
    args += [
        *("--micro-batch-size", str(job.micro_batch), "--global-batch-size", str(job.global_batch)),
        *("--train-iters", str(job.total_steps), "--lr", repr(job.lr), "--min-lr", repr(job.min_lr)),
        *("--lr-decay-style", "cosine", "--lr-warmup-iters", str(job.warmup_steps)),
        *("--tensor-model-parallel-size", str(job.tp), "--pipeline-model-parallel-size", str(job.pp)),
    ]
    if job.tp > 1:
        args.append("--sequence-parallel")  # what the memory model assumes with tp > 1 (and MoE needs)
    args += ["--use-distributed-optimizer", "--bf16"]
    if job.recompute == "selective":
        args.append("--recompute-activations")
    elif job.recompute == "full":
        args += [
            "--recompute-granularity",
            "full",
            "--recompute-method",
            "uniform",
            "--recompute-num-layers",
            "1",
        ]
    return [*args, "--log-interval", "10"]


def _script(d: Design, framework: str | None) -> list[str]:
    """The training script and its arguments for the design's framework."""
    fw = framework or d.framework
    if fw == "torchtitan":
        # torchtitan builds its models from its flavor tables only: no argument sets a width or a depth.
        raise ValueError(
            "torchtitan has no arguments for a planned architecture (its models come from fixed flavors); "
            "use framework='megatron'"
        )
    if fw != "megatron":
        raise ValueError(f"unknown framework {fw!r} (choose from: {', '.join(FRAMEWORKS)})")
    if d.framework != fw:
        raise ValueError(f"the design was made for {d.framework}, not {fw}")
    return ["pretrain_gpt.py", *_megatron_args(d)]


def _fake_options(d: Design) -> list[str]:
    """fakerun's own options naming the design's cluster (and GPU, when replaced)."""
    out = ["--fake-cluster", d.cluster]
    return out + (["--fake-gpu", d.gpu] if d.gpu else [])


def launch_command(design: Design, framework: str | None = None) -> list[str]:
    """The fakerun command line (argv) that runs the design's job on its cluster."""
    job = design.job
    return [
        "fakerun",
        *("--nnodes", str(job.nnodes), "--nproc-per-node", str(job.nproc_per_node)),
        *_fake_options(design),
        *_script(design, framework),
    ]


def _slurm_time(days: float, margin: float) -> str:
    """SLURM's days-hours:minutes:seconds for the run's time with a margin, whole minutes up."""
    minutes = max(1, math.ceil(days * margin * 24 * 60))
    return f"{minutes // 1440}-{minutes % 1440 // 60:02d}:{minutes % 60:02d}:00"


def sbatch_script(
    design: Design, *, job_name: str = "fakerun-plan", framework: str | None = None, time_margin: float = 1.1
) -> str:
    """A SLURM batch script running the design's job with srun: one fakerun agent per node, meeting over
    c10d at the first node (fakerun reads SLURM_JOB_ID, SLURM_NNODES and SLURM_NODEID as torchrun users set
    them)."""
    job = design.job
    script = " \\\n\t".join(shlex.quote(w) for w in _script(design, framework))
    fake = " ".join(shlex.quote(w) for w in _fake_options(design))
    return f"""#!/bin/bash
#SBATCH --job-name={job_name}
#SBATCH --nodes={job.nnodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={job.nproc_per_node}
#SBATCH --time={_slurm_time(design.days, time_margin)}
#SBATCH --output=%x-%j.out
#SBATCH --exclusive

# {design.model.display_name}: {design.model.params:,} parameters, {design.tokens:.3g} tokens, \
{design.days:.1f} days planned on {design.gpus} GPUs
set -euo pipefail

head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
head_node_ip=$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address)
MASTER_PORT=${{MASTER_PORT:-29500}}
export FAKERUN_SECRET=${{FAKERUN_SECRET:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \\n')}}

srun fakerun \\
\t--nnodes "$SLURM_NNODES" \\
\t--nproc-per-node {job.nproc_per_node} \\
\t--rdzv-id "$SLURM_JOB_ID" \\
\t--rdzv-backend c10d \\
\t--rdzv-endpoint "$head_node_ip:$MASTER_PORT" \\
\t{fake} \\
\t{script}
"""
