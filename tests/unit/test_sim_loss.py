"""Loss and grad norm: ln(vocab) at start, the scaling law later, noise, spikes, NaNs, validation gap."""

from __future__ import annotations

import functools
import itertools
import math
import statistics
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakerun import presets
from fakerun.sim import gradnorm, loss
from fakerun.sim.job import JobSpec, make_job
from fakerun.sim.step import step_numbers

# Hoffmann et al. 2022 approach 3 and Besiroglu et al. 2024, as literals.
CHINCHILLA = (1.69, 406.4, 410.7, 0.34, 0.28)
EPOCH = (1.8172, 482.01, 2085.43, 0.3478, 0.3658)


@functools.cache
def job(model: str = "llama3-8b", seed: int = 0, **kw: Any) -> JobSpec:
    kw = {k: v for k, v in kw.items() if v is not None}
    b = presets.resolve(model)
    return make_job(b.model, b.cluster, b.storage, seed=seed, **kw)


def law(n: float, d: float, c: tuple[float, ...] = EPOCH) -> float:  # the jobs' default law
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
            ("llama3-8b", CHINCHILLA, "chinchilla-3"),
            ("gpt3-175b", CHINCHILLA, "chinchilla-3"),
            ("llama3.2-1b", EPOCH, "epoch-ai"),
            ("llama3-8b", EPOCH, "epoch-ai"),
        ],
    )
    def test_ends_on_the_law(self, model: str, constants: tuple[float, ...], name: str) -> None:
        """A cosine-to-10% run ends on E + A/N^a + B/D^b at the tokens consumed (the law's own schedule)."""
        # Replaces "follows the law after warmup": mid-run, before the cooldown, a real loss sits above the
        # final-loss law at the same tokens (Tissue et al. 2024; Haegele et al. 2024): the law is an end.
        j = job(model, law=name, total_steps=20_000, warmup_steps=500, min_lr=None)
        assert j.min_lr == pytest.approx(0.1 * j.lr)
        end = law(j.model.params, j.total_steps * j.tokens_per_step, constants)
        assert loss.expected_loss(j, j.total_steps) == pytest.approx(end, rel=0.01)
        for step in range(2_000, 20_000, 997):
            d = (step - 1) * j.tokens_per_step
            assert loss.expected_loss(j, step) > law(j.model.params, d, constants)

    def test_decreases_on_average(self) -> None:
        """Means over successive windows keep falling."""
        j = job()
        means = [
            statistics.mean(loss.train_loss(j, s) for s in range(w, w + 200)) for w in range(0, 20_000, 2000)
        ]
        assert all(a > b for a, b in itertools.pairwise(means))

    def test_falls_fast_once_the_lr_is_up(self) -> None:
        """The loss is well below its start a few hundred full-lr steps in (excerpts 25, 27)."""
        j = job(warmup_steps=100)
        assert loss.train_loss(j, 400) < 0.6 * loss.train_loss(j, 0)

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


def lr_sum(j: JobSpec, steps: int) -> float:
    """Sum of the lr over steps 1..steps, from the published schedule: linear warmup, cosine to min_lr."""
    total = 0.0
    for i in range(1, steps + 1):
        if i < j.warmup_steps:
            total += j.lr * i / j.warmup_steps
        else:
            p = min((i - j.warmup_steps) / (j.total_steps - j.warmup_steps), 1.0)
            total += j.min_lr + 0.5 * (j.lr - j.min_lr) * (1 + math.cos(math.pi * p))
    return total


class TestLearningRateAware:
    """The loss follows the lr actually applied (Tissue et al. 2024), anneals, and discounts repeated data."""

    @settings(max_examples=25, deadline=None)
    @given(
        st.sampled_from(["gpt2-124m", "llama3.2-1b", "llama3-8b"]),
        st.integers(400, 4000),
        st.sampled_from([1e-4, 3e-4, 6e-4]),
        st.integers(0, 1000),
    )
    def test_no_collapse_at_a_tiny_lr(self, model: str, warmup: int, peak: float, seed: int) -> None:
        """While the integrated lr is below 0.003 (135 steps at <= 2e-5), the loss stays above 80% of ln V."""
        j = job(model, seed, warmup_steps=warmup, lr=peak, total_steps=50_000)
        for step in range(1, warmup, max(warmup // 40, 1)):
            if lr_sum(j, step - 1) > 0.003:
                break
            assert loss.expected_loss(j, step) > 0.8 * math.log(j.model.vocab), step

    @pytest.mark.parametrize("model", ["gpt2-124m", "llama3.2-1b"])
    def test_no_stall_at_ln_vocab_once_the_lr_is_up(self, model: str) -> None:
        """A small-batch run (4 x 1024 tokens) at full lr is well below ln V after 200 steps."""
        j = job(
            model,
            global_batch=4,
            micro_batch=1,
            seq_len=1024,
            warmup_steps=10,
            total_steps=5000,
            nnodes=1,
            nproc_per_node=1,
        )
        assert j.tokens_per_step == 4096
        assert loss.expected_loss(j, 200) < 0.8 * math.log(j.model.vocab)

    def test_a_higher_lr_moves_faster_early(self) -> None:
        """Same steps, twice the lr: a lower loss during the warm-up (progress is the area under the lr)."""
        slow = job(warmup_steps=2000, lr=1.5e-4, total_steps=100_000)
        fast = job(warmup_steps=2000, lr=3e-4, total_steps=100_000)
        for step in (200, 400, 800):
            assert loss.expected_loss(fast, step) < loss.expected_loss(slow, step)

    def test_cooldown_lowers_the_loss(self) -> None:
        """At equal tokens a cosine run ends below a constant-lr one; its last 20% gain more than tokens."""
        cos = job(total_steps=20_000, warmup_steps=500)
        const = job(total_steps=20_000, warmup_steps=500, lr_schedule="constant")
        t = cos.total_steps
        assert loss.expected_loss(cos, t) < loss.expected_loss(const, t)
        n = cos.model.params
        token_gain = law(n, 0.8 * t * cos.tokens_per_step) - law(n, t * cos.tokens_per_step)
        assert loss.expected_loss(cos, int(0.8 * t)) - loss.expected_loss(cos, t) > 1.5 * token_gain

    def test_repeated_data_is_worth_less(self) -> None:
        """Epochs 2+ follow Muennighoff et al. 2023: the law at D' = U + U R* (1 - exp(-R/R*)), R* = 15.4."""
        fresh = job("llama3.2-1b", total_steps=20_000, warmup_steps=500)
        repeated = job("llama3.2-1b", total_steps=20_000, warmup_steps=500, epochs=8)
        t = fresh.total_steps
        d = t * fresh.tokens_per_step
        u = d / 8
        r = d / u - 1
        d_prime = u + u * 15.4 * (1 - math.exp(-r / 15.4))
        n = fresh.model.params
        assert loss.expected_loss(repeated, t) > loss.expected_loss(fresh, t)
        lifted = loss.expected_loss(repeated, t) - loss.expected_loss(fresh, t)
        assert lifted == pytest.approx(law(n, d_prime) - law(n, d), rel=0.05)
        # The first epoch is fresh data: nothing changes before it ends.
        assert loss.expected_loss(repeated, t // 16) == pytest.approx(
            loss.expected_loss(fresh, t // 16), rel=1e-3
        )

    @pytest.mark.parametrize(("a", "b"), [("llama3-8b", "llama3-70b"), ("llama3.2-1b", "llama3.2-3b")])
    def test_models_with_one_vocabulary_print_different_losses(self, a: str, b: str) -> None:
        """Same vocab, same seed: the start and the step-to-step noise differ (the noise knows the model)."""
        ja, jb = job(a), job(b)
        assert ja.model.vocab == jb.model.vocab
        assert abs(loss.train_loss(ja, 1) - loss.train_loss(jb, 1)) > 1e-4  # apart in the printed digits
        res_a = [loss.train_loss(ja, s) / loss.expected_loss(ja, s) for s in range(5000, 5200)]
        res_b = [loss.train_loss(jb, s) / loss.expected_loss(jb, s) for s in range(5000, 5200)]
        assert abs(statistics.correlation(res_a, res_b)) < 0.5
