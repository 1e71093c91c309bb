"""NeMo 2 (nemo.lightning MegatronStrategy): NeMo's logging, Lightning's start-up, ProgressPrinter lines."""

from __future__ import annotations

import math
import posixpath
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
    TrainingStarted,
    TrainingStopped,
    WorkerStarted,
)
from fakerun.dialects.lightning import (
    accelerator_lines,
    registered_lines,
    stopped_line,
    summary_lines,
    visible_devices_line,
)
from fakerun.sim import megatron as megatron_figures
from fakerun.sim.job import JobSpec
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


def rank_groups(sizes: Sequence[tuple[str, int]], token: str) -> list[list[int]]:
    """megatron.core's RankGenerator.get_ranks: the groups spanning `token`'s dimensions (`tp-pp`) over the
    ordered dimensions, fastest first (generate_masked_orthogonal_rank_groups)."""
    names = token.split("-")
    shape = [n for _, n in sizes]
    stride = [math.prod(shape[:i]) for i in range(len(shape))]
    masked = [(n, d) for (name, n), d in zip(sizes, stride, strict=True) if name in names]
    unmasked = [(n, d) for (name, n), d in zip(sizes, stride, strict=True) if name not in names]

    def offset(index: int, dims: list[tuple[int, int]]) -> int:
        total = 0
        for n, d in dims:
            index, i = divmod(index, n)
            total += i * d
        return total

    size = math.prod(n for n, _ in masked)
    return [
        [offset(g, unmasked) + offset(r, masked) for r in range(size)]
        for g in range(math.prod(shape) // size)
    ]


def parallel_group_lines(job: JobSpec, rank: int) -> list[tuple[int, str]]:
    """megatron_init.fake_initialize_model_parallel's INFO lines for `rank` as (line of the call, message):
    no context parallelism, ranks ordered tp-cp-ep-dp-pp; the experts' tensor parallel size defaults to the
    model's, so its lines show whenever tp > 1. `All embedding group ranks` prints the pipeline groups."""
    dense = [("tp", job.tp), ("cp", 1), ("ep", 1), ("dp", job.dp), ("pp", job.pp)]
    experts = [("tp", job.tp), ("cp", 1), ("ep", job.ep), ("dp", job.dp // job.ep), ("pp", job.pp)]
    out: list[tuple[int, str]] = []

    def mine(groups: list[list[int]]) -> list[int]:
        return next(g for g in groups if rank in g)

    dp = mine(rank_groups(dense, "dp"))
    dp_cp = rank_groups(dense, "dp-cp")
    out.append((449, f"Rank {rank} has data parallel group : {dp}"))
    out.append((455, f"Rank {rank} has combined group of data parallel and context parallel : {mine(dp_cp)}"))
    out.append((460, f"All data parallel group ranks with context parallel combined: {dp_cp}"))
    out.append((463, f"Ranks {rank} has data parallel rank: {dp.index(rank)}"))
    cp = rank_groups(dense, "cp")
    out.append((471, f"Rank {rank} has context parallel group: {mine(cp)}"))
    out.append((474, f"All context parallel group ranks: {cp}"))
    out.append((475, f"Ranks {rank} has context parallel rank: {mine(cp).index(rank)}"))
    mp = rank_groups(dense, "tp-pp")
    out.append((482, f"Rank {rank} has model parallel group: {mine(mp)}"))
    out.append((483, f"All model parallel group ranks: {mp}"))
    tp = rank_groups(dense, "tp")
    out.append((492, f"Rank {rank} has tensor model parallel group: {mine(tp)}"))
    out.append((496, f"All tensor model parallel group ranks: {tp}"))
    out.append((497, f"Rank {rank} has tensor model parallel rank: {mine(tp).index(rank)}"))
    for size, token, name, lines in (
        (job.ep, "ep", "model", (507, 508)),
        (job.tp, "tp", "tensor", (518, 519)),
    ):
        if size > 1:
            groups = rank_groups(experts, token)
            out.append((lines[0], f"All expert {name} parallel group ranks: {groups}"))
            out.append((lines[1], f"Rank {rank} has expert {name} parallel rank: {mine(groups).index(rank)}"))
    pp = rank_groups(dense, "pp")
    embedding: list[int] | None = None
    for ranks in pp:
        if rank in ranks:
            out.append((532, f"Rank {rank} has pipeline model parallel group: {ranks}"))
        ends = [ranks[0], ranks[-1]] if len(ranks) > 1 else ranks
        if rank in ends:
            embedding = ends
            out.append((544, f"Rank {rank} has embedding group: {embedding}"))
    out.append((550, f"All pipeline model parallel group ranks: {pp}"))
    out.append((551, f"Rank {rank} has pipeline model parallel rank {mine(pp).index(rank)}"))
    out.append((552, f"All embedding group ranks: {pp}"))
    out.append(
        (553, f"Rank {rank} has embedding rank: {None if embedding is None else embedding.index(rank)}")
    )
    return out


class NemoDialect:
    """NeMo 2 on Megatron-core: rank 0 prints the progress lines; start-up as Lightning and NeMo log it."""

    name: ClassVar[str] = "nemo"
    hints: ClassVar[HintRule] = HINTS
    grid: ClassVar[bool] = False
    # The data-parallel groups' (the gradient collectives'): MegatronStrategy leaves the world group at
    # torch's default, but megatron-core's initialize_model_parallel makes the others with its
    # distributed_timeout_minutes default, 30, which NeMo does not pass.
    nccl_timeout_s: ClassVar[float] = 1800.0

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        self.run: RunPlan | None = None
        self.resumed = False
        self.val_loss: float | None = None
        self.evaluated = 0  # the step after which the last validation ran
        self.pending: list[tuple[int, str]] = []  # async saves scheduled, not yet finalized: (step, path)
        # ProgressPrinter sets its validation total at the first validation batch only (its dataloader index
        # is never reset): the sanity check's total sticks for every later validation.
        self.val_total: int | None = None
        # NeMoLogger's log_dir: <cwd>/nemo_experiments/<name>, no version folder (resume_if_exists).
        self.log_dir = posixpath.join(seat.cwd, "nemo_experiments", "default")
        self.checkpoints = posixpath.join(self.log_dir, "checkpoints")  # ModelCheckpoint's dirpath

    @property
    def zero(self) -> bool:
        """trainer.is_global_zero (ProgressPrinter is disabled on the other ranks)."""
        return self.seat.rank == 0

    def wants(self, kind: type[Event]) -> bool:
        """Lightning's CUDA line on every rank; the rest on global rank 0 (NeMo's logging, its printer)."""
        if kind in (JobStarted, ModelBuilt):
            return True
        return self.zero and kind in (
            WorkerStarted,
            ProcessGroupInitializing,
            ProcessGroupReady,
            TrainingStarted,
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
        run = self.run
        if isinstance(event, ModelBuilt):
            return self.built(event, at)
        if not self.zero or run is None:
            return ()
        if isinstance(event, WorkerStarted):
            # The recipe's Trainer is built first, then llm.train's NeMoLogger.setup and AutoResume.setup.
            return [
                *(Line(text, "stderr") for text in accelerator_lines(hpu=True)),
                *self.logger_setup(run, at),
            ]
        if isinstance(event, ProcessGroupInitializing):
            # Trainer.fit: strategy.connect(model), then setup_distributed's fake model-parallel init before
            # init_process_group (its `Initializing distributed` goes to a logger with no handler).
            return [
                Line(nemo_line("I", "megatron_strategy", 473, _MISMATCH, at)),
                *(
                    Line(nemo_line("I", "megatron_init", lineno, text, at))
                    for lineno, text in parallel_group_lines(run.job, seat.rank)
                ),
            ]
        if isinstance(event, ProcessGroupReady):
            return [Line(text, "stderr") for text in registered_lines(seat.world_size)]
        if isinstance(event, TrainingStarted):
            # No sanity check with pipeline parallelism (MegatronStrategy.setup zeroes num_sanity_val_steps).
            if not event.sanity_batches or run.job.pp > 1:
                return ()
            self.val_total = event.sanity_batches
            return [
                Line(f"Sanity checking Validation: iteration {i}/{self.val_total}")
                for i in range(1, event.sanity_batches + 1)
            ]
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
            # on_validation_batch_end at each global batch: batch_idx is the last micro batch it consumed, so
            # (batch_idx + 1) / num_microbatches is whole every time.
            total = self.val_total = self.val_total or event.iters
            return [Line(f"Validation: iteration {i}/{total}") for i in range(1, event.iters + 1)]
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

    def logger_setup(self, run: RunPlan, at: float) -> list[Output]:
        """NeMoLogger.setup for the recipe's default_log (a TensorBoard logger, a ModelCheckpoint monitoring
        val_loss, resume_if_exists), then AutoResume's search for the checkpoint to resume from."""
        experiments = posixpath.dirname(self.log_dir)
        max_steps = (
            "The checkpoint callback was told to monitor a validation value and trainer's max_steps was set"
            f" to {run.job.total_steps}. Please ensure that max_steps will run for at least 1 epochs to"
            " ensure that checkpointing will not error out."
        )
        out: list[Output] = [
            Line(nemo_line("W", "nemo_logger", 139, _NO_VERSION, at), "stderr"),
            Line(nemo_line("I", "nemo_logger", 162, f"Experiments will be logged at {self.log_dir}", at)),
            Line(
                nemo_line("W", "nemo_logger", 190, _TENSORBOARD + posixpath.join(experiments, "tb_logs"), at),
                "stderr",
            ),
            # Lightning's own ModelCheckpoint (enable_checkpointing) is replaced by the recipe's.
            Line(nemo_line("W", "nemo_logger", 209, _OVERWRITTEN, at), "stderr"),
            # Lightning sets max_epochs to -1 when only max_steps is given; check_val_every_n_epoch is 1.
            Line(nemo_line("W", "nemo_logger", 239, max_steps, at), "stderr"),
        ]
        if not self.resumed:
            missing = (
                "There were no checkpoints found in checkpoint_dir or no checkpoint folder at checkpoint_dir "
                f":{self.checkpoints}. Training from scratch."
            )
            out.append(Line(nemo_line("W", "resume", 239, missing, at), "stderr"))
        return out

    def built(self, event: ModelBuilt, at: float) -> list[Output]:
        """Trainer.fit from configure_model to ModelSummary: the padded vocabulary, Lightning's CUDA line
        (every rank), then MegatronStrategy.setup's lines and the summary on rank 0."""
        seat = self.seat
        devices = Line(visible_devices_line(seat.local_rank, seat.nproc_per_node), "stderr")
        if not self.zero or self.run is None:
            return [devices]
        job = self.run.job
        padded = megatron_figures.padded_vocab(job.model.vocab, job.tp)  # nemo/lightning/base.py
        vocab = (
            f"Padded vocab_size: {padded}, original vocab_size: {job.model.vocab},"
            f" dummy tokens: {padded - job.model.vocab}."
        )
        steps = f"Copying Trainer's 'max_steps' ({job.total_steps}) to LR scheduler's 'max_steps'."
        # MegatronParallel.init_model_parallel on data-parallel rank 0; the spacing is NeMo's.
        params = (
            " > number of parameters on (tensor, pipeline) model parallel rank (0 ,0): "
            f"{int(event.params_on_rank)}"
        )
        return [
            Line(nemo_line("I", "base", 48, vocab, at)),
            devices,
            Line(nemo_line("I", "megatron_strategy", 485, steps, at)),
            # setup_data_sampler: megatron.core's logger, given NeMo's handlers by NeMoLogger.
            Line(
                nemo_line(
                    "I",
                    "num_microbatches_calculator",
                    228,
                    f"setting number of microbatches to constant {job.grad_accum}",
                    at,
                )
            ),
            Line(nemo_line("I", "megatron_parallel", 592, params, at)),
            Line("", "stderr"),
            # ModelSummary at on_fit_start: MegatronParallel.init_ddp has wrapped the module in NeMo's DDP.
            *(
                Line(t, "stderr")
                for t in summary_lines(
                    "module", "DDP", event.params_on_rank, trainable_modules=1, flops=False
                )
            ),
        ]

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
        for path in (f"{self.checkpoints}/{name}.ckpt", f"{self.checkpoints}/{name}-last.ckpt"):
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
_NO_VERSION = "No version folders would be created under the log folder as 'resume_if_exists' is enabled."
_TENSORBOARD = '"update_logger_directory" is True. Overwriting tensorboard logger "save_dir" to '
_OVERWRITTEN = "The Trainer already contains a ModelCheckpoint callback. This will be overwritten."
_PENDING = "Pending async checkpoint saves. Finalizing them synchronously now"
