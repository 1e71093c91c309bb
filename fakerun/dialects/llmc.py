"""llm.c (karpathy/llm.c train_gpt2.cu): printf0's start-up table and step lines, from process rank 0."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import ClassVar

from fakerun.dialects.base import HintRule, Line, Output, Seat
from fakerun.dialects.events import (
    CheckpointSaving,
    EvalDone,
    Event,
    JobStarted,
    ModelBuilt,
    StepDone,
    TrainingStarted,
)
from fakerun.sim.run import RunPlan

HINTS = HintRule(script=re.compile(r"train_gpt2cu|train_gpt2\.cu|train_gpt2_fp32cu|llm\.c"))
RULE = "+-----------------------+----------------------------------------------------+"
# The output directory llm.c's GPT-2 scripts pass with -o.
LOG_DIR = "log_gpt2"
_MIB = 1024 * 1024


def row(name: str, value: str) -> str:
    """One row of the start-up table: `| %-21s | %-50s |`."""
    return f"| {name:<21} | {value:<50} |"


def _c_float(x: float, spec: str) -> str:
    """C printf of a float: nan keeps its sign as glibc prints it (`+nan`, `-nan`)."""
    if math.isnan(x):
        return ("+nan" if "+" in spec else "nan") if math.copysign(1.0, x) > 0 else "-nan"
    return format(x, spec)


def step_line(
    step: int,
    total: int,
    loss: float,
    loss_z: float,
    norm: float,
    norm_z: float,
    lr: float,
    ms: float,
    mfu: float,
    tok_s: float,
) -> str:
    """train_gpt2.cu's printf0 after each step (step 1-based, MFU as a fraction)."""
    return (
        f"step {step:4d}/{total} | loss {_c_float(loss, '7.6f')} ({_c_float(loss_z, '+.2f')}z)"
        f"| norm {_c_float(norm, '6.4f')} ({_c_float(norm_z, '+.2f')}z)| lr {lr:.2e} | {ms:.2f} ms"
        f" | {100 * mfu:.1f}% bf16 MFU | {tok_s:.0f} tok/s"
    )


def startup_table(run: RunPlan, built: ModelBuilt, *, resume: bool) -> list[str]:
    """The parameter, device, model, data and multi-GPU blocks, then the allocation prints below them."""
    job = run.job
    m = job.model
    n_params = built.padded_params
    total_batch = job.tokens_per_step
    grad_accum = total_batch // (job.micro_batch * job.seq_len * job.world_size) or 1
    return [
        RULE,
        row("Parameter", "Value"),
        RULE,
        row("train data pattern", "dev/data/fineweb10B/fineweb_train_*.bin"),
        row("val data pattern", "dev/data/fineweb10B/fineweb_val_*.bin"),
        row("output log dir", LOG_DIR),
        row("checkpoint_every", str(run.save_interval)),
        row("resume", str(int(resume))),
        row("micro batch size B", str(job.micro_batch)),
        row("sequence length T", str(job.seq_len)),
        row("total batch size", str(total_batch)),
        row("LR scheduler", "cosine"),
        row("learning rate (LR)", f"{job.lr:e}"),
        row("warmup iterations", str(job.warmup_steps)),
        row("final LR fraction", f"{job.min_lr / job.lr:e}"),
        row("weight decay", f"{0.1:e}"),
        row("skip update lossz", f"{0.0:f}"),
        row("skip update gradz", f"{0.0:f}"),
        row("max_steps", str(job.total_steps)),
        row("val_loss_every", str(run.eval_interval)),
        row("val_max_steps", str(run.eval_iters)),
        row("sample_every", "0"),
        row("genT", "64"),
        row("overfit_single_batch", "0"),
        row("use_master_weights", "enabled"),
        row("gelu_fusion", "0"),
        row("recompute", "1"),
        RULE,
        row("device", job.gpu.display_name),
        row("peak TFlops", f"{job.gpu.peak_bf16_tflops:.1f}"),
        row("precision", "BF16"),
        RULE,
        row("weight init method", "intermediate checkpoint" if resume else f"d{m.layers}"),
        row("max_sequence_length T", str(m.max_position or m.seq_len)),
        row("vocab_size V", str(m.vocab)),
        row("padded_vocab_size Vp", str(built.padded_vocab)),
        row("num_layers L", str(m.layers)),
        row("num_heads NH", str(m.heads)),
        row("channels C", str(m.hidden)),
        row("num_parameters", str(n_params)),
        RULE,
        row("train_num_batches", str(job.total_steps)),
        row("val_num_batches", str(run.eval_iters)),
        RULE,
        row("run hellaswag", "no"),
        RULE,
        row("num_processes", str(job.world_size)),
        row("zero_stage", str(1 if job.zero_stage else 0)),
        RULE,
        "HellaSwag eval not found at dev/data/hellaswag/hellaswag_val.bin, skipping its evaluation",
        "You can run `python dev/data/hellaswag.py` to export and use it with `-h 1`.",
        f"num_parameters: {n_params} => bytes: {2 * n_params}",
        f"allocated {round(2 * n_params / _MIB)} MiB for model parameters",
        f"batch_size B={job.micro_batch} * seq_len T={job.seq_len} * num_processes={job.world_size} "
        f"and total_batch_size={total_batch}",
        f"=> setting grad_accum_steps={grad_accum}",
    ]


class LlmcDialect:
    """llm.c's train_gpt2cu: everything through printf0 (rank 0) but the per-rank state file lines."""

    name: ClassVar[str] = "llmc"
    hints: ClassVar[HintRule] = HINTS
    grid: ClassVar[bool] = False

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        self.run: RunPlan | None = None
        self.resume = False

    def wants(self, kind: type[Event]) -> bool:
        """printf0's events on rank 0; every rank writes its own optimizer state file."""
        if kind in (JobStarted, CheckpointSaving):
            return True
        return self.seat.rank == 0 and kind in (ModelBuilt, TrainingStarted, StepDone, EvalDone)

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """llm.c's lines for the event on this rank."""
        del at  # llm.c prints no time of day
        if isinstance(event, JobStarted):
            self.run, self.resume = event.run, event.resume
            return ()
        run = self.run
        if isinstance(event, CheckpointSaving):
            out: list[Output] = []
            if self.seat.rank == 0:
                out.append(Line(f"Writing checkpoint at step {event.step}"))
                out.append(Line(f"Writing model to {LOG_DIR}/model_{event.step:08d}.bin"))
            out.append(Line(f"Writing state to {LOG_DIR}/state_{event.step:08d}_{self.seat.rank:05d}.bin"))
            return out
        if self.seat.rank != 0 or run is None:
            return ()
        if isinstance(event, ModelBuilt):
            return [Line(text) for text in startup_table(run, event, resume=self.resume)]
        if isinstance(event, TrainingStarted):
            # The loop validates at its step 0 before training (step % val_loss_every == 0).
            if run.eval_interval > 0 and (event.first_step - 1) % run.eval_interval == 0:
                return [Line(f"val loss {event.val_loss:f}")]
            return ()
        if isinstance(event, StepDone):
            n = event.numbers
            text = step_line(
                n.step,
                run.job.total_steps,
                n.loss,
                event.loss_z,
                n.grad_norm,
                event.norm_z,
                n.lr,
                1000 * n.step_time_s,
                event.llmc_mfu,
                event.llmc_tokens_per_s,
            )
            return [Line(text)]
        if isinstance(event, EvalDone):
            return [Line(f"val loss {event.loss:f}")]
        return ()
