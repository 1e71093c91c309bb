"""fakerun's own style: structlog events on every rank, rank 0's tqdm bar, the GPU grid and the summary."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import structlog
from structlog.typing import EventDict, Processor

from fakerun.dialects import files
from fakerun.dialects.base import (
    BarClose,
    BarDraw,
    HintRule,
    Line,
    Output,
    Seat,
    count,
    gigabytes,
    iso_time,
    log_time,
)
from fakerun.dialects.events import (
    CheckpointLoaded,
    CheckpointLoading,
    CheckpointSaved,
    CheckpointSaving,
    DatasetLoading,
    DatasetReady,
    DeviceSelected,
    EarlyStoppingCheck,
    EpochDone,
    EvalDone,
    EvalStarted,
    Event,
    GradientSync,
    JobStarted,
    LossSpike,
    MemoryReport,
    ModelBuilt,
    ModelConfigured,
    ModelExported,
    NanLoss,
    ParallelismDecided,
    ProcessGroupInitializing,
    ProcessGroupReady,
    RunSummary,
    SlowPause,
    StepDone,
    Straggler,
    TokenizerLoaded,
    TrainingFinished,
    TrainingStarted,
    TrainingStopped,
    WeightsLoading,
    WorkerStarted,
)
from fakerun.dialects.files import Artifact, SaveRequest
from fakerun.frameworks import hf_files
from fakerun.names import LOG_LEVELS
from fakerun.render import bar
from fakerun.render.summary import summary_table
from fakerun.sim import checkpoint
from fakerun.sim.run import RunPlan

_MIB = 1024.0**2

# --fake-log-level's choices: the levels fakerun's own events are logged at.
LEVELS: dict[str, int] = {name: getattr(logging, name.upper()) for name in LOG_LEVELS}

# Events only rank 0 prints (a real script guards its logging with `if rank == 0`).
_RANK0: frozenset[type[Event]] = frozenset(
    {
        JobStarted,
        ModelConfigured,
        ParallelismDecided,
        TokenizerLoaded,
        DatasetLoading,
        DatasetReady,
        CheckpointLoading,
        CheckpointLoaded,
        WeightsLoading,
        TrainingStarted,
        StepDone,
        GradientSync,
        NanLoss,
        LossSpike,
        Straggler,
        TrainingStopped,
        EvalStarted,
        EvalDone,
        EarlyStoppingCheck,
        CheckpointSaving,
        CheckpointSaved,
        SlowPause,
        EpochDone,
        ModelExported,
        RunSummary,
    }
)
# Events every rank prints.
_EVERY_RANK: frozenset[type[Event]] = frozenset(
    {
        WorkerStarted,
        DeviceSelected,
        ProcessGroupInitializing,
        ProcessGroupReady,
        ModelBuilt,
        MemoryReport,
        TrainingFinished,
    }
)


@dataclass(frozen=True)
class Shown:
    """A field as the console shows it (`42.29%`, `17.3 GB`), and the typed fields json and logfmt carry
    in its place (`mfu=0.4229`, `size_bytes=17301504000`): machines read numbers, people read units."""

    text: str
    fields: Mapping[str, object]


def shown(text: str, **fields: object) -> Shown:
    """`text` on the console, `fields` (in this order, in the field's place) in json and logfmt."""
    return Shown(text, fields)


def _human(_logger: object, _name: str, record: EventDict) -> EventDict:
    """structlog processor: each Shown field as its text (the console's format)."""
    return {k: v.text if isinstance(v, Shown) else v for k, v in record.items()}


def _typed(_logger: object, _name: str, record: EventDict) -> EventDict:
    """structlog processor: each Shown field replaced by its typed fields (json's and logfmt's formats)."""
    out: EventDict = {}
    for key, value in record.items():
        if isinstance(value, Shown):
            out.update(value.fields)
        else:
            out[key] = value
    return out


def _finite(_logger: object, _name: str, record: EventDict) -> EventDict:
    """structlog processor: a NaN or infinite float as null, since JSON has no such numbers (`jq` rejects
    Python's `NaN`)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def _stamped(stamp: Callable[[float], str]) -> Processor:
    """structlog processor: the event's moment on the job's clock (`_at`) as the `timestamp` field, last."""

    def process(_logger: object, _name: str, record: EventDict) -> EventDict:
        at = record.pop("_at")
        record["timestamp"] = stamp(at)
        return record

    return process


class _Lines:
    """The logger at the end of structlog's chain: hands the rendered line back to the caller, which
    decides the stream and the moment it is written (the printer), instead of writing it."""

    def msg(self, message: str) -> str:
        return message

    debug = info = warning = error = msg


class StructuredLog:
    """structlog's output as a logger bound to `rank=N` writes it, rendered from an event's moment: a
    filtering bound logger at `level` over add_log_level, the time and the format's renderer."""

    def __init__(self, log_format: str, rank: int, *, color: bool, level: str = "info") -> None:
        processors: list[Processor] = [structlog.processors.add_log_level]
        renderer: Processor
        if log_format == "json":
            stamp = iso_time
            processors += [_typed, _finite]
            renderer = structlog.processors.JSONRenderer()
        elif log_format == "logfmt":
            stamp = iso_time
            processors.append(_typed)
            # bool_as_flag=False: `straggler=true`, not a bare `straggler`, so that every field is key=value.
            renderer = structlog.processors.LogfmtRenderer(
                key_order=["timestamp", "level", "event", "rank"], bool_as_flag=False
            )
        else:
            stamp = log_time
            processors.append(_human)
            # The event's padding, positionally: structlog < 25 names it pad_event, later ones pad_event_to.
            renderer = structlog.dev.ConsoleRenderer(28, colors=color, sort_keys=False)
        processors += [_stamped(stamp), renderer]
        self.logger: structlog.typing.FilteringBoundLogger = structlog.wrap_logger(
            _Lines(),
            processors=processors,
            wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        ).bind(rank=rank)

    def enabled(self, level: str) -> bool:
        """Whether events of `level` are shown (--fake-log-level)."""
        return self.logger.is_enabled_for(LEVELS[level])

    def line(self, level: str, event: str, at: float, **fields: Any) -> Line | None:
        """One event line (None below the log level): the bound rank, the fields in order, then the event,
        level and time."""
        text = getattr(self.logger, level)(event, **fields, _at=at)
        return None if text is None else Line(text)


class FakerunDialect:
    """fakerun's own log: what each phase of the rank does, as structured events (console, json or logfmt)."""

    name: ClassVar[str] = "fakerun"
    hints: ClassVar[HintRule] = HintRule()  # the default: chosen when no framework's arguments are recognised
    grid: ClassVar[bool] = True

    @staticmethod
    def artifacts(request: SaveRequest) -> Sequence[Artifact]:
        """The files of the saves this log reports: a distributed checkpoint per save, the final export."""
        if request.kind == "checkpoint":
            return files.distcp(checkpoint.checkpoint_dir(request.step), request)
        # Its export is the bf16 model its log reports (checkpoint.export_files' sizes).
        return hf_files.save_pretrained(checkpoint.export_dir(request.run.job.model), request, hf_files.BF16)

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        self.log = StructuredLog(seat.log_format, seat.rank, color=seat.color, level=seat.log_level)
        self.runs = 0  # runs begun by this process (--fake-loop runs one after another)
        self.run: RunPlan | None = None  # the current run's plan
        # Rank 0's bars over a run of several epochs, as nested tqdm bars: the epochs' (position 0, open since
        # the run's first step, drawn from the job's time) over the current epoch's steps (position 1).
        self.outer_open = False
        self.outer_t0 = 0.0  # the job's time when the run's first step began
        self.epoch_t0 = 0.0  # the run's training time (StepDone.elapsed_s) when this epoch's first step began

    def wants(self, kind: type[Event]) -> bool:
        """Rank 0 prints the run's events at the log level; the other ranks their own start-up and end."""
        if kind is GradientSync and not self.log.enabled("debug"):
            return False  # the only debug event: not even built below --fake-log-level debug
        return kind in _EVERY_RANK or (kind in _RANK0 and self.seat.rank == 0)

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """The lines of `event` on this rank (the ones at or above the log level)."""
        if not self.wants(type(event)):
            return ()
        return tuple(out for out in self.outputs(event, at) if out is not None)

    def outputs(self, event: Event, at: float) -> Sequence[Output | None]:
        """The lines of `event`, None in place of an event line below the log level."""
        info = self.log.line
        match event:
            case JobStarted():
                self.runs += 1
                self.run = event.run
                self.outer_open = False
                if event.first:
                    return ()
                # --fake-loop: the script's outer loop starts training again, from scratch, with a new seed.
                return [
                    info(
                        "info",
                        "restarting training from scratch",
                        at,
                        run=self.runs,
                        seed=event.run.job.seed,
                        steps=event.run.steps,
                    )
                ]
            case WorkerStarted():
                return [
                    info(
                        "info",
                        "worker started",
                        at,
                        host=event.host,
                        local_rank=event.local_rank,
                        world_size=event.world_size,
                        pid=event.pid,
                    )
                ]
            case DeviceSelected():
                return [
                    info(
                        "info",
                        "cuda device",
                        at,
                        device=f"cuda:{event.index}",
                        name=event.name,
                        memory_gib=round(event.memory_mib / 1024, 1),
                        bus_id=event.bus_id,
                    )
                ]
            case ProcessGroupInitializing():
                return [
                    info(
                        "info",
                        "initializing process group",
                        at,
                        backend=event.backend,
                        world_size=event.world_size,
                    )
                ]
            case ProcessGroupReady():
                return [
                    info(
                        "info",
                        "process group initialized",
                        at,
                        tp_rank=event.tp_rank,
                        dp_rank=event.dp_rank,
                        pp_rank=event.pp_rank,
                    )
                ]
            case ModelConfigured():
                m = event.model
                return [
                    info(
                        "info",
                        "model config",
                        at,
                        model=m.hf_name or m.display_name,
                        params=shown(count(m.params), params=m.params),
                        layers=m.layers,
                        hidden=m.hidden,
                        heads=m.heads,
                        kv_heads=m.kv_heads,
                        vocab=m.vocab,
                        seq_len=event.seq_len,
                    )
                ]
            case ParallelismDecided():
                return [
                    info(
                        "info",
                        "parallelism",
                        at,
                        tp=event.tp,
                        pp=event.pp,
                        dp=event.dp,
                        sharding=event.sharding,
                        micro_batch=event.micro_batch,
                        grad_accum=event.grad_accum,
                        global_batch=event.global_batch,
                        tokens_per_step=event.tokens_per_step,
                    )
                ]
            case TokenizerLoaded():
                return [info("info", "tokenizer loaded", at, vocab_size=event.vocab_size)]
            case DatasetLoading():
                return self.dataset_bar(event)
            case DatasetReady():
                return [
                    info(
                        "info",
                        "dataset ready",
                        at,
                        tokens=shown(count(event.tokens), tokens=event.tokens),
                        samples=event.samples,
                        epochs=event.epochs,
                        steps_per_epoch=event.steps_per_epoch,
                    )
                ]
            case ModelBuilt():
                return [
                    info(
                        "info",
                        "model initialized",
                        at,
                        dtype=event.dtype,
                        params_on_rank=shown(
                            count(event.params_on_rank), params_on_rank=event.params_on_rank
                        ),
                        layers_on_rank=event.layers_on_rank,
                    )
                ]
            case CheckpointLoading():
                return [info("info", "loading checkpoint", at, path=event.path, size=_size(event.nbytes))]
            case CheckpointLoaded():
                return [
                    info(
                        "info",
                        "resumed from checkpoint",
                        at,
                        path=event.path,
                        step=event.step,
                        tokens=shown(count(event.tokens), tokens=event.tokens),
                        loss=round(event.loss, 4),
                        lr=shown(f"{event.lr:.3e}", lr=event.lr),
                        seconds=round(event.seconds, 1),
                    )
                ]
            case WeightsLoading():
                return self.shards_bar(event)
            case TrainingStarted():
                return [
                    info(
                        "info",
                        "starting training",
                        at,
                        first_step=event.first_step,
                        last_step=event.last_step,
                        total_steps=event.total_steps,
                        warmup_steps=event.warmup_steps,
                        lr=event.lr,
                        schedule=event.schedule,
                    )
                ]
            case StepDone():
                out: list[Output | None] = list(self.step_bars(event, at))
                if event.logged:
                    out.append(self.train_line(event, at))
                return out
            case MemoryReport():
                return [
                    info(
                        "info",
                        "memory after first step",
                        at,
                        allocated_mib=round(event.allocated / _MIB, 1),
                        max_allocated_mib=round(event.max_allocated / _MIB, 1),
                        reserved_mib=round(event.reserved / _MIB, 1),
                        max_reserved_mib=round(event.max_reserved / _MIB, 1),
                    )
                ]
            case GradientSync():
                return [
                    info(
                        "debug",
                        "gradient sync",
                        at,
                        op=event.op,
                        buckets=event.buckets,
                        size_mb=round(event.nbytes / 1e6, 1),
                        ranks=event.ranks,
                        algo=event.algo,
                        time_ms=round(event.time_ms, 2),
                        busbw_gbs=round(event.busbw_gbs, 1),
                    )
                ]
            case NanLoss():
                return [
                    info(
                        "warning",
                        "nan loss detected, skipping optimizer step",
                        at,
                        step=event.step,
                        grad_norm=math.nan,
                    )
                ]
            case LossSpike():
                return [
                    info(
                        "warning",
                        "loss spike",
                        at,
                        step=event.step,
                        loss=round(event.loss, 4),
                        grad_norm=round(event.grad_norm, 3),
                    )
                ]
            case Straggler():
                return [
                    info(
                        "warning",
                        "straggler detected",
                        at,
                        step=event.step,
                        slow_rank=event.slow_rank,
                        host=event.host,
                        step_time_s=round(event.step_time_s, 3),
                        mfu=shown(f"{100 * event.mfu:.1f}%", mfu=round(event.mfu, 4)),
                    )
                ]
            case TrainingStopped():
                stopping = info("info", "stopping", at, step=event.step, reason=event.reason)
                return [*self.close_bars(event.step, at), stopping]
            case EvalStarted():
                return [info("info", "evaluating", at, step=event.step, iters=event.iters)]
            case EvalDone():
                return [self.validation_line(event, at)]
            case EarlyStoppingCheck():
                return [self.patience_line(event, at)]
            case EpochDone():
                return [*self.epoch_bars(event, at), self.epoch_line(event, at)]
            case SlowPause():
                return [self.slow_pause_line(event, at)]
            case CheckpointSaving():
                return [
                    info(
                        "info", "saving checkpoint", at, step=event.step, path=event.path, format=event.format
                    )
                ]
            case CheckpointSaved():
                return [
                    info(
                        "info",
                        "checkpoint saved",
                        at,
                        step=event.step,
                        path=event.path,
                        size=_size(event.nbytes),
                        seconds=round(event.seconds, 1),
                        bandwidth_gbs=round(event.bandwidth_gbs, 2),
                    )
                ]
            case ModelExported():
                lines = [info("info", "exporting model", at, path=event.path, format=event.format)]
                for f in event.files:
                    size = (
                        _size(f.nbytes) if f.nbytes >= 1e8 else shown(f"{f.nbytes:,} B", size_bytes=f.nbytes)
                    )
                    lines.append(info("info", "wrote", at, file=f"{event.path}/{f.name}", size=size))
                return lines
            case RunSummary():
                # On the job's clock, as every timestamp of the run (real seconds times the speed).
                wall = event.wall_s * event.speed
                complete = info(
                    "info",
                    "training complete",
                    at,
                    steps=event.last_step - event.first_step + 1,
                    tokens=shown(count(event.tokens), tokens=event.tokens),
                    wall_time=shown(f"{wall:.1f}s", wall_time_s=round(wall, 1)),
                    final_loss=round(event.final_loss, 4),
                )
                if self.seat.log_format != "console":
                    # Machines get the table's figures as one event of numbers, not as boxed text.
                    return [complete, info("info", "training summary", at, **summary_fields(event))]
                table = summary_table("Training summary", summary_rows(event), width=self.seat.width)
                return [complete, *(Line(text) for text in table)]
            case TrainingFinished():
                return [info("info", "training finished", at, step=event.step)]
        return ()

    # -- pieces other dialects reuse ----------------------------------------------------------------------

    def dataset_bar(self, event: DatasetLoading) -> list[Output]:
        """`Loading dataset shards: 100%|...| 64/64`: the bar data loaders draw while mapping shards."""
        text = bar.meter(
            event.shard,
            event.shards,
            event.elapsed_s,
            prefix="Loading dataset shards",
            ncols=self.seat.bar_columns,
        )
        return [BarDraw(text) if event.shard < event.shards else BarClose(text)]

    def shards_bar(self, event: WeightsLoading) -> list[Output]:
        """`Loading checkpoint shards: 100%|...| 4/4`: transformers' bar while it reads safetensors shards."""
        text = bar.meter(
            event.shard,
            event.shards,
            event.elapsed_s,
            prefix="Loading checkpoint shards",
            ncols=self.seat.bar_columns,
        )
        return [BarDraw(text) if event.shard < event.shards else BarClose(text)]

    def step_bar(self, event: StepDone) -> Output:
        """Rank 0's tqdm bar over the run's steps: epoch, loss, lr and tokens/s in its postfix."""
        n = event.numbers
        run = event.run
        ncols = self.seat.bar_columns
        return BarDraw(
            bar.meter(
                n.step,
                run.job.total_steps,
                event.elapsed_s,
                prefix=f"Epoch {run.epoch_of(n.step)}/{run.epochs}",
                postfix=bar.train_postfix(n.loss, n.lr, n.tokens_per_s, width=ncols),
                rate=bar.ema_rate(event.recent_s),
                ncols=ncols,
                initial=run.job.start_step,
            )
        )

    def step_bars(self, event: StepDone, at: float) -> list[Output]:
        """One bar over the run, or with several epochs the epochs' bar over the current epoch's steps."""
        run = event.run
        if run.epochs <= 1:
            return [self.step_bar(event)]
        n = event.numbers
        epoch = run.epoch_of(n.step)
        before = (epoch - 1) * run.steps_per_epoch  # steps of the earlier epochs
        out: list[Output] = []
        if n.step == run.first_step or n.step == before + 1:
            self.epoch_t0 = event.elapsed_s - n.step_time_s
        if not self.outer_open:
            self.outer_open = True
            self.outer_t0 = at - n.step_time_s
            # Drawn as tqdm draws it when the loop over epochs begins, before the first step.
            out.append(BarDraw(self.epochs_meter(run, epoch - 1, self.outer_t0)))
        ncols = self.seat.bar_columns
        inner = bar.meter(
            n.step - before,
            min(run.steps_per_epoch, run.job.total_steps - before),
            event.elapsed_s - self.epoch_t0,
            prefix=f"Epoch {epoch}/{run.epochs}",
            postfix=bar.train_postfix(n.loss, n.lr, n.tokens_per_s, width=ncols),
            rate=bar.ema_rate(event.recent_s),
            ncols=ncols,
            initial=max(0, run.first_step - 1 - before),
        )
        out.append(BarDraw(inner, position=1))
        return out

    def epochs_meter(self, run: RunPlan, done: int, at: float) -> str:
        """The outer bar: epochs done of the run's, over the job's time since its first step."""
        return bar.meter(
            done,
            run.epochs,
            max(0.0, at - self.outer_t0),
            prefix="Training",
            unit="epoch",
            ncols=self.seat.bar_columns,
            initial=run.epoch_of(run.first_step) - 1,
        )

    def epoch_bars(self, event: EpochDone, at: float) -> list[Output]:
        """At an epoch's end: its steps' bar is cleared (leave=False) and the epochs' bar counts one more."""
        if not self.outer_open or self.run is None:
            return []  # the run's bars closed when training stopped, the last epoch's count with them
        return [BarClose(position=1), BarDraw(self.epochs_meter(self.run, event.epoch, at))]

    def close_bars(self, step: int, at: float) -> list[Output]:
        """tqdm.close() of the run's bars when training stops: the nested one blanked, the outer one left
        with the epochs done (the one `step` ends included)."""
        run = self.run
        if not self.outer_open or run is None:
            return [BarClose()]
        self.outer_open = False
        ends = step % run.steps_per_epoch == 0 or step >= run.job.total_steps
        done = run.epoch_of(step) - (0 if ends else 1)
        return [BarClose(position=1), BarClose(self.epochs_meter(run, done, at))]

    def epoch_line(self, event: EpochDone, at: float) -> Line | None:
        """The `epoch complete` event: the epoch's mean training loss, its validation, tokens and time."""
        fields: dict[str, Any] = {
            "epoch": shown(f"{event.epoch}/{event.epochs}", epoch=event.epoch, epochs=event.epochs),
            "step": event.step,
            "train_loss": round(event.train_loss, 4),
        }
        if not math.isnan(event.val_loss):
            fields["val_loss"] = round(event.val_loss, 4)
        fields["tokens"] = shown(count(event.tokens), tokens=event.tokens)
        fields["seconds"] = round(event.seconds, 1)
        return self.log.line("info", "epoch complete", at, **fields)

    def slow_pause_line(self, event: SlowPause, at: float) -> Line | None:
        """A warning about an evaluation or a checkpoint save that took far longer than usual."""
        if event.phase == "eval":
            return self.log.line(
                "warning",
                "evaluation slower than usual",
                at,
                step=event.step,
                seconds=round(event.seconds, 1),
                usual_s=round(event.usual_s, 1),
                train_steps=round(event.train_steps, 1),
            )
        return self.log.line(
            "warning",
            "checkpoint save slower than usual",
            at,
            step=event.step,
            seconds=round(event.seconds, 1),
            usual_s=round(event.usual_s, 1),
        )

    def train_line(self, event: StepDone, at: float) -> Line | None:
        """The periodic `train` event with the step's figures."""
        n = event.numbers
        return self.log.line(
            "info",
            "train",
            at,
            step=n.step,
            loss=round(n.loss, 4),
            ppl=round(n.ppl, 2),
            lr=shown(f"{n.lr:.4e}", lr=n.lr),
            grad_norm=round(n.grad_norm, 4),
            tokens_per_s=round(n.tokens_per_s),
            tflops=round(n.tflops_per_gpu, 1),
            mfu=shown(f"{100 * n.mfu:.2f}%", mfu=round(n.mfu, 4)),
            step_time_s=round(n.step_time_s, 3),
            memory_gib=round(n.mem_gib, 2),
        )

    def patience_line(self, event: EarlyStoppingCheck, at: float) -> Line | None:
        """The early-stopping counter after a validation; the line that stops the run when it runs out."""
        if event.strikes >= event.patience:
            return self.log.line(
                "warning",
                "early stopping: no improvement, stopping training",
                at,
                step=event.step,
                val_loss=round(event.val_loss, 4),
                best_val_loss=round(event.best, 4),
                best_step=event.best_step,
                patience=_patience(event.strikes, event.patience),
            )
        if event.strikes == 0:
            return self.log.line(
                "info",
                "early stopping: val_loss improved",
                at,
                step=event.step,
                best_val_loss=round(event.best, 4),
                patience=_patience(0, event.patience),
            )
        return self.log.line(
            "info",
            "early stopping: no improvement",
            at,
            step=event.step,
            val_loss=round(event.val_loss, 4),
            best_val_loss=round(event.best, 4),
            best_step=event.best_step,
            patience=_patience(event.strikes, event.patience),
        )

    def validation_line(self, event: EvalDone, at: float) -> Line | None:
        """The `validation` event after an evaluation."""
        return self.log.line(
            "info",
            "validation",
            at,
            step=event.step,
            val_loss=round(event.loss, 4),
            val_ppl=round(event.ppl, 2),
            seconds=round(event.seconds, 1),
        )


def _size(nbytes: int) -> Shown:
    """A size: `17.3 GB` on the console, `size_bytes=17301504000` for machines."""
    return shown(gigabytes(nbytes), size_bytes=nbytes)


def _patience(strikes: int, patience: int) -> Shown:
    """The early-stopping counter: `2/5` on the console, `strikes=2 patience=5` for machines."""
    return shown(f"{strikes}/{patience}", strikes=strikes, patience=patience)


def summary_fields(s: RunSummary) -> dict[str, object]:
    """The figures of fakerun's end-of-run table as typed fields (json and logfmt)."""
    return {
        "model": s.model.display_name,
        "params": s.model.params,
        "gpus": s.world_size,
        "gpu_name": s.gpu_name,
        "nnodes": s.nnodes,
        "nproc_per_node": s.nproc_per_node,
        "tp": s.tp,
        "pp": s.pp,
        "dp": s.dp,
        "sharding": s.sharding,
        "first_step": s.first_step,
        "last_step": s.last_step,
        "total_steps": s.total_steps,
        "tokens": s.tokens,
        "tokens_per_step": s.tokens_per_step,
        "final_loss": round(s.final_loss, 4),
        "val_loss": round(s.val_loss, 4),
        "val_ppl": round(s.val_ppl, 2),
        "step_time_s": round(s.median_step_s, 3),
        "tokens_per_s": round(s.median_tokens_per_s),
        "tokens_per_s_per_gpu": round(s.median_tokens_per_s_per_gpu),
        "mfu": round(s.median_mfu, 4),
        "tflops_per_gpu": round(s.median_tflops, 1),
        "checkpoints": s.checkpoints,
        "last_checkpoint": s.last_checkpoint,
        # The table's wall time: real seconds, at the job's speed.
        "real_time_s": round(s.wall_s, 1),
        "speed": s.speed,
    }


def summary_rows(s: RunSummary) -> list[tuple[str, str]]:
    """The rows of fakerun's end-of-run table."""
    nodes = "node" if s.nnodes == 1 else "nodes"
    return [
        ("model", f"{s.model.display_name} ({count(s.model.params)} parameters)"),
        ("GPUs", f"{s.world_size} x {s.gpu_name} ({s.nnodes} {nodes} x {s.nproc_per_node})"),
        ("parallelism", f"TP {s.tp} / PP {s.pp} / DP {s.dp}, {s.sharding}"),
        ("steps", f"{s.first_step:,}-{s.last_step:,} of {s.total_steps:,}"),
        ("tokens", f"{count(s.tokens)} ({s.tokens_per_step:,} per step)"),
        ("final loss", f"{s.final_loss:.4f} (validation {s.val_loss:.4f}, ppl {s.val_ppl:.2f})"),
        ("step time", f"{s.median_step_s:.3f} s (median)"),
        (
            "throughput",
            f"{s.median_tokens_per_s:,.0f} tokens/s ({s.median_tokens_per_s_per_gpu:,.0f} per GPU)",
        ),
        ("MFU", f"{100 * s.median_mfu:.1f}% ({s.median_tflops:.0f} TFLOP/s per GPU)"),
        ("checkpoints", f"{s.checkpoints} (last {s.last_checkpoint})"),
        ("wall time", f"{s.wall_s:.1f} s at speed {s.speed:g}"),
    ]
