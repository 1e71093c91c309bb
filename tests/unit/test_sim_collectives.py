"""Collectives: the ring formula, growth with size and leaving the node, nccl-tests ranges, the plan."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fakerun import presets
from fakerun.sim import collectives as col
from fakerun.sim.job import JobSpec, make_job

MIB = 1 << 20
GIB = 1 << 30


def job(model: str = "llama3-8b", **kw: Any) -> JobSpec:
    b = presets.resolve(model)
    return make_job(b.model, b.cluster, b.storage, **kw)


class TestFormulas:
    def test_ring_by_hand(self) -> None:
        """1 GB over 8 ranks at 100 GB/s busbw and 10 us per hop: 2*7/8*1e9/1e11 + 14*1e-5 = 0.01764 s."""
        assert col.ring_allreduce_time(1e9, 8, 100e9, 10e-6) == pytest.approx(0.01764, rel=1e-12)

    def test_tree_by_hand(self) -> None:
        """Tree: same bandwidth term, 2*ceil(log2 64) = 12 latency hops: 2*63/64*1e9/1e11 + 12*1e-5."""
        assert col.tree_allreduce_time(1e9, 64, 100e9, 10e-6) == pytest.approx(0.0196875 + 0.00012)

    def test_one_rank_is_free(self) -> None:
        """A collective over one rank costs nothing."""
        assert col.ring_allreduce_time(1e9, 1, 100e9, 1e-5) == 0.0
        assert col.allreduce_time(presets.load_cluster("dgx-h100"), 1e9, 1, 1) == 0.0

    def test_bus_bandwidth_definition(self) -> None:
        """nccl-tests: busbw = algbw * 2(n-1)/n for all_reduce."""
        t = col.collective_time(presets.load_cluster("dgx-a100"), "all_reduce", GIB, 8, 8)
        assert t.busbw == pytest.approx(t.nbytes / t.seconds * 1.75)


class TestScaling:
    @pytest.mark.parametrize("cluster", presets.list_presets()["clusters"])
    @pytest.mark.parametrize(("ranks", "per_node"), [(8, 8), (16, 8), (8, 1), (256, 8)])
    def test_grows_with_bytes(self, cluster: str, ranks: int, per_node: int) -> None:
        """More bytes never take less time."""
        c = presets.load_cluster(cluster)
        times = [col.allreduce_time(c, 2.0**e, ranks, per_node) for e in range(10, 34)]
        assert all(a < b for a, b in itertools.pairwise(times))

    @pytest.mark.parametrize("size", [64 * 1024, 25 * MIB, GIB])
    def test_leaving_the_node_costs(self, size: int) -> None:
        """8 ranks take longer on 2 nodes than on one, and longer still on 8 nodes."""
        c = presets.load_cluster("dgx-h100")
        one, two, eight = (col.allreduce_time(c, size, 8, g) for g in (8, 4, 1))
        assert one < two < eight

    def test_large_payload_slowdown_is_modest(self) -> None:
        """Leaving the node costs ~1.3-3x for large payloads, not the NVLink/NIC ratio (PHYSICS.md 3)."""
        c = presets.load_cluster("dgx-h100")
        ratio = col.allreduce_time(c, GIB, 64, 8) / col.allreduce_time(c, GIB, 8, 8)
        assert 1.1 < ratio < 3.0


class TestRealisticRanges:
    def test_a100_node(self) -> None:
        """8 x A100: ~229-235 GB/s busbw at 1-8 GiB, 25 MiB in ~0.3 ms (excerpt 32)."""
        c = presets.load_cluster("dgx-a100")
        assert 215e9 < col.collective_time(c, "all_reduce", GIB, 8, 8).busbw < 240e9
        assert 0.2e-3 < col.allreduce_time(c, 25 * MIB, 8, 8) < 0.45e-3

    def test_h100_node_with_nvls(self) -> None:
        """8 x H100 with NVLS: 440-482 GB/s busbw on large messages; 16 MiB in ~0.13 ms (excerpts 33, 35)."""
        c = presets.load_cluster("dgx-h100")
        t = col.collective_time(c, "all_reduce", 4 * GIB, 8, 8)
        assert t.algo == "NVLS" and 440e9 < t.busbw < 482e9
        assert 0.09e-3 < col.allreduce_time(c, 16 * MIB, 8, 8) < 0.2e-3

    def test_b200_four_nodes(self) -> None:
        """4 x 8 B200: 1 GiB in ~5-7 ms, about 360-420 GB/s busbw (excerpt 34)."""
        c = presets.load_cluster("hgx-b200")
        t = col.collective_time(c, "all_reduce", GIB, 32, 8)
        assert 4e-3 < t.seconds < 7e-3

    def test_one_gpu_per_node_runs_at_nic_speed(self) -> None:
        """Across nodes with one rank each, busbw is the NDR400 NIC's 40-48 GB/s (nccl-tests#290)."""
        c = presets.load_cluster("dgx-h100")
        assert 38e9 < col.collective_time(c, "all_reduce", 4 * GIB, 16, 1).busbw < 48e9


class TestPlan:
    def test_ddp_buckets(self) -> None:
        """PyTorch DDP: a 1 MiB first bucket, then 25 MiB ones, covering every gradient."""
        j = job("gpt2-124m")
        buckets = col.grad_buckets(j)
        assert buckets[0] == MIB and set(buckets[1:-1]) == {25 * MIB}
        assert sum(buckets) == pytest.approx(2 * j.model.params)

    def test_megatron_buckets_match_excerpt_08(self) -> None:
        """Llama 3.2 1B with Megatron's 40M-element buckets: 17 buckets (16 layers + embedding)."""
        j = job("llama3.2-1b", zero_stage=1, fp32_grad_buffer=True)
        assert len(col.grad_buckets(j)) == 17

    def test_step_comm_is_deterministic_and_bounded(self) -> None:
        """Per-step comm time is seeded and within 8% of the plan."""
        j = job()
        plan = col.comm_plan(j)
        for step in range(200):
            t = col.comm_seconds(j, step)
            assert t == col.comm_seconds(j, step)
            assert abs(t / plan.total_s - 1) <= 0.08

    def test_tensor_parallel_traffic_stays_in_the_node(self) -> None:
        """TP collectives of Llama 3 70B run over NVLink inside one node."""
        plan = col.comm_plan(job("llama3-70b"))
        tp = [o for o in plan.ops if o.group == "tp"]
        assert tp and all(o.nodes == 1 for o in tp)
        assert 0 < plan.exposed_s < plan.total_s

    def test_bucket_allreduces_follow_the_plan(self) -> None:
        """The per-bucket collectives of a step use the plan's buckets."""
        j = job("llama3.2-1b")
        ops = col.bucket_allreduces(j, 10)
        assert [o.nbytes for o in ops] == list(col.comm_plan(j).buckets)
        assert all(o.seconds > 0 for o in ops)


class TestNetworkCap:
    """Across nodes, busbw is bounded by the NICs a node's ranks use (NCCL's rings cross every node)."""

    @settings(max_examples=80, deadline=None)
    @given(
        st.sampled_from(presets.list_presets()["clusters"]),
        st.sampled_from(["all_reduce", "reduce_scatter", "all_gather"]),
        st.integers(2, 16),
        st.sampled_from([1, 2, 4, 8]),
        st.integers(20, 34),
    )
    def test_busbw_under_the_nics(self, name: str, op: str, nodes: int, per_node: int, log2: int) -> None:
        """busbw <= per-NIC rate x NICs in use x efficiency, for every size, op and node count."""
        c = presets.load_cluster(name)
        assume(per_node <= c.gpus_per_node)
        t = col.collective_time(c, op, float(2**log2), nodes * per_node, per_node)
        nics = max(1, round(c.nics_per_node * per_node / c.gpus_per_node))
        cap = nics * c.nic_gbps / 8 * 1e9 * c.nic_efficiency
        assert t.busbw <= cap * (1 + 1e-9)

    def test_two_nodes_of_four_h100(self) -> None:
        """2 x 4 H100 on 4 NDR400 NICs, 256 MiB: under 4 x 46.5 = 186 GB/s, near 159 measured (excerpt 51)."""
        t = col.collective_time(presets.load_cluster("dgx-h100"), "all_reduce", 256 * 2**20, 8, 4)
        assert 140e9 <= t.busbw <= 186e9
