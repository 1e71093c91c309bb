"""`python -m torch.distributed.run|launch` through the shims' stand-in torch, and a real torch winning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from fakerun.tools.pydoors import LAUNCH_DEPRECATION
from tests.conftest import Runner

# The worker prints what torch's launcher gave it, and whether `import torch` works there.
PROBE = """\
import json, os, sys
try:
    import torch
    has_torch = True
except ModuleNotFoundError:
    has_torch = False
keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "PYTHONPATH")
print(json.dumps({"argv": sys.argv, "env": {k: os.environ.get(k) for k in keys}, "torch": has_torch}))
"""
FAKE_EXEC = ("--fake-exec", "probe.py", "-x")


def _setup(runner: Runner) -> tuple[dict[str, str], Path]:
    """Shims installed in the test's directory, and the environment the design asks for (pylib first on
    PYTHONPATH); the probe script."""
    from fakerun.tools.shims import install_shims

    shims = runner.tmp / "bin"
    install_shims(str(shims), python=sys.executable)
    pylib = str(shims / "pylib")
    outer = os.environ.get("PYTHONPATH")  # a worktree's code over the installed package's
    env = runner.env(
        PATH=f"{shims}:{os.environ['PATH']}",
        PYTHONPATH=os.pathsep.join([pylib, outer] if outer else [pylib]),
    )
    probe = runner.tmp / "probe.py"
    probe.write_text(PROBE)
    return env, probe


def _python_m(runner: Runner, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m ARGS` in the test's directory."""
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=env, cwd=runner.tmp, timeout=60
    )


def _ranks(stdout: str) -> dict[str, dict[str, object]]:
    """The probes' reports by RANK."""
    reports = [json.loads(line) for line in stdout.splitlines()]
    return {str(r["env"]["RANK"]): r for r in reports}


def test_run_door(runner: Runner, reference: Path) -> None:
    """`python -m torch.distributed.run` is torchrun: the script's argv as given, LOCAL_RANK, run.py's
    warnings without the glog prefix (word for word the recording's), and no trace of the stand-in."""
    env, probe = _setup(runner)
    res = _python_m(runner, env, "torch.distributed.run", "--nproc-per-node", "2", *FAKE_EXEC)
    assert res.returncode == 0, res.stderr
    ranks = _ranks(res.stdout)
    assert sorted(ranks) == ["0", "1"]
    outer = os.environ.get("PYTHONPATH")
    for rank, report in ranks.items():
        assert report["argv"] == ["probe.py", "-x"]
        assert report["env"] == {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": "2", "PYTHONPATH": outer}
        assert report["torch"] is False  # as on this machine without the shims
    recorded = (reference / "07_misc" / "python_m_torch_distributed_run" / "console_stderr.txt").read_text()
    assert res.stderr == recorded
    assert probe.exists()


def test_launch_door(runner: Runner, reference: Path) -> None:
    """`python -m torch.distributed.launch`: its FutureWarning at launch.py:207, `--local-rank=N` before the
    script's arguments (none with --use_env), LOCAL_RANK in both, run.py's lines with their glog prefix;
    --no-python without --use-env is launch.py's ValueError."""
    env, _ = _setup(runner)
    res = _python_m(runner, env, "torch.distributed.launch", "--nproc_per_node", "2", *FAKE_EXEC)
    assert res.returncode == 0, res.stderr
    for rank, report in _ranks(res.stdout).items():
        assert report["argv"] == ["probe.py", f"--local-rank={rank}", "-x"]
        assert report["env"]["LOCAL_RANK"] == rank
    site = sysconfig.get_paths()["purelib"]
    warning = f"{site}/torch/distributed/launch.py:207: FutureWarning: {LAUNCH_DEPRECATION}\n  main()\n"
    assert res.stderr.startswith(warning)
    # The recording: the same warning (for its venv), then the OMP_NUM_THREADS block with glog prefixes.
    recorded = (reference / "07_misc" / "legacy_torch_distributed_launch" / "console_stderr.txt").read_text()
    assert recorded.startswith(warning.replace(site, "/opt/venv/lib/python3.11/site-packages"))
    rest = res.stderr[len(warning) :].splitlines()
    assert [line.split("] ", 1)[0].split()[-1] for line in rest] == ["torch/distributed/run.py:874"] * 4
    assert [line.split("] ", 1)[1] for line in rest] == [
        line.split("] ", 1)[1] for line in recorded[len(warning) :].splitlines()
    ]

    launch = ("torch.distributed.launch", "--nproc_per_node", "2")
    use_env = _python_m(runner, env, *launch, "--use_env", *FAKE_EXEC)
    assert use_env.returncode == 0, use_env.stderr
    for rank, report in _ranks(use_env.stdout).items():
        assert report["argv"] == ["probe.py", "-x"] and report["env"]["LOCAL_RANK"] == rank

    refused = _python_m(runner, env, "torch.distributed.launch", "--no-python", "--fake-exec", "true")
    assert refused.returncode == 1
    lines = refused.stderr.splitlines()
    assert lines[-1] == (
        "ValueError: When using the '--no-python' flag, you must also set the '--use-env' flag."
    )
    assert lines[-3:-1] == [
        f'  File "{site}/torch/distributed/launch.py", line 184, in launch',
        "    raise ValueError(",
    ]


def test_a_real_torch_always_wins(runner: Runner) -> None:
    """Another torch on sys.path, before or after the stand-in, is the one imported and run with -m; without
    one, only the two launcher modules get past the stand-in."""
    env, _ = _setup(runner)
    real = runner.tmp / "real"
    (real / "torch" / "distributed").mkdir(parents=True)
    (real / "torch" / "__init__.py").write_text("REAL = True\n")
    (real / "torch" / "distributed" / "__init__.py").write_text("")
    (real / "torch" / "distributed" / "run.py").write_text("import torch\nprint('real run.py', torch.REAL)\n")
    stand_in = env["PYTHONPATH"]
    for order in ([stand_in, str(real)], [str(real), stand_in]):
        env["PYTHONPATH"] = os.pathsep.join(order)
        ran = _python_m(runner, env, "torch.distributed.run", "--nproc-per-node", "2", "probe.py")
        assert (ran.returncode, ran.stdout) == (0, "real run.py True\n"), ran.stderr
        checked = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.REAL, torch.__file__)"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert checked.stdout == f"True {real / 'torch' / '__init__.py'}\n", checked.stderr
    env["PYTHONPATH"] = stand_in
    missing = subprocess.run(
        [sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env, timeout=60
    )
    assert missing.returncode == 1
    assert missing.stderr.splitlines()[-1] == "ModuleNotFoundError: No module named 'torch'"
