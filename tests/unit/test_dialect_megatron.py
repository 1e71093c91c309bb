"""Megatron-LM and Megatron-DeepSpeed dialects and the fp16 loss scaler: golden lines parsed back with the
real logs' formats (reallogs 08, 20-27), values from sim/."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
import typing

import pytest

from fakerun import dialects, presets
from fakerun.cli import parse_command_line
from fakerun.dialects import events as ev
from fakerun.dialects.base import Line, Seat, seconds_time
from fakerun.dialects.megatron import arguments_block
from fakerun.hints import parse_hints
from fakerun.jobconfig import build_run
from fakerun.sim import checkpoint, compute, lossscale
from fakerun.sim import megatron as figures
from fakerun.sim.job import JobSpec, make_job
from fakerun.sim.run import (
    ENDING_FAKERUN,
    ENDING_MEGATRON,
    ENDING_MEGATRON_2022,
    Pause,
    RunPlan,
    looped,
    make_run,
    resumed,
)
from fakerun.sim.schedule import lr
from fakerun.sim.step import step_numbers
from fakerun.worker.printer import Printer
from fakerun.worker.trainer import _STEP_FIGURE_EVENTS

AT = 1_795_000_000.25

# Formats written from the excerpts (26: core line, 27: fp16 line without lm loss / grad norm, 21: memory,
# 23: BLOOM line, 25: timers).
CORE = re.compile(
    r"^ \[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] iteration +(?P<it>\d+)/ +(?P<total>\d+) \|"
    r" consumed samples: +(?P<samples>\d+) \| elapsed time per iteration \(ms\): (?P<ms>\d+\.\d) \|"
    r" throughput per GPU \(TFLOP/s/GPU\): (?P<tflops>\d+\.\d) \|"
    r" learning rate: (?P<lr>\d\.\d{6}E[+-]\d\d) \|"
    r" global batch size: +(?P<gbs>\d+) \|(?: lm loss: (?P<loss>\d\.\d{6}E[+-]\d\d) \|)?"
    r" loss scale: (?P<scale>\d+\.\d) \|(?: grad norm: (?P<gn>\d+\.\d{3}) \|)?"
    r" number of skipped iterations: +(?P<skipped>\d+) \| number of nan iterations: +(?P<nan>\d+) \|$"
)
MEMORY = re.compile(
    r"^\[Rank (?P<rank>\d+)\] \(after (?P<it>\d+) iterations\) memory \(MB\) \| allocated: (?P<a>[\d.]+) \|"
    r" max allocated: (?P<ma>[\d.]+) \| reserved: (?P<r>[\d.]+) \| max reserved: (?P<mr>[\d.]+)$"
)
DS = re.compile(
    r"^ iteration +(?P<it>\d+)/ +(?P<total>\d+) \| consumed samples: +(?P<samples>\d+) \|"
    r" consumed tokens: +(?P<tokens>\d+) \| elapsed time per iteration \(s\): (?P<s>\d+\.\d\d) \|"
    r" learning rate: (?P<lr>\d\.\d{3}E[+-]\d\d) \| global batch size: +(?P<gbs>\d+) \|"
    r"(?: lm loss: (?P<loss>\d\.\d{6}E[+-]\d\d) \|)?(?: loss scale: (?P<scale>\d+\.\d) \|)?"
    r"(?: grad norm: (?P<gn>\d+\.\d{3}) \| num zeros: 0\.0 \|)?"
    r" number of skipped iterations: +(?P<skipped>\d+) \| number of nan iterations: +(?P<nan>\d+) \|"
    r" samples per second: (?P<sps>\d+\.\d{3}) \| TFLOPs: (?P<tflops>\d+\.\d\d) \|$"
)
# Megatron-LM 2021-22 (excerpts 21, 25): no timestamp, no throughput, a 3-digit learning rate.
LEGACY = re.compile(
    r"^ iteration +(?P<it>\d+)/ +(?P<total>\d+) \| consumed samples: +(?P<samples>\d+) \|"
    r" elapsed time per iteration \(ms\): (?P<ms>\d+\.\d) \| learning rate: (?P<lr>\d\.\d{3}E[+-]\d\d) \|"
    r" global batch size: +(?P<gbs>\d+) \|(?: lm loss: (?P<loss>\d\.\d{6}E[+-]\d\d) \|)?"
    r" loss scale: (?P<scale>\d+\.\d) \|(?: grad norm: (?P<gn>\d+\.\d{3}) \|)?"
    r" number of skipped iterations: +(?P<skipped>\d+) \| number of nan iterations: +(?P<nan>\d+) \|$"
)
TIMERS = re.compile(r"^time \(ms\)( \| [a-z-]+: \d+\.\d\d)+$")
ARG_ROW = re.compile(r"^  (?P<name>\w+) (?P<dots>\.+) (?P<value>.*)$")


@functools.cache
def fp16_job(seed: int = 7) -> JobSpec:
    b = presets.resolve("gpt2-124m")
    return make_job(
        b.model,
        b.cluster,
        b.storage,
        nnodes=1,
        nproc_per_node=8,
        precision="fp16",
        total_steps=5000,
        seed=seed,
    )


def bf16_job() -> JobSpec:
    return dataclasses.replace(fp16_job(), precision="bf16")


def seat(job: JobSpec, rank: int) -> Seat:
    return Seat(
        rank=rank,
        local_rank=rank % job.nproc_per_node,
        world_size=job.world_size,
        nproc_per_node=job.nproc_per_node,
        hosts=("node-a",),
    )


def step_done(run: RunPlan, step: int, rank: int) -> ev.StepDone:
    """StepDone as the phase loop builds it (worker/trainer.py), from sim/ only."""
    job = run.job
    n = lossscale.with_skips(job, step_numbers(job, rank, step))
    since = max(run.first_step - 1, (step - 1) // run.log_interval * run.log_interval)
    scaled = lossscale.loss_scale(job, job.seed, step)
    skipped = lossscale.skipped_between(job, job.seed, since, step)
    nans = sum(1 for s in job.nan_steps if since < s <= step)
    interval_s = n.step_time_s
    return ev.StepDone(
        run=run,
        numbers=n,
        elapsed_s=interval_s * step,
        recent_s=(interval_s,),
        interval_s=interval_s,
        epoch=0.0,
        rank_tflops=0.0,
        rank_mfu=0.0,
        logged=True,
        loss_scale=scaled.scale,
        step_skipped=scaled.skipped_now,
        skipped_iters=skipped,
        nan_steps=nans,
        advanced_iters=step - since - skipped,
        megatron_tflops=compute.framework_tflops_per_gpu(job, interval_s, "megatron"),
        samples_per_s=job.global_batch / interval_s,
        timers_ms=figures.step_timers_ms(job, n),
    )


def lines(
    name: str, run: RunPlan, rank: int, events: list[ev.Event], settings: tuple[tuple[str, str], ...] = ()
) -> list[str]:
    d = dialects.make(name, seat(run.job, rank))
    out: list[str] = []
    for e in [ev.JobStarted(run=run, first=True, resume=False, settings=settings), *events]:
        out += [item.text for item in d.render(e, AT) if isinstance(item, Line)]
    return out


class TestLossScale:
    def test_fp16_starts_at_the_initial_scale_skips_and_halves(self) -> None:
        job = fp16_job()
        first = lossscale.loss_scale(job, job.seed, 1)
        assert first.skipped_now and first.skipped == 1
        scales = [lossscale.loss_scale(job, job.seed, s).scale for s in range(1, 40)]
        assert scales[0] <= job.initial_loss_scale
        assert all(b in (a, a / 2) for a, b in itertools.pairwise(scales))
        assert scales[-1] < job.initial_loss_scale / 2**10
        # Hysteresis 2: the first overflow does not halve, the next ones do.
        assert scales[0] == job.initial_loss_scale and scales[1] == job.initial_loss_scale / 2

    def test_the_scale_grows_after_a_clean_window_and_overflows_again(self) -> None:
        job = fp16_job()
        s = next(s for s in range(1, 200) if not lossscale.loss_scale(job, job.seed, s).skipped_now)
        base = lossscale.loss_scale(job, job.seed, s)
        later = [lossscale.loss_scale(job, job.seed, x) for x in range(s, s + 3 * job.loss_scale_window)]
        assert max(x.scale for x in later) >= 2 * base.scale
        assert later[-1].skipped > base.skipped  # growing past the safe scale overflows

    def test_bf16_and_static_scales_never_skip(self) -> None:
        static = dataclasses.replace(fp16_job(), static_loss_scale=4096.0)
        for step in (1, 2, 50, 4000):
            assert lossscale.loss_scale(bf16_job(), 0, step) == lossscale.LossScale(1.0, 0, False)
            assert lossscale.loss_scale(static, 0, step) == lossscale.LossScale(4096.0, 0, False)

    def test_a_nan_step_overflows_like_any_other(self) -> None:
        """DynamicGradScaler sees found_inf at a NaN step: it skips it, resets the growth tracker and spends
        one hysteresis count (halving once the count is used up)."""
        base = fp16_job()
        nan = dataclasses.replace(base, nan_steps=(1500,))
        before = lossscale.loss_scale(base, base.seed, 1499)
        if lossscale.loss_scale(base, base.seed, 1500).skipped_now:
            pytest.skip("this seed overflows at 1500 anyway")
        hit = lossscale.loss_scale(nan, nan.seed, 1500)
        assert hit.skipped_now and hit.skipped == before.skipped + 1
        assert hit.scale in (before.scale, before.scale / 2)

    def test_skipped_iterations_do_not_advance_the_lr(self) -> None:
        job = fp16_job()
        for step in (3, 30, 300):
            skipped = lossscale.loss_scale(job, job.seed, step).skipped
            n = lossscale.with_skips(job, step_numbers(job, 0, step))
            assert skipped > 0
            assert n.lr == (lr(job, step - skipped) if step > skipped else 0.0)

    def test_deterministic_per_seed(self) -> None:
        a = [lossscale.loss_scale(fp16_job(1), 1, s) for s in range(1, 3000, 97)]
        b = [lossscale.loss_scale(fp16_job(1), 1, s) for s in range(1, 3000, 97)]
        assert a == b


class TestMegatronCore:
    def run(self, job: JobSpec | None = None) -> RunPlan:
        return make_run(job or fp16_job(), max_steps=40, log_interval=10)

    def test_iteration_line_parses_back_with_the_events_figures(self) -> None:
        run = self.run()
        e = step_done(run, 30, 7)
        (text,) = lines("megatron", run, 7, [e])
        m = CORE.match(text)
        assert m, text
        n = e.numbers
        assert int(m["it"]) == 30 and int(m["total"]) == run.job.total_steps
        assert int(m["samples"]) == n.samples and int(m["gbs"]) == run.job.global_batch
        assert float(m["ms"]) == pytest.approx(1000 * e.interval_s, abs=0.05)
        assert float(m["tflops"]) == pytest.approx(e.megatron_tflops, abs=0.05)
        # Megatron's TFLOP/s follows its printed time: FLOPs / (GPUs x time).
        flops = compute.framework_flops_per_step(run.job, "megatron")
        assert float(m["tflops"]) == pytest.approx(flops / (8 * float(m["ms"]) / 1000) / 1e12, rel=2e-3)
        assert float(m["lr"]) == pytest.approx(n.lr, rel=1e-6)
        assert float(m["scale"]) == e.loss_scale
        assert int(m["skipped"]) == e.skipped_iters

    def test_skipped_only_interval_prints_no_loss_and_no_grad_norm(self) -> None:
        run = self.run()
        e = step_done(run, 10, 7)
        assert e.advanced_iters == 0 and e.step_skipped
        m = CORE.match(lines("megatron", run, 7, [e])[0])
        assert m and m["loss"] is None and m["gn"] is None
        assert int(m["skipped"]) == 10 and float(m["lr"]) == 0.0

    def test_bf16_prints_loss_scale_one_and_no_skips(self) -> None:
        run = self.run(bf16_job())
        m = CORE.match(lines("megatron", run, 7, [step_done(run, 10, 7)])[0])
        assert m and float(m["scale"]) == 1.0 and int(m["skipped"]) == 0 and m["loss"] and m["gn"]

    def test_only_log_steps_and_only_the_last_rank(self) -> None:
        run = self.run()
        assert lines("megatron", run, 7, [step_done(run, 9, 7)]) == []
        assert lines("megatron", run, 3, [step_done(run, 10, 3)]) == []

    def test_memory_after_the_first_log_line_on_data_parallel_rank_0(self) -> None:
        b = presets.resolve("gpt2-124m")
        job = make_job(
            b.model, b.cluster, b.storage, nnodes=1, nproc_per_node=8, tp=2, precision="fp16", seed=7
        )
        run = make_run(job, max_steps=40, log_interval=10)
        report = ev.MemoryReport(
            step=1, iterations=1, allocated=2e9, max_allocated=3e9, reserved=3.5e9, max_reserved=3.5e9
        )
        printed = {}
        for rank in range(8):
            out = lines("megatron", run, rank, [report, step_done(run, 10, rank), step_done(run, 20, rank)])
            printed[rank] = [m for m in map(MEMORY.match, out) if m]
        assert {r for r, ms in printed.items() if ms} == {0, 1}  # tp ranks of data-parallel rank 0
        m = printed[1][0]
        assert len(printed[1]) == 1 and int(m["rank"]) == 1 and int(m["it"]) == 10
        assert float(m["a"]) == pytest.approx(2e9 / 2**20) and float(m["mr"]) == pytest.approx(3.5e9 / 2**20)

    def test_startup_arguments_block_is_sorted_and_dotted(self) -> None:
        run = self.run()
        out = lines("megatron", run, 0, [ev.WorkerStarted(host="a", local_rank=0, world_size=8, pid=1)])
        assert out[0].startswith("using world size: 8, data-parallel size: 8, context-parallel size: 1")
        start = out.index("------------------------ arguments ------------------------")
        end = out.index("-------------------- end of arguments ---------------------")
        rows = out[start + 1 : end]
        assert rows == sorted(rows, key=str.lower) and len(rows) > 30
        for row in rows:
            m = ARG_ROW.match(row)
            assert m and len(m["name"]) + len(m["dots"]) == 48
        assert "  fp16 " + "." * 44 + " True" in rows
        assert (
            lines("megatron", run, 3, [ev.WorkerStarted(host="a", local_rank=3, world_size=8, pid=1)]) == []
        )

    def test_validation_block_and_final_order(self) -> None:
        run = self.run()
        done = ev.EvalDone(step=20, loss=3.1, ppl=math.exp(3.1), seconds=4.0, samples=80, iters=5, epoch=0.0)
        out = lines("megatron", run, 7, [done])
        assert out[:2] == [
            "(min, max) time across ranks (ms):",
            f"    {'evaluate '.ljust(48, '.')}: (4000.00, 4000.00)",
        ]
        rule, body, rule2 = out[2:]
        assert rule == rule2 == "-" * (len(body) + 1)
        assert (
            body
            == " validation loss at iteration 20 | lm loss value: 3.100000E+00 | lm loss PPL: 2.219795E+01 | "
        )


VAL_LOSS, TEST_LOSS = 3.1, 3.2


def pause_events(run: RunPlan, step: int, pauses: tuple[Pause, ...]) -> list[ev.Event]:
    """The pauses after `step` as worker/trainer.py emits them (evaluations 4 s, saves 2 s)."""
    return [e for phase, _ in pauses for e in pause(run, step, phase)]


def pause(run: RunPlan, step: int, phase: str) -> list[ev.Event]:
    """One pause after `step`: an evaluation of its split or a save."""
    if phase == "checkpoint":
        return [
            ev.CheckpointSaving(step=step, path="x", format="torch_dist"),
            ev.CheckpointSaved(step=step, path="x", nbytes=1, seconds=2.0, bandwidth_gbs=1.0),
        ]
    split, value = ("test", TEST_LOSS) if phase == "test" else ("validation", VAL_LOSS)
    return [
        ev.EvalStarted(step=step, iters=run.eval_iters, split=split),
        ev.EvalDone(
            step=step,
            loss=value,
            ppl=math.exp(value),
            seconds=4.0,
            samples=run.eval_iters * run.job.global_batch,
            iters=run.eval_iters,
            epoch=0.0,
            split=split,
        ),
    ]


def end_events(run: RunPlan, step: int, reason: str = "reached total steps") -> list[ev.Event]:
    """The end of a run as worker/trainer.py emits it from the plan: the loop's pauses after its last step,
    the stop, the pauses after the loop, the last event."""
    exits = reason.startswith("exit")
    return [
        *pause_events(run, step, run.loop_pauses(step, final=True, exits=exits)),
        ev.TrainingStopped(step=step, reason=reason),
        *pause_events(run, step, run.end_pauses(step, exits=exits)),
        ev.TrainingFinished(step=step),
    ]


def block(label: str, prefix: str, value: float) -> list[str]:
    """evaluate_and_print_results' lines (its string, rules of len + 1), written from the source."""
    body = f"{label} loss at {prefix} | lm loss value: {value:.6E} | lm loss PPL: {math.exp(value):.6E} | "
    return ["-" * (len(body) + 1), body, "-" * (len(body) + 1)]


def core_timer(name: str, ms: float) -> list[str]:
    """Megatron-core's Timers.log of one timer (its min and max alike: one rank's figure)."""
    return ["(min, max) time across ranks (ms):", f"    {(name + ' ').ljust(48, '.')}: ({ms:.2f}, {ms:.2f})"]


def megatron_run(ending: str = ENDING_MEGATRON, *, test: bool = True, **kw: typing.Any) -> RunPlan:
    """A Megatron run ending as `ending` says, its last step 40 unless an exit comes first."""
    return make_run(fp16_job(), max_steps=40, log_interval=10, ending=ending, test=test, **kw)


class TestMegatronEnd:
    """How a run ends: training done (the loop's evaluation and save, pretrain()'s) or an --exit-* exit."""

    @pytest.mark.parametrize("ending", [ENDING_MEGATRON, ENDING_MEGATRON_2022, ENDING_FAKERUN])
    def test_exit_interval_ends_the_run_at_its_first_multiple(self, ending: str) -> None:
        run = make_run(fp16_job(), exit_interval=25, eval_interval=10, save_interval=20, ending=ending)
        assert (run.first_step, run.last_step) == (1, 25)
        # checkpoint_and_decide_exit: the exit saves (the interval's save did not), no final evaluation.
        assert [phase for phase, _ in run.pauses_after(25, final=True)] == ["checkpoint"]
        at_30 = make_run(fp16_job(), exit_interval=30, eval_interval=10, save_interval=30, ending=ending)
        assert [phase for phase, _ in at_30.pauses_after(30, final=True)] == ["eval", "checkpoint"]
        # Megatron's exit is its loop's: nothing of pretrain()'s end follows.
        if ending != ENDING_FAKERUN:
            assert run.end_pauses(25) == () and at_30.end_pauses(30) == ()
        # A run restarted from its save at 20 still exits at 25; --fake-max-steps may end it before.
        assert resumed(run, 20).last_step == 25 and looped(run, 1).last_step == 25
        assert make_run(fp16_job(), exit_interval=25, max_steps=10).last_step == 10
        assert make_run(dataclasses.replace(fp16_job(), start_step=50), exit_interval=25).last_step == 75

    def test_exit_prints_after_its_save_and_ends_no_training(self) -> None:
        run = megatron_run(exit_interval=25, eval_interval=10, save_interval=20)
        events = end_events(run, 25, "exit interval")
        first = lines("megatron", run, 0, events, (("save", "ck"),))
        assert first[0].startswith("saving checkpoint at iteration      25 to ck")
        assert first[1].startswith("  successfully saved checkpoint from iteration      25 to ck")
        assert first[2:] == [f"[exiting program at iteration 25] datetime: {seconds_time(AT)} "]
        assert lines("megatron", run, 7, events, (("save", "ck"),)) == core_timer("save-checkpoint", 2000.0)

    def test_exit_duration_prints_pythons_minutes(self) -> None:
        run = make_run(fp16_job(), exit_after_s=60.0)
        d = dialects.make("megatron", seat(run.job, 0))
        d.render(ev.JobStarted(run=run, first=True, resume=False), AT - 95.5)
        d.render(ev.TrainingStopped(step=70, reason="exit duration"), AT)
        out = [item.text for item in d.render(ev.TrainingFinished(step=70), AT) if isinstance(item, Line)]
        assert out == [f"[exiting program after {95.5 / 60.0} minutes] datetime: {seconds_time(AT)} "]

    def test_without_save_nothing_is_saved(self) -> None:
        run = megatron_run(save_interval=20, saves=False, test=False)
        assert not any(phase == "checkpoint" for s in range(1, 41) for phase, _ in run.pauses_after(s))
        assert [phase for phase, _ in run.pauses_after(40, final=True)] == ["eval"]
        startup = lines("megatron", run, 0, [ev.WorkerStarted("h", 0, 8, 1)])
        assert "  save ............................................ None" in startup
        # Megatron's --save decides; a script of another framework always saves.
        script = ["pretrain_gpt.py", "--num-layers", "4", "--train-iters", "50"]
        for extra, saves in (([], False), (["--save", "ck"], True)):
            cmd = parse_command_line(["--nproc-per-node", "8", *script, *extra], {})
            built, _ = build_run(
                cmd, presets.resolve("gpt2-124m"), nnodes=1, nproc_per_node=8, model_given=True
            )
            assert built.saves is saves
        cmd = parse_command_line(["--nproc-per-node", "8", "train.py", "--max_steps", "50"], {})
        assert build_run(cmd, presets.resolve("gpt2-124m"), nnodes=1, nproc_per_node=8, model_given=True)[
            0
        ].saves

    @pytest.mark.parametrize(
        ("save_interval", "test", "phases"),
        [
            # The loop evaluates (eval interval 20) and saves (20) after iteration 40; pretrain() saves no
            # more (40 % 20 == 0), then evaluates the validation and the test sets.
            (20, True, ["eval", "checkpoint", "|", "eval", "test"]),
            # 40 % 30 != 0: pretrain()'s save, before its evaluations.
            (30, True, ["eval", "|", "checkpoint", "eval", "test"]),
            (30, False, ["eval", "|", "checkpoint", "eval"]),
        ],
    )
    def test_core_pauses_follow_pretrain(self, save_interval: int, test: bool, phases: list[str]) -> None:
        run = megatron_run(eval_interval=20, save_interval=save_interval, test=test)
        got = [p for p, _ in run.loop_pauses(40, final=True)] + ["|"] + [p for p, _ in run.end_pauses(40)]
        assert got == phases
        # Each pause has its own draw: no two evaluations (or saves) of iteration 40 take the same time.
        seconds = [s for _, s in run.pauses_after(40, final=True)]
        assert len(set(seconds)) == len(seconds)

    @pytest.mark.parametrize(
        ("save_interval", "phases"),
        [
            # 2021-22 pretrain(): the loop's evaluation and save, then the validation, a save whatever the
            # loop saved, the test set.
            (20, ["eval", "checkpoint", "|", "eval", "checkpoint", "test"]),
            (30, ["eval", "|", "eval", "checkpoint", "test"]),
        ],
    )
    def test_2022_pauses_follow_pretrain(self, save_interval: int, phases: list[str]) -> None:
        run = megatron_run(ENDING_MEGATRON_2022, eval_interval=20, save_interval=save_interval)
        got = [p for p, _ in run.loop_pauses(40, final=True)] + ["|"] + [p for p, _ in run.end_pauses(40)]
        assert got == phases

    def test_fakerun_ending_is_unchanged(self) -> None:
        run = make_run(fp16_job(), max_steps=40, eval_interval=20, save_interval=20)
        assert run.loop_pauses(40, final=True) == ()
        assert [p for p, _ in run.end_pauses(40)] == ["eval", "checkpoint"]
        assert [p for p, _ in run.pauses_after(20)] == ["eval", "checkpoint"]

    def test_core_end_on_every_rank(self) -> None:
        """core_v0.15 train() then pretrain(): the loop's evaluation and save of iteration 40, `after training
        is done`, the validation and test sets, each evaluate(verbose=True) with its timer."""
        run = megatron_run(eval_interval=20, save_interval=20)
        events = end_events(run, 40)
        samples = run.eval_iters * run.job.global_batch
        progress = [f"Evaluating on {samples} samples"] + [
            f"Evaluating iter {i}/{run.eval_iters}" for i in range(1, run.eval_iters + 1)
        ]
        assert lines("megatron", run, 0, events, (("save", "ck"),)) == [
            "saving checkpoint at iteration      40 to ck in torch_dist format",
            "  successfully saved checkpoint from iteration      40 to ck [ t 1/1, p 1/1 ]",
            f"[after training is done] datetime: {seconds_time(AT)} ",
            *progress,
            *progress,
        ]
        assert lines("megatron", run, 7, events, (("save", "ck"),)) == [
            *core_timer("evaluate", 4000.0),
            *block(" validation", "iteration 40", VAL_LOSS),
            *core_timer("save-checkpoint", 2000.0),
            *core_timer("evaluate", 4000.0),
            *block(" validation", "iteration 40 on validation set", VAL_LOSS),
            *core_timer("evaluate", 4000.0),
            *block(" validation", "iteration 40 on test set", TEST_LOSS),
        ]
        # pretrain()'s own save (40 % 30 != 0) logs no timer and comes before the final evaluations.
        late = megatron_run(eval_interval=20, save_interval=30)
        first = lines("megatron", late, 0, end_events(late, 40), (("save", "ck"),))
        assert first[0].startswith("[after training is done]") and first[1].startswith("saving checkpoint")
        assert first[3:] == progress * 2
        assert not any("save-checkpoint" in x for x in lines("megatron", late, 7, end_events(late, 40)))

    def test_2022_end_on_every_rank(self) -> None:
        """2022 pretrain(): `the end of training for val data` (not verbose), save_checkpoint (no timer), then
        the test data, verbose: `Evaluating iter` every --log-interval batches."""
        run = megatron_run(ENDING_MEGATRON_2022, eval_interval=20, save_interval=20, eval_iters=25)
        settings = (("save", "ck"), ("checkpoint_activations", "true"))
        events = end_events(run, 40)
        saving = [
            "saving checkpoint at iteration      40 to ck",
            "  successfully saved checkpoint at iteration      40 to ck",
        ]
        assert lines("megatron", run, 0, events, settings) == [
            *saving,
            f"[after training is done] datetime: {seconds_time(AT)} ",
            *saving,
            "Evaluating iter 10/25",
            "Evaluating iter 20/25",
        ]
        assert lines("megatron", run, 7, events, settings) == [
            *block(" validation", "iteration 40", VAL_LOSS),
            "time (ms) | save-checkpoint: 2000.00",
            *block(" validation", "the end of training for val data", VAL_LOSS),
            *block(" validation", "the end of training for test data", TEST_LOSS),
        ]

    def test_megatron_deepspeed_names_its_data_groups(self) -> None:
        """The fork's evaluate_and_print_results: `valid loss at` / `test loss at`, no leading space, no
        evaluate timer."""
        run = megatron_run(ENDING_MEGATRON_2022, eval_interval=20, save_interval=30)
        assert lines("megatron-deepspeed", run, 7, end_events(run, 40), (("save", "ck"),)) == [
            *block("valid", "iteration 40", VAL_LOSS),
            *block("valid", "the end of training for val data", VAL_LOSS),
            *block("test", "the end of training for test data", TEST_LOSS),
        ]

    @pytest.mark.parametrize(
        ("trainer", "args", "ending", "test"),
        [
            # core: --data-path without --split takes "969, 30, 1"; mock data "1,1,1": both test.
            ("megatron", "", ENDING_MEGATRON, True),
            ("megatron", "--split 969,30,1", ENDING_MEGATRON, True),
            ("megatron", "--split 99,1,0", ENDING_MEGATRON, False),
            ("megatron", "--split 100", ENDING_MEGATRON, False),
            # Per-split paths (blend_per_split): a test set only with its own path.
            ("megatron", "--train-data-path a --valid-data-path b", ENDING_MEGATRON, False),
            ("megatron", "--train-data-path a --valid-data-path b --test-data-path c", ENDING_MEGATRON, True),
            ("megatron", "--checkpoint-activations", ENDING_MEGATRON_2022, True),
            ("megatron", "--checkpoint-activations --split 98,2", ENDING_MEGATRON_2022, False),
            ("megatron-deepspeed", "", ENDING_MEGATRON_2022, True),
            (
                "megatron-deepspeed",
                "--train-weighted-split-paths x --valid-weighted-split-paths y",
                ENDING_MEGATRON_2022,
                False,
            ),
            ("fakerun", "", ENDING_FAKERUN, False),
        ],
    )
    def test_ending_from_the_arguments(self, trainer: str, args: str, ending: str, test: bool) -> None:
        settings = parse_hints("pretrain_gpt.py", ["--num-layers", "4", *args.split()]).settings
        assert dialects.ending(trainer, settings) == (ending, test)

    def test_build_run_ends_as_the_dialect_printed(self) -> None:
        script = ["pretrain_gpt.py", "--num-layers", "4", "--train-iters", "50", "--split", "949,50,1"]
        for fake, ending in (([], ENDING_MEGATRON), (["--fake-trainer", "fakerun"], ENDING_FAKERUN)):
            cmd = parse_command_line(["--nproc-per-node", "8", *fake, *script], {})
            run, _ = build_run(
                cmd, presets.resolve("gpt2-124m"), nnodes=1, nproc_per_node=8, model_given=True
            )
            assert (run.ending, run.test) == (ending, ending == ENDING_MEGATRON)

    def test_recompute_granularity_is_none_unless_asked(self) -> None:
        # A preset's recompute (llama's selective) is fakerun's physics, not an argument Megatron was given.
        run = dataclasses.replace(megatron_run(), job=dataclasses.replace(fp16_job(), recompute="selective"))
        row = "  recompute_granularity " + "." * (48 - len("recompute_granularity")) + " "
        for settings, shown in (((), "None"), ((("recompute_activations", "true"),), run.job.recompute)):
            startup = lines("megatron", run, 0, [ev.WorkerStarted("h", 0, 8, 1)], settings)
            assert row + shown in startup

    SMALL_GPT = (
        "--num-layers 4 --hidden-size 256 --num-attention-heads 8 --seq-length 512 "
        "--max-position-embeddings 512 --micro-batch-size 1 --train-iters 20 --bf16"
    )

    @pytest.mark.parametrize(
        ("args", "tp", "shown"),
        [
            # examples/llama/train_llama3_8b_h100_fp8.sh: --sequence-parallel with TP 1, which validate_args
            # turns off; its fp8 options; torch_dist.
            (
                "--sequence-parallel --fp8-format hybrid --ckpt-format torch_dist",
                1,
                {
                    "sequence_parallel": "False",
                    "fp8": "hybrid",
                    "fp8_recipe": "delayed",
                    "ckpt_format": "torch_dist",
                },
            ),
            (
                "--sequence-parallel --fp8-format e4m3 --fp8-recipe tensorwise --ckpt-format torch",
                2,
                {
                    "sequence_parallel": "True",
                    "fp8": "e4m3",
                    "fp8_recipe": "tensorwise",
                    "ckpt_format": "torch",
                },
            ),
            # Defaults: no sequence parallelism unasked even with TP, fp8 None, the torch_dist format.
            (
                "",
                2,
                {
                    "sequence_parallel": "False",
                    "fp8": "None",
                    "fp8_recipe": "delayed",
                    "ckpt_format": "torch_dist",
                },
            ),
        ],
    )
    def test_arguments_echo_the_script_options(self, args: str, tp: int, shown: dict[str, str]) -> None:
        script = [
            "pretrain_gpt.py",
            *self.SMALL_GPT.split(),
            *("--tensor-model-parallel-size", str(tp)),
            *args.split(),
        ]
        cmd = parse_command_line(["--nproc-per-node", "8", *script], {})
        run, hints = build_run(
            cmd, presets.resolve("gpt2-124m"), nnodes=1, nproc_per_node=8, model_given=False
        )
        startup = lines("megatron", run, 0, [ev.WorkerStarted("h", 0, 8, 1)], tuple(hints.settings.items()))
        for name, value in shown.items():
            assert f"  {name} {'.' * (48 - len(name))} {value}" in startup

    def test_legacy_arguments_have_no_fp8(self) -> None:
        # The 2021-22 code has no --fp8-format: its arguments block has no fp8 rows.
        run = megatron_run()
        rows = arguments_block(run, 1234, settings={"megatron.fp8": "hybrid"}, legacy=True)
        assert not any(row.startswith(("  fp8 ", "  fp8_recipe ")) for row in rows)
        assert "  fp8 " + "." * 45 + " hybrid" in arguments_block(
            run, 1234, settings={"megatron.fp8": "hybrid"}
        )


class TestMegatronLegacy:
    """A script with 2021-22 arguments gets that era's lines; --save names the checkpoint folder."""

    ARGS = "--num-layers 24 --hidden-size 1024 --checkpoint-activations --DDP-impl local --save /ck/run1"

    def settings(self, args: str = ARGS) -> tuple[tuple[str, str], ...]:
        return tuple(parse_hints("pretrain_gpt.py", args.split()).settings.items())

    def test_old_arguments_select_the_old_line_and_timers(self) -> None:
        run = make_run(fp16_job(), max_steps=40, log_interval=10)
        e = step_done(run, 30, 7)
        out = lines("megatron", run, 7, [e], self.settings())
        m = LEGACY.match(out[0])
        assert m, out[0]
        assert int(m["samples"]) == e.numbers.samples
        assert float(m["ms"]) == pytest.approx(1000 * e.interval_s, abs=0.05)
        assert float(m["lr"]) == pytest.approx(e.numbers.lr, rel=1e-3)
        assert TIMERS.match(out[-1]) and "forward-compute" in out[-1]
        modern = lines("megatron", run, 7, [e], self.settings("--num-layers 24 --save /ck/run1"))
        assert CORE.match(modern[0]) and len(modern) == 1

    def test_old_memory_waits_for_a_positive_lr_without_theory(self) -> None:
        run = make_run(fp16_job(), max_steps=40, log_interval=10)
        report = ev.MemoryReport(
            step=1, iterations=1, allocated=1e9, max_allocated=2e9, reserved=3e9, max_reserved=3e9
        )
        steps = [step_done(run, 10, 0), step_done(run, 30, 0)]
        out = lines("megatron", run, 0, [report, *steps], self.settings())
        assert [int(m["it"]) for m in map(MEMORY.match, out) if m] == [30]
        assert not any("Theoretical memory" in line for line in out)

    @pytest.mark.parametrize(
        ("args", "saving", "saved"),
        [
            (
                ARGS,
                "saving checkpoint at iteration      40 to /ck/run1",
                "  successfully saved checkpoint at",
            ),
            (
                "--save /ck/run1",
                "saving checkpoint at iteration      40 to /ck/run1 in torch_dist",
                "  success",
            ),
        ],
    )
    def test_save_folder_in_the_save_lines(self, args: str, saving: str, saved: str) -> None:
        run = make_run(fp16_job(), max_steps=40, log_interval=10)
        events: list[ev.Event] = [
            ev.CheckpointSaving(step=40, path="x", format="torch_dist"),
            ev.CheckpointSaved(step=40, path="x", nbytes=1, seconds=2.0, bandwidth_gbs=1.0),
        ]
        out = lines("megatron", run, 0, events, self.settings(args))
        assert out[0].startswith(saving)
        assert out[1].startswith(saved) and "/ck/run1" in out[1]
        startup = lines("megatron", run, 0, [ev.WorkerStarted("h", 0, 8, 1)], self.settings(args))
        assert "  save ............................................ /ck/run1" in startup


class TestMegatronHints:
    @pytest.mark.parametrize(
        ("args", "recompute"),
        [
            (
                "--checkpoint-activations",
                "full",
            ),  # 2021-22: every layer, activations_checkpoint_method uniform
            ("--activations-checkpoint-method block", "full"),
            ("--recompute-granularity full", "full"),
            ("--recompute-activations", "selective"),
            # validate_args: --recompute-activations sets selective whatever the granularity says
            ("--recompute-granularity full --recompute-activations", "selective"),
            ("--recompute-activations --recompute-granularity full", "selective"),
        ],
    )
    def test_recompute_switches(self, args: str, recompute: str) -> None:
        assert (
            parse_hints("pretrain_gpt.py", ["--num-layers", "4", *args.split()]).job["recompute"] == recompute
        )

    def test_exit_options_reach_the_run(self) -> None:
        h = parse_hints(
            "pretrain_gpt.py", ["--num-layers", "4", "--exit-interval", "25", "--exit-duration-in-mins", "3"]
        )
        assert h.cadence["exit_interval"] == 25 and h.cadence["exit_minutes"] == 3
        cmd = parse_command_line(
            [
                "--nproc-per-node",
                "8",
                "pretrain_gpt.py",
                "--train-iters",
                "100",
                "--exit-interval",
                "30",
                "--exit-duration-in-mins",
                "3",
            ],
            {},
        )
        run, _ = build_run(cmd, presets.resolve("gpt2-124m"), nnodes=1, nproc_per_node=8, model_given=True)
        assert (run.last_step, run.exit_interval, run.exit_after_s) == (30, 30, 180.0)


class TestMegatronDeepSpeed:
    def test_selected_by_deepspeed_switches_on_a_megatron_script(self) -> None:
        args = "--num-layers 24 --hidden-size 1024 --deepspeed --deepspeed_config ds.json --zero-stage 1"
        h = parse_hints("pretrain_gpt.py", args.split())
        assert h.style == "megatron-deepspeed" and h.job["zero_stage"] == 1
        assert parse_hints("pretrain_gpt.py", ["--num-layers", "24", "--fp16"]).style == "megatron"

    def test_bloom_line_and_timers_parse_back(self) -> None:
        run = make_run(fp16_job(), max_steps=40, log_interval=10)
        e = step_done(run, 30, 7)
        out = lines("megatron-deepspeed", run, 7, [e])
        m = DS.match(out[0])
        assert m, out[0]
        assert int(m["tokens"]) == e.numbers.tokens and float(m["s"]) == pytest.approx(
            e.interval_s, abs=0.005
        )
        assert float(m["sps"]) == pytest.approx(e.samples_per_s, abs=5e-4)
        assert float(m["tflops"]) == pytest.approx(e.megatron_tflops, abs=0.005)
        assert float(m["scale"]) == e.loss_scale
        assert TIMERS.match(out[-1]) and "forward-compute" in out[-1] and "backward-compute" in out[-1]

    def test_bf16_has_no_loss_scale_and_memory_waits_for_a_positive_lr(self) -> None:
        run = make_run(fp16_job(), max_steps=40, log_interval=10)
        report = ev.MemoryReport(
            step=1, iterations=1, allocated=1e9, max_allocated=2e9, reserved=3e9, max_reserved=3e9
        )
        out = lines("megatron-deepspeed", run, 0, [report, step_done(run, 10, 0), step_done(run, 30, 0)])
        its = [int(m["it"]) for m in map(MEMORY.match, out) if m]
        assert its == [30]  # iteration 10 was all skipped: lr 0
        bf = make_run(bf16_job(), max_steps=40, log_interval=10)
        m = DS.match(lines("megatron-deepspeed", bf, 7, [step_done(bf, 10, 7)])[0])
        assert m and m["scale"] is None


def test_rerun_state_machine_line() -> None:
    """core v0.15's train() moves the rerun state machine from -1 to the checkpoint's iteration (0 on a fresh
    run: a checkpoint holds the machine's state only when saved for a rerun); the 2021-22 code has none."""
    run = megatron_run()
    last = run.job.world_size - 1

    def started(first: int) -> ev.TrainingStarted:
        return ev.TrainingStarted(
            first_step=first,
            last_step=first + 9,
            total_steps=1000,
            warmup_steps=10,
            lr=1e-4,
            schedule="cosine",
        )

    fresh = lines("megatron", run, 0, [started(1)]) + lines("megatron", run, last, [started(1)])
    assert "Overwriting rerun_state_machine.current_iteration from -1 to 0..." in fresh
    resumed = lines("megatron", run, 0, [started(101)]) + lines("megatron", run, last, [started(101)])
    assert "Overwriting rerun_state_machine.current_iteration from -1 to 100..." in resumed
    assert not any("rerun_state_machine" in line for line in lines("megatron", run, last, [started(101)]))
    legacy = megatron_run(ENDING_MEGATRON_2022)
    legacy_lines = lines("megatron", legacy, 0, [started(1)], settings=(("checkpoint_activations", ""),))
    assert not any("rerun_state_machine" in line for line in legacy_lines)


# megatron/core/rerun_state_machine.py (core v0.15): logging.basicConfig's format through Megatron's stdout
# handler, "%(levelname)s:%(name)s:%(message)s", and validate_result's messages.
LOGGER = "megatron.core.rerun_state_machine"
REJECTED = re.compile(
    rf"^ERROR:{re.escape(LOGGER)}:Unexpected result (?P<result>tensor\(nan, device='cuda:(?P<dev>\d+)'"
    r"(?P<fn>, grad_fn=<SumBackward0>)?\)) on rank (?P<rank>\d+) at iteration #(?P<it>\d+) invokation #1 "
    r"\(message='(?P<msg>[^']+)'\)$"
)


def rerun_run(pp: int = 1, **kw: typing.Any) -> RunPlan:
    """A bf16 Megatron-core run on 8 GPUs (`pp` stages) whose step 7 is NaN, checked by the rerun machine."""
    b = presets.resolve("gpt2-124m")
    job = make_job(
        b.model, b.cluster, b.storage, nnodes=1, nproc_per_node=8, precision="bf16", total_steps=5000, pp=pp
    )
    job = dataclasses.replace(job, nan_steps=(7,))
    return make_run(job, max_steps=40, log_interval=1, save_interval=5, rerun_nan=True, **kw)


class TestRerunStateMachine:
    """A NaN at a step past the first: every rank's check fails, the step reruns, reproduces, the ranks save
    after the step before and exit 16; resumed there on the same GPUs, they exit 16 again without a save."""

    def test_every_rank_reports_its_own_check(self) -> None:
        run = rerun_run(pp=2)
        for rank in range(8):
            (line,) = lines("megatron", run, rank, [ev.ResultRejected(step=7)])
            m = REJECTED.match(line)
            assert m, line
            last_stage = run.job.coords(rank).pp_rank == 1
            assert int(m["rank"]) == rank and int(m["dev"]) == rank % 8 and int(m["it"]) == 7
            assert bool(m["fn"]) is last_stage  # the loss keeps its autograd node, a grad norm has none
            if last_stage:
                assert m["msg"] == "found NaN in local forward loss calculation"
            else:
                assert m["msg"] == (
                    "found NaN in local grad norm for bucket #0 in backward pass before data-parallel "
                    "communication collective"
                )

    def test_rerun_reproduces_and_rank_0_saves_and_exits(self) -> None:
        run = rerun_run()
        exit_event = ev.RerunExit(step=7, code=16)
        first = lines("megatron", run, 0, [ev.ResultRejected(step=7), exit_event])
        result = REJECTED.match(first[0])
        assert result is not None
        warn = f"WARNING:{LOGGER}:"
        assert first[1:] == [
            f"{warn}Need to rerun step to check reproducibility of initial result",
            f"{warn}First rerun: unexpected result is reproducible within the tolerance "
            f"({result['result']} = {result['result']}). Need to rerun on a different GPU to verify "
            "correctness",
            f"{warn}Saving a checkpoint and exiting now. Please resume the job from the checkpoint to rerun "
            "the last iteration and establish a diagnostic",
        ]
        other = lines("megatron", run, 5, [exit_event])
        assert len(other) == 1 and other[0].startswith(f"{warn}First rerun:") and "cuda:5" in other[0]

    def test_the_rerun_saves_the_step_before(self) -> None:
        run = rerun_run()
        assert run.nan_rerun(7) == "initial" and run.nan_rerun(6) is None
        assert run.rerun_pauses(7) == (("checkpoint", checkpoint.save_seconds(run.job, 6)),)
        # The process's first iteration is not validated (no checkpoint could be taken before it).
        first = dataclasses.replace(run, job=dataclasses.replace(run.job, nan_steps=(1,)))
        assert first.nan_rerun(1) is None
        assert dataclasses.replace(run, rerun_nan=False).nan_rerun(7) is None

    def test_resumed_on_the_same_gpu_exits_again(self) -> None:
        run = resumed(rerun_run(), 6)
        assert run.nan_rerun(7) == "again" and run.rerun_pauses(7) == ()
        loaded = ev.CheckpointLoaded(step=6, path="ckpt", tokens=0, loss=3.0, lr=1e-4, seconds=1.0)
        again = [ev.ResultRejected(step=7, again=True), ev.RerunExit(step=7, code=16, again=True)]
        out = lines("megatron", run, 0, [loaded, *again])
        assert f"WARNING:{LOGGER}:Getting RerunStateMachine state from checkpoint. Will rerun step." in out
        assert out[-3:] == [
            f"ERROR:{LOGGER}:Got rescheduled on the same GPU. Need to resume again from the same checkpoint "
            "(node: node-a, gpu: 0)",
            f"WARNING:{LOGGER}:Need to restart job from the same checkpoint because it was scheduled on the "
            "same node/GPU",
            f"WARNING:{LOGGER}:Exiting now. Please resume the job from the same checkpoint to rerun the last "
            "iteration and establish a diagnostic",
        ]
        started = ev.TrainingStarted(7, 40, 5000, 10, 1e-4, "cosine")
        # The rerun's checkpoint recorded the machine at the NaN iteration; train() moves it back.
        assert "Overwriting rerun_state_machine.current_iteration from 7 to 6..." in lines(
            "megatron", run, 0, [started]
        )

    @pytest.mark.parametrize(
        ("args", "checks"),
        [
            (["--bf16"], True),
            (["--bf16", "--no-check-for-nan-in-loss-and-grad"], False),
            (["--bf16", "--rerun-mode", "disabled"], False),
            (["--fp16"], False),  # validate_args: dynamic loss scaling turns the check off
            (["--fp16", "--loss-scale", "4096"], True),
            (["--bf16", "--checkpoint-activations"], False),  # 2021-22 Megatron: no rerun machine
        ],
    )
    def test_which_jobs_validate_results(self, args: list[str], checks: bool) -> None:
        script = ["pretrain_gpt.py", "--num-layers", "4", "--train-iters", "50", *args]
        cmd = parse_command_line(["--nproc-per-node", "8", *script], {})
        run, _ = build_run(cmd, presets.resolve("gpt2-124m"), nnodes=1, nproc_per_node=8, model_given=True)
        assert run.rerun_nan is checks


class TestNanIterations:
    """training_log: a NaN counts as a nan iteration only when skipped (fp16's scaler), and a bf16 NaN in the
    interval's loss sum makes its mean NaN, which `if avg > 0.0` leaves out of the line."""

    @pytest.mark.parametrize("name", ["megatron", "megatron-deepspeed"])
    def test_bf16_nan_interval_has_no_loss_and_no_nan_iterations(self, name: str) -> None:
        run = make_run(dataclasses.replace(bf16_job(), nan_steps=(23,)), max_steps=40, log_interval=10)
        line = lines(name, run, 7, [step_done(run, 30, 7)])[0]
        assert "lm loss" not in line and "number of nan iterations:   0 |" in line
        clean = lines(name, run, 7, [step_done(run, 20, 7)])[0]
        assert "lm loss" in clean

    def test_fp16_nan_is_skipped_and_counted(self) -> None:
        job = dataclasses.replace(fp16_job(), nan_steps=(1500, 1502, 1505))  # two in (1500, 1510]
        run = make_run(job, max_steps=4000, log_interval=10)
        line = lines("megatron", run, 7, [step_done(run, 1510, 7)])[0]
        m = CORE.match(line)
        assert m, line
        assert int(m["nan"]) == 2 and int(m["skipped"]) >= 2 and m["loss"] is not None


def job_events(run: RunPlan, rank: int) -> list[ev.Event]:
    """Every event of the dialect's kinds that `rank` of a Megatron job lives through, as worker/trainer.py
    emits them from the plan: start-up, each step (the first one's memory report) with the loop's evaluations
    and saves, then the end; or, at a NaN step the rerun machine checks, the rejection, the exit and the
    save of the step before."""
    job = run.job
    c = job.coords(rank)
    out: list[ev.Event] = [
        ev.WorkerStarted("node-a", local_rank=rank % job.nproc_per_node, world_size=job.world_size, pid=1),
        ev.ProcessGroupInitializing(backend="nccl", world_size=job.world_size),
        ev.ProcessGroupReady(tp_rank=c.tp_rank, dp_rank=c.dp_rank, pp_rank=c.pp_rank),
        ev.TokenizerLoaded(job.model.vocab, figures.padded_vocab(job.model.vocab, job.tp)),
        ev.ModelBuilt(
            dtype="bfloat16",
            params_on_rank=1e8,
            layers_on_rank=job.stage_layers(c.pp_rank),
            pp_rank=c.pp_rank,
            theory=figures.theory(job),
        ),
    ]
    if job.start_step:
        out.append(ev.CheckpointLoaded(job.start_step, "ckpt", tokens=0, loss=3.0, lr=1e-4, seconds=1.0))
    out.append(
        ev.TrainingStarted(run.first_step, run.last_step, job.total_steps, job.warmup_steps, job.lr, "cosine")
    )
    for step in range(run.first_step, run.last_step):
        if run.nan_rerun(step) is not None:
            again = run.nan_rerun(step) == "again"
            out += [ev.ResultRejected(step, again), ev.RerunExit(step, 16, again)]
            return out + pause_events(run, step - 1, run.rerun_pauses(step))
        if step == run.first_step:
            out.append(
                ev.MemoryReport(step, 1, allocated=2e9, max_allocated=3e9, reserved=4e9, max_reserved=4e9)
            )
        out += [step_done(run, step, rank), *pause_events(run, step, run.loop_pauses(step))]
    return [*out, step_done(run, run.last_step, rank), *end_events(run, run.last_step)]


def layout_run(
    nproc: int, tp: int = 1, pp: int = 1, start: int = 0, ending: str = ENDING_MEGATRON
) -> RunPlan:
    """A Megatron run of 40 steps on `nproc` GPUs that evaluates and saves every 20 and tests at the end."""
    b = presets.resolve("gpt2-124m")
    job = make_job(
        b.model, b.cluster, b.storage, nnodes=1, nproc_per_node=nproc, tp=tp, pp=pp, precision="fp16", seed=7
    )
    run = make_run(
        job, max_steps=40, log_interval=10, eval_interval=20, save_interval=20, ending=ending, test=True
    )
    return resumed(run, start) if start else run


LEGACY_SETTINGS = (("checkpoint_activations", ""),)


class TestRankExactWants:
    """wants() answers per rank what Megatron's print_rank_0, print_rank_last, report_memory (data-parallel
    rank 0) and the rerun machine's every-rank logging print: a rank that prints none of a step's figures is
    lean (worker/trainer.py computes only its compute time)."""

    @staticmethod
    def dp_first(job: JobSpec) -> set[int]:
        return {r for r in range(job.world_size) if job.coords(r).dp_rank == 0}

    @pytest.mark.parametrize(
        ("name", "run", "settings"),
        [
            ("megatron", layout_run(8, tp=2, pp=2), ()),
            ("megatron", layout_run(4, start=20), ()),
            ("megatron", layout_run(8, tp=2, pp=2, ending=ENDING_MEGATRON_2022), LEGACY_SETTINGS),
            ("megatron-deepspeed", layout_run(8, tp=2, pp=2, ending=ENDING_MEGATRON_2022), ()),
            ("megatron", rerun_run(pp=2), ()),
        ],
        ids=["tp2-pp2", "dp4-resumed", "legacy", "megatron-deepspeed", "rerun"],
    )
    def test_a_rank_that_does_not_want_a_kind_prints_nothing_for_it(
        self, name: str, run: RunPlan, settings: tuple[tuple[str, str], ...]
    ) -> None:
        job = run.job
        last = job.world_size - 1
        printers: dict[type[ev.Event], set[int]] = {}
        for rank in range(job.world_size):
            d = dialects.make(name, seat(job, rank))
            d.render(ev.JobStarted(run=run, first=True, resume=bool(job.start_step), settings=settings), AT)
            for e in job_events(run, rank):
                out = d.render(e, AT)
                if not d.wants(type(e)):
                    assert out == [], (rank, e)
                if out:
                    printers.setdefault(type(e), set()).add(rank)
        # Who prints, from Megatron's print functions (not the dialect's table): rank 0's start-up, saves and
        # end, the last rank's iteration lines, validation and save timers, data-parallel rank 0's parameter
        # counts and memory reports, every rank's rerun verdicts.
        expected = {
            ev.WorkerStarted: {0},
            ev.ProcessGroupInitializing: {0},
            ev.ProcessGroupReady: {0},
            ev.TokenizerLoaded: {0},
            ev.CheckpointLoaded: {0},
            ev.TrainingStarted: {0},
            ev.TrainingStopped: {0},
            ev.EvalStarted: {0},
            ev.CheckpointSaving: {0},
            ev.CheckpointSaved: {0, last},
            ev.EvalDone: {last},
            ev.ModelBuilt: self.dp_first(job),
            ev.StepDone: self.dp_first(job) | {last},
            ev.ResultRejected: set(range(job.world_size)),
            ev.RerunExit: set(range(job.world_size)),
        }
        assert printers == {kind: ranks for kind, ranks in expected.items() if kind in printers}
        assert ev.StepDone in printers and ev.CheckpointSaved in printers

    @pytest.mark.parametrize(
        ("nproc", "tp", "pp", "lean"),
        # Ranks (tp fastest, then dp, then pp) that are neither first nor last nor of data-parallel rank 0.
        [(8, 2, 2, {2, 3, 6}), (4, 1, 1, {1, 2}), (8, 1, 8, set())],
    )
    @pytest.mark.parametrize("name", ["megatron", "megatron-deepspeed"])
    def test_ranks_printing_no_step_figure_are_lean(
        self,
        name: str,
        nproc: int,
        tp: int,
        pp: int,
        lean: set[int],
        tmp_path: typing.Any,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The trainer's lean test through the rank's Printer once JobStarted is out; --tensorboard-dir's
        writer (the last rank's only) keeps no other rank from being lean."""
        monkeypatch.chdir(tmp_path)
        run = layout_run(nproc, tp=tp, pp=pp)
        job = run.job
        started = ev.JobStarted(run=run, first=True, resume=False, settings=(("tensorboard_dir", "tb"),))
        got, writing = set(), set()
        for rank in range(job.world_size):
            # Until JobStarted brings the layout, any rank may be of data-parallel rank 0.
            unknown = dialects.make(name, seat(job, rank))
            assert unknown.wants(ev.StepDone) and unknown.wants(ev.ModelBuilt)
            printer = Printer.for_rank(name, seat(job, rank), lambda: AT)
            printer.emit(started)
            if not any(printer.wants(kind) for kind in _STEP_FIGURE_EVENTS):
                got.add(rank)
            assert printer.tensorboard is not None
            if any(printer.tensorboard.wants(kind) for kind in _STEP_FIGURE_EVENTS):
                writing.add(rank)
        assert got == lean
        assert writing <= {job.world_size - 1}
