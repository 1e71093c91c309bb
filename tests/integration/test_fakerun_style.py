"""fakerun's own style end to end: the OOM of a job that does not fit, early stopping, epochs, the loop."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from typing import ClassVar

from fakerun import presets
from fakerun.cli import parse_command_line
from fakerun.dialects.base import count
from fakerun.jobconfig import build_run
from fakerun.render.oom import format_size
from fakerun.sim import memory
from fakerun.sim.checkpoint import HF_SHARD_BYTES, checkpoint_bytes
from fakerun.sim.run import RunPlan
from tests.conftest import Runner, fakerun_exe

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
        # No step ever completed, and torchrun's agent reports a rank that ran out of memory (the lowest of
        # those it found failed at its monitor's look, as torch's agent picks it).
        assert " train " not in result.stdout
        failed = re.search(r"failed \(exitcode: 1\) local_rank: (\d+)", result.stderr)
        assert failed is not None and failed[1] in {m[0] for m in matches}
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
                # Late in a long run (a preset whose 500,000 steps reach past the start), where the loss has
                # flattened enough for the patience to run out.
                *("--fake-model", "llama3-8b", "--fake-start-step", "400000", "--fake-max-steps", "3000"),
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


EPOCH_LINE = re.compile(r"\[info\s*\] epoch complete\s+rank=0 (.*)$", re.M)
SUMMARY_LOSS = re.compile(r"\| final loss\s+\| ([\d.]+) ")
FIELD = re.compile(r"(\w+)=('[^']*'|\S+)")


def stderr_bars(stderr: str) -> list[tuple[int, str]]:
    """Each bar refresh in tqdm's bytes (a pipe gets them raw): (position, text), a blanked row as ''."""
    return [
        (1 if m[1] and m[3] else 0, m[2].strip())
        for m in re.finditer(r"(\n?)\r([^\r\n\x1b]*)(\x1b\[A)?", stderr)
    ]


class TestEpochsFineTune:
    """A fine-tune of Llama 3 8B over three short epochs: shards bar, nested bars, epoch lines, the end."""

    ARGS: ClassVar[list[str]] = [
        *("--nproc-per-node", "2", "--fake-trainer", "fakerun", "--fake-seed", "9", *FAST),
        *("train.py", "--model_name_or_path", "meta-llama/Meta-Llama-3-8B", "--num_train_epochs", "3"),
        *("--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "64"),
        *("--max_seq_length", "256", "--eval_strategy", "steps", "--eval_steps", "3"),
        # Sharded, with activation checkpointing: 8B's fp32 weights and Adam states do not fit DDP's copies.
        *("--fsdp", "full_shard auto_wrap", "--gradient_checkpointing"),
    ]

    def test_run(self, runner: Runner) -> None:
        """One run, every extra of fakerun's style checked against the plan the launcher builds."""
        run = run_of(self.ARGS)
        assert run.epochs == 3 and run.job.regime == "finetune"
        # Bytes: text mode would turn tqdm's carriage returns into newlines.
        proc = subprocess.run(
            [fakerun_exe(), *self.ARGS], capture_output=True, timeout=240, env=runner.env(), cwd=runner.tmp
        )
        stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
        assert proc.returncode == 0, stderr[-3000:]
        bars = stderr_bars(stderr)
        # from_pretrained's bar: the bf16 weights in 5 GB shards, read to the last one.
        shards = -(-checkpoint_bytes(run.job.model, full=False) // HF_SHARD_BYTES)
        assert any(
            t.startswith("Loading checkpoint shards: 100%") and f"| {shards}/{shards} [" in t for _, t in bars
        )
        # Nested bars: the epochs' bar counts 0..3 at position 0, each epoch's steps run at position 1.
        outer = [t for p, t in bars if p == 0 and t.startswith("Training:")]
        assert [re.findall(r"\| (\d+)/3 \[", t) for t in outer] == [["0"], ["1"], ["2"], ["3"]]
        inner = [t for p, t in bars if p == 1 and t]
        spe = run.steps_per_epoch
        expected = [f"Epoch {s // spe + 1}/3" for s in range(run.job.total_steps)]
        assert [t.split(":")[0] for t in inner] == expected
        assert sum(1 for p, t in bars if p == 1 and not t) == 3
        # One epoch line per epoch, after its validation, with its tokens.
        epochs = [dict(FIELD.findall(m)) for m in EPOCH_LINE.findall(stdout)]
        assert [e["epoch"] for e in epochs] == ["1/3", "2/3", "3/3"]
        assert [int(e["step"]) for e in epochs] == [spe, 2 * spe, 3 * spe]
        assert all(e["tokens"] == count(spe * run.job.tokens_per_step) for e in epochs)
        # The epoch's validation loss is the latest validation's (every 3 steps; an epoch may end between).
        validations = {int(step): value for step, value in VALIDATION.findall(stdout)}
        latest = [validations[max(s for s in validations if s <= int(e["step"]))] for e in epochs]
        assert [e["val_loss"] for e in epochs] == latest
        # The success line before the table: the run's steps and the table's final loss.
        done = re.search(r"\[info\s*\] training complete\s+rank=0 (.*)$", stdout, re.M)
        assert done is not None
        figures = dict(FIELD.findall(done[1]))
        assert figures["steps"] == str(run.job.total_steps)
        assert figures["final_loss"] == SUMMARY_LOSS.findall(stdout)[0]
        assert stdout.index("training complete") < stdout.index("Training summary")


class TestLoopLine:
    """--fake-loop: each next run is announced with its number and seed."""

    def test_next_run_line(self, runner: Runner) -> None:
        """Run 2 starts with seed + 1 (sim.run.looped); SIGTERM then ends the job."""
        args = ["--nproc-per-node", "2", "--fake-loop", "--fake-max-steps", "2", "--fake-seed", "5", *FAST]
        proc = runner.start([*args, "--fake-metrics", "m.jsonl", "train.py"])
        path = runner.tmp / "m.jsonl"
        deadline = time.monotonic() + 90
        runs = 0
        while time.monotonic() < deadline and runs < 3:
            time.sleep(0.2)
            if path.exists():
                runs = sum(1 for line in path.read_text().splitlines() if json.loads(line)["event"] == "run")
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=30)
        assert runs >= 3
        lines = re.findall(r"\[info\s*\] restarting training from scratch\s+rank=0 (.*)$", stdout, re.M)
        assert len(lines) >= 2
        assert [dict(FIELD.findall(line))["run"] for line in lines[:2]] == ["2", "3"]
        assert [dict(FIELD.findall(line))["seed"] for line in lines[:2]] == ["6", "7"]
