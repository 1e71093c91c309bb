"""Scaling laws the planner knows, by name and citation; any object with a loss(N, D) is a law."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from fakerun.sim import loss as sim_loss
from fakerun.sim.loss import Law

DEFAULT_LAW = sim_loss.DEFAULT_LAW


@runtime_checkable
class ScalingLaw(Protocol):
    """A loss law: the loss of an N-parameter model after D tokens, a name and where it comes from."""

    @property
    def name(self) -> str:
        """The name `--law` selects it by."""
        ...

    @property
    def source(self) -> str:
        """The citation of its constants."""
        ...

    def loss(self, n_params: float, tokens: float) -> float:
        """The predicted loss in nats per token."""
        ...


@dataclass(frozen=True)
class KaplanLaw:
    """Kaplan et al. 2020's L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D (their eq. 1.5).

    N counts non-embedding parameters and the loss is on WebText2 with GPT-2's tokenizer, so its figures
    compare only roughly with the Chinchilla-form laws; it has no irreducible term.
    """

    name: str
    n_c: float
    d_c: float
    alpha_n: float
    alpha_d: float
    source: str

    def loss(self, n_params: float, tokens: float) -> float:
        """The predicted loss in nats per token (inf at D = 0)."""
        if tokens <= 0:
            return float("inf")
        return float(
            ((self.n_c / n_params) ** (self.alpha_n / self.alpha_d) + self.d_c / tokens) ** self.alpha_d
        )


LAWS: dict[str, ScalingLaw] = {
    **sim_loss.LAWS,
    # Kaplan, McCandlish, Henighan et al. 2020 (arXiv 2001.08361), Table 2 / eq. 1.5.
    "kaplan": KaplanLaw(
        "kaplan", 8.8e13, 5.4e13, 0.076, 0.095, "Kaplan et al. 2020 (arXiv 2001.08361), eq. 1.5"
    ),
}


def get_law(name: str | ScalingLaw) -> ScalingLaw:
    """A law by name (or the old aliases "chinchilla", "epoch"); a law object is returned as it is."""
    if not isinstance(name, str):
        return name
    canonical = sim_loss.LAW_ALIASES.get(name, name)
    try:
        return LAWS[canonical]
    except KeyError:
        raise ValueError(f"unknown scaling law {name!r} (choose from: {', '.join(LAWS)})") from None


__all__ = ["DEFAULT_LAW", "LAWS", "KaplanLaw", "Law", "ScalingLaw", "get_law"]
