"""A DeepSpeed JSON config as DeepSpeed 0.19 reads it: the fields its engine prints and the job takes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DsConfig", "parse_ds_config"]

# DeepSpeed's defaults (runtime/constants.py, zero/config.py, fp16 loss scaler).
_BUCKET = 500_000_000
_PREFETCH = 50_000_000
_SCHEDULERS = ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest")


@dataclass(frozen=True)
class DsConfig:
    """The DeepSpeed config of a job: what the engine logs and how its fp16 loss scaler behaves."""

    user: str = "{}"  # the JSON object as given (keys in file order), for print_user_config; hashable as text
    log_level: str = "warning"  # 0.17.6+: INFO lines only with "log_level": "info" in the config
    precision: str = "bf16"  # "fp16", "bf16" or "fp32" (the dtype of the ZeRO optimizer)
    initial_scale_power: int = 16
    loss_scale_window: int = 1000
    hysteresis: int = 2
    min_loss_scale: float = 1.0
    optimizer: str | None = None  # the config's optimizer.type, None: the script's own (client) optimizer
    betas: tuple[float, ...] | None = None  # optimizer.params.betas as configured (a JSON list)
    scheduler: str | None = None
    steps_per_print: int = 10
    wall_clock_breakdown: bool = False
    zero_stage: int = 0
    reduce_bucket_size: int = _BUCKET
    allgather_bucket_size: int = _BUCKET
    cpu_offload: bool = False
    round_robin_gradients: bool = False
    gradient_clipping: float = 0.0
    memory_breakdown: bool = False
    prefetch_bucket_size: int = _PREFETCH
    # WarmupLR / WarmupDecayLR params (lr_schedules.py); warmup_max_lr None: the optimizer's lr, and
    # warmup_num_steps None: filled in by the caller (HF's "auto").
    warmup_min_lr: float = 0.0
    warmup_max_lr: float | None = None
    warmup_num_steps: int | None = 1000
    warmup_type: str = "log"
    total_num_steps: int | None = None

    def user_config(self) -> dict[str, Any]:
        """The config as the script gave it, keys in file order."""
        value = json.loads(self.user)
        return value if isinstance(value, dict) else {}

    @property
    def stage0_wrapper(self) -> str | None:
        """The 16-bit wrapper of ZeRO stage 0 (engine._configure_fp16_optimizer, for fp16 and, with 16-bit
        gradient accumulation, bf16): FP16_Optimizer around a FusedAdam (the config's Adam/AdamW),
        FP16_UnfusedOptimizer around anything else (a client optimizer, Lamb); None: no wrapper."""
        if self.zero_stage > 0 or self.precision == "fp32":
            return None
        fused = (self.optimizer or "").lower() in ("adam", "adamw")
        return "FP16_Optimizer" if fused else "FP16_UnfusedOptimizer"

    @property
    def info(self) -> bool:
        """Whether DeepSpeed's logger prints INFO lines (the config's log_level is info or debug)."""
        return self.log_level in ("info", "debug")


def _int(value: object, default: int) -> int:
    """An integer config value; "auto" and anything else DeepSpeed would fill in keep the default."""
    if isinstance(value, bool):
        return default
    if isinstance(value, (int, float)) and float(value).is_integer():
        return int(value)
    return default


def _bool(table: Mapping[str, Any], key: str) -> bool:
    """A boolean config value (absent, "auto" or a non-boolean: False)."""
    return table.get(key) is True


def _table(config: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """A sub-table of the config, empty when absent or not a table."""
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def _number(value: object) -> float | None:
    """A numeric config value, None for "auto", booleans and anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def parse_ds_config(text: str) -> DsConfig | None:
    """The config in `text` (JSON), None when it is not a JSON object."""
    try:
        config = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(config, dict):
        return None
    fp16, bf16 = _table(config, "fp16"), _table(config, "bf16") or _table(config, "bfloat16")
    precision = "fp16" if _bool(fp16, "enabled") else "bf16" if _bool(bf16, "enabled") else "fp32"
    optimizer = _table(config, "optimizer")
    opt_type = optimizer.get("type")
    params = _table(optimizer, "params")
    betas = params.get("betas")
    scheduler = _table(config, "scheduler").get("type")
    sched = _table(_table(config, "scheduler"), "params")
    warmup = sched.get("warmup_num_steps", 1000)
    total = sched.get("total_num_steps")
    zero = _table(config, "zero_optimization")
    offload = _table(zero, "offload_optimizer")
    prefetch = zero.get("prefetch_bucket_size")  # the field's name; stage3_prefetch_bucket_size its alias
    level = config.get("log_level")
    return DsConfig(
        user=json.dumps(config),
        log_level=level.lower() if isinstance(level, str) else "warning",
        precision=precision,
        initial_scale_power=_int(fp16.get("initial_scale_power"), 16),
        loss_scale_window=max(1, _int(fp16.get("loss_scale_window"), 1000)),
        hysteresis=max(1, _int(fp16.get("hysteresis"), 2)),
        min_loss_scale=float(_int(fp16.get("min_loss_scale"), 1)),
        optimizer=opt_type if isinstance(opt_type, str) else None,
        betas=(
            tuple(float(b) for b in betas)
            if isinstance(betas, list) and all(isinstance(b, (int, float)) for b in betas)
            else None
        ),
        scheduler=scheduler if isinstance(scheduler, str) and scheduler in _SCHEDULERS else None,
        steps_per_print=max(1, _int(config.get("steps_per_print"), 10)),
        wall_clock_breakdown=_bool(config, "wall_clock_breakdown"),
        zero_stage=_int(zero.get("stage"), 0),
        reduce_bucket_size=_int(zero.get("reduce_bucket_size"), _BUCKET),
        allgather_bucket_size=_int(zero.get("allgather_bucket_size"), _BUCKET),
        cpu_offload=offload.get("device") == "cpu" or _bool(zero, "cpu_offload"),
        round_robin_gradients=_bool(zero, "round_robin_gradients"),
        gradient_clipping=_number(config.get("gradient_clipping")) or 0.0,
        memory_breakdown=_bool(config, "memory_breakdown"),
        prefetch_bucket_size=_int(zero.get("stage3_prefetch_bucket_size", prefetch), _PREFETCH),
        warmup_min_lr=_number(sched.get("warmup_min_lr")) or 0.0,
        warmup_max_lr=_number(sched.get("warmup_max_lr")),
        warmup_num_steps=_int(warmup, 0) or None,
        # Any other type falls back to log, as WarmupLR warns.
        warmup_type="linear" if sched.get("warmup_type") == "linear" else "log",
        total_num_steps=_int(total, 0) or None,
    )
