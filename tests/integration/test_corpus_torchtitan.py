"""One torchtitan job from the corpus, as run_train.sh launches it: its model's size, its batch, and the
checkpoint files where its log says it saved them."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.conftest import Runner

CONFIG = Path(__file__).resolve().parents[1] / "corpus" / "torchtitan" / "llama3_debug.toml"
LLAMA3_DEBUGMODEL = 6_163_712  # tests/unit/test_corpus_torchtitan.py derives it from the architecture


def test_corpus_debug_config_saves_where_it_says(runner: Runner) -> None:
    """2 ranks, 12 steps saving every 6: step-6/ full, step-12/ bf16 model only, under dump_folder/ckpt."""
    result = runner.run(
        [
            "--nproc-per-node",
            "2",
            "--fake-speed",
            "2000",
            "-m",
            "torchtitan.train",
            "--job.config_file",
            str(CONFIG),
        ],
        timeout=120,
    )
    assert result.code == 0, result.stderr[-2000:]
    out = result.stdout
    assert f"Model llama3 debugmodel size: {LLAMA3_DEBUGMODEL:,} total parameters" in out
    assert "local batch size 4, global batch size 16, gradient accumulation steps 2" in out
    assert "Saving a model only checkpoint in torch.bfloat16 at last step, step 12." in out
    folder = re.search(r"Checkpoints will be loaded from and saved to (\S+)", out)
    assert folder is not None and folder[1] == "./outputs/ckpt"
    root = Path(runner.tmp) / folder[1]
    for step in (6, 12):
        names = sorted(os.listdir(root / f"step-{step}"))
        assert names == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert (root / "step-12" / "__0_0.distcp").stat().st_size == LLAMA3_DEBUGMODEL * 2 // 2
