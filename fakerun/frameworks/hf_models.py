"""Hugging Face model names and local checkpoints -> the architecture their config.json describes."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fakerun.presets import ModelSpec
from fakerun.sim import hf_layout

__all__ = ["DEFAULT_BLOCK", "Resolved", "model_spec", "resolve", "size_of"]

Config = dict[str, Any]

# run_clm.py's block_size when none is given and the tokenizer's limit is larger than the model's (or unset).
DEFAULT_BLOCK = 1024
# A tokenizer without model_max_length set (GPT-NeoX's, BLOOM's...): transformers' VERY_LARGE_INTEGER.
_UNSET = int(1e30)


@dataclass(frozen=True)
class _Family:
    """One family of published checkpoints: the config.json keys they share and each size's own."""

    label: str  # how a notice names the family
    pattern: re.Pattern[str]  # on the repo id's last part, lowercased; group "size" names a member
    base: Mapping[str, Any]
    sizes: Mapping[str, Mapping[str, Any]]  # size label as the repo spells it (lowercase) -> its keys
    tokenizer_max: int = _UNSET  # the tokenizer's model_max_length


def _sizes(keys: str, table: Mapping[str, tuple[Any, ...]]) -> dict[str, dict[str, Any]]:
    """Per-size config keys from rows of values in the order `keys` names them."""
    names = keys.split()
    return {size: dict(zip(names, row, strict=True)) for size, row in table.items()}


_NEOX_HEAD = "num_hidden_layers hidden_size num_attention_heads intermediate_size vocab_size"
_LLAMA_KEYS = (
    "num_hidden_layers hidden_size num_attention_heads num_key_value_heads intermediate_size "
    "vocab_size tie_word_embeddings max_position_embeddings"
)
_QWEN2 = {
    "model_type": "qwen2",
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
}

# config.json values of the published checkpoints (hidden, layers, heads, KV heads, FFN, vocabulary, context,
# tied head), by family. Sizes are the repos' own spellings.
_FAMILIES: tuple[_Family, ...] = (
    _Family(
        "GPT-2",
        re.compile(r"^(?P<size>distil)?gpt2(?:-(?P<size2>medium|large|xl))?$"),
        {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "activation_function": "gelu_new",
            "n_ctx": 1024,
            "n_positions": 1024,
            "vocab_size": 50257,
            "layer_norm_epsilon": 1e-5,
            "bos_token_id": 50256,
            "eos_token_id": 50256,
        },
        _sizes(
            "n_layer n_embd n_head",
            {"": (12, 768, 12), "medium": (24, 1024, 16), "large": (36, 1280, 20), "xl": (48, 1600, 25)}
            | {"distil": (6, 768, 12)},
        ),
        tokenizer_max=1024,
    ),
    _Family(
        "Pythia (GPT-NeoX)",
        re.compile(r"^pythia-(?P<size>[\d.]+[mb])"),
        {
            "model_type": "gpt_neox",
            "architectures": ["GPTNeoXForCausalLM"],
            "hidden_act": "gelu",
            "max_position_embeddings": 2048,
            "rotary_pct": 0.25,
            "rotary_emb_base": 10000,
            "use_parallel_residual": True,
            "layer_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
        _sizes(
            _NEOX_HEAD,
            {
                "14m": (6, 128, 4, 512, 50304),
                "31m": (6, 256, 8, 1024, 50304),
                "70m": (6, 512, 8, 2048, 50304),
                "160m": (12, 768, 12, 3072, 50304),
                "410m": (24, 1024, 16, 4096, 50304),
                "1b": (16, 2048, 8, 8192, 50304),
                "1.4b": (24, 2048, 16, 8192, 50304),
                "2.8b": (32, 2560, 32, 10240, 50304),
                "6.9b": (32, 4096, 32, 16384, 50432),
                "12b": (36, 5120, 40, 20480, 50688),
            },
        ),
    ),
    _Family(
        "GPT-Neo",
        re.compile(r"^gpt-neo-(?P<size>[\d.]+[mb])"),
        {
            "model_type": "gpt_neo",
            "architectures": ["GPTNeoForCausalLM"],
            "activation_function": "gelu_new",
            "max_position_embeddings": 2048,
            "vocab_size": 50257,
            "intermediate_size": None,
            "window_size": 256,
            "bos_token_id": 50256,
            "eos_token_id": 50256,
        },
        _sizes(
            "num_layers hidden_size num_heads",
            {"125m": (12, 768, 12), "1.3b": (24, 2048, 16), "2.7b": (32, 2560, 20)},
        ),
        tokenizer_max=2048,
    ),
    _Family(
        "GPT-J",
        re.compile(r"^gpt-j-(?P<size>[\d.]+b)"),
        {
            "model_type": "gptj",
            "architectures": ["GPTJForCausalLM"],
            "activation_function": "gelu_new",
            "n_positions": 2048,
            "rotary_dim": 64,
            "tie_word_embeddings": False,
            "bos_token_id": 50256,
            "eos_token_id": 50256,
        },
        _sizes("n_layer n_embd n_head vocab_size", {"6b": (28, 4096, 16, 50400)}),
        tokenizer_max=2048,
    ),
    _Family(
        "OPT",
        re.compile(r"^opt-(?P<size>[\d.]+[mb])"),
        {
            "model_type": "opt",
            "architectures": ["OPTForCausalLM"],
            "activation_function": "relu",
            "max_position_embeddings": 2048,
            "vocab_size": 50272,
            "do_layer_norm_before": True,
            "bos_token_id": 2,
            "eos_token_id": 2,
            "pad_token_id": 1,
        },
        {
            size: {
                "num_hidden_layers": layers,
                "hidden_size": h,
                "num_attention_heads": heads,
                "ffn_dim": 4 * h,
                "word_embed_proj_dim": 512 if size == "350m" else h,
                # OPT-350m normalises after each block (post-LN), so it has no final LayerNorm.
                **({"do_layer_norm_before": False} if size == "350m" else {}),
            }
            for size, (layers, h, heads) in {
                "125m": (12, 768, 12),
                "350m": (24, 1024, 16),
                "1.3b": (24, 2048, 32),
                "2.7b": (32, 2560, 32),
                "6.7b": (32, 4096, 32),
                "13b": (40, 5120, 40),
                "30b": (48, 7168, 56),
                "66b": (64, 9216, 72),
            }.items()
        },
        tokenizer_max=_UNSET,
    ),
    _Family(
        "BLOOM",
        re.compile(r"^bloom(?:z)?(?:-(?P<size>[\d]+[mb]\d*))?$"),
        {
            "model_type": "bloom",
            "architectures": ["BloomForCausalLM"],
            "vocab_size": 250880,
            "layer_norm_epsilon": 1e-5,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 3,
            # No position table (ALiBi): the context it was trained at.
            "seq_length": 2048,
        },
        _sizes(
            "n_layer hidden_size n_head",
            {
                "560m": (24, 1024, 16),
                "1b1": (24, 1536, 16),
                "1b7": (24, 2048, 16),
                "3b": (30, 2560, 32),
                "7b1": (30, 4096, 32),
                "": (70, 14336, 112),
            },
        ),
    ),
    _Family(
        "Qwen2.5",
        re.compile(r"^qwen2\.5-(?P<size>[\d.]+b)"),
        _QWEN2,
        _sizes(
            _LLAMA_KEYS,
            {
                "0.5b": (24, 896, 14, 2, 4864, 151936, True, 32768),
                "1.5b": (28, 1536, 12, 2, 8960, 151936, True, 131072),
                "3b": (36, 2048, 16, 2, 11008, 151936, True, 32768),
                "7b": (28, 3584, 28, 4, 18944, 152064, False, 131072),
                "14b": (48, 5120, 40, 8, 13824, 152064, False, 131072),
                "32b": (64, 5120, 40, 8, 27648, 152064, False, 131072),
                "72b": (80, 8192, 64, 8, 29568, 152064, False, 131072),
            },
        ),
        tokenizer_max=131072,
    ),
    _Family(
        "Qwen2",
        re.compile(r"^qwen2-(?P<size>[\d.]+b)"),
        _QWEN2,
        _sizes(
            _LLAMA_KEYS,
            {
                "0.5b": (24, 896, 14, 2, 4864, 151936, True, 131072),
                "1.5b": (28, 1536, 12, 2, 8960, 151936, True, 131072),
                "7b": (28, 3584, 28, 4, 18944, 152064, False, 131072),
                "72b": (80, 8192, 64, 8, 29568, 152064, False, 131072),
            },
        ),
        tokenizer_max=32768,
    ),
    _Family(
        "Qwen3",
        re.compile(r"^qwen3-(?P<size>[\d.]+b)"),
        {
            "model_type": "qwen3",
            "architectures": ["Qwen3ForCausalLM"],
            "hidden_act": "silu",
            "head_dim": 128,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000,
        },
        _sizes(
            _LLAMA_KEYS,
            {
                "0.6b": (28, 1024, 16, 8, 3072, 151936, True, 40960),
                "1.7b": (28, 2048, 16, 8, 6144, 151936, True, 40960),
                "4b": (36, 2560, 32, 8, 9728, 151936, True, 40960),
                "8b": (36, 4096, 32, 8, 12288, 151936, False, 40960),
                "14b": (40, 5120, 40, 8, 17408, 151936, False, 40960),
                "32b": (64, 5120, 64, 8, 25600, 151936, False, 40960),
            },
        ),
        tokenizer_max=131072,
    ),
    _Family(
        "Llama 2",
        re.compile(r"^llama-2-(?P<size>\d+b)"),
        {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
        },
        _sizes(
            _LLAMA_KEYS,
            {
                "7b": (32, 4096, 32, 32, 11008, 32000, False, 4096),
                "13b": (40, 5120, 40, 40, 13824, 32000, False, 4096),
                "70b": (80, 8192, 64, 8, 28672, 32000, False, 4096),
            },
        ),
    ),
    _Family(
        "Llama 3",
        re.compile(r"^(?:meta-)?llama-3-(?P<size>\d+b)"),
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "rope_theta": 500000.0},
        _sizes(
            _LLAMA_KEYS,
            {
                "8b": (32, 4096, 32, 8, 14336, 128256, False, 8192),
                "70b": (80, 8192, 64, 8, 28672, 128256, False, 8192),
            },
        ),
    ),
    _Family(
        "Llama 3.1",
        re.compile(r"^(?:meta-)?llama-3\.1-(?P<size>\d+b)"),
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "rope_theta": 500000.0},
        _sizes(
            _LLAMA_KEYS,
            {
                "8b": (32, 4096, 32, 8, 14336, 128256, False, 131072),
                "70b": (80, 8192, 64, 8, 28672, 128256, False, 131072),
                "405b": (126, 16384, 128, 8, 53248, 128256, False, 131072),
            },
        ),
        tokenizer_max=131072,
    ),
    _Family(
        "Llama 3.2",
        re.compile(r"^(?:meta-)?llama-3\.2-(?P<size>\d+b)"),
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "rope_theta": 500000.0},
        _sizes(
            _LLAMA_KEYS,
            {
                "1b": (16, 2048, 32, 8, 8192, 128256, True, 131072),
                "3b": (28, 3072, 24, 8, 8192, 128256, True, 131072),
            },
        ),
        tokenizer_max=131072,
    ),
    _Family(
        "TinyLlama",
        re.compile(r"^tinyllama(?:_v1\.1|-(?P<size>[\d.]+b))"),
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"]},
        _sizes(_LLAMA_KEYS, dict.fromkeys(("1.1b", ""), (22, 2048, 32, 4, 5632, 32000, False, 2048))),
        tokenizer_max=2048,
    ),
    _Family(
        "SmolLM2",
        re.compile(r"^smollm2-(?P<size>[\d.]+[mb])"),
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "rope_theta": 100000},
        _sizes(
            _LLAMA_KEYS,
            {
                "135m": (30, 576, 9, 3, 1536, 49152, True, 8192),
                "360m": (32, 960, 15, 5, 2560, 49152, True, 8192),
                "1.7b": (24, 2048, 32, 32, 8192, 49152, True, 8192),
            },
        ),
        tokenizer_max=8192,
    ),
    _Family(
        "SmolLM",
        re.compile(r"^smollm-(?P<size>[\d.]+[mb])"),
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"]},
        _sizes(
            _LLAMA_KEYS,
            {
                "135m": (30, 576, 9, 3, 1536, 49152, True, 2048),
                "360m": (32, 960, 15, 5, 2560, 49152, True, 2048),
                "1.7b": (24, 2048, 32, 32, 8192, 49152, True, 2048),
            },
        ),
        tokenizer_max=2048,
    ),
    _Family(
        "Mixtral",
        re.compile(r"^mixtral-(?P<size>8x\d+b)"),
        {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "num_local_experts": 8}
        | {"num_experts_per_tok": 2, "rope_theta": 1e6},
        _sizes(
            _LLAMA_KEYS,
            {
                "8x7b": (32, 4096, 32, 8, 14336, 32000, False, 32768),
                "8x22b": (56, 6144, 48, 8, 16384, 32768, False, 65536),
            },
        ),
    ),
    _Family(
        "Mistral",
        re.compile(r"^mistral-(?P<size>\d+b)(?:-instruct)?(?:-v0\.(?P<size2>\d))?"),
        {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": 4096},
        _sizes(
            _LLAMA_KEYS,
            {
                "7b": (32, 4096, 32, 8, 14336, 32000, False, 32768),
                "7b1": (32, 4096, 32, 8, 14336, 32000, False, 32768),
                "7b2": (32, 4096, 32, 8, 14336, 32000, False, 32768),
                "7b3": (32, 4096, 32, 8, 14336, 32768, False, 32768),
            },
        ),
    ),
    _Family(
        "Gemma 2",
        re.compile(r"^gemma-2-(?P<size>\d+b)"),
        {
            "model_type": "gemma2",
            "architectures": ["Gemma2ForCausalLM"],
            "head_dim": 256,
            "vocab_size": 256000,
        }
        | {"max_position_embeddings": 8192, "hidden_activation": "gelu_pytorch_tanh"},
        _sizes(
            "num_hidden_layers hidden_size num_attention_heads num_key_value_heads intermediate_size "
            "head_dim",
            {
                "2b": (26, 2304, 8, 4, 9216, 256),
                "9b": (42, 3584, 16, 8, 14336, 256),
                "27b": (46, 4608, 32, 16, 36864, 128),
            },
        ),
        tokenizer_max=8192,
    ),
    _Family(
        "Gemma",
        re.compile(r"^gemma-(?:1\.1-)?(?P<size>\d+b)"),
        {"model_type": "gemma", "architectures": ["GemmaForCausalLM"], "head_dim": 256, "vocab_size": 256000}
        | {"max_position_embeddings": 8192, "hidden_act": "gelu"},
        _sizes(
            "num_hidden_layers hidden_size num_attention_heads num_key_value_heads intermediate_size",
            {"2b": (18, 2048, 8, 1, 16384), "7b": (28, 3072, 16, 16, 24576)},
        ),
        tokenizer_max=8192,
    ),
    _Family(
        "Phi",
        re.compile(r"^phi-(?P<size>1_5|1\.5|2)$"),
        {"model_type": "phi", "architectures": ["PhiForCausalLM"], "vocab_size": 51200}
        | {"max_position_embeddings": 2048, "hidden_act": "gelu_new", "partial_rotary_factor": 0.5},
        _sizes(
            "num_hidden_layers hidden_size num_attention_heads intermediate_size",
            {"1_5": (24, 2048, 32, 8192), "1.5": (24, 2048, 32, 8192), "2": (32, 2560, 32, 10240)},
        ),
        tokenizer_max=2048,
    ),
    _Family(
        "Phi-3",
        re.compile(r"^phi-3-(?P<size>mini)-(?P<size2>4k|128k)"),
        {
            "model_type": "phi3",
            "architectures": ["Phi3ForCausalLM"],
            "vocab_size": 32064,
            "hidden_act": "silu",
        },
        _sizes(
            "num_hidden_layers hidden_size num_attention_heads num_key_value_heads intermediate_size "
            "max_position_embeddings",
            {"mini4k": (32, 3072, 32, 32, 8192, 4096), "mini128k": (32, 3072, 32, 32, 8192, 131072)},
        ),
        tokenizer_max=4096,
    ),
    _Family(
        "OLMo 2",
        re.compile(r"^olmo-2-1124-(?P<size>\d+b)"),
        {"model_type": "olmo2", "architectures": ["Olmo2ForCausalLM"], "vocab_size": 100352}
        | {"max_position_embeddings": 4096, "tie_word_embeddings": False, "rope_theta": 500000},
        _sizes(
            "num_hidden_layers hidden_size num_attention_heads num_key_value_heads intermediate_size",
            {"7b": (32, 4096, 32, 32, 11008), "13b": (40, 5120, 40, 40, 13824)},
        ),
        tokenizer_max=4096,
    ),
    _Family(
        "OLMo",
        re.compile(r"^olmo-(?P<size>\d+b)"),
        {"model_type": "olmo", "architectures": ["OlmoForCausalLM"], "vocab_size": 50304}
        | {"max_position_embeddings": 2048, "clip_qkv": None},
        _sizes(
            "num_hidden_layers hidden_size num_attention_heads num_key_value_heads intermediate_size "
            "tie_word_embeddings",
            {"1b": (16, 2048, 16, 16, 8192, True), "7b": (32, 4096, 32, 32, 11008, False)},
        ),
        tokenizer_max=2048,
    ),
    _Family(
        "FLAN-T5",
        re.compile(r"^(?:flan-t5|t5-v1_1)-(?P<size>small|base|large|xl|xxl)$"),
        {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "vocab_size": 32128}
        | {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, "d_kv": 64},
        _sizes(
            "d_model d_ff num_heads num_layers num_decoder_layers",
            {
                "small": (512, 1024, 6, 8, 8),
                "base": (768, 2048, 12, 12, 12),
                "large": (1024, 2816, 16, 24, 24),
                "xl": (2048, 5120, 32, 24, 24),
                "xxl": (4096, 10240, 64, 24, 24),
            },
        ),
        tokenizer_max=512,
    ),
    _Family(
        "T5",
        re.compile(r"^t5-(?P<size>small|base|large|3b|11b)$"),
        {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "vocab_size": 32128}
        | {"feed_forward_proj": "relu", "n_positions": 512},
        _sizes(
            "d_model d_ff num_heads d_kv num_layers num_decoder_layers",
            {
                "small": (512, 2048, 8, 64, 6, 6),
                "base": (768, 3072, 12, 64, 12, 12),
                "large": (1024, 4096, 16, 64, 24, 24),
                "3b": (1024, 16384, 32, 128, 24, 24),
                "11b": (1024, 65536, 128, 128, 24, 24),
            },
        ),
        tokenizer_max=512,
    ),
)
# The family an unknown name with a size is shaped as, and `--model_type NAME` from scratch: the model type's
# config class defaults (run_clm.py: CONFIG_MAPPING[model_type]()).
_LLAMA_SHAPED = next(f for f in _FAMILIES if f.label == "Llama 3.1")
_MODEL_TYPE_DEFAULTS: dict[str, Config] = {
    "gpt2": {**_FAMILIES[0].base, **_FAMILIES[0].sizes[""]},
    "llama": {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    | dict(zip(_LLAMA_KEYS.split(), (32, 4096, 32, 32, 11008, 32000, False, 2048), strict=True)),
    "opt": {"model_type": "opt", "architectures": ["OPTForCausalLM"], "vocab_size": 50272, "ffn_dim": 3072}
    | {
        "num_hidden_layers": 12,
        "hidden_size": 768,
        "num_attention_heads": 12,
        "max_position_embeddings": 2048,
    },
}
# A size as repos spell it: 160m, 0.5B, 1_8B, 1b1 (BLOOM's 1.1B), 8x7b.
_SIZE = re.compile(r"(?<![a-z0-9.])(?:(\d+)x)?(\d+(?:[._]\d+)?)([mb])(\d*)(?![a-z0-9])")


@dataclass(frozen=True)
class Resolved:
    """What a model name or path describes: the architecture, and the one line saying what was assumed."""

    model: ModelSpec | None
    notice: str | None = None


def size_of(text: str) -> float | None:
    """The parameter count a repo name's size suffix says (`pythia-160m`: 1.6e8), None when it has none."""
    m = _SIZE.search(text.lower())
    if m is None:
        return None
    experts, number, unit, tail = m.groups()
    value = float(number.replace("_", ".") + (f".{tail}" if tail else ""))
    scale = 1e6 if unit == "m" else 1e9
    # Mixtral's 8x7B has 8 experts of ~7B's MLPs around shared attention: about 0.8 of 8 x 7B.
    return value * scale * (int(experts) * 0.8 if experts else 1)


def model_spec(cfg: Mapping[str, Any], name: str, hf_name: str, tokenizer_max: int = _UNSET) -> ModelSpec:
    """The simulated model of a config.json: its shape, its exact parameter count, the config itself, and a
    context of run_clm.py's default block size."""
    s = hf_layout.shape_of(cfg)
    t5 = s.model_type == "t5"
    # T5 is an encoder-decoder: simulated as one stack of its layers with its exact parameter count.
    layers = s.layers + s.decoder_layers if t5 else s.layers
    heads = s.heads if s.hidden % s.heads == 0 else max(1, s.hidden // s.head_dim)
    kv = s.kv_heads if heads == s.heads and heads % s.kv_heads == 0 else heads
    if s.layernorm:
        norm, bias = "layernorm", "all"
    else:
        norm, bias = "rmsnorm", "qkv" if s.qkv_bias else "none"
    # run_clm.py without --block_size: the tokenizer's model_max_length, 1024 when it is longer.
    block = min(tokenizer_max, DEFAULT_BLOCK)
    return ModelSpec(
        name=name,
        display_name=hf_name or name,
        family=s.model_type,
        hf_name=hf_name,
        layers=layers,
        hidden=s.hidden,
        ffn_hidden=s.ffn,
        heads=heads,
        kv_heads=kv,
        vocab=s.vocab,
        seq_len=block,
        max_position=s.max_position + (2 if s.model_type == "opt" else 0),
        position="learned" if s.learned_positions else "rope",
        mlp="swiglu" if s.gated else "gelu",
        norm=norm,
        bias=bias,
        tied_embeddings=s.tied,
        experts=s.experts,
        top_k=min(s.top_k, s.experts),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        hf_config=json.dumps(dict(cfg), separators=(",", ":")),
        hf_params=hf_layout.param_count(cfg),
    )


def _family_match(base: str) -> tuple[_Family, str] | None:
    """The family a repo name belongs to and the size label it spells ("" when none)."""
    for family in _FAMILIES:
        m = family.pattern.search(base)
        if m is not None:
            groups = m.groupdict()
            return family, (groups.get("size") or "") + (groups.get("size2") or "").replace("v0.", "")
    return None


def _config(family: _Family, label: str) -> Config:
    return {**family.base, **family.sizes[label]}


def _derived(family: _Family, target: float) -> tuple[Config, str]:
    """A config of about `target` parameters in the family's shape: its nearest member's proportions (depth
    to width, FFN to hidden, head width, query heads per KV head), widened or narrowed to the size."""
    members = [(label, _config(family, label)) for label in family.sizes]
    label, near = min(members, key=lambda m: abs(math.log(hf_layout.param_count(m[1]) / target)))
    s = hf_layout.shape_of(near)
    group = s.heads // s.kv_heads
    step = s.head_dim * group
    best: tuple[float, Config] | None = None
    for k in range(1, 4 * s.heads // group + 2048 // step + 2):
        hidden = k * step
        if hidden > 8 * s.hidden + 4096:
            break
        layers = max(1, round(s.layers * hidden / s.hidden))
        candidate = _with_shape(near, s, hidden, layers)
        miss = abs(math.log(hf_layout.param_count(candidate) / target))
        if best is None or miss < best[0]:
            best = (miss, candidate)
    assert best is not None
    return best[1], label


def _with_shape(cfg: Config, s: hf_layout.Shape, hidden: int, layers: int) -> Config:
    """`cfg` widened to `hidden` over `layers` layers, its other proportions kept."""
    heads = hidden // s.head_dim
    ffn = max(64, round(s.ffn / s.hidden * hidden / 64) * 64)
    out = dict(cfg)
    for quantity, value in (("hidden", hidden), ("layers", layers), ("heads", heads), ("ffn", ffn)):
        keys = [k for k in hf_layout.ALIASES[quantity] if k in cfg] or [hf_layout.ALIASES[quantity][0]]
        out[keys[0]] = value
    if "num_key_value_heads" in cfg:
        out["num_key_value_heads"] = heads // (s.heads // s.kv_heads)
    if "word_embed_proj_dim" in cfg:
        out["word_embed_proj_dim"] = hidden
    return out


def _shape_text(spec: ModelSpec) -> str:
    s = hf_layout.shape_of(json.loads(spec.hf_config))
    return (
        f"{s.layers} layers, hidden {s.hidden}, {s.heads} heads, FFN {s.ffn}, vocabulary {s.vocab}; "
        f"{spec.params:,} parameters"
    )


def _local_config(path: str) -> Config | None:
    """A local checkpoint directory's config.json as from_pretrained reads it (JSON, never executed)."""
    try:
        candidate = Path(path).expanduser() / "config.json"
        if not candidate.is_file():
            return None
        value = json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def resolve(name: str) -> Resolved:
    """The architecture of a --model_name_or_path (or --config_name) value: a local directory's config.json,
    a published checkpoint's config, a family member derived from its size suffix, or a Llama-shaped model
    of the size the name gives; Resolved(None, notice) when the name says nothing usable."""
    cfg = _local_config(name)
    base = name.rstrip("/").split("/")[-1].lower()
    if cfg is not None:
        try:
            return Resolved(model_spec(cfg, base, name))
        except (ValueError, TypeError, ZeroDivisionError) as exc:
            return Resolved(None, f"{name}/config.json: {exc}; cannot tell its architecture")
    hit = _family_match(base)
    target = size_of(base)
    if hit is not None and hit[1] in hit[0].sizes:
        family, label = hit
        spec = model_spec(_config(family, label), base, name, family.tokenizer_max)
        return Resolved(spec, _t5_notice(spec))
    if hit is not None and target is not None:
        family = hit[0]
        cfg, near = _derived(family, target)
        spec = model_spec(cfg, base, name, family.tokenizer_max)
        notice = (
            f"{name}: no published {family.label} checkpoint of this size is known to fakerun; simulating "
            f"{family.label}-{near}'s shape scaled to the size in its name ({_shape_text(spec)})"
        )
        return Resolved(spec, notice)
    if target is not None:
        cfg, _ = _derived(_LLAMA_SHAPED, target)
        spec = model_spec(cfg, base, name, _LLAMA_SHAPED.tokenizer_max)
        notice = (
            f"{name}: unknown model; simulating a Llama-shaped model of the size in its name "
            f"({_shape_text(spec)})"
        )
        return Resolved(spec, notice)
    return Resolved(None, None)


def _t5_notice(spec: ModelSpec) -> str | None:
    """The line saying how an encoder-decoder is simulated (the simulation runs one stack of layers)."""
    if spec.family != "t5":
        return None
    return (
        f"{spec.hf_name} is an encoder-decoder (T5): simulated as one stack of its {spec.layers} encoder and "
        f"decoder layers with its {spec.params:,} parameters"
    )


def from_model_type(model_type: str) -> ModelSpec | None:
    """run_clm.py's `--model_type NAME` without a checkpoint or config: that config class's defaults."""
    cfg = _MODEL_TYPE_DEFAULTS.get(model_type.lower())
    return model_spec(cfg, f"{model_type}-from-scratch", "") if cfg is not None else None
