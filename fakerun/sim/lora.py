"""LoRA adapters (Hu et al. 2021, as PEFT builds them): which projections get one and how many parameters."""

from __future__ import annotations

from fakerun.presets import ModelSpec

# PEFT's default targets for Llama-style models (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING).
DEFAULT_TARGETS = ("q_proj", "v_proj")
ALL_LINEAR = "all-linear"  # PEFT: every linear layer but the output head
OUTPUT_HEAD = "lm_head"  # the output projection (hidden -> vocab), once per model, not per layer


def projections(model: ModelSpec) -> dict[str, tuple[int, int]]:
    """Each linear projection of one layer by its Hugging Face name: (in features, out features)."""
    h, f = model.hidden, model.ffn_hidden
    q, kv = model.heads * model.head_dim, model.kv_heads * model.head_dim
    out = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h)}
    if model.mlp == "swiglu":
        out |= {"gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}
    else:
        out |= {"up_proj": (h, f), "down_proj": (f, h)}
    return out


def adapter_params(model: ModelSpec, rank: int, targets: tuple[str, ...]) -> int:
    """LoRA's A (r x in) and B (out x r) of every targeted projection in every layer (and expert)."""
    shapes = projections(model)
    names = tuple(shapes) if ALL_LINEAR in targets else targets or DEFAULT_TARGETS
    mlp = {"gate_proj", "up_proj", "down_proj"}
    per_layer = 0
    for name in names:
        fan_in, fan_out = shapes.get(name, (0, 0))  # a name the model lacks matches no module
        per_layer += rank * (fan_in + fan_out) * (model.experts if name in mlp else 1)
    head = rank * (model.hidden + model.vocab) if OUTPUT_HEAD in names else 0
    return model.layers * per_layer + head
