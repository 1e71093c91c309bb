"""GPU telemetry: power under the cap, dips during eval, checkpoint and stalls, realistic ranges."""

from __future__ import annotations

import itertools
import math
import statistics
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakerun import presets
from fakerun.sim.job import JobSpec, make_job
from fakerun.sim.telemetry import (
    PHASES,
    THERMAL_TAU_S,
    Phase,
    board,
    idle_telemetry,
    job_board,
    telemetry,
)


def job(model: str = "llama3-8b", **kw: Any) -> JobSpec:
    b = presets.resolve(model)
    return make_job(b.model, b.cluster, b.storage, **kw)


JOBS = {name: job(name) for name in ("llama3-8b", "llama3.2-1b", "gpt3-175b", "qwen2.5-72b")}
# One job per cluster preset with an NVIDIA GPU (their GPUs: A100, H100, H200, B200...).
PRESET_JOBS = {
    c: make_job(
        presets.load_model("llama3-8b"), presets.load_cluster(c), presets.load_storage("lustre"), nnodes=2
    )
    for c in presets.list_presets()["clusters"]
    if presets.load_cluster(c).gpu.vendor == "nvidia"
}


class TestLimits:
    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(sorted(JOBS)), st.integers(0, 63), st.integers(0, 10**6), st.sampled_from(PHASES))
    def test_within_hardware_limits(self, name: str, rank: int, step: int, phase: Phase) -> None:
        """Power <= TDP, clocks <= max, memory <= total, temperatures plausible."""
        j = JOBS[name]
        t = telemetry(j, rank % j.world_size, step, phase)
        g = j.gpu
        assert 0 < t.power_w <= g.tdp_w == t.power_cap_w
        assert t.sm_clock_mhz <= g.sm_clock_max_mhz and t.mem_clock_mhz <= g.mem_clock_max_mhz
        assert 0 <= t.mem_used_mib <= t.mem_total_mib == g.memory_mib
        assert g.idle_temp_c - 5 <= t.temp_c <= g.max_temp_c + 3
        assert 0 <= t.util_pct <= 100

    def test_deterministic(self) -> None:
        """The same (seed, rank, step, phase) gives the same sample."""
        j = JOBS["llama3-8b"]
        assert telemetry(j, 3, 99, "train") == telemetry(j, 3, 99, "train")


class TestPhases:
    def test_dips_outside_training(self) -> None:
        """Power and utilisation: train > eval > checkpoint/stall > idle power."""
        j = JOBS["llama3-8b"]

        def mean(phase: Phase, field: str) -> float:
            values = [float(getattr(telemetry(j, r, s, phase), field)) for r in range(8) for s in range(50)]
            return statistics.mean(values)

        assert mean("train", "power_w") > mean("eval", "power_w") > mean("checkpoint", "power_w")
        assert mean("checkpoint", "power_w") > mean("idle", "power_w")
        assert mean("train", "util_pct") > 90 > mean("eval", "util_pct") > mean("stall", "util_pct")
        assert mean("stall", "util_pct") < 10 and mean("idle", "util_pct") == 0

    def test_h100_training_ranges(self) -> None:
        """A well-fed H100 draws ~500-700 W at 55-80 C during pretraining (PHYSICS.md 1)."""
        j = JOBS["llama3-8b"]
        samples = [telemetry(j, r, s, "train") for r in range(16) for s in range(0, 2000, 40)]
        assert 480 < statistics.mean(t.power_w for t in samples) < 700
        assert 55 < statistics.mean(t.temp_c for t in samples) < 80

    def test_thin_model_runs_light(self) -> None:
        """Llama 3.2 1B at TP=8 keeps an H100 ~25% busy at ~250 W (excerpt 40)."""
        j = job("llama3.2-1b", tp=8)
        samples = [telemetry(j, r, s, "train") for r in range(8) for s in range(50)]
        assert 18 < statistics.mean(t.util_pct for t in samples) < 35
        assert 180 < statistics.mean(t.power_w for t in samples) < 330

    def test_heat_lingers_after_training(self) -> None:
        """One second into a stall the GPU is still near its training temperature; minutes later it is not."""
        j = JOBS["llama3-8b"]
        train = telemetry(j, 0, 10, "train")
        hot = telemetry(j, 0, 10, "stall", prev_temp_c=train.die_temp_c, elapsed_s=1.0)
        cool = telemetry(j, 0, 10, "stall", prev_temp_c=train.die_temp_c, elapsed_s=600.0)
        assert abs(hot.die_temp_c - train.die_temp_c) < 2.5
        assert hot.temp_c > cool.temp_c + 10

    def test_idle_gpu(self) -> None:
        """An H100 with no job: ~70 W, 0% util, nothing resident, idle clocks (excerpt 41)."""
        t = idle_telemetry(presets.load_gpu("h100"), board("dgx-h100", "gpu-node-001", 0))
        assert 60 <= t.power_w <= 80 and t.util_pct == 0 and t.mem_used_mib < 10 and t.sm_clock_mhz == 345
        assert 20 <= t.temp_c <= 34

    def test_memory_follows_the_phases(self) -> None:
        """Weights only before step one; the full footprint from training on, kept through eval and saves."""
        j = JOBS["llama3-8b"]
        init = telemetry(j, 2, j.start_step, "init").mem_used_mib
        ready = telemetry(j, 2, j.start_step, "idle").mem_used_mib  # the worker's ready sample
        train = telemetry(j, 2, 50, "train").mem_used_mib
        assert init == ready < train
        for phase in ("eval", "checkpoint", "stall", "idle"):
            assert telemetry(j, 2, 50, phase).mem_used_mib == train


def _run(j: JobSpec, rank: int, schedule: list[tuple[Phase, int]]) -> list[tuple[Phase, float, int]]:
    """One-second samples of rank `rank` through a phase schedule, the thermal state carried along."""
    out: list[tuple[Phase, float, int]] = []
    prev: float | None = None
    step = 1
    for phase, seconds in schedule:
        for _ in range(seconds):
            t = telemetry(j, rank, step, phase, prev_temp_c=prev, elapsed_s=1.0)
            prev = t.die_temp_c
            out.append((phase, t.die_temp_c, t.temp_c))
            step += phase == "train"
    return out


SCHEDULE: list[tuple[Phase, int]] = [
    ("init", 20),
    ("train", 150),
    ("eval", 20),
    ("checkpoint", 60),
    ("train", 60),
]


class TestThermalLag:
    @settings(max_examples=25, deadline=None)
    @given(st.sampled_from(sorted(PRESET_JOBS)), st.integers(0, 63))
    def test_no_jump_faster_than_the_time_constant(self, name: str, rank: int) -> None:
        """Between samples 1 s apart the die moves at most span * (1 - e^(-1/tau)); the reading by ~1 more."""
        j = PRESET_JOBS[name]
        g = j.gpu
        samples = _run(j, rank % j.world_size, SCHEDULE)
        span = (g.max_temp_c + 12) - (g.idle_temp_c - 8)  # any target lies in this band
        bound = span * (1.0 - math.exp(-1.0 / THERMAL_TAU_S))
        for (_, d0, t0), (_, d1, t1) in itertools.pairwise(samples):
            assert abs(d1 - d0) <= bound + 1e-9
            assert abs(t1 - t0) <= math.ceil(bound) + 2  # rounding and the sensor's noise

    def test_checkpoint_cools_slowly_and_training_reheats(self) -> None:
        """A minute of checkpoint cools the GPU by tens of degrees over tens of seconds, not in one sample."""
        j = JOBS["llama3-8b"]
        samples = _run(j, 0, SCHEDULE)
        first = next(i for i, (phase, _, _) in enumerate(samples) if phase == "checkpoint")
        end_train = samples[first - 1][1]  # the end of the evaluation before it
        ckpt = [d for phase, d, _ in samples if phase == "checkpoint"]
        assert ckpt[0] > end_train - 3  # still hot at the start
        assert ckpt[-1] < end_train - 15  # cooled by the end
        half = next(i for i, d in enumerate(ckpt) if d < (end_train + ckpt[-1]) / 2)
        assert 5 <= half <= 40  # the half-way point comes after seconds to tens of seconds
        retrain = [d for _, d, _ in samples[-60:]]
        assert retrain == sorted(retrain) and retrain[-1] > ckpt[-1] + 15


class TestVariety:
    @settings(max_examples=30, deadline=None)
    @given(st.sampled_from(sorted(PRESET_JOBS)), st.integers(0, 10**5))
    def test_gpus_differ_within_bands(self, name: str, step: int) -> None:
        """At one step the GPUs of a job differ (power, temperature) but stay within their bands."""
        j = PRESET_JOBS[name]
        g = j.gpu
        ranks = range(min(j.world_size, 16))
        samples = [telemetry(j, r, step, "train") for r in ranks]
        powers = [t.power_w for t in samples]
        temps = [t.temp_c for t in samples]
        assert len(set(powers)) > 1 and len(set(temps)) > 1
        assert max(powers) - min(powers) <= 0.35 * g.tdp_w
        # A thermal straggler (failing cooling, throttled) is meant to stand out; the others stay together.
        healthy = [t.temp_c for t in samples if t.throttle != "HW Thermal Slowdown"]
        assert max(healthy) - min(healthy) <= 20
        for t in samples:
            assert g.idle_power_w * 0.9 <= t.power_w <= g.tdp_w
            assert t.sm_clock_mhz <= g.sm_clock_max_mhz and t.sm_clock_mhz % 15 == 0

    def test_a_gpu_varies_over_time(self) -> None:
        """One GPU's power moves from step to step by a few percent, never by half."""
        j = JOBS["llama3-8b"]
        powers = [telemetry(j, 5, s, "train").power_w for s in range(1, 400)]
        assert statistics.pstdev(powers) > 5
        assert max(powers) - min(powers) < 0.3 * j.gpu.tdp_w

    def test_the_same_gpu_runs_hot_in_every_job(self) -> None:
        """Board constants belong to the GPU (cluster, host, index), not to the job's seed."""
        a, b = job(seed=1), job(seed=2)
        for rank in range(8):
            assert job_board(a, rank) == job_board(b, rank)
        assert board("dgx-h100", "gpu-node-001", 0) != board("hgx-h200", "gpu-node-001", 0)
        hot = max(range(8), key=lambda r: job_board(a, r).temp_offset_c)
        cold = min(range(8), key=lambda r: job_board(a, r).temp_offset_c)
        for j in (a, b):
            mean_hot = statistics.mean(telemetry(j, hot, s, "train").temp_c for s in range(1, 100))
            mean_cold = statistics.mean(telemetry(j, cold, s, "train").temp_c for s in range(1, 100))
            assert mean_hot > mean_cold

    def test_power_cap_lowers_clocks(self) -> None:
        """A GPU asked for more than its cap sits under it at lower, 15 MHz-binned clocks."""
        for name, j in PRESET_JOBS.items():
            for s in range(1, 200):
                t = telemetry(j, 0, s, "train")
                if t.throttle == "SW Power Cap":
                    assert t.power_w <= 0.98 * j.gpu.tdp_w and t.sm_clock_mhz < j.gpu.sm_clock_max_mhz, name


@pytest.mark.parametrize("name", sorted(JOBS))
def test_memory_matches_the_memory_model(name: str) -> None:
    """nvidia-smi's memory column is the memory model's used MiB."""
    from fakerun.sim.memory import memory_breakdown

    j = JOBS[name]
    assert telemetry(j, 1, 100, "train").mem_used_mib == memory_breakdown(j, 1, 100).used_mib
