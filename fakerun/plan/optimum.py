"""Compute-optimal model size and data for a FLOP budget under a law, and the optima under constraints."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fakerun.plan.laws import ScalingLaw, get_law
from fakerun.sim.loss import R_STAR_DATA, Law, data_constrained_tokens

# Training FLOPs per parameter per token: forward 2, backward 4 (Kaplan et al. 2020, section 2.1).
FLOPS_PER_PARAM_TOKEN = 6.0
# Serving FLOPs per parameter per token: the forward pass alone (Sardana et al. 2024, section 2).
INFERENCE_FLOPS_PER_PARAM_TOKEN = 2.0
# Golden-section ratio and the search's relative width at which it stops (far below any printed digit).
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_TOL = 1e-10


@dataclass(frozen=True)
class Optimum:
    """A model size and token count spending `flops` training FLOPs, and the loss the law predicts."""

    law: str
    flops: float
    params: float
    tokens: float
    loss: float

    @property
    def tokens_per_param(self) -> float:
        """D / N (about 20 at the compute-optimal point of the Chinchilla analyses)."""
        return self.tokens / self.params


@dataclass(frozen=True)
class IsoPoint:
    """A model `factor` times the optimal size at the same budget, and its loss above the optimum."""

    factor: float
    params: float
    tokens: float
    loss: float
    penalty: float  # nats above the optimal loss


@dataclass(frozen=True)
class DataConstrained(Optimum):
    """The optimum when only `unique_tokens` exist: repeated epochs count as fewer fresh tokens."""

    unique_tokens: float
    epochs: float
    effective_tokens: float  # Muennighoff et al. 2023's D'


@dataclass(frozen=True)
class InferenceAware(Optimum):
    """The model reaching the compute-optimal loss at the least training plus serving FLOPs."""

    inference_tokens: float
    total_flops: float  # training plus 2 N D_inf
    compute_optimal_total_flops: float  # the same for the compute-optimal model


def _check_flops(flops: float) -> None:
    if not flops > 0 or math.isinf(flops):
        raise ValueError(f"the FLOP budget must be positive and finite, got {flops}")


def _argmin_log(f: Callable[[float], float], lo: float, hi: float, points: int = 240) -> float:
    """The x in [lo, hi] minimising f(x), for f with one minimum: a log-spaced scan, then golden sections."""
    a, b = math.log(lo), math.log(hi)
    xs = [a + (b - a) * i / (points - 1) for i in range(points)]
    values = [f(math.exp(x)) for x in xs]
    best = min(range(points), key=values.__getitem__)
    a, b = xs[max(best - 1, 0)], xs[min(best + 1, points - 1)]
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = f(math.exp(c)), f(math.exp(d))
    while b - a > _TOL:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = f(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = f(math.exp(d))
    return math.exp((a + b) / 2.0)


def optimal_params(flops: float, law: str | ScalingLaw) -> float:
    """N minimising the law along C = 6 N D: in closed form for E + A/N^a + B/D^b, numerically otherwise.

    Closed form (Hoffmann et al. 2022, eq. 4): G (C/6)^(b/(a+b)), G = (a A / (b B))^(1/(a+b)).
    """
    lw = get_law(law)
    _check_flops(flops)
    if isinstance(lw, Law):
        g = (lw.alpha * lw.A / (lw.beta * lw.B)) ** (1.0 / (lw.alpha + lw.beta))
        return float(g * (flops / FLOPS_PER_PARAM_TOKEN) ** (lw.beta / (lw.alpha + lw.beta)))
    # The optimum sits where tokens per parameter lie between 1e-6 and 1e6 for every published law.
    mid = math.sqrt(flops / FLOPS_PER_PARAM_TOKEN)
    return _argmin_log(lambda n: lw.loss(n, flops / (FLOPS_PER_PARAM_TOKEN * n)), mid * 1e-3, mid * 1e3)


def at_params(flops: float, law: str | ScalingLaw, params: float) -> Optimum:
    """A model of `params` parameters spending `flops`: its tokens and predicted loss."""
    lw = get_law(law)
    _check_flops(flops)
    tokens = flops / (FLOPS_PER_PARAM_TOKEN * params)
    return Optimum(lw.name, flops, params, tokens, lw.loss(params, tokens))


def compute_optimal(flops: float, law: str | ScalingLaw) -> Optimum:
    """Compute-optimal parameters, tokens and predicted loss for `flops` training FLOPs."""
    lw = get_law(law)
    return at_params(flops, lw, optimal_params(flops, lw))


def frontier(budgets: Sequence[float], law: str | ScalingLaw) -> list[Optimum]:
    """The compute-optimal models along a list of budgets (the loss-against-compute frontier)."""
    return [compute_optimal(c, law) for c in budgets]


def isoflop(flops: float, law: str | ScalingLaw, factors: Sequence[float] = (0.5, 2.0)) -> list[IsoPoint]:
    """The IsoFLOP neighbourhood: models `factors` times the optimal size at the same budget, their loss
    penalty."""
    best = compute_optimal(flops, law)
    out = []
    for f in factors:
        p = at_params(flops, law, best.params * f)
        out.append(IsoPoint(f, p.params, p.tokens, p.loss, p.loss - best.loss))
    return out


def isoflop_curve(
    flops: float, law: str | ScalingLaw, points: int = 41, span: float = 30.0
) -> list[tuple[float, float]]:
    """(N, loss) from 1/span to span times the optimal size at one budget (Chinchilla's IsoFLOP profile)."""
    lw = get_law(law)
    n0 = optimal_params(flops, lw)
    out = []
    for i in range(points):
        n = n0 * span ** (2.0 * i / max(points - 1, 1) - 1.0)
        out.append((n, lw.loss(n, flops / (FLOPS_PER_PARAM_TOKEN * n))))
    return out


def data_constrained(flops: float, law: str | ScalingLaw, unique_tokens: float) -> DataConstrained:
    """The optimum with `unique_tokens` of data: epochs beyond the first decay with R* = 15.4 (Muennighoff
    et al. 2023, eq. 5).

    Only the data term decays, as in the simulated job's loss, so a planned job ends on the predicted loss.
    """
    lw = get_law(law)
    _check_flops(flops)
    if not unique_tokens > 0:
        raise ValueError(f"unique tokens must be positive, got {unique_tokens}")

    def loss_at(n: float) -> float:
        return lw.loss(n, data_constrained_tokens(flops / (FLOPS_PER_PARAM_TOKEN * n), unique_tokens))

    fresh = optimal_params(flops, lw)
    # Scarce data moves the optimum to larger models (fewer tokens): search from the fresh optimum up.
    n = _argmin_log(loss_at, fresh / 10.0, fresh * 1e3)
    tokens = flops / (FLOPS_PER_PARAM_TOKEN * n)
    d_eff = data_constrained_tokens(tokens, unique_tokens)
    return DataConstrained(
        lw.name, flops, n, tokens, loss_at(n), unique_tokens, tokens / unique_tokens, d_eff
    )


def tokens_for_loss(law: str | ScalingLaw, params: float, target: float) -> float:
    """Tokens an N-parameter model needs to reach `target` loss (inf if it never does): bisection in log D."""
    lw = get_law(law)
    lo, hi = 1.0, 1e40
    if lw.loss(params, hi) > target:
        return math.inf
    while hi / lo > 1.0 + _TOL:
        mid = math.sqrt(lo * hi)
        if lw.loss(params, mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def inference_aware(flops: float, law: str | ScalingLaw, inference_tokens: float) -> InferenceAware:
    """The model with the compute-optimal loss at the least 6 N D + 2 N D_inf FLOPs (Sardana et al. 2024,
    "Beyond Chinchilla-Optimal", arXiv 2401.00448): smaller than compute-optimal and trained longer."""
    lw = get_law(law)
    if not inference_tokens >= 0:
        raise ValueError(f"inference tokens must be >= 0, got {inference_tokens}")
    best = compute_optimal(flops, lw)
    serve = INFERENCE_FLOPS_PER_PARAM_TOKEN * inference_tokens

    def total(n: float) -> float:
        return n * (FLOPS_PER_PARAM_TOKEN * tokens_for_loss(lw, n, best.loss) + serve)

    # The compute-optimal size minimises the training term alone; serving only pushes the optimum below it.
    n = best.params if inference_tokens == 0 else _argmin_log(total, best.params / 1e4, best.params)
    tokens = tokens_for_loss(lw, n, best.loss) if n != best.params else best.tokens
    train = FLOPS_PER_PARAM_TOKEN * n * tokens
    return InferenceAware(
        lw.name,
        train,
        n,
        tokens,
        lw.loss(n, tokens),
        inference_tokens,
        train + n * serve,
        flops + best.params * serve,
    )


__all__ = [
    "FLOPS_PER_PARAM_TOKEN",
    "R_STAR_DATA",
    "DataConstrained",
    "InferenceAware",
    "IsoPoint",
    "Optimum",
    "at_params",
    "compute_optimal",
    "data_constrained",
    "frontier",
    "inference_aware",
    "isoflop",
    "isoflop_curve",
    "optimal_params",
    "tokens_for_loss",
]
