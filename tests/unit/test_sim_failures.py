"""Failure scenarios: deterministic placement, torchrun-style exit codes, consistent message numbers."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from fakerun import presets
from fakerun.sim import failures as fl
from fakerun.sim.collectives import comm_seconds
from fakerun.sim.compute import SLOW_SPREAD, slow_factor
from fakerun.sim.job import JobSpec, SlowNode, make_job
from fakerun.sim.step import step_numbers, step_time
from fakerun.sim.telemetry import telemetry


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


def slow_job(cause: str, factor: float = 2.0, **kw: Any) -> JobSpec:
    """A 2-node job whose node 1 runs `factor` slower over steps 100-200."""
    j = job(nnodes=2, seed=11, **kw)
    return dataclasses.replace(j, slow_nodes=(SlowNode(1, 100, 200, factor, cause),))


class TestSlowNode:
    def test_step_waits_for_the_slowest_rank(self) -> None:
        """Inside the episode every step takes the slowest rank's compute plus the exposed collectives, the
        coordinator's rule (step.step_time over all ranks' compute) gives the same, and node 1's ranks take
        1.3-2.5 x (less the per-GPU spread) their healthy compute; outside it nothing changes."""
        j = slow_job("thermal")
        healthy = job(nnodes=2, seed=11)
        for s in (100, 150, 200):
            ranks = [step_numbers(j, r, s) for r in range(j.world_size)]
            n = ranks[0]
            slowest = max(x.compute_s for x in ranks)
            assert n.step_time_s == pytest.approx(slowest + n.exposed_comm_s)
            comm = comm_seconds(j, s)
            assert step_time(j, s, [x.compute_s for x in ranks], comm) == pytest.approx(n.step_time_s)
            for r in range(8, 16):
                ratio = ranks[r].compute_s / step_numbers(healthy, r, s).compute_s
                assert 2.0 * (1 - SLOW_SPREAD) <= ratio <= 2.0
            assert n.step_time_s > 1.5 * step_numbers(healthy, 0, s).step_time_s
            assert n.straggler_rank is not None and n.straggler_rank // 8 == 1
            assert n.tokens_per_s == pytest.approx(j.tokens_per_step / n.step_time_s)
        for s in (99, 201):
            assert step_numbers(j, 3, s) == step_numbers(healthy, 3, s)

    def test_throttled_node_telemetry(self) -> None:
        """A thermal throttle: node 1's clocks fall by its slowdown (to the 15 MHz bin) with HW Thermal
        Slowdown and it draws less; degraded NVLink keeps its clocks but it draws less too (it waits on its
        links); the healthy node waits for the slow one and draws less than when nothing is slow."""
        healthy = job(nnodes=2, seed=11)
        for cause in ("thermal", "nvlink"):
            j = slow_job(cause)
            slow, ok = telemetry(j, 9, 150, "train"), telemetry(healthy, 9, 150, "train")
            assert slow.power_w < ok.power_w
            if cause == "thermal":
                f = slow_factor(j, 9, 150)
                assert slow.throttle == "HW Thermal Slowdown"
                assert slow.sm_clock_mhz == int(j.gpu.sm_clock_max_mhz / f) // 15 * 15
            else:
                assert slow.throttle == ok.throttle and slow.sm_clock_mhz == ok.sm_clock_mhz
            assert telemetry(j, 1, 150, "train").power_w < telemetry(healthy, 1, 150, "train").power_w
            assert telemetry(j, 9, 250, "train") == telemetry(healthy, 9, 250, "train")

    def test_scenario_draws_the_episode(self) -> None:
        """--fake-fail slow-node strikes nobody: the job gets one episode on the failure's node, from its
        step on, 1.3-2.5 x, thermal or NVLink, the same for the same seed."""
        j = job(nnodes=4, seed=5)
        f = fl.plan_failure(j, "slow-node", step=300, rank=17)
        assert not f.strikes
        (s,) = fl.with_failure(j, f).slow_nodes
        assert (s.node, s.start) == (2, 300) and 1.3 <= s.factor <= 2.5 and s.cause in ("thermal", "nvlink")
        assert s.end == j.total_steps or 400 <= s.end <= 800
        assert fl.with_failure(j, f) == fl.with_failure(j, fl.plan_failure(j, "slow-node", step=300, rank=17))


class TestNicFlap:
    def test_outcomes_by_the_ib_retry_window(self) -> None:
        """An outage within the queue pairs' retries (8 x 4.096 us x 2^20) stalls its step by whole ACK
        timeouts; a longer one aborts the node's ranks (-6) once the retries are spent. Seeds give both."""
        window = 8 * 4.096e-6 * 2**20
        kinds = set()
        for seed in range(40):
            j = job(nnodes=2, seed=seed)
            f = fl.plan_failure(j, "nic-flap", step=50, rank=10)
            if f.strikes:
                assert f.ranks == tuple(range(8, 16)) and f.exit_code == -6
                assert f.seconds == pytest.approx(window)
            else:
                ticks = f.seconds / (4.096e-6 * 2**20)
                assert 0 < f.seconds <= window and ticks == pytest.approx(round(ticks))
                jj = fl.with_failure(j, f)
                before = step_numbers(j, 0, 50).step_time_s
                assert step_numbers(jj, 0, 50).step_time_s == pytest.approx(before + f.seconds)
                comm = comm_seconds(jj, 50)
                computes = [step_numbers(jj, r, 50).compute_s for r in range(16)]
                assert step_time(jj, 50, computes, comm) == pytest.approx(before + f.seconds)
                assert step_numbers(jj, 0, 51) == step_numbers(j, 0, 51)
            kinds.add(f.strikes)
        assert kinds == {True, False}
