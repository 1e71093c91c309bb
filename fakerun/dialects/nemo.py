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
    TrainingFinished,
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
from fakerun.sim.step import StepNumbers

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
        self.resumed = False
        self.val_loss: float | None = None
        self.evaluated = 0  # the step after which the last validation ran
        self.pending: list[tuple[int, str]] = []  # async saves scheduled, not yet finalized: (step, path)

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
            TrainingFinished,
        )

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """NeMo's lines for the event on this rank."""
        seat = self.seat
        if isinstance(event, JobStarted):
            self.run = event.run
            self.resumed = event.resume
            return ()
        if isinstance(event, WorkerStarted):
            if not self.zero:
                return ()
            return [Line(text, "stderr") for text in accelerator_lines(hpu=True)]
        if isinstance(event, ProcessGroupInitializing):
            return [Line(member_line(seat.rank, event.world_size), "stderr")]
        if isinstance(event, ProcessGroupReady):
            if not self.zero:
                return ()
            return [
                *(Line(text, "stderr") for text in registered_lines(seat.world_size)),
                Line(nemo_line("I", "megatron_strategy", 473, _MISMATCH, at)),
            ]
        if isinstance(event, ModelBuilt):
            out: list[Output] = [Line(visible_devices_line(seat.local_rank, seat.nproc_per_node), "stderr")]
            if self.zero:
                out.append(Line("", "stderr"))
                out += [
                    Line(t, "stderr")
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
            return [
                Line(
                    progress_line(run.epoch_of(n.step) - 1, n.step - 1, run.job.total_steps, self.metrics(n))
                ),
                *self.finalized(at),
            ]
        if isinstance(event, EvalDone):
            self.val_loss = event.loss
            self.evaluated = event.step
            return [Line(f"Validation: iteration {i}/{event.iters}") for i in range(1, event.iters + 1)]
        if isinstance(event, CheckpointSaved):
            return self.saved(event, at)
        if isinstance(event, TrainingStopped):
            out = self.drained(at)
            if event.reason in ("reached total steps", "reached max steps"):
                out.append(Line(stopped_line(event.step), "stderr"))
            return out
        if isinstance(event, TrainingFinished):
            return self.drained(at)
        return ()

    def drained(self, at: float) -> list[Output]:
        """AsyncFinalizerCallback.on_train_end: what is still pending is finalized, blocking."""
        if not self.pending:
            return []
        return [Line(nemo_line("I", "dist_ckpt_io", 190, _PENDING, at)), *self.finalized(at)]

    def metrics(self, n: StepNumbers) -> list[tuple[str, float]]:
        """progress_bar_metrics in the order their keys were first logged (ProgressPrinter keeps that order).

        lr is logged at on_train_batch_start; consumed_samples only once trainer.global_step is non-zero
        (MegatronDataSampler.on_megatron_step_end), so a fresh run adds it after the step timing of the
        second iteration while a resumed run logs it from its first, before global_batch_size."""
        assert self.run is not None
        global_step = n.step - 1
        consumed = [("consumed_samples", float(n.samples))] if global_step else []
        out: list[tuple[str, float]] = [("lr", n.lr)]
        out += consumed if self.resumed else []
        out += [
            ("global_batch_size", float(self.run.job.global_batch)),
            ("global_step", float(global_step)),
            ("reduced_train_loss", n.loss),
            ("train_step_timing in s", n.step_time_s),
        ]
        out += [] if self.resumed else consumed
        if self.val_loss is not None:
            out.append(("val_loss", self.val_loss))
        return out

    def saved(self, event: CheckpointSaved, at: float) -> list[Output]:
        """ModelCheckpoint's async save after validation: the top-k checkpoint and its `-last` copy, each
        scheduled (MegatronCheckpointIO's timing line, then the callback's), finalized at a later batch."""
        assert self.run is not None
        # The filename's {step} is the `step` the strategy logged in training_step (global_step before the
        # optimizer's increment); {model_name} is no metric, so Lightning writes it as `model_name=0`.
        val = f"{self.val_loss:.2f}" if self.val_loss is not None else "0.00"
        samples = event.step * self.run.job.global_batch
        name = f"model_name=0--val_loss={val}-step={event.step - 1}-consumed_samples={samples}.0"
        # Iteration is fit_loop's completed batches: counted before a validation's save (on_advance_end) but
        # not yet at on_train_batch_end, where a save on ModelCheckpoint's time interval happens.
        iteration = event.step if self.evaluated == event.step else event.step - 1
        out: list[Output] = []
        for path in (f"{_CHECKPOINTS}/{name}.ckpt", f"{_CHECKPOINTS}/{name}-last.ckpt"):
            # The simulated pause holds both saves' synchronous parts.
            timing = (
                f"Global Checkpoint Save : Rank: 0 : Iteration: {iteration} : Start time: {at:.3f}s"
                f" : Save duration: {event.seconds / 2:.3f}s"
            )
            out.append(Line(nemo_line("I", "pl", 219, timing, at)))
            out.append(
                Line(
                    nemo_line("I", "model_checkpoint", 632, f"Scheduled async checkpoint save for {path}", at)
                )
            )
            self.pending.append((event.step, path))
        return out

    def finalized(self, at: float) -> list[Output]:
        """AsyncFinalizerCallback at a batch end: each pending save's finalize functions, then the timing."""
        if not self.pending:
            return []
        out: list[Output] = []
        for step, path in self.pending:
            done = f"Successfully saved checkpoint from iteration {step:7d} to {path}"
            out.append(Line(nemo_line("I", "pl", 222, done, at)))
            final = f"Async checkpoint save for step {step} ({path}) finalized successfully."
            out.append(Line(nemo_line("I", "model_checkpoint", 657, final, at)))
        self.pending.clear()
        out.append(Line(nemo_line("I", "dist_ckpt_io", 160, "Async finalization time took 0.001 s", at)))
        return out


_MISMATCH = "Fixing mis-match between ddp-config & mcore-optimizer config"
# NeMoLogger's default log_dir (<cwd>/nemo_experiments/<name>, resume_if_exists: no version) + checkpoints.
_CHECKPOINTS = "nemo_experiments/default/checkpoints"
_PENDING = "Pending async checkpoint saves. Finalizing them synchronously now"
