"""torchtitan's models and flavors (0.2.x's TrainSpec tables, and the --module/--config registry of later
versions): each flavor's model arguments as torchtitan declares them and the exact model they build."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fakerun.presets import ModelSpec

__all__ = [
    "JOB_DEFAULTS",
    "REGISTRY",
    "RegistryEntry",
    "TitanError",
    "flavor_args",
    "flavor_model",
    "models",
    "registry_choice",
    "registry_settings",
    "registry_values",
]


class TitanError(Exception):
    """What torchtitan raises on these arguments: the exception's one-line text (`KeyError: 'x'`) and the
    frames of torchtitan it comes through (titan_errors.py draws the traceback)."""

    def __init__(self, exception: str, where: str) -> None:
        super().__init__(exception)
        self.exception = exception
        self.where = where  # a key of titan_errors' frame tables


# ----------------------------------------------------------------------------------------------------
# The model arguments, field by field in their dataclasses' order (json.dumps(asdict(args)) prints them so)

_ENFORCED = {"_enforced": "This field is used to enforce all fields have defaults."}
# torchtitan/models/moe/moe.py's MoEArgs
_MOE = {
    "num_experts": 8,
    "num_shared_experts": 1,
    "score_func": "sigmoid",
    "route_norm": False,
    "route_scale": 1.0,
    "gate_bias": False,
    "score_before_experts": True,
    "top_k": 1,
    "num_expert_groups": None,
    "num_limited_groups": None,
    "use_grouped_mm": True,
    "load_balance_coeff": 1e-3,
    "_debug_force_load_balance": False,
}
# llama3/model/args.py's RoPEScalingArgs; llama4's has its own defaults.
_LLAMA3_ROPE = {
    "scaling_factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
_LLAMA4_ROPE = {**_LLAMA3_ROPE, "scaling_factor": 16.0, "high_freq_factor": 1.0}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama3": {
        **_ENFORCED,
        "dim": 4096,
        "n_layers": 32,
        "n_heads": 32,
        "n_kv_heads": None,
        "vocab_size": 128256,
        "multiple_of": 256,
        "ffn_dim_multiplier": None,
        "norm_eps": 1e-05,
        "rope_theta": 10000,
        "rope_scaling_args": _LLAMA3_ROPE,
        "max_seq_len": 131072,
        "depth_init": True,
        "attn_type": "sdpa",
        "attn_mask_type": "causal",
        "eos_id": 0,
    },
    "llama4": {
        **_ENFORCED,
        "dim": 4096,
        "n_layers": 32,
        "n_heads": 32,
        "n_kv_heads": None,
        "vocab_size": 202048,
        "multiple_of": 256,
        "ffn_dim_multiplier": None,
        "norm_eps": 1e-05,
        "rope_theta": 10000,
        "rope_scaling_args": None,
        "max_seq_len": 1048576,
        "depth_init": True,
        "attn_type": "sdpa",
        "attn_mask_type": "causal",
        "every_n_layers_nope": None,
        "fixed_attn_block_size": 8192,
        "moe_args": _MOE,
        "auto_scale_hidden_dim": True,
        "interleave_moe_layer_step": 2,
    },
    "deepseek_v3": {
        **_ENFORCED,
        "max_batch_size": 8,
        "max_seq_len": 4096 * 4,
        "vocab_size": 102400,
        "dim": 2048,
        "inter_dim": 10944,
        "moe_inter_dim": 1408,
        "n_layers": 27,
        "n_dense_layers": 1,
        "n_heads": 16,
        "norm_eps": 1e-05,
        "moe_args": _MOE,
        "expert_parallel_comm_backend": "standard",
        "q_lora_rank": 0,
        "kv_lora_rank": 512,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "attn_type": "sdpa",
        "attn_mask_type": "causal",
        "original_seq_len": 4096,
        "rope_theta": 10000.0,
        "rope_factor": 40,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": 1.0,
    },
    "qwen3": {
        **_ENFORCED,
        "dim": 1024,
        "n_layers": 28,
        "n_heads": 16,
        "n_kv_heads": 8,
        "vocab_size": 151936,
        "head_dim": 128,
        "hidden_dim": 3072,
        "norm_eps": 1e-06,
        "rope_theta": 1000000,
        "qk_norm": True,
        "max_seq_len": 4096,
        "depth_init": True,
        "attn_type": "sdpa",
        "attn_mask_type": "causal",
        "eos_id": 151645,
        "enable_weight_tying": False,
        "moe_enabled": False,
        "moe_inter_dim": 768,
        "moe_args": _MOE,
    },
}
_DEFAULTS["llama3_ft"] = _DEFAULTS["llama3"]

_FLEX = {"attn_type": "flex", "attn_mask_type": "block_causal"}
_VARLEN = {"attn_type": "varlen", "attn_mask_type": "block_causal"}
_LLAMA3: dict[str, dict[str, Any]] = {
    "debugmodel": {"dim": 256, "n_layers": 6, "n_heads": 16, "vocab_size": 2048, "rope_theta": 500000},
    "8B": {
        "dim": 4096,
        "n_layers": 32,
        "n_heads": 32,
        "n_kv_heads": 8,
        "ffn_dim_multiplier": 1.3,
        "multiple_of": 1024,
        "rope_theta": 500000,
    },
    "70B": {
        "dim": 8192,
        "n_layers": 80,
        "n_heads": 64,
        "n_kv_heads": 8,
        "ffn_dim_multiplier": 1.3,
        "multiple_of": 4096,
        "rope_theta": 500000,
    },
    "405B": {
        "dim": 16384,
        "n_layers": 126,
        "n_heads": 128,
        "n_kv_heads": 8,
        "ffn_dim_multiplier": 1.2,
        "multiple_of": 4096,
        "rope_theta": 500000,
    },
}
_LLAMA3.update(
    {
        "debugmodel_flex_attn": {**_LLAMA3["debugmodel"], **_FLEX},
        "debugmodel_varlen_attn": {**_LLAMA3["debugmodel"], **_VARLEN},
        "8B_flex": {**_LLAMA3["8B"], **_FLEX},
        "8B_varlen": {**_LLAMA3["8B"], **_VARLEN},
    }
)
_LLAMA4_17B = {
    "dim": 5120,
    "n_layers": 48,
    "n_heads": 40,
    "n_kv_heads": 8,
    "ffn_dim_multiplier": 1.2,
    "multiple_of": 2048,
    "rope_theta": 500000,
}
_LLAMA4_DEBUG = {
    "dim": 256,
    "n_layers": 6,
    "n_heads": 16,
    "vocab_size": 2048,
    "rope_theta": 500000,
    "rope_scaling_args": _LLAMA4_ROPE,
}
_16E = {
    **_LLAMA4_17B,
    "rope_scaling_args": _LLAMA4_ROPE,
    "max_seq_len": 10485760,
    "moe_args": {**_MOE, "num_experts": 16},
    "interleave_moe_layer_step": 1,
}
_128E = {**_LLAMA4_17B, "moe_args": {**_MOE, "num_experts": 128}}
_IROPE = {"every_n_layers_nope": 4, **_FLEX}
_LLAMA4: dict[str, dict[str, Any]] = {
    "debugmodel": _LLAMA4_DEBUG,
    "17bx16e": _16E,
    "17bx128e": _128E,
    "debugmodel_irope": {**_LLAMA4_DEBUG, "every_n_layers_nope": 4, "fixed_attn_block_size": 256, **_FLEX},
    "17bx16e_irope": {**_16E, **_IROPE},
    "17bx128e_irope": {**_128E, **_IROPE},
}
_MLA = {"kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128}
_DS_SOFTMAX = {"score_func": "softmax", "route_norm": False, "score_before_experts": False}
_DS_DEBUG = {
    "vocab_size": 2048,
    "dim": 256,
    "inter_dim": 1024,
    "moe_inter_dim": 256,
    "n_layers": 6,
    "n_dense_layers": 1,
    "n_heads": 16,
    "moe_args": {**_MOE, "num_experts": 8, "num_shared_experts": 2, "top_k": 3, **_DS_SOFTMAX},
    "q_lora_rank": 0,
    **_MLA,
    "mscale": 0.70,
}
_DEEPSEEK: dict[str, dict[str, Any]] = {
    "debugmodel": _DS_DEBUG,
    "debugmodel_flex_attn": {**_DS_DEBUG, **_FLEX},
    "16B": {
        "vocab_size": 102400,
        "dim": 2048,
        "inter_dim": 10944,
        "moe_inter_dim": 1408,
        "n_layers": 27,
        "n_dense_layers": 1,
        "n_heads": 16,
        "moe_args": {**_MOE, "num_experts": 64, "num_shared_experts": 2, "top_k": 6, **_DS_SOFTMAX},
        "q_lora_rank": 0,
        **_MLA,
        "mscale": 0.70,
        **_FLEX,
    },
    "236B": {
        "vocab_size": 102400,
        "dim": 5120,
        "inter_dim": 12288,
        "moe_inter_dim": 1536,
        "n_layers": 60,
        "n_dense_layers": 1,
        "n_heads": 128,
        "moe_args": {
            **_MOE,
            "num_experts": 160,
            "num_shared_experts": 2,
            "top_k": 6,
            "num_expert_groups": 8,
            "num_limited_groups": 3,
            **_DS_SOFTMAX,
            "route_scale": 16.0,
        },
        "q_lora_rank": 1536,
        **_MLA,
        **_FLEX,
    },
    "671B": {
        "vocab_size": 129280,
        "dim": 7168,
        "inter_dim": 18432,
        "moe_inter_dim": 2048,
        "n_layers": 61,
        "n_dense_layers": 3,
        "n_heads": 128,
        "moe_args": {
            **_MOE,
            "num_experts": 256,
            "num_shared_experts": 1,
            "top_k": 8,
            "num_expert_groups": 8,
            "num_limited_groups": 4,
            "score_func": "sigmoid",
            "route_norm": True,
            "route_scale": 2.5,
            "score_before_experts": False,
        },
        "q_lora_rank": 1536,
        **_MLA,
        **_FLEX,
    },
}
_QWEN3_BASE = {"vocab_size": 151936, "max_seq_len": 4096, "head_dim": 128, "qk_norm": True}
_QWEN3_MOE = {**_MOE, "num_shared_experts": 0, "top_k": 8, "score_func": "softmax", "route_norm": True}
_QWEN3_MOE.update({"route_scale": 1.0, "score_before_experts": False})


def _qwen3(dim: int, layers: int, heads: int, hidden: int, **more: Any) -> dict[str, Any]:
    """One Qwen3ModelArgs of qwen3/__init__.py (8 KV heads, rope_theta 1e6 unless said)."""
    shape = {"dim": dim, "n_layers": layers, "n_heads": heads, "n_kv_heads": 8, "hidden_dim": hidden}
    return {**_QWEN3_BASE, **shape, "rope_theta": 1000000, **more}


_QWEN3: dict[str, dict[str, Any]] = {
    "debugmodel": _qwen3(256, 8, 16, 3072, vocab_size=2048, enable_weight_tying=True),
    "0.6B": _qwen3(1024, 28, 16, 3072, enable_weight_tying=True),
    "1.7B": _qwen3(2048, 28, 16, 6144, enable_weight_tying=True),
    "4B": _qwen3(2560, 36, 32, 9728, enable_weight_tying=True),
    "8B": _qwen3(4096, 36, 32, 12288),
    "14B": _qwen3(5120, 40, 40, 17408),
    "32B": _qwen3(5120, 64, 64, 25600),
    "debugmodel_moe": _qwen3(
        256,
        8,
        16,
        3072,
        vocab_size=2048,
        moe_enabled=True,
        moe_inter_dim=768,
        moe_args={**_QWEN3_MOE, "num_experts": 64},
    ),
    "30B-A3B": _qwen3(
        2048,
        48,
        32,
        6144,
        max_seq_len=262144,
        n_kv_heads=4,
        moe_enabled=True,
        moe_args={**_QWEN3_MOE, "num_experts": 128},
    ),
    "235B-A22B": _qwen3(
        4096,
        94,
        64,
        12288,
        n_kv_heads=4,
        rope_theta=5000000,
        moe_enabled=True,
        moe_inter_dim=1536,
        moe_args={**_QWEN3_MOE, "num_experts": 128},
    ),
}
_FLAVORS: dict[str, dict[str, dict[str, Any]]] = {
    "llama3": _LLAMA3,
    "llama3_ft": _LLAMA3,
    "llama4": _LLAMA4,
    "deepseek_v3": _DEEPSEEK,
    "qwen3": _QWEN3,
}
# torchtitan/models/__init__.py's _supported_models: the ones beyond _FLAVORS are not simulated (flux is a
# diffusion model; gpt_oss's attention sinks and expert biases are not in the formula).
_SUPPORTED = frozenset({"deepseek_v3", "flux", "gpt_oss", "llama3", "llama3_ft", "llama4", "qwen3"})
# JobConfig's defaults (config/job_config.py) for what the arguments leave out.
JOB_DEFAULTS: Mapping[str, object] = {
    "training.local_batch_size": 8,
    "training.seq_len": 2048,
    "training.steps": 10000,
    "lr_scheduler.warmup_steps": 200,
    "optimizer.lr": 8e-4,
}


def models() -> tuple[str, ...]:
    """The model names whose flavors are simulated."""
    return tuple(_FLAVORS)


def flavor_args(name: str, flavor: str) -> dict[str, Any]:
    """The flavor's model arguments as torchtitan's TrainSpec holds them (TitanError for an unknown one)."""
    table = _FLAVORS.get(name)
    if table is None:
        if name in _SUPPORTED:
            raise TitanError(f"model {name!r} is not simulated", where="")
        raise TitanError(f"ValueError: TrainSpec {name} is not registered.", where="train_spec")
    overrides = table.get(flavor)
    if overrides is None:
        raise TitanError(f"KeyError: {flavor!r}", where="flavor")
    return {**_DEFAULTS[name], **overrides}


def _llama_ffn(dim: int, multiple_of: int, multiplier: float | None) -> int:
    """FeedForward's hidden size: 2/3 of 4 x dim, times the multiplier, rounded up to multiple_of."""
    hidden = int(2 * (4 * dim) / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _llama4_expert_ffn(args: Mapping[str, Any]) -> int:
    """llama4's MoE hidden size: the FFN's before rounding, split over top_k + shared experts, rounded up."""
    moe = args["moe_args"]
    hidden = int(2 * (4 * args["dim"]) / 3)
    if args["ffn_dim_multiplier"] is not None:
        hidden = int(args["ffn_dim_multiplier"] * hidden)
    if args["auto_scale_hidden_dim"]:
        hidden = int(hidden / (moe["top_k"] + moe["num_shared_experts"]))
    multiple: int = args["multiple_of"]
    return hidden + -hidden % multiple


def _mla_params(args: Mapping[str, Any]) -> int:
    """DeepSeek V3's attention weights per layer: low-rank q (or one wq), wkv_a, kv_norm, wkv_b, wo."""
    dim, heads, q_rank, kv_rank = args["dim"], args["n_heads"], args["q_lora_rank"], args["kv_lora_rank"]
    qk_head = args["qk_nope_head_dim"] + args["qk_rope_head_dim"]
    q = dim * heads * qk_head if q_rank == 0 else dim * q_rank + q_rank + q_rank * heads * qk_head
    kv = dim * (kv_rank + args["qk_rope_head_dim"]) + kv_rank
    kv += kv_rank * heads * (args["qk_nope_head_dim"] + args["v_head_dim"])
    return int(q + kv + heads * args["v_head_dim"] * dim)


@functools.cache
def flavor_model(name: str, flavor: str) -> ModelSpec:
    """The model torchtitan builds for this flavor, with JobConfig's training defaults (TitanError)."""
    a = flavor_args(name, flavor)
    dim, heads = a["dim"], a["n_heads"]
    kv = a.get("n_kv_heads") or heads
    shape: dict[str, Any] = {"layers": a["n_layers"], "hidden": dim, "heads": heads, "kv_heads": kv}
    shape.update(vocab=a["vocab_size"], rope_theta=float(a["rope_theta"]), norm_eps=float(a["norm_eps"]))
    moe = a.get("moe_args", _MOE)
    family = "llama3" if name == "llama3_ft" else name
    if family == "llama3":
        shape["ffn_hidden"] = _llama_ffn(dim, a["multiple_of"], a["ffn_dim_multiplier"])
    elif family == "llama4":
        step = a["interleave_moe_layer_step"]
        shape.update(
            ffn_hidden=_llama_ffn(dim, a["multiple_of"], a["ffn_dim_multiplier"]),
            experts=moe["num_experts"],
            top_k=moe["top_k"],
            expert_ffn=_llama4_expert_ffn(a),
            shared_ffn=moe["num_shared_experts"] * _llama4_expert_ffn(a),
            # layer i is a MoE layer when (i + 1) % interleave_moe_layer_step == 0
            dense_layers=a["n_layers"] - a["n_layers"] // step,
        )
    elif family == "deepseek_v3":
        shape.update(
            ffn_hidden=a["inter_dim"],
            experts=moe["num_experts"],
            top_k=moe["top_k"],
            expert_ffn=a["moe_inter_dim"],
            shared_ffn=moe["num_shared_experts"] * a["moe_inter_dim"],
            dense_layers=a["n_dense_layers"],
            attn_params=_mla_params(a),
            head_width=a["qk_nope_head_dim"] + a["qk_rope_head_dim"],
        )
    else:  # qwen3
        shape.update(
            ffn_hidden=a["hidden_dim"],
            head_width=a["head_dim"],
            qk_norm=a["qk_norm"],
            tied_embeddings=a["enable_weight_tying"],
        )
        if a["moe_enabled"]:
            shape.update(
                experts=moe["num_experts"],
                top_k=moe["top_k"],
                expert_ffn=a["moe_inter_dim"],
                shared_ffn=moe["num_shared_experts"] * a["moe_inter_dim"],
            )
    micro = JOB_DEFAULTS["training.local_batch_size"]
    assert isinstance(micro, int)
    return ModelSpec(
        name=f"torchtitan-{name}-{flavor}",
        display_name=f"torchtitan {name} {flavor}",
        family=family,
        seq_len=int(str(JOB_DEFAULTS["training.seq_len"])),
        max_position=int(a["max_seq_len"]),
        micro_batch=micro,
        global_batch=micro,  # global_batch_size -1: local x data-parallel degree, set by the hints
        lr=float(str(JOB_DEFAULTS["optimizer.lr"])),
        min_lr_ratio=0.0,  # lr_scheduler.min_lr_factor
        warmup_steps=int(str(JOB_DEFAULTS["lr_scheduler.warmup_steps"])),
        total_steps=int(str(JOB_DEFAULTS["training.steps"])),
        zero_stage=3,  # data_parallel_shard_degree -1: FSDP over every rank
        recompute="selective",
        **shape,
    )


# ----------------------------------------------------------------------------------------------------
# The --module/--config registry (torchtitan after 0.2.x): a config function's model and training


@dataclass(frozen=True)
class RegistryEntry:
    """One config_registry function: its model flavor and what its Trainer.Config sets (the defaults are the
    Config classes' own: LRSchedulersContainer, MetricsProcessor, CheckpointManager, Validator, Profiler)."""

    module: str
    flavor: str
    local_batch: int  # num_tokens_per_microbatch_per_dp_rank // max_context_length
    seq_len: int  # max_context_length
    steps: int
    lr: float = 8e-4  # default_adamw(lr=...)
    warmup: int = 200
    decay_ratio: float | None = None  # None: decay over every step after the warmup
    decay_type: str = "linear"
    min_lr_factor: float = 0.0
    log_freq: int = 10
    checkpoint_interval: int = 500
    last_save_model_only: bool = True
    export_dtype: str = "float32"
    validator: tuple[int, int] | None = None  # Validator.Config(freq, steps); enable stays False in all
    ac: str = "selective"  # SelectiveAC.Config() or FullAC.Config()
    tp: int = 1
    ep: int = 1
    profiling: bool = False  # Profiler.Config(enable_profiling=True)
    tensorboard: bool = False  # MetricsProcessor.Config(enable_tensorboard=True)
    dataset: str = "c4"


# What the debug-model functions share: a short linear warmup-stable-decay, every step logged, a save at the
# end with the full state, the test dataset.
_DEBUG: dict[str, Any] = {
    "local_batch": 8,
    "seq_len": 2048,
    "steps": 10,
    "warmup": 2,
    "decay_ratio": 0.8,
    "log_freq": 1,
    "checkpoint_interval": 10,
    "last_save_model_only": False,
    "dataset": "c4_test",
}
# The Llama 3 functions' profiler and TensorBoard, and their Validator.Config(freq=500, steps=1200).
_LLAMA3_BIG: dict[str, Any] = {"profiling": True, "tensorboard": True, "validator": (500, 1200)}
# qwen3's: the full state in float16 at the end.
_QWEN3_SAVE: dict[str, Any] = {"last_save_model_only": False, "export_dtype": "float16"}
_QWEN3_BIG: dict[str, Any] = {**_QWEN3_SAVE, "warmup": 600, "steps": 3000, "ac": "full"}
_DS_DECAY: dict[str, Any] = {"lr": 2.2e-4, "decay_ratio": 0.8, "decay_type": "cosine", "min_lr_factor": 0.1}
# torchtitan/models/*/config_registry.py at the mirror's HEAD, function by function.
REGISTRY: Mapping[str, RegistryEntry] = {
    "llama3_debugmodel": RegistryEntry("llama3", "debugmodel", validator=(5, 10), **_DEBUG),
    "llama3_8b": RegistryEntry("llama3", "8B", 1, 8192, 1000, lr=3e-4, **_LLAMA3_BIG),
    "llama3_70b": RegistryEntry("llama3", "70B", 8, 8192, 1000, lr=1.5e-4, ac="full", tp=8, **_LLAMA3_BIG),
    "llama3_405b": RegistryEntry(
        "llama3", "405B", 2, 8192, 3000, lr=8e-5, warmup=600, ac="full", tp=8, **_LLAMA3_BIG
    ),
    "deepseek_v3_debugmodel": RegistryEntry("deepseek_v3", "debugmodel", **_DEBUG),
    "deepseek_v3_16b": RegistryEntry(
        "deepseek_v3", "16B", 4, 4096, 1000, checkpoint_interval=10, ep=8, **_DS_DECAY
    ),
    "deepseek_v3_671b": RegistryEntry("deepseek_v3", "671B", 4, 4096, 10000, warmup=2000, ep=2, **_DS_DECAY),
    "qwen3_debugmodel": RegistryEntry("qwen3", "debugmodel", **_DEBUG),
    "qwen3_0_6b": RegistryEntry("qwen3", "0.6B", 4, 4096, 10, lr=3e-4, warmup=2, log_freq=1, **_QWEN3_SAVE),
    "qwen3_1_7b": RegistryEntry(
        "qwen3", "1.7B", 4, 4096, 100, warmup=20, checkpoint_interval=50, **_QWEN3_SAVE
    ),
    "qwen3_14b": RegistryEntry("qwen3", "14B", 4, 4096, **_QWEN3_BIG),
    "qwen3_30b_a3b": RegistryEntry("qwen3", "30B-A3B", 2, 4096, **_QWEN3_BIG),
    "qwen3_32b": RegistryEntry("qwen3", "32B", 2, 4096, **_QWEN3_BIG),
    "qwen3_moe_debug": RegistryEntry(
        "qwen3",
        "debugmodel_moe",
        4,
        4096,
        10,
        lr=3e-4,
        warmup=2,
        log_freq=1,
        checkpoint_interval=10,
        dataset="c4_test",
        **_QWEN3_SAVE,
    ),
}


def registry_values(entry: RegistryEntry) -> dict[str, object]:
    """The config function's values under JobConfig's keys (hints.py reads them as a TOML file's)."""
    values: dict[str, object] = {
        "model.name": entry.module,
        "model.flavor": entry.flavor,
        "training.local_batch_size": entry.local_batch,
        "training.seq_len": entry.seq_len,
        "training.steps": entry.steps,
        "optimizer.lr": entry.lr,
        "lr_scheduler.warmup_steps": entry.warmup,
        "lr_scheduler.decay_type": entry.decay_type,
        "lr_scheduler.min_lr_factor": entry.min_lr_factor,
        "metrics.log_freq": entry.log_freq,
        "checkpoint.interval": entry.checkpoint_interval,
        "activation_checkpoint.mode": entry.ac,
        "parallelism.tensor_parallel_degree": entry.tp,
        "parallelism.expert_parallel_degree": entry.ep,
    }
    if entry.ac == "selective":  # SelectiveAC after 0.2.x is per-op checkpointing only
        values["activation_checkpoint.selective_ac_option"] = "op"
    if entry.decay_ratio is not None:
        values["lr_scheduler.decay_ratio"] = entry.decay_ratio
    if entry.validator is not None:
        values["validation.freq"], values["validation.steps"] = entry.validator
    return values


def registry_settings(name: str, entry: RegistryEntry) -> dict[str, str]:
    """The config function's textual settings the dialect reads (JobConfig's keys), and `titan.registry`:
    the function's name, which marks the registry form's log (trainer.py of the same sources)."""
    return {
        "titan.registry": name,
        "training.dataset": entry.dataset,
        "checkpoint.last_save_model_only": str(entry.last_save_model_only).lower(),
        "checkpoint.export_dtype": entry.export_dtype,
        "activation_checkpoint.mode": entry.ac,
        "profiling.enable_profiling": str(entry.profiling).lower(),
        "metrics.enable_tensorboard": str(entry.tensorboard).lower(),
    }


def _option(args: Sequence[str], name: str) -> str | None:
    """The value of `--name X` or `--name=X`, the last one given."""
    found: str | None = None
    for i, tok in enumerate(args):
        if tok == "--":
            break
        if tok.startswith(f"--{name}="):
            found = tok.split("=", 1)[1]
        elif tok == f"--{name}" and i + 1 < len(args):
            found = args[i + 1]
    return found


def registry_choice(args: Sequence[str]) -> tuple[str, RegistryEntry] | None:
    """The config function `--module M --config C` names, as (base function, entry) (None without
    --module); TitanError as ConfigManager._load_config raises it. A variant (`llama3_debugmodel_float8`)
    builds on its base config, so it takes the longest known config its name starts with."""
    module, config = _option(args, "module"), _option(args, "config")
    if module is None:
        return None
    if config is None:
        raise TitanError(
            "ValueError: --config is required. Example: --module llama3 --config llama3_debugmodel",
            "config_missing",
        )
    if module not in _SUPPORTED:
        raise TitanError(
            f"ImportError: Cannot import config_registry for module '{module}' from torchtitan.models, "
            "torchtitan.experiments, or torchtitan.experiments.rl.examples",
            "config_module",
        )
    if not any(e.module == module for e in REGISTRY.values()):
        raise TitanError(f"model {module!r} is not simulated", where="")
    bases = [name for name, e in REGISTRY.items() if e.module == module and config.startswith(name)]
    if not bases:
        available = sorted(name for name, e in REGISTRY.items() if e.module == module)
        raise TitanError(
            f"ValueError: Config function '{config}' not found in "
            f"torchtitan.models.{module}.config_registry. Available config functions: {available}",
            "config_function",
        )
    base = max(bases, key=len)
    return base, REGISTRY[base]
