"""Compute physics: MFU band, the step-time identity, throughput figures, stragglers."""

from __future__ import annotations

import functools
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakerun import presets
from fakerun.frameworks import titan_flavors
from fakerun.sim import compute
from fakerun.sim.collectives import comm_seconds
from fakerun.sim.job import JobSpec, make_job
from fakerun.sim.step import step_numbers, step_time


@functools.cache
def job(model: str = "llama3-8b", seed: int = 0, **kw: Any) -> JobSpec:
    b = presets.resolve(model)
    return make_job(b.model, b.cluster, b.storage, seed=seed, **kw)


SMALL = ["gpt2-124m", "llama3.2-1b", "llama3-8b", "mixtral-8x7b", "mistral-7b"]


class TestMfu:
    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(presets.list_presets()["models"]), st.integers(0, 3), st.integers(0, 2_000_000))
    def test_mfu_stays_in_band(self, model: str, seed: int, step: int) -> None:
        """Utilisation (6N plus attention's 12 l (heads x head_dim) s per token) is within [0.30, 0.55] at
        every step, stragglers included; the 6N MFU is that times 6N's share of the work."""
        j = job(model, seed)
        m = j.model
        attention = 12 * m.attention_layers * m.heads * m.head_dim * j.seq_len
        share = 6 * m.active_params / (6 * m.active_params + attention)
        mfu, base, _ = compute.reported_mfu(j, step)
        assert 0.30 <= mfu / share <= base / share <= 0.55 + 1e-12

    def test_mfu_drifts_slowly(self) -> None:
        """Consecutive steps differ by a little; the drift spans a few points over thousands of steps."""
        j = job()
        values = [compute.base_mfu(j, s) for s in range(5000)]
        assert max(abs(a - b) for a, b in itertools.pairwise(values)) < 0.03
        assert max(values) - min(values) > 0.02

    @pytest.mark.parametrize(
        ("model", "low", "high"),
        [("gpt3-175b", 0.42, 0.50), ("llama3-70b", 0.36, 0.45), ("qwen2.5-72b", 0.30, 0.36)],
    )
    def test_centre_is_realistic(self, model: str, low: float, high: float) -> None:
        """A100 Megatron ~48%, H100 ~40%, MI300X ~30-35% (PHYSICS.md 2), attention counted as those do."""
        assert low <= compute.utilisation_center(job(model)) <= high

    @pytest.mark.parametrize("model", ["gpt3-175b", "llama3-405b", "qwen2.5-72b"])
    def test_short_attention_keeps_6n_mfu(self, model: str) -> None:
        """Where attention is under a tenth of the work, the 6N MFU centre stays above the band's floor."""
        assert compute.mfu_center(job(model)) > 0.30


class TestStepTime:
    @settings(max_examples=40, deadline=None)
    @given(st.sampled_from(SMALL), st.integers(0, 5), st.integers(1, 100_000))
    def test_step_time_identity(self, model: str, seed: int, step: int) -> None:
        """step time = 6 N tokens / (GPUs * MFU * peak), from all ranks' compute times and the comm time."""
        j = job(model, seed)
        numbers = [step_numbers(j, r, step) for r in range(j.world_size)]
        t = step_time(j, step, [n.compute_s for n in numbers], comm_seconds(j, step))
        mfu = numbers[0].mfu
        expected = (
            6 * j.model.active_params * j.global_batch * j.seq_len / (j.world_size * mfu * j.gpu.peak_flops)
        )
        assert t == pytest.approx(expected, rel=1e-9)
        assert numbers[0].step_time_s == pytest.approx(expected, rel=1e-9)

    def test_slowest_rank_gates(self) -> None:
        """Exactly one rank has the largest compute time and it is the gating rank."""
        j = job("llama3.2-1b")
        for step in range(1, 200):
            times = [step_numbers(j, r, step).compute_s for r in range(j.world_size)]
            gate = step_numbers(j, 0, step).gating_rank
            assert times[gate] == max(times)
            assert min(times) > 0.9 * max(times) or step_numbers(j, 0, step).straggler_rank is not None

    def test_throughput_figures_agree(self) -> None:
        """TFLOP/s = MFU x peak, tokens/s = tokens per step / step time."""
        j = job()
        n = step_numbers(j, 0, 1234)
        assert n.tflops_per_gpu == pytest.approx(n.mfu * 989.4)
        assert n.tokens_per_s == pytest.approx(j.global_batch * j.seq_len / n.step_time_s)
        assert n.tokens_per_s_per_gpu == pytest.approx(n.tokens_per_s / j.world_size)

    def test_llama3_8b_throughput_matches_the_rule_of_thumb(self) -> None:
        """~8,200 tokens/s/GPU for 8B on H100 at 40% MFU (PHYSICS.md 2); at seq 8192 attention takes a fifth
        of the work and torchtitan's log shows 5,615 (excerpt 70): between the two, in the band's range."""
        j = job()
        assert j.seq_len == 8192
        n = step_numbers(j, 0, 500)
        assert 4500 <= n.tokens_per_s_per_gpu <= 11_500

    def test_bloom_consistency_example(self) -> None:
        """BLOOM-size step on 384 A100s: 76 s at 48% of 6N; BLOOM's 149.77 TFLOPs counted 8N (full recompute),
        and 76 s x 8/6 = 102 s matches its logged 104.7-106.5 s/iter (PHYSICS.md 2, excerpt 23)."""
        b = presets.resolve("gpt3-175b")
        j = make_job(
            b.model, b.cluster, b.storage, nnodes=48, tp=4, pp=12, global_batch=2048, check_memory=False
        )
        t = compute.step_time_for_mfu(j, 0.48)
        assert t == pytest.approx(6 * b.model.params * 2048 * 2048 / (384 * 312e12 * 0.48))
        assert 98 <= t * 8 / 6 <= 106


class TestStragglers:
    def test_rare_and_deterministic(self) -> None:
        """A few steps in a thousand have a straggler; the same ones for the same seed."""
        j = job()
        hits = [s for s in range(20_000) if compute.straggler(j, s) is not None]
        assert 0.001 * 20_000 <= len(hits) <= 0.05 * 20_000
        assert hits == [s for s in range(20_000) if compute.straggler(j, s) is not None]
        other = job(seed=1)
        assert hits != [s for s in range(20_000) if compute.straggler(other, s) is not None]

    def test_straggler_slows_the_step(self) -> None:
        """On a straggler step the step is slower and the straggler is the gating rank."""
        j = job("llama3.2-1b")
        step = next(s for s in range(1, 50_000) if compute.straggler(j, s) is not None)
        n = step_numbers(j, 0, step)
        s = compute.straggler(j, step)
        assert s is not None and n.gating_rank == s.rank == n.straggler_rank
        assert n.mfu < compute.base_mfu(j, step)


class TestEta:
    def test_eta_counts_the_steps_left(self) -> None:
        """ETA = steps left x the typical step time, 0 at the end."""
        j = job()
        assert compute.eta_seconds(j, 100) == pytest.approx(
            (j.total_steps - 100) * compute.expected_step_time(j)
        )
        assert compute.eta_seconds(j, j.total_steps) == 0.0

    def test_first_step_overhead_is_seconds(self) -> None:
        """The first step of an attempt costs a few extra seconds, outside the MFU identity."""
        assert 2.0 <= compute.first_step_overhead_s(job()) <= 10.0


class TestFrameworkFlops:
    """Megatron's and torchtitan's own FLOPs counts, and their TFLOP/s from the step time."""

    def test_megatron_formula_reduces_to_narayanan(self) -> None:
        """GPT-2 (MHA, GELU 4h): 72 B s l h^2 (1 + s/6h + V/12lh) (Narayanan et al. 2021, no recompute)."""
        b = presets.resolve("gpt2-124m")
        j = make_job(b.model, b.cluster, b.storage, nnodes=1)
        m = j.model
        assert m.ffn_hidden == 4 * m.hidden and m.kv_heads == m.heads and m.mlp != "swiglu"
        s, h, l_, v = j.seq_len, m.hidden, m.layers, m.vocab
        want = 72 * j.global_batch * s * l_ * h * h * (1 + s / (6 * h) + v / (12 * l_ * h))
        assert compute.megatron_flops_per_step(j) == pytest.approx(want, rel=1e-9)

    def test_megatron_counts_gqa_and_swiglu(self) -> None:
        """Llama 3 8B: fewer K/V heads shrink attention, SwiGLU's third matrix adds half the MLP."""
        b = presets.resolve("llama3-8b")
        j = make_job(b.model, b.cluster, b.storage, nnodes=1)
        m = j.model
        s, h, l_ = j.seq_len, m.hidden, m.layers
        per_token = 12 * l_ * h * h * ((1 + 8 / 32 + s / h) + 14336 / 4096 * 1.5 + m.vocab / (2 * l_ * h))
        assert compute.megatron_flops_per_step(j) == pytest.approx(per_token * j.tokens_per_step, rel=1e-9)

    def test_torchtitan_mfu_stays_in_band_when_heads_are_wider_than_hidden(self) -> None:
        # torchtitan's qwen3 debugmodel_moe: dim 256, 16 heads of 128 (attention 8x wider than the model),
        # seq 4096. Its log counts attention as 12 l heads head_dim s; the step's time must carry that work,
        # or the printed MFU leaves the band (it printed 81%).
        model = titan_flavors.flavor_model("qwen3", "debugmodel_moe")
        assert model.heads * model.head_dim == 8 * model.hidden
        b = presets.resolve("llama3-8b")
        j = make_job(model, b.cluster, b.storage, seed=0, seq_len=4096, micro_batch=4, grad_accum=1)
        for step in range(1, 40):
            numbers = [step_numbers(j, r, step) for r in range(j.world_size)]
            seconds = step_time(j, step, [n.compute_s for n in numbers], comm_seconds(j, step))
            assert compute.framework_mfu(j, seconds, "torchtitan") <= compute.MFU_MAX + 1e-9

    def test_torchtitan_matches_its_log(self) -> None:
        """Excerpt 70: Llama 3 8B at seq 8192 prints tps 5,615 and tflops 325.20: 57.9 GFLOP per token."""
        model = presets.resolve("llama3-8b").model
        assert compute.torchtitan_flops_per_token(model, 8192) == pytest.approx(325.20e12 / 5615, rel=0.01)

    @pytest.mark.parametrize("framework", compute.FRAMEWORKS)
    @pytest.mark.parametrize("step", [1, 2, 500])
    def test_step_time_identity(self, framework: str, step: int) -> None:
        """TFLOP/s * GPUs * step time = the framework's FLOPs, on every step (iteration 1 too)."""
        j = job()
        n = step_numbers(j, 0, step)
        tflops = compute.framework_tflops_per_gpu(j, n.step_time_s, framework)
        got = tflops * 1e12 * j.world_size * n.step_time_s
        assert got == pytest.approx(compute.framework_flops_per_step(j, framework), rel=1e-9)
        assert compute.framework_mfu(j, n.step_time_s, framework) == pytest.approx(
            tflops * 1e12 / j.gpu.peak_flops, rel=1e-9
        )

    @pytest.mark.parametrize("model", ["llama3.2-1b", "llama3.2-3b", "llama3-8b"])
    def test_fsdp_below_ddp(self, model: str) -> None:
        """FSDP's MFU sits below the same job's ZeRO-1/DDP figure (excerpt 70: ~33% on H100)."""
        b = presets.resolve(model)
        z1 = make_job(b.model, b.cluster, b.storage, nnodes=1, zero_stage=1)
        z3 = make_job(b.model, b.cluster, b.storage, nnodes=1, zero_stage=3)
        assert z3.dp > 1
        assert compute.mfu_center(z3) < compute.mfu_center(z1)
