"""One fast run per dialect (torchtitan, torchtune): its own lines only, no structlog line and no GPU grid."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from tests.conftest import Runner

FAST = ["--fake-max-steps", "3", "--fake-speed", "400"]
STRUCTLOG = re.compile(r"\[(info|debug|warning|error) +\] ")
GRID = re.compile(r"^GPUs @ step ", re.M)
RECIPE = "recipes/full_finetune_distributed.py"  # the path `tune run` hands torchrun
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "torchtitan" / "llama3_8b.toml"


def test_torchtitan_run_train_command(runner: Runner) -> None:
    """run_train.sh's torchrun command with the shipped config: [rank0]:[titan] lines, start-up to exit."""
    result = runner.run(
        [
            "--nproc_per_node=8",
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint=localhost:0",
            "--local-ranks-filter",
            "0",
            "--role",
            "rank",
            "--tee",
            "3",
            *FAST,
            "-m",
            "torchtitan.train",
            "--job.config_file",
            str(CONFIG),
        ],
        timeout=120,
    )
    assert result.code == 0, result.stderr[-2000:]
    out = result.stdout
    assert not STRUCTLOG.search(out + result.stderr) and not GRID.search(out)
    lines = out.splitlines()
    assert all(line.startswith("[rank0]:") for line in lines)
    logged = [re.sub(r"^\[rank0\]:\[titan\] [\d-]+ [\d:,]+ - root - INFO - ", "", t) for t in lines]
    assert logged[1] == "Starting job: Llama 3 8B training"
    assert any(t.startswith("step:  1  loss: ") for t in logged)
    assert logged[-1] == "Process group destroyed"
    # The config's enable_tensorboard: the folder its line names holds the metrics rank's event file.
    folder = next(t for t in logged if t.startswith("TensorBoard logging enabled")).rsplit(" ", 1)[1]
    if importlib.util.find_spec("tensorboardX") and importlib.util.find_spec("tensorboard"):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        reader = EventAccumulator(str(runner.tmp / folder))
        reader.Reload()
        assert [e.step for e in reader.Scalars("loss_metrics/global_avg_loss")] == [1]  # log_freq 10


def test_torchtune_recipe(runner: Runner) -> None:
    """`tune run`'s torchrun command: rank 0's INFO:torchtune lines and bar, nothing of fakerun's own."""
    result = runner.run(
        ["--nproc-per-node", "2", *FAST, RECIPE, "--config", "llama3_1/8B_full"],
        timeout=120,
    )
    assert result.code == 0, result.stderr[-2000:]
    assert not STRUCTLOG.search(result.stdout + result.stderr) and not GRID.search(result.stdout)
    assert "INFO:torchtune.utils._logging:Running FullFinetuneRecipeDistributed with resolved config:" in (
        result.stderr
    )
    assert re.search(r"1\|3\|Loss: [\d.]+: ", result.stderr)
