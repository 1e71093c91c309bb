"""Per-GPU memory: optimizer bytes per parameter, sharding, activations, capacity."""

from __future__ import annotations

from typing import Any

import pytest

from fakerun import presets
from fakerun.sim.job import JobSpec, make_job
from fakerun.sim.memory import GIB, MIB, memory_breakdown, peak_memory


def job(model: str = "llama3-8b", **kw: Any) -> JobSpec:
    b = presets.resolve(model)
    return make_job(b.model, b.cluster, b.storage, **kw)


class TestCapacity:
    @pytest.mark.parametrize("name", presets.list_presets()["models"])
    def test_every_preset_fits_its_default_cluster(self, name: str) -> None:
        """Each model on its default cluster at its default parallelism fits, with no escalation needed."""
        j = job(name, check_memory=False)
        stage, mb = peak_memory(j)
        assert mb.used < mb.capacity, f"{name}: {mb.used_gib:.1f} GiB on stage {stage}"
        assert mb.used > 0.1 * mb.capacity  # and uses a realistic share of it

    def test_every_rank_of_a_pipeline_fits(self) -> None:
        """Every rank of Llama 3 70B (TP8 x PP4 x DP8) is under 80 GB."""
        j = job("llama3-70b")
        assert all(memory_breakdown(j, r).fits for r in range(j.world_size))


class TestStates:
    def test_sixteen_bytes_per_parameter_without_sharding(self) -> None:
        """Mixed-precision Adam on one GPU: 2 + 2 + 12 = 16 bytes per parameter (ZeRO paper)."""
        j = job("gpt2-124m", nnodes=1, nproc_per_node=1, zero_stage=0)
        mb = memory_breakdown(j, 0)
        assert mb.weights + mb.grads + mb.optimizer == pytest.approx(16 * 124_439_808)

    def test_megatron_distributed_optimizer_footprint(self) -> None:
        """Llama 3.2 1B, d=8, fp32 grads: (2 + 4 + 12/8) B/param = 8839.72 MB, as in excerpt 08."""
        j = job("llama3.2-1b", zero_stage=1, fp32_grad_buffer=True)
        mb = memory_breakdown(j, 0)
        assert (mb.weights + mb.grads + mb.optimizer) / MIB == pytest.approx(8839.72, rel=1e-3)

    @pytest.mark.parametrize(
        ("zero", "per_param"), [(0, 16.0), (1, 4.0 + 12 / 32), (2, 2.0 + 14 / 32), (3, 16 / 32)]
    )
    def test_zero_stages_shard_by_data_parallel_size(self, zero: int, per_param: float) -> None:
        """DDP 16N, ZeRO-1 4N + 12N/d, ZeRO-2 2N + 14N/d, ZeRO-3 16N/d (d = 32)."""
        j = job("llama3-8b", zero_stage=zero, check_memory=False)
        mb = memory_breakdown(j, 0)
        assert mb.weights + mb.grads + mb.optimizer == pytest.approx(per_param * j.model.params)


class TestActivations:
    def test_first_pipeline_stage_holds_the_most(self) -> None:
        """Under 1F1B the first stage keeps pp micro batches in flight, the last only one."""
        j = job("llama3-70b")
        first = memory_breakdown(j, 0)
        last = memory_breakdown(j, j.world_size - 1)
        assert first.activations > 3 * last.activations
        assert last.logits > 0 == first.logits

    def test_full_recompute_saves_activation_memory(self) -> None:
        """Recomputing each layer keeps only its input."""
        sel = memory_breakdown(job(recompute="selective"), 0)
        full = memory_breakdown(job(recompute="full"), 0)
        assert full.activations < 0.2 * sel.activations

    def test_korthikanti_selective_formula(self) -> None:
        """GPT-3 layer with SP: s*b*h*34/t bytes per layer per micro batch (Korthikanti et al. 2022)."""
        j = job("gpt3-175b")
        mb = memory_breakdown(j, j.world_size - 1)  # last stage: one micro batch in flight
        layers = j.stage_layers(j.pp - 1)
        assert mb.activations == pytest.approx(layers * 2048 * 1 * 12288 * 34 / 8)


class TestReports:
    def test_pytorch_trio_is_ordered(self) -> None:
        """allocated <= max allocated <= reserved <= what nvidia-smi shows <= capacity."""
        j = job()
        for step in (0, 1, 2, 100):
            mb = memory_breakdown(j, 3, step)
            assert mb.allocated <= mb.max_allocated <= mb.reserved <= mb.used <= mb.capacity

    def test_first_step_peaks_lower(self) -> None:
        """Adam states appear after the first step's activations are freed (torchtitan: 33 then 45 GiB)."""
        j = job()
        assert memory_breakdown(j, 1, 1).max_allocated < memory_breakdown(j, 1, 10).max_allocated
        assert memory_breakdown(j, 1, 0).allocated < memory_breakdown(j, 1, 10).allocated

    def test_local_rank_zero_shows_more_in_nvidia_smi(self) -> None:
        """Stray contexts of the other local ranks land on device 0 (excerpt 40: +2 GB on GPU 0)."""
        j = job("llama3.2-1b")
        extra = memory_breakdown(j, 0).overhead - memory_breakdown(j, 1).overhead
        assert 1.5 * GIB < extra < 2.5 * GIB

    def test_reserved_is_in_two_mib_pages(self) -> None:
        """The caching allocator reserves whole 2 MiB pages."""
        assert memory_breakdown(job(), 5).reserved % (2 * MIB) == 0
