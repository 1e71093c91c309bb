"""HF Trainer's DeepSpeed integration: a config's "auto" values filled from TrainingArguments, and the
values that contradict them, which the Trainer refuses on every rank."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from fakerun.dsconfig import DsConfig, parse_ds_config
from fakerun.frameworks import hf_script
from fakerun.frameworks.pytrace import Frame
from fakerun.sim.job import JobSpec

__all__ = ["filled", "mismatches", "refusal"]

_TRUE = ("true", "1", "yes", "y", "t")
# TrainingArguments' defaults of the values checked against the config.
_DEFAULTS = {
    "max_grad_norm": 1.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "weight_decay": 0.0,
}
_OPT_LEVEL = "O1"  # fp16_opt_level's default
# Where transformers 4.50.0 raises it: Trainer.train -> _inner_training_loop -> deepspeed_init ->
# HfTrainerDeepSpeedConfig.trainer_config_finalize (trainer.py and integrations/deepspeed.py of its wheel).
_FRAMES = (
    ("trainer.py", 2245, "train", "return inner_training_loop(", "inner_training_loop("),
    (
        "trainer.py",
        2322,
        "_inner_training_loop",
        "self.optimizer, self.lr_scheduler = deepspeed_init(self, num_training_steps=max_steps)",
        "deepspeed_init(self, num_training_steps=max_steps)",
    ),
    (
        "integrations/deepspeed.py",
        450,
        "deepspeed_init",
        "hf_deepspeed_config.trainer_config_finalize(args, model, num_training_steps)",
        None,
    ),
    ("integrations/deepspeed.py", 271, "trainer_config_finalize", "raise ValueError(", None),
)


def _flag(settings: Mapping[str, str], key: str) -> bool:
    return settings.get(key, "false").lower() in _TRUE


def _float(settings: Mapping[str, str], key: str) -> float:
    """A float TrainingArguments field as HfArgumentParser types it (its default when not given)."""
    try:
        return float(settings[key])
    except (KeyError, ValueError):
        return _DEFAULTS[key]


def _checks(job: JobSpec, settings: Mapping[str, str]) -> Iterator[tuple[str, object, str, bool]]:
    """trainer_config_process's, then trainer_config_finalize's fill_match calls in their order: (config key,
    TrainingArguments value, its name in the message, whether a value that is not "auto" must equal it)."""
    h = job.model.hidden
    fp16 = job.precision == "fp16" or _flag(settings, "fp16_full_eval")
    apex = fp16 and settings.get("fp16_backend", settings.get("half_precision_backend", "")) == "apex"
    yield "train_micro_batch_size_per_gpu", job.micro_batch, "per_device_train_batch_size", True
    yield "gradient_accumulation_steps", job.grad_accum, "gradient_accumulation_steps", True
    batch = job.world_size * job.micro_batch * job.grad_accum
    yield "train_batch_size", batch, "train_batch_size (calculated)", True
    yield "gradient_clipping", _float(settings, "max_grad_norm"), "max_grad_norm", True
    yield "optimizer.params.lr", job.lr, "learning_rate", True
    betas = [_float(settings, "adam_beta1"), _float(settings, "adam_beta2")]
    yield "optimizer.params.betas", betas, "adam_beta1+adam_beta2", True
    yield "optimizer.params.eps", _float(settings, "adam_epsilon"), "adam_epsilon", True
    yield "optimizer.params.weight_decay", _float(settings, "weight_decay"), "weight_decay", True
    yield "scheduler.params.warmup_min_lr", 0, "", False
    yield "scheduler.params.warmup_max_lr", job.lr, "learning_rate", True
    yield "fp16.enabled", fp16 and not apex, "fp16|fp16_full_eval+fp16_backend(amp)", True
    yield "amp.enabled", apex, "fp16+fp16_backend(apex)", True
    yield "amp.opt_level", settings.get("fp16_opt_level", _OPT_LEVEL), "fp16_opt_level", True
    bf16 = _flag(settings, "bf16") or _flag(settings, "bf16_full_eval")
    yield "bf16.enabled", bf16, "bf16|bf16_full_eval", True
    yield "zero_optimization.reduce_bucket_size", h * h, "", False
    yield "zero_optimization.stage3_prefetch_bucket_size", int(0.9 * h * h), "", False
    yield "zero_optimization.stage3_param_persistence_threshold", 10 * h, "", False
    yield "scheduler.params.total_num_steps", job.total_steps, "num_training_steps (calculated)", True
    yield "scheduler.params.warmup_num_steps", job.warmup_steps, "warmup_steps", True


def _node(config: dict[str, Any], key: str) -> tuple[dict[str, Any] | None, str]:
    """HfDeepSpeedConfig.find_config_node: the table holding the dotted `key`'s last part, if every table
    on its way exists."""
    *tables, last = key.split(".")
    node: Any = config
    for name in tables:
        node = node.get(name) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), last


def _process(ds: DsConfig, job: JobSpec, settings: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The config with its "auto" values filled (fill_match) and the mismatch lines it collected."""
    config = ds.user_config()
    found: list[str] = []
    for key, value, hf_key, must_match in _checks(job, settings):
        if key.startswith("zero_optimization.stage3_") and ds.zero_stage != 3:
            continue  # filled only under ZeRO-3
        node, last = _node(config, key)
        if node is None:
            continue
        if node.get(last) == "auto":
            node[last] = value
        elif must_match and node.get(last) is not None and node[last] != value:
            found.append(f"- ds {key}={node[last]} vs hf {hf_key}={value}")
    return config, found


def filled(ds: DsConfig, job: JobSpec, settings: Mapping[str, str]) -> DsConfig:
    """The config the Trainer hands deepspeed.initialize: trainer_config_process's and
    trainer_config_finalize's values for its "auto" keys (batch sizes, clipping, the optimizer's and the
    scheduler's parameters, fp16/bf16 from --fp16/--bf16, the hidden-size based bucket sizes)."""
    config, _ = _process(ds, job, settings)
    return parse_ds_config(json.dumps(config)) or ds


def mismatches(ds: DsConfig, job: JobSpec, settings: Mapping[str, str]) -> list[str]:
    """The message's lines for the config's values that are neither "auto" nor the arguments' own."""
    return _process(ds, job, settings)[1]


def refusal(ds: DsConfig, job: JobSpec, settings: Mapping[str, str], script: str) -> tuple[str, int] | None:
    """What every rank dies of when the config contradicts TrainingArguments (trainer_config_finalize's
    ValueError through the script's trainer.train()), exit 1; None when nothing does."""
    found = mismatches(ds, job, settings)
    if not found:
        return None
    site = hf_script.site_packages("transformers")
    frames = [
        *hf_script.main_frames(script),
        *(Frame(f"{site}/{path}", line, func, code, marked) for path, line, func, code, marked in _FRAMES),
    ]
    message = (
        "Please correct the following DeepSpeed config values that mismatch TrainingArguments values:\n"
        + "\n".join(found)
        + "\nThe easiest method is to set these DeepSpeed config values to 'auto'."
    )
    # TrainingArguments set up the process group (accelerate's PartialState): torch's hook prefixes the lines.
    return hf_script.traceback(frames, f"ValueError: {message}"), 1
