"""torchtune's dialect: rank 0's INFO lines and tqdm bar, in the recipe's formats."""

from __future__ import annotations

import re

from fakerun import presets
from fakerun.dialects import events as ev
from fakerun.dialects import select
from fakerun.dialects.base import BarDraw, Line, Seat
from fakerun.dialects.torchtune import TorchtuneDialect
from fakerun.sim.job import make_job
from fakerun.sim.run import make_run
from fakerun.sim.step import step_numbers

AT = 1_795_000_000.25
INFO = "INFO:torchtune.utils._logging:"  # get_logger's records through the root handler (its docstring)
_B = presets.resolve("llama3-8b")
PLAN = make_run(make_job(_B.model, _B.cluster, _B.storage, nnodes=1, nproc_per_node=8), max_steps=20)
# The recipe's pbar: `{epoch}|{global_step}|Loss: {loss}: NN%|bar| n/total [elapsed<remaining, rate]`.
BAR = re.compile(r"^(\d+)\|(\d+)\|Loss: ([\d.]+): +(\d+)%\|.*\| (\d+)/(\d+) \[")


def dialect(rank: int = 0) -> TorchtuneDialect:
    d = TorchtuneDialect(Seat(rank=rank, local_rank=rank, world_size=8, nproc_per_node=8, hosts=("h",)))
    d.render(
        ev.JobStarted(run=PLAN, first=True, resume=False, settings=(("config", "llama3_1/8B_full"),)), AT
    )
    return d


def test_selected_by_the_recipe_path() -> None:
    """`tune run` passes the recipe's path to torchrun: it selects the dialect."""
    assert select("/site-packages/recipes/full_finetune_distributed.py", ["config"]) == "torchtune"


def test_start_up_lines_on_rank_zero_only() -> None:
    """INFO:torchtune.utils._logging: lines on stderr from rank 0; other ranks print nothing."""
    d = dialect()
    out = [
        *d.render(ev.ProcessGroupReady(0, 0, 0), AT),
        *d.render(ev.ModelBuilt("bfloat16", 8e9, 32, 0, weights_bytes=2 * 1024**3, init_s=12.5), AT),
        *d.render(ev.TrainingStarted(1, 20, 100, 0, 2e-5, "linear"), AT),
    ]
    lines = [o.text for o in out if isinstance(o, Line)]
    assert all(isinstance(o, Line) and o.stream == "stderr" for o in out)
    assert lines[0] == f"{INFO}Running FullFinetuneRecipeDistributed with resolved config:"
    assert f"{INFO}Instantiating model and loading checkpoint took 12.50 secs" in lines
    assert "\tGPU peak memory alloc: 2.00 GiB" in lines
    for message in (
        "Optimizer is initialized.",
        "Loss is initialized.",
        "Learning rate scheduler is initialized.",
    ):
        assert f"{INFO}{message}" in lines
    assert not dialect(rank=3).render(ev.ProcessGroupReady(0, 3, 0), AT)


def test_bar_carries_epoch_step_and_loss() -> None:
    """The bar's description is the recipe's `epoch|step|Loss: value` with the step's own loss."""
    n = step_numbers(PLAN.job, 0, 7)
    event = ev.StepDone(PLAN, n, 70.0, (10.0,), 10.0, 0.1, 1.0, 0.1, False)
    (draw,) = dialect().render(event, AT)
    assert isinstance(draw, BarDraw)
    m = BAR.match(draw.text)
    assert m, draw.text
    assert int(m[1]) == 1 and int(m[2]) == 7 and float(m[3]) == n.loss and int(m[5]) == 7
