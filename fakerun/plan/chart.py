"""Pictures of a plan: a text IsoFLOP chart for the terminal; IsoFLOP and frontier plots via matplotlib."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fakerun.plan import optimum as opt
from fakerun.plan.laws import ScalingLaw
from fakerun.plan.report import fmt_value

if TYPE_CHECKING:
    from fakerun.plan.fit import Estimate, FitResult, Run

PLOT_HINT = "pip install 'fakerun[plot]'"
# Budgets drawn around the user's: a decade either side, as Chinchilla's Figure 3 spaces its IsoFLOP curves.
_BUDGET_FACTORS = (0.1, 1.0, 10.0)
_GLYPHS = ("·", "o", "+")


def text_chart(flops: float, law: ScalingLaw, width: int = 64, height: int = 14) -> str:
    """IsoFLOP curves (loss against parameters, log scale) at a tenth, one and ten times the budget, with
    each optimum marked `*`."""
    curves = [opt.isoflop_curve(flops * f, law, points=4 * width, span=30.0) for f in _BUDGET_FACTORS]
    best = [opt.compute_optimal(flops * f, law) for f in _BUDGET_FACTORS]
    # The window: the middle budget's span in N, the losses of its curve.
    n_lo, n_hi = curves[1][0][0], curves[1][-1][0]
    l_lo = min(b.loss for b in best)
    l_hi = max(loss for _, loss in curves[1])
    grid = [[" "] * width for _ in range(height)]

    def cell(n: float, loss: float) -> tuple[int, int] | None:
        x = round((math.log(n) - math.log(n_lo)) / (math.log(n_hi) - math.log(n_lo)) * (width - 1))
        y = round((l_hi - loss) / (l_hi - l_lo) * (height - 1))
        return (y, x) if 0 <= x < width and 0 <= y < height else None

    for glyph, curve in zip(_GLYPHS, curves, strict=True):
        for n, loss in curve:
            if (at := cell(n, loss)) is not None:
                grid[at[0]][at[1]] = glyph
    for b in best:
        if (at := cell(b.params, b.loss)) is not None:
            grid[at[0]][at[1]] = "*"
    rows = []
    for i, row in enumerate(grid):
        loss = l_hi - (l_hi - l_lo) * i / (height - 1)
        label = f"{loss:6.3f}" if i in (0, height // 2, height - 1) else " " * 6
        rows.append(f"{label} |{''.join(row).rstrip()}")
    rows.append(" " * 7 + "+" + "-" * width)
    left, right = fmt_value(n_lo, "params"), f"{fmt_value(n_hi, 'params')} parameters"
    rows.append(" " * 8 + left + " " * max(width - len(left) - len(right), 1) + right)
    legend = ", ".join(f"{g} {flops * f:.2g} FLOP" for g, f in zip(_GLYPHS, _BUDGET_FACTORS, strict=True))
    rows.append(" " * 8 + f"loss (nats/token) at {legend}; * optimum")
    return "\n".join(rows)


def plot(path: Path, flops: float, law: ScalingLaw, planned: opt.Optimum | None = None) -> None:
    """IsoFLOP curves with their optima and the compute-optimal frontier with the budget, to `path` (its
    suffix picks the format); ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, (iso, front) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    budgets = [flops * 10.0 ** (k / 2.0) for k in range(-4, 3)]
    cmap = plt.get_cmap("viridis")
    for i, c in enumerate(budgets):
        curve = opt.isoflop_curve(c, law, points=81, span=10.0)
        best = opt.compute_optimal(c, law)
        colour = cmap(i / (len(budgets) - 1))
        width = 2.4 if c == flops else 1.2
        iso.plot([n for n, _ in curve], [loss for _, loss in curve], color=colour, lw=width, label=f"{c:.1e}")
        iso.plot([best.params], [best.loss], "o", color=colour, ms=5)
    if planned is not None:
        iso.plot([planned.params], [planned.loss], "*", color="crimson", ms=13, label="planned")
    iso.set(
        xscale="log", xlabel="parameters", ylabel="loss (nats/token)", title=f"IsoFLOP curves ({law.name})"
    )
    iso.legend(title="FLOP", fontsize=7, title_fontsize=8)
    span = [flops * 10.0 ** (k / 4.0) for k in range(-16, 9)]
    line = opt.frontier(span, law)
    front.plot(span, [o.params for o in line], color="tab:blue", label="parameters")
    front.plot(span, [o.tokens for o in line], color="tab:orange", label="tokens")
    best = opt.compute_optimal(flops, law)
    front.axvline(flops, color="crimson", ls="--", lw=1)
    front.plot([flops, flops], [best.params, best.tokens], "o", color="crimson")
    n, d = fmt_value(best.params, "params"), fmt_value(best.tokens, "tokens", "tokens")
    front.annotate(f"{n} parameters\n{d} tokens", (flops, best.params), fontsize=8, xytext=(6, -24),
                   textcoords="offset points")  # fmt: skip
    front.set(xscale="log", yscale="log", xlabel="training compute (FLOP)", title="compute-optimal frontier")
    front.legend(fontsize=8)
    fig.savefig(path)
    plt.close(fig)


def fit_summary(result: FitResult) -> str:
    """The fit as a table: each constant with its confidence interval, the IsoFLOP minima, the exponents of
    the optimum's growth, and the optimum both approaches extrapolate to."""

    def est(e: Estimate, unit: str) -> str:
        value = fmt_value(e.value, unit)
        return (
            value
            if math.isnan(e.low)
            else f"{value}  [{fmt_value(e.low, unit)} .. {fmt_value(e.high, unit)}]"
        )

    rows = [
        f"law: L = E + A/N^alpha + B/D^beta, fitted to {result.runs} runs ({result.optimizer}, "
        f"{result.resamples} bootstrap resamples, {result.level:.0%} intervals)",
        *(f"  {name:<22} {est(getattr(result, name), '1')}" for name in ("E", "A", "B", "alpha", "beta")),
        "IsoFLOP minima (approach 2)",
        *(
            f"  {fmt_value(m.flops, 'FLOP'):<22} N {fmt_value(m.params, 'params'):>7}  "
            f"D {fmt_value(m.tokens, 'tokens'):>14}  loss {m.loss:.4f} ({m.sizes} sizes)"
            for m in result.minima
        ),
        f"  {'N_opt ~ C^a':<22} a = {est(result.a, '1')}",
        f"  {'D_opt ~ C^b':<22} b = {est(result.b, '1')}",
    ]
    for name, x in (("approach 2", result.approach2), ("approach 3", result.approach3)):
        rows.append(f"optimum at {fmt_value(x.flops, 'FLOP')} ({name})")
        rows.append(f"  {'parameters':<22} {est(x.params, 'params')}")
        rows.append(f"  {'tokens':<22} {est(x.tokens, 'tokens')}")
        if x.loss is not None:
            rows.append(f"  {'predicted loss':<22} {est(x.loss, 'nats/token')}")
    return "\n".join(rows)


def plot_fit(path: Path, result: FitResult, runs: Sequence[Run]) -> None:
    """The runs' losses against parameters per budget, the fitted law's IsoFLOP curves through them, and the
    fitted frontier with its bootstrap band, to `path`; ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (iso, front) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    budgets = [m.flops for m in result.minima]
    for i, c in enumerate(budgets):
        colour = cmap(i / max(len(budgets) - 1, 1))
        near = [r for r in runs if abs(math.log10(r.flops / c)) < 0.1]
        iso.plot([r.params for r in near], [r.loss for r in near], "o", color=colour, ms=4)
        curve = opt.isoflop_curve(c, result.law, points=81, span=10.0)
        iso.plot([n for n, _ in curve], [loss for _, loss in curve], color=colour, lw=1.2, label=f"{c:.1e}")
    iso.set(xscale="log", xlabel="parameters", ylabel="loss (nats/token)", title="runs and the fitted law")
    iso.legend(title="FLOP", fontsize=7, title_fontsize=8)
    x = result.approach3
    decades = math.log10(x.flops / budgets[0])
    span = [budgets[0] * 10.0 ** (decades * k / 40) for k in range(41)]
    fitted = [opt.optimal_params(c, result.law) for c in span]
    front.plot(span, fitted, color="tab:blue", label="fitted N_opt")
    front.plot([m.flops for m in result.minima], [m.params for m in result.minima], "o", color="tab:blue",
               label="IsoFLOP minima")  # fmt: skip
    front.errorbar([x.flops], [x.params.value], yerr=[[x.params.value - x.params.low],
                   [x.params.high - x.params.value]], fmt="*", color="crimson", ms=10,
                   label=f"extrapolated ({result.level:.0%})")  # fmt: skip
    front.set(xscale="log", yscale="log", xlabel="training compute (FLOP)", title="fitted frontier")
    front.legend(fontsize=8)
    fig.savefig(path)
    plt.close(fig)
