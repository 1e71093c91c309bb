"""fakerun's own style end to end: the OOM of a job that does not fit, early stopping, epochs, the loop."""

from __future__ import annotations

import re
from typing import ClassVar

from fakerun import presets
from fakerun.cli import parse_command_line
from fakerun.jobconfig import build_run
from fakerun.render.oom import format_size
from fakerun.sim import memory
from fakerun.sim.run import RunPlan
from tests.conftest import Runner

FAST = ["--fake-speed", "400"]
OOM_LINE = re.compile(
    r"^\[rank(\d+)\]: torch\.OutOfMemoryError: CUDA out of memory\. Tried to allocate (\S+ \S+)\. GPU (\d+) "
    r"has a total capacity of (\S+ \S+) of which (\S+ \S+) is free\. Including non-PyTorch memory, this "
    r"process has (\S+ \S+) memory in use\. Of the allocated memory (\S+ \S+) is allocated by PyTorch, and "
    r"(\S+ \S+) is reserved by PyTorch but unallocated\. If reserved but unallocated memory is large try "
    r"setting PYTORCH_ALLOC_CONF=expandable_segments:True to avoid fragmentation\.  See documentation for "
    r"Memory Management  \(https://pytorch\.org/docs/stable/notes/cuda\.html#environment-variables\)$",
    re.M,
)


def run_of(argv: list[str], nproc: int = 2) -> RunPlan:
    """The run a one-node command line asks for, built as the launcher builds it."""
    cmd = parse_command_line(argv, {})
    bundle = presets.resolve(cmd.fake.model or "llama3-8b", cmd.fake.gpu, cmd.fake.cluster)
    run, _ = build_run(cmd, bundle, nnodes=1, nproc_per_node=nproc, model_given=cmd.fake.model is not None)
    return run


class TestOutOfMemory:
    """A job that does not fit starts, and every rank dies of torch.OutOfMemoryError at its first step."""

    ARGS: ClassVar[list[str]] = [
        *("--nproc-per-node", "2", "--fake-model", "llama3-70b", "--fake-seed", "11"),
        *FAST,
        "train.py",
    ]

    def test_check_says_it_does_not_fit(self, runner: Runner) -> None:
        """The configuration of this class is one --fake-check refuses (exit 1)."""
        result = runner.run(["--fake-check", *self.ARGS])
        assert result.code == 1 and "does not fit" in result.stdout

    def test_ooms_at_the_first_step_with_torchs_message(self, runner: Runner) -> None:
        """Exit 1, torch's message with oom_figures' numbers, a backward traceback, the launcher's report."""
        result = runner.run(self.ARGS, timeout=120)
        assert result.code == 1, result.stderr[-3000:]
        matches = OOM_LINE.findall(result.stderr)
        assert matches, result.stderr[-3000:]
        # The figures of the fullest GPU, as the physics core computes them for this job.
        f = memory.oom_figures(run_of(self.ARGS).job)
        expected = tuple(
            format_size(x)
            for x in (f.tried_to_allocate, f.capacity, f.free, f.in_use, f.allocated, f.reserved_unallocated)
        )
        for rank, size, device, *rest in matches:
            assert int(device) == int(rank) % 2  # the local rank's GPU
            assert (size, *rest) == expected
        # The traceback is the script's backward pass into torch's autograd engine, on the failing rank.
        rank = matches[0][0]
        trace = [line for line in result.stderr.splitlines() if line.startswith(f"[rank{rank}]: ")]
        assert trace[0] == f"[rank{rank}]: Traceback (most recent call last):"
        assert any(line.endswith("    loss.backward()") for line in trace)
        assert any("torch/autograd/graph.py" in line and "_engine_run_backward" in line for line in trace)
        assert not any("fakerun" in line for line in trace)
        # No step ever completed, and torchrun's agent reports the failure of the first failed rank.
        assert " train " not in result.stdout
        assert f"exitcode: 1) local_rank: {rank}" in result.stderr
        assert "ChildFailedError" in result.stderr and "Root Cause (first observed failure)" in result.stderr
        # The report's time is on the job's clock: not before the last line the workers printed.
        reported = min(re.findall(r"time\s+: (\d{4}-\d\d-\d\d_\d\d:\d\d:\d\d)", result.stderr))
        stamps = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ ", result.stdout, re.MULTILINE)
        assert stamps and reported >= max(stamps).replace(" ", "_"), (reported, max(stamps))


VALIDATION = re.compile(r"\[info\s*\] validation\s+rank=0 step=(\d+) val_loss=([\d.]+)")


class TestEarlyStopping:
    """--fake-early-stopping N: the run stops cleanly after N validations in a row without improvement."""

    def test_stops_after_patience_runs_out(self, runner: Runner) -> None:
        """Every rank stops at the validation that used up the patience, saves, and the job exits 0."""
        patience = 2
        result = runner.run(
            [
                *("--nproc-per-node", "2", "--fake-seed", "3", "--fake-trainer", "fakerun"),
                *("--fake-start-step", "400000", "--fake-max-steps", "3000"),
                *("--fake-early-stopping", str(patience), *FAST),
                *("train.py", "--eval-interval", "20", "--eval-iters", "2"),
            ],
            timeout=180,
        )
        assert result.code == 0, result.stderr[-3000:]
        losses = [(int(step), float(value)) for step, value in VALIDATION.findall(result.stdout)]
        # The rule, applied to the printed validations: the run ends at the first one that makes `patience`
        # in a row without beating the best so far.
        best, strikes, stop_at = float("inf"), 0, None
        for step, value in losses:
            if value < best:
                best, strikes = value, 0
            else:
                strikes += 1
            if strikes >= patience:
                stop_at = step
                break
        assert stop_at is not None and losses[-1][0] == stop_at, losses
        assert stop_at < 400000 + 3000
        assert f"stopping                     rank=0 step={stop_at} reason='early stopping'" in result.stdout
        assert "early stopping: no improvement, stopping training" in result.stdout
        assert f"patience={patience}/{patience}" in result.stdout
        # The run ends as any run does: its checkpoint, and every rank's last line.
        assert f"checkpoint saved             rank=0 step={stop_at}" in result.stdout
        for rank in (0, 1):
            assert f"training finished            rank={rank} step={stop_at}" in result.stdout
