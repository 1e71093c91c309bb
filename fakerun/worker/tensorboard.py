"""TensorBoard event files of a rank's curves, with the tags its framework writes (the `tensorboard` extra).

Where the script's arguments ask for them (HF's --report_to tensorboard, Megatron's and Megatron-DeepSpeed's
--tensorboard-dir, torchtitan's metrics.enable_tensorboard) or --fake-tensorboard DIR does, the framework's
logging rank writes each scalar its framework writes, at the steps it writes them, stamped on the job's clock.
The writer is tensorboardX, imported only by that rank once it knows where to write (forked workers import
nothing else).
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, Protocol

from fakerun.dialects import hf, megatron_ds, titan
from fakerun.dialects.events import (
    EvalDone,
    Event,
    JobStarted,
    ModelBuilt,
    StepDone,
    TrainingFinished,
    TrainingStarted,
    TrainingStopped,
)
from fakerun.frameworks import hf_files, hf_results
from fakerun.launcher.outfile import notice
from fakerun.sim import megatron as megatron_figures
from fakerun.sim.run import RunPlan

Scalar = tuple[str, float, int]  # tag, value, global step

MISSING = "no TensorBoard event files: they need tensorboardX (pip install 'fakerun[tensorboard]')"
_TRUE = ("true", "1", "yes")
_GIB = 1024.0**3


class Tags(Protocol):
    """One framework's TensorBoard writer: where it writes, and the scalars it writes for each event."""

    logdir: str | None  # None until the event that names (or dates) the folder

    def scalars(self, event: Event, at: float) -> list[Scalar]:
        """The scalars written for `event`, happening at `at` on the job's clock."""
        ...


class HfTags:
    """transformers' TensorBoardCallback (world process zero): Trainer.log's records through rewrite_logs."""

    def __init__(self, run: RunPlan, settings: Mapping[str, str], host: str, at: float, fixed: str | None):
        self.run, self.settings = run, settings
        # TrainingArguments: --logging_dir, else default_logdir(): {output_dir}/runs/{%b%d_%H-%M-%S}_{host}.
        dated = time.strftime("%b%d_%H-%M-%S", time.localtime(at)) + "_" + host
        self.logdir: str | None = (
            fixed or settings.get("logging_dir") or os.path.join(hf_files.output_dir(settings), "runs", dated)
        )
        self.window = hf.LossWindow()
        self.epoch = 0.0

    def scalars(self, event: Event, at: float) -> list[Scalar]:
        job = self.run.job
        match event:
            case StepDone(numbers=n):
                if n.step == self.run.first_step:
                    self.window = hf.LossWindow()
                self.window.add(n.loss, job.grad_accum)
                self.epoch = event.epoch
                if n.step % self.run.log_interval:
                    return []
                loss = self.window.take(n.loss)
                return _hf(hf_results.step_record(loss, n.grad_norm, n.lr, event.epoch), n.step)
            case EvalDone() if event.split == "validation":
                batch = hf_results.eval_batch(self.settings)
                samples = hf_results.eval_samples(event.iters, batch, job.world_size)
                accuracy = hf_results.eval_accuracy(self.settings, event.loss, samples, job.seq_len)
                record = hf_results.eval_metrics(
                    event.loss, event.seconds, samples, event.iters, event.epoch, accuracy
                )
                return _hf(record, event.step)
            case TrainingStopped():
                return _hf(hf_results.train_record(event, self.epoch), event.step)
        return []


def _hf(record: hf_results.Record, step: int) -> list[Scalar]:
    """integration_utils.rewrite_logs: eval_* under eval/, test_* under test/, the rest under train/."""
    out: list[Scalar] = []
    for key, value in record.items():
        for prefix in ("eval", "test"):
            if key.startswith(prefix + "_"):
                tag = f"{prefix}/{key.removeprefix(prefix + '_')}"
                break
        else:
            tag = f"train/{key}"
        out.append((tag, float(value), step))
    return out


class _MegatronWriter:
    """What Megatron-LM's and Megatron-DeepSpeed's writers share: --tensorboard-dir, its interval, the
    store_true switches that gate their scalars, and the consumed samples an evaluation is plotted against."""

    def __init__(self, run: RunPlan, settings: Mapping[str, str], fixed: str | None):
        self.run = run
        self.logdir: str | None = fixed or settings["tensorboard_dir"]
        self.interval = max(1, _int(settings.get("tensorboard_log_interval"), 1))
        self.on = frozenset(k for k, v in settings.items() if v.lower() in _TRUE)
        self.timers = "log_timers_to_tensorboard" in self.on
        self.ppl = "log_validation_ppl_to_tensorboard" in self.on
        self.samples = 0  # args.consumed_train_samples


class MegatronTags(_MegatronWriter):
    """Megatron-LM's training_log and evaluate_and_print_results (its writer lives on the last rank)."""

    def __init__(self, run: RunPlan, settings: Mapping[str, str], fixed: str | None):
        super().__init__(run, settings, fixed)
        self.memory = "log_memory_to_tensorboard" in self.on
        self.world = "log_world_size_to_tensorboard" in self.on
        self.loss_scale = "no_log_loss_scale_to_tensorboard" not in self.on
        self.throughput = "log_throughput" in self.on

    def scalars(self, event: Event, at: float) -> list[Scalar]:
        job = self.run.job
        out: list[Scalar] = []
        if isinstance(event, EvalDone):
            # The test split's evaluation writes under the same tags (no suffix without several sets).
            vs = ("samples", self.samples)
            out += _against("lm loss validation", event.loss, event.step, vs)
            if self.ppl:
                out += _against("lm loss validation ppl", _ppl(event.loss), event.step, vs)
            return out
        if not isinstance(event, StepDone):
            return out
        n = event.numbers
        self.samples = n.samples
        vs = ("samples", n.samples)
        if n.step % self.interval == 0:
            out += _against("learning-rate", n.lr, n.step, vs)
            out += _against("batch-size", job.global_batch, n.step, vs)
            out += _against("lm loss", n.loss, n.step, vs)
            if self.loss_scale:
                out += _against("loss-scale", event.loss_scale, n.step, vs)
            if self.world:
                out += _against("world-size", job.world_size, n.step, vs)
            if not event.step_skipped:  # an overflowed iteration has no grad norm
                out += _against("grad-norm", n.grad_norm, n.step, vs)
            if self.memory:
                out += [
                    ("mem-reserved-bytes", n.mem_reserved_gib * _GIB, n.step),
                    ("mem-allocated-bytes", n.mem_allocated_gib * _GIB, n.step),
                    ("mem-max-allocated-bytes", n.mem_max_allocated_gib * _GIB, n.step),
                ]
        # The interval timer's figures, at the stdout log's cadence, from the second log on.
        if self.timers and n.step % self.run.log_interval == 0 and n.step != self.run.first_step:
            out.append(("iteration-time", event.interval_s, n.step))
            if self.throughput:
                out.append(("throughput", event.megatron_tflops, n.step))
        return out


class MegatronDsTags(_MegatronWriter):
    """Megatron-DeepSpeed's training_log, evaluate_and_print_results and log_restart_to_tensorboard (the last
    rank's writer): each scalar in its group, against the iteration, the consumed samples and tokens."""

    def __init__(self, run: RunPlan, settings: Mapping[str, str], fixed: str | None):
        super().__init__(run, settings, fixed)
        job = run.job
        self.batch_size = "log_batch_size_to_tensorboard" in self.on
        self.lr = "no_log_learnig_rate_to_tensorboard" not in self.on  # the option's own spelling
        self.loss_scale = job.precision == "fp16" and "no_log_loss_scale_to_tensorboard" not in self.on
        # get_parameters_in_billions(model, exclude_embeddings=True): the whole model's, taken here as
        # evenly spread over the model-parallel ranks (the last stage's count times tp x pp in the source).
        self.billions = (job.model.params - job.model.embedding_params()) / 1e9
        self.tokens = 0  # args.consumed_train_tokens

    def axes(self) -> tuple[tuple[str, int], ...]:
        """The `vs samples` and `vs tokens` axes at the last iteration."""
        return ("samples", self.samples), ("tokens", self.tokens)

    def gigaflos(self) -> tuple[str, int]:
        """args.gigaflos_no_embeds (6 x samples x seq_length x billions, summed per iteration and kept in
        checkpoints), the losses' extra axis; add_scalar truncates a step to an integer."""
        return "gigaflos (without embeddings)", int(6 * self.samples * self.run.job.seq_len * self.billions)

    def scalars(self, event: Event, at: float) -> list[Scalar]:
        job = self.run.job
        if isinstance(event, TrainingStarted):
            # A blip of the world size where this run starts (args.iteration), to mark a restart.
            start = event.first_step - 1
            return [
                ("iteration-time/world_size", job.world_size, start),
                ("iteration-time/world_size", 0, start + 1),
            ]
        if isinstance(event, EvalDone):
            # pretrain()'s test evaluation is passed iteration 0; each group names its plots.
            step = 0 if event.split == "test" else event.step
            tag = f"lm-loss-validation/{megatron_ds.data_group(event.split)}/lm loss validation"
            scalars = _against(tag, event.loss, step, *self.axes(), self.gigaflos())
            if self.ppl:
                scalars += _against(tag + " ppl", _ppl(event.loss), step, *self.axes(), self.gigaflos())
            return scalars
        if not isinstance(event, StepDone):
            return []
        n = event.numbers
        self.samples, self.tokens = n.samples, n.tokens
        vs = self.axes()
        out: list[Scalar] = []
        if n.step % self.interval == 0:
            out += [
                ("steps-vs-samples/y=steps,x=samples", n.step, n.samples),
                ("steps-vs-samples/y=samples,x=steps", n.samples, n.step),
                ("steps-vs-tokens/y=steps,x=tokens", n.step, n.tokens),
                ("steps-vs-tokens/y=tokens,x=steps", n.tokens, n.step),
            ]
            if self.lr:
                out += _against("learning-rate/learning-rate", n.lr, n.step, *vs)
            if self.batch_size:
                out += _against("batch-size/batch-size", job.global_batch, n.step, vs[0])
            out += _against("lm-loss-training/lm loss", n.loss, n.step, *vs, self.gigaflos())
            if self.loss_scale:
                out += _against("loss-scale/loss-scale", event.loss_scale, n.step, *vs)
            # Both as the iteration line prints them: DeepSpeed's engine reports no zeros (0, not None).
            if not event.step_skipped:
                out += _against("grad-norm/grad-norm", n.grad_norm, n.step, *vs)
                out += _against("num-zeros/num-zeros", 0.0, n.step, *vs)
            if self.timers:  # Timers.write: each timer's seconds per iteration, the ones the log prints
                out += [
                    (f"time/{k}-time", ms / 1e3, n.step) for k, ms in megatron_figures.step_timers_ms(job, n)
                ]
        if self.timers and n.step % self.run.log_interval == 0:
            per_s = event.samples_per_s
            figures = {
                "samples per second": per_s,
                "samples per second per replica": per_s / job.dp,
                "tokens per second": per_s * job.seq_len,
                "tokens per second per replica": per_s * job.seq_len / job.dp,
                "TFLOPs per gpu (estimated)": event.megatron_tflops,
            }
            out += _against("iteration-time/iteration-time", event.interval_s, n.step, *vs)
            out += [(f"iteration-time/{name}", value, n.step) for name, value in figures.items()]
        return out


def _against(tag: str, value: float, step: int, *axes: tuple[str, int]) -> list[Scalar]:
    """A Megatron scalar against the iteration, and its `{tag} vs {axis}` twins against the other axes."""
    return [(tag, float(value), step)] + [(f"{tag} vs {name}", float(value), x) for name, x in axes]


def _ppl(loss: float) -> float:
    """Megatron's validation perplexity: exp of the loss, capped at exp(20)."""
    return math.exp(min(20.0, loss))


class TitanTags:
    """torchtitan's MetricsProcessor.log and log_validation through its TensorBoardLogger."""

    def __init__(self, run: RunPlan, settings: Mapping[str, str], fixed: str | None):
        self.run, self.settings = run, settings
        self.fixed = fixed
        self.logdir: str | None = fixed
        # The registry form's lr_schedulers.get_metrics() names the optimizer; 0.2.x logs "lr".
        self.lr_tag = "lr/AdamW" if settings.get("titan.registry") else "lr"

    def scalars(self, event: Event, at: float) -> list[Scalar]:
        if isinstance(event, ModelBuilt) and self.fixed is None:
            # Dated when the logger is built, as its "TensorBoard logging enabled" line says.
            self.logdir = titan.tb_folder(self.settings, at)
            return []
        if isinstance(event, EvalDone) and self.settings.get("validation.enable", "").lower() in _TRUE:
            return [("validation_metrics/loss", event.loss, event.step)]
        if not isinstance(event, StepDone) or not event.logged:
            return []
        n, job = event.numbers, self.run.job
        capacity_gib = n.mem_gib / n.mem_pct * 100.0 if n.mem_pct > 0 else 0.0
        active_pct = 100.0 * n.mem_max_allocated_gib / capacity_gib if capacity_gib else 0.0
        figures = {
            "loss_metrics/global_avg_loss": n.loss,
            "loss_metrics/global_max_loss": n.loss,
            "grad_norm": n.grad_norm,
            "throughput(tps)": n.rank_tokens_per_s,
            "tflops": event.rank_tflops,
            "mfu(%)": titan.mfu_pct(job, event.rank_tflops),
            "time_metrics/end_to_end(s)": event.interval_s,
            "memory/max_active(GiB)": n.mem_max_allocated_gib,
            "memory/max_active(%)": active_pct,
            "memory/max_reserved(GiB)": n.mem_gib,
            "memory/max_reserved(%)": n.mem_pct,
            "memory/num_alloc_retries": 0.0,
            "memory/num_ooms": 0.0,
            "n_tokens_seen": n.tokens,
            self.lr_tag: n.lr,
        }
        return [(tag, float(value), n.step) for tag, value in figures.items()]


class FakerunTags:
    """fakerun's own curves, for --fake-tensorboard with a framework that writes none of its own."""

    def __init__(self, run: RunPlan, logdir: str):
        self.run = run
        self.logdir: str | None = logdir

    def scalars(self, event: Event, at: float) -> list[Scalar]:
        if isinstance(event, EvalDone):
            split = "eval" if event.split == "validation" else event.split
            return [(f"{split}/loss", event.loss, event.step), (f"{split}/ppl", event.ppl, event.step)]
        if not isinstance(event, StepDone) or not event.logged:
            return []
        n = event.numbers
        figures = {
            "train/loss": n.loss,
            "train/lr": n.lr,
            "train/grad_norm": n.grad_norm,
            "train/step_time_s": n.step_time_s,
            "train/tokens_per_s": n.tokens_per_s,
            "train/tflops_per_gpu": n.tflops_per_gpu,
            "train/mfu": n.mfu,
            "train/mem_reserved_gib": n.mem_reserved_gib,
        }
        return [(tag, float(value), n.step) for tag, value in figures.items()]


def tags_for(
    trainer: str, event: JobStarted, rank: int, host: str, at: float, fixed: str | None, files: bool
) -> Tags | None:
    """The writer rank `rank` runs for this job (None: it writes none): the framework's, where its arguments
    ask for one (and --fake-no-files is not given), or in `fixed` (--fake-tensorboard)."""
    settings = dict(event.settings)
    run, job = event.run, event.run.job
    if trainer == "hf":
        report_to = set(re.split(r"[\s,]+", settings.get("report_to", "").lower()))
        if (fixed or (files and report_to & {"tensorboard", "all"})) and rank == 0:
            return HfTags(run, settings, host, at, fixed)
    elif trainer in ("megatron", megatron_ds.MegatronDeepSpeedDialect.name):
        # Both build the writer on the last rank only (global_vars._set_tensorboard_writer).
        if (fixed or (files and settings.get("tensorboard_dir"))) and rank == job.world_size - 1:
            writer = MegatronTags if trainer == "megatron" else MegatronDsTags
            return writer(run, settings, fixed)
    elif trainer == "titan":
        asked = settings.get("metrics.enable_tensorboard", "").lower() in _TRUE
        if (fixed or (files and asked)) and rank == titan.metrics_rank(settings, job):
            return TitanTags(run, settings, fixed)
    elif fixed and rank == 0:
        return FakerunTags(run, fixed)
    return None


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


# The events a writer reads (its isinstance checks and case patterns): a rank that writes must build them.
RECORDED: frozenset[type[Event]] = frozenset(
    {JobStarted, ModelBuilt, TrainingStarted, StepDone, EvalDone, TrainingStopped, TrainingFinished}
)


class TensorBoard:
    """Writes one rank's scalars into event files through tensorboardX, job by job (--fake-loop)."""

    def __init__(self, trainer: str, rank: int, host: str, fixed: str | None, *, files: bool) -> None:
        self.trainer, self.rank, self.host, self.fixed, self.files = trainer, rank, host, fixed, files
        self.tags: Tags | None = None
        self.writer: tuple[Any, Any] | None = None  # tensorboardX's FileWriter and Summary
        self.missing = False  # tensorboardX is absent: warned once, nothing more is tried
        self._decided = False  # a JobStarted has said whether this rank writes

    def wants(self, kind: type[Event]) -> bool:
        """Whether events of `kind` may bring scalars on this rank: until its JobStarted chose no writer."""
        return kind in RECORDED and not self.missing and (self.tags is not None or not self._decided)

    def record(self, event: Event, at: float) -> None:
        """Writes the scalars `event` brings (opening the job's event file once its folder is known)."""
        if isinstance(event, JobStarted):
            self.close()
            self.tags = tags_for(self.trainer, event, self.rank, self.host, at, self.fixed, self.files)
            self._decided = True
        if self.tags is None or self.missing:
            return
        scalars = self.tags.scalars(event, at)
        if self.writer is None and self.tags.logdir is not None:
            self.writer = self._open(self.tags.logdir)
        if self.writer is not None and scalars:
            writer, summary = self.writer
            for tag, value, step in scalars:
                # A Summary of the tag as given: SummaryWriter.add_scalar would rewrite `lm loss` and `mfu(%)`
                # (torch.utils.tensorboard, which the frameworks use, keeps them).
                writer.add_summary(summary(value=[summary.Value(tag=tag, simple_value=value)]), step, at)
            # Flushed at once, so a TensorBoard reading the folder shows the step as the log does.
            writer.flush()
        if isinstance(event, TrainingFinished):
            self.close()

    def _open(self, logdir: str) -> tuple[Any, Any] | None:
        """tensorboardX's event file writer in `logdir` and its Summary message, None without the extra."""
        try:  # the extra, imported by the writing rank only
            from tensorboardX import FileWriter
            from tensorboardX.proto.summary_pb2 import Summary
        except ImportError:
            self.missing = True
            # In the launcher's notice format (a glog line), not a prefix no real job prints.
            print(notice(MISSING), file=sys.stderr, flush=True)
            return None
        # torch.utils.tensorboard's file name ends with the writer's pid and a counter.
        return FileWriter(logdir, filename_suffix=f".{os.getpid()}.0"), Summary

    def close(self) -> None:
        """Ends the current job's event file."""
        if self.writer is not None:
            self.writer[0].close()
        self.writer = None
