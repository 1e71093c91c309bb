"""PyTorch Lightning 2.6 (Trainer + DDP strategy): its start-up, model summary, tqdm bar and stop message.

NeMo 2 pins lightning<=2.4.0 and borrows these lines in that version's form (nemo.py): `hpu` and `flops`
select it."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import ClassVar

from fakerun.dialects.base import BarClose, BarDraw, HintRule, Line, Output, Seat, Stream, words
from fakerun.dialects.events import (
    DeviceSelected,
    EvalDone,
    Event,
    JobStarted,
    ModelBuilt,
    ProcessGroupInitializing,
    ProcessGroupReady,
    StepDone,
    TrainingStarted,
    TrainingStopped,
    WorkerStarted,
)
from fakerun.render import bar
from fakerun.sim.run import RunPlan

# LightningCLI's dotted options (`--trainer.max_steps`, `--model.lr`) and a `fit` subcommand's `--config`; the
# Trainer arguments Lightning's examples take with argparse (`--accelerator gpu --devices 8 --max_epochs 3`).
HINTS = HintRule(
    script=re.compile(r"lightning|(^|/)(main|cli)_?pl\.py$"),
    options=words(
        "max_epochs accumulate_grad_batches gradient_clip_val val_check_interval limit_val_batches"
        " log_every_n_steps check_val_every_n_epoch accelerator strategy devices num_nodes"
    ),
    sections=words("trainer data ckpt_path seed_everything"),  # model/optimizer: torchtitan's too
)
_PARAM_UNITS = ("", "K", "M", "B", "T")
# TQDMProgressBar.BAR_FORMAT: the rate is always in it/s (rate_noinv_fmt), never tqdm's s/it.
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"
# Tqdm.format_num pads floats to this many characters so that the postfix does not flicker.
_PAD_SIZE = 5
# ModelSummary's precision_to_bits over trainer.precision; the others ("bf16-mixed", the default "32-true")
# size as 32 bits. Its "16"/"bf16"/"64" keys never match: the connector has already turned
# Trainer(precision="bf16") into "bf16-mixed" (fabric's _convert_precision_to_unified_args).
_SUMMARY_BITS = {"16-true": 16, "bf16-true": 16, "64-true": 64}
_PRECISION_ALIASES = {"16": "16-mixed", "bf16": "bf16-mixed", "32": "32-true", "64": "64-true"}


def accelerator_lines(*, hpu: bool) -> list[str]:
    """trainer/setup.py's _log_device_info on global rank 0 (the HPU line until Lightning 2.5)."""
    lines = ["GPU available: True (cuda), used: True", "TPU available: False, using: 0 TPU cores"]
    return [*lines, "HPU available: False, using: 0 HPUs"] if hpu else lines


def tensor_cores_line(device_name: str) -> str:
    """fabric's _check_cuda_matmul_precision on rank 0 when the script left float32 matmuls at "highest"."""
    return (
        f"You are using a CUDA device ({device_name!r}) that has Tensor Cores. To properly utilize them, "
        "you should set `torch.set_float32_matmul_precision('medium' | 'high')` which will trade-off "
        "precision for performance. For more details, read https://pytorch.org/docs/stable/generated/"
        "torch.set_float32_matmul_precision.html#torch.set_float32_matmul_precision"
    )


def member_line(rank: int, world_size: int) -> str:
    """fabric/utilities/distributed.py, every rank as it initializes its process group."""
    return f"Initializing distributed: GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/{world_size}"


def registered_lines(world_size: int, backend: str = "nccl") -> list[str]:
    """The dashed banner rank 0 prints once every process has joined (the message ends with a newline)."""
    return [
        "-" * 100,
        f"distributed_backend={backend}",
        f"All distributed processes registered. Starting with {world_size} processes",
        "-" * 100,
        "",
    ]


def visible_devices_line(local_rank: int, nproc_per_node: int) -> str:
    """accelerators/cuda.py, every rank: the node's GPUs as CUDA_VISIBLE_DEVICES lists them."""
    devices = ",".join(str(i) for i in range(nproc_per_node))
    return f"LOCAL_RANK: {local_rank} - CUDA_VISIBLE_DEVICES: [{devices}]"


def human_count(number: float) -> str:
    """model_summary.get_human_readable_count: `124 M`, `1.2 B`, `31  ` (three significant figures)."""
    n = max(0, int(number))
    digits = int(math.floor(math.log10(n)) + 1) if n > 0 else 1
    groups = min(math.ceil(digits / 3), len(_PARAM_UNITS))
    value = n * 10 ** (-3 * (groups - 1))
    index = groups - 1
    if index < 1 or value >= 100:
        return f"{int(value):,d} {_PARAM_UNITS[index]}"
    return f"{value:,.1f} {_PARAM_UNITS[index]}"


def summary_lines(
    name: str,
    type_name: str,
    params: float,
    *,
    trainable_modules: int,
    precision: str = "32-true",
    flops: bool,
) -> list[str]:
    """ModelSummary's table: a Mode column (2.3+), FLOPs column and total (2.6; 0 with no example input)."""
    cols = [(" ", ["0"]), ("Name", [name]), ("Type", [type_name]), ("Params", [human_count(params)])]
    cols.append(("Mode", ["train"]))
    if flops:
        cols.append(("FLOPs", ["0"]))
    widths = [max(len(h), *(len(v) for v in vals)) for h, vals in cols]
    # _format_summary_table counts two separators more than the rows have: its rule is 6 characters wider.
    rule = "-" * (sum(widths) + 3 * (len(cols) + 1))
    header = " | ".join(f"{h:<{w}}" for (h, _), w in zip(cols, widths, strict=True))
    body = " | ".join(f"{vals[0]:<{w}}" for (_, vals), w in zip(cols, widths, strict=True))
    megabytes = params * _SUMMARY_BITS.get(_PRECISION_ALIASES.get(precision, precision), 32) / 8 / 1e6
    lines = [
        header,
        rule,
        body,
        rule,
        f"{human_count(params):<10}Trainable params",
        f"{human_count(0):<10}Non-trainable params",
        f"{human_count(params):<10}Total params",
        f"{megabytes:<10,.3f}Total estimated model params size (MB)",
        f"{trainable_modules:<10}Modules in train mode",
        f"{0:<10}Modules in eval mode",
    ]
    return [*lines, f"{human_count(0):<10}Total Flops"] if flops else lines


def train_postfix(v_num: str, loss: float) -> str:
    """The bar's postfix as tqdm.set_postfix formats Lightning's metrics: logger version, then loss."""
    return f"v_num={v_num}, train_loss={bar_num(loss)}"


def bar_num(x: float) -> str:
    """Lightning's Tqdm.format_num: tqdm's (`{:.3g}` unless str() is shorter), zero-padded to 5 places."""
    f = f"{x:.3g}".replace("+0", "+").replace("-0", "-")
    s = str(x)
    n = f if len(f) < len(s) else s
    if "e" in n:
        return n
    if "." not in n and len(n) < _PAD_SIZE:
        n += "."
    return n + "0" * (_PAD_SIZE - len(n))


def stopped_line(max_steps: int, max_epochs: str | None = None) -> str:
    """fit_loop.py's rank-zero info when the step (or, with no max_steps given, the epoch) budget is spent."""
    if max_epochs is not None:
        return f"`Trainer.fit` stopped: `max_epochs={max_epochs}` reached."
    return f"`Trainer.fit` stopped: `max_steps={max_steps}` reached."


def modules_in_train_mode(layers: int) -> int:
    """Submodules Lightning counts for a GPT: per block two norms, attention (2) and MLP (3) plus itself."""
    return 5 + layers * 8


class LightningDialect:
    """Lightning's Trainer under torchrun: rank-0 info lines, per-rank init lines, rank 0's tqdm bar.

    Its info lines go through the `lightning.pytorch`/`lightning.fabric` loggers' own StreamHandler (stderr,
    added when the root logger has none); its bars are Tqdm(file=sys.stdout)."""

    name: ClassVar[str] = "lightning"
    hints: ClassVar[HintRule] = HINTS
    grid: ClassVar[bool] = False
    # DDPStrategy(timeout=default_pg_timeout): torch.distributed.constants' 30 minutes, not NCCL's 10.
    nccl_timeout_s: ClassVar[float] = 1800.0
    bar_stream: ClassVar[Stream] = "stdout"  # TQDMProgressBar's bars are Tqdm(file=sys.stdout)

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        self.run: RunPlan | None = None
        self.settings: dict[str, str] = {}
        self.last_bar = ""
        self.epoch = -1  # the epoch the training bar counts (it is reset at each epoch's start)
        self.epoch_start_s = 0.0  # training time when that epoch's bar was reset
        self.initial = 0  # batches already done when the bar started counting (a resumed run's)
        self.stopped = False  # fit() has returned: the script's own evaluation after it draws no bar here

    @property
    def zero(self) -> bool:
        """trainer.is_global_zero."""
        return self.seat.rank == 0

    def wants(self, kind: type[Event]) -> bool:
        """Init lines on every rank; the rest on global rank 0."""
        if kind in (JobStarted, ProcessGroupInitializing, ModelBuilt):
            return True
        return self.zero and kind in (
            WorkerStarted,
            DeviceSelected,
            ProcessGroupReady,
            TrainingStarted,
            StepDone,
            EvalDone,
            TrainingStopped,
        )

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """Lightning's lines for the event on this rank."""
        del at  # Lightning's info lines carry no time
        seat = self.seat
        if isinstance(event, JobStarted):
            self.run = event.run
            self.settings = dict(event.settings)
            return ()
        if isinstance(event, WorkerStarted):
            return [Line(text, "stderr") for text in accelerator_lines(hpu=False)] if self.zero else ()
        if isinstance(event, DeviceSelected):
            return [Line(tensor_cores_line(event.name), "stderr")] if self.zero else ()
        if isinstance(event, ProcessGroupInitializing):
            return [Line(member_line(seat.rank, event.world_size), "stderr")]
        if isinstance(event, ProcessGroupReady):
            return [Line(text, "stderr") for text in registered_lines(seat.world_size)] if self.zero else ()
        if isinstance(event, ModelBuilt):
            out: list[Output] = [Line(visible_devices_line(seat.local_rank, seat.nproc_per_node), "stderr")]
            if self.zero:
                # ModelSummary logs "\n" + the table.
                table = summary_lines(
                    "model",
                    "GPT",
                    event.params_on_rank,
                    trainable_modules=modules_in_train_mode(event.layers_on_rank),
                    precision=self.settings.get("precision", "32-true"),
                    flops=True,
                )
                out += [Line("", "stderr"), *(Line(t, "stderr") for t in table)]
            return out
        if not self.zero or self.run is None:
            return ()
        run = self.run
        if isinstance(event, TrainingStarted):
            return self.sanity_bar(event) if event.sanity_batches else ()
        if isinstance(event, StepDone):
            # Lightning's bar calls refresh() itself (its refresh_rate), whatever tqdm's mininterval.
            return [BarDraw(self.train_bar(run, event), stream="stdout", forced=True)]
        if isinstance(event, EvalDone) and not self.stopped:
            # The validation bar (leave=False) is drawn below the training bar and erased when it closes.
            val = bar.meter(
                event.iters,
                event.iters,
                event.seconds,
                prefix="Validation DataLoader 0",
                ncols=seat.bar_columns,
                bar_format=BAR_FORMAT,
            )
            return [BarDraw(val, 1, "stdout", forced=True), BarClose(position=1, stream="stdout")]
        if isinstance(event, TrainingStopped):
            self.stopped = True
            out = [BarClose(self.last_bar or None, stream="stdout")]
            if event.reason in ("reached total steps", "reached max steps"):
                out.append(Line(stopped_line(event.step, self.settings.get("max_epochs")), "stderr"))
            return out
        return ()

    def sanity_bar(self, event: TrainingStarted) -> list[Output]:
        """The sanity check's bar as tqdm writes it: made with no total under its bare description, reset to
        the batches under the dataloader's, batch by batch, then blanked (leave=False: spaces and `\\r`)."""
        batches = event.sanity_batches
        desc = "Sanity Checking"
        states = [(desc, 0, None), (desc, 0, batches)]
        states += [(f"{desc} DataLoader 0", n, batches) for n in range(batches + 1)]
        draws = [
            bar.meter(
                n,
                total,
                event.sanity_s * n / batches,
                prefix=prefix,
                ncols=self.seat.bar_columns,
                bar_format=BAR_FORMAT,
            )
            for prefix, n, total in states
        ]
        blank = " " * len(draws[-1]) + "\r"
        return [BarDraw(text, stream="stdout", forced=True) for text in (*draws, blank)]

    def train_bar(self, run: RunPlan, event: StepDone) -> str:
        """The training bar after a step: this epoch's micro batches, counted from the epoch's start."""
        n = event.numbers
        epoch = run.epoch_of(n.step) - 1
        accum = run.job.grad_accum
        done = (n.step - epoch * run.steps_per_epoch) * accum
        if epoch != self.epoch:
            self.epoch = epoch
            self.epoch_start_s = event.elapsed_s - n.step_time_s
            # A resumed run's bar starts at the restored batch: tqdm's rate counts from there.
            self.initial = done - accum if n.step == run.first_step else 0
        self.last_bar = bar.meter(
            done,
            run.steps_per_epoch * accum,
            event.elapsed_s - self.epoch_start_s,
            prefix=f"Epoch {epoch}",
            postfix=train_postfix(self.settings.get("v_num", "0"), n.loss),
            ncols=self.seat.bar_columns,
            initial=self.initial,
            bar_format=BAR_FORMAT,
        )
        return self.last_bar
