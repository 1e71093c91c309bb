"""An HF corpus command end to end: the model it names, its batch, and the files the Trainer says it saved."""

from __future__ import annotations

import ast
import json
import re

from tests.conftest import Runner

SAVING = re.compile(r">> Saving model checkpoint to (\S+)$", re.M)
DELETING = re.compile(
    r"trainer\.py:4065\] .* >> Deleting older checkpoint \[(\S+)\] due to args\.save_total_limit$", re.M
)


def test_pythia_clm_run(runner: Runner) -> None:
    """run_clm.py on Pythia-160m, 2 ranks: its published size in the block, each reported save on disk."""
    result = runner.run(
        [
            *("--nproc-per-node", "2", "--fake-speed", "2000", "--fake-seed", "3"),
            "run_clm.py",
            *("--model_name_or_path", "EleutherAI/pythia-160m", "--per_device_train_batch_size", "4"),
            *("--max_steps", "12", "--save_steps", "4", "--logging_steps", "3", "--output_dir", "out/clm"),
            *("--save_total_limit", "2", "--do_eval", "--fp16"),
        ],
        timeout=120,
    )
    assert result.code == 0, result.stderr[-2000:]
    assert "Number of trainable parameters = 162,322,944" in result.stderr
    assert "Total train batch size (w. parallel, distributed & accumulation) = 8" in result.stderr
    assert "16-bits training: True" in result.stdout
    saved = SAVING.findall(result.stderr)
    assert saved == ["out/clm/checkpoint-4", "out/clm/checkpoint-8", "out/clm/checkpoint-12", "out/clm"]
    # save_total_limit 2: the third save deletes the first, as the log says.
    assert DELETING.findall(result.stderr) == ["out/clm/checkpoint-4"]
    assert sorted(p.name for p in (runner.tmp / "out/clm").glob("checkpoint-*")) == [
        "checkpoint-12",
        "checkpoint-8",
    ]
    # run_clm.py's results files hold the figures of its metrics blocks.
    train = json.loads((runner.tmp / "out/clm/train_results.json").read_text())
    evaluation = json.loads((runner.tmp / "out/clm/eval_results.json").read_text())
    assert json.loads((runner.tmp / "out/clm/all_results.json").read_text()) == {**train, **evaluation}
    for key, value in (*train.items(), *evaluation.items()):
        if key.endswith(("_per_second", "_loss", "perplexity")):
            assert re.search(rf"^  {key} +=\s+{round(value, 4)}$", result.stdout, re.M), key
    final = json.loads((runner.tmp / "out/clm/trainer_state.json").read_text())["log_history"][-1]
    assert final["train_runtime"] == train["train_runtime"] and final["step"] == 12
    for directory in saved[1:]:
        state = json.loads((runner.tmp / directory / "trainer_state.json").read_text())
        step = int(directory.rsplit("-", 1)[1]) if "checkpoint-" in directory else 12
        # the last logging step's record (every 3 steps) is the history's last
        assert state["global_step"] == step and state["log_history"][-1]["step"] == step // 3 * 3
        assert (runner.tmp / directory / "config.json").is_file()
        assert (runner.tmp / directory / "model.safetensors").stat().st_size > 4 * 162_322_944
    for rank in (0, 1):
        assert (runner.tmp / f"out/clm/checkpoint-8/rng_state_{rank}.pth").is_file()
    # --fp16: accelerate's GradScaler starts at 2**16, so at most its first few updates are skipped and the
    # linear schedule's lr is logged, down to 0.0 only at the last step.
    logged = [ast.literal_eval(d) for d in re.findall(r"^\{'loss': .*\}$", result.stdout, re.M)]
    assert [d["learning_rate"] > 0 for d in logged] == [True, True, True, False]
    # --max_steps over data of unknown size (thousands of examples): one epoch, 12 steps a sliver of it.
    assert "  Num Epochs = 1\n" in result.stderr and all(d["epoch"] <= 0.02 for d in logged)
    # run_clm.py's compute_metrics: the token accuracy after the loss, in the file and the block.
    assert 0 < evaluation["eval_accuracy"] < 1  # save_metrics sorts its keys
    assert re.search(r"^  eval_accuracy +=\s+0\.\d+$", result.stdout, re.M)
