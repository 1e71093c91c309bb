"""torchtune's dialect: rank 0's INFO lines and tqdm bar, in the recipe's formats."""

from __future__ import annotations

import math
import re
from statistics import NormalDist

import pytest

from fakerun import presets
from fakerun.dialects import events as ev
from fakerun.dialects import select
from fakerun.dialects.base import BarClose, BarDraw, Line, Seat
from fakerun.dialects.torchtune import TorchtuneDialect, config_model, output_dir, yaml_float
from fakerun.hints import HintError, parse_hints
from fakerun.sim import instruct
from fakerun.sim.job import JobSpec, make_job
from fakerun.sim.memory import memory_breakdown
from fakerun.sim.run import make_run
from fakerun.sim.step import step_numbers
from fakerun.tools.tune import launch_argv

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


# Llama 3.1 8B's shape (its config.json): hidden 4096, 8 KV heads of 128, MLP 14336, 32 layers.
_H, _KV, _F, _LAYERS = 4096, 1024, 14336, 32


def _lora_job(config: str, *overrides: str) -> tuple[JobSpec, dict[str, str]]:
    """The job a LoRA recipe's command line gives on one 8-GPU node, and the settings its dialect sees."""
    h = parse_hints("recipes/lora_finetune_distributed.py", ["--config", config, *overrides])
    assert h.style == "torchtune" and h.model is not None
    b = presets.resolve(h.model.name)
    job = make_job(h.model, b.cluster, b.storage, nnodes=1, nproc_per_node=8, total_steps=20, **h.job)  # type: ignore[arg-type]
    return job, {"config": config, **{k: v for k, _, v in (o.partition("=") for o in overrides)}}


def test_lora_configs_train_only_their_adapters() -> None:
    """llama3_1/8B_lora: rank 8 on q, v, output_proj and the MLP; `model.*` overrides change them."""
    job, _ = _lora_job("llama3_1/8B_lora")
    # LoRA's A (r x in) and B (out x r) on q (h->h), v (h->kv), output_proj (h->h), w1/w3 (h->f), w2 (f->h).
    per_layer = 8 * ((_H + _H) + (_H + _KV) + (_H + _H) + 3 * (_H + _F))
    assert job.adapter_params == _LAYERS * per_layer and job.trainable_params == job.adapter_params
    wider, _ = _lora_job("llama3_1/8B_lora", "model.lora_rank=16", "model.apply_lora_to_mlp=False")
    assert wider.adapter_params == _LAYERS * 16 * ((_H + _H) + (_H + _KV) + (_H + _H))
    full = make_job(job.model, job.cluster, job.storage, nnodes=1, nproc_per_node=8, micro_batch=2)
    lora_mem = memory_breakdown(job, 0, step=5)
    # AdamW's two bf16 moments, FSDP-sharded over 8 ranks: of the adapters only.
    assert lora_mem.optimizer == pytest.approx(4.0 * job.adapter_params / 8, rel=1e-6)
    assert lora_mem.optimizer < memory_breakdown(full, 0, step=5).optimizer / 100


def test_lora_epoch_end_saves_the_adapters_as_the_checkpointer_does() -> None:
    """The merged model's shards, then adapter_model.pt, .safetensors and adapter_config.json; 70B's config
    saves the adapters only."""
    for config, merged in (("llama3_1/8B_lora", True), ("llama3_1/70B_lora", False)):
        job, settings = _lora_job(config)
        run = make_run(job, epochs=2)
        d = TorchtuneDialect(Seat(rank=0, local_rank=0, world_size=8, nproc_per_node=8, hosts=("h",)))
        d.render(ev.JobStarted(run=run, first=True, resume=False, settings=tuple(settings.items())), AT)
        lines = [
            o.text
            for o in d.render(ev.EpochDone(1, 2, 10, 1.2, float("nan"), 1000, 60.0), AT)
            if isinstance(o, Line)
        ]
        folder = f"/tmp/torchtune/{config.replace('/', '_').rsplit('_', 1)[0]}/lora/epoch_0"
        adapter_gib = f"{2 * job.adapter_params / 1024**3:.2f}"  # bf16
        assert (
            f"{INFO}Adapter checkpoint of size {adapter_gib} GiB saved to {folder}/adapter_model.pt" in lines
        )
        assert (
            f"{INFO}Adapter checkpoint of size {adapter_gib} GiB saved to {folder}/adapter_model.safetensors"
            in lines
        )
        assert f"{INFO}Adapter checkpoint of size 0.00 GiB saved to {folder}/adapter_config.json" in lines
        assert any("Model checkpoint of size" in t for t in lines) == merged
        assert f"{INFO}Retrieving optimizer state dict..." in lines  # the LoRA recipe's wording
        state = [t for t in lines if "Recipe checkpoint of size" in t]
        assert state and f"{4 * job.adapter_params / 1024**3:.2f} GiB" in state[0]


def test_lora_overrides_are_torchtunes_not_nemos() -> None:
    """`model.lora_rank=16` after a torchtune --config is a torchtune override, not a NeMo hydra one."""
    h = parse_hints(
        "recipes/lora_finetune_distributed.py", ["--config", "llama3_1/8B_lora", "model.lora_rank=16"]
    )
    assert h.style == "torchtune" and h.job["lora_rank"] == 16


def test_padded_batches_of_the_alpaca_samples() -> None:
    """packed=False: a batch pads to its longest sample; the expected longest of two log-normal lengths is
    2 * mean * Phi(sigma / sqrt 2)."""
    data = instruct.ALPACA_CLEANED
    longest_of_two = 2 * data.mean_tokens * NormalDist().cdf(data.sigma / math.sqrt(2))
    assert instruct.padded_length(data, 2) == pytest.approx(longest_of_two, abs=1)
    assert instruct.padded_length(data, 1) == pytest.approx(data.mean_tokens, abs=1)
    assert instruct.padded_length(data, 2, max_seq_len=256) <= 256
    h = parse_hints("recipes/full_finetune_distributed.py", ["--config", "llama3_1/8B_full"])
    assert h.job["seq_len"] == instruct.padded_length(instruct.ALPACA, 2) and h.examples == 52_002
    packed = parse_hints(
        "recipes/full_finetune_distributed.py",
        ["--config", "llama3_1/8B_full", "tokenizer.max_seq_len=4096", "dataset.packed=True"],
    )
    assert packed.job["seq_len"] == 4096 and packed.examples == math.ceil(52_002 * 270 / 4096)
    with pytest.raises(HintError, match="PackedDataset requires a max_seq_len"):
        parse_hints(
            "recipes/full_finetune_distributed.py", ["--config", "llama3_1/8B_full", "dataset.packed=True"]
        )


def test_steps_per_epoch_as_the_recipe_counts_them() -> None:
    """len(dataloader) // gradient_accumulation_steps: ceil(51760 / 8) = 6470 samples a rank, 3235 whole
    batches of 2, 404 steps of 8."""
    assert instruct.steps_per_epoch(51_760, micro_batch=2, dp=8, grad_accum=8) == 404


def test_tune_run_launches_the_recipe_file_with_the_config_file() -> None:
    """torchtune's run.py: torchrun options first, then ROOT/recipes/<recipe>.py and --config's
    ROOT/recipes/configs/<name>.yaml; standalone without a rendezvous endpoint; the dialect still reads the
    config's name from its path."""
    args = [
        "--nproc_per_node",
        "8",
        "lora_finetune_distributed",
        "--config",
        "llama3_1/8B_lora",
        "model.lora_rank=16",
    ]
    launched = launch_argv(args, "/site")
    assert launched == (
        [
            "--nproc_per_node",
            "8",
            "--standalone",
            "/site/recipes/lora_finetune_distributed.py",
            "--config",
            "/site/recipes/configs/llama3_1/8B_lora.yaml",
            "model.lora_rank=16",
        ],
        True,
    )
    h = parse_hints(launched[0][3], launched[0][4:])
    assert h.style == "torchtune" and h.model is not None and h.model.name == "llama3-8b"
    assert h.job["lora_rank"] == 16 and h.job["grad_accum"] == 8  # llama3_1/8B_lora's own values
    assert output_dir(launched[0][5]) == "/tmp/torchtune/llama3_1_8B/lora"
    # No torchrun option: the recipe in tune's own process, on one device.
    single = launch_argv(["full_finetune_single_device", "--config", "llama3_1/8B_full_single_device"], "/s")
    assert single == (
        [
            "--nproc-per-node",
            "1",
            "--standalone",
            "/s/recipes/full_finetune_single_device.py",
            "--config",
            "/s/recipes/configs/llama3_1/8B_full_single_device.yaml",
        ],
        False,
    )
    assert launch_argv(["--nnodes", "1", "full_finetune_distributed"], "/s") == (
        "The '--config' argument is required."
    )
