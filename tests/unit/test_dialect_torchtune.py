"""torchtune's dialect: rank 0's INFO lines and tqdm bar, in the recipe's formats."""

from __future__ import annotations

import re

import pytest

from fakerun import presets
from fakerun.dialects import events as ev
from fakerun.dialects import select
from fakerun.dialects.base import BarClose, BarDraw, Line, Seat
from fakerun.dialects.torchtune import TorchtuneDialect, config_model, yaml_float
from fakerun.hints import HintError, parse_hints
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
    # training.log_memory_stats' record: allocation, reserved, active, in that order.
    stats = lines.index(f"{INFO}Memory stats after model init:")
    assert [t.split(":")[0] for t in lines[stats + 1 : stats + 4]] == [
        "\tGPU peak memory allocation",
        "\tGPU peak memory reserved",
        "\tGPU peak memory active",
    ]
    for message in (
        "Optimizer is initialized.",
        "Loss is initialized.",
        "Learning rate scheduler is initialized.",  # a "linear" schedule, as LoRA configs have
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


def test_config_names_give_model_and_kind() -> None:
    """torchtune's config names: family and version folder, size, full or (Q)LoRA."""
    assert config_model("llama3_1/8B_full") == ("llama3.1-8B", "full")
    assert config_model("llama3_2/1B_full") == ("llama3.2-1B", "full")
    assert config_model("llama3_1/70B_lora") == ("llama3.1-70B", "lora")
    assert config_model("llama3/8B_qlora_single_device") == ("llama3-8B", "lora")
    assert config_model("qwen2_5/7B_full") == ("qwen2.5-7B", "full")
    assert config_model("my_config.yaml") is None


def test_overrides_on_the_command_line_set_the_job() -> None:
    """`key=value` overrides after --config; the model from the config's name, pure bf16 states."""
    args = ["--config", "llama3_1/70B_lora", "batch_size=4", "epochs=2", "max_steps_per_epoch=30"]
    h = parse_hints("recipes/lora_finetune_distributed.py", [*args, "gradient_accumulation_steps=2"])
    assert h.style == "torchtune" and h.model is not None and h.model.name == "llama3-70b"
    assert h.job["micro_batch"] == 4 and h.job["grad_accum"] == 2 and h.job["total_steps"] == 60
    assert h.epochs == 2.0 and h.job["lr"] == 3e-4 and h.job["state_layout"] == "bf16"
    full = parse_hints(
        "recipes/full_finetune_distributed.py", ["--config", "qwen2_5/7B_full", "optimizer.lr=1e-5"]
    )
    assert full.model is not None and full.model.name == "qwen2.5-7b"
    assert full.job["lr"] == 1e-5 and full.job["lr_schedule"] == "constant"
    with pytest.raises(HintError, match="batch_size"):
        parse_hints("recipes/full_finetune_distributed.py", ["--config", "llama3_1/8B_full", "batch_size=x"])


def test_yaml_floats_as_omegaconf_writes_them() -> None:
    """PyYAML's float representer: a mantissa without a dot gains '.0'."""
    assert yaml_float(2e-5) == "2.0e-05" and yaml_float(3e-4) == "0.0003" and yaml_float(1.5e-5) == "1.5e-05"


def test_epoch_end_saves_after_the_open_bar_and_the_final_one_says_so() -> None:
    """CheckpointClient's lines at each epoch's end: intermediate ones add the optimizer and recipe state."""
    job = make_job(_B.model, _B.cluster, _B.storage, nnodes=1, nproc_per_node=8, total_steps=20)
    run = make_run(job, epochs=2)
    d = TorchtuneDialect(Seat(rank=0, local_rank=0, world_size=8, nproc_per_node=8, hosts=("h",)))
    d.render(ev.JobStarted(run=run, first=True, resume=False, settings=(("config", "llama3_1/8B_full"),)), AT)
    first = [
        o.text
        for o in d.render(ev.EpochDone(1, 2, 10, 1.2, float("nan"), 1000, 60.0), AT)
        if isinstance(o, Line)
    ]
    last = [
        o.text
        for o in d.render(ev.EpochDone(2, 2, 20, 1.1, float("nan"), 1000, 60.0), AT)
        if isinstance(o, Line)
    ]
    shards = [t for t in first if "Model checkpoint of size" in t]
    # Llama 3.1 8B in bf16 is 14.96 GiB, written in HF's 5 GB shards.
    sizes = [float(re.findall(r"size ([\d.]+) GiB", t)[0]) for t in shards]
    assert len(shards) == 4 and abs(sum(sizes) - 8_030_261_248 * 2 / 1024**3) < 0.02
    assert shards[0].endswith(
        "saved to /tmp/torchtune/llama3_1_8B/full/epoch_0/model-00001-of-00004.safetensors"
    )
    assert (
        f"{INFO}Getting optimizer state dict..." in first
        and f"{INFO}Saving final epoch checkpoint." not in first
    )
    assert any("Recipe checkpoint of size" in t for t in first)
    assert f"{INFO}Saving final epoch checkpoint." in last and "epoch_1/model-00004-of-00004" in last[-4]
    assert not any("optimizer" in t for t in last)
    assert last[-1].startswith(f"{INFO}Saving checkpoint took ")


def test_new_epoch_closes_the_last_bar_and_restarts_its_clock() -> None:
    """The recipe makes a tqdm per epoch: the old one is redrawn and ended, the new one counts from 1."""
    job = make_job(_B.model, _B.cluster, _B.storage, nnodes=1, nproc_per_node=8, total_steps=20)
    run = make_run(job, epochs=2)
    d = TorchtuneDialect(Seat(rank=0, local_rank=0, world_size=8, nproc_per_node=8, hosts=("h",)))
    d.render(ev.JobStarted(run=run, first=True, resume=False), AT)
    for step in (10, 11):
        n = step_numbers(job, 0, step)
        out = d.render(ev.StepDone(run, n, 100.0 + step, (1.0,), 1.0, 0.1, 1.0, 0.1, False), AT)
    assert n.step_time_s < 100
    close, draw = out
    assert isinstance(close, BarClose) and close.text is not None and BAR.match(close.text)[5] == "10"  # type: ignore[index]
    assert isinstance(draw, BarDraw)
    m = BAR.match(draw.text)
    assert m and (m[1], m[2], m[5], m[6]) == ("2", "11", "1", "10")
    mm, ss = re.findall(r"\[(\d\d):(\d\d)<", draw.text)[0]
    assert 60 * int(mm) + int(ss) == int(n.step_time_s)  # the new bar's one step, not the run's 111 s
