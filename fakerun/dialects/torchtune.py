"""torchtune's distributed recipes (full_finetune_distributed and kin): rank 0's INFO lines and tqdm bar."""

from __future__ import annotations

import re
from collections.abc import Sequence
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
from fakerun.sim import checkpoint, memory
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


def config_model(config: str) -> tuple[str, str] | None:
    """(model name for the presets, "full" or "lora") of a torchtune config name such as llama3_1/8B_lora."""
    m = _TUNE_CONFIG.match(config.strip())
    if m is None:
        return None
    family, version, size, kind = m.groups()
    version = (version or "").replace("_", ".")
    return f"{family}{version}-{size}", "full" if kind.lower() == "full" else "lora"


def bar_prefix(epoch: int, step: int, loss: float) -> str:
    """The recipe's pbar description: `{epoch}|{global_step}|Loss: {loss}` (the loss as Python prints it)."""
    return f"{epoch}|{step}|Loss: {loss!r}"


def yaml_float(x: float) -> str:
    """A float as OmegaConf.to_yaml (PyYAML) writes it: 2.0e-05, 0.0003."""
    text = repr(x).lower()
    return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text


def output_dir(config: str) -> str:
    """The shipped configs' output_dir: /tmp/torchtune/llama3_1_8B/full for llama3_1/8B_full."""
    folder, _, name = config.partition("/")
    size, _, kind = name.partition("_")
    return f"/tmp/torchtune/{folder}_{size}/{kind or 'full'}"


def config_dump(job: JobSpec, settings: dict[str, str], epochs: int) -> list[str]:
    """The recipe's main keys as OmegaConf.to_yaml(sort_keys=True) prints the resolved config."""
    out = settings.get("output_dir", output_dir(settings.get("config", "llama3_1/8B_full")))
    per_epoch = settings.get("max_steps_per_epoch", "null")
    return [
        f"batch_size: {job.micro_batch}",
        "checkpointer:",
        "  _component_: torchtune.training.FullModelHFCheckpointer",
        f"  output_dir: {out}",
        "clip_grad_norm: null",
        "compile: false",
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
        "optimizer:",
        "  _component_: torch.optim.AdamW",
        "  fused: true",
        f"  lr: {yaml_float(job.lr)}",
        f"output_dir: {out}",
        "resume_from_checkpoint: false",
        f"seed: {settings.get('seed', 'null')}",
        "shuffle: true",
        "",
    ]


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
        out.append(BarDraw(self.meter))
        return out

    def _saved(self, event: EpochDone) -> list[str]:
        """CheckpointClient's synchronous save at the epoch's end, as the HF checkpointer logs it.

        The recipe's bar is still open: the first line lands at its end, as in real logs."""
        job = self.job
        assert job is not None
        out = self.settings.get("output_dir", output_dir(self.settings.get("config", "llama3_1/8B_full")))
        folder = f"{out}/epoch_{event.epoch - 1}"
        total_s = checkpoint.save_seconds(job, event.step, full=False)
        intermediate = event.epoch < event.epochs
        lines = [
            f"{PREFIX}Saving checkpoint. This may take some time. Retrieving full model state dict...",
            # Rank 0 gathers the shards to CPU before it writes: a quarter of the save here.
            f"{PREFIX}Getting full model state dict took {0.25 * total_s:.2f} secs",
        ]
        if intermediate:
            lines.append(f"{PREFIX}Getting optimizer state dict...")
            lines.append(f"{PREFIX}Getting optimizer state dict took {0.1 * total_s:.2f} secs")
        for f in checkpoint.safetensors_shards(job.model):
            size = f.nbytes / _GIB
            lines.append(f"{PREFIX}Model checkpoint of size {size:.2f} GiB saved to {folder}/{f.name}")
        if intermediate:
            state = 4.0 * job.model.params / _GIB  # AdamW's m and v in bf16
            path = f"{out}/recipe_state/recipe_state.pt"
            lines.append(f"{PREFIX}Recipe checkpoint of size {state:.2f} GiB saved to {path}")
        else:
            lines.append(f"{PREFIX}Saving final epoch checkpoint.")
            # Two string literals joined without a space, as the checkpointer's message is.
            lines.append(
                f"{PREFIX}The full model checkpoint, including all weights and configurations, has been "
                "saved successfully.You can now use this checkpoint for further training or inference."
            )
        lines.append(f"{PREFIX}Saving checkpoint took {total_s:.2f} secs")
        return lines


_RANK0: frozenset[type[Event]] = frozenset(
    {ProcessGroupReady, ModelBuilt, TrainingStarted, StepDone, EpochDone, TrainingFinished}
)
