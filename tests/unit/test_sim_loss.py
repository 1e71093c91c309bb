"""Loss and grad norm: ln(vocab) at start, the scaling law later, noise, spikes, NaNs, validation gap."""

from __future__ import annotations

import functools
import itertools
import math
import statistics
from typing import Any

import pytest

from fakerun import presets
from fakerun.sim import gradnorm, loss
from fakerun.sim.job import JobSpec, make_job
from fakerun.sim.step import step_numbers

# Hoffmann et al. 2022 approach 3 and Besiroglu et al. 2024, as literals.
CHINCHILLA = (1.69, 406.4, 410.7, 0.34, 0.28)
EPOCH = (1.8172, 482.01, 2085.43, 0.3478, 0.3658)


@functools.cache
def job(model: str = "llama3-8b", seed: int = 0, **kw: Any) -> JobSpec:
    b = presets.resolve(model)
    return make_job(b.model, b.cluster, b.storage, seed=seed, **kw)


def law(n: float, d: float, c: tuple[float, ...] = CHINCHILLA) -> float:
    e, a, b, alpha, beta = c
    return float(e + a / n**alpha + b / d**beta)


def natural_spike_free(j: JobSpec, step: int) -> bool:
    return all(loss.spike_at(j, s) is None for s in range(step - 5, step + 1))


class TestCurve:
    @pytest.mark.parametrize("model", presets.list_presets()["models"])
    @pytest.mark.parametrize("seed", [0, 1, 7])
    def test_starts_near_ln_vocab(self, model: str, seed: int) -> None:
        """At step 0 the loss is within 10% of ln(vocab)."""
        j = job(model, seed)
        assert loss.train_loss(j, 0) == pytest.approx(math.log(j.model.vocab), rel=0.10)

    @pytest.mark.parametrize(
        ("model", "constants", "name"),
        [
            ("llama3-8b", CHINCHILLA, "chinchilla"),
            ("gpt3-175b", CHINCHILLA, "chinchilla"),
            ("llama3.2-1b", EPOCH, "epoch"),
        ],
    )
    def test_follows_the_law_after_warmup(self, model: str, constants: tuple[float, ...], name: str) -> None:
        """After warmup the loss is E + A/N^a + B/D^b at the tokens consumed, within the noise band."""
        j = job(model, law=name)
        steps = range(max(j.warmup_steps, 400), max(j.warmup_steps, 400) + 20_000, 97)
        ratios = []
        for step in steps:
            if not natural_spike_free(j, step):
                continue
            expected = law(j.model.params, (step - 1) * j.tokens_per_step, constants)
            ratio = loss.train_loss(j, step) / expected
            assert abs(ratio - 1) < 0.06, step
            ratios.append(ratio)
        assert statistics.mean(ratios) == pytest.approx(1.0, abs=0.005)

    def test_decreases_on_average(self) -> None:
        """Means over successive windows keep falling."""
        j = job()
        means = [
            statistics.mean(loss.train_loss(j, s) for s in range(w, w + 200)) for w in range(0, 20_000, 2000)
        ]
        assert all(a > b for a, b in itertools.pairwise(means))

    def test_falls_fast_early(self) -> None:
        """Like real runs, the loss is well below its start a few hundred steps in (excerpts 25, 27)."""
        j = job()
        assert loss.train_loss(j, 200) < 0.6 * loss.train_loss(j, 0)

    def test_same_on_every_rank(self) -> None:
        """The loss is all-reduced: all ranks print the same value."""
        j = job("llama3.2-1b")
        assert len({step_numbers(j, r, 321).loss for r in range(j.world_size)}) == 1

    def test_validation_sits_slightly_above_training(self) -> None:
        """Eval loss is 0.5-3% above the noiseless training loss at every eval."""
        j = job()
        for step in range(500, 50_000, 500):
            ratio = loss.eval_loss(j, step) / loss.expected_loss(j, step + 1)
            assert 1.005 < ratio < 1.03

    def test_perplexity(self) -> None:
        """ppl = exp(loss)."""
        n = step_numbers(job(), 0, 777)
        assert n.ppl == pytest.approx(math.exp(n.loss))


class TestSpikes:
    def test_natural_spikes_are_rare(self) -> None:
        """Fewer than 5% of steps sit inside a natural spike, and some exist over a long run."""
        j = job()
        inside = sum(loss.spike_at(j, s) is not None for s in range(0, 100_000, 7))
        assert 0 < inside < 0.05 * 100_000 / 7

    def test_forced_spike_rises_and_recovers(self) -> None:
        """A forced spike lifts the loss well above the curve and it recovers within ~40 steps."""
        j = job(spike_steps=(30_000,))
        before = loss.expected_loss(j, 30_000)
        peak = max(loss.train_loss(j, s) for s in range(30_000, 30_010))
        assert peak > 1.3 * before
        assert loss.train_loss(j, 30_045) == pytest.approx(loss.expected_loss(j, 30_045), rel=0.08)

    def test_grad_norm_leads_the_loss(self) -> None:
        """The grad norm peaks 2-3 steps before the loss does (BLOOM, excerpt 22)."""
        j = job(spike_steps=(30_000,))
        steps = range(29_995, 30_040)
        g_peak = max(steps, key=lambda s: gradnorm.grad_norm(j, s))
        l_peak = max(steps, key=lambda s: loss.train_loss(j, s))
        assert 1 <= l_peak - g_peak <= 4
        assert gradnorm.grad_norm(j, g_peak) > 20

    def test_nan_steps_are_skipped(self) -> None:
        """A NaN step reports nan loss and grad norm, is skipped, and the next step is normal."""
        j = job(nan_steps=(1000,))
        n = step_numbers(j, 0, 1000)
        assert math.isnan(n.loss) and math.isnan(n.grad_norm) and n.skipped
        after = step_numbers(j, 0, 1001)
        assert math.isfinite(after.loss) and not after.skipped


class TestGradNorm:
    def test_high_early(self) -> None:
        """The first steps peak at 5-50 (4.5 then 16 at step 10 for Llama3-8B, excerpt 70)."""
        j = job()
        early = max(gradnorm.grad_norm(j, s) for s in range(1, 50))
        assert 5 < early < 50

    @pytest.mark.parametrize("model", ["llama3-8b", "llama3-70b", "gpt3-175b", "gpt2-124m"])
    def test_settles_below_one(self, model: str) -> None:
        """Mid-run the median grad norm is 0.2-1.0 (BLOOM 0.13-0.27, Megatron-LLM 0.23-0.36)."""
        j = job(model)
        late = statistics.median(gradnorm.grad_norm(j, s) for s in range(20_000, 21_000))
        assert 0.15 < late < 1.0

    def test_clipping_coefficient(self) -> None:
        """clip_grad_norm_ scales by min(1, 1.0 / norm)."""
        j = job()
        assert gradnorm.clip_coefficient(j, 4.0) == pytest.approx(0.25, rel=1e-5)
        assert gradnorm.clip_coefficient(j, 0.3) == 1.0


class TestFinetune:
    def test_starts_near_two_and_ends_near_one(self) -> None:
        """SFT of a pretrained model: ~1.4-2.4 at first, about half of that at the end (excerpt 60)."""
        j = job("llama3-8b", regime="finetune", total_steps=1000, lr=2e-5)
        start = statistics.mean(loss.train_loss(j, s) for s in range(0, 5))
        end = statistics.mean(loss.train_loss(j, s) for s in range(950, 1000))
        assert 1.3 < start < 2.6 and 0.35 * start < end < 0.75 * start

    def test_grad_norm_is_noisy_with_isolated_spikes(self) -> None:
        """Fine-tuning grad norms sit at 1-4 with isolated spikes above 7 (excerpts 60, 61)."""
        j = job("llama3-8b", regime="finetune", total_steps=3000, lr=2e-5)
        norms = [gradnorm.grad_norm(j, s) for s in range(100, 3000)]
        assert 0.8 < statistics.median(norms) < 4.0
        assert 0 < sum(n > 7 for n in norms) < 0.05 * len(norms)
