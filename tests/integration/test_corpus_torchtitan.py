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
    """2 ranks, 12 steps saving every 3 with keep_latest_k 2: step-3/ purged after step 9's save, step-6/
    and step-9/ full, step-12/ bf16 model only (the last save purges nothing), under dump_folder/ckpt; with
    validation off, nothing but the last save between the last step line and "Training completed"."""
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
    assert "Checkpointer is deleting ./outputs/ckpt/step-3." in out
    assert sorted(os.listdir(root)) == ["step-12", "step-6", "step-9"]
    for step in (6, 9, 12):
        names = sorted(os.listdir(root / f"step-{step}"))
        assert names == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    # After the last step line of each rank: the last-step save (no "Finished saving" line: save() returns
    # after _save_last_step), no validation, then train()'s and main()'s ending.
    texts = [line.split(" - INFO - ", 1)[-1] for line in out.splitlines()]
    after = texts[texts.index(next(t for t in texts if t.startswith("step: 12"))) :]
    assert {t for t in after if not t.startswith("step: 12")} == {
        "Saving the checkpoint (or staging if async is enabled).",
        "Saving a model only checkpoint in torch.bfloat16 at last step, step 12.",
        "[GC] GC collection invoked by checkpointer. took 0.01 seconds",
        "Sleeping 2 seconds for other ranks to complete",
        "Training completed",
        "Destroying the purge thread.",
        "Process group destroyed",
    }
    assert not any("validat" in t.lower() for t in texts)
