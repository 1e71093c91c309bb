"""One fast DeepSpeed run: the engine's own lines only, no structlog line and no GPU grid."""

from __future__ import annotations

import json
import re

from tests.conftest import Runner

STRUCTLOG = re.compile(r"\[(info|debug|warning|error) +\] ")
GRID = re.compile(r"^GPUs @ step ", re.M)
DS_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\] \[INFO\] \[[a-z_0-9]+\.py:\d+:\w+\] ")
CONFIG = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 2,
    "steps_per_print": 2,
    "log_level": "info",
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.95]}},
    "bf16": {"enabled": True},
    "zero_optimization": {"stage": 1},
}


def test_deepspeed_script(runner: Runner) -> None:
    """`train.py --deepspeed --deepspeed_config ds_config.json` given --fake-trainer: DeepSpeed's lines."""
    (runner.tmp / "ds_config.json").write_text(json.dumps(CONFIG))
    result = runner.run(
        [
            "--nproc-per-node",
            "2",
            "--fake-max-steps",
            "4",
            "--fake-speed",
            "400",
            "cifar10_deepspeed.py",
            "--deepspeed",
            "--deepspeed_config",
            "ds_config.json",
        ],
        timeout=120,
    )
    assert result.code == 0, result.stderr[-2000:]
    out = result.stdout
    assert not STRUCTLOG.search(out + result.stderr) and not GRID.search(out)
    assert "Creating torch.bfloat16 ZeRO stage 1 optimizer" in out
    steps = re.findall(r"\[Rank 0\] step=(\d+), skipped=0, lr=\[", out)
    assert steps == ["0", "2", "4"]
    assert re.search(r"epoch=0/micro_step=8/global_step=4, RunningAvgSamplesPerSec=", out)
    # Every line of DeepSpeed's is its logger's, but for the multi-line messages' continuation lines.
    # No wall_clock_breakdown or memory_breakdown in the config: no timers, no see_memory_usage.
    assert "time (ms)" not in out and "Engine before forward" not in out and "CPU Virtual Memory" not in out
    firsts = [t for t in out.splitlines() if t.startswith("[")]
    assert firsts and all(DS_LINE.match(t) for t in firsts)
