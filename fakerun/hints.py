"""Hints from the training script's arguments (HF Trainer, Megatron-LM, torchtitan): model and job."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fakerun import dialects, tomlfile
from fakerun.dialects import llmc_args, megatron, megatron_ds, nanogpt, torchtune
from fakerun.dialects.llmc_py import LlmcPyDialect, to_settings
from fakerun.dsconfig import DsConfig, parse_ds_config
from fakerun.frameworks import (
    hf_args,
    hf_models,
    llmc_py,
    megatron_args,
    nanogpt_ckpt,
    pytrace,
    titan_errors,
    titan_flavors,
    titan_world,
)
from fakerun.limits import MAX_EPOCHS, MAX_NNODES, MAX_NPROC_PER_NODE, MAX_SEED, MAX_SIM_SECONDS, MAX_STEPS
from fakerun.presets import ModelSpec, field_range, list_presets, load_model, model_from_hf_name
from fakerun.sim import estimates, instruct
from fakerun.sim.schedule import warmup_stable_decay

__all__ = ["ARCH_KEYS", "HintError", "Hints", "apply_arch", "parse_hints"]

# Keys of Hints.arch that apply_arch understands. seq_len is the training context, not an architecture change.
ARCH_KEYS = (
    "layers",
    "hidden",
    "ffn_hidden",
    "heads",
    "kv_heads",
    "vocab",
    "experts",
    "top_k",
    "max_position",
)
_FLAG_ARCH_KEYS = ("tied_embeddings", "bias")  # 0 or 1 (bias: 1 is biases everywhere, 0 none)
_ALL_ARCH_KEYS = (*ARCH_KEYS, *_FLAG_ARCH_KEYS, "seq_len")


class HintError(ValueError):
    """A known hint of the training script's arguments with a value the real script would refuse; one line."""


@dataclass(frozen=True)
class Hints:
    """What the training script's arguments say about the model and the job, and where each hint came from."""

    model_name: str | None = None  # as given: HF repo id or path, or torchtitan "<name>-<flavor>"
    model: ModelSpec | None = None  # the preset model_name matches, or None
    arch: dict[str, int] = field(default_factory=dict)  # apply_arch overrides (ARCH_KEYS and seq_len)
    job: dict[str, object] = field(default_factory=dict)  # make_job keyword overrides
    epochs: float | None = None  # HF --num_train_epochs, only when no --max_steps > 0 overrides it
    warmup_ratio: float | None = None  # fraction of the total steps, only when no warmup step count wins
    seed: int | None = None
    style: str = dialects.DEFAULT  # the dialect the arguments select (fakerun.dialects), its default if none
    cadence: dict[str, int] = field(default_factory=dict)  # log/eval/save intervals and eval iterations
    # HF's --logging_steps/--eval_steps/--save_steps below 1: a fraction of the run's steps (cadence key ->).
    cadence_ratio: dict[str, float] = field(default_factory=dict)
    # HF's --logging_strategy, --eval_strategy (--evaluation_strategy), --save_strategy as given: "logging",
    # "eval", "save" -> "no", "steps", "epoch" (or "best" for saves).
    strategies: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # hint name -> the argument it came from
    # Textual settings a framework echoes in its log (torchtitan's job.description, training.dataset...), as
    # given; no figure: those are in job and arch.
    settings: dict[str, str] = field(default_factory=dict)
    # "finetune" when the arguments name a pretrained checkpoint (sim/loss.py's regime), else "pretrain".
    regime: str = "pretrain"
    deepspeed: DsConfig | None = None  # the DeepSpeed JSON config the script is given, when it reads
    # What the launcher warns about before the job starts (a config file the simulation could not read).
    notices: tuple[str, ...] = ()
    # torchtune: the samples (or packs) in one pass over the config's dataset; None: fakerun's own guess.
    examples: int | None = None
    do_eval: bool = False  # HF's --do_eval: the example script evaluates once training is over
    # The collective timeout the arguments set (s): "nccl_timeout_s", and torchtitan's until step 1 ends,
    # "nccl_init_timeout_s" (sim/run.RunPlan's fields of these names).
    timeouts: dict[str, float] = field(default_factory=dict)
    # llm.c: the tokens of the training split its -i pattern names (one epoch is the run when no -x says).
    train_tokens: int | None = None
    # A program that dies at start on these arguments (llm.c's error_usage()): what each rank writes on
    # stderr, and its exit code (negative: the signal it dies of).
    script_exit: tuple[str, int] | None = None
    # What each rank prints on stdout before it dies of script_exit (or of world_exit, when the script
    # dies of nothing before its world-size check): pytrace.stdout_for's slots mark what differs by rank.
    script_stdout: str = ""
    # A check of the script that depends on the job's world size: script_exit's text and code for a world
    # size it refuses (nanoGPT's gradient_accumulation_steps % ddp_world_size), else None.
    world_exit: Callable[[int], tuple[str, int] | None] | None = None
    # script_stdout as a function of the world size (Megatron's layout line before validate_args' later
    # asserts), which jobconfig.build_run turns into script_stdout once it knows the world (it wins when set).
    world_stdout: Callable[[int], str] | None = None


# ----------------------------------------------------------------------------------------------------
# Known options

_VALUE, _FLAG, _HF_BOOL = "value", "flag", "hf-bool"


def _words(text: str) -> frozenset[str]:
    """The whitespace-separated words of `text`."""
    return frozenset(text.split())


# Flat options by canonical name (underscores). Each is accepted spelled with dashes or underscores.
_OPTIONS: dict[str, str] = {
    # Hugging Face Trainer (and the usual example scripts)
    "model_name_or_path": _VALUE,
    "config_name": _VALUE,  # run_clm.py: a config (name or path) to train from scratch, or to override
    "model_type": _VALUE,  # run_clm.py: that model type's default config, from scratch
    "torch_dtype": _VALUE,
    "tf32": _HF_BOOL,
    "save_total_limit": _VALUE,
    "per_device_train_batch_size": _VALUE,
    "per_gpu_train_batch_size": _VALUE,
    "per_device_eval_batch_size": _VALUE,
    "do_eval": _HF_BOOL,
    "gradient_accumulation_steps": _VALUE,
    "learning_rate": _VALUE,
    "max_steps": _VALUE,
    "num_train_epochs": _VALUE,
    "bf16": _HF_BOOL,
    "seq_length": _VALUE,
    "max_seq_length": _VALUE,
    "model_max_length": _VALUE,
    "block_size": _VALUE,
    "warmup_steps": _VALUE,
    "warmup_ratio": _VALUE,
    "lr_scheduler_type": _VALUE,
    "deepspeed": _VALUE,
    "deepspeed_config": _VALUE,  # DeepSpeed's add_config_arguments (--deepscale_config is its old name)
    "deepscale_config": _VALUE,
    "fsdp": _VALUE,
    "gradient_checkpointing": _HF_BOOL,
    "seed": _VALUE,
    "logging_steps": _VALUE,
    "eval_steps": _VALUE,
    "save_steps": _VALUE,
    "logging_strategy": _VALUE,
    "eval_strategy": _VALUE,
    "evaluation_strategy": _VALUE,  # transformers < 4.46's name, still accepted (deprecated) in 4.50
    "save_strategy": _VALUE,
    # LoRA through PEFT: TRL's ModelConfig (--use_peft --lora_r 16 --lora_target_modules q_proj v_proj)
    "use_peft": _HF_BOOL,
    "peft": _HF_BOOL,
    "lora_r": _VALUE,
    "lora_rank": _VALUE,
    "lora_alpha": _VALUE,
    "lora_dropout": _VALUE,
    "lora_target_modules": _VALUE,  # argparse nargs="+": every word up to the next option
    # Megatron-LM
    "num_layers": _VALUE,
    "hidden_size": _VALUE,
    "ffn_hidden_size": _VALUE,
    "num_attention_heads": _VALUE,
    "num_query_groups": _VALUE,
    "group_query_attention": _FLAG,
    "swiglu": _FLAG,
    "max_position_embeddings": _VALUE,
    "vocab_size": _VALUE,
    "padded_vocab_size": _VALUE,
    "num_experts": _VALUE,
    "moe_router_topk": _VALUE,
    "micro_batch_size": _VALUE,
    "global_batch_size": _VALUE,
    "lr": _VALUE,
    "min_lr": _VALUE,
    "lr_warmup_iters": _VALUE,
    "lr_warmup_fraction": _VALUE,
    "lr_warmup_samples": _VALUE,
    "lr_decay_style": _VALUE,
    "train_iters": _VALUE,
    "train_samples": _VALUE,
    "tensor_model_parallel_size": _VALUE,
    "pipeline_model_parallel_size": _VALUE,
    "expert_model_parallel_size": _VALUE,
    "recompute_granularity": _VALUE,
    "recompute_activations": _FLAG,
    # Megatron-LM's 2021-22 activation checkpointing (--checkpoint-activations: every layer, "uniform")
    "checkpoint_activations": _FLAG,
    "activations_checkpoint_method": _VALUE,
    "use_distributed_optimizer": _FLAG,
    "untie_embeddings_and_output_weights": _FLAG,
    "log_interval": _VALUE,
    "eval_interval": _VALUE,
    "save_interval": _VALUE,
    "eval_iters": _VALUE,
    # Megatron-LM's fp16 loss scaling and exits (HF's --fp16 is a word-taking bool; Megatron's a flag)
    "fp16": _HF_BOOL,
    "initial_loss_scale": _VALUE,
    "min_loss_scale": _VALUE,
    "loss_scale": _VALUE,
    "loss_scale_window": _VALUE,
    "hysteresis": _VALUE,
    "exit_interval": _VALUE,
    "exit_duration_in_mins": _VALUE,
    # The process groups' collective timeout: Megatron-LM's in minutes, HF TrainingArguments' in seconds
    "distributed_timeout_minutes": _VALUE,
    "ddp_timeout": _VALUE,
    "zero_stage": _VALUE,
    # nanoGPT (configurator.py: `--key=value` over train.py's globals)
    "batch_size": _VALUE,
    "max_iters": _VALUE,
    "warmup_iters": _VALUE,
    "lr_decay_iters": _VALUE,
    "n_layer": _VALUE,
    "n_head": _VALUE,
    "n_embd": _VALUE,
    "compile": _FLAG,
    # NeMo 2's recipe (nemo llm pretrain --factory NAME)
    "factory": _VALUE,
    "recipe": _VALUE,
    # Lightning's Trainer arguments as its examples' argparse spells them (LightningCLI: --trainer.*)
    "max_epochs": _VALUE,
    "accumulate_grad_batches": _VALUE,
    "gradient_clip_val": _VALUE,
    "precision": _VALUE,
    "val_check_interval": _VALUE,
    "limit_val_batches": _VALUE,
    "log_every_n_steps": _VALUE,
    "seed_everything": _VALUE,
}

# Dotted names of LightningCLI (`--trainer.max_steps 100`), NeMo 1's hydra overrides (`model.optim.lr=3e-4`)
# and NeMo 2's recipe overrides (`trainer.strategy.tensor_model_parallel_size=2`) -> the flat option meant.
_DOTTED: dict[str, str] = {
    **{
        f"trainer.{k}": k
        for k in (
            "max_steps",
            "max_epochs",
            "accumulate_grad_batches",
            "gradient_clip_val",
            "precision",
            "val_check_interval",
            "limit_val_batches",
            "log_every_n_steps",
        )
    },
    **{
        f"{section}.{k}": k
        for section in ("model", "trainer.strategy")
        for k in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "expert_model_parallel_size")
    },
    **{
        f"model.{k}": k
        for k in (
            "micro_batch_size",
            "global_batch_size",
            "num_layers",
            "hidden_size",
            "ffn_hidden_size",
            "num_attention_heads",
            "num_query_groups",
            "max_position_embeddings",
            "lr",
            "learning_rate",
        )
    },
    **{f"data.{k}": k for k in ("micro_batch_size", "global_batch_size", "seq_length", "batch_size")},
    "model.encoder_seq_length": "seq_length",
    "model.seq_length": "seq_length",
    "model.data.seq_length": "seq_length",
    "model.optim.lr": "lr",
    "optim.config.lr": "lr",
    "model.optim.sched.min_lr": "min_lr",
    "optim.lr_scheduler.min_lr": "min_lr",
    "model.optim.sched.warmup_steps": "warmup_steps",
    "optim.lr_scheduler.warmup_steps": "warmup_steps",
    "exp_manager.checkpoint_callback_params.every_n_train_steps": "save_interval",
    "log.ckpt.every_n_train_steps": "save_interval",
}
# A hydra override: `key.sub=value`, `+key=value` adds a key, `++key=value` adds or overrides it.
_HYDRA = re.compile(r"\+{0,2}([A-Za-z_]\w*(?:\.\w+)+)=(.*)", re.DOTALL)
# The top-level sections of NeMo's hydra configs: other `key.sub=value` overrides (torchtune's
# `optimizer.lr=`) are not NeMo's.
_NEMO_SECTIONS = frozenset({"trainer", "model", "exp_manager", "data", "optim", "log", "resume", "strategy"})

# torchtitan's JobConfig: every known key takes a value. Older releases' names map to the current ones.
_TITAN_KEYS = frozenset(
    {
        "job.config_file",
        "model.name",
        "model.flavor",
        "optimizer.lr",
        "lr_scheduler.warmup_steps",
        "lr_scheduler.decay_type",
        "lr_scheduler.lr_min",
        "lr_scheduler.min_lr_factor",
        "lr_scheduler.decay_ratio",
        "training.mixed_precision_param",
        "training.local_batch_size",
        "training.global_batch_size",
        "training.seq_len",
        "training.steps",
        "training.seed",
        "parallelism.data_parallel_shard_degree",
        "parallelism.data_parallel_replicate_degree",
        "parallelism.context_parallel_degree",
        "parallelism.tensor_parallel_degree",
        "parallelism.pipeline_parallel_degree",
        "parallelism.pipeline_parallel_microbatch_size",
        "parallelism.expert_parallel_degree",
        "activation_checkpoint.mode",
        "activation_checkpoint.selective_ac_option",
        "metrics.log_freq",
        "checkpoint.interval",
        "validation.freq",
        "validation.steps",
        "comm.init_timeout_seconds",
        "comm.train_timeout_seconds",
    }
)
_TITAN_OLD = {
    "training.batch_size": "training.local_batch_size",
    "training.warmup_steps": "lr_scheduler.warmup_steps",
    "training.data_parallel_shard_degree": "parallelism.data_parallel_shard_degree",
    "training.tensor_parallel_degree": "parallelism.tensor_parallel_degree",
    "experimental.pipeline_parallel_degree": "parallelism.pipeline_parallel_degree",
    "debug.seed": "training.seed",
}
# Learning-rate schedules by framework name -> sim/schedule.py's SCHEDULES (the nearest shape).
_HF_SCHEDULES = {
    "linear": "linear",
    "cosine": "cosine",
    "cosine_with_restarts": "cosine",
    "cosine_with_min_lr": "cosine",
    "cosine_warmup_with_min_lr": "cosine",
    "polynomial": "linear",  # power 1.0 by default
    "constant": "constant",
    "constant_with_warmup": "constant",
    "inverse_sqrt": "linear",
    "reduce_lr_on_plateau": "constant",
    "warmup_stable_decay": "constant",
}
# --torch_dtype: the dtype from_pretrained loads the weights in. The Trainer's AMP keeps fp32 weights as their
# own master (state_layout "fp32"); 16-bit weights train as they are, with 16-bit Adam states ("bf16").
_HF_DTYPES = {"auto": "auto", "float32": "fp32", "bfloat16": "bf16", "float16": "bf16"}
_HF_TO_ZERO = ("linear", "cosine", "cosine_with_restarts", "polynomial", "inverse_sqrt")  # decay to 0
_HF_NO_WARMUP = ("constant", "reduce_lr_on_plateau")  # HF ignores the warmup for these
_MEGATRON_SCHEDULES = {
    "cosine": "cosine",
    "linear": "linear",
    "constant": "constant",
    "inverse-square-root": "inverse-square-root",
    "wsd": "wsd",
}
# torchtitan's lr_scheduler.decay_type -> the "wsd" schedule's annealing style (sim/schedule.WSD_STYLES).
_TITAN_SCHEDULES = {"linear": "linear", "sqrt": "minus_sqrt", "cosine": "cosine"}
_TITAN_CADENCE = (
    ("log_interval", "metrics.log_freq", 10),
    ("save_interval", "checkpoint.interval", 500),
    ("eval_interval", "validation.freq", 10),
)
_TITAN_PRECISIONS = {"bfloat16": "bf16", "float32": "fp32"}
_RECOMPUTE_MEGATRON = {"full": "full", "selective": "selective"}
_RECOMPUTE_METHODS = {"uniform": "uniform", "block": "block"}  # Megatron's methods of full recompute
_RECOMPUTE_TITAN = {"none": "none", "selective": "selective", "full": "full", "memory_budget": "selective"}
_FSDP_ZERO = {"full_shard": 3, "hybrid_shard": 3, "shard_grad_op": 2, "hybrid_shard_zero2": 2, "no_shard": 0}
_FSDP_OTHER = ("offload", "auto_wrap")

_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})
_NEGATIVE_NUMBER = re.compile(r"-\.?\d")
_T = TypeVar("_T")


# ----------------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class _Given:
    """One known argument: its spelling and raw value (a string, None for a bare flag, or a TOML value)."""

    option: str  # "--learning_rate" on the command line, "training.steps" in a torchtitan file
    value: object
    where: str = ""  # the torchtitan config file, or "" for the command line

    @property
    def label(self) -> str:
        """The argument as error messages name it."""
        if self.where.endswith(".py"):
            return f"nanoGPT config {self.where!r}: {self.option}"
        if self.where:
            return f"torchtitan config {self.where!r}: {self.option}"
        return f"script argument {self.option}"

    @property
    def source(self) -> str:
        """The argument as Hints.sources names it."""
        return f"{self.option} in {self.where}" if self.where else self.option

    def fail(self, what: str) -> HintError:
        """A one-line HintError naming this argument."""
        return HintError(" ".join(f"{self.label}: {what}".split()))


def _shown(value: object) -> str:
    """repr() of a value for an error line, shortened; tables and arrays by their kind (never a deep repr)."""
    if isinstance(value, (dict, list)):
        return "a table" if isinstance(value, dict) else "an array"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}...{text[-10:]} ({len(text)} characters)"


def _model_high(name: str) -> int:
    """The largest value a ModelSpec field may take (presets' range): the cap of the hint that sets it."""
    return int(field_range(ModelSpec, name)[1])


def _int(g: _Given, low: int | None = 1, *, high: int) -> int:
    """An integer from `low` (no lower bound when None) to `high`."""
    v = g.value
    if isinstance(v, str):
        try:
            n = int(v.strip())
        except ValueError:
            raise g.fail(f"invalid int value {_shown(v)}") from None
    elif isinstance(v, int) and not isinstance(v, bool):
        n = v
    else:
        raise g.fail(f"invalid int value {_shown(v)}")
    if low is not None and n < low:
        raise g.fail(f"invalid value {_shown(v)} (must be >= {low})")
    if n > high:
        # No real job comes near: refused here, before a product of such numbers overflows the simulation.
        raise g.fail(f"invalid value {_shown(v)} (must be <= {high})")
    return n


def _float(g: _Given, *, positive: bool = True, high: float) -> float:
    """A finite float, > 0 when `positive` else >= 0, and at most `high`."""
    v = g.value
    if isinstance(v, str):
        try:
            x = float(v.strip())
        except ValueError:
            raise g.fail(f"invalid float value {_shown(v)}") from None
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        try:
            x = float(v)
        except OverflowError:  # a TOML integer beyond any float
            x = math.inf
    else:
        raise g.fail(f"invalid float value {_shown(v)}")
    if not math.isfinite(x):
        raise g.fail(f"invalid float value {_shown(v)}")
    if (x <= 0 if positive else x < 0) or x > high:
        bound = "> 0" if positive else ">= 0"
        raise g.fail(f"invalid value {_shown(v)} (must be {bound} and <= {high:g})")
    return x


def _bool(g: _Given) -> bool:
    """A boolean: a bare flag is True; HF's words (true/false, yes/no, 1/0, ...) in any case."""
    v = g.value
    if v is None:
        return True
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise g.fail(f"invalid boolean value {_shown(v)}")


def _str(g: _Given) -> str:
    """A non-empty string."""
    if not isinstance(g.value, str) or not g.value.strip():
        raise g.fail(f"invalid value {_shown(g.value)} (expected a non-empty string)")
    return g.value.strip()


def _choice(g: _Given, table: Mapping[str, str]) -> str:
    """A value of `table` chosen by its key, case-insensitively."""
    text = _str(g)
    hit = table.get(text.lower())
    if hit is None:
        raise g.fail(f"invalid choice {_shown(text)} (choose from {', '.join(table)})")
    return hit


# ----------------------------------------------------------------------------------------------------
# The command line


def _canonical(name: str) -> str:
    """The table key of an option name: underscores, torchtitan's older names mapped to the current ones."""
    key = name.replace("-", "_")
    if "." in key:
        return _DOTTED.get(key) or _TITAN_OLD.get(key, key)
    return key


def _kind(key: str) -> str | None:
    """How a known option takes its value, or None for an unknown option."""
    if "." in key:
        return _VALUE if key in _TITAN_KEYS else None
    return _OPTIONS.get(key)


def _option_names(args: Sequence[str]) -> list[str]:
    """The option names as spelled (no dashes, no "=value"; `name=` too when so given), up to a "--"."""
    names: list[str] = []
    # torchtune's `--config llama3_1/8B_lora` claims the `key.sub=value` overrides (model.lora_rank=16) that
    # would otherwise vote for NeMo's hydra.
    tune = any(a == "--config" and torchtune.config_model(b) for a, b in itertools.pairwise(args))
    for tok in args:
        if tok == "--":
            break
        if tok.startswith("--") and len(tok) > 2:
            name, eq, _ = tok[2:].partition("=")
            names.append(name)
            if eq and "." not in name:
                # nanoGPT's configurator takes only `--key=value`: the form votes apart from the name.
                names.append(name + "=")
        elif not tune and (m := _HYDRA.fullmatch(tok)) and m[1].split(".", 1)[0] in _NEMO_SECTIONS:
            names.append("<hydra>")  # NeMo's hydra overrides (`trainer.max_steps=100`) vote for NeMo
        elif tok.endswith(".py") and not tok.startswith("-"):
            names.append("<config_py>")  # nanoGPT's configurator execs a config file given as an argument
    return names


def _is_value(tok: str) -> bool:
    """Whether argparse would take `tok` as an option's value rather than as the next option."""
    return not tok.startswith("-") or tok == "-" or bool(_NEGATIVE_NUMBER.match(tok))


def _deepspeed_switch(style: str, following: str | None) -> bool:
    """Whether --deepspeed is DeepSpeed's store_true switch (add_config_arguments: --deepspeed_config names
    the file) rather than HF Trainer's option naming a JSON config; `following` is the argument after it."""
    if style.startswith("megatron"):
        return True  # Megatron-DeepSpeed's parser adds DeepSpeed's arguments to Megatron's
    if style == "deepspeed":
        # DeepSpeed's own scripts, unless the script takes a JSON file after it
        return following is None or not following.lower().endswith(".json")
    # A script of no known framework: HF's parser would refuse a --deepspeed with no value after it, a
    # DeepSpeed script's switch reads it.
    return style == dialects.DEFAULT and (following is None or not _is_value(following))


def _scan(args: Sequence[str], style: str) -> dict[str, _Given]:
    """The known options of the command line, last one wins, in the order of their last occurrence."""
    given: dict[str, _Given] = {}
    i = 0
    while i < len(args):
        tok = args[i]
        i += 1
        if tok == "--":
            break
        hydra = _HYDRA.fullmatch(tok)
        if hydra is not None:
            key = _canonical(hydra[1])
            if _kind(key) is not None:
                given.pop(key, None)
                given[key] = _Given(hydra[1], hydra[2])
            continue
        if not tok.startswith("--") or len(tok) == 2:
            continue
        name, eq, inline = tok[2:].partition("=")
        key = _canonical(name)
        kind = _kind(key)
        if kind is None:
            continue
        if key == "deepspeed" and not eq and _deepspeed_switch(style, args[i] if i < len(args) else None):
            kind = _FLAG
        option = f"--{name}"
        value: str | None
        if eq:
            value = inline
        elif key in _LISTS:
            words_given = list(itertools.takewhile(_is_value, args[i:]))
            if not words_given:
                raise HintError(f"script argument {option}: expected at least one argument")
            value = " ".join(words_given)
            i += len(words_given)
        elif kind == _VALUE:
            if i >= len(args) or not _is_value(args[i]):
                raise HintError(f"script argument {option}: expected a value")
            value = args[i]
            i += 1
        else:
            nxt = args[i] if i < len(args) else None
            takes = nxt is not None and (
                nxt.strip().lower() in _TRUE | _FALSE
                or (kind == _HF_BOOL and dialects.DIALECTS[style].hints.bool_words and _is_value(nxt))
            )
            value = nxt if takes else None
            i += takes
        given.pop(key, None)
        given[key] = _Given(option, value)
    return given


def _titan_file(g: _Given) -> dict[str, _Given]:
    """The known keys of a torchtitan TOML config file."""
    path = _str(g)
    if not g.where and not Path(path).exists():
        # ConfigManager._maybe_load_toml's open() (no `~` expansion: tomllib opens the path as given)
        missing = f"FileNotFoundError: [Errno 2] No such file or directory: {path!r}"
        raise titan_flavors.TitanError(missing, "config_file")
    try:
        text = tomlfile.read_text(str(Path(path).expanduser()))
    except (tomlfile.FileError, ValueError) as exc:  # ValueError: a NUL in the path
        raise g.fail(f"cannot read {_shown(path)}: {exc}") from None
    try:
        data = tomlfile.loads(text)
    except tomlfile.TomlError as exc:
        raise g.fail(f"invalid TOML in {_shown(path)}: {exc}") from None
    out: dict[str, _Given] = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            continue
        for name, value in table.items():
            key = _canonical(f"{section}.{name}")
            if key in _TITAN_KEYS and key != "job.config_file":
                out[key] = _Given(f"{section}.{name}", value, where=path)
    return out


def _titan_registry(args: Sequence[str]) -> tuple[dict[str, _Given], dict[str, str]]:
    """What torchtitan's `--module M --config C` config function sets: its known keys and its settings."""
    choice = titan_flavors.registry_choice(args)
    if choice is None:
        return {}, {}
    name, entry = choice
    where = f"torchtitan.models.{entry.module}.config_registry.{name}"
    values = titan_flavors.registry_values(entry)
    given = {key: _Given(key, value, where=where) for key, value in values.items()}
    return given, titan_flavors.registry_settings(name, entry)


def _ds_config(b: _Builder, g: _Given) -> None:
    """A DeepSpeed JSON config: its ZeRO stage, and for DeepSpeed's own scripts its batch sizes, lr,
    schedule and steps_per_print as hints."""
    text = _ds_text(g)
    ds = parse_ds_config(text) if text is not None else None
    if ds is None:
        return
    config = ds.user_config()
    stage = _deepspeed_stage(g, config)
    if stage is not None:
        b.set(b.job, "zero_stage", stage, g)
    b.set(b.top, "deepspeed", ds, g)
    if b.style != "deepspeed":
        return  # HF Trainer and Megatron fill the config's batch sizes and schedule from their own arguments
    ints = (
        ("train_micro_batch_size_per_gpu", "micro_batch", _model_high("micro_batch")),
        ("gradient_accumulation_steps", "grad_accum", _MAX_GRAD_ACCUM),
    )
    for name, hint, high in ints:
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            b.set(b.job, hint, _int(_Given(f"{g.option} {name}", value), high=high), g)
    gbs = config.get("train_batch_size")
    both = "micro_batch" in b.job and "grad_accum" in b.job  # the global batch follows from them and dp
    if isinstance(gbs, int) and not isinstance(gbs, bool) and not both:
        high = _model_high("global_batch")
        b.set(b.job, "global_batch", _int(_Given(f"{g.option} train_batch_size", gbs), high=high), g)
    optimizer = config.get("optimizer")
    params = optimizer.get("params") if isinstance(optimizer, dict) else None
    if isinstance(params, dict) and isinstance(params.get("lr"), (int, float)):
        b.set(b.job, "lr", _float(_Given(f"{g.option} optimizer.params.lr", params["lr"]), high=_MAX_LR), g)
    scheduler = config.get("scheduler")
    sched = scheduler.get("params") if isinstance(scheduler, dict) else None
    if isinstance(sched, dict):
        for name, hint in (("warmup_num_steps", "warmup_steps"), ("total_num_steps", "total_steps")):
            value = sched.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                low = 0 if hint == "warmup_steps" else 1
                given = _Given(f"{g.option} scheduler.params.{name}", value)
                b.set(b.job, hint, _int(given, low, high=MAX_STEPS), g)
    if "steps_per_print" in config:
        b.set(b.cadence, "log_interval", ds.steps_per_print, g)


def _ds_text(g: _Given) -> str | None:
    """The text of a DeepSpeed JSON config given inline or as a file, None if there is none to read."""
    text = g.value.strip() if isinstance(g.value, str) else ""
    if not text:
        return None  # HF: an empty --deepspeed is off
    if text.startswith("{"):
        return text
    try:
        return tomlfile.read_text(str(Path(text).expanduser()))
    except (tomlfile.FileError, ValueError):  # ValueError: a NUL in the path
        return None


def _deepspeed_stage(g: _Given, config: dict[str, Any]) -> int | None:
    """zero_optimization.stage of a DeepSpeed config, None if it has no readable zero_optimization table."""
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        return None
    stage = zero.get("stage", 0)  # DeepSpeed's default: ZeRO off
    if isinstance(stage, str) and stage.strip().isdigit():
        stage = int(stage)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise g.fail(f"invalid zero_optimization.stage {_shown(stage)} (must be 0, 1, 2 or 3)")
    return int(stage)


# ----------------------------------------------------------------------------------------------------
# From arguments to hints


class _Builder:
    """Hints being collected: later arguments overwrite earlier ones, as argparse and torchtitan do."""

    def __init__(self, style: str, given: dict[str, _Given]) -> None:
        self.style = style
        self.given = given
        self.arch: dict[str, int] = {}
        self.job: dict[str, object] = {}
        self.top: dict[str, object] = {}  # model_name, epochs, warmup_ratio, seed
        self.cadence: dict[str, int] = {}
        self.cadence_ratio: dict[str, float] = {}
        self.strategies: dict[str, str] = {}
        self.timeouts: dict[str, float] = {}
        self.sources: dict[str, str] = {}

    def set(self, where: dict[str, _T], key: str, value: _T, g: _Given) -> None:
        """Record one hint and its source."""
        where[key] = value
        self.sources[key] = g.source

    def drop(self, where: dict[str, _T], key: str) -> None:
        """Forget a hint that a later rule overrides."""
        if key in where:
            del where[key]
            self.sources.pop(key, None)

    def seq_len(self, g: _Given) -> None:
        """The training sequence length: a job override and the context apply_arch must allow."""
        n = _int(g, high=_model_high("seq_len"))
        self.set(self.job, "seq_len", n, g)
        self.set(self.arch, "seq_len", n, g)


_MAX_GRAD_ACCUM = 1 << 20
_MAX_EVAL_ITERS = 100_000
_MAX_SAMPLES = 10**15  # Megatron's sample counts: Llama 3's 15T tokens are 2e9 samples of 8k tokens
_MAX_LR = field_range(ModelSpec, "lr")[1]
_MAX_LOSS_SCALE = 2.0**64  # fp16 scales beyond 2**32 (Megatron's default start) overflow every step anyway
_MAX_HYSTERESIS = 1000
_MAX_TIMEOUT_S = int(MAX_SIM_SECONDS)  # a collective timeout (s) the simulation can wait out
_JOB_INTS: dict[str, tuple[str, int, int]] = {
    # option -> (make_job keyword, lowest value, highest value)
    "per_device_train_batch_size": ("micro_batch", 1, _model_high("micro_batch")),
    "per_gpu_train_batch_size": ("micro_batch", 1, _model_high("micro_batch")),
    "micro_batch_size": ("micro_batch", 1, _model_high("micro_batch")),
    "training.local_batch_size": ("micro_batch", 1, _model_high("micro_batch")),
    "batch_size": ("micro_batch", 1, _model_high("micro_batch")),
    "max_iters": ("total_steps", 1, MAX_STEPS),
    "warmup_iters": ("warmup_steps", 0, MAX_STEPS),
    "gradient_accumulation_steps": ("grad_accum", 1, _MAX_GRAD_ACCUM),
    "accumulate_grad_batches": ("grad_accum", 1, _MAX_GRAD_ACCUM),
    "global_batch_size": ("global_batch", 1, _model_high("global_batch")),
    "train_iters": ("total_steps", 1, MAX_STEPS),
    "training.steps": ("total_steps", 1, MAX_STEPS),
    "lr_warmup_iters": ("warmup_steps", 0, MAX_STEPS),
    "lr_scheduler.warmup_steps": ("warmup_steps", 0, MAX_STEPS),
    "tensor_model_parallel_size": ("tp", 1, _model_high("tp")),
    "parallelism.tensor_parallel_degree": ("tp", 1, _model_high("tp")),
    "pipeline_model_parallel_size": ("pp", 1, _model_high("pp")),
    "parallelism.pipeline_parallel_degree": ("pp", 1, _model_high("pp")),
    "expert_model_parallel_size": ("ep", 1, _model_high("ep")),
    "parallelism.expert_parallel_degree": ("ep", 1, _model_high("ep")),
}
_CADENCE: dict[str, tuple[str, int, int]] = {
    # option -> (cadence key, lowest value, highest value); 0 turns periodic evaluation or saving off
    "logging_steps": ("log_interval", 1, MAX_STEPS),
    "log_interval": ("log_interval", 1, MAX_STEPS),
    "metrics.log_freq": ("log_interval", 1, MAX_STEPS),
    "log_every_n_steps": ("log_interval", 1, MAX_STEPS),
    "eval_steps": ("eval_interval", 0, MAX_STEPS),
    "eval_interval": ("eval_interval", 0, MAX_STEPS),
    "validation.freq": ("eval_interval", 0, MAX_STEPS),
    "save_steps": ("save_interval", 0, MAX_STEPS),
    "save_interval": ("save_interval", 0, MAX_STEPS),
    "checkpoint.interval": ("save_interval", 0, MAX_STEPS),
    "eval_iters": ("eval_iters", 1, _MAX_EVAL_ITERS),
    "validation.steps": ("eval_iters", 1, _MAX_EVAL_ITERS),
}
_LISTS = frozenset({"lora_target_modules"})
_MAX_LORA_RANK = 65536
# TRL's ModelConfig.lora_r default, when --use_peft names no rank.
TRL_LORA_R = 16
_HF_RATIO_STEPS = frozenset({"logging_steps", "eval_steps", "save_steps"})
# HF's IntervalStrategy values, and SaveStrategy's (transformers 4.50 adds "best": save on a new best metric).
_INTERVAL = {name: name for name in ("no", "steps", "epoch")}
_HF_STRATEGIES: dict[str, tuple[str, dict[str, str]]] = {
    "logging_strategy": ("logging", _INTERVAL),
    "eval_strategy": ("eval", _INTERVAL),
    "evaluation_strategy": ("eval", _INTERVAL),
    "save_strategy": ("save", {**_INTERVAL, "best": "best"}),
}
# Lightning's int-or-fraction options: an int counts batches, a float is a fraction of the epoch (or of the
# validation set), which the simulation leaves to its own cadence.
_PL_INT_OR_FRACTION = {"val_check_interval": "eval_interval", "limit_val_batches": "eval_iters"}
# Trainer(precision=...) values Lightning 2 accepts; the 16-bit float ones train with a loss scaler.
_PL_PRECISIONS = {
    **dict.fromkeys(("16", "16-mixed", "16-true", "transformer-engine-float16"), "fp16"),
    **dict.fromkeys(("bf16", "bf16-mixed", "bf16-true", "32", "32-true", "64", "64-true"), "bf16"),
    "transformer-engine": "bf16",
}
# NeMo 2 recipe names (`--factory llama31_70b`) whose shape is a preset's under another name.
_NEMO_RECIPES = {
    "llama31_8b": "llama3-8b",
    "llama31_70b": "llama3-70b",
    "llama31_405b": "llama3-405b",
    "llama32_1b": "llama3.2-1b",
    "llama32_3b": "llama3.2-3b",
    "qwen25_7b": "qwen2.5-7b",
    "qwen25_72b": "qwen2.5-72b",
}
# Nemotron recipes: no preset, so their shape over a Llama 3 preset (NeMo's llm/gpt/model/nemotron.py: untied
# embeddings, a 256k vocabulary).
_NEMOTRON = {
    "nemotron3_8b": {"layers": 32, "hidden": 4096, "ffn_hidden": 16384, "heads": 32, "kv_heads": 32},
    "nemotron4_15b": {"layers": 32, "hidden": 6144, "ffn_hidden": 24576, "heads": 48, "kv_heads": 8},
    "nemotron4_340b": {"layers": 96, "hidden": 18432, "ffn_hidden": 73728, "heads": 96, "kv_heads": 8},
}
_ARCH_INTS: dict[str, str] = {
    "num_layers": "layers",
    "hidden_size": "hidden",
    "ffn_hidden_size": "ffn_hidden",
    "num_attention_heads": "heads",
    "max_position_embeddings": "max_position",
    "vocab_size": "vocab",
    "padded_vocab_size": "vocab",
    "num_experts": "experts",
    "moe_router_topk": "top_k",
    "n_layer": "layers",
    "n_head": "heads",
    "n_embd": "hidden",
}
_SEQ_LEN = frozenset({"seq_length", "max_seq_length", "model_max_length", "block_size", "training.seq_len"})
_LATER = frozenset(
    {
        "num_query_groups",
        "group_query_attention",
        "swiglu",
        "train_samples",
        "lr_warmup_samples",
        "model.name",
        "model.flavor",
        "lr_scheduler.lr_min",
        "lr_scheduler.min_lr_factor",
        "parallelism.pipeline_parallel_microbatch_size",
        "parallelism.data_parallel_replicate_degree",
        "parallelism.context_parallel_degree",
        "activation_checkpoint.selective_ac_option",
        "job.config_file",
        "untie_embeddings_and_output_weights",
        "lr_decay_iters",
        "compile",
    }
)


def _one(b: _Builder, key: str, g: _Given) -> None:
    """Turn one known argument into hints (options read together with others wait for _finish)."""
    if key in _JOB_INTS:
        name, low, high = _JOB_INTS[key]
        b.set(b.job, name, _int(g, low, high=high), g)
    elif key in _HF_RATIO_STEPS and (ratio := _float(g, high=float(MAX_STEPS))) < 1:
        # HF also takes a fraction of the run (0.1): the interval is known once the run's length is.
        b.drop(b.cadence, _CADENCE[key][0])
        b.set(b.cadence_ratio, _CADENCE[key][0], ratio, g)
    elif key in ("use_peft", "peft"):
        b.set(b.top, "use_peft", _bool(g), g)
    elif key == "do_eval":
        b.set(b.top, "do_eval", _bool(g), g)
    elif key == "per_device_eval_batch_size":
        _int(g, high=_model_high("micro_batch"))  # checked; the Trainer echoes it (settings)
    elif key in ("lora_r", "lora_rank"):
        b.set(b.job, "lora_rank", _int(g, high=_MAX_LORA_RANK), g)
    elif key == "lora_target_modules":
        b.set(b.job, "lora_targets", tuple(_str(g).replace(",", " ").split()), g)
    elif key in ("lora_alpha", "lora_dropout"):
        _float(g, positive=False, high=float(_MAX_LORA_RANK))  # checked; no figure shows it
    elif key in _HF_STRATEGIES:
        name, choices = _HF_STRATEGIES[key]
        b.set(b.strategies, name, _choice(g, choices), g)
    elif key in _CADENCE:
        name, low, high = _CADENCE[key]
        b.drop(b.cadence_ratio, name)
        b.set(b.cadence, name, _int(g, low, high=high), g)
    elif key in _ARCH_INTS:
        arch_key = _ARCH_INTS[key]
        b.set(b.arch, arch_key, _int(g, high=_model_high(arch_key)), g)
    elif key in _SEQ_LEN:
        b.seq_len(g)
    elif key in ("learning_rate", "lr", "optimizer.lr"):
        b.set(b.job, "lr", _float(g, high=_MAX_LR), g)
    elif key == "min_lr":
        b.set(b.job, "min_lr", _float(g, positive=False, high=_MAX_LR), g)
    elif key == "model_name_or_path":
        b.set(b.top, "model", _str(g), g)
    elif key in ("config_name", "model_type"):
        b.set(b.top, key, _str(g), g)
    elif key == "torch_dtype":
        dtype = _choice(g, _HF_DTYPES)
        if dtype != "auto":
            b.set(b.job, "state_layout", dtype, g)
    elif key == "save_total_limit":
        _int(g, 0, high=MAX_STEPS)  # checked; the Trainer's rotation reads it (settings)
    elif key == "tf32":
        _bool(g)  # TF32 matmuls: the simulation's fp32 work is already at tensor-core rates
    elif key == "max_steps":
        steps = _int(g, None, high=MAX_STEPS)  # HF: -1 (the default) or <= 0 leaves the epochs in charge
        if steps > 0:
            b.set(b.job, "total_steps", steps, g)
    elif key == "num_train_epochs":
        b.set(b.top, "epochs", _float(g, high=MAX_EPOCHS), g)
    elif key == "max_epochs":
        epochs = _int(g, -1, high=int(MAX_EPOCHS))  # Lightning: -1 (or 0) leaves max_steps in charge
        if epochs > 0:
            b.set(b.top, "epochs", float(epochs), g)
    elif key in _PL_INT_OR_FRACTION:
        text = _str(g)
        if text.isdigit() and int(text) > 0:
            name = _PL_INT_OR_FRACTION[key]
            b.set(b.cadence, name, _int(g, high=_MAX_EVAL_ITERS if name == "eval_iters" else MAX_STEPS), g)
        else:
            _float(g, positive=False, high=1.0)  # a fraction of the epoch: Lightning refuses more than 1.0
    elif key == "gradient_clip_val":
        clip = _float(g, positive=False, high=1e6)
        if clip > 0:  # 0 turns clipping off; the simulated norm is clipped at any positive threshold
            b.set(b.job, "grad_clip", clip, g)
    elif key == "precision":
        b.set(b.job, "precision", _choice(g, _PL_PRECISIONS), g)
    elif key == "seed_everything":
        b.set(b.top, "seed", _int(g, 0, high=MAX_SEED), g)
    elif key in ("factory", "recipe"):
        _nemo_recipe(b, g)
    elif key == "warmup_steps":
        _hf_warmup(b, g)
    elif key in ("warmup_ratio", "lr_warmup_fraction"):
        b.set(b.top, "warmup_ratio", _float(g, positive=False, high=1.0), g)
    elif key == "seed" or key == "training.seed":
        b.set(b.top, "seed", _int(g, 0, high=MAX_SEED), g)
    elif key == "lr_scheduler_type":
        _hf_schedule(b, g)
    elif key == "lr_decay_style":
        b.set(b.job, "lr_schedule", _choice(g, _MEGATRON_SCHEDULES), g)
    elif key == "lr_scheduler.decay_type":
        _choice(g, _TITAN_SCHEDULES)  # checked here, used by _titan_schedule
    elif key == "lr_scheduler.decay_ratio":
        b.set(b.top, "decay_ratio", _float(g, positive=False, high=1.0), g)  # _finish_titan's schedule
    elif key == "training.mixed_precision_param":
        _choice(g, _TITAN_PRECISIONS)  # FSDP's compute dtype; the states stay fp32 either way
    elif key in ("deepspeed_config", "deepscale_config") or (key == "deepspeed" and isinstance(g.value, str)):
        _ds_config(b, g)
    elif key == "deepspeed":
        pass  # DeepSpeed's bare --deepspeed flag
    elif key == "fsdp":
        _hf_fsdp(b, g)
    elif key == "fp16":
        if _bool(g):
            b.set(b.job, "precision", "fp16", g)
    elif key in ("initial_loss_scale", "min_loss_scale"):
        b.set(b.job, key, _float(g, high=_MAX_LOSS_SCALE), g)
    elif key == "loss_scale":
        b.set(b.job, "static_loss_scale", _float(g, high=_MAX_LOSS_SCALE), g)
    elif key == "loss_scale_window":
        b.set(b.job, "loss_scale_window", _int(g, high=MAX_STEPS), g)
    elif key == "hysteresis":
        b.set(b.job, "hysteresis", _int(g, high=_MAX_HYSTERESIS), g)
    elif key == "exit_interval":
        # argparse's int; 0 (falsy) never exits. The run ends at its first multiple (sim/run.py).
        b.set(b.cadence, "exit_interval", _int(g, 0, high=MAX_STEPS), g)
    elif key == "exit_duration_in_mins":
        b.set(b.cadence, "exit_minutes", _int(g, 0, high=MAX_STEPS), g)
    elif key == "zero_stage":
        b.set(b.job, "zero_stage", _int(g, 0, high=3), g)
    elif key == "distributed_timeout_minutes":
        b.set(b.timeouts, "nccl_timeout_s", 60.0 * _int(g, high=_MAX_TIMEOUT_S // 60), g)
    elif key in ("ddp_timeout", "comm.train_timeout_seconds"):
        b.set(b.timeouts, "nccl_timeout_s", float(_int(g, high=_MAX_TIMEOUT_S)), g)
    elif key == "comm.init_timeout_seconds":
        b.set(b.timeouts, "nccl_init_timeout_s", float(_int(g, high=_MAX_TIMEOUT_S)), g)
    elif key == "bf16":
        _bool(g)  # the simulation always trains in BF16; the value must still be one HF accepts
    elif key == "gradient_checkpointing":
        b.set(b.job, "recompute", "full" if _bool(g) else "none", g)
    elif key == "recompute_granularity":
        b.set(b.job, "recompute", _choice(g, _RECOMPUTE_MEGATRON), g)
    elif key == "recompute_activations":
        if _bool(g):
            b.set(b.job, "recompute", "selective", g)
    elif key == "checkpoint_activations":
        if _bool(g):
            b.set(b.job, "recompute", "full", g)
    elif key == "activations_checkpoint_method":
        _choice(g, _RECOMPUTE_METHODS)
        b.set(b.job, "recompute", "full", g)
    elif key == "activation_checkpoint.mode":
        b.set(b.job, "recompute", _choice(g, _RECOMPUTE_TITAN), g)
    elif key == "use_distributed_optimizer":
        if _bool(g):
            b.set(b.job, "zero_stage", 1, g)
    elif key == "parallelism.data_parallel_shard_degree":
        # 0 or below -1: ParallelDims refuses it on the ranks (frameworks/titan_world.py)
        shard = _int(g, None, high=MAX_NNODES * MAX_NPROC_PER_NODE)
        b.set(b.job, "zero_stage", 0 if shard == 1 else 3, g)  # FSDP shards everything (ZeRO-3)
    elif key == "training.global_batch_size":
        gbs = _int(g, -1, high=_model_high("global_batch"))
        if gbs == 0:
            raise g.fail(f"invalid value {g.value!r} (must be -1 or >= 1)")
        if gbs > 0:  # -1: local batch x data parallel size
            b.set(b.job, "global_batch", gbs, g)
    else:
        assert key in _LATER, key


def _nemo_recipe(b: _Builder, g: _Given) -> None:
    """NeMo 2's recipe (`--factory llama3_8b`, `llm.llama3_70b.pretrain_recipe(num_nodes=2)`): its model."""
    name = _str(g).split("(", 1)[0].strip()
    skip = ("llm", "recipes", "pretrain_recipe", "finetune_recipe")
    parts = [p for p in name.lower().split(".") if p not in skip]
    recipe = parts[-1] if parts else ""
    shape = _NEMOTRON.get(recipe)
    if shape is not None:
        b.set(b.top, "model", "llama3-8b", g)
        for arch_key, value in {**shape, "vocab": 256000, "tied_embeddings": 0}.items():
            b.set(b.arch, arch_key, value, g)
    elif recipe:
        b.set(b.top, "model", _NEMO_RECIPES.get(recipe, recipe), g)


def _hf_model(top: Mapping[str, object]) -> tuple[str | None, ModelSpec | None, str | None]:
    """The model an HF script builds (run_clm.py: --config_name's config over --model_name_or_path's, or
    --model_type's defaults from scratch): its name, architecture and the line saying what was assumed."""
    for key in ("config_name", "model"):
        name = top.get(key)
        if isinstance(name, str) and name.strip():
            resolved = hf_models.resolve(name)
            preset = model_from_hf_name(name)  # a shipped preset's name or alias (llama3-8b) is still one
            model = resolved.model or preset
            if preset is not None and model is not None and preset.params == model.params:
                # The preset of this checkpoint, under its name, with the script's context and config.json.
                model = dataclasses.replace(
                    preset, seq_len=model.seq_len, hf_config=model.hf_config, hf_params=model.hf_params
                )
            return name, model, resolved.notice
    model_type = top.get("model_type")
    if isinstance(model_type, str):
        return model_type, hf_models.from_model_type(model_type), None
    return None, None, None


def _hf_warmup(b: _Builder, g: _Given) -> None:
    """HF --warmup_steps: a step count, or (newer transformers) a float below 1 meaning a ratio."""
    try:
        x = float(g.value.strip()) if isinstance(g.value, str) else math.nan
    except ValueError:
        x = math.nan
    if 0 < x < 1:
        b.set(b.top, "warmup_ratio", x, g)
        b.drop(b.job, "warmup_steps")
    elif 1 <= x <= MAX_STEPS and x.is_integer():
        b.set(b.job, "warmup_steps", int(x), g)
    else:
        b.set(b.job, "warmup_steps", _int(g, 0, high=MAX_STEPS), g)


def _hf_schedule(b: _Builder, g: _Given) -> None:
    """HF --lr_scheduler_type: the nearest simulated shape; HF's decaying schedules end at 0."""
    text = _str(g).lower()
    b.set(b.job, "lr_schedule", _choice(g, _HF_SCHEDULES), g)
    if text in _HF_TO_ZERO:
        b.set(b.job, "min_lr", 0.0, g)


def _hf_fsdp(b: _Builder, g: _Given) -> None:
    """HF --fsdp "full_shard auto_wrap ...": the sharding option as a ZeRO stage."""
    text = _str(g) if isinstance(g.value, str) and g.value.strip() else ""
    if not text or text.lower() in _FALSE:
        return
    if text.lower() in _TRUE:
        b.set(b.job, "zero_stage", 3, g)
        return
    for word in text.replace(",", " ").split():
        w = word.lower()
        if w in _FSDP_ZERO:
            b.set(b.job, "zero_stage", _FSDP_ZERO[w], g)
        elif w not in _FSDP_OTHER:
            raise g.fail(
                f"invalid choice {_shown(word)} (choose from {', '.join((*_FSDP_ZERO, *_FSDP_OTHER))})"
            )


def _finish(b: _Builder) -> None:
    """Rules that read several arguments together, applied after all of them."""
    given = b.given
    _finish_megatron(b, given)
    _finish_titan(b, given)
    if b.style == "nanogpt":
        _finish_nanogpt(b, given)
    # Warmup: a positive step count beats a ratio (HF); a zero count leaves the ratio in charge.
    if "warmup_ratio" in b.top and "warmup_steps" in b.job:
        if b.job["warmup_steps"] == 0:
            b.drop(b.job, "warmup_steps")
        else:
            b.drop(b.top, "warmup_ratio")
    sched = given.get("lr_scheduler_type")
    if sched is not None and _str(sched).lower() in _HF_NO_WARMUP:
        b.drop(b.top, "warmup_ratio")
        b.set(b.job, "warmup_steps", 0, sched)
    if "total_steps" in b.job:
        b.drop(b.top, "epochs")
    _finish_lora(b)


def _finish_lora(b: _Builder) -> None:
    """LoRA: on with --use_peft (TRL's rank 16 unless given) or LoRA options, off if --use_peft false."""
    peft = b.top.get("use_peft")
    given = any(k in b.job for k in ("lora_rank", "lora_targets"))
    if peft is False or (peft is None and not given):
        b.drop(b.job, "lora_rank")
        b.drop(b.job, "lora_targets")
    elif "lora_rank" not in b.job:
        source = b.given.get("use_peft") or b.given.get("peft") or b.given["lora_target_modules"]
        b.set(b.job, "lora_rank", TRL_LORA_R, source)


def _finish_megatron(b: _Builder, given: Mapping[str, _Given]) -> None:
    """Megatron's derived values: samples to iterations, and (Megatron style) its architecture defaults."""
    rc = given.get("recompute_activations")
    if rc is not None and _bool(rc):
        # validate_args turns --recompute-activations into selective whatever --recompute-granularity says.
        b.set(b.job, "recompute", "selective", rc)
    gbs = b.job.get("global_batch")
    for key, name in (("train_samples", "total_steps"), ("lr_warmup_samples", "warmup_steps")):
        g = given.get(key)
        if g is None:
            continue
        samples = _int(g, 1 if key == "train_samples" else 0, high=_MAX_SAMPLES)
        if name in b.job or not isinstance(gbs, int):
            continue  # iterations given too, or no global batch to divide by
        steps = samples // gbs
        if key == "train_samples" and steps < 1:
            raise g.fail(f"{samples} samples make no step of {gbs} (--global-batch-size)")
        b.set(b.job, name, steps, g)
    groups = given.get("num_query_groups")
    n_groups = _int(groups, high=_model_high("kv_heads")) if groups is not None else None
    gqa = given.get("group_query_attention")
    if not dialects.DIALECTS[b.style].hints.arch_defaults:
        if groups is not None and n_groups is not None:
            b.set(b.arch, "kv_heads", n_groups, groups)
        return
    heads = given.get("num_attention_heads")
    if gqa is not None and _bool(gqa):
        b.set(b.arch, "kv_heads", n_groups if n_groups is not None else 1, groups or gqa)
    elif heads is not None:
        b.set(b.arch, "kv_heads", b.arch["heads"], heads)  # no --group-query-attention: multi-head attention
    hidden = given.get("hidden_size")
    if hidden is not None and "ffn_hidden" not in b.arch:
        swiglu = given.get("swiglu")
        h = b.arch["hidden"]
        ffn = int(4 * h * 2 / 3 / 64) * 64 if swiglu is not None and _bool(swiglu) else 4 * h
        b.set(b.arch, "ffn_hidden", ffn, hidden)
    experts = given.get("num_experts")
    if experts is not None and b.arch["experts"] > 1 and "top_k" not in b.arch:
        b.set(b.arch, "top_k", 2, experts)  # --moe-router-topk defaults to 2
    untie = given.get("untie_embeddings_and_output_weights")
    if untie is not None or hidden is not None:
        # Megatron ties the LM head to the embedding unless told otherwise (Llama recipes untie).
        tied = not (untie is not None and _bool(untie))
        b.set(b.arch, "tied_embeddings", int(tied), untie or hidden)  # type: ignore[arg-type]


def _finish_nanogpt(b: _Builder, given: Mapping[str, _Given]) -> None:
    """nanoGPT: GPT-2 unless told otherwise, a 4h MLP, and gradient_accumulation_steps over the whole job."""
    if "model" not in b.top:
        b.top["model"] = "gpt2"
    hidden = given.get("n_embd")
    if hidden is not None and "ffn_hidden" not in b.arch:
        b.set(b.arch, "ffn_hidden", 4 * b.arch["hidden"], hidden)
    accum = given.get("gradient_accumulation_steps")
    if accum is not None and "global_batch" not in b.job:
        # train.py divides it by the world size: batch_size x this is the job's batch in sequences.
        micro = b.job.get("micro_batch", 12)  # train.py's default batch_size
        assert isinstance(micro, int)
        b.drop(b.job, "grad_accum")
        b.set(b.job, "global_batch", _int(accum, high=_MAX_GRAD_ACCUM) * micro, accum)
    for key in ("compile", "lr_decay_iters"):
        g = given.get(key)
        if g is not None:
            _bool(g) if key == "compile" else _int(g, 1, high=MAX_STEPS)  # values the real script accepts
    iters = given.get("max_iters")
    if iters is not None:
        # The loop breaks once iter_num > max_iters: iterations 0 to max_iters, one more than max_iters.
        b.set(b.job, "total_steps", _int(iters, 1, high=MAX_STEPS - 1) + 1, iters)
    if "eval_interval" in b.cadence:
        # A checkpoint follows each evaluation (after iteration 0), not a cadence of its own.
        b.set(b.cadence, "save_interval", b.cadence["eval_interval"], given["eval_interval"])


def _finish_titan(b: _Builder, given: Mapping[str, _Given]) -> None:
    """torchtitan's model from its flavor table, its JobConfig defaults, pipeline micro batches, the minimum
    learning rate, and the figures its ranks check against the world size (titan_world.py)."""
    name, flavor = given.get("model.name"), given.get("model.flavor")
    last = flavor or name
    titan = b.style == "titan"
    if last is not None or titan:  # torchtitan's defaults: llama3, debugmodel
        model, variant = _str(name) if name else "llama3", _str(flavor) if flavor else "debugmodel"
        named = last or _Given("model.flavor", "debugmodel", where="torchtitan's JobConfig")
        b.set(b.top, "model", f"{model}-{variant}", named)
        try:
            b.top["spec"] = titan_flavors.flavor_model(model, variant)
        except titan_flavors.TitanError as exc:
            if exc.where:  # torchtitan's own refusal, on every rank
                b.top["script_exit"] = (titan_errors.traceback_text(exc.where, exc.exception), 1)
            else:
                b.top["notice"] = (
                    f"torchtitan model {model} (flavor {variant}) is not simulated: fakerun's default model "
                    "stands in for it"
                )
    pp = b.job.get("pp")
    mbs_given = given.get("parallelism.pipeline_parallel_microbatch_size")
    mbs = _int(mbs_given, high=_model_high("micro_batch")) if mbs_given is not None else 1
    local = given.get("training.local_batch_size")
    pipelined = isinstance(pp, int) and pp > 1
    if pipelined and (local is not None or mbs_given is not None):
        # With pipeline stages, each local batch runs as local/mbs micro batches of mbs sequences.
        if local is not None:
            n_local = _int(local, high=_model_high("micro_batch"))
            if n_local % mbs:
                raise local.fail(
                    f"local batch size {n_local} is not divisible by the pipeline micro batch {mbs}"
                )
            if "global_batch" not in b.job:
                b.set(b.job, "grad_accum", n_local // mbs, local)
        source = mbs_given or local
        if source is not None:
            b.set(b.job, "micro_batch", mbs, source)
    if titan and not pipelined and "global_batch" not in b.job and "grad_accum" not in b.job:
        # training.global_batch_size's default (-1) is local_batch_size x the data-parallel degree: one
        # micro batch per step, not the preset's global batch.
        b.set(b.job, "grad_accum", 1, local or _Given("training.global_batch_size", "-1"))
    if titan:
        # Not an argument: torchtitan's MixedPrecisionPolicy (or AMP) keeps fp32 parameters and reduces the
        # gradients in fp32 (mixed_precision_reduce = "float32"), whatever the configuration.
        b.set(b.job, "state_layout", "fp32", _Given("training.mixed_precision_param", "float32"))
        b.set(b.job, "fp32_grad_buffer", True, _Given("training.mixed_precision_reduce", "float32"))
        # Trainer.__init__ sets the rank's device before any CUDA call: no stray contexts on device 0.
        b.set(b.job, "device_first", True, _Given("torchtitan's Trainer", "set_device"))
        _titan_schedule(b, given)
        # JobConfig's metrics.log_freq, checkpoint.interval and validation.freq when the arguments are silent.
        for key, option, default in _TITAN_CADENCE:
            if key not in b.cadence:
                b.set(b.cadence, key, default, _Given(option, str(default), where="torchtitan's JobConfig"))
        b.top["titan"] = _titan_figures(b, given)
        _titan_context_parallel(b, given)
        ep = b.job.get("ep")
        if isinstance(ep, int) and ep > 1:
            # Experts are not split over the tensor-parallel ranks (expert_tensor_parallel_degree 1).
            b.set(b.job, "etp", 1, given.get("parallelism.expert_parallel_degree") or _Given("etp", "1"))
        sac = given.get("activation_checkpoint.selective_ac_option")
        if sac is not None and _str(sac) == "op" and b.job.get("recompute") == "selective":
            b.set(b.job, "recompute", "op", sac)  # per-op SAC (an int: every nth layer, as "selective")
    lr_min = given.get("lr_scheduler.min_lr_factor") or given.get("lr_scheduler.lr_min")
    if lr_min is not None or titan:
        ratio = _float(lr_min, positive=False, high=1.0) if lr_min is not None else 0.0
        spec = b.top.get("spec")
        lr = b.job.get("lr", spec.lr if isinstance(spec, ModelSpec) else None)
        if isinstance(lr, float):
            b.set(b.job, "min_lr", lr * ratio, lr_min or _Given("lr_scheduler.min_lr_factor", "0.0"))


def _titan_schedule(b: _Builder, given: Mapping[str, _Given]) -> None:
    """build_lr_schedulers' linear_warmup_stable_decay as a "wsd" schedule: a warmup longer than the run cut
    to the run, then the peak, then decay_type (default linear) over decay_ratio of the steps (default: all
    after the warmup), ending one virtual step past the run so the last step's lr stays above the floor."""
    decay_given = given.get("lr_scheduler.decay_type")
    style = _choice(decay_given, _TITAN_SCHEDULES) if decay_given is not None else "linear"
    ratio = b.top.get("decay_ratio")
    source = (
        given.get("lr_scheduler.decay_ratio") or decay_given or _Given("lr_scheduler.decay_type", "linear")
    )
    spec = b.top.get("spec")
    total = b.job.get("total_steps", spec.total_steps if isinstance(spec, ModelSpec) else None)
    warmup = b.job.get("warmup_steps", spec.warmup_steps if isinstance(spec, ModelSpec) else None)
    if not (isinstance(total, int) and isinstance(warmup, int)):
        return
    warm, end, steps = warmup_stable_decay(warmup, total, ratio if isinstance(ratio, float) else None)
    if warm != warmup:
        b.set(b.job, "warmup_steps", warm, given.get("lr_scheduler.warmup_steps") or given["training.steps"])
    b.set(b.job, "lr_schedule", "wsd", source)
    b.set(b.job, "decay_steps", end, source)
    b.set(b.job, "wsd_decay_steps", steps, source)
    b.set(b.job, "wsd_style", style, source)


def _titan_context_parallel(b: _Builder, given: Mapping[str, _Given]) -> None:
    """context_parallel_degree > 1 as the job's cp: ParallelDims' dp_shard is the world over dp_replicate x cp
    x tp x pp, the batch counts whole sequences, each rank holds 1/cp of every one and FSDP shards over
    dp_shard x cp (JobSpec.dp_cp). A degree or sequence torchtitan refuses is its ranks' death
    (titan_world.py), before the job is built."""
    g = given.get("parallelism.context_parallel_degree")
    figures = b.top.get("titan")
    if g is None or not isinstance(figures, dict):
        return
    cp = int(figures["parallelism.context_parallel_degree"])
    if cp > 1:
        b.set(b.job, "cp", cp, g)


def _titan_figures(b: _Builder, given: Mapping[str, _Given]) -> dict[str, str]:
    """What torchtitan's ranks check against the world size (frameworks/titan_world.py), as given or by
    JobConfig's defaults: the data-parallel degrees, context parallelism, the local and global batch."""
    high = MAX_NNODES * MAX_NPROC_PER_NODE
    out: dict[str, str] = {}
    for key, default in (
        ("parallelism.data_parallel_replicate_degree", 1),
        ("parallelism.data_parallel_shard_degree", -1),
        ("parallelism.context_parallel_degree", 1),
        ("training.global_batch_size", -1),
    ):
        g = given.get(key)
        out[key] = str(
            _int(g, None, high=high if "parallelism" in key else _model_high("global_batch"))
            if g
            else default
        )
    for key in ("model.name", "model.flavor"):  # the registry's too: the log names the model by them
        g = given.get(key)
        if g is not None:
            out[key] = _str(g)
    local = given.get("training.local_batch_size")
    spec = b.top.get("spec")
    default_local = spec.micro_batch if isinstance(spec, ModelSpec) else 8
    out["training.local_batch_size"] = str(
        _int(local, high=_model_high("micro_batch")) if local is not None else default_local
    )
    return out


# Arguments that start the run from pretrained weights: HF's --model_name_or_path (run_clm trains from scratch
# with --config_name instead), Megatron's --pretrained-checkpoint and --finetune, PEFT/LoRA switches (trl,
# LLaMA-Factory's --finetuning_type), torchtitan's initial load path.
_FINETUNE_OPTIONS = frozenset(
    {
        "model_name_or_path",
        "pretrained_checkpoint",
        "finetune",
        "use_peft",
        "peft",
        "lora_r",
        "lora_rank",
        "lora_alpha",
        "lora_target_modules",
        "finetuning_type",
        "checkpoint.initial_load_path",
    }
)
# Fine-tuning scripts and recipes by name (torchtune's lora_finetune_distributed, trl's sft.py, finetune.py).
_FINETUNE_SCRIPT = re.compile(r"fine_?tun|lora|qlora|peft|(^|[/_-])(sft|dpo|orpo|kto)([/_.-]|$)")


def _regime(script: str, args: Sequence[str]) -> str:
    """ "finetune" when the arguments or the script name a pretrained checkpoint to start from."""
    values: dict[str, str] = {}
    for i, tok in enumerate(args):
        if tok == "--":
            break
        if not tok.startswith("--") or len(tok) == 2:
            continue
        name, eq, value = tok[2:].partition("=")
        if not eq:
            value = args[i + 1] if i + 1 < len(args) and _is_value(args[i + 1]) else ""
        values[name.replace("-", "_")] = value
    for name, value in values.items():
        if name in _FINETUNE_OPTIONS and value.strip().lower() not in _FALSE:
            return "finetune"
    # Megatron's --load is a pretrained checkpoint unless it is the run's own --save folder (a resumption).
    load = values.get("load", "").rstrip("/")
    if load and load != values.get("save", "").rstrip("/"):
        return "finetune"
    if _FINETUNE_SCRIPT.search(script.replace("\\", "/").lower()):
        return "finetune"
    return "pretrain"


# torchtune's config overrides (`key=value` after --config) -> the flat option they mean here.
_TUNE_KEYS = {
    "batch_size": "batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "optimizer.lr": "optimizer.lr",
    "seed": "seed",
    "lr_scheduler.num_warmup_steps": "warmup_iters",
    "log_every_n_steps": "log_interval",
}
_NULL = frozenset({"null", "none", "~"})


def _tune_list(g: _Given) -> tuple[str, ...]:
    """A YAML flow list as OmegaConf reads an override: `[q_proj,v_proj]`, quotes optional."""
    text = _str(g)
    if not (text.startswith("[") and text.endswith("]")):
        raise g.fail(f"invalid value {_shown(g.value)} (expected a list such as [q_proj,v_proj])")
    return tuple(w.strip().strip("'\"") for w in text[1:-1].split(",") if w.strip())


def _tune(b: _Builder, args: Sequence[str]) -> None:
    """torchtune: the model and the shipped config's values from --config, then its `key=value` overrides."""
    config = next((args[i + 1] for i, tok in enumerate(args[:-1]) if tok == "--config"), "")
    named = torchtune.config_model(config)
    if named is not None:
        b.top["model"] = named[0]
    shipped = torchtune.config_defaults(config)
    recipe = _Given("config", config)
    defaults: dict[str, object] = {
        "micro_batch": shipped.batch,
        "grad_accum": shipped.grad_accum,
        "lr": shipped.lr,
        "recompute": "full" if shipped.checkpointing else "none",
        # LoRA configs: a cosine schedule after num_warmup_steps 100, left to the run's length here (torchtune
        # takes more warm-up steps than steps, the simulation does not); full fine-tunes: no scheduler.
        **({"lr_schedule": "cosine"} if shipped.lora else {"lr_schedule": "constant", "warmup_steps": 0}),
    }
    for key, value in defaults.items():
        if key not in b.job:
            b.set(b.job, key, value, recipe)
    # dtype: bf16 trains bf16 weights, AdamW's states in their dtype
    b.set(b.job, "state_layout", "bf16", _Given("dtype", "bf16"))
    lora = shipped.lora
    attn, mlp, output = (lora.attn, lora.mlp, lora.output) if lora else ((), False, False)
    rank = lora.rank if lora else 0
    rank_from = recipe
    dataset = instruct.DATASETS[shipped.dataset]
    max_seq_len: int | None = None
    packed = False
    epochs: int | None = None
    per_epoch: int | None = None
    for tok in args:
        key, eq, value = tok.partition("=")
        if not eq or tok.startswith("-"):
            continue
        g = _Given(key, value)
        null = value.strip().lower() in _NULL
        if key in _TUNE_KEYS:
            _one(b, _TUNE_KEYS[key], g)
        elif key == "epochs":
            epochs = _int(g, high=int(MAX_EPOCHS))
            b.set(b.top, "epochs", float(epochs), g)
        elif key == "max_steps_per_epoch" and not null:
            per_epoch = _int(g, high=MAX_STEPS)
            b.sources["max_steps_per_epoch"] = key
        elif key == "enable_activation_checkpointing":
            b.set(b.job, "recompute", "full" if _bool(g) else "none", g)
        elif key == "tokenizer.max_seq_len":
            max_seq_len = None if null else _int(g, high=_model_high("seq_len"))
        elif key == "dataset.packed":
            packed = _bool(g)
        elif key == "dataset._component_":
            dataset = instruct.DATASETS.get(_str(g), dataset)  # another dataset: alpaca's lengths stand in
        elif lora is not None and key == "model.lora_rank":
            rank, rank_from = _int(g, high=_MAX_LORA_RANK), g
        elif lora is not None and key == "model.lora_attn_modules":
            attn = _tune_list(g)
        elif lora is not None and key == "model.apply_lora_to_mlp":
            mlp = _bool(g)
        elif lora is not None and key == "model.apply_lora_to_output":
            output = _bool(g)
        elif lora is not None and key in ("model.lora_alpha", "model.lora_dropout"):
            _float(g, positive=False, high=float(_MAX_LORA_RANK))  # checked; no figure shows it
    if lora is not None:
        b.set(b.job, "lora_rank", rank, rank_from)
        b.set(b.job, "lora_targets", torchtune.lora_targets(attn, mlp, output), recipe)
    _tune_data(b, dataset, max_seq_len, packed)
    if per_epoch is not None:
        # An epoch stops at max_steps_per_epoch (the instruction data set holds more than that many steps).
        b.job["total_steps"] = (epochs or 1) * per_epoch
        b.top.setdefault("epochs", float(epochs or 1))


def _tune_data(b: _Builder, data: instruct.InstructData, max_seq_len: int | None, packed: bool) -> None:
    """The batches torchtune's dataset gives: padded to their longest sample, or packed to max_seq_len."""
    source = _Given("dataset.packed" if packed else "dataset", data.component)
    if max_seq_len is not None:
        given = _Given("tokenizer.max_seq_len", str(max_seq_len))
        b.set(b.arch, "seq_len", max_seq_len, given)  # the model's context must hold it
    if packed:
        if max_seq_len is None:
            # alpaca_dataset's own check, before any packing
            raise source.fail("PackedDataset requires a max_seq_len to be set on the tokenizer.")
        b.set(b.job, "seq_len", max_seq_len, source)
        b.set(b.top, "examples", instruct.packs(data, max_seq_len), source)
        return
    batch = b.job["micro_batch"]
    assert isinstance(batch, int)
    b.set(b.job, "seq_len", instruct.padded_length(data, batch, max_seq_len), source)
    b.set(b.top, "examples", data.examples, source)


def parse_hints(script: str, args: Sequence[str]) -> Hints:
    """The hints in a training script's arguments; unknown arguments are ignored, bad known values raise."""
    args = hf_args.expand(args)
    names = _option_names(args)
    style = dialects.select(script, names)
    # A tie of votes leaves the default (`--deepspeed --num-layers 4`: DeepSpeed's, HF's and Megatron's
    # options): Megatron-DeepSpeed is the framework that spells them all.
    if style in ("megatron", "deepspeed", dialects.DEFAULT) and megatron_ds.applies(script, names):
        style = megatron_ds.MegatronDeepSpeedDialect.name
    if style == "nanogpt" and LlmcPyDialect.hints.script.search(script.replace("\\", "/")):  # type: ignore[union-attr]
        style = LlmcPyDialect.name  # `--batch_size=8` is nanoGPT's spelling too; nanoGPT has no train_gpt2.py
    if style == dialects.DEFAULT and nanogpt.in_checkout(script):
        style = "nanogpt"  # a bare `train.py` of nanoGPT's README, run in its checkout
    if style == "llmc":
        return _llmc_hints(args)
    if style == LlmcPyDialect.name:
        return _llmc_py_hints(script, args)
    try:
        configured = _nanogpt_configure(args) if style == "nanogpt" else None
    except nanogpt.ConfigError as exc:
        stdout = _lines(exc.echo)
        return Hints(style=style, script_exit=(exc.traceback(_script_file(script)), 1), script_stdout=stdout)
    given = _scan(args, style) if configured is None else _nanogpt_given(configured)
    config = given.get("job.config_file")
    titan_exit: tuple[str, int] | None = None
    titan_notice: str | None = None
    titan_text: dict[str, str] = {}  # the registry form's settings, under the command line's
    if config is not None or style == "titan":
        try:
            merged, titan_text = (_titan_file(config), {}) if config is not None else _titan_registry(args)
        except titan_flavors.TitanError as exc:  # torchtitan's ConfigManager refuses them on every rank
            merged, config = {}, None
            if exc.where:
                titan_exit = (titan_errors.traceback_text(exc.where, exc.exception), 1)
            else:
                titan_notice = f"torchtitan {exc}: JobConfig's default, llama3 debugmodel, stands in for it"
        for key, g in given.items():  # the command line overrides the file
            merged.pop(key, None)
            merged[key] = g
        given = merged
    b = _Builder(style, given)
    for key, g in given.items():
        _one(b, key, g)
    _finish(b)
    if style == "torchtune":
        _tune(b, args)
    regime = _regime(script, args)
    settings = titan_text | _settings(args, config) | _lightning_settings(given)
    notices: tuple[str, ...] = ()
    world_exit = None
    spec: ModelSpec | None = None
    script_exit: tuple[str, int] | None = None
    script_stdout = ""
    megatron_stdout: Callable[[int], str] | None = None
    megatron_layout = (1, 1, 1)
    if dialects.DIALECTS[style].hints.arch_defaults:
        reading = megatron_args.read(script, args)
        megatron_layout = reading.layout
        core = style == "megatron" and not megatron.MegatronDialect.legacy_for(settings)
        megatron_stdout = reading.printed_before if core else None
        spec, notices, script_exit = _megatron_reading(b, reading, core=core)
        settings |= reading.settings
    if configured is not None:
        regime = _nanogpt_model(b, configured)
        settings = _nanogpt_settings(configured)
        world_exit = _nanogpt_world_exit(script, configured)
        script_stdout = _lines(configured.echo)  # what every rank has printed by its world-size check
        resumed = _nanogpt_resume(b, configured, script, settings)
        if isinstance(resumed, str):
            notices = (*notices, resumed)
        elif resumed is not None:
            script_exit, script_stdout = resumed
    model_name = b.top.get("model")
    name = model_name if isinstance(model_name, str) else None
    table_spec = b.top.get("spec")  # a framework's own table's model (torchtitan's flavors)
    if isinstance(table_spec, ModelSpec):
        spec = table_spec
    exit_given = titan_exit or b.top.get("script_exit")
    if isinstance(exit_given, tuple):
        script_exit = exit_given
    notice = titan_notice or b.top.get("notice")
    if isinstance(notice, str):
        notices = (*notices, notice)
    figures = b.top.get("titan")
    if isinstance(figures, dict):
        settings = {**settings, **{f"titan.{k}": v for k, v in figures.items()}}
        # checkpoint.enable (default false) decides whether the job saves at all (HintRule.save_option).
        settings["titan.saves"] = "1" if settings.get("checkpoint.enable", "").lower() in _TRUE else ""
        if settings.get("validation.enable", "").lower() not in _TRUE:
            b.cadence["eval_interval"] = 0  # validation.enable = false: no validation, whatever its freq
    epochs, ratio, seed = b.top.get("epochs"), b.top.get("warmup_ratio"), b.top.get("seed")
    ds = b.top.get("deepspeed")
    examples = b.top.get("examples")
    model: ModelSpec | None
    if style == "hf":
        name, model, hf_notice = _hf_model(b.top)
        notices += (hf_notice,) if hf_notice else ()
        settings["hf.script"] = os.path.basename(script)  # which example script: what its eval computes
    elif spec is not None:
        # A model the arguments spell out (Megatron's) is named after it; a named one keeps its name.
        name, model = name or spec.name, spec
    else:
        model = model_from_hf_name(name) if name else None
    hints = Hints(
        model_name=name,
        model=model,
        arch=b.arch,
        job=b.job,
        epochs=epochs if isinstance(epochs, float) else None,
        warmup_ratio=ratio if isinstance(ratio, float) else None,
        seed=seed if isinstance(seed, int) else None,
        style=style,
        cadence=b.cadence,
        cadence_ratio=b.cadence_ratio,
        strategies=b.strategies,
        timeouts=b.timeouts,
        sources=b.sources,
        deepspeed=ds if isinstance(ds, DsConfig) else None,
        settings=settings,
        regime=regime,
        notices=notices,
        examples=examples if isinstance(examples, int) else None,
        do_eval=b.top.get("do_eval") is True,
        script_exit=script_exit,
        script_stdout=script_stdout,
        world_exit=world_exit,
    )
    if style == "titan" and hints.script_exit is None:
        hints = dataclasses.replace(hints, world_exit=titan_world.world_exit(hints))
    if style == "megatron" and hints.script_exit is None and "megatron.vocab" in hints.settings:
        hints = dataclasses.replace(hints, world_exit=_megatron_world(script, hints))
    if megatron_stdout is not None:
        hints = dataclasses.replace(hints, world_stdout=megatron_stdout)
        if hints.script_exit is not None and hints.world_exit is None:
            hints = dataclasses.replace(hints, world_exit=_megatron_world_first(script, megatron_layout))
    return hints


def _megatron_world_first(
    script: str, layout: tuple[int, int, int]
) -> Callable[[int], tuple[str, int] | None]:
    """Hints.world_exit of a Megatron core job refused for its model arguments: validate_args checks the
    world size before them, so a world size it refuses is what the ranks die of."""

    def refused(world: int) -> tuple[str, int] | None:
        death = megatron_args.world_size_exit(script, layout, world)
        return None if death is None else (death, 1)

    return refused


def _megatron_world(script: str, hints: Hints) -> Callable[[int], tuple[str, int] | None]:
    """Hints.world_exit of a Megatron core job: validate_args', the batch calculator's and the model
    config's refusals of the layout on a world size, which every rank dies of (exit 1)."""

    def refused(world: int) -> tuple[str, int] | None:
        death = megatron_args.world_exit(script, hints.job, world, hints.model)
        return None if death is None else (death, 1)

    return refused


_MEGATRON_DEFAULT = _Given("Megatron-LM's defaults (megatron/training/arguments.py)", None)


def _megatron_reading(
    b: _Builder, reading: megatron_args.Reading, *, core: bool
) -> tuple[ModelSpec | None, tuple[str, ...], tuple[str, int] | None]:
    """Megatron's own model, defaults and refusals over the hints of its arguments: (model, notices,
    the death of every rank). The 2021-22 code and Megatron-DeepSpeed refuse in other words: only core's
    (`core`) refusals are raised."""
    death = reading.script_exit if core else None
    if death is not None:
        # The ranks die before building anything: keep only what any model and world size can run.
        b.arch.clear()
        for key in [k for k in b.job if k not in ("total_steps", "lr", "precision")]:
            b.drop(b.job, key)
    for key, value in reading.defaults.items():
        if key in b.job or (key == "grad_accum" and "global_batch" in b.job):
            continue
        if key == "warmup_steps" and "warmup_ratio" in b.top:
            continue  # --lr-warmup-fraction of a run whose length follows from --train-samples
        b.set(b.job, key, value, _MEGATRON_DEFAULT)
    for key, value in reading.job.items():
        b.set(b.job, key, value, b.given.get("lr_warmup_fraction", _MEGATRON_DEFAULT))
        b.drop(b.top, "warmup_ratio")
    for key, n in reading.cadence.items():
        if key not in b.cadence:
            b.set(b.cadence, key, n, _MEGATRON_DEFAULT)
    model = reading.model if death is None else None
    known = _preset_with_shape(model) if model is not None else None
    if model is not None and known is not None:
        # A published architecture spelled out in Megatron's arguments: call it by its name.
        names = ("name", "display_name", "family", "hf_name", "published_params", "published_active_params")
        model = dataclasses.replace(model, **{f: getattr(known, f) for f in names})
    if model is not None:
        # The model is whole: only the context is left for apply_arch.
        b.arch.clear()
        if reading.seq_len is not None:
            b.arch["seq_len"] = reading.seq_len
    return model, reading.notices, death


def _gpt2_arch(layers: int, heads: int, hidden: int) -> dict[str, int]:
    """A GPT-2 shape's arch hints: multi-head attention and the 4x GeLU MLP."""
    return {"layers": layers, "heads": heads, "kv_heads": heads, "hidden": hidden, "ffn_hidden": 4 * hidden}


# ----------------------------------------------------------------------------------------------------
# llm.c (train_gpt2.cu: single-dash flags, each with a value, read by atoi/atof)

_SIGABRT = 6
# llm.c's -k names -> the simulated schedule: "wsd" holds the peak for 80% of the run before its sqrt decay,
# which the simulation's constant schedule follows but for that last fifth.
_LLMC_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant", "wsd": "constant"}
# -r: 0 keeps every activation, 1 recomputes the GeLU, 2 the GeLU and the LayerNorms (a selective recompute).
_LLMC_RECOMPUTE = {0: "none", 1: "selective", 2: "selective"}
_LLMC_REPO = "karpathy/llm.c"  # Hints.sources for what its defaults decide


def _llmc_hints(args: Sequence[str]) -> Hints:
    """train_gpt2cu's job from its flags, its defaults where they are silent; a command line it refuses, or a
    model it cannot build, as the program's own death (Hints.script_exit)."""
    try:
        a = llmc_args.parse_args(args)  # "--" is one more flag to its loop, which refuses it
    except llmc_args.UsageError:
        return Hints(style="llmc", script_exit=(llmc_args.USAGE, 1))
    try:
        return _llmc_job(a)
    except llmc_args.ProgramExit as exc:
        return Hints(style="llmc", script_exit=(exc.text, -_SIGABRT if exc.signal else 1))


def _llmc_job(a: llmc_args.Args) -> Hints:
    """The hints of parsed llm.c arguments, checked in main()'s order; ProgramExit where the program dies."""
    flag = _Given("train_gpt2cu", None)
    if a.warmup_iterations < 0:
        raise llmc_args.assertion("warmup_iterations >= 0", 1508, "int main(int, char**)")
    if len(a.output_log_dir.encode()) >= 400:
        raise llmc_args.assertion("strlen(output_log_dir) < 400", 1510, "int main(int, char**)")
    for letter, value, high in (
        ("b", a.micro_batch, _model_high("micro_batch")),
        ("t", a.seq_len, _model_high("seq_len")),
    ):
        if not 1 <= value <= high:
            raise flag.fail(f"-{letter} {value}: the simulation takes 1 to {high}")
    tokens = a.micro_batch * a.seq_len
    if a.total_batch_size != -1 and (a.total_batch_size < 1 or a.total_batch_size % tokens):
        # total_batch_size % (B * T * num_processes) == 0 fails whatever the number of processes.
        raise llmc_args.assertion("total_batch_size % tokens_per_fwdbwd == 0", 1518, "int main(int, char**)")
    shape = llmc_args.model_shape(a.load_filename)
    if a.seq_len > shape.max_seq_len:
        raise llmc_args.assertion("T <= model.config.max_seq_len", 1703, "int main(int, char**)")
    schedule = _LLMC_SCHEDULES.get(a.lr_scheduler_type)
    if schedule is None:
        # get_learning_rate's refusal (at the first step: the simulation stops the program at its start).
        raise llmc_args.ProgramExit(f"Unknown learning rate scheduler type: {a.lr_scheduler_type}\n")
    if not (math.isfinite(a.learning_rate) and 0 < a.learning_rate <= _MAX_LR):
        raise flag.fail(f"-l {a.learning_rate:g}: the simulation needs a learning rate in (0, {_MAX_LR:g}]")
    if not (math.isfinite(a.final_learning_rate_frac) and 0 <= a.final_learning_rate_frac <= 1):
        raise flag.fail(f"-q {a.final_learning_rate_frac:g}: the simulation needs a final fraction in [0, 1]")
    if a.val_loss_every == 0:
        raise flag.fail("-v 0: train_gpt2.cu's `step % val_loss_every` divides by zero (SIGFPE)")
    if a.max_steps == 0 or a.max_steps < -1:
        raise flag.fail(f"-x {a.max_steps}: no step to run (-1 runs one epoch)")
    job: dict[str, object] = {
        "micro_batch": a.micro_batch,
        "seq_len": a.seq_len,
        "lr": a.learning_rate,
        "min_lr": a.learning_rate * a.final_learning_rate_frac,
        "warmup_steps": min(a.warmup_iterations, MAX_STEPS),
        "lr_schedule": schedule,
        "zero_stage": 1 if a.zero_stage == 1 else 0,  # set_zero_configs: stages 2 and 3 fall back to 0
        "recompute": _LLMC_RECOMPUTE.get(a.recompute, "selective"),
        "tp": 1,
        "pp": 1,
        # -1: B * T * num_processes, no accumulation; else llm.c's tokens as sequences of T.
        **(
            {"grad_accum": 1}
            if a.total_batch_size == -1
            else {"global_batch": a.total_batch_size // a.seq_len}
        ),
    }
    if a.max_steps > 0:
        job["total_steps"] = min(a.max_steps, MAX_STEPS)
    arch = {
        "layers": shape.layers,
        "hidden": shape.channels,
        "ffn_hidden": 4 * shape.channels,
        "heads": shape.heads,
        "kv_heads": shape.heads,
        "vocab": shape.vocab,
        "max_position": shape.max_seq_len,
        "seq_len": a.seq_len,
        "bias": 1,
        "tied_embeddings": 1,
    }
    cadence = {"log_interval": 1, "eval_interval": abs(a.val_loss_every)}
    if a.val_max_steps > 0:
        cadence["eval_iters"] = min(a.val_max_steps, _MAX_EVAL_ITERS)
    # Checkpoints need -n > 0 and -o; then every -n steps and at the last step.
    saves = a.checkpoint_every > 0 and a.output_log_dir != ""
    if saves:
        cadence["save_interval"] = min(a.checkpoint_every, MAX_STEPS)
    settings = llmc_args.to_settings(a)
    settings["llmc.saves"] = "1" if saves else ""
    val_tokens = llmc_args.data_tokens(a.val_data_pattern, val=True)
    settings["llmc.val_tokens"] = str(val_tokens or 0)
    settings["llmc.hellaswag_found"] = "1" if Path(llmc_args.HELLASWAG).is_file() else ""
    sources = dict.fromkeys((*job, *arch, *cadence), _LLMC_REPO)
    return Hints(
        model_name="gpt2-124m",
        model=load_model("gpt2-124m"),
        arch=arch,
        job=job,
        style="llmc",
        cadence=cadence,
        sources=sources,
        settings=settings,
        # A .bin file holds trained weights (GPT-2's, an llm.c checkpoint); a descriptor starts at random.
        regime="finetune" if a.load_filename.endswith(".bin") else "pretrain",
        train_tokens=llmc_args.data_tokens(a.train_pattern, val=False) if a.max_steps == -1 else None,
    )


def _llmc_py_hints(script: str, args: Sequence[str]) -> Hints:
    """train_gpt2.py's job from its argparse options and defaults; its argparse error or failed assert as the
    ranks' death (Hints.script_exit), the total batch's divisibility by the world size as Hints.world_exit."""
    style = LlmcPyDialect.name
    # print0 of the version, before argparse (rank 0).
    version = f"{pytrace.MASTER_LINE}Running pytorch {pytrace.TORCH_SLOT}\n"
    try:
        a = llmc_py.parse(script, list(args))
    except llmc_py.ScriptExit as exc:
        return Hints(style=style, script_exit=(exc.text, exc.code), script_stdout=version + exc.stdout)
    src = _Given("train_gpt2.py", None)
    for name, value, high in (
        ("--batch_size", a.batch_size, _model_high("micro_batch")),
        ("--num_iterations", a.num_iterations, MAX_STEPS),
    ):
        if not 1 <= value <= high:
            raise src.fail(f"{name} {value}: the simulation takes 1 to {high}")
    if not (math.isfinite(a.learning_rate) and 0 < a.learning_rate <= _MAX_LR):
        raise src.fail(f"--learning_rate {a.learning_rate:g}: the simulation needs one in (0, {_MAX_LR:g}]")
    arch = {
        **_gpt2_arch(*llmc_py.shape(a)),
        "vocab": llmc_py.VOCAB,
        "max_position": llmc_py.BLOCK,
        "seq_len": a.sequence_length,
        "bias": 1,
        "tied_embeddings": 1,
    }
    if a.total_batch_size < 1:
        raise src.fail(f"--total_batch_size {a.total_batch_size}: the simulation needs a positive batch")
    job: dict[str, object] = {
        "micro_batch": a.batch_size,
        "seq_len": a.sequence_length,
        # Sequences per step; total_batch_size % (B * T * world) is checked by world_exit first.
        "global_batch": max(1, a.total_batch_size // a.sequence_length),
        "total_steps": a.num_iterations,
        "lr": a.learning_rate,
        "min_lr": a.learning_rate * min(max(a.learning_rate_decay_frac, 0.0), 1.0),
        "warmup_steps": min(max(a.warmup_iters, 0), MAX_STEPS),
        "lr_schedule": "cosine",
        # float32 and bfloat16 both run without a loss scaler (the simulation has no fp32 kernels).
        "precision": "fp16" if a.dtype == "float16" else "bf16",
        "zero_stage": 1 if a.zero_stage == 1 else 0,
        "tp": 1,
        "pp": 1,
    }
    # Validation needs --val_loss_every > 0 and --input_val_bin; it also runs after the last step.
    evaluates = a.val_loss_every > 0 and a.input_val_bin != ""
    cadence = {"log_interval": 1, "eval_interval": a.val_loss_every if evaluates else 0, "save_interval": 0}
    if a.val_max_steps > 0:
        cadence["eval_iters"] = min(a.val_max_steps, _MAX_EVAL_ITERS)
    path = script

    def world_exit(world_size: int) -> tuple[str, int] | None:
        text = llmc_py.world_exit(path, a, world_size)
        return None if text is None else (text, 1)

    return Hints(
        model_name=a.model,
        model=load_model("gpt2-124m"),
        arch=arch,
        job=job,
        style=style,
        cadence=cadence,
        sources=dict.fromkeys((*job, *arch, *cadence), "train_gpt2.py"),
        settings=to_settings(a),
        regime="finetune" if a.model in llmc_py.PRETRAINED else "pretrain",
        # Every rank's device, printed before the total batch's check against the world size.
        script_stdout=f"{version}using device: cuda:{pytrace.LOCAL_RANK_SLOT}\n",
        world_exit=world_exit,
    )


# train.py's globals that drive the simulated job -> the option they are in _OPTIONS (the same names).
_NANOGPT_KEYS = (
    *("batch_size", "block_size", "gradient_accumulation_steps", "max_iters", "warmup_iters"),
    *("lr_decay_iters", "learning_rate", "min_lr", "n_layer", "n_head", "n_embd"),
    *("eval_interval", "eval_iters", "log_interval", "compile"),
)
# The settings nanoGPT's lines show: what it prints at start-up (configurator.py, "found vocab_size").
_NANOGPT_TEXT = ("init_from", "compile", "out_dir", "dropout", "dataset")


def _read_config(path: str) -> str | None:
    """A nanoGPT config file's text, None when there is none; unreadable ones fail as open() would."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise HintError(f"nanoGPT config {path!r}: cannot read it: {exc}") from None


def _nanogpt_configure(args: Sequence[str]) -> nanogpt.Configured:
    """configurator.py over the script's arguments (nanogpt.ConfigError where it dies)."""
    return nanogpt.configure(list(itertools.takewhile(lambda a: a != "--", args)), _read_config)


def _script_file(script: str) -> str:
    """The training script as Python's traceback names it: the absolute path of the __main__ file."""
    return os.path.abspath(script)


def _nanogpt_world_exit(script: str, conf: nanogpt.Configured) -> Callable[[int], tuple[str, int] | None]:
    """train.py's death on a world size that does not divide gradient_accumulation_steps."""
    accumulation = conf.values["gradient_accumulation_steps"]
    path = _script_file(script)

    def check(world_size: int) -> tuple[str, int] | None:
        if not isinstance(accumulation, int):
            return None
        text = nanogpt.accumulation_exit(path, accumulation, world_size)
        return None if text is None else (text, 1)

    return check


def _nanogpt_given(conf: nanogpt.Configured) -> dict[str, _Given]:
    """train.py's final values of the keys the simulation reads, each with where it was set."""
    given: dict[str, _Given] = {}
    for key in _NANOGPT_KEYS:
        source = conf.sources.get(key)
        value = conf.values[key]
        if source is None:
            given[key] = _Given(key, value, where="train.py")
        elif source.startswith("--"):
            given[key] = _Given(f"--{key}", str(value))
        else:
            given[key] = _Given(key, value, where=source)
    return given


class _NoGlobals(pickle.Unpickler):
    """An unpickler for plain data only: a meta.pkl that names a class or function is not read."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def _meta_vocab(dataset: str) -> int | None:
    """vocab_size of data/<dataset>/meta.pkl, as train.py reads it, when that file exists."""
    path = Path("data", dataset, "meta.pkl")
    try:
        meta = _NoGlobals(io.BytesIO(path.read_bytes())).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError):
        return None
    vocab = meta.get("vocab_size") if isinstance(meta, dict) else None
    return vocab if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0 else None


def _nanogpt_model(b: _Builder, conf: nanogpt.Configured) -> str:
    """train.py's model (from scratch: padded vocabulary, its bias; or GPT-2's weights), dtype; the regime."""
    values = conf.values
    init = str(values["init_from"])
    source = conf.sources.get("init_from")
    g = _Given("--init_from" if source and source.startswith("--") else "init_from", init, where="")
    if init.startswith("gpt2"):
        shape = nanogpt.PRETRAINED.get(init)
        if shape is None:
            raise g.fail(f"AssertionError (model.py: {init!r} is not one of {', '.join(nanogpt.PRETRAINED)})")
        # from_pretrained forces GPT-2's vocabulary, block size 1024 and biases; crop_block_size shortens it.
        for key, value in {**_gpt2_arch(*shape), "vocab": estimates.GPT2_VOCAB, "bias": 1}.items():
            b.set(b.arch, key, value, g)
        block = b.job.get("seq_len")
        seq = min(block if isinstance(block, int) else 1024, 1024)
        b.set(b.job, "seq_len", seq, g)
        b.set(b.arch, "seq_len", seq, g)
        if values["dataset"] == "openwebtext":  # the losses nanoGPT's README measured there
            b.set(b.job, "pretrained_losses", nanogpt.PRETRAINED_OWT_LOSSES[init], g)
        regime = "finetune"
    else:
        # meta.pkl's vocabulary, else GPT-2's rounded up to 50304; LayerNorm and Linear biases per `bias`.
        vocab = _meta_vocab(str(values["dataset"])) or estimates.NANOGPT_PADDED_VOCAB
        b.set(b.arch, "vocab", vocab, g)
        b.set(b.arch, "bias", int(bool(values["bias"])), g)
        regime = "pretrain"
    block = b.job.get("seq_len")
    if isinstance(block, int):
        # wpe holds block_size rows (crop_block_size cuts GPT-2's 1024 to it).
        b.set(b.arch, "max_position", block, g)
    # torch.manual_seed(1337 + seed_offset): every run of the same config draws the same numbers, and a
    # resumed one goes on along the curve the saved one was on.
    b.set(b.top, "seed", nanogpt.SEED, g)
    if values["eval_only"] is True:
        b.set(b.cadence, "eval_only", 1, _Given("eval_only", "True", where=""))
    if values["dtype"] == "float16":  # train.py's GradScaler
        b.set(b.job, "precision", "fp16", _Given("dtype", "float16"))
    warmup, total = b.job.get("warmup_steps"), b.job.get("total_steps")
    if values["decay_lr"] is False:
        # get_lr is never called: the learning rate is learning_rate from the first iteration.
        b.set(b.job, "lr_schedule", "constant", _Given("decay_lr", "False"))
        b.set(b.job, "warmup_steps", 0, _Given("decay_lr", "False"))
        b.set(b.job, "min_lr", b.job["lr"], _Given("decay_lr", "False"))
    elif isinstance(warmup, int) and isinstance(total, int) and warmup > total:
        b.set(b.job, "warmup_steps", total, _Given("warmup_iters", str(warmup)))  # it warms up all run long
    return regime


def _nanogpt_settings(conf: nanogpt.Configured) -> dict[str, str]:
    """What nanoGPT's lines echo (configurator.py's prints, the model's origin, compile, the vocabulary), its
    whole config (ckpt.pt keeps it), and the best loss to beat when it saves only on a better one."""
    out = {key: str(conf.values[key]) for key in _NANOGPT_TEXT}
    out["echo"] = "\n".join(conf.echo)
    out["config"] = json.dumps(conf.values)
    if conf.values["always_save_checkpoint"] is not True:
        out["save_best"] = repr(nanogpt.INITIAL_BEST)
    vocab = _meta_vocab(str(conf.values["dataset"]))
    if vocab is not None:
        out["meta_vocab"] = str(vocab)
    return out


def _lines(printed: Sequence[str]) -> str:
    """Lines a script printed, as its stdout holds them."""
    return "".join(f"{line}\n" for line in printed)


def _nanogpt_resume(
    b: _Builder, conf: nanogpt.Configured, script: str, settings: dict[str, str]
) -> tuple[tuple[str, int], str] | str | None:
    """init_from='resume': the iteration, best loss and model that train.py reads back from ckpt.pt; its
    death (and what it printed first) when out_dir has none; a notice for a file fakerun did not write."""
    values = conf.values
    if values["init_from"] != "resume":
        return None
    out_dir = str(values["out_dir"])
    path = nanogpt_ckpt.ckpt_path(out_dir)
    if not os.path.exists(path):
        block, batch, accum = (
            values["block_size"],
            values["batch_size"],
            values["gradient_accumulation_steps"],
        )
        printed = [*conf.echo]
        if isinstance(block, int) and isinstance(batch, int) and isinstance(accum, int):
            printed.append(nanogpt.tokens_line(accum * batch * block))
        if "meta_vocab" in settings:
            printed.append(nanogpt.meta_line(settings["meta_vocab"], settings["dataset"]))
        printed.append(f"Resuming training from {out_dir}")
        return (nanogpt_ckpt.missing_traceback(_script_file(script), path), 1), _lines(printed)
    saved = nanogpt_ckpt.read(path)
    if saved is None:
        return f"nanoGPT checkpoint {path} was not written by fakerun: the run resumes from iteration 0"
    g = _Given("init_from", "resume", where="")
    args = saved.model_args
    arch = {"layers": args["n_layer"], "heads": args["n_head"], "kv_heads": args["n_head"]}
    arch |= {"hidden": args["n_embd"], "ffn_hidden": 4 * args["n_embd"], "vocab": args["vocab_size"]}
    arch |= {"bias": int(bool(args["bias"]))}
    block = b.job.get("seq_len")
    # The checkpoint's model, cropped to the config's block_size when that is shorter.
    arch["max_position"] = min(args["block_size"], block) if isinstance(block, int) else args["block_size"]
    for key, value in arch.items():
        b.set(b.arch, key, value, g)
    b.set(b.job, "start_step", saved.iter_num, g)
    total = b.job.get("total_steps")
    if isinstance(total, int) and total <= saved.iter_num:
        # The loop trains the resumed iteration before it checks iter_num > max_iters.
        b.set(b.job, "total_steps", saved.iter_num + 1, g)
    if "save_best" in settings:
        settings["save_best"] = repr(saved.best_val_loss)
    return None


# torchtitan's textual settings its log echoes (the description, dataset, folders, switches).
_TITAN_TEXT = frozenset(
    {
        "job.description",
        "job.dump_folder",
        "model.name",
        "model.flavor",
        "training.dataset",
        "training.gc_freq",
        "profiling.enable_profiling",
        "profiling.save_traces_folder",
        "checkpoint.enable",
        "checkpoint.folder",
        "checkpoint.async_mode",
        "checkpoint.keep_latest_k",
        "checkpoint.last_save_model_only",
        "checkpoint.export_dtype",
        "metrics.enable_tensorboard",
        "metrics.save_tb_folder",
        "parallelism.spmd_backend",
        "parallelism.pipeline_parallel_schedule",
        "training.mixed_precision_param",
        "metrics.disable_color_printing",
        "activation_checkpoint.mode",
        "parallelism.data_parallel_replicate_degree",
        "validation.enable",
    }
)


# HF TrainingArguments' text its Trainer echoes (checkpoint paths under --output_dir); Megatron's --save
# folder and the arguments that date a Megatron script (its log format follows).
_HF_TEXT = frozenset(
    {
        "output_dir",
        "report_to",
        "logging_dir",
        "per_device_eval_batch_size",
        "save_total_limit",
        "torch_dtype",
        # the rotation's best checkpoint (frameworks/hf_files.py)
        "load_best_model_at_end",
        "metric_for_best_model",
        "save_strategy",
        # the training data, whose size sets the steps of epochs (frameworks/hf_datasets.py)
        "dataset_name",
        "dataset_config_name",
        "train_file",
        # what a DeepSpeed config's values are filled from and checked against (frameworks/hf_deepspeed.py)
        "bf16",
        "bf16_full_eval",
        "fp16_full_eval",
        "fp16_backend",
        "half_precision_backend",
        "fp16_opt_level",
        "max_grad_norm",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "weight_decay",
    }
)
# Megatron's (and Megatron-DeepSpeed's) arguments its log echoes, or that decide which splits it evaluates.
_MEGATRON_TEXT = (
    frozenset(
        {
            "save",
            "split",
            "recompute_granularity",
            "recompute_activations",
            "rerun_mode",
            "no_check_for_nan_in_loss_and_grad",
            # where and what its TensorBoard writer writes (worker/tensorboard.py)
            "tensorboard_dir",
            "tensorboard_log_interval",
            "log_timers_to_tensorboard",
            "log_memory_to_tensorboard",
            "log_validation_ppl_to_tensorboard",
            "log_world_size_to_tensorboard",
            "no_log_loss_scale_to_tensorboard",
            "log_throughput",
            "log_batch_size_to_tensorboard",  # Megatron-DeepSpeed's, and its misspelt learning-rate switch
            "no_log_learnig_rate_to_tensorboard",
        }
    )
    | frozenset(f"{split}_data_path" for split in ("train", "valid", "test"))
    | frozenset(
        f"{split}_weighted_split_paths{tail}" for split in ("train", "test") for tail in ("", "_path")
    )
    | megatron.LEGACY_OPTIONS
)


def _settings(args: Sequence[str], config: _Given | None) -> dict[str, str]:
    """torchtitan's textual settings (the config file's, then the command line's) and torchtune's --config."""
    out: dict[str, str] = {}
    if config is not None:
        try:  # already read and checked by _titan_file: a failure here cannot happen unnoticed
            data = tomlfile.loads(tomlfile.read_text(str(Path(_str(config)).expanduser())))
        except (tomlfile.FileError, tomlfile.TomlError, ValueError, HintError):
            data = {}
        for section, table in data.items():
            if isinstance(table, dict):
                for name, value in table.items():
                    key = f"{section}.{name}"
                    if key in _TITAN_TEXT and isinstance(value, (str, bool, int)):
                        out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    for i, tok in enumerate(args):
        if not tok.startswith("--"):
            continue
        name, eq, value = tok[2:].partition("=")
        if not eq:
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else "true"
        key = name.replace("-", "_")
        if key in _TITAN_TEXT or key in _HF_TEXT or key in _MEGATRON_TEXT or key == "config":
            out[key] = value
    for tok in args:  # torchtune's `key=value` config overrides, echoed in its resolved config
        key, eq, value = tok.partition("=")
        if eq and not tok.startswith("-") and re.fullmatch(r"[A-Za-z_][\w.]*", key):
            out[key] = value
    return out


def _lightning_settings(given: Mapping[str, _Given]) -> dict[str, str]:
    """Trainer(precision=...) as given (the summary sizes weights by it); max_epochs when it ends the fit."""
    out: dict[str, str] = {}
    g = given.get("precision")
    if g is not None:
        out["precision"] = _str(g).lower()
    epochs, steps = given.get("max_epochs"), given.get("max_steps")
    steps_end = steps is not None and _int(steps, None, high=MAX_STEPS) > 0
    if epochs is not None and _int(epochs, -1, high=int(MAX_EPOCHS)) > 0 and not steps_end:
        out["max_epochs"] = _str(epochs)
    return out


# ----------------------------------------------------------------------------------------------------
# Architecture overrides


def apply_arch(model: ModelSpec, arch: Mapping[str, int]) -> ModelSpec:
    """The model with architecture hints applied (renamed "<name>-custom" when its shape changes)."""
    for key, value in arch.items():
        if key not in _ALL_ARCH_KEYS:
            raise HintError(f"unknown architecture hint {key!r} (choose from {', '.join(_ALL_ARCH_KEYS)})")
        low = 0 if key in _FLAG_ARCH_KEYS else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (low == 0 and value > 1):
            raise HintError(f"architecture hint {key}={_shown(value)} must be a positive integer")
        high = 1 if low == 0 else _model_high(key)
        if value > high:
            raise HintError(f"architecture hint {key}={_shown(value)} exceeds {high}")
    changes: dict[str, Any] = {k: v for k, v in arch.items() if k in ARCH_KEYS and getattr(model, k) != v}
    if "tied_embeddings" in arch and bool(arch["tied_embeddings"]) != model.tied_embeddings:
        changes["tied_embeddings"] = bool(arch["tied_embeddings"])
    if "bias" in arch and ("all" if arch["bias"] else "none") != model.bias:
        changes["bias"] = "all" if arch["bias"] else "none"
    if "heads" in changes and "kv_heads" not in arch and model.kv_heads == model.heads:
        changes["kv_heads"] = changes["heads"]  # multi-head attention stays multi-head
    if "experts" in changes and "top_k" not in arch:
        changes["top_k"] = min(model.top_k, changes["experts"])
    shape = {k: changes.get(k, getattr(model, k)) for k in ARCH_KEYS}
    who = f"{model.name} with {' '.join(f'{k}={v}' for k, v in arch.items())}"
    if shape["hidden"] % shape["heads"]:
        raise HintError(f"{who}: hidden size {shape['hidden']} is not divisible by {shape['heads']} heads")
    if shape["heads"] % shape["kv_heads"]:
        raise HintError(f"{who}: {shape['heads']} heads are not divisible by {shape['kv_heads']} KV heads")
    if shape["top_k"] > shape["experts"]:
        raise HintError(f"{who}: top_k {shape['top_k']} exceeds {shape['experts']} experts")
    extra: dict[str, Any] = {}
    seq = arch.get("seq_len")
    if seq is not None and seq != model.seq_len:
        extra["seq_len"] = seq
    if seq is not None and seq > shape["max_position"]:
        if model.position == "learned" or "max_position" in arch:
            raise HintError(f"{who}: seq_len {seq} exceeds max_position {shape['max_position']}")
        extra["max_position"] = seq  # rotary positions have no table: a longer context only needs the limit
    if not changes and not extra:
        return model
    renamed: dict[str, object] = {}
    if changes:
        shaped = dataclasses.replace(model, **changes)
        known = _preset_with_shape(shaped)
        if known is not None:
            # Megatron users spell out a published architecture: call it by its name.
            return dataclasses.replace(known, **extra) if extra else known
        size = shaped.params / 1e9
        renamed = {
            "name": f"{model.family or 'custom'}-{size:.1f}b-custom",
            "display_name": f"custom {model.family or 'transformer'} {size:.1f}B",
            "hf_name": "",
            "aliases": (),
            "published_params": 0.0,
            "published_active_params": 0.0,
        }
    fields: dict[str, Any] = {**changes, **extra, **renamed}
    return dataclasses.replace(model, **fields)


_SHAPE = (
    *("layers", "hidden", "ffn_hidden", "heads", "kv_heads", "vocab", "experts", "top_k"),
    *("mlp", "norm", "bias", "position", "tied_embeddings"),
)


def _preset_with_shape(model: ModelSpec) -> ModelSpec | None:
    """The shipped (non-joke) preset with exactly this architecture, if any."""
    want = tuple(getattr(model, f) for f in _SHAPE)
    for name in list_presets()["models"]:
        preset = load_model(name)
        if not preset.joke and tuple(getattr(preset, f) for f in _SHAPE) == want:
            return preset
    return None
