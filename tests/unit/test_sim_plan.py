"""The scaling-law planner: compute-optimal N and D under C = 6ND, predicted loss, GPU-day budgets."""

from __future__ import annotations

import itertools

import pytest

from fakerun import presets
from fakerun.sim import plan

GOPHER_BUDGET = 5.76e23  # Chinchilla / Gopher compute


class TestComputeOptimal:
    def test_chinchilla_approach_3_by_hand(self) -> None:
        """Approach 3 as printed: N = (0.34*406.4/(0.28*410.7))^(1/0.62) (C/6)^(0.28/0.62) = 3.22e10.

        That is half of Chinchilla's 70B: the rounded approach-3 fit disagrees with approaches 1-2, as
        Besiroglu et al. 2024 pointed out; it stays within a factor 2.2 of 70B.
        """
        p = plan.compute_optimal(GOPHER_BUDGET, "chinchilla")
        g = (0.34 * 406.4 / (0.28 * 410.7)) ** (1 / 0.62)
        assert p.n_params == pytest.approx(g * (GOPHER_BUDGET / 6) ** (0.28 / 0.62), rel=1e-9)
        assert p.n_params == pytest.approx(3.22e10, rel=0.01)
        assert 70e9 / 2.2 < p.n_params < 70e9 * 2

    def test_epoch_refit_lands_on_chinchilla(self) -> None:
        """The Epoch AI refit puts the Gopher-budget optimum near 70B and ~20 tokens per parameter."""
        p = plan.compute_optimal(GOPHER_BUDGET, "epoch")
        assert 70e9 / 1.3 < p.n_params < 70e9 * 1.3
        assert 15 < p.tokens_per_param < 30

    @pytest.mark.parametrize("law", ["chinchilla", "epoch"])
    def test_budget_and_loss_are_consistent(self, law: str) -> None:
        """C = 6 N D and the loss is the law at (N, D)."""
        p = plan.compute_optimal(1e24, law)
        assert 6 * p.n_params * p.tokens == pytest.approx(1e24)
        e, a, b, alpha, beta = {"chinchilla": (1.69, 406.4, 410.7, 0.34, 0.28)}.get(
            law, (1.8172, 482.01, 2085.43, 0.3478, 0.3658)
        )
        assert p.loss == pytest.approx(e + a / p.n_params**alpha + b / p.tokens**beta)

    @pytest.mark.parametrize("law", ["chinchilla", "epoch"])
    def test_optimum_is_the_minimum_of_the_isoflop_curve(self, law: str) -> None:
        """Every other size at the same budget predicts a higher loss."""
        p = plan.compute_optimal(1e23, law)
        curve = plan.isoflop_curve(1e23, law)
        assert all(loss >= p.loss - 1e-12 for _, loss in curve)
        assert min(curve, key=lambda x: x[1])[0] == pytest.approx(p.n_params, rel=0.01)

    def test_more_compute_lower_loss(self) -> None:
        """The optimal loss falls with compute."""
        losses = [q.loss for q in plan.optimal_curve([1e20, 1e21, 1e22, 1e23, 1e24])]
        assert all(a > b for a, b in itertools.pairwise(losses))

    def test_unknown_law(self) -> None:
        """An unknown law is a one-line ValueError naming the choices."""
        with pytest.raises(
            ValueError, match="unknown scaling law 'kaplan' \\(choose from: chinchilla, epoch\\)"
        ):
            plan.compute_optimal(1e23, "kaplan")


class TestBudgets:
    def test_gpu_days(self) -> None:
        """C = GPUs x seconds x MFU x peak: 1024 H100 for 30 days at 40%."""
        h100 = presets.load_gpu("h100")
        c = plan.compute_budget(1024, 30, 0.40, h100)
        assert c == pytest.approx(1024 * 30 * 86_400 * 0.40 * 989.4e12)
        assert plan.train_seconds(c, 1024, 0.40, h100) == pytest.approx(30 * 86_400)

    def test_llama3_405b_budget(self) -> None:
        """Llama 3 405B: 6 x 405.9e9 x 15.6e12 = 3.8e25 FLOPs, ~54 days on 16k H100 at 41% MFU."""
        c = 6 * 405.9e9 * 15.6e12
        days = plan.train_seconds(c, 16_384, 0.41, presets.load_gpu("h100")) / 86_400
        assert 50 < days < 80
