"""Failure scenarios: deterministic placement, torchrun-style exit codes, consistent message numbers."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fakerun import presets
from fakerun.sim import failures as fl
from fakerun.sim.job import JobSpec, make_job
from fakerun.sim.step import step_numbers


def job(model: str = "llama3.2-1b", **kw: Any) -> JobSpec:
    b = presets.resolve(model)
    return make_job(b.model, b.cluster, b.storage, **kw)


class TestPlacement:
    @pytest.mark.parametrize("kind", fl.FAILURE_KINDS)
    def test_mid_run_and_deterministic(self, kind: str) -> None:
        """The failure strikes between 30% and 70% of the horizon, the same way for the same seed."""
        j = job(seed=3)
        f = fl.plan_failure(j, kind, horizon=1000)
        assert 300 <= f.step <= 700 and 0 <= f.rank < j.world_size
        assert f == fl.plan_failure(j, kind, horizon=1000)

    @pytest.mark.parametrize(
        ("kind", "code", "sig"),
        [("crash", 1, None), ("oom", 1, None), ("segfault", -11, "SIGSEGV"), ("node-loss", -9, "SIGKILL")],
    )
    def test_exit_codes(self, kind: str, code: int, sig: str | None) -> None:
        """Exit codes as torchrun reports them: 1 for exceptions, minus the signal number for signals."""
        f = fl.plan_failure(job(nnodes=2), kind, step=50, rank=9)
        assert (f.exit_code, f.signal) == (code, sig)

    def test_node_loss_takes_the_whole_node(self) -> None:
        """Losing node 1 of 2 kills its 8 ranks."""
        f = fl.plan_failure(job(nnodes=2), "node-loss", step=10, rank=11)
        assert f.ranks == tuple(range(8, 16)) and f.node == 1

    def test_training_failures_do_not_exit(self) -> None:
        """Spikes, NaNs and hangs leave every process alive."""
        for kind in ("loss-spike", "nan", "hang"):
            f = fl.plan_failure(job(), kind, step=10)
            assert f.exit_code is None and f.ranks == ()

    def test_unknown_kind(self) -> None:
        """An unknown failure is a one-line ValueError naming the choices."""
        with pytest.raises(ValueError, match="unknown failure 'meteor' \\(choose from: crash, oom, xid"):
            fl.plan_failure(job(), "meteor")


class TestLossScenarios:
    def test_nan_scenario_marks_steps(self) -> None:
        """The NaN scenario makes 1-3 consecutive NaN steps, then training goes on."""
        j = job()
        f = fl.plan_failure(j, "nan", step=400)
        jj = fl.with_failure(j, f)
        assert 1 <= len(jj.nan_steps) <= 3 and jj.nan_steps[0] == 400
        assert math.isnan(step_numbers(jj, 0, 400).loss)
        assert math.isfinite(step_numbers(jj, 0, jj.nan_steps[-1] + 1).loss)

    def test_spike_scenario(self) -> None:
        """The spike scenario lifts the loss a few steps after the failure step."""
        j = job()
        jj = fl.with_failure(j, fl.plan_failure(j, "loss-spike", step=5000))
        assert step_numbers(jj, 0, 5004).loss > 1.3 * step_numbers(j, 0, 5004).loss


class TestRandom:
    def test_rates_of_large_runs(self) -> None:
        """Llama 3's rate per GPU-hour: 16,384 GPUs meet ~7.8 interruptions a day, 64 GPUs rarely one."""
        assert pytest.approx(419 / 54) == fl.INTERRUPTIONS_PER_GPU_HOUR * 16_384 * 24
        big, small = job(nnodes=2048, seed=5), job(nnodes=8, seed=5)
        day = 86_400.0
        hits_big = [fl.random_failure(big, i, first=1, last=86_400, step_s=1.0) for i in range(200)]
        hits_small = [fl.random_failure(small, i, first=1, last=86_400, step_s=1.0) for i in range(200)]
        # P(first interruption within a day) = 1 - exp(-rate x GPUs x 24 h)
        p_big = 1 - math.exp(-fl.INTERRUPTIONS_PER_GPU_HOUR * 16_384 * day / 3600)
        p_small = 1 - math.exp(-fl.INTERRUPTIONS_PER_GPU_HOUR * 64 * day / 3600)
        assert abs(sum(h is not None for h in hits_big) / 200 - p_big) < 0.1
        assert abs(sum(h is not None for h in hits_small) / 200 - p_small) < 0.1
        assert {h[0] for h in hits_big if h} <= set(fl.RANDOM_KINDS)

    def test_specs(self) -> None:
        """`kind@step:rank` where it says; a step outside the run is refused in one line."""
        j = job(nnodes=2)
        (f,) = fl.plan_failures(j, ["segfault@20:9"], first=1, last=100, step_s=1.0)
        assert (f.kind, f.step, f.rank, f.exit_code) == ("segfault", 20, 9, -11)
        with pytest.raises(ValueError, match="outside this run's steps 1-100"):
            fl.plan_failures(j, ["oom@500"], first=1, last=100, step_s=1.0)
