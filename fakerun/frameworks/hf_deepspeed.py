"""HF Trainer's DeepSpeed integration: a config's "auto" values filled from TrainingArguments."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fakerun.dsconfig import DsConfig, parse_ds_config
from fakerun.sim.job import JobSpec

__all__ = ["filled"]

_TRUE = ("true", "1", "yes", "y", "t")
# TrainingArguments' defaults of what the simulation does not otherwise read.
_ADAM = {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}
_MAX_GRAD_NORM = 1.0


def _fill(config: dict[str, Any], key: str, value: object) -> None:
    """HfDeepSpeedConfig.fill_match's fill: an "auto" value at the dotted `key` becomes `value` (a missing
    table or key stays missing)."""
    *tables, last = key.split(".")
    node: Any = config
    for name in tables:
        node = node.get(name) if isinstance(node, dict) else None
    if isinstance(node, dict) and node.get(last) == "auto":
        node[last] = value


def filled(ds: DsConfig, job: JobSpec, settings: Mapping[str, str]) -> DsConfig:
    """The config the Trainer hands deepspeed.initialize: trainer_config_process's and
    trainer_config_finalize's values for its "auto" keys (batch sizes, clipping, the optimizer's and the
    scheduler's parameters, fp16/bf16 from --fp16/--bf16, the hidden-size based bucket sizes)."""
    config = ds.user_config()
    h = job.model.hidden
    values: dict[str, object] = {
        "train_micro_batch_size_per_gpu": job.micro_batch,
        "gradient_accumulation_steps": job.grad_accum,
        "train_batch_size": job.global_batch,
        "gradient_clipping": _MAX_GRAD_NORM,
        "optimizer.params.lr": job.lr,
        **{f"optimizer.params.{k}": v for k, v in _ADAM.items()},
        "scheduler.params.warmup_min_lr": 0,
        "scheduler.params.warmup_max_lr": job.lr,
        "scheduler.params.total_num_steps": job.total_steps,
        "scheduler.params.warmup_num_steps": job.warmup_steps,
        "fp16.enabled": job.precision == "fp16",
        "amp.enabled": False,
        "bf16.enabled": settings.get("bf16", "false").lower() in _TRUE,
        "zero_optimization.reduce_bucket_size": h * h,
    }
    if ds.zero_stage == 3:
        values["zero_optimization.stage3_prefetch_bucket_size"] = int(0.9 * h * h)
        values["zero_optimization.stage3_param_persistence_threshold"] = 10 * h
    for key, value in values.items():
        _fill(config, key, value)
    return parse_ds_config(json.dumps(config)) or ds
