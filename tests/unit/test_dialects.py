"""The dialect architecture: the registry, selection by arguments, rank rules, purity and the printer."""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import re
import typing

import pytest
import tqdm.std

from fakerun import dialects, presets
from fakerun.dialects import events as ev
from fakerun.dialects.base import BarClose, BarDraw, Line, Seat
from fakerun.dialects.common import GridLines, TorchLines
from fakerun.render import bar
from fakerun.render.grid import GridGpu
from fakerun.sim import checkpoint
from fakerun.sim.job import make_job
from fakerun.sim.run import RunPlan, make_run
from fakerun.sim.step import step_numbers
from fakerun.worker.printer import Printer

AT = 1_795_000_000.25  # a moment on the job's clock


@functools.cache
def run_plan() -> RunPlan:
    b = presets.resolve("llama3.2-1b")
    job = make_job(b.model, b.cluster, b.storage, nnodes=2, nproc_per_node=4)
    return make_run(job, max_steps=20)


def seat(rank: int, **kw: typing.Any) -> Seat:
    job = run_plan().job
    return Seat(
        rank=rank,
        local_rank=rank % job.nproc_per_node,
        world_size=job.world_size,
        nproc_per_node=job.nproc_per_node,
        hosts=("node-a", "node-b"),
        **kw,
    )


def sample_events() -> list[ev.Event]:
    """One event of every kind, with figures from sim/ as the phase loop would compute them."""
    run = run_plan()
    job = run.job
    n = step_numbers(job, 0, 1)
    gpu = GridGpu(0, 0, 0, "node-a", 99, 60, 600, 700, 40_000, 81_000, "train", 1200.0)
    return [
        ev.JobStarted(run=run, first=True, resume=False),
        ev.WorkerStarted(host="node-a", local_rank=0, world_size=job.world_size, pid=4242),
        ev.DeviceSelected(
            index=0, name=job.gpu.display_name, memory_mib=job.gpu.memory_mib, bus_id="0:18:0.0"
        ),
        ev.ProcessGroupInitializing(backend="nccl", world_size=job.world_size),
        ev.BarrierPassed(device_index=0),
        ev.NcclInitialized(job=job, pid=4242, tid=4300),
        ev.ProcessGroupReady(tp_rank=0, dp_rank=0, pp_rank=0),
        ev.ModelConfigured(model=job.model, seq_len=job.seq_len),
        ev.ParallelismDecided(
            tp=job.tp,
            pp=job.pp,
            dp=job.dp,
            sharding=job.sharding,
            micro_batch=job.micro_batch,
            grad_accum=job.grad_accum,
            global_batch=job.global_batch,
            tokens_per_step=job.tokens_per_step,
        ),
        ev.TokenizerLoaded(vocab_size=job.model.vocab),
        ev.DatasetLoading(shard=3, shards=16, elapsed_s=1.5),
        ev.DatasetReady(tokens=10**9, samples=10**5, epochs=1, steps_per_epoch=run.steps_per_epoch),
        ev.ModelBuilt(dtype="bfloat16", params_on_rank=job.model.params, layers_on_rank=16, pp_rank=0),
        ev.CheckpointLoading(step=100, path="iter_0000100", nbytes=10**10),
        ev.CheckpointLoaded(step=100, path="iter_0000100", tokens=10**8, loss=3.2, lr=1e-4, seconds=12.0),
        ev.WeightsLoading(shard=1, shards=4, elapsed_s=0.8),
        ev.TrainingStarted(
            first_step=1,
            last_step=20,
            total_steps=job.total_steps,
            warmup_steps=10,
            lr=3e-4,
            schedule="cosine",
        ),
        ev.MemoryReport(
            step=1, iterations=1, allocated=2e10, max_allocated=3e10, reserved=3.2e10, max_reserved=3.2e10
        ),
        ev.NanLoss(step=1),
        ev.ResultRejected(step=7),
        ev.RerunExit(step=7, code=16),
        ev.LossSpike(step=1, loss=9.5, grad_norm=20.0),
        ev.Straggler(step=1, slow_rank=5, host="node-b", step_time_s=1.4, mfu=0.31),
        ev.GpuGrid(step=1, gpus=(gpu,), stragglers=frozenset()),
        ev.StepDone(
            run=run,
            numbers=n,
            elapsed_s=n.step_time_s,
            recent_s=(n.step_time_s,),
            interval_s=n.step_time_s,
            epoch=1 / run.steps_per_epoch,
            rank_tflops=n.tflops_per_gpu,
            rank_mfu=n.mfu,
            logged=True,
        ),
        ev.GradientSync(
            step=1, op="all_reduce", buckets=4, nbytes=2e9, ranks=8, algo="RING", time_ms=9.1, busbw_gbs=230.0
        ),
        ev.TrainingStopped(step=20, reason="reached max steps"),
        ev.EvalStarted(step=20, iters=10),
        ev.EvalProgress(step=20, batch=10, batches=10, elapsed_s=4.0),
        ev.EarlyStoppingCheck(step=20, val_loss=3.1, best=3.0, best_step=10, strikes=1, patience=3),
        ev.EvalDone(step=20, loss=3.1, ppl=math.exp(3.1), seconds=4.0, samples=1280, iters=10, epoch=0.1),
        ev.CheckpointSaving(step=20, path="iter_0000020", format="torch_dist"),
        ev.CheckpointSaved(step=20, path="iter_0000020", nbytes=10**10, seconds=2.0, bandwidth_gbs=5.0),
        ev.SlowPause(step=20, phase="checkpoint", seconds=9.0, usual_s=2.0, train_steps=7.5),
        ev.EpochDone(epoch=1, epochs=1, step=20, train_loss=3.0, val_loss=3.1, tokens=10**8, seconds=30.0),
        ev.ModelExported(path="hf_export/x", format="safetensors", files=checkpoint.export_files(job.model)),
        ev.RunSummary(
            model=job.model,
            world_size=job.world_size,
            gpu_name=job.gpu.display_name,
            nnodes=job.nnodes,
            nproc_per_node=job.nproc_per_node,
            tp=job.tp,
            pp=job.pp,
            dp=job.dp,
            sharding=job.sharding,
            first_step=1,
            last_step=20,
            total_steps=job.total_steps,
            tokens=20 * job.tokens_per_step,
            tokens_per_step=job.tokens_per_step,
            final_loss=3.0,
            val_loss=3.1,
            val_ppl=math.exp(3.1),
            median_step_s=1.2,
            median_tokens_per_s=4e5,
            median_tokens_per_s_per_gpu=5e4,
            median_mfu=0.42,
            median_tflops=415.0,
            checkpoints=1,
            last_checkpoint="iter_0000020",
            wall_s=3.0,
            speed=100.0,
        ),
        ev.TrainingFinished(step=20),
    ]


def render_all(name: str, rank: int, **kw: typing.Any) -> dict[type[ev.Event], list[object]]:
    """What the dialect `name` prints on `rank` for each sample event (only the kinds it prints)."""
    dialect = dialects.make(name, seat(rank, **kw))
    out = {type(e): list(dialect.render(e, AT)) for e in sample_events()}
    return {kind: items for kind, items in out.items() if items}


def texts(items: list[object]) -> list[str]:
    """The text of each output item that has one."""
    return [i.text for i in items if isinstance(i, (Line, BarDraw, BarClose)) and i.text is not None]


class TestEvents:
    """Every event kind is a frozen record, and the samples cover them all."""

    def test_samples_cover_every_kind(self) -> None:
        """A new event kind must get a sample here (and so reach every dialect's tests)."""
        assert {type(e) for e in sample_events()} == set(typing.get_args(ev.Event))

    def test_events_are_frozen(self) -> None:
        """Events cannot change after they are emitted."""
        event = ev.TrainingFinished(step=3)
        with pytest.raises(AttributeError):
            event.step = 4  # type: ignore[misc]


class TestRegistry:
    """One row per dialect, keyed by its name, each with a default for the grid."""

    def test_rows_are_keyed_by_name(self) -> None:
        """The table's key is the dialect's own name, and the default is one of them."""
        assert all(name == d.name for name, d in dialects.DIALECTS.items())
        assert dialects.DEFAULT in dialects.DIALECTS
        assert dialects.names() == tuple(sorted(dialects.DIALECTS))

    def test_only_fakerun_shows_the_grid_by_default(self) -> None:
        """A framework's log holds only what it prints: the grid is fakerun's own (--fake-grid adds it)."""
        assert [name for name, d in dialects.DIALECTS.items() if d.grid] == [dialects.DEFAULT]

    @pytest.mark.parametrize("name", sorted(dialects.DIALECTS))
    @pytest.mark.parametrize("rank", [0, 3, 7])
    def test_wants_agrees_with_render(self, name: str, rank: int) -> None:
        """A rank that prints something for an event kind says it wants that kind (the loop relies on it)."""
        dialect = dialects.make(name, seat(rank))
        for event in sample_events():
            if dialect.render(event, AT):
                assert dialect.wants(type(event)), type(event).__name__

    @pytest.mark.parametrize("name", sorted(dialects.DIALECTS))
    def test_pure(self, name: str) -> None:
        """The same events at the same moment render the same output."""
        assert render_all(name, 0) == render_all(name, 0)


class TestRanks:
    """Which ranks print what, per dialect."""

    def test_fakerun_rank0_prints_the_run_others_their_own_phases(self) -> None:
        """Rank 0 prints steps and the summary; every rank its start-up, memory and end."""
        rank0, other = render_all("fakerun", 0), render_all("fakerun", 5)
        assert ev.StepDone in rank0 and ev.RunSummary in rank0
        assert ev.StepDone not in other and ev.RunSummary not in other
        assert {ev.WorkerStarted, ev.MemoryReport, ev.TrainingFinished} <= set(other)

    def test_megatron_iteration_line_on_the_last_rank(self) -> None:
        """The last rank prints the final validation; no bar anywhere; memory waits for the first log line
        (the iteration lines and the end's order: test_dialect_megatron.py)."""
        last = render_all("megatron", 7)
        final = texts(last[ev.EvalDone])
        assert any("validation loss at iteration 20 on validation set" in t for t in final)
        rank0 = render_all("megatron", 0)
        assert not any(isinstance(item, BarDraw) for items in rank0.values() for item in items)
        assert ev.EvalDone not in rank0
        assert ev.MemoryReport not in render_all("megatron", 3)

    def test_titan_step_line_on_every_rank(self) -> None:
        """torchtitan logs the step on every rank."""
        for rank in (0, 3, 7):
            lines = [t for t in texts(render_all("titan", rank)[ev.StepDone]) if t.startswith("[titan] ")]
            assert len(lines) == 1

    def test_hf_dicts_on_rank0_only(self) -> None:
        """HF Trainer's dicts come from rank 0."""
        step = next(e for e in sample_events() if isinstance(e, ev.StepDone))
        # At a logging step (the Trainer does not log its first step by default).
        at_log = dataclasses.replace(
            step, numbers=dataclasses.replace(step.numbers, step=step.run.log_interval)
        )
        rank0 = texts(list(dialects.make("hf", seat(0)).render(at_log, AT)))
        # Written through tqdm.write: the bar cleared (`\r`, blanks, `\r`), then the dict.
        assert any(t.rsplit("\r", 1)[-1].startswith("{'loss': ") for t in rank0)
        assert not dialects.make("hf", seat(4)).render(at_log, AT)
        assert ev.StepDone not in render_all("hf", 4)

    def test_log_format_json_is_structured(self) -> None:
        """fakerun's json format renders each event as one JSON object with rank, event, level and time."""
        line = texts(render_all("fakerun", 0, log_format="json")[ev.TrainingStarted])[0]
        assert re.fullmatch(
            r'\{"rank": 0, .*"event": "starting training", "level": "info", "timestamp": ".*Z"\}', line
        )


class TestFakerunOwnEvents:
    """fakerun's own extras (epoch bars and lines, the shards bar, slow-pause warnings, the success and loop
    lines) belong to its style only: no other dialect prints any of them."""

    @staticmethod
    def extra_events() -> list[ev.Event]:
        """The events behind those extras, in a run of several epochs after a --fake-loop restart."""
        run = dataclasses.replace(run_plan(), epochs=4)
        step = next(e for e in sample_events() if isinstance(e, ev.StepDone))
        return [
            ev.JobStarted(run=run, first=False, resume=False),
            ev.WeightsLoading(shard=4, shards=4, elapsed_s=3.3),
            ev.StepDone(**{**vars(step), "run": run}),
            ev.SlowPause(step=20, phase="eval", seconds=40.0, usual_s=9.0, train_steps=30.0),
            ev.EpochDone(
                epoch=1, epochs=4, step=5, train_loss=3.0, val_loss=math.nan, tokens=10**8, seconds=9.0
            ),
            ev.TrainingStopped(step=20, reason="reached max steps"),
        ]

    def test_fakerun_prints_them_on_rank_0(self) -> None:
        """The fakerun style renders each of them on rank 0 (nested bars included)."""
        d = dialects.make("fakerun", seat(0))
        out = {type(e): list(d.render(e, AT)) for e in self.extra_events()}
        assert all(out[kind] for kind in (ev.JobStarted, ev.WeightsLoading, ev.SlowPause, ev.EpochDone))
        assert any(isinstance(i, BarDraw) and i.position == 1 for i in out[ev.StepDone])

    @pytest.mark.parametrize("name", sorted(set(dialects.DIALECTS) - {dialects.DEFAULT}))
    @pytest.mark.parametrize("rank", [0, 7])
    def test_no_other_dialect_prints_them(self, name: str, rank: int) -> None:
        """Nothing for the new kinds, no nested bar, no loop, epoch or success line in another framework."""
        d = dialects.make(name, seat(rank))
        # An epoch's end may be a framework's own moment (torchtune saves then): only its summary line is
        # fakerun's, checked below.
        for kind in (ev.WeightsLoading, ev.SlowPause):
            assert not d.wants(kind), kind.__name__
        items = [i for e in [*sample_events(), *self.extra_events()] for i in d.render(e, AT)]
        assert not any(isinstance(i, (BarDraw, BarClose)) and i.position for i in items)
        for text in texts(items):
            for extra in ("epoch complete", "training complete", "restarting training", "slower than usual"):
                assert extra not in text


class TestSelection:
    """The script's arguments vote for a dialect; the script's path decides alone or breaks ties."""

    @pytest.mark.parametrize(
        ("script", "options", "expected"),
        [
            ("train.py", [], dialects.DEFAULT),
            ("pretrain_gpt.py", [], "megatron"),
            ("train.py", ["num-layers", "hidden-size"], "megatron"),
            ("train.py", ["training.steps"], "titan"),
            ("train.py", ["per-device-train-batch-size"], "hf"),
            ("train.py", ["seq_length"], "hf"),
            ("train.py", ["seq-length"], "megatron"),
            (
                "train.py",
                ["num-layers", "output_dir"],
                dialects.DEFAULT,
            ),  # a tie without a script to break it
            ("run_clm.py", ["num-layers", "output_dir"], "hf"),
        ],
    )
    def test_select(self, script: str, options: list[str], expected: str) -> None:
        """The majority of votes wins; the script's path decides when nothing votes or breaks a tie."""
        assert dialects.select(script, options) == expected

    def test_explicit_wins_over_the_script(self) -> None:
        """--fake-trainer beats the arguments; json and logfmt are fakerun's own events."""
        assert dialects.choose("titan", "megatron", "console") == "titan"
        assert dialects.choose(None, "megatron", "console") == "megatron"
        assert dialects.choose("titan", "megatron", "json") == dialects.DEFAULT


class TestCommonLayers:
    """torch's own lines on every dialect, the grid only where it is shown."""

    def test_barrier_warning_on_stderr(self) -> None:
        """torch's C++ warning names the rank and its device, on stderr."""
        (line,) = TorchLines(seat(5)).render(ev.BarrierPassed(device_index=1), AT)
        assert isinstance(line, Line) and line.stream == "stderr"
        assert line.text.startswith("[rank5]:[W") and "using GPU 1 to perform barrier" in line.text

    def test_nccl_lines_only_with_nccl_debug(self) -> None:
        """NCCL's INFO lines are printed only when NCCL_DEBUG asks for them."""
        event = ev.NcclInitialized(job=run_plan().job, pid=10, tid=11)
        assert not TorchLines(seat(0)).render(event, AT)
        lines = TorchLines(seat(0, nccl_debug=True)).render(event, AT)
        assert any("Init COMPLETE" in item.text for item in lines if isinstance(item, Line))

    def test_collnet_enable_reaches_nccl(self) -> None:
        """NCCL_COLLNET_ENABLE from the rank's environment turns SHARP's CollNet lines on (SHARP cluster)."""
        event = ev.NcclInitialized(job=run_plan().job, pid=10, tid=11)
        assert event.job.cluster.sharp and event.job.nnodes >= 2

        def texts(**kw: typing.Any) -> list[str]:
            lines = TorchLines(seat(0, nccl_debug=True, **kw)).render(event, AT)
            return [item.text for item in lines if isinstance(item, Line)]

        assert not any("COLLNET" in text for text in texts())
        assert any(
            "CollNet 00/0 : 0 [receive] via COLLNET/SHARP/0/GDRDMA" in t
            for t in texts(nccl_collnet_enable="1")
        )

    def test_grid_only_when_shown(self) -> None:
        """The grid layer prints nothing unless the seat shows the grid."""
        grid = next(e for e in sample_events() if isinstance(e, ev.GpuGrid))
        assert not GridLines(seat(0)).render(grid, AT)
        assert GridLines(seat(0, grid=True)).render(grid, AT)


class TestPrinter:
    """The printer writes whole lines per stream and draws the bar as tqdm does."""

    class Fixed:
        """A layer that returns given outputs."""

        def __init__(self, *outputs: object) -> None:
            self.outputs = outputs

        def render(self, event: ev.Event, at: float) -> typing.Sequence[typing.Any]:
            return self.outputs

        def wants(self, kind: type[ev.Event]) -> bool:
            return True

    def test_streams_and_bar(self) -> None:
        """stdout lines end with newlines; the bar redraws with \\r and its close ends the line."""
        out, err = io.StringIO(), io.StringIO()
        layer = self.Fixed(BarDraw("1/2"), Line("a"), Line("b"), Line("w", "stderr"), BarClose("2/2"))
        printer = Printer([layer], clock=lambda: AT, stdout=out, stderr=err)
        printer.emit(ev.TrainingFinished(step=1))
        assert out.getvalue() == "a\nb\n"
        assert err.getvalue() == "\r1/2w\n\r2/2\n"

    def test_bar_on_stdout_in_order_with_stdout_lines(self) -> None:
        """A bar on stdout (Lightning's Tqdm(file=sys.stdout)) goes out between the stdout lines around it."""
        out, err = io.StringIO(), io.StringIO()
        layer = self.Fixed(
            Line("a"), BarDraw("1/2", stream="stdout"), BarClose("2/2", stream="stdout"), Line("b")
        )
        Printer([layer], clock=lambda: AT, stdout=out, stderr=err).emit(ev.TrainingFinished(step=1))
        assert out.getvalue() == "a\n\r1/2\r2/2\nb\n" and err.getvalue() == ""

    def test_nested_bar_as_tqdm_moves_to_it(self) -> None:
        """A bar at position 1 is drawn a line down, the cursor back up; its close blanks that line."""
        err = io.StringIO()
        layer = self.Fixed(BarDraw("0/2"), BarDraw("3/10", position=1), BarClose(position=1), BarClose("1/2"))
        Printer([layer], clock=lambda: AT, stdout=io.StringIO(), stderr=err).emit(ev.TrainingFinished(step=1))
        assert err.getvalue() == "\r0/2" + "\n\r3/10\x1b[A" + "\n\r    \x1b[A" + "\r1/2\n"

    @pytest.mark.parametrize("total", [40, 42])
    def test_refreshes_into_a_file_byte_for_byte_as_tqdm(
        self, total: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The bar into a file (a SLURM .out) is tqdm's bytes: a refresh per mininterval (0.1 s) of updates,
        `\\r` and the meter padded over a longer last one, close() showing the final state (42: an update
        held back by mininterval) and its newline. Reference: tqdm itself on a StringIO, same clock."""
        now = [1000.0]
        monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
        monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)  # no monitor thread
        dt = 0.03  # 4 steps a refresh; neither elapsed nor remaining ever lands on a whole second
        # tok/s alternates between 1.13M and 998k from one refresh to the next: the shorter is padded.
        posts = [
            f"loss={3 - i / 100:.4f}, tok/s={bar.human_count(1.13e6 if i // 4 % 2 else 9.98e5)}"
            for i in range(total + 1)
        ]
        # A UTF-8 file, as a job's .out is (on an io.StringIO, which has no encoding, tqdm draws in ASCII).
        ref = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="")
        t = tqdm.std.tqdm(total=total, desc="Epoch 1/1", file=ref)
        err = io.StringIO()
        printer = Printer([], clock=lambda: now[0], stdout=io.StringIO(), stderr=err)
        start = now[0]
        printer.write([BarDraw(bar.meter(0, total, 0.0, prefix="Epoch 1/1"))])
        for i in range(1, total + 1):
            now[0] += dt
            t.set_postfix_str(posts[i], refresh=False)
            t.update(1)
            text = bar.meter(i, total, now[0] - start, prefix="Epoch 1/1", postfix=posts[i], rate=1 / dt)
            printer.write([BarDraw(text)])
        t.close()
        printer.write([BarClose()])
        ref.flush()
        assert err.getvalue() == ref.buffer.getvalue().decode()  # type: ignore[attr-defined]
        assert err.getvalue().count("\r") == 1 + total // 4 + 1  # the first draw, a refresh per 4, the close
        assert re.search(r"tok/s=998k\] +\r", err.getvalue())  # the padding did something

    def test_close_without_open_bar_writes_nothing(self) -> None:
        """Closing a bar that was never drawn leaves stderr empty, as tqdm does."""
        err = io.StringIO()
        Printer([self.Fixed(BarClose())], clock=lambda: AT, stdout=io.StringIO(), stderr=err).emit(
            ev.TrainingFinished(step=1)
        )
        assert err.getvalue() == ""

    def test_layers_render_at_the_clock(self) -> None:
        """Every layer gets the moment the printer's clock gives, and the fakerun dialect stamps it."""
        out = io.StringIO()
        s = seat(0)
        layers = (TorchLines(s), dialects.make("fakerun", s), GridLines(s))
        printer = Printer(layers, clock=lambda: AT, stdout=out, stderr=io.StringIO())
        printer.emit(ev.TrainingFinished(step=9))
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,250 \[info", out.getvalue())
