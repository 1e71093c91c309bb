"""Megatron-LM: its iteration line from the last rank, per-rank memory reports, the validation block."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import ClassVar

from fakerun.dialects.base import HintRule, Line, Output, seconds_time, words
from fakerun.dialects.events import EvalDone, Event, MemoryReport, StepDone
from fakerun.dialects.fakerun import FakerunDialect

_MIB = 1024.0**2

# Options only Megatron-LM spells so (its argparse takes dashes only).
HINTS = HintRule(
    script=re.compile(r"megatron|pretrain_(gpt|bert|t5|mamba|retro|ict|vlm|vision)"),
    exact=words(
        "num-layers hidden-size ffn-hidden-size num-attention-heads num-query-groups group-query-attention "
        "max-position-embeddings seq-length micro-batch-size global-batch-size min-lr lr-warmup-iters "
        "lr-warmup-fraction lr-warmup-samples lr-decay-style lr-decay-iters train-iters train-samples "
        "tensor-model-parallel-size pipeline-model-parallel-size expert-model-parallel-size num-experts "
        "moe-router-topk recompute-granularity recompute-activations recompute-method "
        "use-distributed-optimizer data-path tokenizer-type tokenizer-model vocab-file merge-file "
        "save-interval eval-interval eval-iters log-interval distributed-backend sequence-parallel "
        "use-flash-attn use-mcore-models normalization position-embedding-type disable-bias-linear "
        "untie-embeddings-and-output-weights clip-grad adam-beta1 adam-beta2 init-method-std "
        "attention-dropout hidden-dropout transformer-impl"
    ),
    arch_defaults=True,
)


def _e(value: float) -> str:
    """Megatron's E notation (`9.763827E+00`); nan as Python prints it."""
    return "nan" if math.isnan(value) else f"{value:E}"


def iteration_line(
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


def memory_line(
    rank: int, iterations: int, allocated_mb: float, max_allocated_mb: float, reserved_mb: float
) -> str:
    """Megatron's per-rank memory report after the first iterations (bytes / 2**20, printed unrounded)."""
    return (
        f"[Rank {rank}] (after {iterations} iterations) memory (MB) | allocated: {allocated_mb!r} | "
        f"max allocated: {max_allocated_mb!r} | reserved: {reserved_mb!r} | max reserved: {reserved_mb!r}"
    )


def validation_block(step: int, loss: float, ppl: float) -> list[str]:
    """Megatron's validation block: a dashed rule, the loss and perplexity line, the rule again."""
    body = (
        f" validation loss at iteration {step} on validation set | lm loss value: {_e(loss)} | "
        f"lm loss PPL: {_e(ppl)} | "
    )
    rule = "-" * (len(body) + 1)
    return [rule, body, rule]


class MegatronDialect(FakerunDialect):
    """Megatron-LM's lines; the rest of the run still in fakerun's events (until this dialect has its own)."""

    name: ClassVar[str] = "megatron"
    hints: ClassVar[HintRule] = HINTS
    grid: ClassVar[bool] = False  # the grid is fakerun's own: --fake-grid shows it

    @property
    def last_rank(self) -> bool:
        """Megatron logs on the last rank: the last pipeline stage holds the loss."""
        return self.seat.rank == self.seat.world_size - 1

    def wants(self, kind: type[Event]) -> bool:
        """Iteration lines and validation on the last rank, memory on every rank, rank 0's bar."""
        if kind in (StepDone, EvalDone):
            return self.last_rank or (kind is StepDone and self.seat.rank == 0)
        return kind is MemoryReport or super().wants(kind)

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """Megatron's form of the step, memory and validation events; fakerun's for the others."""
        if isinstance(event, StepDone):
            out: list[Output] = [self.step_bar(event)] if self.seat.rank == 0 else []
            if event.logged and self.last_rank:
                out.append(Line(self.iteration(event, at)))
            return out
        if isinstance(event, MemoryReport):
            m = event
            return [
                Line(
                    memory_line(
                        self.seat.rank,
                        m.iterations,
                        m.allocated / _MIB,
                        m.max_allocated / _MIB,
                        m.reserved / _MIB,
                    )
                )
            ]
        if isinstance(event, EvalDone):
            if not self.last_rank:
                return ()
            return [Line(text) for text in validation_block(event.step, event.loss, event.ppl)]
        return super().render(event, at)

    def iteration(self, event: StepDone, at: float) -> str:
        """The iteration line of a log step: figures averaged over the log interval."""
        n = event.numbers
        job = event.run.job
        return iteration_line(
            timestamp=seconds_time(at),
            step=n.step,
            total=job.total_steps,
            samples=n.samples,
            step_ms=1000.0 * event.interval_s,
            tflops=n.tflops_per_gpu,
            lr=n.lr,
            global_batch=job.global_batch,
            loss=n.loss,
            grad_norm=n.grad_norm,
            skipped=int(n.skipped),
            nan_iters=int(n.skipped),
            aux_loss=n.moe_aux_loss,
        )
