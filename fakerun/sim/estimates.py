"""Figures trainers estimate for themselves: nanoGPT's and llm.c's MFU, llm.c's z-scores, parameter groups."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fakerun.presets import ModelSpec
    from fakerun.sim.job import JobSpec

# nanoGPT's estimate_mfu divides by an A100's bf16 peak whatever the GPU (model.py: flops_promised = 312e12).
NANOGPT_PROMISED_FLOPS = 312e12
# nanoGPT leaves running_mfu at -1.0 until local_iter_num >= 5, then smooths it with 0.9/0.1 (train.py).
NANOGPT_SETTLE_ITERS = 5
# GPT-2's vocabulary and the multiple of 64 nanoGPT pads it to ("50257 rounded up for efficiency").
GPT2_VOCAB = 50257
NANOGPT_PADDED_VOCAB = 50304
# llm.c's OutlierDetector window (llmc/outlier_detector.h) and its tok/s smoothing (train_gpt2.cu).
LLMC_WINDOW = 128
LLMC_EMA = 0.95


def padded_vocab(model: ModelSpec) -> int:
    """Embedding rows nanoGPT and llm.c allocate: GPT-2's 50257 padded to 50304, else a multiple of 128."""
    if model.vocab == GPT2_VOCAB:
        return NANOGPT_PADDED_VOCAB
    return -(-model.vocab // 128) * 128


def _position_params(model: ModelSpec) -> int:
    """A learned position table's parameters (rotary positions have none)."""
    return (model.max_position or model.seq_len) * model.hidden if model.position == "learned" else 0


def gpt_params(model: ModelSpec, *, padded: bool = True) -> int:
    """All parameters of the model with the padded vocabulary (llm.c's num_parameters); GPT-2's own
    vocabulary when not `padded` (nanoGPT's from_pretrained)."""
    extra_rows = padded_vocab(model) - model.vocab if padded else 0
    return model.params + extra_rows * model.hidden * (1 if model.tied_embeddings else 2)


def nanogpt_num_params(model: ModelSpec, *, padded: bool = True) -> int:
    """nanoGPT's get_num_params(): every parameter but the position embeddings, padded vocabulary included
    unless the weights are GPT-2's (not `padded`)."""
    return gpt_params(model, padded=padded) - _position_params(model)


@dataclass(frozen=True)
class ParamGroups:
    """nanoGPT's configure_optimizers split: tensors of 2+ dimensions decay, vectors (norms, biases) don't."""

    decay_tensors: int
    decay_params: int
    nodecay_tensors: int
    nodecay_params: int


def param_groups(model: ModelSpec, *, padded: bool = True) -> ParamGroups:
    """The weight-decay groups of the model laid out as nanoGPT's GPT (fused qkv, tied or untied head)."""
    h, f, layers = model.hidden, model.ffn_hidden, model.layers
    norm_vectors = 2 if model.norm == "layernorm" and model.bias != "none" else 1
    mlp_mats = 3 if model.mlp == "swiglu" else 2
    qkv = h + 2 * model.head_dim * (model.kv_heads or model.heads)
    # Per block: c_attn, attn c_proj, the MLP matrices; two norms per block and one at the end.
    nodecay_tensors = (2 * layers + 1) * norm_vectors
    nodecay = (2 * layers + 1) * norm_vectors * h
    if model.bias != "none":
        nodecay_tensors += layers
        nodecay += layers * qkv
    if model.bias == "all":
        nodecay_tensors += layers * (1 + mlp_mats)
        nodecay += layers * (h + (mlp_mats - 1) * f + h)
    decay_tensors = layers * (2 + mlp_mats) + 1 + (1 if model.position == "learned" else 0)
    decay_tensors += 0 if model.tied_embeddings else 1
    return ParamGroups(
        decay_tensors=decay_tensors,
        decay_params=gpt_params(model, padded=padded) - nodecay,
        nodecay_tensors=nodecay_tensors,
        nodecay_params=nodecay,
    )


def nanogpt_mfu(job: JobSpec, dt_s: float) -> float:
    """nanoGPT's estimate_mfu for an iteration of `dt_s`: (6N + 12LHQT) T per sequence over 312 TFLOPS."""
    m = job.model
    n = nanogpt_num_params(m, padded=job.regime != "finetune")
    t = job.seq_len
    flops_per_token = 6 * n + 12 * m.layers * m.heads * m.head_dim * t
    # fwdbwd_per_iter = batch_size * gradient_accumulation_steps, the latter already divided by the ranks.
    sequences = job.global_batch / job.world_size
    return flops_per_token * t * sequences / dt_s / NANOGPT_PROMISED_FLOPS


def nanogpt_running_mfu(previous: float, mfu: float) -> float:
    """train.py's running_mfu after a logged iteration: the first estimate, then 0.9 old + 0.1 new."""
    return mfu if previous == -1.0 else 0.9 * previous + 0.1 * mfu


def llmc_mfu(job: JobSpec, dt_s: float) -> float:
    """llm.c's gpt2_estimate_mfu: (6N + 6LCT) per token over the device's promised bf16 FLOPS."""
    m = job.model
    flops_per_token = 6 * gpt_params(m) + 6 * m.layers * m.hidden * job.seq_len
    tokens = job.global_batch / job.world_size * job.seq_len
    return flops_per_token * tokens / dt_s / job.gpu.peak_flops


def zscore(window: Sequence[float], value: float) -> float:
    """llm.c's OutlierDetector: nan until LLMC_WINDOW earlier values fill its window, then (x - mean)/std."""
    if len(window) < LLMC_WINDOW:
        return math.nan
    recent = [*window[-LLMC_WINDOW + 1 :], value]
    mean = sum(recent) / len(recent)
    var = sum(v * v for v in recent) / len(recent) - mean * mean
    return 0.0 if var <= 0 else (value - mean) / math.sqrt(var)


def llmc_tokens_per_s(previous_ema: float, tokens_per_s: float, index: int) -> tuple[float, float]:
    """llm.c's smoothed tok/s after its step `index` (0-based): (new EMA, bias-corrected figure it prints)."""
    if index == 0:  # the first step is a warm-up: printed raw, kept out of the average
        return previous_ema, tokens_per_s
    ema = LLMC_EMA * previous_ema + (1 - LLMC_EMA) * tokens_per_s
    return ema, ema / (1 - LLMC_EMA**index)
