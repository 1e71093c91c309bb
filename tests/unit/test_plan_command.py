"""fakerun-plan's own parts, in process: the table and chart, --json with units, --plot, one-line errors."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from fakerun.plan import cli

H100_PEAK = 989.4e12


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def as_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    parsed: dict[str, Any] = json.loads(out)
    return parsed


def test_table_has_figures_with_units_and_a_chart(capsys: pytest.CaptureFixture[str]) -> None:
    """The text output: the compute-optimal figures with units, the IsoFLOP penalties, then the chart."""
    code, out, _ = run(capsys, "--flops", "5.76e23")
    assert code == 0
    lines = out.splitlines()
    params = next(line for line in lines if line.strip().startswith("parameters"))
    assert params.split()[-1].endswith("B")  # tens of billions
    assert 60 <= float(params.split()[-1][:-1]) <= 80  # Chinchilla's 70B, within 15%
    assert any("predicted loss" in line and line.endswith("nats/token") for line in lines)
    assert any("loss penalty at 2x" in line for line in lines)
    assert "* optimum" in out and out.count("*") >= 3  # one optimum per IsoFLOP curve, and the legend


def test_json_gives_every_figure_a_unit(capsys: pytest.CaptureFixture[str]) -> None:
    """--json: sections of {value, unit}; the default law's constants and citation come along."""
    doc = as_json(capsys, "--flops", "5.76e23", "--unique-tokens", "2e11")
    assert doc["law"]["name"] == "epoch-ai" and doc["law"]["alpha"] == 0.3478
    for key, section in doc.items():
        if key in ("law", "notes"):
            continue
        for figure in section.values():
            assert set(figure) == {"value", "unit"}
    best = doc["compute_optimal"]
    assert best["params"] == {"value": pytest.approx(70e9, rel=0.15), "unit": "params"}
    assert best["tokens"]["unit"] == "tokens" and best["loss"]["unit"] == "nats/token"
    assert doc["budget"]["flops"] == {"value": 5.76e23, "unit": "FLOP"}
    dc = doc["data_constrained"]
    assert dc["epochs"]["value"] == pytest.approx(dc["tokens"]["value"] / 2e11)


def test_gpu_days_budget_reports_its_mfu(capsys: pytest.CaptureFixture[str]) -> None:
    """1024 H100 x 30 days: the FLOPs are the GPU time at the MFU the plan reports (default or simulated)."""
    doc = as_json(capsys, "--gpus", "1024", "--days", "30", "--gpu", "h100")
    budget = doc["budget"]
    mfu = budget["mfu"]["value"]
    assert budget["mfu"]["unit"] == "fraction" and 0 < mfu < 1
    assert budget["flops"]["value"] == pytest.approx(1024 * 30 * 86_400 * mfu * H100_PEAK)
    assert budget["gpu_hours"] == {"value": 1024 * 30 * 24, "unit": "GPU-hours"}


def test_kaplan_and_inference_aware(capsys: pytest.CaptureFixture[str]) -> None:
    """--law kaplan plans with Kaplan's form; --inference-tokens adds a smaller, longer-trained model."""
    doc = as_json(capsys, "--flops", "1e23", "--law", "kaplan", "--inference-tokens", "1e13")
    assert doc["law"] == {"name": "kaplan", "source": "Kaplan et al. 2020 (arXiv 2001.08361), eq. 1.5"}
    inf = doc["inference_aware"]
    assert inf["params"]["value"] < doc["compute_optimal"]["params"]["value"]
    assert inf["total_flops"]["value"] < inf["compute_optimal_total_flops"]["value"]


def test_max_params_caps_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    """A cap below the optimum plans the largest model allowed, trained on the rest of the budget."""
    doc = as_json(capsys, "--flops", "1e23", "--max-params", "5e9")
    assert doc["plan"]["params"]["value"] == 5e9
    assert doc["plan"]["tokens"]["value"] == pytest.approx(1e23 / (6 * 5e9))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no budget"),
        (["--flops", "-1"], "--flops must be a positive number"),
        (["--flops", "1e40"], "not a plannable budget"),
        (["--flops", "lots"], "argument --flops: invalid float value: 'lots'"),
        (["--flops", "1e23", "--law", "gpt"], "unknown scaling law 'gpt'"),
        (["--flops", "1e23", "--gpu", "h900"], "h900"),
        (["--flops", "1e23", "--cluster", "nowhere"], "nowhere"),
        (["--flops", "1e23", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["--flops", "1e23", "--gpu-hours", "1e6"], "contradict each other"),
        (["--flops", "1e23", "--unique-tokens", "1e11", "--inference-tokens", "1e12"], "no published law"),
        (["--flops", "1e23", "--seq-len", "0"], "--seq-len must be positive"),
        (["--flops", "1e23", "--plot", "chart.txt"], "must end in .png, .svg or .pdf"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str, tmp_path: Path
) -> None:
    """Every refusal: exit 2, nothing on stdout, one line `fakerun-plan: error: ...` on stderr."""
    code, out, err = run(capsys, *[str(tmp_path / a) if a.endswith(".txt") else a for a in args])
    assert code == 2 and out == ""
    assert err.startswith("fakerun-plan: error: ") and err.count("\n") == 1
    assert message in err


def test_plot_writes_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--plot FILE.png writes a PNG (matplotlib, the `plot` extra)."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "plan.png"
    code, _, err = run(capsys, "--flops", "1e22", "--plot", str(out))
    assert code == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_still_plans(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No matplotlib: the plan is printed, no file is written, and stderr says how to get plots."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    out = tmp_path / "plan.svg"
    code, stdout, err = run(capsys, "--flops", "1e22", "--plot", str(out))
    assert code == 0 and "compute-optimal" in stdout and not out.exists()
    assert "pip install 'fakerun[plot]'" in err


def test_fit_without_numpy_names_the_extra(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fakerun-plan fit` needs numpy: without it, one line naming the extra."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "numpy" else find_spec(name, *a)
    )
    code, _, err = run(capsys, "fit", "runs.csv")
    assert (code, err) == (2, "fakerun-plan: error: fit needs numpy: pip install 'fakerun[plan]'\n")


@pytest.mark.parametrize("flops", [1e21, 1e23])
def test_the_planned_job_ends_on_the_predicted_loss(flops: float) -> None:
    """The simulated job of the design uses the plan's law: its noiseless loss after the planned tokens is
    the loss the plan predicts (a cosine-to-10% schedule ends on the law)."""
    from fakerun.plan import get_law, make_budget, make_report
    from fakerun.plan.report import cluster_for
    from fakerun.sim import loss

    report = make_report(make_budget(flops=flops), get_law("epoch-ai"), cluster=cluster_for(None, None))
    job = report.design.job
    assert job.total_steps * job.tokens_per_step == pytest.approx(report.plan.tokens, rel=1e-3)
    assert loss.expected_loss(job, job.total_steps) == pytest.approx(report.plan.loss, rel=1e-3)


def test_fit_prints_the_law_with_intervals_and_plots_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`fit RUNS`: the constants with their bootstrap intervals, the IsoFLOP minima, both extrapolated
    optima; --plot draws the runs and the fitted law."""
    pytest.importorskip("numpy")
    e, a, b, alpha, beta = 1.8172, 482.01, 2085.43, 0.3478, 0.3658  # Epoch AI's law, to be recovered
    rows = ["params,tokens,loss"]
    for c in (1e18, 3e18, 1e19, 3e19, 1e20):
        n_opt = (alpha * a / (beta * b)) ** (1 / (alpha + beta)) * (c / 6) ** (beta / (alpha + beta))
        for i, f in enumerate((0.25, 0.5, 1.0, 2.0, 4.0)):
            n, d = n_opt * f, c / (6 * n_opt * f)
            wobble = 1 + 0.002 * ((-1) ** i)  # a little noise, deterministic
            rows.append(f"{n:.0f},{d:.0f},{(e + a / n**alpha + b / d**beta) * wobble:.6f}")
    runs = tmp_path / "runs.csv"
    runs.write_text("\n".join(rows) + "\n")
    code, out, err = run(capsys, "fit", str(runs))
    assert code == 0, err
    assert "fitted to 25 runs" in out and "IsoFLOP minima (approach 2)" in out
    alpha_row = next(line for line in out.splitlines() if line.strip().startswith("alpha"))
    low, high = (float(x) for x in alpha_row.split("[")[1].rstrip("]").split(" .. "))
    assert low <= alpha <= high
    if importlib.util.find_spec("matplotlib") is not None:
        picture = tmp_path / "fit.png"
        code, _, err = run(capsys, "fit", str(runs), "--plot", str(picture))
        assert code == 0, err
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_law_fitted_from_runs_plans_with_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`--law RUNS` fits a law to the runs and plans with it: runs made from Chinchilla's published law give
    that law's tokens per parameter at the budget (its closed-form optimum), not the default law's ~20."""
    pytest.importorskip("numpy")
    e, a, b, alpha, beta = 1.69, 406.4, 410.7, 0.34, 0.28  # Hoffmann et al. 2022 as published
    rows = ["params,tokens,loss"]
    for c in (1e18, 3e18, 1e19, 3e19, 1e20):
        n_opt = (alpha * a / (beta * b)) ** (1 / (alpha + beta)) * (c / 6) ** (beta / (alpha + beta))
        for f in (0.25, 0.5, 1.0, 2.0, 4.0):
            n, d = n_opt * f, c / (6 * n_opt * f)
            rows.append(f"{n:.0f},{d:.0f},{e + a / n**alpha + b / d**beta:.6f}")
    runs = tmp_path / "runs.csv"
    runs.write_text("\n".join(rows) + "\n")
    fitted = as_json(capsys, "--flops", "1e21", "--law", str(runs))
    default = as_json(capsys, "--flops", "1e21")
    ratio = next(v for k, v in _walk(fitted) if k == "tokens_per_param")["value"]
    ratio_default = next(v for k, v in _walk(default) if k == "tokens_per_param")["value"]
    n_opt = (alpha * a / (beta * b)) ** (1 / (alpha + beta)) * (1e21 / 6) ** (beta / (alpha + beta))
    expected = 1e21 / (6 * n_opt) / n_opt
    assert ratio == pytest.approx(expected, rel=0.1)
    assert ratio > 2 * ratio_default


def _walk(doc: Any) -> Any:
    """(key, value) of every dict in a JSON document, depth first."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _walk(v)


def test_a_mixture_of_experts_is_sized_by_its_effective_parameters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The law's N for a MoE (as the simulated loss counts it) is sqrt(total x active): the planned Mixtral's
    is the compute-optimal N, so its job trains onto the predicted loss."""
    doc = as_json(capsys, "--flops", "1e22", "--family", "mixtral")
    arch, best = doc["architecture"], doc["compute_optimal"]
    effective = (arch["params"]["value"] * arch["active_params"]["value"]) ** 0.5
    assert effective == pytest.approx(best["params"]["value"], rel=0.03)
    assert arch["params"]["value"] > 1.5 * best["params"]["value"]  # the total is well above N
