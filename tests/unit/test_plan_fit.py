"""fakerun.plan.fit: runs read from CSV and metrics files, Chinchilla's approaches 2 and 3 recovering a known
law, refusals, the numpy-only optimiser, and an IsoFLOP sweep's simulated metrics fitted end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fakerun import presets
from fakerun.cli import parse_command_line
from fakerun.frameworks import megatron_args
from fakerun.jobconfig import build_run
from fakerun.plan.fit import FINAL_STEPS, FitError, Run, fit, read_runs, sweep, sweep_sbatch
from fakerun.render.metrics import run_record, step_record
from fakerun.sim.step import step_numbers

np = pytest.importorskip("numpy")

# Besiroglu, Erdil, Barnett, You 2024 (arXiv 2404.10102), their refit of Chinchilla's approach 3.
EPOCH = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}


def law_loss(n: float, d: float, k: dict[str, float]) -> float:
    """L(N, D) = E + A / N^alpha + B / D^beta."""
    return k["E"] + k["A"] / n ** k["alpha"] + k["B"] / d ** k["beta"]


def law_optimum(c: float, k: dict[str, float]) -> float:
    """N minimising L at C = 6ND (Hoffmann et al. 2022, eq. 4): G (C/6)^(beta/(alpha+beta))."""
    a, b = k["alpha"], k["beta"]
    g = (a * k["A"] / (b * k["B"])) ** (1.0 / (a + b))
    return float(g * (c / 6.0) ** (b / (a + b)))


def synthetic(
    k: dict[str, float], *, budgets: int = 6, sizes: int = 6, noise: float = 0.01, seed: int = 0
) -> list[Run]:
    """IsoFLOP runs of law `k` from 1e18 to 1e21 FLOPs, sizes from 1/8 to 8 times each optimum, with
    multiplicative Gaussian noise on the loss."""
    rng = np.random.default_rng(seed)
    runs = []
    for c in np.logspace(18, 21, budgets):
        for f in np.exp(np.linspace(-math.log(8), math.log(8), sizes)):
            n = law_optimum(c, k) * f
            d = c / (6 * n)
            runs.append(Run(n, d, law_loss(n, d, k) * (1 + noise * rng.standard_normal()), c))
    return runs


def no_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes `import scipy.optimize` fail as it does where scipy is not installed."""
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)


class TestRecovery:
    """The fit finds the law the runs were drawn from."""

    def test_epoch_law_within_its_own_intervals(self) -> None:
        pytest.importorskip("scipy")
        r = fit(synthetic(EPOCH), bootstrap=100, at_flops=5.76e23)
        assert r.optimizer == "L-BFGS-B (scipy)" and r.resamples >= 90
        for name, value in EPOCH.items():
            est = getattr(r, name)
            assert est.covers(value), (name, value, est)
            assert est.low < est.value < est.high
        # Approach 2: N_opt ~ C^(beta/(alpha+beta)), D_opt ~ C^(alpha/(alpha+beta)).
        a_true = EPOCH["beta"] / (EPOCH["alpha"] + EPOCH["beta"])
        assert r.a.covers(a_true) and abs(r.a.value - a_true) < 0.03
        assert r.b.covers(1 - a_true) and r.a.value + r.b.value == pytest.approx(1.0)
        n_true = law_optimum(5.76e23, EPOCH)
        assert r.approach3.params.covers(n_true) and r.approach2.params.covers(n_true)
        assert r.approach3.loss is not None
        assert r.approach3.loss.covers(law_loss(n_true, 5.76e23 / (6 * n_true), EPOCH))
        assert len(r.minima) == 6 and all(m.sizes == 6 for m in r.minima)
        assert (r.law.alpha, r.law.E) == (r.alpha.value, r.E.value)
        json.dumps(r.as_dict())  # every figure serialises

    def test_numpy_optimiser_matches_scipy_and_is_exact_without_noise(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        runs = synthetic(EPOCH, budgets=5, sizes=5, noise=0.0)
        no_scipy(monkeypatch)
        r = fit(runs, bootstrap=10)
        assert r.optimizer == "L-BFGS (numpy)"
        for name, value in EPOCH.items():
            assert getattr(r, name).value == pytest.approx(value, rel=1e-4), name

    def test_numpy_optimiser_agrees_on_noisy_runs(self, monkeypatch: pytest.MonkeyPatch) -> None:
        pytest.importorskip("scipy")
        runs = synthetic(EPOCH, budgets=5, sizes=5, noise=0.005, seed=3)
        with_scipy = fit(runs, bootstrap=0)
        no_scipy(monkeypatch)
        without = fit(runs, bootstrap=0)
        assert without.optimizer != with_scipy.optimizer
        for name in EPOCH:
            assert getattr(without, name).value == pytest.approx(getattr(with_scipy, name).value, rel=1e-3)

    def test_bootstrap_is_seeded(self) -> None:
        runs = synthetic(EPOCH, budgets=5, sizes=5, noise=0.01)
        one, two = fit(runs, bootstrap=5, seed=7), fit(runs, bootstrap=5, seed=7)
        assert one.alpha == two.alpha and one.a == two.a
        assert math.isnan(fit(runs, bootstrap=0).alpha.low)


class TestRefusals:
    """What cannot be fitted honestly is refused with one line."""

    def test_fewer_than_five_budgets(self) -> None:
        with pytest.raises(FitError, match=r"^24 runs make 4 compute budgets: a fit needs at least 5$"):
            fit(synthetic(EPOCH, budgets=4))

    def test_fewer_than_three_sizes(self) -> None:
        runs = synthetic(EPOCH, budgets=5, sizes=5)
        smallest = min(r.flops for r in runs)
        runs = [r for r in runs if r.flops != smallest or r.params < law_optimum(smallest, EPOCH)]
        with pytest.raises(FitError, match=r"^the budget of 1e\+18 FLOPs has 2 model sizes"):
            fit(runs)

    def test_parabola_opening_downward(self) -> None:
        runs = synthetic(EPOCH, budgets=5, sizes=5, noise=0.0)
        # The loss turned upside down around each budget's optimum: a maximum, no minimum.
        flipped = [Run(r.params, r.tokens, 10 - r.loss, r.flops) for r in runs]
        with pytest.raises(FitError, match="opens downward"):
            fit(flipped)

    def test_exponent_out_of_range(self) -> None:
        steep = {**EPOCH, "alpha": 2.6, "A": 1e19}
        with pytest.raises(FitError, match=r"^approach 3 is degenerate: alpha = 2\.6"):
            fit(synthetic(steep, budgets=5, sizes=5, noise=0.0), bootstrap=0)

    def test_without_numpy(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "numpy", None)
        with pytest.raises(FitError, match=r"^fit needs numpy: pip install 'fakerun\[plan\]'$"):
            fit(synthetic(EPOCH))

    def test_import_leaves_numpy_out(self) -> None:
        code = "import sys, fakerun.plan.fit; print('numpy' in sys.modules, 'scipy' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.split() == ["False", "False"]


def write_metrics(path: Path, records: list[dict[str, object]]) -> None:
    """A metrics file as fakerun's control loop writes it: a JSON record a line, ", " and ": " separators."""
    path.write_text("".join(json.dumps(r, separators=(", ", ": ")) + "\n" for r in records))


class TestReading:
    """read_runs over CSV files, metrics files and directories."""

    def test_csv_with_and_without_flops(self, tmp_path: Path) -> None:
        (tmp_path / "a.csv").write_text("params,tokens,loss\n1e8,2e9,3.1\n\n2e8, 1e9 ,3.0\n")
        (tmp_path / "b.csv").write_text("Loss,Params,Tokens,FLOPs\n2.9,1e8,4e9,2.5e18\n")
        runs = read_runs(tmp_path)
        assert [(r.params, r.tokens, r.loss, r.flops) for r in runs] == [
            (1e8, 2e9, 3.1, 6 * 1e8 * 2e9),
            (2e8, 1e9, 3.0, 6 * 2e8 * 1e9),
            (1e8, 4e9, 2.9, 2.5e18),
        ]
        assert runs[1].source == f"{tmp_path / 'a.csv'}:4"

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("params,loss\n1e8,3\n", r"a\.csv: no tokens column in the header"),
            ("params,tokens,loss\n1e8,2e9,nan\n", r"a\.csv:2: loss: expected a positive number, got 'nan'"),
            ("params,tokens,loss\n1e8,two,3\n", r"a\.csv:2: tokens: 'two' is not a number"),
            ("params,tokens,loss\n", r"a\.csv: a header and no runs"),
            ("\n\n", r"a\.csv: empty file"),
        ],
    )
    def test_bad_csv(self, tmp_path: Path, text: str, message: str) -> None:
        (tmp_path / "a.csv").write_text(text)
        with pytest.raises(FitError, match=message):
            read_runs(tmp_path / "a.csv")

    def test_metrics_file_mean_of_last_steps(self, tmp_path: Path) -> None:
        run = {"event": "run", "params": 1000, "active_params": 250, "last_step": 12}
        steps = [
            {"event": "step", "step": s, "tokens": 100 * s, "loss": 20.0 - s, "skipped": False}
            for s in range(1, 13)
        ]
        steps[-1] = {**steps[-1], "loss": None, "skipped": True}  # a NaN step: left out of the mean
        write_metrics(tmp_path / "m.jsonl", [run, *steps, {"event": "eval", "step": 12, "val_loss": 1.0}])
        (r,) = read_runs(tmp_path / "m.jsonl")
        # Steps 3..11 of the last ten (step 12 skipped): losses 17 .. 9, mean 13; FLOPs of the active params.
        assert (r.params, r.tokens, r.loss, r.flops) == (1000, 1200, 13.0, 6 * 250 * 1200)

    @pytest.mark.parametrize(
        ("lines", "message"),
        [
            (['{"event": "step", "step": 1, "tokens": 5, "loss": 3}'], r"no run record"),
            (['{"event": "run", "params": 10, "last_step": 3}'], r"no step records"),
            (
                [
                    '{"event": "run", "params": 10, "last_step": 3}',
                    '{"event": "step", "step": 2, "tokens": 5, "loss": 3}',
                ],
                r"the run stopped at step 2 of 3: it has no final loss",
            ),
            (['{"event": "run", "params": 10}', "{oops"], r"m\.jsonl:2: not a JSON record"),
        ],
    )
    def test_bad_metrics(self, tmp_path: Path, lines: list[str], message: str) -> None:
        (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
        with pytest.raises(FitError, match=message):
            read_runs(tmp_path)

    def test_missing_and_empty(self, tmp_path: Path) -> None:
        with pytest.raises(FitError, match="no such file or directory"):
            read_runs(tmp_path / "nope.csv")
        with pytest.raises(FitError, match=r"no \.csv, \.jsonl or \.json files"):
            read_runs(tmp_path)


class TestSweep:
    """sweep's commands: IsoFLOP budgets as fakerun reads them, and their metrics fitted back."""

    BUDGETS = (1e18, 2e18, 4e18, 8e18, 1.6e19)

    def test_runs_spend_their_budget(self) -> None:
        commands = sweep(self.BUDGETS, global_batch=512)
        assert len(commands) == 25
        for cmd in commands:
            at = cmd.index("pretrain_gpt.py")
            model = megatron_args.read(cmd[at], cmd[at + 1 :]).model
            assert model is not None
            opt = {k: cmd[i + 1] for i, k in enumerate(cmd) if k.startswith("--")}
            tokens = int(opt["--train-iters"]) * int(opt["--global-batch-size"]) * int(opt["--seq-length"])
            budget = float(Path(opt["--fake-metrics"]).name.split("_")[0][1:])
            # Whole iterations: within half an iteration of C = 6 N D.
            assert abs(6 * model.params * tokens / budget - 1) <= 0.5 / int(opt["--train-iters"]) + 1e-9
        centre = commands[2]
        at = centre.index("pretrain_gpt.py")
        n = megatron_args.read(centre[at], centre[at + 1 :]).model
        assert n is not None and abs(n.params / law_optimum(1e18, EPOCH) - 1) < 0.02

    def test_sbatch_array(self) -> None:
        commands = sweep(self.BUDGETS, global_batch=512, out_dir="runs/iso")
        script = sweep_sbatch(commands, gpus=8)
        assert "#SBATCH --array=0-24\n" in script and "mkdir -p runs/iso\n" in script
        cases = [line for line in script.splitlines() if line.startswith("  ") and ") fakerun " in line]
        assert len(cases) == 25 and cases[7].startswith("  7) fakerun --fake-cluster dgx-h100 ")

    def test_refuses_other_families_and_few_budgets(self) -> None:
        with pytest.raises(FitError, match="Llama-style models only"):
            sweep(self.BUDGETS, family="mixtral")
        with pytest.raises(FitError, match="at least 5 budgets"):
            sweep(self.BUDGETS[:4])

    def test_simulated_metrics_fit_end_to_end(self, tmp_path: Path) -> None:
        """Each sweep command's job, built as fakerun builds it, writes its run record and its last steps'
        records as the control loop does (no processes); fit reads them back and finds the jobs' law."""
        budgets = (1e18, 3.16e18, 1e19, 3.16e19, 1e20)
        commands = sweep(budgets, global_batch=1024, out_dir=str(tmp_path))
        laws, expected = [], []
        for cmd in commands:
            line = parse_command_line(cmd[1:], {})
            bundle = presets.resolve("llama3-8b", line.fake.gpu, line.fake.cluster)
            plan, _ = build_run(line, bundle, nnodes=1, nproc_per_node=8, model_given=False)
            job, last = plan.job, plan.job.total_steps
            records = [run_record(job, run_id="r", attempt=0, first_step=1, last_step=last)]
            # The steps the reader uses (a real file holds every step before them too).
            for s in range(last - 2 * FINAL_STEPS + 1, last + 1):
                records.append(step_record(step_numbers(job, 0, s), allreduce_ms=0.0, mem_gib=0.0, time=0.0))
            write_metrics(Path(line.fake.metrics or ""), records)
            laws.append(records[0]["law"])
            expected.append((job.model.params, last * job.tokens_per_step))
        (law,) = {json.dumps(x, sort_keys=True) for x in laws}
        k = json.loads(law)
        runs = read_runs(tmp_path)
        assert sorted((r.params, r.tokens) for r in runs) == sorted(expected)
        # The simulated final losses sit on the law within their noise (~1% a run, drift included).
        assert all(abs(r.loss / law_loss(r.params, r.tokens, k) - 1) < 0.03 for r in runs)
        r = fit(runs, bootstrap=50)
        assert r.runs == 25 and len(r.minima) == 5
        assert r.a.covers(k["beta"] / (k["alpha"] + k["beta"]))
        # The mean of the last ten steps' losses sits ~5 steps before the tokens read: a bias of 1-2% in D on
        # runs of a few hundred steps, which tilts the exponents a little beyond their intervals at times.
        assert abs(r.alpha.value - k["alpha"]) < 0.07 and abs(r.beta.value - k["beta"]) < 0.05
