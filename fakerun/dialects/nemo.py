"""NeMo 2 (nemo.lightning MegatronStrategy): NeMo's logging, Lightning's start-up, ProgressPrinter lines."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from fakerun.dialects.base import HintRule, Line, Output, Seat, seconds_time, words
from fakerun.dialects.events import (
    CheckpointSaved,
    EvalDone,
    Event,
    JobStarted,
    ModelBuilt,
    ProcessGroupInitializing,
    ProcessGroupReady,
    StepDone,
    TrainingStopped,
    WorkerStarted,
)
from fakerun.dialects.lightning import (
    accelerator_lines,
    member_line,
    registered_lines,
    stopped_line,
    summary_lines,
    visible_devices_line,
)
from fakerun.sim.run import RunPlan

# `nemo llm pretrain --factory llama3_8b`, NeMo-Run recipes, NeMo 1's hydra scripts (`trainer.*=` overrides).
HINTS = HintRule(
    script=re.compile(
        r"nemo|megatron_gpt_pretraining"
        r"|(^|/)pretrain_(llama|nemotron|mixtral|mistral|qwen|gemma|starcoder|deepseek|baichuan)[a-z0-9_.]*\.py$"
    ),
    exact=words("factory recipe yes <hydra>"),  # <hydra>: each `key.sub=value` override (hints._option_names)
    sections=words("exp_manager"),
)


def nemo_line(level: str, module: str, lineno: int, message: str, at: float) -> str:
    """NeMo's logging formatter: `[NeMo I 2025-01-01 12:00:00 module:line] message`."""
    return f"[NeMo {level} {seconds_time(at)} {module}:{lineno}] {message}"


def metric(value: float) -> str:
    """ProgressPrinter.format_string: integral floats as ints, others with `.4` (4 significant digits)."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4}"


def progress_line(epoch: int, iteration: int, total: int, metrics: Sequence[tuple[str, float]]) -> str:
    """`Training epoch 0, iteration 9/99 | lr: 1.499e-05 | ...`: iteration 0-based out of max_steps - 1."""
    text = f"Training epoch {epoch}, iteration {iteration}/{total - 1}"
    return text + "".join(f" | {name}: {metric(v)}" for name, v in metrics)


class NemoDialect:
    """NeMo 2 on Megatron-core: rank 0 prints the progress lines; start-up as Lightning and NeMo log it."""

    name: ClassVar[str] = "nemo"
    hints: ClassVar[HintRule] = HINTS
    grid: ClassVar[bool] = False

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        self.run: RunPlan | None = None
        self.val_loss: float | None = None

    @property
    def zero(self) -> bool:
        """trainer.is_global_zero (ProgressPrinter is disabled on the other ranks)."""
        return self.seat.rank == 0

    def wants(self, kind: type[Event]) -> bool:
        """Init lines on every rank; the rest on global rank 0."""
        if kind in (JobStarted, ProcessGroupInitializing, ModelBuilt):
            return True
        return self.zero and kind in (
            WorkerStarted,
            ProcessGroupReady,
            StepDone,
            EvalDone,
            CheckpointSaved,
            TrainingStopped,
        )

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """NeMo's lines for the event on this rank."""
        seat = self.seat
        if isinstance(event, JobStarted):
            self.run = event.run
            return ()
        if isinstance(event, WorkerStarted):
            if not self.zero:
                return ()
            return [Line(text) for text in accelerator_lines(hpu=True)]
        if isinstance(event, ProcessGroupInitializing):
            return [Line(member_line(seat.rank, event.world_size))]
        if isinstance(event, ProcessGroupReady):
            if not self.zero:
                return ()
            return [
                *(Line(text) for text in registered_lines(seat.world_size)),
                Line(nemo_line("I", "megatron_strategy", 473, _MISMATCH, at)),
            ]
        if isinstance(event, ModelBuilt):
            out: list[Output] = [Line(visible_devices_line(seat.local_rank, seat.nproc_per_node))]
            if self.zero:
                out.append(Line(""))
                out += [
                    Line(t)
                    for t in summary_lines(
                        "module", "GPTModel", event.params_on_rank, trainable_modules=1, flops=False
                    )
                ]
            return out
        run = self.run
        if not self.zero or run is None:
            return ()
        if isinstance(event, StepDone):
            n = event.numbers
            metrics: list[tuple[str, float]] = [
                ("lr", n.lr),
                ("consumed_samples", float(n.samples)),
                ("global_batch_size", float(run.job.global_batch)),
                ("global_step", float(n.step - 1)),
                ("reduced_train_loss", n.loss),
                ("train_step_timing in s", n.step_time_s),
            ]
            if self.val_loss is not None:
                metrics.append(("val_loss", self.val_loss))
            epoch = run.epoch_of(n.step) - 1
            return [Line(progress_line(epoch, n.step - 1, run.job.total_steps, metrics))]
        if isinstance(event, EvalDone):
            self.val_loss = event.loss
            return [Line(f"Validation: iteration {i}/{event.iters}") for i in range(1, event.iters + 1)]
        if isinstance(event, CheckpointSaved):
            path = f"nemo_experiments/default/checkpoints/default--step={event.step - 1}-consumed_samples="
            samples = event.step * run.job.global_batch
            return [
                Line(
                    nemo_line(
                        "I",
                        "model_checkpoint",
                        657,
                        f"Async checkpoint save for step {event.step} ({path}{samples}.0.ckpt) finalized "
                        "successfully.",
                        at,
                    )
                )
            ]
        if isinstance(event, TrainingStopped):
            if event.reason in ("reached total steps", "reached max steps"):
                return [Line(stopped_line(event.step))]
            return ()
        return ()


_MISMATCH = "Fixing mis-match between ddp-config & mcore-optimizer config"
