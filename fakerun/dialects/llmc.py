"""llm.c (karpathy/llm.c train_gpt2.cu): printf0's start-up table and step lines, from process rank 0."""

from __future__ import annotations

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
from fakerun.dialects.llmc_args import HELLASWAG, Args, c_float, from_settings
from fakerun.sim.run import RunPlan

# Its checkpoints need -o and -n > 0 (hints.py writes "llmc.saves").
HINTS = HintRule(
    script=re.compile(r"train_gpt2cu|train_gpt2\.cu|train_gpt2_fp32cu|llm\.c"), save_option="llmc.saves"
)
RULE = "+-----------------------+----------------------------------------------------+"
_MIB = 1024 * 1024
# set_zero_configs' rows, printed above num_processes.
_ZERO_OFF = "| Zero Optimization is disabled                                              |"
_ZERO_UNEVEN = "| Zero Optimization is disabled, Can't equally partition parameters          |"
_ZERO_23 = "| Disabling Zero Optimization, Zero Stage2 and Stage3 are not yet supported  |"


def row(name: str, value: str) -> str:
    """One row of the start-up table: `| %-21s | %-50s |`."""
    return f"| {name:<21} | {value:<50} |"


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
        f"step {step:4d}/{total} | loss {c_float(loss, '7.6f')} ({c_float(loss_z, '+.2f')}z)"
        f"| norm {c_float(norm, '6.4f')} ({c_float(norm_z, '+.2f')}z)| lr {lr:.2e} | {ms:.2f} ms"
        f" | {100 * mfu:.1f}% bf16 MFU | {tok_s:.0f} tok/s"
    )


def job_args(run: RunPlan) -> Args:
    """The flags that would give this job, for a job whose settings hold no llm.c command line."""
    job = run.job
    return Args(
        micro_batch=job.micro_batch,
        seq_len=job.seq_len,
        total_batch_size=job.tokens_per_step,
        learning_rate=job.lr,
        warmup_iterations=job.warmup_steps,
        final_learning_rate_frac=job.min_lr / job.lr,
        max_steps=job.total_steps,
        val_loss_every=run.eval_interval,
        val_max_steps=run.eval_iters,
        zero_stage=job.zero_stage,
        load_filename=f"d{job.model.layers}",
    )


def startup_table(
    run: RunPlan,
    built: ModelBuilt,
    a: Args,
    *,
    resume: bool,
    val_tokens: int = 0,
    hellaswag_found: bool = False,
) -> list[str]:
    """printf0's start-up prints through `=> setting grad_accum_steps`, in main()'s order."""
    job = run.job
    m = job.model
    world = job.world_size
    n_params = built.padded_params
    total_batch = job.tokens_per_step
    tokens_per_fwdbwd = job.micro_batch * job.seq_len * world
    val_batches = a.val_max_steps if a.val_max_steps != -1 else val_tokens // tokens_per_fwdbwd
    run_hellaswag = a.hellaswag_eval != 0 and hellaswag_found
    if a.zero_stage == 0:
        zero_rows, zero = [_ZERO_OFF], 0
    elif a.zero_stage == 1:
        zero_rows, zero = ([], 1) if n_params % world == 0 else ([_ZERO_UNEVEN], 0)
    else:
        zero_rows, zero = [_ZERO_23], 0
    lines = [
        RULE,
        row("Parameter", "Value"),
        RULE,
        # -a 1 trains on the val split: main() swaps the pattern before printing it.
        row("train data pattern", a.train_pattern),
        row("val data pattern", a.val_data_pattern),
        row("output log dir", a.output_log_dir or "NULL"),
        row("checkpoint_every", str(a.checkpoint_every)),
        row("resume", str(a.resume)),
        row("micro batch size B", str(job.micro_batch)),
        row("sequence length T", str(job.seq_len)),
        row("total batch size", str(total_batch)),
        row("LR scheduler", a.lr_scheduler_type),
        row("learning rate (LR)", c_float(a.learning_rate, "e")),
        row("warmup iterations", str(a.warmup_iterations)),
        row("final LR fraction", c_float(a.final_learning_rate_frac, "e")),
        row("weight decay", c_float(a.weight_decay, "e")),
        row("skip update lossz", c_float(a.skip_update_lossz, "f")),
        row("skip update gradz", c_float(a.skip_update_gradz, "f")),
        row("max_steps", str(a.max_steps)),
        row("val_loss_every", str(a.val_loss_every)),
        row("val_max_steps", str(a.val_max_steps)),
        row("sample_every", str(a.sample_every)),
        row("genT", str(a.gen_t)),
        row("overfit_single_batch", str(a.overfit_single_batch)),
        row("use_master_weights", "enabled" if a.use_master_weights else "disabled"),
        row("gelu_fusion", str(0 if a.gelu_fusion == -1 else a.gelu_fusion)),
        row("recompute", str(a.recompute)),
        RULE,
        row("device", job.gpu.display_name),
        row("peak TFlops", f"{job.gpu.peak_bf16_tflops:.1f}"),
        row("precision", "BF16"),
        RULE,
        row("weight init method", "intermediate checkpoint" if resume else a.load_filename),
        row("max_sequence_length T", str(m.max_position or m.seq_len)),
        row("vocab_size V", str(m.vocab)),
        row("padded_vocab_size Vp", str(built.padded_vocab)),
        row("num_layers L", str(m.layers)),
        row("num_heads NH", str(m.heads)),
        row("channels C", str(m.hidden)),
        row("num_parameters", str(n_params)),
        RULE,
        row("train_num_batches", str(job.total_steps)),
        row("val_num_batches", str(val_batches)),
        RULE,
        row("run hellaswag", "yes" if run_hellaswag else "no"),
        RULE,
        *zero_rows,
        row("num_processes", str(world)),
        row("zero_stage", str(zero)),
        RULE,
    ]
    if not hellaswag_found:
        lines += [
            f"HellaSwag eval not found at {HELLASWAG}, skipping its evaluation",
            "You can run `python dev/data/hellaswag.py` to export and use it with `-h 1`.",
        ]
    # C's integer division inside round(): the MiB are floored.
    lines += [
        f"num_parameters: {n_params} => bytes: {2 * n_params}",
        f"allocated {2 * n_params // _MIB} MiB for model parameters",
        f"batch_size B={job.micro_batch} * seq_len T={job.seq_len} * num_processes={world} "
        f"and total_batch_size={total_batch}",
        f"=> setting grad_accum_steps={total_batch // tokens_per_fwdbwd}",
    ]
    max_seq = m.max_position or m.seq_len
    if job.seq_len < max_seq:
        lines += short_context_warning(job.seq_len, max_seq)
    return lines


def short_context_warning(t: int, max_seq_len: int) -> list[str]:
    """main()'s warning before training when -t is shorter than the model's context."""
    return [
        "!!!!!!!!",
        "WARNING:",
        f"- The training sequence length is: T={t} (set with -t)",
        f"- The model's max sequence length is: max_seq_len={max_seq_len}",
        "You are attempting to train with a sequence length shorter than the model's max.",
        "This will lead to unused parameters in the wpe position embedding weights.",
        "If you know what you're doing you can ignore this warning.",
        "If you're like ???, you are most likely misconfiguring your training run.",
        "---> HINT: If you're training GPT-2 use -t 1024. If GPT-3, use -t 2048.",
        "!!!!!!!!",
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
        self.args = Args()
        self.settings: dict[str, str] = {}

    def wants(self, kind: type[Event]) -> bool:
        """printf0's events on rank 0; every rank writes its own optimizer state file."""
        if kind in (JobStarted, CheckpointSaving):
            return True
        return self.seat.rank == 0 and kind in (ModelBuilt, TrainingStarted, StepDone, EvalDone)

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """llm.c's lines for the event on this rank."""
        del at  # llm.c prints no time of day
        if isinstance(event, JobStarted):
            self.run, self.resume, self.settings = event.run, event.resume, dict(event.settings)
            self.args = from_settings(self.settings) or job_args(event.run)
            return ()
        run = self.run
        if isinstance(event, CheckpointSaving):
            return self._checkpoint(event.step)
        if self.seat.rank != 0 or run is None:
            return ()
        if isinstance(event, ModelBuilt):
            table = startup_table(
                run,
                event,
                self.args,
                resume=self.resume,
                val_tokens=int(self.settings.get("llmc.val_tokens", "0")),
                hellaswag_found=bool(self.settings.get("llmc.hellaswag_found")),
            )
            return [Line(text) for text in table]
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

    def _checkpoint(self, step: int) -> list[Output]:
        """write_checkpoint's prints (the model from rank 0, each rank's state), then delete_checkpoint's when
        -nk keeps only the latest checkpoints and the one -nk back is no -nm major one."""
        a, rank = self.args, self.seat.rank
        d = a.output_log_dir or "NULL"
        out: list[Output] = []
        if rank == 0:
            out.append(Line(f"Writing checkpoint at step {step}"))
            out.append(Line(f"Writing model to {d}/model_{step:08d}.bin"))
        out.append(Line(f"Writing state to {d}/state_{step:08d}_{rank:05d}.bin"))
        gone = step - a.checkpoints_keep * a.checkpoint_every
        major = a.major_checkpoint_every != 0 and gone % a.major_checkpoint_every == 0
        if rank == 0 and a.checkpoints_keep > 0 and gone > 0 and not major:
            out.append(Line(f"Deleting checkpoint at step {gone}"))
        return out
