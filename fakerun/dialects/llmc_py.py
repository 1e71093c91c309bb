"""llm.c's PyTorch reference (karpathy/llm.c train_gpt2.py): print0's lines from rank 0, print's from all."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import ClassVar

from fakerun.dialects import llmc_args
from fakerun.dialects.base import HintRule, Line, LogWrite, Output, Seat
from fakerun.dialects.events import (
    EvalDone,
    Event,
    JobStarted,
    MemoryReport,
    ModelBuilt,
    StepDone,
    TrainingFinished,
    TrainingStarted,
)
from fakerun.dialects.files import Artifact, SaveRequest
from fakerun.frameworks import llmc_py
from fakerun.sim import estimates
from fakerun.sim.run import RunPlan
from fakerun.sim.stack import stack_for

# Options only this script spells so (its argparse); the script's name decides the rest.
HINTS = HintRule(
    script=re.compile(r"(^|/)train_gpt2\.py$"),
    options=frozenset(
        {
            *("input_bin", "input_val_bin", "write_tensors", "num_iterations", "sequence_length"),
            *("total_batch_size", "learning_rate_decay_frac", "overfit_single_batch", "tensorcores"),
            *("val_loss_every", "val_max_steps", "sample_every", "inference_only"),
        }
    ),
)
_PREFIX = "llmc_py."
_MIB = 1024 * 1024
_HEADER = 256 * 4  # write_model's and write_state's int32 header
_TIMED = 20  # the last iterations main() averages


def to_settings(a: llmc_py.Args) -> dict[str, str]:
    """The parsed arguments as Hints.settings text."""
    return {f"{_PREFIX}{k}": repr(v) if isinstance(v, float) else str(v) for k, v in a.__dict__.items()}


def from_settings(settings: Mapping[str, str]) -> llmc_py.Args:
    """The arguments to_settings wrote (defaults for what is missing)."""
    base = llmc_py.Args()
    values: dict[str, object] = {}
    for key, default in base.__dict__.items():
        text = settings.get(f"{_PREFIX}{key}")
        values[key] = default if text is None else type(default)(text)
    return llmc_py.Args(**values)  # type: ignore[arg-type]


def step_line(step: int, total: int, loss: float, norm: float, lr: float, dt_s: float, tok_s: float) -> str:
    """print0 after each optimizer step (step 1-based)."""
    return (
        f"step {step:4d}/{total} | train loss {loss:.6f} | norm {norm:.4f} | lr {lr:.2e} | "
        f"({dt_s * 1000:.2f} ms | {tok_s:.0f} tok/s)"
    )


class LlmcPyDialect:
    """train_gpt2.py: print0 on rank 0, `print` (device, from_pretrained) on every rank."""

    name: ClassVar[str] = "llmc_py"
    hints: ClassVar[HintRule] = HINTS
    grid: ClassVar[bool] = False

    @staticmethod
    def artifacts(request: SaveRequest) -> Sequence[Artifact]:
        """--write_tensors' weight and debug-state files (master process; written here once the run ends)."""
        a = from_settings(request.settings)
        if request.rank != 0 or request.kind != "export" or not a.write_tensors or a.inference_only:
            return ()
        model = request.run.job.model
        params = estimates.gpt_params(model)  # write_model pads wte to 50304 rows
        size = llmc_py.SIZE_NAMES[a.model]
        bt = a.batch_size * a.sequence_length
        state = _HEADER + 2 * 4 * bt + 4 * bt * model.vocab + 4 + 4 * params  # x, y, logits, loss, grads
        return (
            Artifact(f"gpt2_{size}.bin", _HEADER + 4 * params),
            Artifact(f"gpt2_{size}_bf16.bin", _HEADER + 2 * params),
            Artifact(f"gpt2_{size}_debug_state.bin", state),
        )

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        self.run: RunPlan | None = None
        self.args = llmc_py.Args()
        self.times: list[float] = []
        self.peak = 0.0

    def wants(self, kind: type[Event]) -> bool:
        """Start-up on every rank; the loop's prints on rank 0."""
        return kind in (JobStarted, ModelBuilt) or (
            self.seat.rank == 0
            and kind in (TrainingStarted, StepDone, EvalDone, MemoryReport, TrainingFinished)
        )

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """train_gpt2.py's lines for the event on this rank."""
        del at  # it prints no time of day
        rank0 = self.seat.rank == 0
        if isinstance(event, JobStarted):
            self.run, self.args, self.times = event.run, from_settings(dict(event.settings)), []
            return [Line(t) for t in self._start(event.run, event.first)]
        run = self.run
        if run is None:
            return ()
        if isinstance(event, ModelBuilt):
            return [Line(t) for t in self._model(run, rank0)]
        if not rank0:
            return ()
        if isinstance(event, TrainingStarted):
            first = event.first_step - 1
            # --output_dir: main.log is made (wiped clean) just before the loop.
            out: list[Output] = [LogWrite(self.log, "", fresh=True)] if self.log else []
            if run.eval_interval > 0 and first % run.eval_interval == 0:
                out += self._val(first, event.val_loss)
            return out
        if isinstance(event, StepDone):
            n = event.numbers
            # Timed: iterations past the first among the run's last 20 (0-based step > num_iterations - 20).
            if n.step - 1 > 0 and n.step - 1 > run.job.total_steps - _TIMED:
                self.times.append(n.step_time_s)
            tok_s = run.job.tokens_per_step / n.step_time_s
            line = step_line(n.step, run.job.total_steps, n.loss, n.grad_norm, n.lr, n.step_time_s, tok_s)
            # main.log's train line: the loop's 0-based step.
            return [Line(line), *self._logged("trl", n.step - 1, n.loss)]
        if isinstance(event, EvalDone):
            return self._val(event.step, event.loss)
        if isinstance(event, MemoryReport):
            self.peak = max(self.peak, event.max_allocated)
            return ()
        if isinstance(event, TrainingFinished):
            times = self.times[-_TIMED:]
            avg = sum(times) / len(times) * 1000 if times else float("nan")  # np.mean([]) is nan
            return [
                Line(f"final {len(times)} iters avg: {avg:.3f}ms"),
                Line(f"peak memory consumption: {int(self.peak) // _MIB} MiB"),
            ]
        return ()

    @property
    def log(self) -> str:
        """--output_dir's main.log, "" when there is none."""
        return os.path.join(self.args.output_dir, "main.log") if self.args.output_dir else ""

    def _val(self, step: int, value: float) -> list[Output]:
        """print0 of the validation loss after `step` iterations, and its main.log line."""
        return [Line(f"val loss {value}"), *self._logged("tel", step, value)]

    def _logged(self, kind: str, step: int, value: float) -> list[Output]:
        """main.log's line `"s:%d trl:%f"` (train) or `tel` (validation), when there is a main.log."""
        return [LogWrite(self.log, f"s:{step:d} {kind}:{value:f}\n")] if self.log else []

    def _start(self, run: RunPlan, first: bool) -> list[str]:
        """From the interpreter's start to the tokenizer: the version, the device, the batch arithmetic."""
        a, rank0 = self.args, self.seat.rank == 0
        out = [f"Running pytorch {stack_for(run.job.cluster).torch}"] if rank0 and first else []
        out.append(f"using device: cuda:{self.seat.local_rank}")
        if rank0:
            job = run.job
            accum = job.tokens_per_step // (a.batch_size * a.sequence_length * job.world_size)
            out += [
                f"total desired batch size: {job.tokens_per_step}",
                f"=> calculated gradient accumulation steps: {accum}",
            ]
            if a.write_tensors:
                out.append("wrote gpt2_tokenizer.bin")
        return out

    def _model(self, run: RunPlan, rank0: bool) -> list[str]:
        """The model, the data loader, the C bridge's files and the optimizer, in main()'s order."""
        a = self.args
        out = [f"loading weights from pretrained gpt: {a.model}"] if a.model in llmc_py.PRETRAINED else []
        if not rank0:
            return out
        if a.compile:
            out.append("compiling the model...")
        for pattern, val in ((a.input_bin, "_val" in a.input_bin), (a.input_val_bin, True)):
            tokens = llmc_args.data_tokens(pattern, val=val) if pattern else None
            if tokens is not None:
                files = llmc_args.data_files(pattern, val=val)
                out.append(f"DataLoader: total number of tokens: {tokens:,} across {files} files")
        model = run.job.model
        vp = estimates.padded_vocab(model)
        if a.write_tensors and not a.inference_only:
            size = llmc_py.SIZE_NAMES[a.model]
            for name in (f"gpt2_{size}.bin", f"gpt2_{size}_bf16.bin"):
                out += [f"padded vocab size from {model.vocab} to {vp}", f"wrote {name}"]
            out += [
                f"padded vocab size in reference grads from {model.vocab} to {vp}",
                f"wrote gpt2_{size}_debug_state.bin",
            ]
        g = estimates.param_groups(model, padded=False)  # the PyTorch model keeps 50257 rows
        out += [
            f"num decayed parameter tensors: {g.decay_tensors}, with {g.decay_params:,} parameters",
            f"num non-decayed parameter tensors: {g.nodecay_tensors}, with {g.nodecay_params:,} parameters",
            # configure_optimizers gets device='cuda:N' under DDP, which is not 'cuda': no fused AdamW.
            "using fused AdamW: False",
            "using ZeroRedundancyOptimizer" if a.zero_stage == 1 else "using regular AdamW",
        ]
        return out
