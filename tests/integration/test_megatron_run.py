"""One fast fp16 job per Megatron dialect: only its own lines (no structlog, bar or grid), fp16 skips."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import Runner, fakerun_exe

ARGS = str.split(
    "--num-layers 4 --hidden-size 256 --num-attention-heads 4 --seq-length 512 --max-position-embeddings 512 "
    "--micro-batch-size 2 --global-batch-size 8 --train-iters 400 --lr 3e-4 --lr-warmup-iters 10 --fp16 "
    "--log-interval 5 --eval-interval 20 --save-interval 20 --eval-iters 2"
)
STRUCTLOG = re.compile(r"\[(info|debug|warning|error) +\]")
GRID = re.compile(r"^GPUs @ step|█")


@pytest.mark.parametrize(
    ("extra", "line", "blocks"),
    [
        (
            [],
            re.compile(r"^ \[[\d :-]+\] iteration +\d+/ +400 \|"),
            # core_v0.15 pretrain(): the validation set, then the test set (no --split: "969, 30, 1").
            [
                " validation loss at iteration 20 |",
                " validation loss at iteration 25 on validation set |",
                " validation loss at iteration 25 on test set |",
            ],
        ),
        (
            ["--deepspeed", "--deepspeed_config", "ds.json", "--zero-stage", "1", "--tensorboard-dir", "tb"],
            re.compile(r"^ iteration +\d"),
            [
                "valid loss at iteration 20 |",
                "valid loss at the end of training for val data |",
                "test loss at the end of training for test data |",
            ],
        ),
    ],
    ids=["megatron", "megatron-deepspeed"],
)
def test_fp16_job_prints_only_megatron_lines(
    extra: list[str], line: re.Pattern[str], blocks: list[str], tmp_path: Path
) -> None:
    runner = Runner(uuid.uuid4().hex, tmp_path)
    proc = subprocess.run(
        [
            fakerun_exe(),
            "--nproc-per-node",
            "2",
            "--fake-max-steps",
            "25",
            "--fake-speed",
            "400",
            "pretrain_gpt.py",
            *ARGS,
            *extra,
        ],
        capture_output=True,
        timeout=180,
        env=runner.env(),
        cwd=tmp_path,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.splitlines()
    assert not [x for x in out + proc.stderr.splitlines() if STRUCTLOG.search(x) or GRID.search(x)]
    iterations = [x for x in out if line.match(x)]
    assert len(iterations) == 5
    # fp16 from 2**32: the first interval only skips, so it prints no lm loss, and the scale falls.
    assert "lm loss" not in iterations[0] and "number of skipped iterations:   5" in iterations[0]
    scales = [float(m) for x in iterations for m in re.findall(r"loss scale: ([\d.]+)", x)]
    assert scales == sorted(scales, reverse=True) and scales[-1] < scales[0]
    assert any("lm loss" in x for x in iterations[-2:])
    assert any(x.startswith("[Rank 0] (after ") for x in out)
    assert "[after training is done] datetime: " in proc.stdout
    # --save-interval without --save: Megatron saves nothing (and fakerun runs no save either).
    assert "saving checkpoint" not in proc.stdout and "save-checkpoint" not in proc.stdout
    # The evaluations, in pretrain()'s order, each between its dashed rules.
    found = [x for x in out if "loss at " in x]
    assert [x.split(" | lm loss value")[0] + " |" for x in found] == blocks
    for x in found:
        i = out.index(x)
        assert out[i - 1] == out[i + 1] == "-" * (len(x) + 1)
    if "--tensorboard-dir" in extra and importlib.util.find_spec("tensorboardX"):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        # The last rank's event file: each evaluation under its data group, the test one at iteration 0.
        reader = EventAccumulator(str(tmp_path / "tb"))
        reader.Reload()
        steps = {
            g: [e.step for e in reader.Scalars(f"lm-loss-validation/{g}/lm loss validation")]
            for g in ("valid", "test")
        }
        assert steps == {"valid": [20, 25], "test": [0]}
