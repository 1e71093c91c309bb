"""fakerun-plan: from a compute budget to the model, data, cluster time and the job that runs it."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from fakerun.plan import arch, chart
from fakerun.plan import fit as fitting
from fakerun.plan.budget import BudgetError, make_budget
from fakerun.plan.laws import DEFAULT_LAW, LAWS, ScalingLaw, get_law
from fakerun.plan.report import (
    DEFAULT_FAMILY,
    DEFAULT_SEQ_LEN,
    DEFAULT_VOCAB,
    Report,
    cluster_for,
    make_report,
    table,
)
from fakerun.presets import PresetError
from fakerun.sim.loss import LAW_ALIASES

PROG = "fakerun-plan"
FRAMEWORKS = ("megatron", "torchtitan")


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input in one line (no usage block), as the other errors are."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _plan_parser() -> _Parser:
    p = _Parser(
        prog=PROG,
        description="Plan a training run for a compute budget: model size, tokens, loss, and the job. "
        f"Subcommands: '{PROG} fit RUNS' fits a law to your runs, '{PROG} sweep' writes the runs to fit.",
    )
    b = p.add_argument_group("budget (one form)")
    b.add_argument("--flops", type=float, help="training compute in FLOPs, e.g. 5.76e23")
    b.add_argument("--gpu-hours", type=float, help="GPU-hours (with --gpu or --cluster)")
    b.add_argument("--gpus", type=int, help="GPUs (with --days: a budget; alone: the GPUs the job uses)")
    b.add_argument("--days", type=float, help="wall-clock days on --gpus GPUs")
    b.add_argument("--dollars", type=float, help="money to spend (with --price-per-gpu-hour)")
    b.add_argument("--price-per-gpu-hour", type=float, help="USD per GPU-hour (also prices the design)")
    b.add_argument(
        "--mfu", type=float, help="model FLOPs utilisation for GPU-time budgets (default: simulated)"
    )
    c = p.add_argument_group("constraints")
    c.add_argument("--unique-tokens", type=float, help="tokens of data that exist (repeats are worth less)")
    c.add_argument("--max-params", type=float, help="largest model allowed")
    c.add_argument("--inference-tokens", type=float, help="tokens the model will serve over its life")
    c.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN, help=f"default {DEFAULT_SEQ_LEN}")
    c.add_argument("--vocab", type=int, default=DEFAULT_VOCAB, help=f"default {DEFAULT_VOCAB}")
    m = p.add_argument_group("model and cluster")
    m.add_argument(
        "--law",
        default=DEFAULT_LAW,
        help=f"{', '.join(LAWS)} (default {DEFAULT_LAW}), or runs to fit one to (as `fit RUNS` reads them)",
    )
    m.add_argument("--family", default=DEFAULT_FAMILY, help=f"model family (default {DEFAULT_FAMILY})")
    m.add_argument("--cluster", help="cluster preset (default: the GPU's, else dgx-h100)")
    m.add_argument("--gpu", help="GPU preset")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="every figure with its unit, as JSON")
    o.add_argument("--plot", type=Path, metavar="FILE", help="IsoFLOP and frontier plots (.png, .svg, .pdf)")
    o.add_argument("--launch", action="store_true", help="print the fakerun command line running the plan")
    o.add_argument(
        "--framework", choices=FRAMEWORKS, default="megatron", help="arguments of --launch/--sbatch"
    )
    o.add_argument("--sbatch", type=Path, metavar="FILE", help="write a Slurm job script running the plan")
    return p


def _law(given: str) -> ScalingLaw:
    """A law by name, or the law fitted (approach 3) to the runs at the path `given` names."""
    if given in LAWS or given in LAW_ALIASES or not Path(given).exists():
        return get_law(given)
    _need_numpy("--law RUNS")
    try:
        fitted: ScalingLaw = fitting.fit(fitting.read_runs(given), bootstrap=0).law
    except fitting.FitError as err:
        raise UsageError(f"--law {given}: {err}") from None
    return fitted


def _plan(argv: Sequence[str]) -> int:
    args = _plan_parser().parse_args(argv)
    if args.plot is not None and args.plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UsageError(f"--plot {args.plot}: the file must end in .png, .svg or .pdf")
    law = _law(args.law)
    cluster = cluster_for(args.cluster, args.gpu)
    gpu_given = args.gpu is not None or args.cluster is not None
    budget = make_budget(
        flops=args.flops,
        gpu_hours=args.gpu_hours,
        gpus=args.gpus,
        days=args.days,
        dollars=args.dollars,
        price_per_gpu_hour=args.price_per_gpu_hour,
        gpu=cluster.gpu if gpu_given else None,
        mfu=args.mfu,
    )
    for name in ("seq_len", "vocab", "unique_tokens", "inference_tokens"):
        value = getattr(args, name)
        if value is not None and value <= 0 and not (name == "inference_tokens" and value == 0):
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value:g}")
    report = make_report(
        budget,
        law,
        max_params=args.max_params,
        unique_tokens=args.unique_tokens,
        inference_tokens=args.inference_tokens,
        family=args.family,
        cluster=cluster,
        seq_len=args.seq_len,
        vocab=args.vocab,
        price_per_gpu_hour=args.price_per_gpu_hour,
        framework=args.framework,
    )
    command = _launch(report, args.framework) if args.launch else None
    if args.sbatch is not None:
        _write_sbatch(report, args.sbatch, args.framework)
    if args.json:
        out = report.to_json()
        if command is not None:
            out["launch"] = command
        print(json.dumps(out, indent=2))
    elif command is not None:
        # The command alone on stdout, so `fakerun-plan ... --launch | sh` runs it; the plan goes to stderr.
        print(table(report), file=sys.stderr)
        print(command)
    else:
        print(table(report))
        print()
        print(chart.text_chart(budget.flops, law))
    if args.plot is not None:
        _plot(args.plot, report)
    return 0


def _needs_design(report: Report, option: str) -> arch.Design:
    """The report's design, or a usage error saying why there is none."""
    if report.design is None:
        raise UsageError(f"{option} needs a cluster to design the job on")
    return report.design


def _launch(report: Report, framework: str) -> str:
    design = _needs_design(report, "--launch")
    return shlex.join(arch.launch_command(design, framework=framework))


def _write_sbatch(report: Report, path: Path, framework: str) -> None:
    design = _needs_design(report, "--sbatch")
    try:
        path.write_text(arch.sbatch_script(design, framework=framework))
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror}") from None


def _plot(path: Path, report: Report) -> None:
    try:
        chart.plot(path, report.budget.flops, report.law, report.plan)
    except ImportError:
        print(f"{PROG}: no plot written: matplotlib is not installed: {chart.PLOT_HINT}", file=sys.stderr)
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror}") from None


def _need_numpy(what: str) -> None:
    """A usage error naming the extra `what` needs when numpy is absent (fakerun.plan.fit imports it only
    when it fits)."""
    if importlib.util.find_spec("numpy") is None:
        raise UsageError(f"{what} needs numpy: pip install 'fakerun[plan]'")


def _fit(argv: Sequence[str]) -> int:
    p = _Parser(
        prog=f"{PROG} fit", description="Fit a scaling law to small runs (Chinchilla approaches 2, 3)."
    )
    p.add_argument(
        "runs", type=Path, help="CSV of params,tokens,loss; fakerun --fake-metrics files; a directory"
    )
    p.add_argument("--json", action="store_true", help="the fit as JSON")
    p.add_argument("--plot", type=Path, metavar="FILE", help="the fitted law over the data")
    args = p.parse_args(argv)
    _need_numpy("fit")
    try:
        runs = fitting.read_runs(args.runs)
        result = fitting.fit(runs)
    except fitting.FitError as err:
        raise UsageError(str(err)) from None
    print(json.dumps(result.as_dict(), indent=2) if args.json else chart.fit_summary(result))
    if args.plot is not None:
        try:
            chart.plot_fit(args.plot, result, runs)
        except ImportError:
            print(f"{PROG}: no plot written: matplotlib is not installed: {chart.PLOT_HINT}", file=sys.stderr)
        except OSError as err:
            raise UsageError(f"cannot write {args.plot}: {err.strerror}") from None
    return 0


def _sweep(argv: Sequence[str]) -> int:
    p = _Parser(prog=f"{PROG} sweep", description="The fakerun commands of a small IsoFLOP sweep.")
    p.add_argument("budgets", type=float, nargs="+", help="FLOP budgets (five or more to fit)")
    args = p.parse_args(argv)
    _need_numpy("sweep")
    try:
        commands = fitting.sweep(args.budgets)
    except fitting.FitError as err:
        raise UsageError(str(err)) from None
    for command in commands:
        print(command if isinstance(command, str) else shlex.join(command))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the fakerun-plan console script: exit 0, or 2 with one line for bad input."""
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {"fit": _fit, "sweep": _sweep}
    try:
        if args and args[0] in commands:
            return commands[args[0]](args[1:])
        return _plan(args)
    except (UsageError, BudgetError, PresetError, ValueError) as err:
        print(
            f"{PROG}: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
