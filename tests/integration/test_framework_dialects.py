"""nanoGPT, llm.c, NeMo 2 and Lightning end to end: each framework's own lines, no fakerun event, no grid."""

from __future__ import annotations

import os
import re

import pytest

from tests.conftest import Runner

STRUCTLOG = re.compile(r"\[(info|debug|warning|error) +\]")
GRID = re.compile(r"GPUs @ step|util [▁-█]")
# Each framework's signature line, from the real excerpts' formats (reallogs 71, 28, 72; llm.c's printf0).
SIGNATURE = {
    "nanogpt": re.compile(r"^iter 0: loss \d+\.\d{4}, time \d+\.\d{2}ms, mfu -100\.00%$", re.M),
    "llmc": re.compile(r"^step +1/\d+ \| loss \d+\.\d{6} \(\+nanz\)\| norm ", re.M),
    "nemo": re.compile(r"^Training epoch 0, iteration 0/\d+ \| lr: ", re.M),
    "lightning": re.compile(r"^`Trainer\.fit` stopped: `max_steps=\d+` reached\.$", re.M),
}


@pytest.mark.parametrize(
    ("trainer", "script"),
    [
        ("nanogpt", ["train.py", "--compile=False"]),
        ("llmc", ["./train_gpt2cu", "-b", "16"]),
        ("nemo", ["--fake-trainer", "nemo", "pretrain.py"]),
        ("lightning", ["main.py", "fit", "--trainer.max_steps", "1000"]),
    ],
)
def test_framework_log_holds_only_the_framework(runner: Runner, trainer: str, script: list[str]) -> None:
    """Selected by its arguments (or --fake-trainer), the job prints its framework's lines, none of ours."""
    fake = ["--fake-max-steps", "3", "--fake-speed", "400"]
    if script[0].startswith("--"):
        fake += script[:2]
        script = script[2:]
    result = runner.run(["--nproc-per-node", "2", *fake, *script], timeout=120)
    assert result.code == 0, result.stderr[-2000:]
    out = result.stdout + result.stderr
    assert SIGNATURE[trainer].search(out), out[-3000:]
    assert not STRUCTLOG.search(out), STRUCTLOG.search(out)
    assert not GRID.search(out)
    if trainer == "nanogpt":
        # configurator.py's echo.
        assert "\nOverriding: compile = False\n" in out and "compiling the model" not in out
    if trainer == "nemo":
        # NeMo's default log_dir under the ranks' working directory; the groups of two data-parallel ranks
        # before the banner; MegatronStrategy's `Initializing distributed` goes to a logger with no handler.
        logged = f"] Experiments will be logged at {os.path.realpath(runner.tmp)}/nemo_experiments/default\n"
        assert logged in result.stdout
        groups = result.stdout.index("megatron_init:449] Rank 0 has data parallel group : [0, 1]\n")
        assert groups < result.stdout.index("] Padded vocab_size: ")
        assert "Initializing distributed" not in out
