"""torchtune's distributed recipes (full_finetune_distributed and kin): rank 0's INFO lines and tqdm bar."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from fakerun.dialects.base import BarClose, BarDraw, HintRule, Line, Output, Seat
from fakerun.dialects.events import (
    EpochDone,
    Event,
    JobStarted,
    ModelBuilt,
    ProcessGroupReady,
    StepDone,
    TrainingFinished,
    TrainingStarted,
)
from fakerun.render import bar
from fakerun.sim import checkpoint, lora, memory
from fakerun.sim.job import JobSpec

# `tune run` hands torchrun the recipe's file: recipes/full_finetune_distributed.py, lora_finetune_...
HINTS = HintRule(
    script=re.compile(
        r"torchtune|(^|/)(full_finetune|lora_finetune|qat_|knowledge_distillation|lora_dpo|full_dpo)\w*"
    )
)

# torchtune.utils._logging.get_logger's records, through the root handler torch's logging set-up gives them.
PREFIX = "INFO:torchtune.utils._logging:"
_GIB = 1024.0**3
_RECIPES = {
    "full_finetune_distributed": "FullFinetuneRecipeDistributed",
    "lora_finetune_distributed": "LoRAFinetuneRecipeDistributed",
    "qat_distributed": "QATRecipeDistributed",
    "knowledge_distillation_distributed": "KDRecipeDistributed",
}


_TUNE_CONFIG = re.compile(r"^([a-z]+)(\d+(?:_\d+)?)?/(\d+(?:\.\d+)?[bm])_(full|lora|qlora)", re.I)


def config_name(config: str) -> str:
    """A shipped config's name as `tune ls` lists it: `tune run` hands the recipe its file's path
    (.../recipes/configs/llama3_1/8B_full.yaml); a name stays as it is."""
    text = config.strip().replace("\\", "/")
    if text.endswith(".yaml") and "configs/" in text:
        text = text.rsplit("configs/", 1)[1].removesuffix(".yaml")
    return text


def config_model(config: str) -> tuple[str, str] | None:
    """(model name for the presets, "full" or "lora") of a torchtune config name such as llama3_1/8B_lora."""
    m = _TUNE_CONFIG.match(config_name(config))
    if m is None:
        return None
    family, version, size, kind = m.groups()
    version = (version or "").replace("_", ".")
    return f"{family}{version}-{size}", "full" if kind.lower() == "full" else "lora"


@dataclass(frozen=True)
class LoraConfig:
    """A LoRA config's model section: lora_rank, lora_alpha, lora_attn_modules, apply_lora_to_mlp/output."""

    rank: int
    alpha: float
    attn: tuple[str, ...] = ("q_proj", "v_proj", "output_proj")
    mlp: bool = True
    output: bool = False


@dataclass(frozen=True)
class TuneConfig:
    """What a shipped config sets that the simulation or the resolved-config dump shows."""

    builder: str  # model._component_
    batch: int
    grad_accum: int
    lr: float
    checkpointing: bool  # enable_activation_checkpointing
    dataset: str  # dataset._component_
    lora: LoraConfig | None = None
    meta_checkpointer: bool = False  # FullModelMetaCheckpointer (one .bin file) instead of the HF one
    adapter_only: bool = False  # save_adapter_weights_only
    fused: bool = True  # optimizer.fused

    @property
    def checkpointer(self) -> str:
        """checkpointer._component_'s class name."""
        return "FullModelMetaCheckpointer" if self.meta_checkpointer else "FullModelHFCheckpointer"


_ALPACA, _CLEANED = "torchtune.datasets.alpaca_dataset", "torchtune.datasets.alpaca_cleaned_dataset"
_M = "torchtune.models."
# v0.6.1's recipes/configs/<name>.yaml for the names whose model fakerun has a preset of.
CONFIGS: dict[str, TuneConfig] = {
    "llama3/8B_full": TuneConfig(f"{_M}llama3.llama3_8b", 2, 1, 2e-5, True, _ALPACA, meta_checkpointer=True),
    "llama3/8B_lora": TuneConfig(
        f"{_M}llama3.lora_llama3_8b", 2, 8, 3e-4, False, _CLEANED, LoraConfig(8, 16), meta_checkpointer=True
    ),
    "llama3/70B_full": TuneConfig(f"{_M}llama3.llama3_70b", 2, 1, 2e-5, True, _ALPACA, fused=False),
    "llama3/70B_lora": TuneConfig(
        f"{_M}llama3.lora_llama3_70b", 2, 1, 3e-4, True, _ALPACA, LoraConfig(16, 32)
    ),
    "llama3_1/8B_full": TuneConfig(f"{_M}llama3_1.llama3_1_8b", 2, 1, 2e-5, True, _ALPACA),
    "llama3_1/8B_lora": TuneConfig(
        f"{_M}llama3_1.lora_llama3_1_8b", 2, 8, 3e-4, False, _CLEANED, LoraConfig(8, 16)
    ),
    "llama3_1/70B_full": TuneConfig(f"{_M}llama3_1.llama3_1_70b", 2, 1, 2e-5, True, _ALPACA, fused=False),
    "llama3_1/70B_lora": TuneConfig(
        f"{_M}llama3_1.lora_llama3_1_70b", 2, 1, 3e-4, True, _ALPACA, LoraConfig(16, 32), adapter_only=True
    ),
    "llama3_1/405B_qlora": TuneConfig(
        f"{_M}llama3_1.qlora_llama3_1_405b", 1, 8, 3e-4, True, _ALPACA, LoraConfig(16, 32), adapter_only=True
    ),
    "llama3_2/1B_full": TuneConfig(f"{_M}llama3_2.llama3_2_1b", 4, 8, 2e-5, False, _ALPACA),
    "llama3_2/1B_lora": TuneConfig(
        f"{_M}llama3_2.lora_llama3_2_1b", 4, 8, 3e-4, False, _CLEANED, LoraConfig(64, 128)
    ),
    "llama3_2/3B_full": TuneConfig(f"{_M}llama3_2.llama3_2_3b", 4, 8, 2e-5, True, _ALPACA),
    "llama3_2/3B_lora": TuneConfig(
        f"{_M}llama3_2.lora_llama3_2_3b", 4, 8, 3e-4, False, _CLEANED, LoraConfig(64, 128)
    ),
    "llama3_3/70B_full": TuneConfig(f"{_M}llama3_3.llama3_3_70b", 2, 1, 2e-5, True, _ALPACA, fused=False),
    "llama3_3/70B_lora": TuneConfig(
        f"{_M}llama3_3.lora_llama3_3_70b", 2, 1, 3e-4, True, _ALPACA, LoraConfig(16, 32), adapter_only=True
    ),
    "llama3_3/70B_qlora": TuneConfig(
        f"{_M}llama3_3.qlora_llama3_3_70b", 2, 1, 3e-4, True, _ALPACA, LoraConfig(16, 32), adapter_only=True
    ),
    "mistral/7B_full": TuneConfig(f"{_M}mistral.mistral_7b", 2, 1, 5e-6, True, _ALPACA),
    "mistral/7B_lora": TuneConfig(
        f"{_M}mistral.lora_mistral_7b", 4, 1, 2e-5, True, _ALPACA, LoraConfig(64, 16, output=True)
    ),
    "qwen2/7B_full": TuneConfig(f"{_M}qwen2.qwen2_7b", 2, 8, 5e-6, True, _CLEANED),
    "qwen2/7B_lora": TuneConfig(f"{_M}qwen2.lora_qwen2_7b", 2, 8, 3e-4, False, _CLEANED, LoraConfig(8, 16)),
    "qwen2_5/7B_full": TuneConfig(f"{_M}qwen2_5.qwen2_5_7b_instruct", 2, 8, 5e-6, True, _CLEANED),
    "qwen2_5/7B_lora": TuneConfig(
        f"{_M}qwen2_5.lora_qwen2_5_7b_instruct", 2, 8, 3e-4, False, _CLEANED, LoraConfig(8, 16)
    ),
    "qwen2_5/72B_lora": TuneConfig(
        f"{_M}qwen2_5.lora_qwen2_5_72b_instruct", 2, 1, 3e-4, True, _ALPACA, LoraConfig(8, 16)
    ),
}
# A config name outside the table (a copied, renamed config): llama3_1's 8B configs, whose values most
# shipped configs share.
_FALLBACK = {"full": CONFIGS["llama3_1/8B_full"], "lora": CONFIGS["llama3_1/8B_lora"]}


def config_defaults(config: str) -> TuneConfig:
    """The shipped config `config` names (a _single_device name: its distributed sibling), else a default."""
    name = config_name(config).removesuffix("_single_device")
    known = CONFIGS.get(name)
    if known is not None:
        return known
    named = config_model(name)
    return _FALLBACK[named[1] if named else "full"]


# torchtune's LoRA module names -> the Hugging Face projection names sim/lora counts.
_HF_NAMES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj"}
_MLP = ("gate_proj", "up_proj", "down_proj")  # torchtune's w1, w3, w2


def lora_targets(attn: tuple[str, ...], mlp: bool, output: bool) -> tuple[str, ...]:
    """The projections lora_attn_modules, apply_lora_to_mlp and apply_lora_to_output put adapters on."""
    names = [_HF_NAMES[a] for a in attn if a in _HF_NAMES]
    return (*names, *(_MLP if mlp else ()), *((lora.OUTPUT_HEAD,) if output else ()))


def bar_prefix(epoch: int, step: int, loss: float) -> str:
    """The recipe's pbar description: `{epoch}|{global_step}|Loss: {loss}` (the loss as Python prints it)."""
    return f"{epoch}|{step}|Loss: {loss!r}"


def yaml_float(x: float) -> str:
    """A float as OmegaConf.to_yaml (PyYAML) writes it: 2.0e-05, 0.0003."""
    text = repr(x).lower()
    return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text


def output_dir(config: str) -> str:
    """The shipped configs' output_dir: /tmp/torchtune/llama3_1_8B/full for llama3_1/8B_full."""
    folder, _, name = config_name(config).partition("/")
    size, _, kind = name.partition("_")
    return f"/tmp/torchtune/{folder}_{size}/{kind or 'full'}"


def _yaml_bool(text: str) -> str:
    """An override's boolean as the resolved config shows it (OmegaConf reads True, true, yes...)."""
    return "true" if text.strip().lower() in ("true", "yes", "on", "1") else "false"


def _model_section(job: JobSpec, settings: dict[str, str], shipped: TuneConfig) -> list[str]:
    """The resolved config's model section: the builder and, for LoRA, its adapter settings."""
    lines = ["model:", f"  _component_: {shipped.builder}"]
    if shipped.lora is None:
        return lines
    targets = job.lora_targets
    attn = [name for name, hf in _HF_NAMES.items() if hf in targets]
    alpha = settings.get("model.lora_alpha", f"{shipped.lora.alpha:g}")
    lines += [
        f"  apply_lora_to_mlp: {str(_MLP[0] in targets).lower()}",
        f"  apply_lora_to_output: {str(lora.OUTPUT_HEAD in targets).lower()}",
        f"  lora_alpha: {alpha}",
        "  lora_attn_modules:",
        *(f"  - {name}" for name in attn),
        "  lora_dropout: 0.0",
        f"  lora_rank: {job.lora_rank}",
    ]
    return lines


def config_dump(job: JobSpec, settings: dict[str, str], epochs: int) -> list[str]:
    """The recipe's main keys as OmegaConf.to_yaml(sort_keys=True) prints the resolved config."""
    config = settings.get("config", "llama3_1/8B_full")
    shipped = config_defaults(config)
    out = settings.get("output_dir", output_dir(config))
    per_epoch = settings.get("max_steps_per_epoch", "null")
    lines = [
        f"batch_size: {job.micro_batch}",
        "checkpointer:",
        f"  _component_: torchtune.training.{shipped.checkpointer}",
        f"  output_dir: {out}",
        "clip_grad_norm: null",
        "compile: false",
        "dataset:",
        f"  _component_: {settings.get('dataset._component_', shipped.dataset)}",
        f"  packed: {_yaml_bool(settings.get('dataset.packed', 'false'))}",
        "dtype: bf16",
        f"enable_activation_checkpointing: {str(job.recompute != 'none').lower()}",
        f"epochs: {epochs}",
        f"gradient_accumulation_steps: {job.grad_accum}",
        "log_every_n_steps: 1",
        "log_peak_memory_stats: true",
        f"max_steps_per_epoch: {per_epoch}",
        "metric_logger:",
        "  _component_: torchtune.training.metric_logging.DiskLogger",
        f"  log_dir: {out}/logs",
        *_model_section(job, settings, shipped),
        "optimizer:",
        "  _component_: torch.optim.AdamW",
        f"  fused: {str(shipped.fused).lower()}",
        f"  lr: {yaml_float(job.lr)}",
        f"output_dir: {out}",
        "resume_from_checkpoint: false",
    ]
    if shipped.lora is not None:
        lines.append(f"save_adapter_weights_only: {str(shipped.adapter_only).lower()}")
    return [*lines, f"seed: {settings.get('seed', 'null')}", "shuffle: true", ""]


class TorchtuneDialect:
    """What a torchtune distributed recipe prints: rank 0's set-up lines on stderr and its tqdm bar."""

    name: ClassVar[str] = "torchtune"
    hints: ClassVar[HintRule] = HINTS
    grid: ClassVar[bool] = False

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        self.settings: dict[str, str] = {}
        self.job: JobSpec | None = None
        self.epochs = 1
        self.meter = ""  # the bar as last drawn: tqdm redraws it when the recipe drops it
        self.epoch_start_s = 0.0  # training time when the current epoch's bar was created

    @property
    def lora(self) -> bool:
        """A LoRA config (llama3_1/8B_lora, .../70B_qlora): lora_finetune_distributed's wording."""
        named = config_model(self.settings.get("config", ""))
        return named is not None and named[1] == "lora"

    def wants(self, kind: type[Event]) -> bool:
        """Rank 0 logs (utils.log_rank_zero); every rank needs the run's plan."""
        return kind is JobStarted or (self.seat.rank == 0 and kind in _RANK0)

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """torchtune's lines for `event` (rank 0 only)."""
        if isinstance(event, JobStarted):
            self.settings = dict(event.settings)
            self.job = event.run.job
            self.epochs = event.run.epochs
            return ()
        if self.seat.rank != 0 or self.job is None:
            return ()
        if isinstance(event, StepDone):
            return self._bar(event)
        if isinstance(event, TrainingFinished):
            # train() returns and the epoch's tqdm is collected: close() redraws it and ends its line.
            return [BarClose(self.meter or None)]
        return [Line(t, "stderr") for t in self._texts(event)]

    def _texts(self, event: Event) -> list[str]:
        job = self.job
        assert job is not None
        if isinstance(event, ProcessGroupReady):
            recipe = "LoRAFinetuneRecipeDistributed" if self.lora else "FullFinetuneRecipeDistributed"
            lines = [f"{PREFIX}Running {recipe} with resolved config:", ""]
            lines += config_dump(job, self.settings, self.epochs)
            if job.recompute != "none":
                # The recipe's __init__: activation checkpointing without offloading.
                lines.append(
                    f"{PREFIX}Hint: enable_activation_checkpointing is True, but "
                    "enable_activation_offloading isn't. Enabling activation offloading should reduce memory "
                    "further."
                )
            start = "FSDP is enabled" if self.lora else "Distributed training is enabled"
            lines.append(f"{PREFIX}{start}. Instantiating model and loading checkpoint on Rank 0 ...")
            return lines
        if isinstance(event, ModelBuilt):
            mem = memory.memory_breakdown(job, self.seat.rank, step=0)
            # training.log_memory_stats: one record, its continuation lines tab-indented, no prefix.
            return [
                f"{PREFIX}Instantiating model and loading checkpoint took {event.init_s:.2f} secs",
                f"{PREFIX}Memory stats after model init:",
                f"\tGPU peak memory allocation: {mem.max_allocated / _GIB:.2f} GiB",
                f"\tGPU peak memory reserved: {mem.reserved / _GIB:.2f} GiB",
                f"\tGPU peak memory active: {mem.max_allocated / _GIB:.2f} GiB",
                f"{PREFIX}Optimizer is initialized.",
                f"{PREFIX}Loss is initialized.",
            ]
        if isinstance(event, TrainingStarted):
            scheduler = (
                "Learning rate scheduler is initialized."
                if job.lr_schedule != "constant"
                else "No learning rate scheduler configured. Using constant learning rate."
            )
            return [
                f"{PREFIX}{scheduler}",
                f"{PREFIX} Profiler config after instantiation: {{'enabled': False}}",
            ]
        if isinstance(event, EpochDone):
            return self._saved(event)
        return []

    def _bar(self, event: StepDone) -> list[Output]:
        """The epoch's tqdm; a new epoch's replaces the last one, whose collection closes (redraws) it."""
        n = event.numbers
        run = event.run
        per_epoch = run.steps_per_epoch
        epoch = run.epoch_of(n.step)
        inner = n.step - (epoch - 1) * per_epoch
        out: list[Output] = []
        if inner == 1 and epoch > 1:
            out.append(BarClose(self.meter or None))
            self.epoch_start_s = event.elapsed_s - n.step_time_s
        self.meter = bar.meter(
            inner,
            per_epoch,
            event.elapsed_s - self.epoch_start_s,
            prefix=bar_prefix(epoch, n.step, n.loss),
            rate=bar.ema_rate(event.recent_s),
            ncols=self.seat.bar_columns,
            initial=max(0, run.first_step - 1 - (epoch - 1) * per_epoch),
        )
        out.append(BarDraw(self.meter, forced=True))  # set_description() after update(): a refresh()
        return out

    def _saved(self, event: EpochDone) -> list[str]:
        """The epoch's end save: the full recipe's CheckpointClient, or the LoRA recipe's save_checkpoint.

        The recipe's bar is still open: the first line lands at its end, as in real logs."""
        job = self.job
        assert job is not None
        config = self.settings.get("config", "llama3_1/8B_full")
        shipped = config_defaults(config)
        out = self.settings.get("output_dir", output_dir(config))
        folder = f"{out}/epoch_{event.epoch - 1}"
        intermediate = event.epoch < event.epochs
        adapter_only = self.lora and shipped.adapter_only
        adapter_bytes = 2.0 * job.adapter_params  # bf16
        total_s = checkpoint.save_seconds(job, event.step, full=False)
        if adapter_only:
            # Only the adapters are gathered and written: a sliver of the full save's bytes.
            total_s *= max(0.02, adapter_bytes / (2.0 * job.model.params))
        # Rank 0 gathers the shards to CPU before it writes: a quarter of the save here.
        gather_s, optimizer_s = 0.25 * total_s, 0.1 * total_s
        lines = [
            f"{PREFIX}Saving checkpoint. This may take some time. Retrieving full model state dict...",
            f"{PREFIX}Getting full model state dict took {gather_s:.2f} secs",
        ]
        if intermediate:
            # The LoRA recipe's own wording; its timer runs on from the model's gather.
            ask, took = ("Retrieving", gather_s + optimizer_s) if self.lora else ("Getting", optimizer_s)
            lines.append(f"{PREFIX}{ask} optimizer state dict...")
            lines.append(f"{PREFIX}Getting optimizer state dict took {took:.2f} secs")
        if not adapter_only:
            for name, nbytes in self._model_files(shipped):
                lines.append(
                    f"{PREFIX}Model checkpoint of size {nbytes / _GIB:.2f} GiB saved to {folder}/{name}"
                )
        if self.lora:
            # adapter_model.pt as torchtune keeps it, then the PEFT copies (the HF checkpointer only).
            files = [("adapter_model.pt", adapter_bytes)]
            if not shipped.meta_checkpointer:
                files += [("adapter_model.safetensors", adapter_bytes), ("adapter_config.json", 500.0)]
            for name, nbytes in files:
                lines.append(
                    f"{PREFIX}Adapter checkpoint of size {nbytes / _GIB:.2f} GiB saved to {folder}/{name}"
                )
        if intermediate:
            state = 4.0 * job.trainable_params / _GIB  # AdamW's m and v in bf16
            path = f"{out}/recipe_state/recipe_state.pt"
            lines.append(f"{PREFIX}Recipe checkpoint of size {state:.2f} GiB saved to {path}")
        else:
            lines.append(f"{PREFIX}Saving final epoch checkpoint.")
            # Two string literals joined without a space, as the checkpointer's messages are.
            if adapter_only:
                lines.append(
                    f"{PREFIX}Please note that you have set adapter_only=True, so only adapter weights will "
                    "be saved.You need to merge the adapter weights into your base model for further use. "
                    f"See {shipped.checkpointer}.save_checkpoint for more details."
                )
            else:
                lines.append(
                    f"{PREFIX}The full model checkpoint, including all weights and configurations, has been "
                    "saved successfully.You can now use this checkpoint for further training or inference."
                )
        # The LoRA recipe restarts its timer after the gathers; CheckpointClient times the whole save.
        write_s = total_s - gather_s - (optimizer_s if intermediate else 0.0) if self.lora else total_s
        lines.append(f"{PREFIX}Saving checkpoint took {write_s:.2f} secs")
        return lines

    def _model_files(self, shipped: TuneConfig) -> list[tuple[str, float]]:
        """The merged model's files: the HF checkpointer's model-0000i-of-0000N shards, the Meta .bin."""
        job = self.job
        assert job is not None
        shards = checkpoint.safetensors_shards(job.model)
        if shipped.meta_checkpointer:
            return [("model-00001-of-00001.bin", float(sum(f.nbytes for f in shards)))]
        n = len(shards)
        # torchtune names every shard with SHARD_FNAME, a single file too.
        return [(f"model-{i + 1:05d}-of-{n:05d}.safetensors", float(f.nbytes)) for i, f in enumerate(shards)]


_RANK0: frozenset[type[Event]] = frozenset(
    {ProcessGroupReady, ModelBuilt, TrainingStarted, StepDone, EpochDone, TrainingFinished}
)
