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
    # ParallelDims on 2 ranks, cp 1: dp_shard = 2 / (dp_replicate x cp x tp x pp), FSDP over it.
    assert "Building device mesh with parallelism: pp=1, dp_replicate=1, dp_shard=2, cp=1, tp=1, ep=1" in out
    assert "Applied FSDP to the model" in out and "Applied Context Parallel" not in out
    # tflops = tps x get_num_flop_per_token: 6 x (params - embedding) + 12 x layers x heads x head_dim x
    # seq (dim 256, 6 layers, 16 heads of 16, vocab 2048, seq 1024).
    per_token = 6 * (LLAMA3_DEBUGMODEL - 2048 * 256) + 12 * 6 * 16 * 16 * 1024
    steps = re.findall(r"tps: ([\d,]+)  tflops: ([\d.,]+)", out)
    assert steps
    for tps, tflops in steps:
        expected = int(tps.replace(",", "")) * per_token / 1e12
        assert abs(float(tflops.replace(",", "")) - expected) <= 0.005 + 1e-3 * expected
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
