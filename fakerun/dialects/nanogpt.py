"""nanoGPT (karpathy/nanoGPT train.py): its start-up prints on every rank, then iter/eval lines on rank 0."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from fakerun.dialects.base import HintRule, Line, Output, Seat, words
from fakerun.dialects.events import (
    CheckpointSaving,
    EvalDone,
    Event,
    JobStarted,
    ModelBuilt,
    ParallelismDecided,
    StepDone,
    TrainingStarted,
)
from fakerun.sim.run import RunPlan

# train.py's globals that configurator.py lets `--key=value` override (and a config/*.py file argument).
HINTS = HintRule(
    script=re.compile(r"nanogpt"),
    # configurator.py takes `--key=value` only (`--batch_size 8` is an argparse script's spelling).
    exact=frozenset(
        f"{name}="
        for name in words(
            "batch_size block_size max_iters n_layer n_head n_embd warmup_iters lr_decay_iters decay_lr "
            "init_from out_dir eval_only always_save_checkpoint wandb_log wandb_project wandb_run_name "
            "dataset dropout weight_decay beta1 beta2 grad_clip compile backend dtype"
        )
    )
    | {"<config_py>"},
)
# train.py's default out_dir ('out'); the checkpoint is out/ckpt.pt.
OUT_DIR = "out"


def tokens_line(tokens_per_iter: int) -> str:
    """train.py, every rank: the tokens one iteration consumes over the whole job."""
    return f"tokens per iteration will be: {tokens_per_iter:,}"


def model_lines(groups_event: ModelBuilt, *, resume: bool, compile_model: bool = True) -> list[str]:
    """Model init and optimizer set-up as train.py and model.py print them (every rank)."""
    g = groups_event.groups
    out = [f"Resuming training from {OUT_DIR}"] if resume else ["Initializing a new model from scratch"]
    if not resume:
        out.append("defaulting to vocab_size of GPT-2 to 50304 (50257 rounded up for efficiency)")
    out.append(f"number of parameters: {groups_event.reported_params / 1e6:.2f}M")
    if g is not None:
        out.append(f"num decayed parameter tensors: {g.decay_tensors}, with {g.decay_params:,} parameters")
        out.append(
            f"num non-decayed parameter tensors: {g.nodecay_tensors}, with {g.nodecay_params:,} parameters"
        )
    out.append("using fused AdamW: True")
    if compile_model:
        out.append("compiling the model... (takes a ~minute)")
    return out


def eval_line(iter_num: int, train_loss: float, val_loss: float) -> str:
    """train.py's evaluation at `iter_num % eval_interval == 0` (rank 0)."""
    return f"step {iter_num}: train loss {train_loss:.4f}, val loss {val_loss:.4f}"


def iter_line(iter_num: int, loss: float, dt_s: float, running_mfu: float) -> str:
    """train.py's log line: the last iteration's time and the running MFU (-100.00% before it starts)."""
    return f"iter {iter_num}: loss {loss:.4f}, time {dt_s * 1000:.2f}ms, mfu {running_mfu * 100:.2f}%"


class NanoGptDialect:
    """nanoGPT: unconditional prints on every rank, master_process (rank 0) logs, evaluates and saves."""

    name: ClassVar[str] = "nanogpt"
    hints: ClassVar[HintRule] = HINTS
    grid: ClassVar[bool] = False

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        self.resume = False
        self.run: RunPlan | None = None

    @property
    def master(self) -> bool:
        """train.py's master_process: ddp_rank == 0."""
        return self.seat.rank == 0

    def wants(self, kind: type[Event]) -> bool:
        """Start-up on every rank; training, evaluation and saving on rank 0."""
        if kind in (JobStarted, ParallelismDecided, ModelBuilt):
            return True
        return self.master and kind in (TrainingStarted, StepDone, EvalDone, CheckpointSaving)

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """nanoGPT's lines for the event on this rank."""
        del at  # nanoGPT's prints carry no time
        if isinstance(event, JobStarted):
            self.resume, self.run = event.resume, event.run
            return ()
        if isinstance(event, ParallelismDecided):
            return [Line(tokens_line(event.tokens_per_step))]
        if isinstance(event, ModelBuilt):
            return [Line(text) for text in model_lines(event, resume=self.resume)]
        if not self.master:
            return ()
        run = self.run
        if isinstance(event, TrainingStarted):
            # The loop evaluates before its first iteration when iter_num is a multiple of eval_interval.
            start = event.first_step - 1
            if run is not None and run.eval_interval > 0 and start % run.eval_interval == 0:
                return [Line(eval_line(start, event.train_loss, event.val_loss))]
            return ()
        if isinstance(event, StepDone):
            n = event.numbers
            iter_num = n.step - 1  # iter_num counts iterations done before this one
            interval = run.log_interval if run is not None else 1
            if iter_num % interval:
                return ()
            return [Line(iter_line(iter_num, n.loss, n.step_time_s, event.nanogpt_mfu))]
        if isinstance(event, EvalDone):
            return [Line(eval_line(event.step, event.train_loss, event.loss))]
        if isinstance(event, CheckpointSaving):
            return [Line(f"saving checkpoint to {OUT_DIR}")]
        return ()
