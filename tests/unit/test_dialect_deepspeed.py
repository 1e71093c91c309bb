"""DeepSpeed's dialect: engine lines parsed back with patterns from reallog 62 and DeepSpeed 0.19's source."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from pathlib import Path

import pytest

from fakerun import dialects, presets
from fakerun.dialects import events as ev
from fakerun.dialects.base import Line, Output, Seat
from fakerun.dialects.deepspeed import DeepSpeedDialect, encode
from fakerun.dsconfig import DsConfig, parse_ds_config
from fakerun.hints import parse_hints
from fakerun.sim import ds_breakdown, ds_lossscale
from fakerun.sim.job import make_job
from fakerun.sim.run import RunPlan, make_run
from fakerun.sim.step import step_numbers

AT = 1_795_000_000.25
CONFIG = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 4,
    "steps_per_print": 5,
    "log_level": "info",
    "optimizer": {"type": "AdamW", "params": {"lr": 2e-4, "betas": [0.9, 0.95], "weight_decay": 0.1}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10}},
    "fp16": {"enabled": True},
    "zero_optimization": {"stage": 2, "reduce_bucket_size": 200000000},
}
# reallog 62's prefix: `[2022-03-11 02:06:58,985] [INFO] [logging.py:69:log_dist] `.
PREFIX = r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \[INFO\] \[([a-z_0-9]+\.py):(\d+):(\w+)\] "
STEP = re.compile(
    PREFIX + r"\[Rank 0\] step=(\d+), skipped=(\d+), lr=\[([0-9.e+-]+)\], mom=\[\[([0-9.]+), ([0-9.]+)\]\]$"
)
TIMER = re.compile(
    PREFIX + r"epoch=0/micro_step=(\d+)/global_step=(\d+), RunningAvgSamplesPerSec=([0-9.e+-]+|-inf), "
    r"CurrSamplesPerSec=([0-9.e+-]+), MemAllocated=([0-9.]+)GB, MaxMemAllocated=([0-9.]+)GB$"
)
OVERFLOW = re.compile(
    PREFIX + r"\[deepspeed\] OVERFLOW! Rank 0 Skipping step\. Attempted loss scale: (\d+), "
    r"(?:reducing to (\d+)|but hysteresis is (\d+)\. Reducing hysteresis to (\d+))$"
)
DUMP = re.compile(PREFIX + r"  (\w+) (\.*) ?(.*)$")


def ds_config(**changes: object) -> DsConfig:
    config = parse_ds_config(json.dumps({**CONFIG, **changes}))
    assert config is not None
    return config


@functools.cache
def run_plan(config: DsConfig) -> RunPlan:
    b = presets.resolve("llama3.2-1b")
    job = make_job(b.model, b.cluster, b.storage, nnodes=1, nproc_per_node=4, micro_batch=2, grad_accum=4)
    return dataclasses.replace(make_run(job, max_steps=40), deepspeed=config)


def dialect(rank: int, config: DsConfig) -> DeepSpeedDialect:
    d = DeepSpeedDialect(Seat(rank=rank, local_rank=rank, world_size=4, nproc_per_node=4, hosts=("h",)))
    d.render(ev.JobStarted(run=run_plan(config), first=True, resume=False), AT)
    return d


def texts(out: object) -> list[str]:
    assert isinstance(out, (list, tuple))
    lines: list[Output] = list(out)
    assert all(isinstance(o, Line) and o.stream == "stdout" for o in lines)  # logging's handler is stdout
    return [o.text for o in lines if isinstance(o, Line)]


def built(run: RunPlan) -> ev.ModelBuilt:
    return ev.ModelBuilt(dtype="bfloat16", params_on_rank=1e9, layers_on_rank=16, pp_rank=0)


def steps(config: DsConfig, rank: int = 0, last: int = 40) -> list[str]:
    """The dialect's lines over the run, with the scaler and timer figures as the phase loop computes them
    (the breakdowns on rank 0 only, when configured)."""
    run = run_plan(config)
    job = run.job
    d = dialect(rank, config)
    state = ds_lossscale.initial_state(config.initial_scale_power, config.hysteresis)
    times: list[float] = []
    out: list[str] = []
    for s in range(1, last + 1):
        n, scale = ds_lossscale.engine_step(job, config, state, step_numbers(job, rank, s))
        state = scale.state if scale is not None else state
        times.append(n.step_time_s)
        overflow = scale is not None and scale.overflow
        timers = (
            ds_breakdown.engine_times(job, n, overflow=overflow)
            if config.wall_clock_breakdown and rank == 0
            else None
        )
        memory = tuple(
            ds_breakdown.micro_memory(job, rank, s, i, first=s == 1 and i == 0, overflow=overflow)
            for i in range(job.grad_accum if config.memory_breakdown and rank == 0 else 0)
        )
        event = ev.StepDone(
            run=run,
            numbers=n,
            elapsed_s=sum(times),
            recent_s=tuple(times),
            interval_s=n.step_time_s,
            epoch=0.0,
            rank_tflops=n.tflops_per_gpu,
            rank_mfu=n.mfu,
            logged=True,
            ds_scale=scale,
            timed_s=sum(times[2:]),
            timed_steps=max(0, len(times) - 2),
            ds_timers=timers,
            ds_memory=memory,
        )
        out += texts(d.render(event, AT + s))
    return out


def overflowed(config: DsConfig, last: int = 40) -> set[int]:
    """The steps of the run whose fp16 scaler overflowed."""
    job = run_plan(config).job
    state = ds_lossscale.initial_state(config.initial_scale_power, config.hysteresis)
    out = set()
    for s in range(1, last + 1):
        _, scale = ds_lossscale.engine_step(job, config, state, step_numbers(job, 0, s))
        assert scale is not None
        state = scale.state
        if scale.overflow:
            out.add(s)
    return out


def test_engine_init_block_on_rank_0_only() -> None:
    config = ds_config()
    run = run_plan(config)
    lines = texts(dialect(0, config).render(built(run), AT))
    # Other ranks: only the lines DeepSpeed's unfiltered logger prints on every rank.
    others = texts(dialect(1, config).render(built(run), AT))
    assert [re.sub(PREFIX.replace(r"\[INFO\]", r"\[\w+\]"), "", t) for t in others] == [
        "Attempting to get learning rate from scheduler before it has started",
        "Flattening param group 0 on cuda (sufficient memory)",
    ]
    assert all(t in lines for t in others)
    heads = [m.group(2, 4) for m in (re.match(PREFIX, t) for t in lines) if m]
    assert heads[0] == ("engine.py", "_configure_distributed_model")
    assert ("stage_1_and_2.py", "__init__") in heads and ("config.py", "print") in heads
    joined = "\n".join(lines)
    assert "Creating torch.float16 ZeRO stage 2 optimizer" in joined
    assert f"Reduce bucket size {200000000}" in joined
    assert "DeepSpeed Final Optimizer = DeepSpeedZeroOptimizer" in joined
    assert "DeepSpeed using configured LR scheduler = WarmupLR" in joined
    # _report_progress(0) with the configured betas (a JSON list) before the configuration dump.
    first = next(i for i, t in enumerate(lines) if STEP.match(t))
    assert first < next(i for i, t in enumerate(lines) if t.endswith("DeepSpeedEngine configuration:"))


def test_config_dump_dots_and_values() -> None:
    """DeepSpeedConfig.print: `  name ` + 29 - len(name) dots + ` value`, sorted, the job's figures."""
    config = ds_config()
    run = run_plan(config)
    rows = {}
    for t in texts(dialect(0, config).render(built(run), AT)):
        m = DUMP.match(t)
        if m and m.group(5) != "json":
            rows[m.group(5)] = m.group(7)
            assert len(m.group(6)) == max(0, 29 - len(m.group(5)))
    names = list(rows)
    assert names == sorted(names) and len(names) > 40
    assert int(rows["train_batch_size"]) == run.job.global_batch
    assert int(rows["train_micro_batch_size_per_gpu"]) == 2
    assert int(rows["gradient_accumulation_steps"]) == 4
    assert rows["zero_optimization_stage"] == "2" and rows["steps_per_print"] == "5"


def test_user_json_as_scientific_notation_encoder() -> None:
    """print_user_config: file order, `, ` before each newline, numbers over 1e3 in e notation."""
    text = encode({"b": 1, "a": {"x": 500000000, "y": [0.9, 0.95], "z": True}})
    assert text.splitlines()[1] == '    "b": 1, '
    assert '"x": 5.000000e+08, ' in text and '"y": [0.9, 0.95], ' in text and '"z": true' in text
    assert text.endswith("\n    }\n}")


def test_step_and_timer_lines_every_steps_per_print() -> None:
    config = ds_config()
    run = run_plan(config)
    lines = steps(config)
    progress = [m for m in map(STEP.match, lines) if m]
    timers = [m for m in map(TIMER.match, lines) if m]
    assert [int(m.group(5)) for m in progress] == list(range(5, 41, 5))
    assert [int(m.group(6)) for m in timers] == list(range(5, 41, 5))
    skips = overflowed(config)
    for m in timers:
        step = int(m.group(6))
        assert int(m.group(5)) == step * run.job.grad_accum  # micro steps
        n = step_numbers(run.job, 0, step)
        # An overflowed step skipped the update: every rank is shorter by it.
        saved = ds_breakdown.skipped_update_s(run.job) if step in skips else 0.0
        assert float(m.group(8)) == pytest.approx(run.job.global_batch / (n.step_time_s - saved))
        assert float(m.group(9)) == pytest.approx(n.mem_allocated_gib, abs=0.006)
    for m in progress:
        # WarmupLR's default log warm-up over 10 steps, to the optimizer's lr: after k updates the lr is
        # lr * ln(k) / ln(10), then lr; overflowed steps are no updates.
        updates = int(m.group(5)) - int(m.group(6))
        expected = run.job.lr * math.log(max(updates, 1)) / math.log(10) if updates <= 10 else run.job.lr
        assert float(m.group(7)) == pytest.approx(expected, rel=1e-12)
        assert (float(m.group(8)), float(m.group(9))) == (0.9, 0.95)
    # Nothing else on other ranks (log_dist ranks=[0]).
    assert steps(config, rank=2) == []


def test_fp16_overflows_at_start_follow_the_scaler() -> None:
    """Dynamic loss scaling from 2**16 with hysteresis 2: one hysteresis message, then halvings."""
    config = ds_config()
    lines = steps(config)
    over = [m for m in map(OVERFLOW.match, lines) if m]
    assert over, lines[:5]
    assert over[0].group(5) == "65536" and over[0].group(7) == "2" and over[0].group(8) == "1"
    halvings = [m for m in over[1:] if m.group(6)]
    for m in halvings:
        assert int(m.group(6)) * 2 == int(m.group(5))
    skipped = [int(m.group(6)) for m in map(STEP.match, lines) if m]
    assert skipped[0] == len(
        [m for m in over if lines.index(m.string) < lines.index(next(filter(STEP.match, lines)))]
    )
    # bf16: no scaler, no overflow.
    assert not any(map(OVERFLOW.match, steps(ds_config(fp16={"enabled": False}, bf16={"enabled": True}))))


def test_overflowed_steps_hold_back_lr_and_loss() -> None:
    """A skipped step steps neither the lr scheduler nor the weights: the lr and loss printed after N steps
    with s skipped are those of N - s updates without any overflow."""
    fp16, bf16 = ds_config(), ds_config(fp16={"enabled": False}, bf16={"enabled": True})
    job = run_plan(fp16).job
    state = ds_lossscale.initial_state(fp16.initial_scale_power, fp16.hysteresis)
    plain = ds_lossscale.initial_state(bf16.initial_scale_power, bf16.hysteresis)
    seen = 0
    for s in range(1, 41):
        n, scale = ds_lossscale.engine_step(job, fp16, state, step_numbers(job, 0, s))
        assert scale is not None
        state = scale.state
        updates = s - state.skipped
        if updates < 1:
            assert n.lr == 0.0  # warmup_min_lr: the scheduler has not stepped
            continue
        ref, none = ds_lossscale.engine_step(job, bf16, plain, step_numbers(job, 0, updates))
        assert none is None and (n.lr, n.loss) == (ref.lr, ref.loss)
        seen += state.skipped > 0
    assert seen and state.skipped > 0


def test_warmup_decay_and_linear_schedules() -> None:
    """WarmupDecayLR: linear warm-up to warmup_max_lr, then linear decay to 0 at total_num_steps."""
    sched = {"warmup_min_lr": 0.0, "warmup_max_lr": 1e-3, "warmup_num_steps": 10, "warmup_type": "linear"}
    decay = ds_config(scheduler={"type": "WarmupDecayLR", "params": {**sched, "total_num_steps": 30}})
    job = run_plan(decay).job
    # After k updates last_batch_iteration is k - 1.
    assert ds_lossscale.scheduler_lr(decay, job, 6) == pytest.approx(1e-3 * 5 / 10)
    assert ds_lossscale.scheduler_lr(decay, job, 21) == pytest.approx(1e-3 * (30 - 20) / (30 - 10))
    assert ds_lossscale.scheduler_lr(decay, job, 40) == 0.0
    assert ds_lossscale.scheduler_lr(ds_config(scheduler={"type": "OneCycle"}), job, 5) is None


def test_warning_level_prints_nothing() -> None:
    """DeepSpeed >= 0.17.6's logger is at WARNING unless the config's log_level says otherwise."""
    config = ds_config(log_level="warning")
    # WarmupLR's warning before its first step is the one line of deepspeed.initialize left.
    for rank in (0, 3):
        (warning,) = texts(dialect(rank, config).render(built(run_plan(config)), AT))
        assert "] [WARNING] [lr_schedules.py:" in warning
    no_scheduler = {k: v for k, v in CONFIG.items() if k != "scheduler"}
    bare = parse_ds_config(json.dumps({**no_scheduler, "log_level": "warning"}))
    assert bare is not None and texts(dialect(0, bare).render(built(run_plan(bare)), AT)) == []
    assert steps(config) == []


def test_checkpoint_lines() -> None:
    config = ds_config()
    out = texts(dialect(0, config).render(ev.CheckpointSaving(step=100, path="x", format="torch"), AT))
    assert re.match(PREFIX + r"\[Rank 0\] \[Torch\] Checkpoint global_step100 is about to be saved!$", out[0])
    assert re.match(
        PREFIX + r"\[Rank 0\] Saving model checkpoint: \S+/global_step100/mp_rank_00_model_states\.pt$",
        out[1],
    )


def test_selection_by_arguments(tmp_path: Path) -> None:
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps(CONFIG))
    assert dialects.select("train.py", ["deepspeed_config", "zero_stage"]) == "deepspeed"
    assert dialects.select("cifar10_deepspeed.py", ["deepspeed", "deepspeed_config"]) == "deepspeed"
    assert dialects.select("Megatron-DeepSpeed/pretrain_gpt.py", ["deepspeed"]) != "deepspeed"
    assert dialects.select("run_clm.py", ["deepspeed"]) == "hf"  # HF Trainer's --deepspeed ds.json
    h = parse_hints("train_ds.py", ["--deepspeed", "--deepspeed_config", str(path)])
    assert h.style == "deepspeed" and h.deepspeed is not None and h.deepspeed.precision == "fp16"
    assert h.job["micro_batch"] == 2 and h.job["grad_accum"] == 4 and h.job["zero_stage"] == 2
    assert h.job["lr"] == pytest.approx(2e-4) and h.job["warmup_steps"] == 10
    assert h.cadence["log_interval"] == 5


def test_zero3_init_lines_and_scheduler_repr() -> None:
    """Stage 3: the MiCS line, the bucket sizes of the config (prefetch default 5e7), ZeRO-3's pinned-memory
    summaries; the configured scheduler as an object repr; warmup_min_lr 0 printed as the JSON's int."""
    config = ds_config(
        zero_optimization={"stage": 3},
        scheduler={"type": "WarmupLR", "params": {"warmup_min_lr": 0, "warmup_num_steps": 10}},
    )
    lines = texts(dialect(0, config).render(built(run_plan(config)), AT))
    bodies = [re.sub(PREFIX.replace(r"\[INFO\]", r"\[\w+\]"), "", t) for t in lines]
    mics = (
        "[Rank 0] Creating fp16 ZeRO stage 3 optimizer, MiCS is enabled False, "
        "Hierarchical params gather False"
    )
    i = bodies.index(mics)
    assert bodies[i + 1 : i + 4] == [
        "[Rank 0] Creating torch.float16 ZeRO stage 3 optimizer",
        "Reduce bucket size 500000000",
        "Prefetch bucket size 50000000",
    ]
    assert "[Rank 0] DeepSpeed Final Optimizer = DeepSpeedZeroOptimizer_Stage3" in bodies
    assert sum("pinned across" in b for b in bodies) == 2
    reprs = [b for b in bodies if b.startswith("[Rank 0] DeepSpeed LR Scheduler = ")]
    assert re.fullmatch(
        r".* = <deepspeed\.runtime\.lr_schedules\.WarmupLR object at 0x7f[0-9a-f]{9}0>", reprs[0]
    )
    assert any(re.fullmatch(r"\[Rank 0\] step=0, skipped=0, lr=\[0\], mom=.*", b) for b in bodies)
    others = texts(dialect(2, config).render(built(run_plan(config)), AT))
    assert sum("pinned across" in t for t in others) == 2


# timer.py SynchronizedWallClockTimer.log through print_dist: `[Rank 0] time (ms) | name: %.2f | ...`.
MICRO = re.compile(
    r"\[Rank 0\] time \(ms\) \| fwd_microstep: (\d+\.\d\d) \| bwd_microstep: (\d+\.\d\d) \| "
    r"bwd_inner_microstep: (\d+\.\d\d) \| bwd_allreduce_microstep: (\d+\.\d\d) \| "
    r"step_microstep: (\d+\.\d\d)$"
)
GLOBAL = re.compile(
    r"\[Rank 0\] time \(ms\) \| fwd: (\d+\.\d\d) \| bwd: (\d+\.\d\d) \| bwd_inner: (\d+\.\d\d) \| "
    r"bwd_allreduce: (\d+\.\d\d) \| step: (\d+\.\d\d)$"
)
OPTIMIZER = re.compile(
    r"\[Rank 0\] time \(ms\) \| optimizer_allgather: (\d+\.\d\d) \| optimizer_gradients: (\d+\.\d\d) \| "
    r"optimizer_step: (\d+\.\d\d)$"
)
# runtime/utils.py see_memory_usage: the f-string's continuation lines keep their 8-space indent.
MA = re.compile(
    r"MA (\d+\.\d{1,2}) GB {9}Max_MA (\d+\.\d{1,2}) GB {9}CA (\d+\.\d{1,2}) GB {9}Max_CA (\d+) GB $"
)
CPU = re.compile(r"CPU Virtual Memory:  used = (\d+\.\d{1,2}) GB, percent = (\d{1,3}\.\d)%$")
PHASES = [f"Engine {when} {what}" for what in ("forward", "backward", "step") for when in ("before", "after")]


def kind(line: str) -> str:
    """What a line is, for checking the order of a step's lines."""
    for name, pattern in (
        ("micro", MICRO),
        ("global", GLOBAL),
        ("optimizer", OPTIMIZER),
        ("step", STEP),
        ("tput", TIMER),
        ("overflow", OVERFLOW),
        ("ma", MA),
        ("cpu", CPU),
    ):
        if pattern.match(line):
            return name
    return line if line in PHASES else "?"


def test_default_config_prints_no_breakdown() -> None:
    """wall_clock_breakdown and memory_breakdown default to false: no timers, no see_memory_usage."""
    config = ds_config()
    assert not config.wall_clock_breakdown and not config.memory_breakdown
    lines = steps(config, last=10)
    assert lines and not [t for t in lines if kind(t) in ("micro", "global", "optimizer", "ma", "cpu")]
    assert not [t for t in lines if t in PHASES or t.startswith("DeepSpeed Engine:")]
    quiet = ds_config(log_level="warning")
    assert not dialect(0, quiet).wants(ev.StepDone) and steps(quiet, last=10) == []


def test_breakdowns_print_whatever_the_log_level_on_rank_0_only() -> None:
    """print_dist / print(): no logger prefix, no INFO line needed; see_memory_usage returns off rank 0."""
    config = ds_config(log_level="warning", wall_clock_breakdown=True, memory_breakdown=True)
    lines = steps(config, last=20)  # past the first overflows
    assert lines and not [t for t in lines if t.startswith("[20")]
    assert {kind(t) for t in lines} == {"micro", "global", "optimizer", "ma", "cpu", *PHASES}
    assert steps(config, rank=1, last=5) == []
    assert dialect(0, config).wants(ev.StepDone) and not dialect(1, config).wants(ev.StepDone)


def test_order_of_a_steps_lines_follows_the_engine() -> None:
    """forward/backward/step per micro-step: see_memory_usage at each phase; on the boundary the optimizer's
    timers (or the overflow), step= and the throughput timer, then the micro and global timers; then the
    last see_memory_usage (engine.py step())."""
    config = ds_config(wall_clock_breakdown=True, memory_breakdown=True)
    ga = run_plan(config).job.grad_accum
    lines = steps(config, last=40)
    memory = [k for p in PHASES[:-1] for k in (p, "ma", "cpu")]
    after = [PHASES[-1], "ma", "cpu"]
    micro = [*memory, "micro", *after]
    kinds = [kind(t) for t in lines]
    per_step = len(micro) * ga + 1  # the optimizer's line or the overflow
    # Step 40 (a steps_per_print step without overflow) is the last one.
    start = len(kinds) - (per_step + 3)
    assert kinds[start - 3 : start] == after  # step 39's end
    tail = kinds[-(per_step + 3) :]
    assert tail == micro * (ga - 1) + [*memory, "optimizer", "step", "tput", "micro", "global", *after]
    # An overflowed step: the overflow instead of the optimizer's timers (it returns before logging them).
    i = kinds.index("overflow")
    assert kinds[i - len(memory) : i] == memory and kinds[i + 1 : i + 3] == ["micro", "global"]
    assert "?" not in kinds


def test_timers_add_up_to_the_step_the_throughput_timer_measures() -> None:
    """The global timers run through every micro-step; fwd + bwd + step span what the ThroughputTimer does
    (CurrSamplesPerSec = train_batch_size / its span) less the untimed calls between them."""
    config = ds_config(wall_clock_breakdown=True)
    job = run_plan(config).job
    lines = steps(config, last=40)
    micros: list[list[float]] = []
    measured_ms: float | None = None
    checked = 0
    for t in lines:
        if m := MICRO.match(t):
            micros.append([float(x) for x in m.groups()])
            fwd, bwd, inner, allreduce, step = micros[-1]
            assert bwd >= inner + allreduce - 0.01 and fwd > 0 and step >= 0
        elif m := TIMER.match(t):
            # Printed in step() before the timers of the same step.
            measured_ms = 1000.0 * job.global_batch / float(m.group(8))
        elif m := GLOBAL.match(t):
            totals = [float(x) for x in m.groups()]
            assert len(micros) == job.grad_accum
            for j, total in enumerate(totals):
                assert total == pytest.approx(sum(x[j] for x in micros), abs=0.01 * job.grad_accum)
            micros = []
            if measured_ms is not None:
                assert 0.0 <= measured_ms - (totals[0] + totals[1] + totals[4]) <= 0.6 * job.grad_accum
                checked += 1
                measured_ms = None
        elif m := OPTIMIZER.match(t):
            assert sum(float(x) for x in m.groups()) > 0
    assert checked == 40 // 5


def test_zero1_reduces_only_on_the_boundary() -> None:
    """ZeRO-1 (and the DDP-style engine) all-reduce at the accumulation boundary only; ZeRO-2 reduces every
    micro-step's gradients (engine.allreduce_gradients)."""
    for stage in (1, 2):
        config = ds_config(wall_clock_breakdown=True, zero_optimization={"stage": stage})
        job = dataclasses.replace(run_plan(config).job, zero_stage=stage)
        n = step_numbers(job, 0, 7)
        micro = ds_breakdown.engine_times(job, n).micro
        off, on = micro[0].bwd_allreduce, micro[-1].bwd_allreduce
        if stage == 1:
            assert off < 0.1 < on
        else:
            assert off == pytest.approx(on, rel=0.5)


def test_memory_breakdown_figures_reset_their_peaks() -> None:
    """see_memory_usage resets the peaks after each call: nothing is allocated between "Engine before
    backward" and the call before it; backward holds the step's peak, which the throughput timer's
    MaxMemAllocated no longer sees (the peak since "Engine before step"); Max_CA is CA to a whole GB."""
    config = ds_config(memory_breakdown=True)
    lines = steps(config, last=10)
    stats: dict[str, list[tuple[float, ...]]] = {}
    phase = ""
    tput: float | None = None
    for t in lines:
        if t in PHASES:
            phase = t
        elif m := MA.match(t):
            ma, max_ma, ca, max_ca = (float(x) for x in m.groups())
            stats.setdefault(phase, []).append((ma, max_ma, ca, max_ca))
            assert ma <= max_ma <= ca and abs(max_ca - ca) <= 0.505
            if phase == "Engine after step" and tput is not None:
                assert tput == max_ma  # MaxMemAllocated: the optimizer step's own peak
                tput = None
        elif m := TIMER.match(t):
            tput = float(m.group(10))  # printed in step(), before "Engine after step"
    peak = max(max_ma for rows in stats.values() for _, max_ma, _, _ in rows)
    assert all(row[1] == peak for row in stats["Engine after backward"][1:])
    assert all(row[0] == row[1] for row in stats["Engine before backward"])
    after_fwd = stats["Engine after forward"][0]
    before_fwd = stats["Engine before forward"][0]
    assert after_fwd[0] > before_fwd[0] and stats["Engine after backward"][0][0] == before_fwd[0]
    # The allocator grows during the run's first micro-step and keeps what it reserved.
    assert before_fwd[2] < after_fwd[2] and len({row[2] for row in stats["Engine after step"]}) == 1


def test_memory_breakdown_init_lines_before_the_groups_summary() -> None:
    """engine.__init__: "After args sanity test" and "Before configure distributed model" (force=
    memory_breakdown), the model not yet on the GPU, before _configure_distributed_model's summary."""
    config = ds_config(memory_breakdown=True)
    run = run_plan(config)
    init = ds_breakdown.init_memory(run.job, 0)
    lines = texts(dialect(0, config).render(dataclasses.replace(built(run), ds_memory=init), AT))
    assert lines[0] == "DeepSpeed Engine: After args sanity test"
    assert lines[3] == "DeepSpeed Engine: Before configure distributed model"
    assert MA.match(lines[1]) and MA.match(lines[4]) and CPU.match(lines[2]) and CPU.match(lines[5])
    assert lines[1].startswith("MA 0.0 GB") and "distributed groups summary" in lines[6]


def bodies(lines: list[str]) -> list[str]:
    """The lines without DeepSpeed's logger prefix."""
    return [re.sub(PREFIX.replace(r"\[INFO\]", r"\[\w+\]"), "", t) for t in lines]


def test_stage0_wraps_16_bit_training_in_fp16_optimizers() -> None:
    """engine._configure_fp16_optimizer: fp16, and bf16 with bf16 gradient accumulation (DDP_BFLOAT16), get
    FP16_Optimizer around the config's FusedAdam, FP16_UnfusedOptimizer around a client optimizer; bf16's
    LossScaleConfig stays static at 1.0."""
    stage0 = {"stage": 0}
    bf16 = ds_config(zero_optimization=stage0, fp16={"enabled": False}, bf16={"enabled": True})
    init = bodies(texts(dialect(0, bf16).render(built(run_plan(bf16)), AT)))
    assert "[Rank 0] Creating fp16 optimizer with static loss scale: 1.0" in init
    assert "[Rank 0] DeepSpeed Final Optimizer = FP16_Optimizer" in init
    client = {k: v for k, v in CONFIG.items() if k != "optimizer"}
    fp16 = parse_ds_config(json.dumps({**client, "zero_optimization": stage0}))
    assert fp16 is not None
    init = bodies(texts(dialect(0, fp16).render(built(run_plan(fp16)), AT)))
    i = init.index("[Rank 0] Creating fp16 unfused optimizer with dynamic loss scale")
    assert init[i + 1] == "Fused Lamb Legacy : False "  # the f-string's trailing space
    assert init[i + 2] == "[Rank 0] DeepSpeed Final Optimizer = FP16_UnfusedOptimizer"
    fp32 = ds_config(zero_optimization=stage0, fp16={"enabled": False})
    init = bodies(texts(dialect(0, fp32).render(built(run_plan(fp32)), AT)))
    assert "[Rank 0] DeepSpeed Final Optimizer = FusedAdam" in init


def test_stage0_fp16_scaler_halves_at_every_overflow_on_every_rank() -> None:
    """FP16_Optimizer._update_scale has no hysteresis: each overflow halves the scale (65536 is the int
    2**16, then floats); its logger.info lines come on every rank ("\\nGrad overflow ..." leaves the
    prefix alone on its line), step()'s log_dist on rank 0 only."""
    config = ds_config(zero_optimization={"stage": 0})
    lines = bodies(steps(config, last=10))
    done = re.compile(
        r"\[Rank 0\] Overflow detected\. Skipping step\. Attempted loss scale: (\S+), reducing to (\S+)$"
    )
    found = [m for m in map(done.match, lines) if m]
    assert found and found[0].groups() == ("65536", "32768.0")
    for m in found[1:]:
        assert float(m.group(1)) == 2 * float(m.group(2)) and m.group(1).endswith(".0")
    over = sorted(overflowed(config, 10))
    assert len(found) == len(over)
    iters = [int(t.rsplit(" ", 1)[1]) for t in lines if t.startswith("Grad overflow on iteration ")]
    assert iters == [s - 1 for s in over]  # cur_iter counts steps from 0
    i = lines.index(f"Grad overflow on iteration {over[0] - 1}")
    assert lines[i - 1] == "" and lines[i + 1] == "Reducing dynamic loss scale from 65536 to 32768.0"
    other = bodies(steps(config, rank=2, last=10))
    assert [t for t in other if t.startswith("Grad overflow")] == [t for t in lines if t.startswith("Grad")]
    assert not any(map(done.match, other))


FP16_STEP = re.compile(
    r"\[Rank 0\] time \(ms\) \| compute_norm: (\d+\.\d\d) \| overflow_check: (\d+\.\d\d) \| "
    r"unscale_and_clip: (\d+\.\d\d) \| basic_step: (\d+\.\d\d) \| update_fp16: (\d+\.\d\d)$"
)
FP16_OVERFLOW = re.compile(
    r"\[Rank 0\] time \(ms\) \| (compute_norm: 0\.00 \| )?overflow_check: (\d+\.\d\d)$"
)


def test_fp16_optimizer_timers() -> None:
    """FP16_Optimizer.step logs STEP_TIMERS, or on an overflow OVERFLOW_TIMERS, of which compute_norm exists
    (reset, 0.00) only once a step has computed a norm; they run inside the engine's step timer."""
    config = ds_config(zero_optimization={"stage": 0}, wall_clock_breakdown=True)
    lines = steps(config, last=40)
    over = sorted(overflowed(config))
    seen = [m for m in map(FP16_OVERFLOW.match, lines) if m]
    assert len(seen) == len(over)
    # Before the first update every step overflowed (consecutive from step 1).
    for step, m in zip(over, seen, strict=True):
        assert (m.group(1) is None) == (step == over.index(step) + 1)
    full = [m for m in map(FP16_STEP.match, lines) if m]
    assert len(full) == 40 - len(over)
    ga = run_plan(config).job.grad_accum
    step_ms = [float(m.group(5)) for m in map(MICRO.match, lines) if m][ga - 1 :: ga]
    optimizer = [m for m in map(lambda t: FP16_STEP.match(t) or FP16_OVERFLOW.match(t), lines) if m]
    for m, boundary in zip(optimizer, step_ms, strict=True):
        timed = sum(float(x) for x in m.groups() if x and not x.startswith("compute_norm"))
        assert 0 < timed <= boundary + 0.01
    # bf16's wrapper never overflows: STEP_TIMERS every step.
    bf16 = ds_config(zero_optimization={"stage": 0}, wall_clock_breakdown=True, fp16={"enabled": False})
    bf16 = dataclasses.replace(bf16, precision="bf16")
    assert sum(bool(FP16_STEP.match(t)) for t in steps(bf16, last=10)) == 10


def test_zero3_optimizer_timers() -> None:
    """ZeRO-3: init_optimizer_state at initialize_optimizer_states (before "optimizer state initialized",
    whatever the log level), optimizer_step in _post_step, none after an overflow."""
    config = ds_config(zero_optimization={"stage": 3}, wall_clock_breakdown=True)
    init = bodies(texts(dialect(0, config).render(built(run_plan(config)), AT)))
    i = init.index("optimizer state initialized")
    assert re.fullmatch(r"\[Rank 0\] time \(ms\) \| init_optimizer_state: \d+\.\d\d", init[i - 1])
    quiet = dataclasses.replace(config, log_level="warning")
    assert (
        sum("init_optimizer_state" in t for t in texts(dialect(0, quiet).render(built(run_plan(quiet)), AT)))
        == 1
    )
    assert not any(
        "init_optimizer_state" in t for t in texts(dialect(1, config).render(built(run_plan(config)), AT))
    )
    lines = steps(config, last=40)
    stage3 = [t for t in lines if re.fullmatch(r"\[Rank 0\] time \(ms\) \| optimizer_step: \d+\.\d\d", t)]
    assert len(stage3) == 40 - len(overflowed(config))


def test_overflowed_step_skips_the_update() -> None:
    """An overflow returns from the optimizer's step after the overflow check: that step's engine step timer
    is shorter by what the step's wall time is, and the rest of the step is unchanged."""
    config = ds_config(wall_clock_breakdown=True)
    job = run_plan(config).job
    state = ds_lossscale.initial_state(config.initial_scale_power, config.hysteresis)
    n, scale = ds_lossscale.engine_step(job, config, state, step_numbers(job, 0, 1))
    assert scale is not None and scale.overflow
    plain = step_numbers(job, 0, 1)
    saved_ms = 1000.0 * (plain.step_time_s - n.step_time_s)
    assert saved_ms > 0 and plain.compute_s - n.compute_s == pytest.approx(saved_ms / 1000.0)
    skipped = ds_breakdown.engine_times(job, n, overflow=True)
    full = ds_breakdown.engine_times(job, plain)
    assert full.micro[-1].step - skipped.micro[-1].step == pytest.approx(saved_ms)
    assert [t.fwd for t in skipped.micro] == pytest.approx([t.fwd for t in full.micro])
    # What is skipped is the optimizer's own work past the check (ZeRO-2's timers of a normal step).
    o = full.optimizer
    assert o.gradients + o.step < saved_ms < o.gradients + o.step + o.overflow_check + o.compute_norm
    assert n.tokens_per_s == pytest.approx(plain.tokens_per_s * plain.step_time_s / n.step_time_s)
