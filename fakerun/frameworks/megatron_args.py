"""Megatron-LM's own reading of its arguments (core v0.15): the model it builds, the defaults it fills in,
and the refusals of validate_args and its batch calculator, as the ranks raise them."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fakerun.frameworks import pytrace
from fakerun.presets import ModelSpec

__all__ = [
    "ECHO_PREFIX",
    "MODERN_ONLY",
    "Reading",
    "hybrid_pattern",
    "read",
    "tokenizer_vocab",
    "world_exit",
    "world_size_exit",
]

# store_true options this module reads (argparse: present or not, no value).
_FLAGS = frozenset(
    {
        "swiglu",
        "group_query_attention",
        "untie_embeddings_and_output_weights",
        "disable_bias_linear",
        "add_qkv_bias",
        "sequence_parallel",
        "fp16",
        "bf16",
        "use_rotary_position_embeddings",
        "no_position_embedding",
        "use_legacy_models",
    }
)
# Options with one value this module reads.
_VALUES = frozenset(
    {
        *("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups"),
        *("kv_channels", "max_position_embeddings", "seq_length", "position_embedding_type"),
        *("normalization", "make_vocab_size_divisible_by", "vocab_size", "tokenizer_type", "tokenizer_model"),
        *("num_experts", "moe_router_topk", "moe_ffn_hidden_size", "moe_shared_expert_intermediate_size"),
        *("hybrid_attention_ratio", "hybrid_mlp_ratio", "hybrid_override_pattern", "hybrid_layer_pattern"),
        *("mamba_state_dim", "mamba_head_dim", "mamba_num_groups"),
        *("micro_batch_size", "global_batch_size", "train_iters", "train_samples", "lr", "min_lr"),
        *("lr_warmup_iters", "lr_warmup_fraction", "lr_warmup_samples", "lr_decay_iters", "lr_decay_samples"),
        *("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size"),
        *(
            "expert_model_parallel_size",
            "expert_tensor_parallel_size",
            "save",
            "save_interval",
            "ckpt_format",
            "fp8_format",
            "fp8_recipe",
        ),
        *("log_interval", "eval_interval", "eval_iters", "global_batch_size"),
        *("lr_wsd_decay_iters", "lr_wsd_decay_samples", "lr_wsd_decay_style"),
        *("adam_beta1", "adam_beta2", "adam_eps", "init_method_std", "weight_decay", "attention_dropout"),
        *("hidden_dropout", "tensorboard_dir", "rotary_base"),
    }
)
# Arguments the arguments block echoes as the script gave them (argparse's type: float, int, str, flag), else
# Megatron's defaults (arguments.py); pretrain_gpt.py's args_defaults make the tokenizer GPT-2's.
_ECHOED: tuple[tuple[str, type, object], ...] = (
    *(("adam_beta1", float, 0.9), ("adam_beta2", float, 0.999), ("adam_eps", float, 1e-08)),
    *(("init_method_std", float, 0.02), ("weight_decay", float, 0.01)),
    *(("attention_dropout", float, 0.1), ("hidden_dropout", float, 0.1)),
    *(("tokenizer_type", str, "GPT2BPETokenizer"), ("tokenizer_model", str, None), ("vocab_size", int, None)),
    *(("position_embedding_type", str, "learned_absolute"), ("normalization", str, "LayerNorm")),
    *(("swiglu", bool, False), ("rotary_base", int, 10000), ("tensorboard_dir", str, None)),
    *(("train_samples", int, None), ("lr_warmup_samples", int, 0), ("lr_decay_samples", int, None)),
)
# Of those, the ones Megatron-LM gained after 2022 (absent from the 2021-22 code's block).
MODERN_ONLY = frozenset(
    {"tokenizer_model", "vocab_size", "position_embedding_type", "normalization", "swiglu", "rotary_base"}
)
ECHO_PREFIX = "megatron.arg."  # Hints.settings keys of the echoed arguments (the rest is the dest name)
# Its defaults (megatron/training/arguments.py) where they differ from a preset's training defaults.
DEFAULT_LOG_INTERVAL = 100
DEFAULT_EVAL_INTERVAL = 1000
DEFAULT_EVAL_ITERS = 100
DEFAULT_TOPK = 2  # --moe-router-topk
DEFAULT_DIVISIBLE_BY = 128  # --make-vocab-size-divisible-by
TIKTOKEN_VOCAB = 2**17  # CustomTikTokenizer's vocab_size when --vocab-size is not given
GPT2_VOCAB = 50257
FALLBACK_VOCAB = 32000  # a tokenizer file of no known family: Llama 2's and Mistral's size
# Tokenizer files by a word of their path (lower case, first match wins) -> len(tokenizer), which Megatron's
# HuggingFaceTokenizer and SentencePiece tokenizers report as vocab_size.
_TOKENIZER_FILES: tuple[tuple[tuple[str, ...], int], ...] = (
    (("llama-3", "llama3", "llama_3"), 128256),
    (("mistral-nemo", "nemo-12b"), 131072),
    (("llama-2", "llama2", "llama_2", "mixtral", "mistral"), 32000),
    (("qwen3",), 151669),
    (("qwen2", "qwen1.5"), 151665),
    (("gpt2", "gpt-2"), GPT2_VOCAB),
    (("nemotron", "256k", "gemma"), 256000),
)
_REQUIRED = ("num_layers", "hidden_size", "num_attention_heads", "max_position_embeddings")
_POSITIONS = {
    **{"learned_absolute": "learned", "none": "none"},
    **dict.fromkeys(("rope", "mrope", "relative"), "rope"),
}


@dataclass(frozen=True)
class Reading:
    """What Megatron makes of a script's arguments: the model, defaults, settings, and an early death."""

    model: ModelSpec | None = None  # the model pretrain_gpt/pretrain_mamba builds (padded vocabulary)
    seq_len: int | None = None
    defaults: dict[str, object] = field(default_factory=dict)  # make_job values unless the script set them
    job: dict[str, object] = field(default_factory=dict)  # make_job values Megatron derives (they win)
    cadence: dict[str, int] = field(default_factory=dict)  # cadence defaults unless given
    settings: dict[str, str] = field(default_factory=dict)
    notices: tuple[str, ...] = ()
    script_exit: tuple[str, int] | None = None
    layout: tuple[int, int, int] = (1, 1, 1)  # tensor, pipeline and context parallel sizes as given
    params_dtype: str = "torch.float32"  # --bf16: torch.bfloat16, --fp16: torch.float16

    def printed_before(self, world: int) -> str:
        """What rank 0 has printed on `world` GPUs when a refusal after validate_args' world-size check
        stops it (Hints.world_stdout): the layout line and the parameters' dtype. Before that check (a world
        size it refuses): nothing."""
        tp, pp, cp = self.layout
        if world % (tp * pp * cp):
            return ""
        # Megatron prints from rank 0 only (pytrace.MASTER_LINE).
        return (
            f"{pytrace.MASTER_LINE}using world size: {world}, data-parallel size: {world // (tp * pp * cp)}, "
            f"context-parallel size: {cp}, hierarchical context-parallel sizes: None, tensor-model-parallel "
            f"size: {tp}, pipeline-model-parallel size: {pp}\n"
            f"{pytrace.MASTER_LINE}using {self.params_dtype} for parameters ...\n"
        )


def scan(args: Sequence[str]) -> dict[str, str | None]:
    """The options this module reads, by argparse's dest name; the last one given wins (flags: None)."""
    out: dict[str, str | None] = {}
    i = 0
    while i < len(args):
        tok = args[i]
        i += 1
        if not tok.startswith("--") or len(tok) == 2:
            continue
        name, eq, inline = tok[2:].partition("=")
        key = name.replace("-", "_")
        if key in _FLAGS and not eq:
            out[key] = None
        elif key in _VALUES:
            if eq:
                out[key] = inline
            elif i < len(args) and not args[i].startswith("--"):
                out[key] = args[i]
                i += 1
    return out


def _shown(kind: type, text: str) -> str:
    """An argument's value as _print_args shows it: argparse's conversion, then str()."""
    try:
        return str(kind(text)) if kind in (int, float) else text
    except ValueError:
        return text


def echoed(opts: Mapping[str, str | None]) -> dict[str, str]:
    """Hints.settings of the arguments the block echoes: the script's values, else Megatron's defaults; a
    run given in samples shows train_iters None and no warmup iterations (validate_args keeps them so)."""
    out: dict[str, str] = {}
    for dest, kind, default in _ECHOED:
        if kind is bool:
            shown = str(dest in opts)
        elif opts.get(dest):
            shown = _shown(kind, opts[dest] or "")
        else:
            shown = str(default)
        out[ECHO_PREFIX + dest] = shown
    if opts.get("train_samples") and not opts.get("train_iters"):
        out[ECHO_PREFIX + "train_iters"] = "None"
        out[ECHO_PREFIX + "lr_warmup_iters"] = str(_int(opts, "lr_warmup_iters", 0))
    return out


def tokenizer_vocab(opts: Mapping[str, str | None], default_type: str) -> tuple[int, str | None]:
    """The tokenizer's vocab_size as build_tokenizer finds it, and a notice when it had to be guessed."""
    kind = opts.get("tokenizer_type") or default_type
    given = opts.get("vocab_size")
    if kind == "GPT2BPETokenizer":
        return GPT2_VOCAB, None
    if kind == "NullTokenizer" and given:
        return int(given) + 1, None  # _NullTokenizer: the ids below vocab_size, then its end-of-document id
    if kind == "TikTokenizer":
        return int(given) if given else TIKTOKEN_VOCAB, None
    if kind in ("Llama3Tokenizer",):
        return 128256, None
    if kind == "Llama2Tokenizer":
        return 32000, None
    path = (opts.get("tokenizer_model") or "").lower()
    for words, vocab in _TOKENIZER_FILES:
        if any(w in path for w in words):
            return vocab, None
    if given:
        return int(given), None
    shown = opts.get("tokenizer_model") or "none"
    return FALLBACK_VOCAB, (
        f"Megatron --tokenizer-type {kind} with --tokenizer-model {shown}: no known tokenizer by that name; "
        f"simulating a vocabulary of {FALLBACK_VOCAB} tokens"
    )


def padded_vocab(vocab: int, tp: int, divisible_by: int) -> int:
    """_vocab_size_with_padding: up to a multiple of --make-vocab-size-divisible-by x tensor parallel size."""
    multiple = divisible_by * tp
    return -(-vocab // multiple) * multiple


def hybrid_pattern(layers: int, attention: float, mlp: float, override: str | None) -> str:
    """allocate_layers (megatron/core/ssm/mamba_hybrid_layer_allocation.py): the override, else the layers
    spread by the attention and MLP ratios (Python's round, as the source uses)."""
    if override:
        return override
    kinds = ["M"] * layers
    n_attention = round(layers * attention)
    section = (layers - n_attention) / (n_attention + 1)
    x = section
    for i in range(layers):
        if x < 0.5:
            kinds[i] = "*"
            x += section
        else:
            x -= 1
    n_mlp = round(layers * mlp)
    if n_mlp > 0:
        ratio = (layers - n_attention - n_mlp) / n_mlp
        x = ratio
        for i in range(layers):
            if kinds[i] == "M":
                if x < 0.5:
                    kinds[i] = "-"
                    x += ratio
                else:
                    x -= 1
    return "".join(kinds)


# ----------------------------------------------------------------------------------------------------
# Tracebacks: the frames of core v0.15.3 from the script's `pretrain(` down to the failing assert (Python
# 3.12: a multi-line statement shows its first line, no carets under a whole-line call).

_Frame = tuple[str, int, str, str]  # file (relative to Megatron's checkout), line, function, source line
_TO_VALIDATE: tuple[_Frame, ...] = (
    ("megatron/training/training.py", 586, "pretrain", "initialize_megatron("),
    ("megatron/training/initialize.py", 88, "initialize_megatron", "validate_args(args, args_defaults)"),
)
_TO_CALCULATOR: tuple[_Frame, ...] = (
    ("megatron/training/training.py", 586, "pretrain", "initialize_megatron("),
    ("megatron/training/initialize.py", 92, "initialize_megatron", "set_global_variables(args)"),
    ("megatron/training/global_vars.py", 91, "set_global_variables", "init_num_microbatches_calculator("),
    (
        "megatron/core/num_microbatches_calculator.py",
        90,
        "init_num_microbatches_calculator",
        "_configure_global_num_microbatches_calculator(",
    ),
    (
        "megatron/core/num_microbatches_calculator.py",
        181,
        "_configure_global_num_microbatches_calculator",
        "_GLOBAL_NUM_MICROBATCHES_CALCULATOR = _build_num_microbatches_calculator(",
    ),
    (
        "megatron/core/num_microbatches_calculator.py",
        220,
        "_build_num_microbatches_calculator",
        "num_microbatches_calculator = ConstantNumMicroBatchesCalculator(",
    ),
    (
        "megatron/core/num_microbatches_calculator.py",
        340,
        "__init__",
        "assert global_batch_size % micro_batch_times_data_parallel_size == 0, (",
    ),
)
# To the expert grid's check in initialize_model_parallel (after init_process_group).
_TO_MODEL_PARALLEL: tuple[_Frame, ...] = (
    ("megatron/training/training.py", 586, "pretrain", "initialize_megatron("),
    ("megatron/training/initialize.py", 156, "initialize_megatron", "finish_mpu_init()"),
    (
        "megatron/training/initialize.py",
        121,
        "finish_mpu_init",
        "_initialize_distributed(get_embedding_ranks, get_position_embedding_ranks, store)",
    ),
    ("megatron/training/initialize.py", 359, "_initialize_distributed", "mpu.initialize_model_parallel("),
    ("megatron/core/parallel_state.py", 750, "initialize_model_parallel", "raise RuntimeError("),
)
_ARGS = "megatron/training/arguments.py"
_ASSERTS: dict[str, _Frame] = {
    "world": (_ARGS, 374, "validate_args", "assert args.world_size % total_model_size == 0, ("),
    "heads": (_ARGS, 840, "validate_args", "assert args.hidden_size % args.num_attention_heads == 0"),
    "cp_seq": (
        _ARGS,
        844,
        "validate_args",
        "assert args.seq_length % (args.context_parallel_size * 2) == 0, \\",
    ),
    "position": (_ARGS, 856, "validate_args", "assert args.max_position_embeddings >= args.seq_length, \\"),
    "min_lr": (_ARGS, 862, "validate_args", "assert args.min_lr <= args.lr"),
    "save_interval": (_ARGS, 864, "validate_args", "assert args.save_interval is not None"),
    "experts": (
        _ARGS,
        1039,
        "validate_args",
        "assert args.num_experts % args.expert_model_parallel_size == 0, \\",
    ),
    "ep_none": (
        _ARGS,
        1038,
        "validate_args",
        'assert args.num_experts is not None, "num_experts must be non None to use expert model parallelism"',
    ),
}
# From setup_model_and_optimizer in pretrain() to TransformerConfig's __post_init__ (core v0.15.3), where the
# model's sizes meet the tensor-parallel size; (file, line, function, source, the part carets mark).
_BUILDERS = {
    "pretrain_mamba.py": (
        "mamba_builders.py",
        14,
        "mamba_builder",
        "core_transformer_config_from_args(args, TransformerConfig)",
    ),
    # Megatron's later pretrain_hybrid.py (its line numbers: the script's own at HEAD, the rest v0.15.3's).
    "pretrain_hybrid.py": (
        "hybrid_builders.py",
        15,
        "hybrid_builder",
        "core_transformer_config_from_args(args, TransformerConfig)",
    ),
}
_GPT_BUILDER = ("gpt_builders.py", 29, "gpt_builder", "core_transformer_config_from_args(args)")
_TO_CONFIG: tuple[tuple[str, int, str, str, str | None], ...] = (
    (
        "megatron/training/training.py",
        666,
        "pretrain",
        "model, optimizer, opt_param_scheduler = setup_model_and_optimizer(",
        None,
    ),
    (
        "megatron/training/training.py",
        1094,
        "setup_model_and_optimizer",
        "model = get_model(model_provider_func, model_type)",
        "get_model(model_provider_func, model_type)",
    ),
    ("megatron/training/training.py", 885, "get_model", "model = build_model()", "build_model()"),
    (
        "megatron/training/training.py",
        877,
        "build_model",
        "model = model_provider_func(pre_process=pre_process, post_process=post_process)",
        "model_provider_func(pre_process=pre_process, post_process=post_process)",
    ),
    (
        "model_provider.py",
        68,
        "model_provider",
        "return model_builder(args, pre_process, post_process, vp_stage)",
        "model_builder(args, pre_process, post_process, vp_stage)",
    ),
)
_FROM_CONFIG = (_ARGS, 1307, "core_transformer_config_from_args", "return config_class(**kw_args)")
# The dataclass's generated __init__ (exec'd text, no source): line 3 + one per field of TransformerConfig
# and ModelParallelConfig (204 in v0.15.3) calls __post_init__ (Python 3.12's dataclasses._create_fn).
_INIT_LINE = 207
_CONFIG_FILE = "megatron/core/transformer/transformer_config.py"
_CONFIG_RAISES = {"num_attention_heads": 744, "num_query_groups": 759}

# pretrain()'s call in each entry script (the line of `pretrain(`).
_ENTRY = {
    "pretrain_mamba.py": (223, "pretrain(train_valid_test_datasets_provider,"),
    "pretrain_hybrid.py": (553, "pretrain("),
}
_ENTRY_GPT = (233, "pretrain(")


def traceback_text(
    script: str,
    frames: Sequence[_Frame],
    message: str,
    *,
    error: str = "AssertionError",
    after_init: bool = False,
) -> str:
    """Python's traceback of an exception (`error`) raised under the script's pretrain(): without a rank
    prefix before init_process_group (torch's excepthook is not installed yet), with it after."""
    path = os.path.abspath(script)
    root = os.path.dirname(path)
    line, code = _ENTRY.get(os.path.basename(path), _ENTRY_GPT)
    entries = [pytrace.Frame(path, line, "<module>", code)]
    entries += [pytrace.Frame(f"{root}/{file}", n, func, source) for file, n, func, source in frames]
    return pytrace.traceback_text(entries, f"{error}: {message}" if message else error, after_init=after_init)


def _validate_exit(script: str, check: str, message: str = "") -> tuple[str, int]:
    """A failed assert of validate_args as every rank dies of it: its traceback, exit code 1."""
    return traceback_text(script, (*_TO_VALIDATE, _ASSERTS[check]), message), 1


# ----------------------------------------------------------------------------------------------------
# Reading the arguments


def _int(opts: Mapping[str, str | None], key: str, default: int) -> int:
    """An integer option, its default when absent or not a number (hints.py reports malformed values)."""
    try:
        return int(opts.get(key) or default)
    except ValueError:
        return default


def _float(opts: Mapping[str, str | None], key: str, default: float) -> float:
    """A float option, its default when absent or not a number."""
    try:
        return float(opts.get(key) or default)
    except ValueError:
        return default


def _size_name(params: int) -> str:
    """`124m`, `1.3b`: a model's size as a name suffix."""
    return f"{params / 1e6:.0f}m" if params < 1e9 else f"{params / 1e9:.1f}b"


def _main_pattern(opts: Mapping[str, str | None]) -> str | None:
    """The hybrid stack's layers as --hybrid-layer-pattern (or its deprecated --hybrid-override-pattern) gives
    them: the main decoder's part before the first MTP separator `/`, pipeline separators `|` dropped
    (get_hybrid_total_layer_count)."""
    pattern = opts.get("hybrid_layer_pattern") or opts.get("hybrid_override_pattern")
    return pattern.split("/")[0].replace("|", "") if pattern else None


def _is_hybrid(script: str, opts: Mapping[str, str | None]) -> bool:
    """Whether the script builds a hybrid (Mamba) stack: pretrain_mamba.py, pretrain_hybrid.py, or a
    pattern of layers."""
    name = os.path.basename(script).lower()
    return "mamba" in name or "hybrid" in name or _main_pattern(opts) is not None


def _model(script: str, opts: Mapping[str, str | None], tp: int) -> tuple[ModelSpec, str | None]:
    """The model pretrain_gpt.py or pretrain_mamba.py builds from these (validated) arguments."""
    layers = int(opts["num_layers"] or 0)
    hidden = int(opts["hidden_size"] or 0)
    heads = int(opts["num_attention_heads"] or 0)
    swiglu = "swiglu" in opts
    ffn = _int(opts, "ffn_hidden_size", int(4 * hidden * 2 / 3 / 64) * 64 if swiglu else 4 * hidden)
    kv_channels = _int(opts, "kv_channels", 0)
    groups = _int(opts, "num_query_groups", 1) if "group_query_attention" in opts else heads
    position = _POSITIONS.get(opts.get("position_embedding_type") or "learned_absolute", "learned")
    if "use_rotary_position_embeddings" in opts:
        position = "rope"
    if "no_position_embedding" in opts:
        position = "none"
    experts = _int(opts, "num_experts", 0)
    moe = experts > 1
    vocab, notice = tokenizer_vocab(opts, "GPT2BPETokenizer")
    padded = padded_vocab(vocab, tp, _int(opts, "make_vocab_size_divisible_by", DEFAULT_DIVISIBLE_BY))
    mamba = _is_hybrid(script, opts)
    hybrid = ""
    if mamba:
        hybrid = hybrid_pattern(
            layers,
            _float(opts, "hybrid_attention_ratio", 0.0),
            _float(opts, "hybrid_mlp_ratio", 0.0),
            _main_pattern(opts),
        )
    tokenizer = opts.get("tokenizer_type") or "GPT2BPETokenizer"
    llama = swiglu and opts.get("normalization") == "RMSNorm" and position == "rope"
    family = "mamba" if mamba else "gpt2" if tokenizer == "GPT2BPETokenizer" else "llama" if llama else "gpt"
    bias = "all" if "disable_bias_linear" not in opts else "qkv" if "add_qkv_bias" in opts else "none"
    seq = _int(opts, "seq_length", int(opts["max_position_embeddings"] or 1))
    spec = ModelSpec(
        name="megatron-custom",
        layers=layers,
        hidden=hidden,
        ffn_hidden=_int(opts, "moe_ffn_hidden_size", ffn) if moe else ffn,
        heads=heads,
        kv_heads=groups,
        vocab=padded,
        seq_len=seq,
        max_position=int(opts["max_position_embeddings"] or seq),
        family=family,
        position=position,
        mlp="swiglu" if swiglu else "gelu",
        norm="rmsnorm" if opts.get("normalization") == "RMSNorm" else "layernorm",
        bias=bias,
        tied_embeddings="untie_embeddings_and_output_weights" not in opts,
        experts=max(experts, 1),
        top_k=min(_int(opts, "moe_router_topk", DEFAULT_TOPK), experts) if moe else 1,
        head_width=0 if kv_channels * heads == hidden else kv_channels,
        shared_ffn=_int(opts, "moe_shared_expert_intermediate_size", 0) if moe else 0,
        hybrid=hybrid,
        mamba_state=_int(opts, "mamba_state_dim", 128),
        mamba_head_dim=_int(opts, "mamba_head_dim", 64),
        mamba_groups=_int(opts, "mamba_num_groups", 8),
        recompute="none",  # Megatron recomputes nothing unless --recompute-granularity says so
        zero_stage=0,  # nor shards the optimizer without --use-distributed-optimizer
    )
    name = f"{family}-{_size_name(spec.params)}-custom"
    kind = "hybrid Mamba" if mamba else "MoE" if moe else "GPT"
    spec = dataclasses.replace(spec, name=name, display_name=f"Megatron {kind} {_size_name(spec.params)}")
    return spec, notice


def _model_exit(script: str, opts: Mapping[str, str | None]) -> tuple[str, int] | None:
    """validate_args' refusals of the model and schedule arguments, in its order (the world size aside)."""
    hidden, heads = _int(opts, "hidden_size", 1), _int(opts, "num_attention_heads", 1)
    if not opts.get("kv_channels") and hidden % heads:
        return _validate_exit(script, "heads")
    cp = _int(opts, "context_parallel_size", 1)
    seq = _int(opts, "seq_length", 0)
    if seq and cp > 1 and seq % (cp * 2):
        return _validate_exit(
            script,
            "cp_seq",
            "seq-length should be a multiple of 2 * context-parallel-size if context-parallel-size > 1.",
        )
    max_pos = _int(opts, "max_position_embeddings", 0)
    if seq and max_pos < seq:
        return _validate_exit(
            script,
            "position",
            f"max_position_embeddings ({max_pos}) must be greater than or equal to seq_length ({seq}).",
        )
    if opts.get("lr") and _float(opts, "min_lr", 0.0) > _float(opts, "lr", 0.0):
        return _validate_exit(script, "min_lr")
    if opts.get("save") and not opts.get("save_interval"):
        return _validate_exit(script, "save_interval")
    ep = _int(opts, "expert_model_parallel_size", 1)
    experts = _int(opts, "num_experts", 0)
    if ep > 1 and not experts:
        message = "num_experts must be non None to use expert model parallelism"
        return _validate_exit(script, "ep_none", message)
    if ep > 1 and experts % ep:
        message = "Number of experts should be a multiple of expert model parallel_size."
        return _validate_exit(script, "experts", message)
    return None


def _iterations(opts: Mapping[str, str | None], iters: str, samples: str) -> int:
    """An iteration count given as iterations, or as samples of --global-batch-size each; 0 if neither."""
    gbs = _int(opts, "global_batch_size", 0)
    if opts.get(iters):
        return _int(opts, iters, 0)
    return _int(opts, samples, 0) // gbs if gbs else 0


def _schedule(opts: Mapping[str, str | None]) -> tuple[dict[str, object], dict[str, object]]:
    """(defaults, derived) of the learning-rate schedule (get_optimizer_param_scheduler): linear decay to 0
    after no warmup unless told; the decay ends at --lr-decay-iters (else the run's end), min_lr after it;
    --lr-warmup-fraction of the decay iterations; WSD's annealing steps and style."""
    defaults: dict[str, object] = {"lr_schedule": "linear", "warmup_steps": 0, "min_lr": 0.0}
    derived: dict[str, object] = {}
    fraction = opts.get("lr_warmup_fraction")
    decay = _iterations(opts, "lr_decay_iters", "lr_decay_samples")
    total = _iterations(opts, "train_iters", "train_samples")
    iters = decay or total
    if fraction is not None and iters:
        derived["warmup_steps"] = min(int(_float(opts, "lr_warmup_fraction", 0.0) * iters), iters)
    if decay and decay != total:
        derived["decay_steps"] = decay
    wsd = _iterations(opts, "lr_wsd_decay_iters", "lr_wsd_decay_samples")
    if wsd:
        derived["wsd_decay_steps"] = wsd
    if opts.get("lr_wsd_decay_style"):
        derived["wsd_style"] = opts["lr_wsd_decay_style"]
    return defaults, derived


def read(script: str, args: Sequence[str]) -> Reading:
    """Megatron's reading of a pretrain_gpt.py / pretrain_mamba.py / pretrain_hybrid.py command line."""
    opts = scan(args)
    pattern = _main_pattern(opts)
    if pattern and _is_hybrid(script, opts):
        # validate_args: the pattern's layer count is num_layers, whatever --num-layers says.
        opts["num_layers"] = str(len(pattern))
    settings: dict[str, str] = {
        "megatron.ckpt_format": opts.get("ckpt_format") or "torch_dist",
        "megatron.tokenizer": opts.get("tokenizer_type") or "GPT2BPETokenizer",
    }
    if opts.get("fp8_format"):
        settings["megatron.fp8"] = opts["fp8_format"] or ""
        settings["megatron.fp8_recipe"] = opts.get("fp8_recipe") or "delayed"
    # Arguments the log echoes as given (None when absent), whatever the simulation makes of them.
    for key in ("lr_decay_iters", "lr_wsd_decay_iters", "lr_wsd_decay_style"):
        if opts.get(key):
            settings[f"megatron.{key}"] = opts[key] or ""
    if "sequence_parallel" in opts:
        settings["megatron.sequence_parallel"] = "1"
    settings |= echoed(opts)
    tp = _int(opts, "tensor_model_parallel_size", 1)
    layout = (tp, _int(opts, "pipeline_model_parallel_size", 1), _int(opts, "context_parallel_size", 1))
    dtype = "torch.bfloat16" if "bf16" in opts else "torch.float16" if "fp16" in opts else "torch.float32"
    # Megatron's parallel sizes default to 1; one micro batch per data-parallel rank and step unless
    # --global-batch-size says more ("setting global batch size to micro x DP").
    defaults: dict[str, object] = {"tp": 1, "pp": 1, "ep": 1}
    if not opts.get("global_batch_size") and not opts.get("train_samples"):
        defaults["grad_accum"] = 1
    sched_defaults, derived = _schedule(opts)
    defaults.update(sched_defaults)
    cp = _int(opts, "context_parallel_size", 1)
    if cp > 1:
        derived["cp"] = cp
    if opts.get("expert_tensor_parallel_size") and _int(opts, "num_experts", 0) > 1:
        derived["etp"] = _int(opts, "expert_tensor_parallel_size", tp)
    if opts.get("fp8_format"):
        derived["fp8"] = True
    cadence = {
        "log_interval": DEFAULT_LOG_INTERVAL,
        "eval_interval": DEFAULT_EVAL_INTERVAL,
        "eval_iters": DEFAULT_EVAL_ITERS,
    }
    if not opts.get("save_interval"):
        cadence["save_interval"] = 0  # no periodic saves (validate_args refuses --save without it)
    missing = [f"--{k.replace('_', '-')}" for k in _REQUIRED if not opts.get(k)]
    if missing:
        # Megatron would stop at the first ("num_layers argument is None"); the simulation keeps what sizes
        # are given over its default model and that model's training defaults, and says so.
        notice = (
            f"{os.path.basename(script)}: no {', '.join(missing)} (Megatron's validate_args requires them): "
            "simulating fakerun's default model" + (" with the sizes given" if len(missing) < 4 else "")
        )
        return Reading(job=derived, settings=settings, notices=(notice,), layout=layout, params_dtype=dtype)
    death = _model_exit(script, opts)
    if death is not None:
        return Reading(
            defaults=defaults,
            cadence=cadence,
            settings=settings,
            script_exit=death,
            layout=layout,
            params_dtype=dtype,
        )
    model, guessed = _model(script, opts, tp)
    settings["megatron.vocab"] = str(tokenizer_vocab(opts, "GPT2BPETokenizer")[0])
    return Reading(
        model=model,
        seq_len=model.seq_len,
        defaults=defaults,
        job=derived,
        cadence=cadence,
        settings=settings,
        notices=(guessed,) if guessed else (),
        layout=layout,
        params_dtype=dtype,
    )


def config_traceback(script: str, field: str, value: int, tp: int) -> str:
    """TransformerConfig's refusal of a size the tensor-parallel size does not divide, raised while the
    model is built (after init_process_group: torch's `[rankN]: ` on every line)."""
    path = os.path.abspath(script)
    root = os.path.dirname(path)
    line, code = _ENTRY.get(os.path.basename(path), _ENTRY_GPT)
    file, lineno, func, call = _BUILDERS.get(os.path.basename(path), _GPT_BUILDER)
    frames = [pytrace.Frame(path, line, "<module>", code)]
    for f, n, fn, source, marked in (
        *_TO_CONFIG,
        (file, lineno, func, f"config = {call}", call),
        (*_FROM_CONFIG, "config_class(**kw_args)"),
    ):
        frames.append(pytrace.Frame(f"{root}/{f}", n, fn, source, marked))
    frames += [
        pytrace.Frame("<string>", _INIT_LINE, "__init__"),
        pytrace.Frame(f"{root}/{_CONFIG_FILE}", _CONFIG_RAISES[field], "__post_init__", "raise ValueError("),
    ]
    message = f"ValueError: {field} ({value}) must be a multiple of tensor_model_parallel_size ({tp})."
    return pytrace.traceback_text(frames, message, after_init=True)


def world_size_exit(script: str, layout: tuple[int, int, int], world: int) -> str | None:
    """validate_args' first refusal, of a world size the tensor x pipeline x context sizes do not divide."""
    total = layout[0] * layout[1] * layout[2]
    if world % total == 0:
        return None
    message = f"world size ({world}) is not divisible by total_model_size (total_model_size={total})"
    return _validate_exit(script, "world", message)[0]


def world_exit(
    script: str, job: Mapping[str, object], world: int, model: ModelSpec | None = None
) -> str | None:
    """What the ranks die of on `world` GPUs, in the order pretrain() meets them: validate_args' world-size
    check, the micro-batch calculator's divisibility of the global batch, initialize_model_parallel's expert
    grid, then TransformerConfig's of the heads and query groups by the tensor-parallel size; None when
    Megatron accepts the layout."""
    tp, pp, cp = (int(str(job.get(key, 1))) for key in ("tp", "pp", "cp"))
    refused = world_size_exit(script, (tp, pp, cp), world)
    if refused is not None:
        return refused
    gbs = job.get("global_batch")
    mbs = job.get("micro_batch")
    dp = world // (tp * pp * cp)
    if isinstance(gbs, int) and isinstance(mbs, int) and gbs % (mbs * dp):
        message = (
            f"global batch size ({gbs}) is not divisible by micro batch size ({mbs}) times data parallel "
            f"size ({dp})"
        )
        return traceback_text(script, _TO_CALCULATOR, message)
    # initialize_model_parallel's expert grid: --expert-tensor-parallel-size defaults to the tensor size.
    grid = int(str(job.get("etp") or tp)) * int(str(job.get("ep", 1))) * pp
    if world % grid:
        message = (
            f"world_size ({world}) is not divisible by expert_tensor_model_pipeline_parallel size ({grid})"
        )
        return traceback_text(script, _TO_MODEL_PARALLEL, message, error="RuntimeError", after_init=True)
    if model is not None and model.heads % tp:
        return config_traceback(script, "num_attention_heads", model.heads, tp)
    if model is not None and model.kv_heads % tp:
        return config_traceback(script, "num_query_groups", model.kv_heads, tp)
    return None
