"""Scaling laws fitted from small runs (Chinchilla's approaches 2 and 3) and the IsoFLOP sweep producing them.

numpy (and scipy, when installed) are imported inside the functions that need them: they are the optional
extra `plan`, and importing this module must stay cheap for `fakerun-plan` without it.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import math
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fakerun.plan.arch import batch_tokens, peak_lr
from fakerun.plan.laws import DEFAULT_LAW, get_law
from fakerun.plan.optimum import optimal_params
from fakerun.presets import ModelSpec
from fakerun.sim.loss import Law

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Vector = NDArray[np.float64]

__all__ = [
    "Estimate",
    "Extrapolation",
    "FitError",
    "FitResult",
    "IsoFlopMinimum",
    "Run",
    "fit",
    "read_runs",
    "sweep",
    "sweep_sbatch",
]

# Hoffmann et al. 2022, Appendix D.2: Huber loss with delta 1e-3 on the log-loss residuals.
HUBER_DELTA = 1e-3
# The final loss of a fakerun metrics file: the mean training loss of its last steps (see _read_metrics).
FINAL_STEPS = 10
MIN_BUDGETS = 5
MIN_SIZES = 3
# Runs whose FLOPs lie within this many decades of a budget's smallest run share its IsoFLOP curve (a sweep's
# runs miss their budget only by rounding to whole iterations; its budgets are farther apart than this).
BUDGET_TOLERANCE_DEX = 0.1
# Hoffmann et al. 2022, Appendix D.2's grid of initialisations: alpha, beta in {0, 0.5, ..., 2}, e in
# {-1, -0.5, ..., 1}, a and b (log A, log B) in {0, 5, ..., 25}.
GRID_EXPONENTS = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_LOG_COEF = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
# Local optimisations started from the best grid points: the objective at the grid ranks the 4500 starts,
# and L-BFGS from every one of them finds the same few minima at a thousand times the cost.
GRID_STARTS = 8
# Bootstrap resamples that must fit for the intervals to mean anything.
MIN_RESAMPLE_SHARE = 0.5
# The default extrapolation target: a hundred times the largest budget fitted.
DEFAULT_EXTRAPOLATION = 100.0

# The sweep: model sizes around each budget's optimum, and the Llama-style shape of a target size.
SWEEP_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
HEAD_DIM = 64
ASPECT = 64.0  # hidden size per layer (GPT-3 125M: 768 / 12; Kaplan et al. 2020: loss is flat around it)
LLAMA2_TOKENIZER = "meta-llama/Llama-2-7b-hf"  # 32000 tokens, a multiple of 128: Megatron pads nothing
LLAMA2_VOCAB = 32000
SIZE_TOLERANCE = 0.02


class FitError(ValueError):
    """A fit (or its input, or a sweep) that cannot be done honestly; the message is one line."""


@dataclass(frozen=True)
class Run:
    """One small training run's result: parameters, tokens seen, final loss (nats) and training FLOPs."""

    params: float
    tokens: float
    loss: float
    flops: float
    source: str = ""  # the file (and line) it was read from


@dataclass(frozen=True)
class Estimate:
    """A fitted figure and its bootstrap percentile interval (NaN bounds when no resample was drawn)."""

    value: float
    low: float
    high: float

    def covers(self, x: float) -> bool:
        """Whether `x` lies within the interval."""
        return self.low <= x <= self.high


@dataclass(frozen=True)
class IsoFlopMinimum:
    """Approach 2 at one budget: the minimum of the parabola fitted to loss against log N."""

    flops: float
    params: float
    tokens: float
    loss: float
    sizes: int  # distinct model sizes on this IsoFLOP curve


@dataclass(frozen=True)
class Extrapolation:
    """The compute-optimal model at a budget beyond the runs, as one approach predicts it."""

    flops: float
    params: Estimate
    tokens: Estimate
    loss: Estimate | None  # approach 2 predicts no loss


@dataclass(frozen=True)
class FitResult:
    """Both of Chinchilla's fits of a set of runs, with bootstrap intervals at `level`."""

    law: Law  # approach 3, usable wherever a published law is
    E: Estimate
    A: Estimate
    B: Estimate
    alpha: Estimate
    beta: Estimate
    minima: tuple[IsoFlopMinimum, ...]
    a: Estimate  # N_opt = k_params * C**a (approach 2)
    b: Estimate  # D_opt = k_tokens * C**b
    k_params: float
    k_tokens: float
    approach2: Extrapolation
    approach3: Extrapolation
    runs: int
    resamples: int  # bootstrap resamples that both approaches could fit
    level: float
    optimizer: str

    def as_dict(self) -> dict[str, Any]:
        """Every figure with its unit, for --json."""

        def est(e: Estimate, unit: str) -> dict[str, Any]:
            return {"value": _finite(e.value), "low": _finite(e.low), "high": _finite(e.high), "unit": unit}

        def ext(x: Extrapolation) -> dict[str, Any]:
            out = {
                "flops": {"value": x.flops, "unit": "FLOP"},
                "params": est(x.params, "parameters"),
                "tokens": est(x.tokens, "tokens"),
            }
            if x.loss is not None:
                out["loss"] = est(x.loss, "nats/token")
            return out

        return {
            "law": {
                "name": self.law.name,
                "source": self.law.source,
                "E": est(self.E, "nats/token"),
                "A": est(self.A, "nats/token"),
                "B": est(self.B, "nats/token"),
                "alpha": est(self.alpha, "1"),
                "beta": est(self.beta, "1"),
            },
            "isoflop_minima": [
                {
                    "flops": {"value": m.flops, "unit": "FLOP"},
                    "params": {"value": m.params, "unit": "parameters"},
                    "tokens": {"value": m.tokens, "unit": "tokens"},
                    "loss": {"value": m.loss, "unit": "nats/token"},
                    "sizes": m.sizes,
                }
                for m in self.minima
            ],
            "a": est(self.a, "1"),
            "b": est(self.b, "1"),
            "k_params": {"value": self.k_params, "unit": "parameters/FLOP^a"},
            "k_tokens": {"value": self.k_tokens, "unit": "tokens/FLOP^b"},
            "approach2": ext(self.approach2),
            "approach3": ext(self.approach3),
            "runs": self.runs,
            "resamples": self.resamples,
            "level": self.level,
            "optimizer": self.optimizer,
        }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# ---------------------------------------------------------------------------------------------- reading


def read_runs(path: str | os.PathLike[str]) -> list[Run]:
    """Runs from a CSV (params,tokens,loss[,flops]), a fakerun --fake-metrics file, or a directory of them."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".csv", ".jsonl", ".json"))
        if not files:
            raise FitError(f"{p}: no .csv, .jsonl or .json files in this directory")
        return [run for f in files for run in _read_file(f)]
    if not p.exists():
        raise FitError(f"{p}: no such file or directory")
    return _read_file(p)


def _read_file(p: Path) -> list[Run]:
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FitError(f"{p}: not a text file") from None
    except OSError as exc:
        raise FitError(f"{p}: cannot read it: {exc.strerror or exc}") from None
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not first:
        raise FitError(f"{p}: empty file")
    return [_read_metrics(p, text)] if first.startswith("{") else _read_csv(p, text)


def _number(value: object, where: str) -> float:
    """A finite positive number from a CSV cell or a JSON value, or FitError naming where it was."""
    if isinstance(value, bool):
        raise FitError(f"{where}: expected a number, got {value!r}")
    try:
        x = float(value) if isinstance(value, int | float | str) else math.nan
    except ValueError:
        raise FitError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(x) or x <= 0:
        raise FitError(f"{where}: expected a positive number, got {value!r}")
    return x


def _read_csv(p: Path, text: str) -> list[Run]:
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader)]
    missing = [c for c in ("params", "tokens", "loss") if c not in header]
    if missing:
        raise FitError(
            f"{p}: no {', '.join(missing)} column in the header (expected params,tokens,loss[,flops])"
        )
    columns = [c for c in ("params", "tokens", "loss", "flops") if c in header]
    runs = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        where = f"{p}:{reader.line_num}"
        cells = {c: row[header.index(c)].strip() if header.index(c) < len(row) else "" for c in columns}
        v = {c: _number(cells[c], f"{where}: {c}") for c in columns}
        flops = v.get("flops", 6.0 * v["params"] * v["tokens"])
        runs.append(Run(v["params"], v["tokens"], v["loss"], flops, where))
    if not runs:
        raise FitError(f"{p}: a header and no runs")
    return runs


def _read_metrics(p: Path, text: str) -> Run:
    """One run from a --fake-metrics file: N from its run record, D and the loss from its last steps.

    The final loss is the mean training loss of the last FINAL_STEPS steps (NaN steps left out), not the last
    validation loss: a single-epoch run's training loss is itself on unseen data, every file has it at the
    very last step (an evaluation may have run up to --eval-interval steps before the end, or not at all),
    and averaging ten steps takes the step-to-step noise down to the evaluation's. A restarted run's
    replayed steps count once, as their last record says.
    """
    run: dict[str, Any] | None = None
    steps: dict[int, dict[str, Any]] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise FitError(f"{p}:{n}: not a JSON record") from None
        if not isinstance(record, dict):
            raise FitError(f"{p}:{n}: not a JSON object")
        event = record.get("event")
        if event == "run":
            if run is not None and record.get("params") != run.get("params"):
                raise FitError(f"{p}:{n}: a run of another model after the first: one run per file")
            run = record
        elif event == "step" and isinstance(record.get("step"), int):
            steps[record["step"]] = record
    if run is None:
        raise FitError(f"{p}: no run record (not a fakerun --fake-metrics file)")
    if not steps:
        raise FitError(f"{p}: no step records: the run never trained")
    last = max(steps)
    planned = run.get("last_step")
    if isinstance(planned, int) and last < planned:
        raise FitError(f"{p}: the run stopped at step {last} of {planned}: it has no final loss")
    params = _number(run.get("params"), f"{p}: run params")
    active = _number(run.get("active_params", params), f"{p}: run active_params")
    tokens = _number(steps[last].get("tokens"), f"{p}: step {last} tokens")
    tail = [
        _number(steps[s]["loss"], f"{p}: step {s} loss")
        for s in sorted(steps)[-FINAL_STEPS:]
        if steps[s].get("loss") is not None and not steps[s].get("skipped")
    ]
    if not tail:
        raise FitError(f"{p}: no finite loss in the last {FINAL_STEPS} steps")
    # A MoE model spends the FLOPs of its active parameters.
    return Run(params, tokens, sum(tail) / len(tail), 6.0 * active * tokens, str(p))


# ---------------------------------------------------------------------------------------------- fitting


def _numpy() -> Any:
    try:
        return importlib.import_module("numpy")
    except ImportError:
        raise FitError("fit needs numpy: pip install 'fakerun[plan]'") from None


def _budgets(runs: Sequence[Run]) -> list[list[Run]]:
    """Runs grouped into IsoFLOP budgets by FLOPs, smallest first; FitError unless approach 2 can use them."""
    groups: list[list[Run]] = []
    for run in sorted(runs, key=lambda r: r.flops):
        if groups and math.log10(run.flops / groups[-1][0].flops) <= BUDGET_TOLERANCE_DEX:
            groups[-1].append(run)
        else:
            groups.append([run])
    if len(groups) < MIN_BUDGETS:
        raise FitError(
            f"{len(runs)} runs make {len(groups)} compute budget{'s' * (len(groups) != 1)}: "
            f"a fit needs at least {MIN_BUDGETS}"
        )
    for g in groups:
        sizes = len({r.params for r in g})
        if sizes < MIN_SIZES:
            raise FitError(
                f"the budget of {_budget_flops(g):.3g} FLOPs has {sizes} model size{'s' * (sizes != 1)}: "
                f"an IsoFLOP parabola needs at least {MIN_SIZES}"
            )
    return groups


def _budget_flops(group: Sequence[Run]) -> float:
    return math.exp(sum(math.log(r.flops) for r in group) / len(group))


def _isoflop_minimum(group: Sequence[Run], *, within: bool = True) -> IsoFlopMinimum:
    """Approach 2 at one budget: loss = c0 + c1 x + c2 x^2 in x = ln N by least squares, and its minimum
    (which must lie among the sizes tried when `within`)."""
    np = _numpy()
    c = _budget_flops(group)
    x = np.log([r.params for r in group])
    mid = float(x.mean())  # centred: (ln N)^2 ~ 400 next to 1 would make the normal equations ill-conditioned
    c2, c1, c0 = np.polyfit(x - mid, [r.loss for r in group], 2)
    if not c2 > 0:
        raise FitError(f"the IsoFLOP parabola of the budget {c:.3g} FLOPs opens downward: it has no minimum")
    x_min = mid - c1 / (2.0 * c2)
    # A minimum beyond the sizes tried is the parabola's extrapolation, not a measurement.
    if within and not x.min() <= x_min <= x.max():
        raise FitError(
            f"the IsoFLOP minimum of the budget {c:.3g} FLOPs lies outside the sizes tried "
            f"({math.exp(x_min):.3g} parameters): sweep sizes around it"
        )
    n = math.exp(x_min)
    loss = float(c0 - c1 * c1 / (4.0 * c2))
    return IsoFlopMinimum(c, n, c / (6.0 * n), loss, len(set(x.tolist())))


def _approach2(
    groups: Sequence[Sequence[Run]], *, within: bool = True
) -> tuple[list[IsoFlopMinimum], float, float, float, float]:
    """(minima, a, ln k_params, b, ln k_tokens): power laws through the IsoFLOP minima, in log space."""
    np = _numpy()
    minima = [_isoflop_minimum(g, within=within) for g in groups]
    log_c = np.log([m.flops for m in minima])
    a, log_kn = np.polyfit(log_c, np.log([m.params for m in minima]), 1)
    b, log_kd = np.polyfit(log_c, np.log([m.tokens for m in minima]), 1)
    if not (0 < a < 1 and 0 < b < 1):
        raise FitError(
            f"approach 2 is degenerate: N_opt ~ C^{a:.3g}, D_opt ~ C^{b:.3g} (need exponents in (0, 1))"
        )
    return minima, float(a), float(log_kn), float(b), float(log_kd)


def _resample(groups: Sequence[Sequence[Run]], rng: Any) -> list[list[Run]]:
    """Runs drawn with replacement within each budget; a budget's draw keeping fewer than MIN_SIZES sizes is
    drawn again (its parabola would be undetermined, and the draw says nothing about the noise)."""
    out = []
    for g in groups:
        while True:
            drawn = [g[i] for i in rng.integers(0, len(g), len(g))]
            if len({r.params for r in drawn}) >= MIN_SIZES:
                break
        out.append(drawn)
    return out


def _objective(log_n: Vector, log_d: Vector, log_l: Vector) -> Callable[[Vector], tuple[float, Vector]]:
    """Hoffmann et al.'s objective over theta = (a, b, e, alpha, beta) with A = e^a, B = e^b, E = e^e: the
    mean Huber loss (over delta, for the optimiser's tolerances) of LSE(a - alpha ln N, b - beta ln D, e)
    - ln L, and its gradient."""
    np = _numpy()
    n = len(log_l)

    def fg(theta: Vector) -> tuple[float, Vector]:
        a, b, e, alpha, beta = theta
        u = np.stack([a - alpha * log_n, b - beta * log_d, np.full(n, e)])
        top = u.max(axis=0)
        w = np.exp(u - top)
        total = w.sum(axis=0)
        r = top + np.log(total) - log_l
        w /= total
        huber = np.where(np.abs(r) <= HUBER_DELTA, 0.5 * r * r, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA))
        dr = np.clip(r, -HUBER_DELTA, HUBER_DELTA)
        grad = np.array(
            [
                (dr * w[0]).sum(),
                (dr * w[1]).sum(),
                (dr * w[2]).sum(),
                -(dr * w[0] * log_n).sum(),
                -(dr * w[1] * log_d).sum(),
            ]
        )
        scale = 1.0 / (HUBER_DELTA * n)
        return float(huber.sum() * scale), grad * scale

    return fg


def _grid_starts(fg_batch: Callable[[Vector], Vector], count: int) -> Vector:
    """The `count` best points of Hoffmann et al.'s grid of initialisations, by the objective there."""
    np = _numpy()
    mesh = np.meshgrid(GRID_LOG_COEF, GRID_LOG_COEF, GRID_E, GRID_EXPONENTS, GRID_EXPONENTS, indexing="ij")
    grid = np.stack([m.ravel() for m in mesh], axis=1)
    order = np.argsort(fg_batch(grid), kind="stable")
    result: Vector = grid[order[:count]]
    return result


def _objective_batch(log_n: Vector, log_d: Vector, log_l: Vector) -> Callable[[Vector], Vector]:
    """The objective at many points theta (rows) at once: ranks the grid without a loop."""
    np = _numpy()

    def f(thetas: Vector) -> Vector:
        a, b, e, alpha, beta = (thetas[:, i : i + 1] for i in range(5))
        u = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(thetas), len(log_l)))])
        r = np.logaddexp.reduce(u, axis=0) - log_l
        huber = np.where(np.abs(r) <= HUBER_DELTA, 0.5 * r * r, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA))
        out: Vector = huber.sum(axis=1)
        return out

    return f


def _lbfgs_numpy(fg: Callable[[Vector], tuple[float, Vector]], x0: Vector, *, iters: int = 500) -> Vector:
    """L-BFGS (Nocedal & Wright, algorithm 7.4) with a backtracking Armijo line search: the optimiser when
    scipy is not installed."""
    np = _numpy()
    x: Vector = np.array(x0, dtype=float)
    f, g = fg(x)
    pairs: list[tuple[Vector, Vector]] = []
    for _ in range(iters):
        q = g.copy()
        coefs = []
        for s, y in reversed(pairs):
            rho = 1.0 / float(y @ s)
            k = rho * float(s @ q)
            q -= k * y
            coefs.append((rho, k, s, y))
        if pairs:
            s, y = pairs[-1]
            q *= float(s @ y) / float(y @ y)
        for rho, k, s, y in reversed(coefs):
            q += s * (k - rho * float(y @ q))
        d = -q
        if float(g @ d) >= 0:  # not a descent direction: forget the curvature pairs
            d, pairs = -g, []
        t = 1.0
        while True:
            x_new = x + t * d
            f_new, g_new = fg(x_new)
            if f_new <= f + 1e-4 * t * float(g @ d) or t < 1e-10:
                break
            t *= 0.5
        s, y = x_new - x, g_new - g
        if float(s @ y) > 1e-12:
            pairs = [*pairs[-9:], (s, y)]
        done = abs(f - f_new) <= 1e-12 * max(1.0, abs(f)) or float(np.abs(g_new).max()) < 1e-10
        x, f, g = x_new, f_new, g_new
        if done:
            break
    return x


def _minimiser() -> tuple[str, Callable[[Callable[[Vector], tuple[float, Vector]], Vector], Vector]]:
    """(name, minimise(fg, x0)): scipy's L-BFGS-B when scipy is installed, else the numpy L-BFGS above."""
    try:
        optimize = importlib.import_module("scipy.optimize")
    except ImportError:
        return "L-BFGS (numpy)", _lbfgs_numpy

    def minimise(fg: Callable[[Vector], tuple[float, Vector]], x0: Vector) -> Vector:
        res = optimize.minimize(
            fg, x0, jac=True, method="L-BFGS-B", options={"maxiter": 1000, "ftol": 1e-14, "gtol": 1e-10}
        )
        x: Vector = res.x
        return x

    return "L-BFGS-B (scipy)", minimise


def _approach3(
    runs: Sequence[Run],
    starts: Vector,
    minimise: Callable[[Callable[[Vector], tuple[float, Vector]], Vector], Vector],
) -> Vector:
    """theta = (ln A, ln B, ln E, alpha, beta) minimising the Huber objective, from the best of `starts`."""
    np = _numpy()
    log_n, log_d, log_l = (np.log([getattr(r, k) for r in runs]) for k in ("params", "tokens", "loss"))
    fg = _objective(log_n, log_d, log_l)
    best, best_f = None, math.inf
    for x0 in starts:
        with np.errstate(over="ignore", invalid="ignore"):
            theta = minimise(fg, x0)
            f = fg(theta)[0]
        if math.isfinite(f) and f < best_f:
            best, best_f = theta, f
    if best is None or not np.all(np.isfinite(best)):
        raise FitError("approach 3 is degenerate: the Huber fit found no finite minimum")
    _, _, _, alpha, beta = best
    if not (0 < alpha < 2 and 0 < beta < 2):
        raise FitError(
            f"approach 3 is degenerate: alpha = {alpha:.3g}, beta = {beta:.3g} (need both in (0, 2))"
        )
    result: Vector = best
    return result


def _law_of(theta: Vector, runs: int) -> Law:
    a, b, e, alpha, beta = (float(t) for t in theta)
    source = f"fitted to {runs} runs (Hoffmann et al. 2022 approach 3: Huber on log-loss)"
    return Law("fitted", math.exp(e), math.exp(a), math.exp(b), alpha, beta, source)


def fit(
    runs: Sequence[Run],
    *,
    bootstrap: int = 200,
    seed: int = 0,
    at_flops: float | None = None,
    level: float = 0.95,
) -> FitResult:
    """Approaches 2 and 3 of Hoffmann et al. 2022 over `runs`, with percentile intervals from `bootstrap`
    resamples (runs drawn with replacement: within each budget for approach 2, from all for approach 3) and
    the optimum extrapolated to `at_flops` (default: a hundred times the largest budget)."""
    with _one_thread():
        return _fit(runs, bootstrap=bootstrap, seed=seed, at_flops=at_flops, level=level)


def _one_thread() -> contextlib.AbstractContextManager[object]:
    """BLAS on one thread while fitting: the arrays are a few hundred numbers, and threads fighting over a
    small machine's cores made a scipy fit 10x slower; threadpoolctl (installed with the plan extra) sets it,
    without it the fit runs as it is."""
    try:
        limits = importlib.import_module("threadpoolctl").threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    manager: contextlib.AbstractContextManager[object] = limits(limits=1)
    return manager


def _fit(
    runs: Sequence[Run],
    *,
    bootstrap: int,
    seed: int,
    at_flops: float | None,
    level: float,
) -> FitResult:
    """fit's work, with the threads it runs on already set."""
    np = _numpy()
    if not 0 < level < 1:
        raise FitError(f"the confidence level must be in (0, 1), got {level}")
    groups = _budgets(runs)
    target = at_flops if at_flops is not None else DEFAULT_EXTRAPOLATION * _budget_flops(groups[-1])
    if not (math.isfinite(target) and target > 0):
        raise FitError(f"the extrapolation budget must be a positive number of FLOPs, got {target}")
    minima, a, log_kn, b, log_kd = _approach2(groups)
    name, minimise = _minimiser()
    every = [r for g in groups for r in g]
    logs = [np.log([getattr(r, k) for r in every]) for k in ("params", "tokens", "loss")]
    theta = _approach3(every, _grid_starts(_objective_batch(*logs), GRID_STARTS), minimise)
    law = _law_of(theta, len(every))

    def figures(law_: Law, a_: float, log_kn_: float, b_: float, log_kd_: float) -> list[float]:
        n3 = optimal_params(target, law_)
        d3 = target / (6.0 * n3)
        n2, d2 = math.exp(log_kn_) * target**a_, math.exp(log_kd_) * target**b_
        return [law_.E, law_.A, law_.B, law_.alpha, law_.beta, a_, b_, n2, d2, n3, d3, law_.loss(n3, d3)]

    point = figures(law, a, log_kn, b, log_kd)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        drawn = _resample(groups, rng)
        try:
            # A resample's minimum may fall beyond its sizes: that spread is the uncertainty being measured.
            _, a_, log_kn_, b_, log_kd_ = _approach2(drawn, within=False)
            # Approach 3 draws from all runs at once (Besiroglu et al. 2024's bootstrap): drawing within
            # budgets of five runs would shrink the spread by a fifth. Started from the full fit: the
            # resample's minimum is near it, and the grid would find it too.
            pooled = [every[i] for i in rng.integers(0, len(every), len(every))]
            theta_ = _approach3(pooled, theta[None, :], minimise)
        except FitError:
            continue
        samples.append(figures(_law_of(theta_, len(every)), a_, log_kn_, b_, log_kd_))
    if bootstrap and len(samples) < MIN_RESAMPLE_SHARE * bootstrap:
        raise FitError(
            f"only {len(samples)} of {bootstrap} bootstrap resamples could be fitted: the fit is unstable"
        )
    tail = 100.0 * (1.0 - level) / 2.0
    if samples:
        low, high = np.percentile(np.array(samples), [tail, 100.0 - tail], axis=0)
    else:
        low = high = np.full(len(point), math.nan)
    est = [Estimate(v, float(lo), float(hi)) for v, lo, hi in zip(point, low, high, strict=True)]
    e_, a_e, b_e, alpha_e, beta_e, a2, b2, n2, d2, n3, d3, l3 = est
    return FitResult(
        law=law,
        E=e_,
        A=a_e,
        B=b_e,
        alpha=alpha_e,
        beta=beta_e,
        minima=tuple(minima),
        a=a2,
        b=b2,
        k_params=math.exp(log_kn),
        k_tokens=math.exp(log_kd),
        approach2=Extrapolation(target, n2, d2, None),
        approach3=Extrapolation(target, n3, d3, l3),
        runs=len(every),
        resamples=len(samples),
        level=level,
        optimizer=name,
    )


# ---------------------------------------------------------------------------------------------- the sweep


def _llama(layers: int, hidden: int, seq_len: int) -> ModelSpec:
    """A Llama-style model as Megatron builds it from the sweep's arguments (see _megatron_args)."""
    return ModelSpec(
        name="isoflop",
        layers=layers,
        hidden=hidden,
        # Megatron's --swiglu default: 8/3 of hidden, down to a multiple of 64.
        ffn_hidden=int(4 * hidden * 2 / 3 / 64) * 64,
        heads=hidden // HEAD_DIM,
        vocab=LLAMA2_VOCAB,
        seq_len=seq_len,
    )


def _llama_shape(target: float, seq_len: int) -> ModelSpec:
    """The Llama-style model nearest `target` parameters, preferring ASPECT hidden units per layer among
    those within SIZE_TOLERANCE of it."""
    candidates = []
    for heads in range(2, 129):
        hidden = heads * HEAD_DIM
        one, two = _llama(1, hidden, seq_len).params, _llama(2, hidden, seq_len).params
        layers = round((target - (2 * one - two)) / (two - one))
        if layers >= 1:
            candidates.append(_llama(layers, hidden, seq_len))
    if not candidates:
        raise FitError(
            f"no Llama-style model of {target:.3g} parameters (too small for a 32000-token vocabulary)"
        )

    def miss(m: ModelSpec) -> float:
        return abs(math.log(m.params / target))

    close = [m for m in candidates if miss(m) <= math.log1p(SIZE_TOLERANCE)]
    if close:
        return min(close, key=lambda m: abs(math.log(m.hidden / m.layers / ASPECT)))
    return min(candidates, key=miss)


def _megatron_args(
    model: ModelSpec, *, iters: int, global_batch: int, micro_batch: int, lr: float
) -> list[str]:
    """pretrain_gpt.py's arguments for a Llama-style model trained `iters` steps on cosine to a tenth of lr
    (the schedule the law's runs followed), evaluated once at the end."""
    return [
        "pretrain_gpt.py",
        *("--num-layers", str(model.layers), "--hidden-size", str(model.hidden)),
        *("--ffn-hidden-size", str(model.ffn_hidden), "--num-attention-heads", str(model.heads)),
        *("--seq-length", str(model.seq_len), "--max-position-embeddings", str(model.seq_len)),
        *("--position-embedding-type", "rope", "--normalization", "RMSNorm", "--swiglu"),
        *("--untie-embeddings-and-output-weights", "--disable-bias-linear"),
        *("--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", LLAMA2_TOKENIZER, "--mock-data"),
        *("--micro-batch-size", str(micro_batch), "--global-batch-size", str(global_batch)),
        *("--train-iters", str(iters), "--lr", f"{lr:.3g}", "--min-lr", f"{lr / 10:.3g}"),
        *("--lr-decay-style", "cosine", "--lr-warmup-iters", str(max(1, iters // 100))),
        *("--use-distributed-optimizer", "--bf16"),
        *("--log-interval", "10", "--eval-interval", str(iters), "--eval-iters", "10"),
    ]


def sweep(
    budgets: Sequence[float],
    *,
    family: str = "llama",
    cluster: str = "dgx-h100",
    gpus: int = 8,
    law: str | Law = DEFAULT_LAW,
    factors: Sequence[float] = SWEEP_FACTORS,
    seq_len: int = 2048,
    global_batch: int | None = None,
    out_dir: str = "isoflop",
    speed: float = 1e9,
) -> list[list[str]]:
    """fakerun command lines of an IsoFLOP sweep: at each budget, Llama-style models of `factors` times the
    law's optimum, each trained on C / 6N tokens at the budget's lr and batch (`global_batch` sequences, a
    multiple of `gpus`, makes a sweep of fewer, larger steps), metrics to `out_dir` (which must exist) for
    `fit`."""
    if family != "llama":
        raise FitError(f"the sweep builds Llama-style models only, not {family!r}")
    if len(budgets) < MIN_BUDGETS or len(set(factors)) < MIN_SIZES:
        raise FitError(
            f"a sweep needs at least {MIN_BUDGETS} budgets and {MIN_SIZES} sizes for fit to use it"
        )
    if any(not (math.isfinite(c) and c > 0) for c in budgets) or any(not f > 0 for f in factors):
        raise FitError("sweep budgets and size factors must be positive")
    if gpus < 1 or (global_batch is not None and (global_batch < 1 or global_batch % gpus)):
        raise FitError(
            f"need gpus >= 1 and a global batch that is a multiple of them, got {gpus}, {global_batch}"
        )
    lw = get_law(law)
    commands = []
    for c in sorted(budgets):
        batch, lr = batch_tokens(c), peak_lr(c)  # DeepSeek LLM 2024's fits (plan.arch)
        # A power of two of sequences per data-parallel rank (tp = pp = 1): whole micro batches of up to 4.
        per_rank = 2 ** round(math.log2(max(batch / seq_len / gpus, 1.0)))
        per_rank = global_batch // gpus if global_batch is not None else per_rank
        micro = math.gcd(per_rank, 4)
        sizes: dict[int, ModelSpec] = {}
        for f in factors:
            m = _llama_shape(optimal_params(c, lw) * f, seq_len)
            sizes.setdefault(m.params, m)
        if len(sizes) < MIN_SIZES:
            raise FitError(
                f"the budget {c:.3g} FLOPs is too small for {MIN_SIZES} distinct Llama-style sizes"
            )
        for m in sorted(sizes.values(), key=lambda m: m.params):
            iters = max(1, round(c / (6.0 * m.params) / (gpus * per_rank * seq_len)))
            metrics = os.path.join(out_dir, f"C{c:.1e}_N{m.params}.jsonl".replace("+", ""))
            commands.append(
                [
                    "fakerun",
                    *("--fake-cluster", cluster, "--fake-speed", f"{speed:g}", "--fake-metrics", metrics),
                    *("--nproc-per-node", str(gpus)),
                    *_megatron_args(m, iters=iters, global_batch=gpus * per_rank, micro_batch=micro, lr=lr),
                ]
            )
    return commands


def sweep_sbatch(
    commands: Sequence[Sequence[str]],
    *,
    job_name: str = "isoflop-sweep",
    gpus: int = 8,
    time: str = "02:00:00",
) -> str:
    """An sbatch array script running command i of `commands` at array index i, one node each."""
    if not commands:
        raise FitError("an sbatch array needs at least one command")
    dirs = sorted(
        {
            os.path.dirname(cmd[cmd.index("--fake-metrics") + 1]) or "."
            for cmd in commands
            if "--fake-metrics" in cmd
        }
    )
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --array=0-{len(commands) - 1}",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={gpus}",
        f"#SBATCH --time={time}",
        "#SBATCH --output=%x-%A_%a.out",
        f"# An IsoFLOP sweep of {len(commands)} runs; `fakerun-plan fit` reads their metrics files.",
        "set -euo pipefail",
        *(f"mkdir -p {shlex.quote(d)}" for d in dirs),
        'case "$SLURM_ARRAY_TASK_ID" in',
        *(f"  {i}) {shlex.join(cmd)} ;;" for i, cmd in enumerate(commands)),
        '  *) echo "no run for array index $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;',
        "esac",
    ]
    return "\n".join(lines) + "\n"
