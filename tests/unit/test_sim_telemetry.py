"""GPU telemetry: power under the cap, dips during eval, checkpoint and stalls, realistic ranges."""

from __future__ import annotations

import statistics
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakerun import presets
from fakerun.sim.job import JobSpec, make_job
from fakerun.sim.telemetry import PHASES, Phase, idle_telemetry, telemetry


def job(model: str = "llama3-8b", **kw: Any) -> JobSpec:
    b = presets.resolve(model)
    return make_job(b.model, b.cluster, b.storage, **kw)


JOBS = {name: job(name) for name in ("llama3-8b", "llama3.2-1b", "gpt3-175b", "qwen2.5-72b")}


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
        """Right after training stops the GPU is hotter than a few minutes into a stall."""
        j = JOBS["llama3-8b"]
        hot = telemetry(j, 0, 10, "stall", phase_age_s=1.0, prev_phase="train")
        cool = telemetry(j, 0, 10, "stall", phase_age_s=600.0, prev_phase="train")
        assert hot.temp_c > cool.temp_c + 10

    def test_idle_gpu(self) -> None:
        """An H100 with no job: ~70 W, 0% util, a few MiB, idle clocks (excerpt 41)."""
        t = idle_telemetry(presets.load_gpu("h100"), 0)
        assert 60 <= t.power_w <= 80 and t.util_pct == 0 and t.mem_used_mib < 10 and t.sm_clock_mhz == 345


@pytest.mark.parametrize("name", sorted(JOBS))
def test_memory_matches_the_memory_model(name: str) -> None:
    """nvidia-smi's memory column is the memory model's used MiB."""
    from fakerun.sim.memory import memory_breakdown

    j = JOBS[name]
    assert telemetry(j, 1, 100, "train").mem_used_mib == memory_breakdown(j, 1, 100).used_mib
