"""Megatron-DeepSpeed (BigScience's fork, BLOOM): Megatron's log with its own iteration line and timers."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import ClassVar

from fakerun.dialects.base import HintRule
from fakerun.dialects.events import (
    CheckpointSaved,
    CheckpointSaving,
    ProcessGroupReady,
    StepDone,
    TrainingStarted,
)
from fakerun.dialects.megatron import SAVE_DIR, MegatronDialect, _e, arguments_block
from fakerun.sim.job import JobSpec
from fakerun.sim.run import RunPlan

# Selected by its path, by --fake-trainer, or (hints.parse_hints) by DeepSpeed's switches beside Megatron's
# arguments: it adds options to Megatron's parser rather than spelling its own, so it takes no votes.
HINTS = HintRule(script=re.compile(r"megatron[-_]deepspeed"), arch_defaults=True)
_DS_SWITCHES = frozenset({"deepspeed", "deepspeed_config", "deepspeed-config", "zero-stage", "zero_stage"})


def applies(script: str, option_names: Sequence[str]) -> bool:
    """Whether a Megatron script (by path or options) is launched with DeepSpeed's switches."""
    if not _DS_SWITCHES & set(option_names):
        return False
    megatron = MegatronDialect.hints
    path = script.replace("\\", "/").lower()
    by_path = megatron.script is not None and megatron.script.search(path) is not None
    return by_path or any(megatron.votes(o) for o in option_names)


def ds_iteration_line(
    *,
    step: int,
    total: int,
    samples: int,
    tokens: int,
    step_s: float,
    lr: float,
    global_batch: int,
    loss: float | None,
    loss_scale: float | None,
    grad_norm: float | None,
    skipped: int,
    nan_iters: int,
    samples_per_s: float,
    tflops: float,
) -> str:
    """megatron/training.py training_log of Megatron-DeepSpeed: no timestamp, seconds, samples/s, TFLOPs."""
    parts = [
        f" iteration {step:8d}/{total:8d}",
        f" consumed samples: {samples:12d}",
        f" consumed tokens: {tokens:12d}",
        f" elapsed time per iteration (s): {step_s:.2f}",
        f" learning rate: {lr:.3E}",
        f" global batch size: {global_batch:5d}",
    ]
    if loss is not None:
        parts.append(f" lm loss: {_e(loss)}")
    if loss_scale is not None:  # printed with --fp16 only
        parts.append(f" loss scale: {loss_scale:.1f}")
    if grad_norm is not None:
        parts.append(f" grad norm: {grad_norm:.3f}" if not math.isnan(grad_norm) else " grad norm: nan")
        parts.append(" num zeros: 0.0")
    parts += [
        f" number of skipped iterations: {skipped:3d}",
        f" number of nan iterations: {nan_iters:3d}",
        f" samples per second: {samples_per_s:.3f}",
        f" TFLOPs: {tflops:.2f}",
    ]
    return " |".join(parts) + " |"


class MegatronDeepSpeedDialect(MegatronDialect):
    """Megatron-DeepSpeed's console (2022): Megatron's start-up in its older wording, the BLOOM iteration
    line, the `time (ms)` timers after it, memory reports once the lr is above zero."""

    name: ClassVar[str] = "megatron-deepspeed"
    hints: ClassVar[HintRule] = HINTS

    def startup(self, run: RunPlan) -> list[str]:
        """Rank 0 after parsing its arguments (megatron/arguments.py of the fork: its own spacing)."""
        job = run.job
        return [
            f"using world size: {job.world_size}, data-parallel-size: {job.dp}, tensor-model-parallel size: "
            f"{job.tp}, pipeline-model-parallel size: {job.pp} ",
            f"using {'torch.float16' if job.precision == 'fp16' else 'torch.bfloat16'} for parameters ...",
            *arguments_block(run, 1234),
            f"setting number of micro-batches to constant {job.grad_accum}",
        ]

    def initialized(self, event: ProcessGroupReady, at: float) -> list[str]:
        """The fork says `initializing` where Megatron-core says `initialized`; seeds per parallel rank."""
        assert self.run is not None
        job = self.run.job
        return [
            f"> initializing tensor model parallel with size {job.tp}",
            f"> initializing pipeline model parallel with size {job.pp}",
            "> setting random seeds to 1234 ...",
            "> initializing model parallel cuda seeds on global rank 0, model parallel rank 0, and data "
            "parallel rank 0 with model parallel seed: 3952 and data parallel seed: 1234",
            "> compiling dataset index builder ...",
            f">>> done with dataset index builder. Compilation time: {event.helpers_compile_s:.3f} seconds",
            "> compiling and loading fused kernels ...",
            ">>> done with compiling and loading fused kernels. Compilation time: "
            f"{event.kernels_compile_s:.3f} seconds",
            f"time to initialize megatron (seconds): {at - self.started_at:.3f}",
            self.datetime("after megatron is initialized", at),
        ]

    def timers(self, rows: Sequence[tuple[str, float, float]]) -> list[str]:
        """The fork's Timers.log: one `time (ms) | name: value` line (the last rank's own times)."""
        return ["time (ms)" + "".join(f" | {name}: {hi:.2f}" for name, _, hi in rows)]

    def rerun_line(self, event: TrainingStarted) -> list[str]:
        """The fork has no rerun state machine."""
        del event
        return []

    def saving_line(self, event: CheckpointSaving) -> str:
        """The fork's save_checkpoint (no format: DeepSpeed writes its own)."""
        return f"saving checkpoint at iteration {event.step:7d} to {SAVE_DIR}"

    def saved_line(self, event: CheckpointSaved, job: JobSpec) -> str:
        """The fork's last save line."""
        del job
        return f"  successfully saved checkpoint at iteration {event.step:7d} to {SAVE_DIR}"

    def report_now(self, event: StepDone) -> bool:
        """The fork reports memory at the first log line whose lr is above zero (fp16 skips keep it at 0)."""
        return event.numbers.lr > 0.0

    def theory_lines(self) -> list[str]:
        """The fork has no theoretical memory report."""
        return []

    def timer_lines(self, event: StepDone) -> list[str]:
        """Timers.log on the last rank: `time (ms) | name: value | ...` averaged over the interval."""
        if not event.timers_ms:
            return []
        return ["time (ms)" + "".join(f" | {name}: {ms:.2f}" for name, ms in event.timers_ms)]

    def iteration(self, event: StepDone, at: float) -> str:
        """The BLOOM-style line."""
        del at
        n = event.numbers
        job = event.run.job
        return ds_iteration_line(
            step=n.step,
            total=job.total_steps,
            samples=n.samples,
            tokens=n.tokens,
            step_s=event.interval_s,
            lr=n.lr,
            global_batch=job.global_batch,
            loss=n.loss if event.advanced_iters > 0 else None,
            loss_scale=event.loss_scale if job.precision == "fp16" else None,
            grad_norm=None if event.step_skipped else n.grad_norm,
            skipped=event.skipped_iters,
            nan_iters=int(n.skipped),
            samples_per_s=event.samples_per_s,
            tflops=event.megatron_tflops,
        )
