"""Hugging Face Trainer (transformers 4.50, an example script's logging): what a Trainer job prints."""

from __future__ import annotations

import datetime
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from fakerun.dialects.base import BarClose, BarDraw, HintRule, Line, Output, Seat, log_time, words
from fakerun.dialects.events import (
    CheckpointSaved,
    CheckpointSaving,
    DatasetLoading,
    DatasetReady,
    EvalDone,
    EvalProgress,
    EvalStarted,
    Event,
    JobStarted,
    ModelConfigured,
    ParallelismDecided,
    StepDone,
    TrainingFinished,
    TrainingStarted,
    TrainingStopped,
    WorkerStarted,
)
from fakerun.dialects.files import Artifact, Removal, SaveRequest
from fakerun.frameworks import hf_files, hf_results
from fakerun.render import bar
from fakerun.sim.run import ENDING_HF, RunPlan

# Options only HF Trainer scripts spell so (either spelling: HfArgumentParser accepts both).
HINTS = HintRule(
    script=re.compile(
        r"run_(clm|mlm|plm|fim|glue|qa|seq2seq|summarization|translation|ner|swag)|transformers"
    ),
    options=words(
        "model_name_or_path per_device_train_batch_size per_gpu_train_batch_size per_device_eval_batch_size "
        "gradient_accumulation_steps num_train_epochs lr_scheduler_type warmup_ratio deepspeed fsdp "
        "output_dir overwrite_output_dir do_train do_eval logging_steps save_steps save_strategy "
        "logging_strategy eval_strategy evaluation_strategy report_to model_max_length max_seq_length "
        "block_size dataset_name train_file save_total_limit logging_dir run_name gradient_checkpointing "
        "use_peft lora_r lora_alpha lora_dropout lora_target_modules"
    ),
    exact=frozenset({"seq_length"}),  # Megatron's is seq-length
    bool_words=True,
)

# transformers.utils.logging.enable_explicit_format(), which the example scripts (run_clm.py...) and
# LLaMA-Factory call: `[INFO|trainer.py:2409] 2025-03-06 12:04:09,913 >> ***** Running training *****`. The
# line numbers are transformers 4.50.0's, as its wheel's trainer.py has them (4.50.3's are the same; one
# version per job: REALISM.md, "a version pins a format"). Line 2414, skipped, is DataParallel's adjustment.
_BLOCK_LINES = (2409, 2410, 2411, 2412, 2415, 2416, 2417, 2418)
_COMPLETED_LINE = 2665
_SAVING_LINE = 3966  # Trainer._save
_CONFIG_LINE = 423
_GENERATION_CONFIG_LINE = 908
# evaluation_loop's `***** Running Evaluation *****`, `Num examples` and `Batch size` lines.
_EVAL_LINES = (4289, 4291, 4294)
DEFAULT_EVAL_BATCH = hf_results.DEFAULT_EVAL_BATCH
_DELETING_LINE = 4065  # _rotate_checkpoints
_DELETING_END_LINE = 2706  # train()'s last rotation under save_total_limit 1 with a best checkpoint
_LOAD_BEST_LINE = 2903  # _load_best_model
# TrainingArguments' default output_dir (transformers 4.50: optional, "trainer_output").
DEFAULT_OUTPUT_DIR = "trainer_output"


def explicit(at: float, source: str, line: int, message: str, level: str = "INFO") -> str:
    """A transformers logger line in the explicit format (it goes to stderr, the library handler's stream)."""
    return f"[{level}|{source}:{line}] {log_time(at)} >> {message}"


def trainer_lines(at: float, lines: Sequence[int], texts: Sequence[str]) -> list[Line]:
    """trainer.py's logger.info calls at these source lines, one message each, on stderr."""
    return [Line(explicit(at, "trainer.py", n, text), "stderr") for n, text in zip(lines, texts, strict=True)]


def script_time(at: float) -> str:
    """The example scripts' logging.basicConfig datefmt: `03/06/2025 12:04:09`."""
    return time.strftime("%m/%d/%Y %H:%M:%S", time.localtime(at))


def accumulated_loss(tr_loss: float, done: int, loss: float, grad_accum: int) -> float:
    """The Trainer's tr_loss after one more step of `loss`, `done` steps into the logging window: a NaN
    step's micro-batches each add tr_loss / (1 + done) in its place (logging_nan_inf_filter, a default)."""
    if math.isnan(loss):
        return tr_loss * (1.0 + 1.0 / (1 + done)) ** grad_accum
    return tr_loss + loss


@dataclass
class LossWindow:
    """The Trainer's tr_loss over its logging window, and the loss its log shows at the window's end."""

    tr_loss: float = 0.0
    steps: int = 0
    met_nan: bool = False

    def add(self, loss: float, grad_accum: int) -> None:
        """One more optimizer step of `loss`."""
        self.tr_loss = accumulated_loss(self.tr_loss, self.steps, loss, grad_accum)
        self.steps += 1
        self.met_nan = self.met_nan or math.isnan(loss)

    def take(self, last: float) -> float:
        """The logged loss, the window then starting over: its mean, or (the simulation's) the last step's
        `last` loss when no NaN step was filtered."""
        logged = self.tr_loss / self.steps if self.met_nan else last
        self.tr_loss, self.steps, self.met_nan = 0.0, 0, False
        return logged


def _shown(record: hf_results.Record) -> str:
    """ProgressCallback.on_log: the record without total_flos, its epoch rounded to 2, as a dict repr."""
    shown = {k: v for k, v in record.items() if k != "total_flos"}
    shown["epoch"] = round(shown["epoch"], 2)
    return repr(shown)


def log_dict(loss: float, grad_norm: float, lr: float, epoch: float) -> str:
    """The Trainer's logging_steps line: a dict repr (loss rounded to 4, an fp32 grad norm, epoch to 2)."""
    return _shown(hf_results.step_record(loss, grad_norm, lr, epoch))


def eval_dict(
    loss: float, runtime_s: float, samples: int, steps: int, epoch: float, accuracy: float | None = None
) -> str:
    """The Trainer's evaluation line (speed_metrics: runtime to 4 decimals, rates to 3)."""
    return _shown(hf_results.eval_metrics(loss, runtime_s, samples, steps, epoch, accuracy))


def peft_trainable(adapters: int, base: int) -> str:
    """PeftModel.print_trainable_parameters: the adapters count in all params (peft >= 0.10's format)."""
    total = base + adapters
    share = 100 * adapters / total
    return f"trainable params: {adapters:,d} || all params: {total:,d} || trainable%: {share:.4f}"


def _timedelta(secs: float) -> str:
    """trainer_pt_utils._secs2timedelta: `0:01:23.45`."""
    return f"{datetime.timedelta(seconds=int(secs))}.{int(abs(secs - int(secs)) * 100):02d}"


def metrics_block(split: str, metrics: dict[str, float | int]) -> list[str]:
    """Trainer.log_metrics (print, world process zero): `***** train metrics *****` and aligned rows."""
    shown: dict[str, str] = {}
    for key, value in metrics.items():
        if "_runtime" in key:
            shown[key] = _timedelta(float(value))
        elif key == "total_flos":
            shown[key] = f"{int(value) >> 30}GF"
        elif isinstance(value, float):
            shown[key] = str(round(value, 4))
        else:
            shown[key] = str(value)
    k_width = max(len(k) for k in shown)
    v_width = max(len(v) for v in shown.values())
    return [f"***** {split} metrics *****"] + [
        f"  {key: <{k_width}} = {shown[key]:>{v_width}}" for key in sorted(shown)
    ]


class HfDialect:
    """A Trainer job: the script's per-rank line, the training block, rank 0's bar, dicts and metrics."""

    name: ClassVar[str] = "hf"
    hints: ClassVar[HintRule] = HINTS
    grid: ClassVar[bool] = False  # the grid is fakerun's own: --fake-grid shows it
    # TrainingArguments.ddp_timeout's default, 1800 s, given to init_process_group (through accelerate).
    nccl_timeout_s: ClassVar[float] = 1800.0

    @staticmethod
    def artifacts(request: SaveRequest) -> Sequence[Artifact | Removal]:
        """The files of a Trainer job's saves: checkpoint-N/ under --output_dir, then save_model's."""
        return hf_files.artifacts(request)

    @classmethod
    def ending(cls, settings: Mapping[str, str]) -> tuple[str, bool]:
        """The Trainer's loop, then the example script's save and evaluation (sim/run.ENDING_HF)."""
        return ENDING_HF, False

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        # What the Trainer knows by the time it prints its block (a renderer remembers earlier events).
        self.output_dir = DEFAULT_OUTPUT_DIR
        self.params = 0
        self.micro_batch = self.grad_accum = self.global_batch = 0
        self.samples = 0
        self.run: RunPlan | None = None
        self.settings: dict[str, str] = {}
        self.epochs = 1
        self.fp16 = False
        self.bar = ""  # the bar as last drawn (tqdm.write clears this many columns, then redraws it)
        self.stopped = False
        self.epoch = 0.0
        self.eval_batch = DEFAULT_EVAL_BATCH
        # log_metrics("train")'s block, printed (stdout) once the script's save_model() is over.
        self.metrics: list[str] = []
        # tr_loss and the steps it sums since the last log, for a window that met a NaN step.
        self.window = LossWindow()

    def wants(self, kind: type[Event]) -> bool:
        """The events a Trainer job prints something for, on this rank."""
        if kind in (JobStarted, ModelConfigured, ParallelismDecided, DatasetReady, WorkerStarted):
            return True
        if kind in (TrainingStarted, TrainingStopped, EvalStarted):
            return self.seat.local_rank == 0
        return self.seat.rank == 0 and kind in (
            DatasetLoading,
            StepDone,
            EvalProgress,
            EvalDone,
            CheckpointSaving,
            CheckpointSaved,
            TrainingFinished,
        )

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """The lines of `event` on this rank."""
        seat = self.seat
        match event:
            case JobStarted():
                settings = dict(event.settings)
                self.run, self.settings = event.run, settings
                self.output_dir = settings.get("output_dir", DEFAULT_OUTPUT_DIR).rstrip("/")
                self.eval_batch = int(settings.get("per_device_eval_batch_size", DEFAULT_EVAL_BATCH))
                self.epochs = event.run.epochs
                self.stopped = False
                # run_clm.py's `16-bits training: {training_args.fp16}`: --fp16 only (--bf16 prints False).
                self.fp16 = event.run.job.precision == "fp16"
            case WorkerStarted():
                # run_clm.py and its siblings warn once per process, on stdout (their basicConfig handler).
                return [
                    Line(
                        f"{script_time(at)} - WARNING - __main__ - Process rank: {event.local_rank}, device: "
                        f"cuda:{event.local_rank}, n_gpu: 1, distributed training: {event.world_size > 1}, "
                        f"16-bits training: {self.fp16}"
                    )
                ]
            case ModelConfigured():
                self.params = event.adapter_params or event.model.params
                if event.adapter_params:
                    # get_peft_model in every process, and the script's print_trainable_parameters().
                    return [Line(peft_trainable(event.adapter_params, event.model.params))]
            case ParallelismDecided():
                self.micro_batch, self.grad_accum = event.micro_batch, event.grad_accum
                self.global_batch = event.global_batch
            case DatasetReady():
                self.samples = event.samples
            case DatasetLoading() if seat.rank == 0:
                text = bar.meter(
                    event.shard, event.shards, event.elapsed_s, prefix="Loading dataset shards", ncols=None
                )
                return [BarDraw(text) if event.shard < event.shards else BarClose(text)]
            case TrainingStarted() if seat.local_rank == 0:
                return self._block(event, at)
            case StepDone() if seat.rank == 0:
                return self._step(event)
            case EvalStarted() if seat.local_rank == 0:
                return self._eval_start(event, at)
            case EvalProgress() if seat.rank == 0:
                return [self._eval_bar(event.batch, event.batches, event.elapsed_s)]
            case EvalDone() if seat.rank == 0:
                return self._eval(event)
            case CheckpointSaving() if seat.rank == 0:
                return self._saving(event, at)
            case CheckpointSaved() if seat.rank == 0 and self.stopped:
                # The script's save_model() is over: log_metrics("train") prints its block.
                return self._flush_metrics()
            case CheckpointSaved() if seat.rank == 0 and self.run is not None:
                paths = hf_files.rotated(self.run, self.settings, event.step)
                return self._deleting(paths, _DELETING_LINE, at)
            case TrainingStopped() if seat.local_rank == 0:
                return self._stopped(event, at)
            case TrainingFinished() if seat.rank == 0:
                return self._flush_metrics()
        return ()

    # -- pieces --------------------------------------------------------------------------------------------

    def _block(self, event: TrainingStarted, at: float) -> list[Output]:
        """`***** Running training *****` and its figures (logger.info on each node's main process)."""
        texts = (
            "***** Running training *****",
            f"  Num examples = {self.samples:,}",
            f"  Num Epochs = {self.epochs:,}",
            f"  Instantaneous batch size per device = {self.micro_batch:,}",
            f"  Total train batch size (w. parallel, distributed & accumulation) = {self.global_batch:,}",
            f"  Gradient Accumulation steps = {self.grad_accum}",
            f"  Total optimization steps = {event.total_steps:,}",
            f"  Number of trainable parameters = {self.params:,}",
        )
        out: list[Output] = list(trainer_lines(at, _BLOCK_LINES, texts))
        if self.seat.rank == 0:
            # ProgressCallback.on_train_begin: tqdm(total=max_steps) draws its empty bar at once.
            self.bar = bar.meter(
                event.first_step - 1,
                event.total_steps,
                0.0,
                ncols=self.seat.bar_columns,
                initial=event.first_step - 1,
            )
            out.append(BarDraw(self.bar))
        return out

    def _write(self, text: str) -> list[Output]:
        """tqdm.write: the bar blanked on its stream (`\\r`, blanks, `\\r`), the text on stdout, the bar.

        tqdm.write prints to sys.stdout unless told otherwise, while the bar lives on stderr: under `2>&1`
        the bytes read `\\r<blanks>\\r{...}` as in reallog 61, and `> log` keeps the dicts apart from the bar.
        """
        return [BarDraw(" " * len(self.bar) + "\r"), Line(text), BarDraw(self.bar, forced=True)]

    def _step(self, event: StepDone) -> list[Output]:
        n = event.numbers
        job = event.run.job
        self.epoch = event.epoch
        self.bar = bar.meter(
            n.step,
            job.total_steps,
            event.elapsed_s,
            rate=bar.ema_rate(event.recent_s),
            ncols=self.seat.bar_columns,
            initial=job.start_step,
        )
        out: list[Output] = [BarDraw(self.bar)]
        # DefaultFlowCallback: a log every logging_steps (no first-step log unless logging_first_step).
        if n.step == event.run.first_step:
            self.window = LossWindow()
        self.window.add(n.loss, job.grad_accum)
        if n.step % event.run.log_interval == 0:
            out += self._write(log_dict(self.window.take(n.loss), n.grad_norm, n.lr, event.epoch))
        return out

    def _eval_samples(self, batches: int) -> int:
        """The evaluation set's examples: `batches` per rank of the per-device eval batch, on every rank."""
        return batches * self.eval_batch * self.seat.world_size

    def _eval_start(self, event: EvalStarted, at: float) -> list[Output]:
        """evaluation_loop's block on each node's main process (its INFO level), then rank 0's bar; after
        training, run_clm.py's `*** Evaluate ***` first (its own logger, INFO on the same processes)."""
        out: list[Output] = []
        if self.stopped:
            out.append(Line(f"{script_time(at)} - INFO - __main__ - *** Evaluate ***"))
        texts = (
            "\n***** Running Evaluation *****",
            f"  Num examples = {self._eval_samples(event.iters)}",  # no thousands separator here
            f"  Batch size = {self.eval_batch}",
        )
        out += trainer_lines(at, _EVAL_LINES, texts)
        if self.seat.rank == 0:
            out.append(self._eval_bar(0, event.iters, 0.0))
        return out

    def _flush_metrics(self) -> list[Output]:
        """log_metrics' blocks not printed yet (world process zero's `print`, on stdout)."""
        lines, self.metrics = self.metrics, []
        return [Line(text) for text in lines]

    def _eval_bar(self, batch: int, batches: int, elapsed_s: float) -> BarDraw:
        """ProgressCallback's prediction bar: below the training bar (tqdm's next free position) while it is
        open, alone on its line after training."""
        text = bar.meter(batch, batches, elapsed_s, ncols=self.seat.bar_columns)
        return BarDraw(text, position=0 if self.stopped else 1)

    def _eval(self, event: EvalDone) -> list[Output]:
        # evaluate()'s speed_metrics: num_samples is the evaluation set's length, num_steps its batches.
        samples = self._eval_samples(event.iters)
        seq_len = self.run.job.seq_len if self.run is not None else 0
        accuracy = hf_results.eval_accuracy(self.settings, event.loss, samples, seq_len)
        figures = (event.loss, event.seconds, samples, event.iters, event.epoch, accuracy)
        if not self.stopped:
            # on_evaluate closes the bar (leave=False: blanked), then on_log writes the dict.
            out: list[Output] = [BarClose(position=1)]
            return out + self._write(eval_dict(*figures))
        # The script's trainer.evaluate() after training: its bar is left (leave=True as no training bar is
        # open); no dict, as on_log writes only through the training bar; log_metrics prints the block.
        evaluated = hf_results.eval_metrics(*figures)
        self.metrics += metrics_block("eval", hf_results.eval_results(evaluated, samples))
        out = [BarClose()]
        return out + self._flush_metrics()

    def _saving(self, event: CheckpointSaving, at: float) -> list[Output]:
        """Trainer._save: glued to the bar on stderr, as a logger line written while tqdm's line is open."""
        path = self.output_dir if self.stopped else f"{self.output_dir}/checkpoint-{event.step}"
        return [
            Line(explicit(at, "trainer.py", _SAVING_LINE, f"Saving model checkpoint to {path}"), "stderr"),
            Line(
                explicit(
                    at, "configuration_utils.py", _CONFIG_LINE, f"Configuration saved in {path}/config.json"
                ),
                "stderr",
            ),
            Line(
                explicit(
                    at,
                    "configuration_utils.py",
                    _GENERATION_CONFIG_LINE,
                    f"Configuration saved in {path}/generation_config.json",
                ),
                "stderr",
            ),
        ]

    def _stopped(self, event: TrainingStopped, at: float) -> list[Output]:
        """`Training completed.` on each node's main process; rank 0's final dict, bar close and metrics."""
        self.stopped = True
        message = "\n\nTraining completed. Do not forget to share your model on huggingface.co/models =)\n\n"
        out: list[Output] = [Line(explicit(at, "trainer.py", _COMPLETED_LINE, message), "stderr")]
        best = self._best(event.step)
        if best is not None:
            # load_best_model_at_end: _load_best_model, on the processes that log INFO, after the barrier.
            text = f"Loading best model from {best[0]} (score: {best[1]})."
            out.append(Line(explicit(at, "trainer.py", _LOAD_BEST_LINE, text), "stderr"))
        if self.seat.rank != 0:
            return out
        record = hf_results.train_record(event, self.epoch)
        out += self._write(_shown(record))
        out.append(BarClose())
        if self.run is not None:
            # train()'s own last rotation (save_total_limit 1, a best checkpoint kept), after its final log.
            paths = hf_files.ended_rotation(self.run, self.settings, event.step)
            out += self._deleting(paths, _DELETING_END_LINE, at)
        self.metrics = metrics_block("train", hf_results.train_results(record, self.samples))
        return out

    def _best(self, step: int) -> tuple[str, float] | None:
        """The checkpoint and score train() loads back at its end under --load_best_model_at_end."""
        if self.run is None or not hf_files.loads_best(self.settings):
            return None
        return hf_files.best_checkpoint(self.run, self.settings, step)

    def _deleting(self, paths: Sequence[str], line: int, at: float) -> list[Output]:
        """The Trainer's `Deleting older checkpoint [...] due to args.save_total_limit` lines (stderr)."""
        text = "Deleting older checkpoint [{}] due to args.save_total_limit"
        return [Line(explicit(at, "trainer.py", line, text.format(p)), "stderr") for p in paths]
