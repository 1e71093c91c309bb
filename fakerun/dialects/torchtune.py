"""torchtune's distributed recipes (full_finetune_distributed and kin): rank 0's INFO lines and tqdm bar."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from fakerun.dialects.base import BarClose, BarDraw, HintRule, Line, Output, Seat
from fakerun.dialects.events import (
    Event,
    JobStarted,
    ModelBuilt,
    ProcessGroupReady,
    StepDone,
    TrainingFinished,
    TrainingStarted,
)
from fakerun.render import bar
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


def bar_prefix(epoch: int, step: int, loss: float) -> str:
    """The recipe's pbar description: `{epoch}|{global_step}|Loss: {loss}` (the loss as Python prints it)."""
    return f"{epoch}|{step}|Loss: {loss!r}"


def config_dump(job: JobSpec, config: str, output_dir: str) -> list[str]:
    """A resolved config as OmegaConf.to_yaml(sort_keys=True) prints the recipe's main keys."""
    return [
        f"batch_size: {job.micro_batch}",
        "checkpointer:",
        "  _component_: torchtune.training.FullModelHFCheckpointer",
        f"  output_dir: {output_dir}",
        "clip_grad_norm: null",
        "compile: false",
        "dtype: bf16",
        f"enable_activation_checkpointing: {str(job.recompute != 'none').lower()}",
        f"gradient_accumulation_steps: {job.grad_accum}",
        "log_every_n_steps: 1",
        "log_peak_memory_stats: true",
        "metric_logger:",
        "  _component_: torchtune.training.metric_logging.DiskLogger",
        f"  log_dir: {output_dir}/logs",
        "optimizer:",
        "  _component_: torch.optim.AdamW",
        "  fused: true",
        f"  lr: {job.lr:g}",
        f"output_dir: {output_dir}",
        "resume_from_checkpoint: false",
        f"seed: {job.seed}",
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

    def wants(self, kind: type[Event]) -> bool:
        """Rank 0 logs (utils.log_rank_zero); every rank needs the run's plan."""
        return kind is JobStarted or (self.seat.rank == 0 and kind in _RANK0)

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """torchtune's lines for `event` (rank 0 only)."""
        if isinstance(event, JobStarted):
            self.settings = dict(event.settings)
            self.job = event.run.job
            return ()
        if self.seat.rank != 0 or self.job is None:
            return ()
        job = self.job
        if isinstance(event, ProcessGroupReady):
            config = self.settings.get("config", "llama3_1/8B_full")
            recipe = _RECIPES["full_finetune_distributed"]
            output_dir = f"/tmp/torchtune/{config.replace('/', '_')}"
            lines = [f"{PREFIX}Running {recipe} with resolved config:", ""]
            lines += config_dump(job, config, output_dir)
            lines.append(
                f"{PREFIX}Distributed training is enabled. "
                "Instantiating model and loading checkpoint on Rank 0 ..."
            )
            return [Line(t, "stderr") for t in lines]
        if isinstance(event, ModelBuilt):
            gib = event.weights_bytes / _GIB
            lines = [
                f"{PREFIX}Instantiating model and loading checkpoint took {event.init_s:.2f} secs",
                f"{PREFIX}Memory stats after model init:",
                f"\tGPU peak memory active: {gib:.2f} GiB",
                f"\tGPU peak memory alloc: {gib:.2f} GiB",
                f"\tGPU peak memory reserved: {gib:.2f} GiB",
                f"{PREFIX}Optimizer is initialized.",
                f"{PREFIX}Loss is initialized.",
            ]
            return [Line(t, "stderr") for t in lines]
        if isinstance(event, TrainingStarted):
            lines = [
                f"{PREFIX}Learning rate scheduler is initialized.",
                f"{PREFIX} Profiler config after instantiation: {{'enabled': False}}",
            ]
            return [Line(t, "stderr") for t in lines]
        if isinstance(event, StepDone):
            n = event.numbers
            run = event.run
            per_epoch = run.steps_per_epoch
            epoch = run.epoch_of(n.step)
            inner = n.step - (epoch - 1) * per_epoch
            return [
                BarDraw(
                    bar.meter(
                        inner,
                        per_epoch,
                        event.elapsed_s,
                        prefix=bar_prefix(epoch, n.step, n.loss),
                        rate=bar.ema_rate(event.recent_s),
                        ncols=self.seat.bar_columns,
                        initial=max(0, run.first_step - 1 - (epoch - 1) * per_epoch),
                    )
                )
            ]
        if isinstance(event, TrainingFinished):
            return [BarClose()]
        return ()


_RANK0: frozenset[type[Event]] = frozenset(
    {ProcessGroupReady, ModelBuilt, TrainingStarted, StepDone, TrainingFinished}
)
