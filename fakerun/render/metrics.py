"""The records of the --fake-metrics JSON-lines file: one run header, then steps, evaluations, checkpoints."""

from __future__ import annotations

import math
from typing import Any

from fakerun.sim import loss
from fakerun.sim.job import JobSpec
from fakerun.sim.step import StepNumbers


def _num(value: float, digits: int = 6) -> float | None:
    """A JSON-safe number: NaN (a skipped step's loss) becomes null, as dashboards expect."""
    return None if math.isnan(value) or math.isinf(value) else round(value, digits)


def run_record(job: JobSpec, *, run_id: str, attempt: int, first_step: int, last_step: int) -> dict[str, Any]:
    """`{"event": "run"}`: what the job is, so every later figure can be checked against it."""
    law = loss.law(job)
    return {
        "event": "run",
        "run_id": run_id,
        "attempt": attempt,
        "model": job.model.name,
        "params": job.model.params,
        "active_params": job.model.active_params,
        "n_gpus": job.world_size,
        "nnodes": job.nnodes,
        "nproc_per_node": job.nproc_per_node,
        "gpu": job.gpu.name,
        "peak_tflops": job.gpu.peak_bf16_tflops,
        "gpu_memory_gib": round(job.gpu.memory_mib / 1024, 2),
        "tp": job.tp,
        "pp": job.pp,
        "dp": job.dp,
        "sharding": job.sharding,
        "seq_len": job.seq_len,
        "micro_batch": job.micro_batch,
        "grad_accum": job.grad_accum,
        "global_batch": job.global_batch,
        "global_batch_tokens": job.tokens_per_step,
        "vocab_size": job.model.vocab,
        "lr": job.lr,
        "min_lr": job.min_lr,
        "warmup_steps": job.warmup_steps,
        "total_steps": job.total_steps,
        "first_step": first_step,
        "last_step": last_step,
        "seed": job.seed,
        "law": {"name": job.law, "E": law.E, "A": law.A, "B": law.B, "alpha": law.alpha, "beta": law.beta},
    }


def step_record(n: StepNumbers, *, allreduce_ms: float, mem_gib: float, time: float) -> dict[str, Any]:
    """`{"event": "step"}`: the figures of one optimizer step as the whole job saw it."""
    return {
        "event": "step",
        "step": n.step,
        "tokens": n.tokens,
        "samples": n.samples,
        "loss": _num(n.loss),
        "ppl": _num(n.ppl, 4),
        "lr": n.lr,
        "grad_norm": _num(n.grad_norm),
        "skipped": n.skipped,
        "step_time_s": round(n.step_time_s, 6),
        "tokens_per_s": round(n.tokens_per_s, 1),
        "tflops_per_gpu": round(n.tflops_per_gpu, 3),
        "mfu": round(n.mfu, 6),
        "allreduce_ms": round(allreduce_ms, 3),
        "mem_gib": round(mem_gib, 3),
        "straggler_rank": n.straggler_rank,
        "time": round(time, 3),
    }


def eval_record(job: JobSpec, step: int, *, seconds: float, time: float) -> dict[str, Any]:
    """`{"event": "eval"}`: the validation loss after `step`."""
    value = loss.eval_loss(job, step)
    return {
        "event": "eval",
        "step": step,
        "tokens": step * job.tokens_per_step,
        "val_loss": _num(value),
        "val_ppl": _num(loss.perplexity(value), 4),
        "seconds": round(seconds, 3),
        "time": round(time, 3),
    }


def checkpoint_record(step: int, *, path: str, nbytes: int, seconds: float, time: float) -> dict[str, Any]:
    """`{"event": "checkpoint"}`: a save after `step`."""
    return {
        "event": "checkpoint",
        "step": step,
        "path": path,
        "bytes": nbytes,
        "seconds": round(seconds, 3),
        "time": round(time, 3),
    }
