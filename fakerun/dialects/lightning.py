"""PyTorch Lightning (Trainer + DDP strategy): its start-up, model summary, tqdm bar and stop message."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import ClassVar

from fakerun.dialects.base import BarClose, BarDraw, HintRule, Line, Output, Seat, words
from fakerun.dialects.events import (
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
from fakerun.render import bar
from fakerun.sim.run import RunPlan

# LightningCLI's dotted options (`--trainer.max_steps`, `--model.lr`) and a `fit` subcommand's `--config`.
HINTS = HintRule(
    script=re.compile(r"lightning|(^|/)(main|cli)_?pl\.py$"),
    sections=words("trainer data ckpt_path seed_everything"),  # model/optimizer: torchtitan's too
)
_PARAM_UNITS = ("", "K", "M", "B", "T")


def accelerator_lines() -> list[str]:
    """trainer/setup.py's _log_device_info on global rank 0."""
    return [
        "GPU available: True (cuda), used: True",
        "TPU available: False, using: 0 TPU cores",
        "HPU available: False, using: 0 HPUs",
    ]


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


def summary_lines(name: str, type_name: str, params: float, *, trainable_modules: int) -> list[str]:
    """ModelSummary's table (Lightning 2.3-2.5: a Mode column, module mode counts; fp32 weights)."""
    cols = [("Name", [name]), ("Type", [type_name]), ("Params", [human_count(params)]), ("Mode", ["train"])]
    widths = [max(len(h), *(len(v) for v in vals)) for h, vals in cols]
    total_width = sum(widths) + 3 * (len(cols) + 1)
    header = " | ".join(f"{h:<{w}}" for (h, _), w in zip(cols, widths, strict=True))
    body = " | ".join(f"{vals[0]:<{w}}" for (_, vals), w in zip(cols, widths, strict=True))
    rule = "-" * total_width
    return [
        f"  | {header}",
        rule,
        f"0 | {body}",
        rule,
        f"{human_count(params):<10}Trainable params",
        f"{human_count(0):<10}Non-trainable params",
        f"{human_count(params):<10}Total params",
        f"{params * 4 / 1e6:<10,.3f}Total estimated model params size (MB)",
        f"{trainable_modules:<10}Modules in train mode",
        f"{0:<10}Modules in eval mode",
    ]


def train_postfix(v_num: int, loss: float) -> str:
    """The bar's postfix as tqdm.set_postfix formats Lightning's metrics (3 significant digits)."""
    return f"v_num={v_num}, train_loss={bar_num(loss)}"


def bar_num(x: float) -> str:
    """tqdm.format_num: the shorter of `{:.3g}` (exponent without its leading zero) and str()."""
    f = f"{x:.3g}".replace("+0", "+").replace("-0", "-")
    s = str(x)
    return f if len(f) <= len(s) else s


def stopped_line(max_steps: int) -> str:
    """fit_loop.py's rank-zero info when the step budget is spent."""
    return f"`Trainer.fit` stopped: `max_steps={max_steps}` reached."


def modules_in_train_mode(layers: int) -> int:
    """Submodules Lightning counts for a GPT: per block two norms, attention (2) and MLP (3) plus itself."""
    return 5 + layers * 8


class LightningDialect:
    """Lightning's Trainer under torchrun: rank-0 info lines, per-rank init lines, rank 0's tqdm bar."""

    name: ClassVar[str] = "lightning"
    hints: ClassVar[HintRule] = HINTS
    grid: ClassVar[bool] = False

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        self.run: RunPlan | None = None
        self.last_bar = ""
        self.stopped = False  # fit() has returned: the script's own evaluation after it draws no bar here

    @property
    def zero(self) -> bool:
        """trainer.is_global_zero."""
        return self.seat.rank == 0

    def wants(self, kind: type[Event]) -> bool:
        """Init lines on every rank; the rest on global rank 0."""
        if kind in (JobStarted, ProcessGroupInitializing, ModelBuilt):
            return True
        return self.zero and kind in (WorkerStarted, ProcessGroupReady, StepDone, EvalDone, TrainingStopped)

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """Lightning's lines for the event on this rank."""
        del at  # Lightning's info lines carry no time
        seat = self.seat
        if isinstance(event, JobStarted):
            self.run = event.run
            return ()
        if isinstance(event, WorkerStarted):
            return [Line(text) for text in accelerator_lines()] if self.zero else ()
        if isinstance(event, ProcessGroupInitializing):
            return [Line(member_line(seat.rank, event.world_size))]
        if isinstance(event, ProcessGroupReady):
            return [Line(text) for text in registered_lines(seat.world_size)] if self.zero else ()
        if isinstance(event, ModelBuilt):
            out: list[Output] = [Line(visible_devices_line(seat.local_rank, seat.nproc_per_node))]
            if self.zero:
                layers = event.layers_on_rank
                out += [Line(""), Line("")]
                out += [
                    Line(t)
                    for t in summary_lines(
                        "model", "GPT", event.params_on_rank, trainable_modules=modules_in_train_mode(layers)
                    )
                ]
            return out
        if not self.zero or self.run is None:
            return ()
        run = self.run
        if isinstance(event, StepDone):
            n = event.numbers
            self.last_bar = bar.meter(
                n.step,
                run.job.total_steps,
                event.elapsed_s,
                prefix=f"Epoch {run.epoch_of(n.step) - 1}",
                postfix=train_postfix(0, n.loss),
                rate=bar.ema_rate(event.recent_s),
                ncols=seat.bar_columns,
                initial=run.job.start_step,
            )
            return [BarDraw(self.last_bar)]
        if isinstance(event, EvalDone) and not self.stopped:
            # The validation bar (leave=False) draws over the training bar, which tqdm redraws next step.
            val = bar.meter(
                event.iters,
                event.iters,
                event.seconds,
                prefix="Validation DataLoader 0",
                ncols=seat.bar_columns,
            )
            return [BarDraw(val)]
        if isinstance(event, TrainingStopped):
            self.stopped = True
            out = [BarClose(self.last_bar or None)]
            if event.reason in ("reached total steps", "reached max steps"):
                out.append(Line(stopped_line(event.step)))
            return out
        return ()
