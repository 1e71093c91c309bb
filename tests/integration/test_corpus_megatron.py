"""The corpus' GPT-2 launch script, run unmodified through the launcher: Megatron's lines, the model size
Megatron reports for it, and the checkpoints it says it saved, where it says."""

from __future__ import annotations

import math
import re
import subprocess
import uuid
from pathlib import Path

from tests.conftest import Runner, fakerun_exe
from tests.unit.test_corpus_megatron import script_command


def test_gpt2_script_runs_as_megatron_and_leaves_its_checkpoints(tmp_path: Path) -> None:
    nproc, script, args = script_command("gpt2_124m.sh")
    runner = Runner(uuid.uuid4().hex, tmp_path)
    launcher = [fakerun_exe(), "--nproc-per-node", str(nproc), "--fake-max-steps=40", "--fake-speed=400"]
    proc = subprocess.run(
        [*launcher, script, *args],
        capture_output=True,
        timeout=180,
        env=runner.env(),
        cwd=tmp_path,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.splitlines()
    # GPT-2 small with Megatron's padded table: 124,439,808 + 47 x 768 parameters on the one model shard.
    assert " > padded vocab (size: 50257) with 47 dummy tokens (new size: 50304)" in out
    assert " > number of parameters on (tensor, pipeline) model parallel rank (0, 0): 124475904" in out
    iterations = [x for x in out if " iteration " in x and "/     100 |" in x]
    assert len(iterations) == 4 and "global batch size:    32 |" in iterations[0]
    # OptimizerParamScheduler.get_lr: cosine from 6e-4 after 1 warm-up iteration to 6e-5 at --lr-decay-iters
    # 30, then min_lr for the rest of the run.
    printed = [re.search(r" learning rate: (\S+) \|", x)[1] for x in iterations]  # type: ignore[index]
    cosine = [6e-5 + (6e-4 - 6e-5) * 0.5 * (1 + math.cos(math.pi * (i - 1) / 29)) for i in (10, 20)]
    assert printed == [f"{lr:.6E}" for lr in (*cosine, 6e-5, 6e-5)]
    assert re.search(r"^  lr_decay_iters \.+ 30$", proc.stdout, flags=re.MULTILINE)
    assert re.search(r"^  context_parallel_size \.+ 1$", proc.stdout, flags=re.MULTILINE)
    assert "data-parallel size: 2, context-parallel size: 1, hierarchical" in proc.stdout
    # The script's own values, else Megatron's defaults (arguments.py: Adam's beta2 0.999, dropout 0.1).
    for name, value in (("weight_decay", "0.1"), ("adam_beta2", "0.999"), ("train_samples", "None")):
        assert re.search(rf"^  {name} \.+ {re.escape(value)}$", proc.stdout, flags=re.MULTILINE), name
    saves = [x for x in out if x.startswith("saving checkpoint at iteration")]
    where = "to checkpoints/gpt2_124m in torch_dist format"
    assert saves == [f"saving checkpoint at iteration {n:7d} {where}" for n in (20, 40)]
    root = tmp_path / "checkpoints" / "gpt2_124m"
    assert (root / "latest_checkpointed_iteration.txt").read_text() == "40"
    for step in (20, 40):
        folder = root / f"iter_{step:07d}"
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted(
            [".metadata", "common.pt", "metadata.json"]
            + [f"__{r}_{t}.distcp" for r in range(nproc) for t in (0, 1)]
        )
        # Weights and Adam states of 124M parameters (2 + 12 bytes each), spread over the ranks' files.
        shards = sum((folder / f"__{r}_{t}.distcp").stat().st_size for r in range(nproc) for t in (0, 1))
        assert abs(shards - 124_475_904 * 14) < nproc * 2
