"""fakerun's own style: the early-stopping counter, the OOM message, the rule behind early stopping, the
nested epoch bars, epoch lines, the shards bar, slow-pause warnings, the success and --fake-loop lines."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import math
import re
from pathlib import Path

from fakerun import presets
from fakerun.dialects import events as ev
from fakerun.dialects.base import BarClose, BarDraw, Line, Seat
from fakerun.dialects.fakerun import FakerunDialect
from fakerun.render.oom import format_size, oom_message, oom_traceback
from fakerun.sim.checkpoint import HF_SHARD_BYTES, checkpoint_bytes
from fakerun.sim.job import make_job
from fakerun.sim.memory import OomFigures
from fakerun.sim.run import RunPlan, make_run
from fakerun.sim.step import step_numbers
from fakerun.sim.stopping import Patience
from fakerun.worker.main import module_file
from fakerun.worker.printer import Printer

GIB = 1024.0**3


def dialect(rank: int = 0) -> FakerunDialect:
    """fakerun's style on `rank` of a 2-GPU job."""
    return FakerunDialect(Seat(rank=rank, local_rank=rank, world_size=2, nproc_per_node=2, hosts=("h0",)))


def check(strikes: int, patience: int = 3) -> ev.EarlyStoppingCheck:
    """A validation with `strikes` in a row without improvement."""
    return ev.EarlyStoppingCheck(
        step=200, val_loss=2.5, best=2.4, best_step=100, strikes=strikes, patience=patience
    )


class TestPatience:
    """The rule: a validation that does not beat the best so far is a strike; `patience` in a row stop."""

    def test_strikes_reset_on_improvement(self) -> None:
        """Improvements reset the count, non-improvements (ties and NaN included) add to it."""
        p = Patience(2)
        assert not p.observe(1, 3.0)
        assert not p.observe(2, 3.0)  # a tie is no improvement
        assert p.strikes == 1
        assert not p.observe(3, 2.9)
        assert (p.strikes, p.best, p.best_step) == (0, 2.9, 3)
        assert not p.observe(4, float("nan"))
        assert p.would_stop(3.5) and not p.would_stop(2.0)
        assert p.strikes == 1  # would_stop records nothing
        assert p.observe(5, 3.5)


class TestEarlyStoppingLines:
    """The counter after each validation on rank 0, and the line that stops the run."""

    def test_counter_and_stop_line(self) -> None:
        """`patience=k/N` after each validation; at N/N a warning that training stops."""
        d = dialect()
        texts = []
        for strikes in (0, 1, 3):
            out = d.render(check(strikes), 0.0)
            assert len(out) == 1 and isinstance(out[0], Line)
            texts.append(out[0].text)
        assert "val_loss improved" in texts[0] and "patience=0/3" in texts[0]
        assert "[info     ]" in texts[1] and "patience=1/3" in texts[1] and "best_step=100" in texts[1]
        assert "[warning  ]" in texts[2] and "stopping training" in texts[2] and "patience=3/3" in texts[2]

    def test_only_rank_0(self) -> None:
        """Other ranks print no counter."""
        assert dialect(1).render(check(1), 0.0) == ()


class TestOomMessage:
    """torch's CUDA OOM message and traceback."""

    FIGURES = OomFigures(1.96 * GIB, 79.11 * GIB, 1.02 * GIB, 78.08 * GIB, 75.21 * GIB, 1.38 * GIB)

    def test_format_size_units(self) -> None:
        """c10's format_size: bytes up to 1 KiB, then KiB, MiB, GiB with two decimals."""
        assert format_size(512) == "512 bytes"
        assert format_size(1536) == "1.50 KiB"
        assert format_size(20 * 1024**2) == "20.00 MiB"
        assert format_size(2.5 * GIB) == "2.50 GiB"

    def test_message_wording(self) -> None:
        """The issue's example message, word for word (PYTORCH_ALLOC_CONF as torch 2.10+ spells it)."""
        expected = (
            "CUDA out of memory. Tried to allocate 1.96 GiB. GPU 0 has a total capacity of 79.11 GiB of "
            "which 1.02 GiB is free. Including non-PyTorch memory, this process has 78.08 GiB memory in use. "
            "Of the allocated memory 75.21 GiB is allocated by PyTorch, and 1.38 GiB is reserved by PyTorch "
            "but unallocated. If reserved but unallocated memory is large try setting "
            "PYTORCH_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for "
            "Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
        )
        assert oom_message(self.FIGURES, 0) == expected

    def test_traceback_prefixed_and_ends_in_the_error(self) -> None:
        """Every line `[rankN]: `, Python's traceback shape, the exception last."""
        text = oom_traceback(3, "/job/train.py", "/env/lib/python3.11/site-packages", self.FIGURES, 3)
        lines = text.splitlines()
        assert all(line.startswith("[rank3]: ") for line in lines)
        assert lines[0] == "[rank3]: Traceback (most recent call last):"
        assert re.match(r"\[rank3\]: torch\.OutOfMemoryError: CUDA out of memory\. .* GPU 3 has", lines[-1])
        frames = [line for line in lines if line.startswith('[rank3]:   File "')]
        assert frames[0].startswith('[rank3]:   File "/job/train.py"')
        assert frames[-1].startswith(
            '[rank3]:   File "/env/lib/python3.11/site-packages/torch/autograd/graph.py"'
        )

    def test_module_run_starts_in_runpy_and_names_the_module_file(self, tmp_path: Path) -> None:
        """`torchrun -m torchtitan.train`: Python 3.11 starts the traceback in runpy's frozen frames (no
        source lines), then the module's own file, which is what sys.argv[0] holds under `python -m`."""
        (tmp_path / "torchtitan").mkdir()
        with contextlib.chdir(tmp_path):
            path = module_file("torchtitan.train")
        assert path == str(tmp_path / "torchtitan" / "train.py")
        text = oom_traceback(0, path, "/env/site", self.FIGURES, 0, module=True)
        lines = text.splitlines()
        assert lines[1:3] == [
            '[rank0]:   File "<frozen runpy>", line 198, in _run_module_as_main',
            '[rank0]:   File "<frozen runpy>", line 88, in _run_code',
        ]
        assert lines[3].startswith(f'[rank0]:   File "{path}", line ')


AT = 1_795_000_000.0
OUTER = re.compile(r"^Training:\s+\d+%\|.*\| (\d+)/(\d+) \[")
INNER = re.compile(r"^Epoch (\d+)/(\d+):\s+\d+%\|.*\| (\d+)/(\d+) \[.*loss=")
FIELDS = re.compile(r"(\w+)=('[^']*'|\S+)")


def small_run(epochs: int, steps: int = 12) -> RunPlan:
    """A run of `steps` steps over `epochs` epochs of Llama 3.2 1B on 2 GPUs."""
    b = presets.resolve("llama3.2-1b")
    job = make_job(b.model, b.cluster, b.storage, nnodes=1, nproc_per_node=2, total_steps=steps)
    return make_run(job, epochs=epochs)


def step_done(run: RunPlan, step: int) -> ev.StepDone:
    """Step `step` as the phase loop reports it (one step's time each)."""
    n = step_numbers(run.job, 0, step)
    return ev.StepDone(
        run=run,
        numbers=n,
        elapsed_s=step * n.step_time_s,
        recent_s=(n.step_time_s,),
        interval_s=n.step_time_s,
        epoch=step / run.steps_per_epoch,
        rank_tflops=n.tflops_per_gpu,
        rank_mfu=n.mfu,
        logged=False,
    )


def epoch_done(run: RunPlan, step: int) -> ev.EpochDone:
    """The end of the epoch `step` ends."""
    return ev.EpochDone(
        epoch=run.epoch_of(step),
        epochs=run.epochs,
        step=step,
        train_loss=2.5,
        val_loss=math.nan,
        tokens=run.steps_per_epoch * run.job.tokens_per_step,
        seconds=60.0,
    )


def fields(line: str) -> dict[str, str]:
    """A console event line's key=value fields."""
    return dict(FIELDS.findall(line))


def bar_states(stderr: str) -> list[tuple[int, str]]:
    """What a terminal would show of each refresh: (position, text) in order, blanked rows as ''."""
    states = []
    for m in re.finditer(r"(\n?)\r([^\r\n\x1b]*)(\x1b\[A)?", stderr):
        states.append((1 if m.group(1) and m.group(3) else 0, m.group(2).strip()))
    return states


class TestNestedEpochBars:
    """A run of several epochs: the epochs' bar (position 0) over the current epoch's steps (position 1)."""

    def run_through(self, run: RunPlan, last: int) -> str:
        """Rank 0's stderr for steps 1..last, epoch ends included, then the stop."""
        err = io.StringIO()
        # The job's clock moves a second each time it is read: every update is past tqdm's mininterval.
        ticks = itertools.count(AT)
        printer = Printer([dialect()], clock=lambda: next(ticks), stdout=io.StringIO(), stderr=err)
        printer.emit(ev.JobStarted(run=run, first=True, resume=False))
        for step in range(1, last + 1):
            printer.emit(step_done(run, step))
            if step == last:
                printer.emit(ev.TrainingStopped(step=step, reason="reached max steps"))
            if step % run.steps_per_epoch == 0:
                printer.emit(epoch_done(run, step))
        return err.getvalue()

    def test_outer_counts_epochs_inner_counts_the_epochs_steps(self) -> None:
        """Outer 0/3 first; each step redraws the lower bar only; an epoch's end blanks it and counts one."""
        run = small_run(epochs=3)
        states = bar_states(self.run_through(run, 12))
        outer = [(int(m[1]), int(m[2])) for p, t in states if p == 0 and (m := OUTER.match(t))]
        assert outer == [(0, 3), (1, 3), (2, 3), (3, 3)]
        inner = [tuple(map(int, m.groups())) for p, t in states if p == 1 and (m := INNER.match(t))]
        assert inner == [(s // 4 + 1, 3, s % 4 + 1, 4) for s in range(12)]
        blanks = [i for i, (p, t) in enumerate(states) if p == 1 and not t]
        assert len(blanks) == 3  # each epoch's bar, left=False

    def test_stop_mid_epoch_keeps_the_epochs_done(self) -> None:
        """Stopped in epoch 2, the outer bar closes at 1/3 and ends its line."""
        run = small_run(epochs=3)
        err = self.run_through(run, 6)
        assert err.endswith("\n")
        last = bar_states(err)[-1]
        m = OUTER.match(last[1])
        assert last[0] == 0 and m is not None and (m[1], m[2]) == ("1", "3")

    def test_one_epoch_keeps_one_bar(self) -> None:
        """A run of one epoch draws its single bar over the run's steps, never a nested one."""
        run = small_run(epochs=1)
        outputs = [o for s in range(1, 4) for o in dialect().render(step_done(run, s), AT)]
        assert outputs and all(isinstance(o, BarDraw) and o.position == 0 for o in outputs)
        assert all(
            text.startswith("Epoch 1/1:") for text in (o.text for o in outputs if isinstance(o, BarDraw))
        )


class TestEpochLine:
    """`epoch complete` on rank 0 with the epoch's figures; the validation only when one ran."""

    def test_fields(self) -> None:
        """Epoch k/N, step, mean train loss, val loss if evaluated, tokens, seconds."""
        run = small_run(epochs=3)
        event = dataclasses.replace(epoch_done(run, 4), val_loss=2.4321)
        (line,) = [o for o in dialect().render(event, AT) if isinstance(o, Line)]
        f = fields(line.text)
        assert "[info     ] epoch complete" in line.text
        assert (f["epoch"], f["step"], f["train_loss"], f["val_loss"], f["seconds"]) == (
            "1/3",
            "4",
            "2.5",
            "2.4321",
            "60.0",
        )
        assert "val_loss" not in fields(
            next(o.text for o in dialect().render(epoch_done(run, 4), AT) if isinstance(o, Line))
        )

    def test_only_rank_0(self) -> None:
        """Other ranks print no epoch line."""
        assert dialect(1).render(epoch_done(small_run(epochs=3), 4), AT) == ()


class TestShardsBar:
    """transformers' `Loading checkpoint shards` bar while pretrained weights or a checkpoint are read."""

    def test_bar_then_closed_at_the_last_shard(self) -> None:
        """Drawn while shards remain; the last one closes it at 100% with every shard counted."""
        d = dialect()
        shards = -(-checkpoint_bytes(presets.resolve("llama3-8b").model, full=False) // HF_SHARD_BYTES)
        assert shards == 4  # Llama 3 8B ships as 4 safetensors shards of at most 5 GB
        drawn = d.render(ev.WeightsLoading(shard=1, shards=shards, elapsed_s=0.8), AT)
        done = d.render(ev.WeightsLoading(shard=shards, shards=shards, elapsed_s=3.3), AT)
        assert len(drawn) == 1 and isinstance(drawn[0], BarDraw)
        assert drawn[0].text.startswith("Loading checkpoint shards:  25%|")
        assert len(done) == 1 and isinstance(done[0], BarClose) and done[0].text is not None
        assert re.match(
            r"Loading checkpoint shards: 100%\|█+\| 4/4 \[00:03<00:00, +[\d.]+it/s\]$", done[0].text
        )


class TestWarningsAndEndLines:
    """Slow pauses warn; the run ends with a success line before the table; --fake-loop marks each new run."""

    def test_slow_pauses(self) -> None:
        """A stalled checkpoint and a stalled evaluation each give a warning with their figures."""
        d = dialect()
        ckpt = d.render(
            ev.SlowPause(step=500, phase="checkpoint", seconds=41.2, usual_s=12.3, train_steps=20), AT
        )
        evl = d.render(ev.SlowPause(step=500, phase="eval", seconds=30.0, usual_s=9.0, train_steps=25.0), AT)
        assert isinstance(ckpt[0], Line) and "[warning  ] checkpoint save slower than usual" in ckpt[0].text
        assert (fields(ckpt[0].text)["seconds"], fields(ckpt[0].text)["usual_s"]) == ("41.2", "12.3")
        assert isinstance(evl[0], Line) and "[warning  ] evaluation slower than usual" in evl[0].text
        assert fields(evl[0].text)["train_steps"] == "25.0"

    def test_loop_line_on_the_next_runs_only(self) -> None:
        """The first run prints nothing; each next one its number and seed."""
        d = dialect()
        run = small_run(epochs=1)
        assert d.render(ev.JobStarted(run=run, first=True, resume=False), AT) == ()
        later = dataclasses.replace(run, job=dataclasses.replace(run.job, seed=run.job.seed + 1))
        (line,) = d.render(ev.JobStarted(run=later, first=False, resume=False), AT)
        assert isinstance(line, Line) and "restarting training from scratch" in line.text
        assert (fields(line.text)["run"], fields(line.text)["seed"]) == ("2", str(run.job.seed + 1))
        assert dialect(1).render(ev.JobStarted(run=later, first=False, resume=False), AT) == ()


class TestTrainingComplete:
    def test_time_is_on_the_jobs_clock(self) -> None:
        """The success line's time is simulated time (real seconds times the speed), as its timestamps are."""
        from tests.unit.test_dialects import sample_events

        (summary,) = [e for e in sample_events() if isinstance(e, ev.RunSummary)]
        summary = dataclasses.replace(summary, wall_s=0.25, speed=80.0)
        (line,) = [
            o.text for o in dialect().render(summary, 0.0) if isinstance(o, Line) and "complete" in o.text
        ]
        assert fields(line)["wall_time"] == f"{0.25 * 80.0:.1f}s"
