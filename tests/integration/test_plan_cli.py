"""fakerun-plan --launch: the planned job runs under fakerun and its metrics file reports the planned model
and batch."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from tests.conftest import Runner, fakerun_exe


def test_launch_runs_the_planned_job(runner: Runner) -> None:
    """Plan 1e20 FLOPs on 8 H100s, run the printed command for a few steps at high speed, compare."""
    pytest.importorskip("fakerun.plan.arch")
    plan_args = ["--flops", "1e20", "--gpus", "8", "--cluster", "dgx-h100"]
    plan = subprocess.run(
        [sys.executable, "-m", "fakerun.plan.cli", *plan_args, "--json", "--launch"],
        capture_output=True, text=True, timeout=60, env=runner.env(), check=True,
    )  # fmt: skip
    doc = json.loads(plan.stdout)
    argv = shlex.split(doc["launch"])
    assert argv[0] in ("fakerun", "torchrun")
    metrics = runner.tmp / "m.jsonl"
    result = subprocess.run(
        [fakerun_exe(), *argv[1:]],
        capture_output=True, text=True, timeout=120, cwd=runner.tmp,
        env=runner.env(FAKERUN_SPEED="1000", FAKERUN_MAX_STEPS="3", FAKERUN_METRICS=str(metrics)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    run = json.loads(metrics.read_text().splitlines()[0])
    assert run["event"] == "run"
    assert run["params"] == doc["architecture"]["params"]["value"]
    assert run["n_gpus"] == 8
    design = doc["design"]
    assert (
        run["global_batch_tokens"]
        == design["global_batch"]["value"] * doc["architecture"]["seq_len"]["value"]
    )
