"""Compute-optimal N and D against brute force over the law; Chinchilla's budget; constrained optima."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest

from fakerun.plan import optimum as opt
from fakerun.plan.laws import get_law

CHINCHILLA_BUDGET = 5.76e23  # Hoffmann et al. 2022: Chinchilla's (and Gopher's) training compute
CHINCHILLA = (70e9, 1.4e12)  # its parameters and tokens
EPOCH_AI = (1.8172, 482.01, 2085.43, 0.3478, 0.3658)
CHINCHILLA_3 = (1.69, 406.4, 410.7, 0.34, 0.28)
CONSTANTS = {"epoch-ai": EPOCH_AI, "chinchilla-3": CHINCHILLA_3}


def law_loss(c: tuple[float, ...], n: float, d: float) -> float:
    e, a, b, alpha, beta = c
    return float(e + a / n**alpha + b / d**beta)


def brute_force_argmin(f: Callable[[float], float], lo: float, hi: float, points: int = 40_001) -> float:
    """The grid point minimising f over a log grid: resolution (hi/lo)^(1/points), ~0.03% here."""
    grid = [lo * (hi / lo) ** (i / (points - 1)) for i in range(points)]
    return min(grid, key=f)


class TestComputeOptimal:
    @pytest.mark.parametrize(
        ("name", "flops"), list(itertools.product(CONSTANTS, [1e19, 1e21, 5.76e23, 1e25]))
    )
    def test_closed_form_is_the_brute_force_minimum(self, name: str, flops: float) -> None:
        """The closed-form N is where the law, scanned along C = 6 N D, is lowest."""
        c = CONSTANTS[name]
        n = brute_force_argmin(lambda n: law_loss(c, n, flops / (6 * n)), 1e6, 1e14)
        got = opt.compute_optimal(flops, name)
        assert got.params == pytest.approx(n, rel=1e-3)
        assert 6 * got.params * got.tokens == pytest.approx(flops, rel=1e-12)
        assert got.loss == pytest.approx(law_loss(c, got.params, got.tokens), rel=1e-12)

    @pytest.mark.parametrize("flops", [1e21, 5.76e23, 1e25])
    def test_kaplan_numeric_optimum_is_the_stationary_point(self, flops: float) -> None:
        """Kaplan's form has no closed form here; d/dN [(N_c/N)^r + 6 D_c N / C] = 0 gives
        N^(1+r) = r N_c^r C / (6 D_c) with r = alpha_N / alpha_D, which the numeric search must find."""
        r = 0.076 / 0.095
        n = (r * 8.8e13**r * flops / (6 * 5.4e13)) ** (1 / (1 + r))
        assert opt.compute_optimal(flops, "kaplan").params == pytest.approx(n, rel=1e-6)

    def test_chinchilla_budget_gives_chinchilla(self) -> None:
        """5.76e23 FLOPs: about 70B parameters and 1.4T tokens under the default law (within 15%)."""
        got = opt.compute_optimal(CHINCHILLA_BUDGET, "epoch-ai")
        assert got.params == pytest.approx(CHINCHILLA[0], rel=0.15)
        assert got.tokens == pytest.approx(CHINCHILLA[1], rel=0.15)

    @pytest.mark.parametrize("flops", [1e21, 1e23, 5.76e23, 1e25])
    def test_about_twenty_tokens_per_parameter_under_epoch_ai(self, flops: float) -> None:
        """Approaches 1 and 2 of Hoffmann et al. give ~20 tokens per parameter; the Epoch AI refit agrees."""
        assert 15 < opt.compute_optimal(flops, "epoch-ai").tokens_per_param < 25

    def test_published_approach_3_gives_far_more_tokens(self) -> None:
        """The fit as printed puts the optimum at ~90 tokens per parameter (Besiroglu et al.'s criticism)."""
        assert opt.compute_optimal(CHINCHILLA_BUDGET, "chinchilla-3").tokens_per_param > 60

    @pytest.mark.parametrize("name", ["epoch-ai", "chinchilla-3", "kaplan"])
    def test_more_compute_lower_loss(self, name: str) -> None:
        """The optimal loss falls with compute, and the optimal model grows."""
        line = opt.frontier([1e20, 1e21, 1e22, 1e23, 1e24], name)
        assert all(a.loss > b.loss and a.params < b.params for a, b in itertools.pairwise(line))

    def test_bad_budget(self) -> None:
        """Zero, negative or infinite budgets are one-line ValueErrors."""
        for flops in (0.0, -1e20, math.inf):
            with pytest.raises(ValueError, match="positive and finite"):
                opt.compute_optimal(flops, "epoch-ai")


class TestIsoflop:
    @pytest.mark.parametrize("name", ["epoch-ai", "chinchilla-3"])
    def test_penalties_of_half_and_double(self, name: str) -> None:
        """A model 2x smaller or larger at the same budget loses what the law says, always above zero."""
        c = CONSTANTS[name]
        best = opt.compute_optimal(1e23, name)
        for p in opt.isoflop(1e23, name):
            n = best.params * p.factor
            assert p.penalty == pytest.approx(law_loss(c, n, 1e23 / (6 * n)) - best.loss, rel=1e-9)
            assert p.penalty > 0
        assert [p.factor for p in opt.isoflop(1e23, name)] == [0.5, 2.0]

    def test_curve_minimum_is_the_optimum(self) -> None:
        """Every point of the IsoFLOP curve sits at or above the optimum."""
        best = opt.compute_optimal(1e23, "epoch-ai")
        curve = opt.isoflop_curve(1e23, "epoch-ai")
        assert all(loss >= best.loss - 1e-12 for _, loss in curve)
        assert min(curve, key=lambda x: x[1])[0] == pytest.approx(best.params, rel=1e-9)


def effective(tokens: float, unique: float) -> float:
    """Muennighoff et al. 2023 eq. 5: D' = U + U R* (1 - exp(-(D/U - 1) / R*)), R* = 15.4."""
    if tokens <= unique:
        return tokens
    return unique + unique * 15.4 * (1 - math.exp(-(tokens / unique - 1) / 15.4))


class TestDataConstrained:
    def test_plenty_of_data_changes_nothing(self) -> None:
        """With more unique tokens than the optimum needs, the optimum stands and runs under one epoch."""
        best = opt.compute_optimal(1e23, "epoch-ai")
        dc = opt.data_constrained(1e23, "epoch-ai", 10 * best.tokens)
        assert dc.params == pytest.approx(best.params, rel=1e-6)
        assert dc.epochs == pytest.approx(0.1, rel=1e-6)

    def test_scarce_data_is_the_brute_force_minimum(self) -> None:
        """With a tenth of the data, the optimum is where the law at D' is lowest: a larger model, epochs."""
        flops = CHINCHILLA_BUDGET
        unique = opt.compute_optimal(flops, "epoch-ai").tokens / 10
        n = brute_force_argmin(lambda n: law_loss(EPOCH_AI, n, effective(flops / (6 * n), unique)), 1e9, 1e13)
        dc = opt.data_constrained(flops, "epoch-ai", unique)
        assert dc.params == pytest.approx(n, rel=1e-3)
        assert dc.params > opt.compute_optimal(flops, "epoch-ai").params
        assert dc.epochs == pytest.approx(dc.tokens / unique)
        assert dc.effective_tokens == pytest.approx(effective(dc.tokens, unique), rel=1e-12)
        assert dc.loss == pytest.approx(law_loss(EPOCH_AI, dc.params, dc.effective_tokens), rel=1e-12)


class TestInferenceAware:
    @pytest.mark.parametrize("serve", [1e12, 1e13, 1e14])
    def test_least_total_flops_at_equal_loss(self, serve: float) -> None:
        """Sardana et al. 2024: among models reaching the compute-optimal loss, the least 6ND + 2N D_inf.

        The brute force solves the law for D in closed form: D = (B / (l - E - A/N^alpha))^(1/beta).
        """
        e, a, b, alpha, beta = EPOCH_AI
        target = opt.compute_optimal(1e23, "epoch-ai").loss

        def total(n: float) -> float:
            rest = target - e - a / n**alpha
            return math.inf if rest <= 0 else n * (6 * (b / rest) ** (1 / beta) + 2 * serve)

        best = opt.compute_optimal(1e23, "epoch-ai")
        n = brute_force_argmin(total, best.params / 1e3, best.params)
        got = opt.inference_aware(1e23, "epoch-ai", serve)
        assert got.params == pytest.approx(n, rel=1e-3)
        assert got.loss == pytest.approx(target, rel=1e-9)
        assert got.params < best.params and got.tokens > best.tokens
        assert got.total_flops == pytest.approx(total(got.params), rel=1e-6)
        assert got.compute_optimal_total_flops == pytest.approx(1e23 + 2 * serve * best.params)
        assert got.total_flops < got.compute_optimal_total_flops

    def test_no_serving_is_compute_optimal(self) -> None:
        """Without inference tokens the compute-optimal model is the answer."""
        got = opt.inference_aware(1e23, "epoch-ai", 0.0)
        assert got.params == opt.compute_optimal(1e23, "epoch-ai").params

    def test_tokens_for_loss_inverts_the_law(self) -> None:
        """The tokens found reach the loss asked for; an unreachable loss needs infinitely many."""
        law = get_law("epoch-ai")
        d = opt.tokens_for_loss(law, 1e9, 2.5)
        assert law.loss(1e9, d) == pytest.approx(2.5, rel=1e-9)
        assert opt.tokens_for_loss(law, 1e9, 1.9) == math.inf  # below E + A / N^alpha
