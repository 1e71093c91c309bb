"""Metric lines in the formats real trainers print: Megatron-LM, HF Trainer and torchtitan."""

from __future__ import annotations

import math


def _e(value: float) -> str:
    """Megatron's E notation (`9.763827E+00`); nan as Python prints it."""
    return "nan" if math.isnan(value) else f"{value:E}"


def megatron_iteration(
    *,
    timestamp: str,
    step: int,
    total: int,
    samples: int,
    step_ms: float,
    tflops: float,
    lr: float,
    global_batch: int,
    loss: float,
    grad_norm: float,
    skipped: int,
    nan_iters: int,
    aux_loss: float | None = None,
) -> str:
    """Megatron-core's training log line: leading space, `[time]`, fixed-width numbers, trailing `|`."""
    parts = [
        f" [{timestamp}] iteration {step:>8d}/{total:>8d}",
        f" consumed samples: {samples:>12d}",
        f" elapsed time per iteration (ms): {step_ms:.1f}",
        f" throughput per GPU (TFLOP/s/GPU): {tflops:.1f}",
        f" learning rate: {lr:E}",
        f" global batch size: {global_batch:>5d}",
        f" lm loss: {_e(loss)}",
    ]
    if aux_loss is not None:
        parts.append(f" load_balancing_loss: {_e(aux_loss)}")
    parts += [
        " loss scale: 1.0",
        f" grad norm: {grad_norm:.3f}" if not math.isnan(grad_norm) else " grad norm: nan",
        f" number of skipped iterations: {skipped:>3d}",
        f" number of nan iterations: {nan_iters:>3d}",
    ]
    return " |".join(parts) + " |"


def megatron_memory(
    rank: int, iterations: int, allocated_mb: float, max_allocated_mb: float, reserved_mb: float
) -> str:
    """Megatron's per-rank memory report after the first iterations (bytes / 2**20, printed unrounded)."""
    return (
        f"[Rank {rank}] (after {iterations} iterations) memory (MB) | allocated: {allocated_mb!r} | "
        f"max allocated: {max_allocated_mb!r} | reserved: {reserved_mb!r} | max reserved: {reserved_mb!r}"
    )


def megatron_validation(step: int, loss: float, ppl: float) -> list[str]:
    """Megatron's validation block: a dashed rule, the loss and perplexity line, the rule again."""
    body = (
        f" validation loss at iteration {step} on validation set | lm loss value: {_e(loss)} | "
        f"lm loss PPL: {_e(ppl)} | "
    )
    rule = "-" * (len(body) + 1)
    return [rule, body, rule]


def hf_log_dict(loss: float, grad_norm: float, lr: float, epoch: float) -> str:
    """HF Trainer's logging_steps line: a Python dict repr (loss rounded to 4, epoch to 2 decimals)."""
    record = {"loss": round(loss, 4), "grad_norm": grad_norm, "learning_rate": lr, "epoch": round(epoch, 2)}
    return repr(record)


def hf_eval_dict(loss: float, runtime_s: float, samples: int, steps: int, epoch: float) -> str:
    """HF Trainer's evaluation line."""
    record = {
        "eval_loss": loss,
        "eval_runtime": round(runtime_s, 4),
        "eval_samples_per_second": round(samples / runtime_s, 3),
        "eval_steps_per_second": round(steps / runtime_s, 3),
        "epoch": round(epoch, 2),
    }
    return repr(record)


def titan_step(
    *,
    timestamp: str,
    step: int,
    loss: float,
    grad_norm: float,
    memory_gib: float,
    memory_pct: float,
    tps: float,
    tflops: float,
    mfu_pct: float,
) -> str:
    """torchtitan's metrics line (every rank logs it; tps and tflops differ in the last digits)."""
    return (
        f"[titan] {timestamp} - root - INFO - step: {step:2d}  loss: {loss:8.5f}  "
        f"grad_norm: {grad_norm:7.4f}  memory: {memory_gib:5.2f}GiB({memory_pct:.2f}%)  "
        f"tps: {round(tps):,}  tflops: {tflops:.2f}  mfu: {mfu_pct:.2f}%"
    )
