"""Regression guard for start-up cost: workers are forks of a preloaded launcher and import (almost) nothing.

Each module a worker imports after the fork costs every rank its import time and private memory (~70 ms and
~20 MB for numpy). An audit hook installed before fakerun starts is inherited by every fork; it records the
`import` events of processes other than the launcher. No timing is asserted here: the bench measures speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from tests.conftest import Runner

HARNESS = """
import json, os, sys
LAUNCHER = os.getpid()
OUT = sys.argv[1]
def hook(event, args):
    if event == "import" and os.getpid() != LAUNCHER:
        with open(os.path.join(OUT, f"{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps(args[0]) + "\\n")
sys.addaudithook(hook)
from fakerun.main import main
sys.exit(main(["fakerun", *sys.argv[2:]]))
"""

# Rank 0 alone imports tqdm (and what tqdm imports: importlib.metadata, email, csv...) for its meter:
# ~60 ms that every other rank would pay for nothing if the launcher preloaded it.
LAZY_ON_RANK0 = "tqdm"


def check(per_pid: dict[int, list[str]]) -> None:
    """No worker imports anything after the fork, except one (rank 0) importing tqdm and its needs."""
    importers = {pid: names for pid, names in per_pid.items() if names}
    assert len(importers) <= 1, {pid: sorted(set(n))[:10] for pid, n in importers.items()}
    for names in importers.values():
        assert names[0].split(".")[0] == LAZY_ON_RANK0, names[:10]


def worker_imports(tmp: Path, *args: str, **extra_env: str) -> dict[int, list[str]]:
    """Runs a job under the audit hook; returns, per worker pid, the modules it imported after the fork."""
    out = tmp / "imports"
    out.mkdir()
    env = Runner(uuid.uuid4().hex, tmp).env(**extra_env)
    proc = subprocess.run(
        [sys.executable, "-c", HARNESS, str(out), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {
        int(p.stem): [json.loads(line) for line in p.read_text().splitlines()] for p in sorted(out.iterdir())
    }


def test_workers_import_nothing_after_fork(tmp_path: Path) -> None:
    """Eight simulated ranks run a whole job (start-up to summary) without importing a new module."""
    per_pid = worker_imports(
        tmp_path, "--nproc-per-node", "8", "--fake-max-steps", "3", "--fake-speed", "100", "train.py"
    )
    check(per_pid)


def test_nccl_and_trainer_styles_need_no_imports(tmp_path: Path) -> None:
    """NCCL INFO lines and Megatron-style lines are rendered with what the launcher preloaded."""
    per_pid = worker_imports(
        tmp_path,
        "--nproc-per-node",
        "4",
        "--fake-max-steps",
        "2",
        "--fake-speed",
        "100",
        "pretrain_gpt.py",
        "--num-layers",
        "4",
        "--hidden-size",
        "512",
        "--num-attention-heads",
        "8",
        NCCL_DEBUG="INFO",
    )
    check(per_pid)
