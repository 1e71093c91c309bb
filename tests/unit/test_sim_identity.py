"""Process identities per simulated host, and start-up times within the bands of a real node."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakerun import presets
from fakerun.sim import identity
from fakerun.sim.clock import JobClock
from fakerun.sim.job import JobSpec, make_job
from fakerun.sim.run import CUDA_S, IMPORT_S, rendezvous_seconds, startup_times

SEEDS = st.integers(0, 2**32)
NPROC = st.sampled_from([1, 2, 4, 8])


def _fit_residual(xs: list[float], ys: list[float]) -> float:
    """Largest absolute residual of the least-squares line through (xs, ys)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return max(abs(y - (my + slope * (x - mx))) for x, y in zip(xs, ys, strict=True))


class TestPids:
    """Each host's pids look drawn by its own kernel, not computed from another number."""

    @settings(max_examples=200, deadline=None)
    @given(SEEDS, st.integers(2, 16), NPROC)
    def test_hosts_disjoint_and_not_continuing(self, seed: int, nnodes: int, nproc: int) -> None:
        """No pid is shared between nodes, and no node's first pid follows another node's last."""
        hosts = [identity.host_identity(seed, n, nproc, nnodes=nnodes) for n in range(nnodes)]
        sets = [set(h.worker_pids) | {h.launcher_pid} for h in hosts]
        assert sum(len(s) for s in sets) == len(set().union(*sets))
        for a in hosts:
            for b in hosts:
                if a is not b:
                    assert abs(min(b.worker_pids) - max(a.worker_pids)) > nproc + 16

    @settings(max_examples=300, deadline=None)
    @given(SEEDS, st.integers(0, 64), NPROC, st.integers(0, 3))
    def test_launcher_below_workers_in_range(self, seed: int, node: int, nproc: int, attempt: int) -> None:
        """The launcher's pid is a busy host's, below its workers'; forks are increasing with small gaps."""
        pids = identity.worker_pids(seed, node, nproc, attempt)
        launcher = identity.launcher_pid(seed, node, nproc=nproc)
        lo, hi = identity.LAUNCHER_PID_RANGE
        assert lo <= launcher <= hi
        assert launcher < pids[0] < identity.PID_MAX
        assert all(0 < b - a <= 17 for a, b in itertools.pairwise(pids))
        if attempt:
            assert min(pids) > max(identity.worker_pids(seed, node, nproc, attempt - 1))

    def test_pids_spread_over_the_range(self) -> None:
        """Across hosts, launcher pids cover thousands to millions (no single template)."""
        pids = [identity.launcher_pid(seed, node) for seed in range(20) for node in range(10)]
        assert min(pids) < 20_000 and max(pids) > 1_000_000
        assert len(set(pids)) == len(pids)

    def test_fork_gaps_vary(self) -> None:
        """Most forks are consecutive, but over many hosts some have other processes in between."""
        gaps = [
            b - a
            for node in range(50)
            for a, b in zip(
                identity.worker_pids(7, node, 8), identity.worker_pids(7, node, 8)[1:], strict=False
            )
        ]
        assert gaps.count(1) > len(gaps) / 2 and any(g > 1 for g in gaps)


class TestTids:
    """NCCL's thread ids: later numbers of the host's counter, in no order and on no line."""

    @settings(max_examples=200, deadline=None)
    @given(SEEDS, st.integers(0, 32), st.sampled_from([4, 8]))
    def test_tids_above_the_last_worker(self, seed: int, node: int, nproc: int) -> None:
        """Each tid lies 50-900 above the host's last worker pid, and all differ."""
        h = identity.host_identity(seed, node, nproc)
        last = max(h.worker_pids)
        lo, hi = identity.TID_OFFSET
        assert all(last + lo <= t <= last + hi for t in h.nccl_tids)
        assert len(set(h.nccl_tids)) == nproc

    @settings(max_examples=200, deadline=None)
    @given(SEEDS, st.integers(0, 32))
    def test_tids_not_affine_in_pid_or_local_rank(self, seed: int, node: int) -> None:
        """A straight line through (local rank, tid) or (pid, tid) misses by far more than rounding."""
        h = identity.host_identity(seed, node, 8)
        tids = [float(t) for t in h.nccl_tids]
        assert _fit_residual([float(r) for r in range(8)], tids) > 5
        assert _fit_residual([float(p) for p in h.worker_pids], tids) > 5
        assert len({t - p for t, p in zip(h.nccl_tids, h.worker_pids, strict=True)}) > 1

    def test_tid_order_across_ranks_is_random(self) -> None:
        """The rank with the lowest tid is not always the same one."""
        lowest = {
            min(range(8), key=lambda r: identity.host_identity(s, 0, 8).nccl_tids[r]) for s in range(40)
        }
        assert len(lowest) > 3

    def test_real_pids_kept(self) -> None:
        """The host this launcher really is keeps its real pids; its tids follow its last real one."""
        real = (41000, 41001, 41003, 41004)
        h = identity.host_identity(3, 0, 4, real_pids=real)
        assert h.worker_pids == real
        assert all(41004 + 50 <= t <= 41004 + 900 for t in h.nccl_tids)


@functools.cache
def _job(model: str, cluster: str, nnodes: int, seed: int) -> JobSpec:
    b = presets.resolve(model, cluster=cluster)
    return make_job(b.model, b.cluster, b.storage, nnodes=nnodes, nproc_per_node=8, seed=seed)


JOBS = st.builds(
    _job,
    st.sampled_from(["gpt2-124m", "llama3.2-1b", "llama3.2-3b", "llama3-8b"]),
    st.sampled_from(["dgx-h100", "dgx-a100", "hgx-b200"]),
    st.sampled_from([1, 2, 8, 32]),
    st.integers(0, 1000),
)


class TestStartup:
    """Start-up takes what a real one takes, differs between ranks and nodes, and scales by speed."""

    @settings(max_examples=100, deadline=None)
    @given(JOBS, st.integers(0, 255))
    def test_phases_within_bands(self, job: JobSpec, r: int) -> None:
        """Import 3-15 s and the CUDA context 1-3 s on every rank: no collective 74 ms after the fork."""
        rank = r % job.world_size
        t = startup_times(job, rank, resume=False)
        assert IMPORT_S[0] <= t.import_s <= IMPORT_S[1]
        assert CUDA_S[0] <= t.cuda_s <= CUDA_S[1]
        assert t.to_init_s >= 4.0 and t.nccl_s > 0.5
        assert t.total_s == pytest.approx(t.to_init_s + t.after_init_s)

    def test_ranks_and_nodes_differ(self) -> None:
        """No two ranks share a phase's duration; whole nodes differ in their import time."""
        job = _job("llama3-8b", "dgx-h100", 4, 1)
        times = [startup_times(job, r, resume=False) for r in range(job.world_size)]
        assert len({t.import_s for t in times}) == job.world_size
        assert len({t.cuda_s for t in times}) == job.world_size
        node_means = [sum(t.import_s for t in times[n * 8 : n * 8 + 8]) / 8 for n in range(4)]
        assert max(node_means) - min(node_means) > 0.05 * min(node_means)

    @settings(max_examples=100, deadline=None)
    @given(SEEDS, st.sampled_from([1, 2, 4, 16, 64]), st.integers(0, 3))
    def test_rendezvous_takes_time(self, seed: int, nnodes: int, attempt: int) -> None:
        """One node's rendezvous is a store round (0.1-0.35 s); several nodes wait for seconds."""
        s = rendezvous_seconds(seed, nnodes, attempt)
        if nnodes == 1:
            assert 0.1 <= s <= 0.35
        else:
            assert 0.3 < s < 2.0 + 1.5 * (0.4 + 0.6 * math.log2(nnodes))

    @settings(max_examples=100, deadline=None)
    @given(st.floats(0.0, 1e6), st.floats(0.0, 1e4), st.floats(0.01, 1000.0))
    def test_clock_scales_by_speed(self, wall0: float, dt: float, speed: float) -> None:
        """`dt` seconds of the launcher's time are `dt * speed` of the job's."""
        clock = JobClock(wall0=1.7e9 + wall0, mono0=500.0, speed=speed)
        assert clock.at(500.0) == 1.7e9 + wall0
        assert clock.at(500.0 + dt) - clock.at(500.0) == pytest.approx(dt * speed, rel=1e-9, abs=1e-6)
