"""Hugging Face architectures by config.json: the state dict's tensors (names, shapes) of each model_type."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fakerun.sim.safetensors import Tensor

__all__ = ["ALIASES", "Shape", "param_count", "shape_of", "tensor_shapes"]

# config.json spellings of one quantity across model types (GPT-2's n_embd, BLOOM's n_embed, T5's d_model).
ALIASES: dict[str, tuple[str, ...]] = {
    "hidden": ("hidden_size", "n_embd", "n_embed", "d_model"),
    "layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "heads": ("num_attention_heads", "n_head", "num_heads"),
    "ffn": ("intermediate_size", "n_inner", "ffn_dim", "d_ff"),
    "max_position": ("max_position_embeddings", "n_positions", "seq_length"),
}
# Model types whose MLP is two matrices (up, down) with an activation between; the rest gate a third.
_TWO_MATRIX = frozenset({"gpt2", "gpt_neox", "gpt_neo", "gptj", "opt", "bloom", "phi"})
_LAYERNORM = frozenset({"gpt2", "gpt_neox", "gpt_neo", "gptj", "opt", "bloom", "phi", "olmo"})
_LEARNED = frozenset({"gpt2", "gpt_neo", "opt"})  # a learned position table (OPT's has 2 extra rows)
# PretrainedConfig's tie_word_embeddings default is True; these model types' configs default it to False.
_UNTIED = frozenset(
    {"gpt_neox", "gptj", "llama", "mistral", "mixtral", "qwen2", "qwen3", "phi", "phi3", "olmo", "olmo2"}
)


@dataclass(frozen=True)
class Shape:
    """The figures of a config.json that size a model, with each model type's defaults filled in."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    max_position: int
    tied: bool
    experts: int = 1
    top_k: int = 1
    decoder_layers: int = 0  # T5's decoder stack (its encoder has `layers`)
    gated: bool = True  # a gated MLP (SwiGLU, GeGLU): three matrices
    layernorm: bool = False  # LayerNorm (weight and bias) rather than RMSNorm
    learned_positions: bool = False
    qkv_bias: bool = False  # Qwen2's q/k/v biases; the model types with biases everywhere set their own


def _first(cfg: Mapping[str, Any], quantity: str) -> int | None:
    for key in ALIASES[quantity]:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def shape_of(cfg: Mapping[str, Any]) -> Shape:
    """The sizing figures of a config.json as transformers reads it (its model type's defaults where absent);
    ValueError naming the missing key when it cannot be sized."""
    model_type = str(cfg.get("model_type", "llama"))
    figures = {q: _first(cfg, q) for q in ALIASES}
    vocab = cfg.get("vocab_size")
    for quantity in ("hidden", "layers", "heads"):
        if figures[quantity] is None:
            raise ValueError(f"config.json has no {ALIASES[quantity][0]}")
    if not isinstance(vocab, int):
        raise ValueError("config.json has no vocab_size")
    hidden, layers, heads = figures["hidden"], figures["layers"], figures["heads"]
    assert hidden is not None and layers is not None and heads is not None
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or cfg.get("d_kv") or hidden // heads
    ffn = figures["ffn"] or 4 * hidden  # GPT-2's n_inner null, BLOOM and GPT-Neo: 4 x hidden
    if model_type == "t5":
        gated = str(cfg.get("feed_forward_proj", "relu")).startswith("gated")
    else:
        gated = model_type not in _TWO_MATRIX
    tied = cfg.get("tie_word_embeddings", model_type not in _UNTIED)
    return Shape(
        model_type=model_type,
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=int(kv),
        head_dim=int(head_dim),
        ffn=ffn,
        vocab=vocab,
        max_position=figures["max_position"] or 512,  # T5 has no table: its tokenizer's 512
        tied=bool(tied),
        experts=int(cfg.get("num_local_experts") or cfg.get("num_experts") or 1),
        top_k=int(cfg.get("num_experts_per_tok") or 1),
        decoder_layers=int(cfg.get("num_decoder_layers") or layers) if model_type == "t5" else 0,
        gated=gated,
        layernorm=model_type in _LAYERNORM,
        learned_positions=model_type in _LEARNED,
        qkv_bias=model_type == "qwen2" or bool(cfg.get("attention_bias")),
    )


def _ln(name: str, h: int, bias: bool = True) -> Iterator[Tensor]:
    yield f"{name}.weight", (h,)
    if bias:
        yield f"{name}.bias", (h,)


def _linear(name: str, out: int, inp: int, bias: bool) -> Iterator[Tensor]:
    yield f"{name}.weight", (out, inp)
    if bias:
        yield f"{name}.bias", (out,)


def _gpt2(s: Shape) -> Iterator[Tensor]:
    """GPT-2: Conv1D weights stored in x out, biases everywhere, learned positions, tied head."""
    h, f = s.hidden, s.ffn
    yield "transformer.wte.weight", (s.vocab, h)
    yield "transformer.wpe.weight", (s.max_position, h)
    for i in range(s.layers):
        p = f"transformer.h.{i}."
        yield from _ln(p + "ln_1", h)
        yield p + "attn.c_attn.weight", (h, 3 * h)
        yield p + "attn.c_attn.bias", (3 * h,)
        yield p + "attn.c_proj.weight", (h, h)
        yield p + "attn.c_proj.bias", (h,)
        yield from _ln(p + "ln_2", h)
        yield p + "mlp.c_fc.weight", (h, f)
        yield p + "mlp.c_fc.bias", (f,)
        yield p + "mlp.c_proj.weight", (f, h)
        yield p + "mlp.c_proj.bias", (h,)
    yield from _ln("transformer.ln_f", h)


def _gpt_neox(s: Shape) -> Iterator[Tensor]:
    """GPT-NeoX (Pythia): fused query_key_value, biases everywhere, an untied embed_out."""
    h, f = s.hidden, s.ffn
    yield "gpt_neox.embed_in.weight", (s.vocab, h)
    for i in range(s.layers):
        p = f"gpt_neox.layers.{i}."
        yield from _ln(p + "input_layernorm", h)
        yield from _ln(p + "post_attention_layernorm", h)
        yield from _linear(p + "attention.query_key_value", 3 * h, h, True)
        yield from _linear(p + "attention.dense", h, h, True)
        yield from _linear(p + "mlp.dense_h_to_4h", f, h, True)
        yield from _linear(p + "mlp.dense_4h_to_h", h, f, True)
    yield from _ln("gpt_neox.final_layer_norm", h)
    if not s.tied:
        yield "embed_out.weight", (s.vocab, h)


def _gpt_neo(s: Shape) -> Iterator[Tensor]:
    """GPT-Neo: q/k/v without biases, out_proj and the MLP with them, learned positions, tied head."""
    h, f = s.hidden, s.ffn
    yield "transformer.wte.weight", (s.vocab, h)
    yield "transformer.wpe.weight", (s.max_position, h)
    for i in range(s.layers):
        p = f"transformer.h.{i}."
        yield from _ln(p + "ln_1", h)
        for name in ("k_proj", "v_proj", "q_proj"):
            yield from _linear(p + f"attn.attention.{name}", h, h, False)
        yield from _linear(p + "attn.attention.out_proj", h, h, True)
        yield from _ln(p + "ln_2", h)
        yield from _linear(p + "mlp.c_fc", f, h, True)
        yield from _linear(p + "mlp.c_proj", h, f, True)
    yield from _ln("transformer.ln_f", h)


def _gptj(s: Shape) -> Iterator[Tensor]:
    """GPT-J: one LayerNorm per block (parallel attention and MLP), no attention biases, a biased head."""
    h, f = s.hidden, s.ffn
    yield "transformer.wte.weight", (s.vocab, h)
    for i in range(s.layers):
        p = f"transformer.h.{i}."
        yield from _ln(p + "ln_1", h)
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            yield from _linear(p + f"attn.{name}", h, h, False)
        yield from _linear(p + "mlp.fc_in", f, h, True)
        yield from _linear(p + "mlp.fc_out", h, f, True)
    yield from _ln("transformer.ln_f", h)
    yield from _linear("lm_head", s.vocab, h, True)


def _opt(s: Shape, cfg: Mapping[str, Any]) -> Iterator[Tensor]:
    """OPT: positions with an offset of 2 rows, biases everywhere; OPT-350m projects a narrower embedding."""
    h, f = s.hidden, s.ffn
    width = int(cfg.get("word_embed_proj_dim") or h)
    yield "model.decoder.embed_tokens.weight", (s.vocab, width)
    yield "model.decoder.embed_positions.weight", (s.max_position + 2, h)
    if width != h:
        yield "model.decoder.project_out.weight", (width, h)
        yield "model.decoder.project_in.weight", (h, width)
    if cfg.get("do_layer_norm_before", True) and not cfg.get("_remove_final_layer_norm", False):
        yield from _ln("model.decoder.final_layer_norm", h)
    for i in range(s.layers):
        p = f"model.decoder.layers.{i}."
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            yield from _linear(p + f"self_attn.{name}", h, h, True)
        yield from _ln(p + "self_attn_layer_norm", h)
        yield from _linear(p + "fc1", f, h, True)
        yield from _linear(p + "fc2", h, f, True)
        yield from _ln(p + "final_layer_norm", h)


def _bloom(s: Shape) -> Iterator[Tensor]:
    """BLOOM: ALiBi (no position table), a LayerNorm on the embeddings, biases everywhere, tied head."""
    h, f = s.hidden, s.ffn
    yield "transformer.word_embeddings.weight", (s.vocab, h)
    yield from _ln("transformer.word_embeddings_layernorm", h)
    for i in range(s.layers):
        p = f"transformer.h.{i}."
        yield from _ln(p + "input_layernorm", h)
        yield from _linear(p + "self_attention.query_key_value", 3 * h, h, True)
        yield from _linear(p + "self_attention.dense", h, h, True)
        yield from _ln(p + "post_attention_layernorm", h)
        yield from _linear(p + "mlp.dense_h_to_4h", f, h, True)
        yield from _linear(p + "mlp.dense_4h_to_h", h, f, True)
    yield from _ln("transformer.ln_f", h)


def _phi(s: Shape) -> Iterator[Tensor]:
    """Phi-1.5 and Phi-2: one LayerNorm per block (parallel attention and MLP), biases everywhere, a biased
    untied head."""
    h, f, q, kv = s.hidden, s.ffn, s.heads * s.head_dim, s.kv_heads * s.head_dim
    yield "model.embed_tokens.weight", (s.vocab, h)
    for i in range(s.layers):
        p = f"model.layers.{i}."
        yield from _linear(p + "self_attn.q_proj", q, h, True)
        yield from _linear(p + "self_attn.k_proj", kv, h, True)
        yield from _linear(p + "self_attn.v_proj", kv, h, True)
        yield from _linear(p + "self_attn.dense", h, q, True)
        yield from _linear(p + "mlp.fc1", f, h, True)
        yield from _linear(p + "mlp.fc2", h, f, True)
        yield from _ln(p + "input_layernorm", h)
    yield from _ln("model.final_layernorm", h)
    yield from _linear("lm_head", s.vocab, h, True)


def _llama(s: Shape) -> Iterator[Tensor]:
    """Llama and its kin (Mistral, Mixtral, Qwen2/3, Gemma 1/2, OLMo 1/2, Phi-3's fused projections)."""
    h, f, hd, t = s.hidden, s.ffn, s.head_dim, s.model_type
    q, kv = s.heads * hd, s.kv_heads * hd
    norms = t != "olmo"  # OLMo 1's LayerNorms have no parameters
    yield "model.embed_tokens.weight", (s.vocab, h)
    for i in range(s.layers):
        p = f"model.layers.{i}."
        if t == "phi3":
            yield p + "self_attn.o_proj.weight", (h, q)
            yield p + "self_attn.qkv_proj.weight", (q + 2 * kv, h)
        else:
            for name, out, inp in (("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q)):
                yield from _linear(p + f"self_attn.{name}", out, inp, s.qkv_bias and name != "o_proj")
        if t == "qwen3":
            yield p + "self_attn.q_norm.weight", (hd,)
            yield p + "self_attn.k_norm.weight", (hd,)
        elif t == "olmo2":
            yield p + "self_attn.q_norm.weight", (q,)
            yield p + "self_attn.k_norm.weight", (kv,)
        if s.experts > 1:
            yield p + "block_sparse_moe.gate.weight", (s.experts, h)
            for e in range(s.experts):
                for w, shape in (("w1", (f, h)), ("w2", (h, f)), ("w3", (f, h))):
                    yield p + f"block_sparse_moe.experts.{e}.{w}.weight", shape
        elif t == "phi3":
            yield p + "mlp.gate_up_proj.weight", (2 * f, h)
            yield p + "mlp.down_proj.weight", (h, f)
        else:
            for name, shape in (("gate_proj", (f, h)), ("up_proj", (f, h)), ("down_proj", (h, f))):
                yield p + f"mlp.{name}.weight", shape
        if t == "olmo2":
            names: tuple[str, ...] = ("post_attention_layernorm", "post_feedforward_layernorm")
        elif t == "gemma2":
            names = ("input_layernorm", "post_attention_layernorm")
            names += ("pre_feedforward_layernorm", "post_feedforward_layernorm")
        else:
            names = ("input_layernorm", "post_attention_layernorm") if norms else ()
        for name in names:
            yield p + f"{name}.weight", (h,)
    if norms:
        yield "model.norm.weight", (h,)
    if not s.tied:
        yield "lm_head.weight", (s.vocab, h)


def _t5_stack(s: Shape, stack: str, layers: int) -> Iterator[Tensor]:
    h, f, inner = s.hidden, s.ffn, s.heads * s.head_dim
    attention = ("SelfAttention",) if stack == "encoder" else ("SelfAttention", "EncDecAttention")
    mlp = ("wi_0", "wi_1") if s.gated else ("wi",)
    for i in range(layers):
        p = f"{stack}.block.{i}.layer."
        for j, name in enumerate(attention):
            for proj in ("q", "k", "v"):
                yield f"{p}{j}.{name}.{proj}.weight", (inner, h)
            yield f"{p}{j}.{name}.o.weight", (h, inner)
            if i == 0 and j == 0:  # relative position buckets, in each stack's first block only
                yield f"{p}0.SelfAttention.relative_attention_bias.weight", (32, s.heads)
            yield f"{p}{j}.layer_norm.weight", (h,)
        j = len(attention)
        for name in mlp:
            yield f"{p}{j}.DenseReluDense.{name}.weight", (f, h)
        yield f"{p}{j}.DenseReluDense.wo.weight", (h, f)
        yield f"{p}{j}.layer_norm.weight", (h,)
    yield f"{stack}.final_layer_norm.weight", (h,)


def _t5(s: Shape) -> Iterator[Tensor]:
    """T5 (v1.0: ReLU, tied head; v1.1 and FLAN-T5: gated GELU, untied): the shared embedding, both stacks."""
    yield "shared.weight", (s.vocab, s.hidden)
    yield from _t5_stack(s, "encoder", s.layers)
    yield from _t5_stack(s, "decoder", s.decoder_layers)
    if not s.tied:
        yield "lm_head.weight", (s.vocab, s.hidden)


def tensor_shapes(cfg: Mapping[str, Any]) -> Iterator[Tensor]:
    """(name, shape) of the model's tensors as save_pretrained stores them, in state_dict order (tied
    weights once); an unknown model_type is laid out as Llama's."""
    s = shape_of(cfg)
    match s.model_type:
        case "gpt2":
            return _gpt2(s)
        case "gpt_neox":
            return _gpt_neox(s)
        case "gpt_neo":
            return _gpt_neo(s)
        case "gptj":
            return _gptj(s)
        case "opt":
            return _opt(s, cfg)
        case "bloom":
            return _bloom(s)
        case "phi":
            return _phi(s)
        case "t5":
            return _t5(s)
    return _llama(s)


def param_count(cfg: Mapping[str, Any]) -> int:
    """The model's parameters (what model.num_parameters() reports): its stored tensors' elements."""
    return sum(math.prod(shape) for _, shape in tensor_shapes(cfg))
