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
        with pytest.raises(ValueError, match="unknown failure 'meteor' \\(choose from: crash, segfault"):
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


class TestMessages:
    def test_oom_numbers_add_up(self) -> None:
        """Free < tried; in use + free = capacity; allocated + unallocated fit in what is in use."""
        j = job()
        o = fl.oom_numbers(j, 3, 100)
        assert o.free_gib < o.tried_gib
        assert o.in_use_gib + o.free_gib == pytest.approx(o.capacity_gib)
        assert o.allocated_gib + o.reserved_unallocated_gib <= o.in_use_gib
        assert 78.5 < o.capacity_gib < 79.6  # an 81,559 MiB H100 as torch sees it

    def test_watchdog_numbers(self) -> None:
        """Reduce-scatter NumelIn is dp x NumelOut; the timeout is 600000 ms and it ran a little longer."""
        j = job("llama3-8b")
        w = fl.watchdog_numbers(j, 0, 300)
        assert w.op_type == "_REDUCE_SCATTER_BASE" and w.numel_in == j.dp * w.numel_out
        assert w.timeout_ms == 600_000 < w.ran_for_ms < 600_200
        assert w.last_completed < w.seq_num < w.last_enqueued

    def test_ddp_watchdog_is_an_allreduce(self) -> None:
        """Plain DDP times out in an ALLREDUCE with NumelIn = NumelOut."""
        w = fl.watchdog_numbers(job("gpt2-124m"), 1, 10)
        assert w.op_type == "ALLREDUCE" and w.numel_in == w.numel_out
