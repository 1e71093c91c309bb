"""HF Trainer end to end: a fine-tune's Trainer lines, no fakerun event, no grid."""

from __future__ import annotations

import ast
import re

from tests.conftest import Runner

STRUCTLOG = re.compile(r"\[(info|debug|warning|error) +\]")
GRID = re.compile(r"GPUs @ step|util [▁-█]")
# Formats from real Trainer logs (reallogs 60, 61; run_clm-style explicit logger lines).
BLOCK = re.compile(
    r"^\[INFO\|trainer\.py:\d+\] [\d-]+ [\d:,]+ >> \*\*\*\*\* Running training \*\*\*\*\*$", re.M
)
# The runner reads text with universal newlines: tqdm.write's `\r` blanks `\r` arrive as line ends.
LOG_DICT = re.compile(r"^(\{'loss': .*\})$", re.M)
SAVING = re.compile(r"\[INFO\|trainer\.py:\d+\] [\d-]+ [\d:,]+ >> Saving model checkpoint to (\S+)$", re.M)


def test_hf_finetune_run(runner: Runner) -> None:
    """8 steps of an 8B fine-tune on 8 GPUs: block, losses near 2, saves, the train dict, run_clm.py's end
    (save_model, then --do_eval's evaluation); nothing else."""
    result = runner.run(
        [
            *("--nproc-per-node", "8", "--fake-max-steps", "8", "--fake-speed", "400", "--fake-seed", "5"),
            "run_clm.py",
            *("--model_name_or_path", "meta-llama/Meta-Llama-3-8B", "--per_device_train_batch_size", "2"),
            *("--logging_steps", "2", "--save_steps", "3", "--output_dir", "out/sft", "--do_eval"),
            # 8B's fp32 weights and Adam states need sharding: DDP's full copies do not fit in 80 GB.
            *("--fsdp", "full_shard auto_wrap", "--gradient_checkpointing"),
        ],
        timeout=240,
    )
    out = result.stdout + result.stderr
    assert result.code == 0, result.stderr[-2000:]
    assert not STRUCTLOG.search(out) and not GRID.search(out)
    assert len(BLOCK.findall(out)) == 1
    losses = [ast.literal_eval(m)["loss"] for m in LOG_DICT.findall(result.stdout)]
    assert len(losses) == 4 and all(1.0 <= x <= 3.0 for x in losses), losses
    # save_steps 3: steps 3 and 6, the last step (DefaultFlowCallback at max_steps), then save_model().
    assert SAVING.findall(result.stderr) == [f"out/sft/checkpoint-{s}" for s in (3, 6, 8)] + ["out/sft"]
    completed = result.stderr.index("Training completed.")
    assert result.stderr.index("checkpoint-8") < completed < result.stderr.index("to out/sft\n")
    assert result.stderr.count("***** Running Evaluation *****") == 1  # the one node's main process
    assert result.stderr.index("to out/sft\n") < result.stderr.index("***** Running Evaluation *****")
    assert "{'train_runtime': " in result.stdout
    stdout_order = ("***** train metrics *****", "*** Evaluate ***", "***** eval metrics *****")
    at = [result.stdout.index(part) for part in stdout_order]
    assert at == sorted(at), at
