"""step_numbers: determinism, shared values across ranks, token accounting, cost."""

from __future__ import annotations

import dataclasses
import functools

from hypothesis import given, settings
from hypothesis import strategies as st

from fakerun import presets
from fakerun.sim.job import JobSpec, SlowNode, make_job
from fakerun.sim.step import compute_timing, step_numbers


@functools.cache
def job(model: str = "llama3.2-1b", seed: int = 0) -> JobSpec:
    b = presets.resolve(model)
    return make_job(b.model, b.cluster, b.storage, seed=seed)


class TestDeterminism:
    @settings(max_examples=100, deadline=None)
    @given(st.integers(0, 2**40), st.integers(0, 7), st.integers(0, 10**7))
    def test_same_inputs_same_numbers(self, seed: int, rank: int, step: int) -> None:
        """The same (seed, rank, step) gives identical numbers, whatever was computed before."""
        assert step_numbers(job(seed=seed), rank, step) == step_numbers(job(seed=seed), rank, step)

    @settings(max_examples=50, deadline=None)
    @given(st.integers(0, 2**31), st.integers(1, 10**6))
    def test_different_seed_different_numbers(self, seed: int, step: int) -> None:
        """Another seed changes the loss, the grad norm and the MFU."""
        a = step_numbers(job(seed=seed), 0, step)
        b = step_numbers(job(seed=seed + 1), 0, step)
        assert a.loss != b.loss and a.grad_norm != b.grad_norm and a.mfu != b.mfu

    def test_shared_values_agree_across_ranks(self) -> None:
        """Loss, grad norm, lr, MFU and step time are the same on every rank; compute time is not."""
        j = job()
        rows = [step_numbers(j, r, 4321) for r in range(j.world_size)]
        for field in ("loss", "grad_norm", "lr", "mfu", "step_time_s", "tokens", "gating_rank"):
            assert len({getattr(n, field) for n in rows}) == 1, field
        assert len({n.compute_s for n in rows}) > 1


class TestAccounting:
    def test_tokens_and_samples(self) -> None:
        """After step k the job has consumed k global batches."""
        j = job()
        n = step_numbers(j, 0, 250)
        assert n.tokens == 250 * j.global_batch * j.seq_len and n.samples == 250 * j.global_batch

    def test_memory_fields(self) -> None:
        """Memory figures are ordered and below the device."""
        n = step_numbers(job(), 2, 100)
        assert n.mem_allocated_gib <= n.mem_max_allocated_gib <= n.mem_reserved_gib == n.mem_gib
        assert 0 < n.mem_pct < 100

    def test_moe_aux_loss(self) -> None:
        """MoE jobs report a load-balancing loss just above 1 (excerpt 26); dense ones none."""
        assert step_numbers(job(), 0, 10).moe_aux_loss is None
        aux = step_numbers(job("mixtral-8x7b"), 0, 5000).moe_aux_loss
        assert aux is not None and 1.0 < aux < 1.05


class TestComputeSeconds:
    """compute_timing: the step's timing, from which each rank's compute time is what step_numbers says."""

    @settings(max_examples=100, deadline=None)
    @given(st.integers(0, 2**40), st.integers(0, 15), st.integers(1, 10**6))
    def test_equals_step_numbers_compute(self, seed: int, rank: int, step: int) -> None:
        j = two_nodes(seed)
        assert compute_seconds(j, rank, step) == step_numbers(j, rank, step).compute_s

    def test_equals_it_on_a_slow_node_and_with_stragglers(self) -> None:
        base = two_nodes(11)
        slow = dataclasses.replace(base, slow_nodes=(SlowNode(1, 100, 200, 2.0, "thermal"),))
        for rank in (0, 7, 8, 15):
            for step in (99, 100, 150, 200, 201):
                assert compute_seconds(slow, rank, step) == step_numbers(slow, rank, step).compute_s
        # node 1's ranks really are slowed inside the episode, so the case above compares slowed times
        assert compute_seconds(slow, 8, 150) > 1.5 * compute_seconds(base, 8, 150)


@functools.cache
def two_nodes(seed: int) -> JobSpec:
    b = presets.resolve("llama3-8b")
    return make_job(b.model, b.cluster, b.storage, nnodes=2, seed=seed)


def test_compute_timing_survives_json_and_gives_each_rank_its_compute() -> None:
    """The coordinator's timing, through JSON, gives a rank exactly the compute step_numbers gives it."""
    import json

    from fakerun.sim.step import ComputeTiming, compute_timing

    j = two_nodes(5)
    for step in (1, 2, 777):
        back = ComputeTiming.from_wire(json.loads(json.dumps(compute_timing(j, step).wire())))
        assert back is not None
        assert [back.compute_of(j, r, step) for r in range(16)] == [
            step_numbers(j, r, step).compute_s for r in range(16)
        ]
    for bad in (None, [1, 2.0, 3.0], ["0", 1.0, 1.0, 1.0], [0, 1, 1.0, 1.0], {"gate": 0}):
        assert ComputeTiming.from_wire(bad) is None


def compute_seconds(job: JobSpec, rank: int, step: int) -> float:
    """A rank's compute time at `step` as a lean rank computes it (the coordinator's timing, its jitter)."""
    return compute_timing(job, step).compute_of(job, rank, step)
