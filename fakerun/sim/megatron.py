"""Figures only Megatron computes and prints: padded vocabulary, theoretical memory, per-phase timers."""

from __future__ import annotations

from dataclasses import dataclass

from fakerun.sim import rand
from fakerun.sim.job import JobSpec
from fakerun.sim.step import StepNumbers

MAKE_VOCAB_SIZE_DIVISIBLE_BY = 128  # --make-vocab-size-divisible-by's default
_MB = 1024.0 * 1024.0


def padded_vocab(vocab: int, tp: int, divisible_by: int = MAKE_VOCAB_SIZE_DIVISIBLE_BY) -> int:
    """Megatron's vocab_size_with_padding: the vocabulary rounded up to a multiple of divisible_by * tp."""
    multiple = divisible_by * tp
    return -(-vocab // multiple) * multiple


@dataclass(frozen=True)
class Theory:
    """report_theoretical_memory's figures (megatron/training/theoretical_memory_usage.py, core v0.15)."""

    transformer: float  # parameters in the transformer block
    embedding: float  # parameters in the embedding layers (twice the table when untied)
    total: float
    most_loaded_shard: float  # parameters on the most loaded model-parallel rank
    weight_and_optimizer_mb: float


def theory(job: JobSpec) -> Theory:
    """The parameter counts and weight + optimizer memory Megatron's formula gives for this job."""
    m = job.model
    embedding_size = padded_vocab(m.vocab, job.tp) * m.hidden
    embedding = embedding_size * (1 if m.tied_embeddings else 2)
    transformer = max(0.0, float(m.params) - m.vocab * m.hidden * (1 if m.tied_embeddings else 2))
    total = transformer + embedding
    shard = transformer / job.pp + embedding_size
    if not m.tied_embeddings and job.pp == 1:
        shard += embedding_size
    shard /= job.tp
    # 18 bytes per parameter (fp16/bf16 weight, fp32 grad, main weight, two Adam moments); the distributed
    # optimizer shards the 12 bytes of fp32 state over the data-parallel ranks.
    per_param = 18.0 if job.zero_stage == 0 else 6.0 + 12.0 / job.dp
    return Theory(transformer, float(embedding), total, shard, shard * per_param / _MB)


def step_timers_ms(job: JobSpec, n: StepNumbers) -> tuple[tuple[str, float], ...]:
    """Megatron's `time (ms)` timers of one iteration: the step's compute split into its phases."""
    compute_ms = 1000.0 * n.compute_s
    comm_ms = 1000.0 * n.exposed_comm_s

    def jitter(name: str, x: float) -> float:
        return x * (1.0 + 0.02 * rand.normal(job.seed, "megatron-timer-" + name, n.rank, n.step))

    optimizer = jitter("optimizer", 0.015 * compute_ms)
    # Backward costs twice the forward, three times with full recompute (it runs the forward again).
    fwd_share = 0.25 if job.recompute == "full" else 1.0 / 3.0
    body = compute_ms - optimizer
    bubble = body * (job.pp - 1) / (job.grad_accum + job.pp - 1) if job.pp > 1 else 0.0
    work = body - bubble
    out: list[tuple[str, float]] = [("forward-compute", jitter("fwd", work * fwd_share))]
    if job.pp > 1:
        out += [
            ("forward-recv", jitter("frecv", 0.6 * bubble)),
            ("forward-send", jitter("fsend", 0.01 * work)),
        ]
    out.append(("backward-compute", jitter("bwd", work * (1.0 - fwd_share))))
    if job.pp > 1:
        out += [
            ("backward-recv", jitter("brecv", 0.3 * bubble)),
            ("backward-send", jitter("bsend", 0.01 * work)),
            ("backward-send-forward-recv", jitter("bsfr", 0.1 * bubble)),
        ]
    out += [
        ("backward-params-all-reduce", jitter("ar", comm_ms)),
        ("backward-embedding-all-reduce", jitter("emb", 0.002 * compute_ms if job.pp > 1 else 0.02)),
        ("optimizer-copy-to-main-grad", jitter("c2m", 0.05 * optimizer)),
        ("optimizer-unscale-and-check-inf", jitter("unscale", 0.1 * optimizer)),
        ("optimizer-clip-main-grad", jitter("clip", 0.15 * optimizer)),
        ("optimizer-copy-main-to-model-params", jitter("m2m", 0.05 * optimizer)),
        ("optimizer", optimizer),
        ("batch-generator", jitter("batch", 0.002 * compute_ms)),
    ]
    return tuple(out)


def compile_seconds(job: JobSpec) -> tuple[float, float]:
    """Rank 0's dataset-helper build (already built: `make` finds nothing to do) and fused-kernel load."""
    helpers = 0.04 + 0.08 * rand.uniform(job.seed, "megatron-helpers")
    kernels = 0.002 + 0.004 * rand.uniform(job.seed, "megatron-kernels")
    return helpers, kernels


def setup_timers_ms(job: JobSpec, *, resume: bool) -> tuple[tuple[float, float], tuple[float, float]]:
    """(min, max) over the ranks of model-and-optimizer-setup and train/valid/test-data-iterators-setup."""
    from fakerun.sim.run import startup_times  # run imports checkpoint, which needs nothing of this module

    ranks = range(min(job.world_size, 64))  # enough ranks for the spread; every rank computes the same
    times = [startup_times(job, r, resume=resume) for r in ranks]
    model = [1000.0 * (t.model_init_s + t.load_s) for t in times]
    data = [1000.0 * t.dataset_s for t in times]
    return (min(model), max(model)), (min(data), max(data))
