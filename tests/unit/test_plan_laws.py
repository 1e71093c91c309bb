"""The planner's laws: named and cited constants, the old names, Kaplan's own functional form."""

from __future__ import annotations

import pytest

from fakerun.plan import laws
from fakerun.presets import resolve
from fakerun.sim.job import make_job

# As printed: Besiroglu et al. 2024 (arXiv 2404.10102); Hoffmann et al. 2022 (arXiv 2203.15556) approach 3.
EPOCH_AI = (1.8172, 482.01, 2085.43, 0.3478, 0.3658)
CHINCHILLA_3 = (1.69, 406.4, 410.7, 0.34, 0.28)


@pytest.mark.parametrize(("name", "constants"), [("epoch-ai", EPOCH_AI), ("chinchilla-3", CHINCHILLA_3)])
def test_published_constants(name: str, constants: tuple[float, ...]) -> None:
    """The Chinchilla-form laws carry the constants of their papers and say where they come from."""
    law = laws.get_law(name)
    assert isinstance(law, laws.Law)
    assert (law.E, law.A, law.B, law.alpha, law.beta) == constants
    assert law.name == name and "arXiv" in law.source


def test_kaplan_is_its_own_form() -> None:
    """Kaplan et al. 2020 eq. 1.5 at N = 1e9, D = 2e10, worked by hand from N_c, D_c, alpha_N, alpha_D."""
    law = laws.get_law("kaplan")
    expected = ((8.8e13 / 1e9) ** (0.076 / 0.095) + 5.4e13 / 2e10) ** 0.095
    assert law.loss(1e9, 2e10) == pytest.approx(expected, rel=1e-12)
    assert isinstance(law, laws.ScalingLaw) and not isinstance(law, laws.Law)


def test_names_defaults_and_aliases() -> None:
    """Three laws; epoch-ai is the default of the planner and of the simulated job; old names still work."""
    assert list(laws.LAWS) == ["epoch-ai", "chinchilla-3", "kaplan"]
    assert laws.DEFAULT_LAW == "epoch-ai"
    b = resolve("llama3.2-1b")
    assert make_job(b.model, b.cluster, b.storage).law == laws.DEFAULT_LAW
    assert laws.get_law("chinchilla") is laws.get_law("chinchilla-3")
    assert laws.get_law("epoch") is laws.get_law("epoch-ai")


def test_unknown_law_names_the_choices() -> None:
    """An unknown law is a one-line ValueError listing the laws."""
    with pytest.raises(
        ValueError, match=r"^unknown scaling law 'gpt' \(choose from: epoch-ai, chinchilla-3, kaplan\)$"
    ):
        laws.get_law("gpt")


def test_a_fitted_law_is_a_law() -> None:
    """Any Law (as a fit returns) is accepted as it is."""
    fitted = laws.Law("mine", 1.7, 400.0, 1000.0, 0.33, 0.33, "my runs")
    assert laws.get_law(fitted) is fitted
