"""An HF corpus command end to end: the model it names, its batch, and the files the Trainer says it saved."""

from __future__ import annotations

import json
import re

from tests.conftest import Runner

SAVING = re.compile(r">> Saving model checkpoint to (\S+)$", re.M)


def test_pythia_clm_run(runner: Runner) -> None:
    """run_clm.py on Pythia-160m, 2 ranks: its published size in the block, each reported save on disk."""
    result = runner.run(
        [
            *("--nproc-per-node", "2", "--fake-speed", "2000", "--fake-seed", "3"),
            "run_clm.py",
            *("--model_name_or_path", "EleutherAI/pythia-160m", "--per_device_train_batch_size", "4"),
            *("--max_steps", "12", "--save_steps", "6", "--logging_steps", "3", "--output_dir", "out/clm"),
        ],
        timeout=120,
    )
    assert result.code == 0, result.stderr[-2000:]
    assert "Number of trainable parameters = 162,322,944" in result.stderr
    assert "Total train batch size (w. parallel, distributed & accumulation) = 8" in result.stderr
    saved = SAVING.findall(result.stderr)
    assert saved == ["out/clm/checkpoint-6", "out/clm/checkpoint-12", "out/clm"]
    for directory in saved:
        state = json.loads((runner.tmp / directory / "trainer_state.json").read_text())
        step = int(directory.rsplit("-", 1)[1]) if "checkpoint-" in directory else 12
        assert state["global_step"] == step and [e["step"] for e in state["log_history"]][-1] == step
        assert (runner.tmp / directory / "config.json").is_file()
        assert (runner.tmp / directory / "model.safetensors").stat().st_size > 4 * 162_322_944
    for rank in (0, 1):
        assert (runner.tmp / f"out/clm/checkpoint-6/rng_state_{rank}.pth").is_file()
