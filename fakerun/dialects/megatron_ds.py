"""Megatron-DeepSpeed (BigScience's fork, BLOOM): Megatron's log with its own iteration line and timers."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import ClassVar

from fakerun.dialects.base import HintRule
from fakerun.dialects.events import (
    StepDone,
)
from fakerun.dialects.files import Artifact, SaveRequest
from fakerun.dialects.megatron import (
    SAVE_DIR,
    MegatronDialect,
    _e,
    interval_loss,
    nan_iterations,
    split_has_test,
    tracker,
)
from fakerun.sim import checkpoint

# Selected by its path, by --fake-trainer, or (hints.parse_hints) by DeepSpeed's switches beside Megatron's
# arguments: it adds options to Megatron's parser rather than spelling its own, so it takes no votes.
HINTS = HintRule(script=re.compile(r"megatron[-_]deepspeed"), arch_defaults=True, save_option="save")
_DS_SWITCHES = frozenset({"deepspeed", "deepspeed_config", "deepspeed-config", "zero-stage", "zero_stage"})


def applies(script: str, option_names: Sequence[str]) -> bool:
    """Whether a Megatron script (by path or options) is launched with DeepSpeed's switches."""
    if not _DS_SWITCHES & set(option_names):
        return False
    megatron = MegatronDialect.hints
    path = script.replace("\\", "/").lower()
    by_path = megatron.script is not None and megatron.script.search(path) is not None
    return by_path or any(megatron.votes(o) for o in option_names)


def data_group(split: str) -> str:
    """The data group pretrain() names an evaluation by, in its log and its TensorBoard tags (`valid`, `test`
    unless --valid/--test-weighted-split-names name them)."""
    return "test" if split == "test" else "valid"


def ds_iteration_line(
    *,
    step: int,
    total: int,
    samples: int,
    tokens: int,
    step_s: float,
    lr: float,
    global_batch: int,
    loss: float | None,
    loss_scale: float | None,
    grad_norm: float | None,
    skipped: int,
    nan_iters: int,
    samples_per_s: float,
    tflops: float,
) -> str:
    """megatron/training.py training_log of Megatron-DeepSpeed: no timestamp, seconds, samples/s, TFLOPs."""
    parts = [
        f" iteration {step:8d}/{total:8d}",
        f" consumed samples: {samples:12d}",
        f" consumed tokens: {tokens:12d}",
        f" elapsed time per iteration (s): {step_s:.2f}",
        f" learning rate: {lr:.3E}",
        f" global batch size: {global_batch:5d}",
    ]
    if loss is not None:
        parts.append(f" lm loss: {_e(loss)}")
    if loss_scale is not None:  # printed with --fp16 only
        parts.append(f" loss scale: {loss_scale:.1f}")
    if grad_norm is not None:
        parts.append(f" grad norm: {grad_norm:.3f}" if not math.isnan(grad_norm) else " grad norm: nan")
        parts.append(" num zeros: 0.0")
    parts += [
        f" number of skipped iterations: {skipped:3d}",
        f" number of nan iterations: {nan_iters:3d}",
        f" samples per second: {samples_per_s:.3f}",
        f" TFLOPs: {tflops:.2f}",
    ]
    return " |".join(parts) + " |"


class MegatronDeepSpeedDialect(MegatronDialect):
    """Megatron-DeepSpeed's console (2022): the older Megatron-LM's lines with the BLOOM iteration line."""

    name: ClassVar[str] = "megatron-deepspeed"
    hints: ClassVar[HintRule] = HINTS
    always_legacy: ClassVar[bool] = True  # forked from 2021 Megatron-LM: its start-up, timers and saves

    @staticmethod
    def artifacts(request: SaveRequest) -> Sequence[Artifact]:
        """DeepSpeed's engine save under --save: `global_step20/` with each tensor-parallel shard's model
        states (first data-parallel rank) and every rank's ZeRO (or BF16 optimizer) states, rank 0's
        `latest` tag; then Megatron's tracker file."""
        if request.kind != "checkpoint":
            return ()
        save = request.settings.get("save") or SAVE_DIR
        tag = f"global_step{request.step}"
        job = request.run.job
        c = job.coords(request.rank)
        shard = job.model.params // (job.tp * job.pp)
        out: list[Artifact] = []
        if c.dp_rank == 0:
            size = shard * checkpoint.WEIGHT_BYTES
            out.append(Artifact(os.path.join(save, tag, f"mp_rank_{c.tp_rank:02d}_model_states.pt"), size))
        # ZeRO partitions the optimizer over the data-parallel ranks; without ZeRO, bf16 runs DeepSpeed's
        # BF16_Optimizer, whose files carry the "bf16_" prefix (fp16 without ZeRO: inside the model states).
        prefix = "" if job.zero_stage >= 1 else "bf16_" if job.precision == "bf16" else None
        if prefix is not None:
            name = f"{prefix}zero_pp_rank_{c.dp_rank}_mp_rank_{c.tp_rank:02d}_optim_states.pt"
            out.append(Artifact(os.path.join(save, tag, name), shard * checkpoint.OPTIMIZER_BYTES // job.dp))
        if request.rank == 0:
            out.append(Artifact.text(os.path.join(save, "latest"), tag))
        return out + tracker(save, request)

    def iteration(self, event: StepDone, at: float) -> str:
        """The BLOOM-style line."""
        del at
        n = event.numbers
        job = event.run.job
        return ds_iteration_line(
            step=n.step,
            total=job.total_steps,
            samples=n.samples,
            tokens=n.tokens,
            step_s=event.interval_s,
            lr=n.lr,
            global_batch=job.global_batch,
            loss=interval_loss(event),
            loss_scale=event.loss_scale if job.precision == "fp16" else None,
            grad_norm=None if event.step_skipped else n.grad_norm,
            skipped=event.skipped_iters,
            nan_iters=nan_iterations(event),
            samples_per_s=event.samples_per_s,
            tflops=event.megatron_tflops,
        )

    @classmethod
    def has_test(cls, settings: Mapping[str, str]) -> bool:
        """do_test of the fork: its weighted split paths (data loading option 2) test only with
        --test-weighted-split-paths[-path]; --data-path's --split as Megatron's."""
        option2 = ("train_weighted_split_paths", "train_weighted_split_paths_path")
        if any(name in settings for name in option2):
            return bool({"test_weighted_split_paths", "test_weighted_split_paths_path"} & settings.keys())
        return split_has_test(settings.get("split"))

    def loss_label(self, split: str) -> str:
        """The fork names the loss by its data group, no leading space."""
        return data_group(split)
