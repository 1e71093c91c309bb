"""Checkpoints and exports: sizes, save/load times from the storage bandwidth, safetensors shard names."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fakerun.sim import hf_layout, rand, safetensors

if TYPE_CHECKING:
    from fakerun.presets import ModelSpec
    from fakerun.sim.job import JobSpec

# transformers' save_pretrained(max_shard_size="5GB"): decimal gigabytes; Llama 3 8B ships as 4 shards.
HF_SHARD_BYTES = 5_000_000_000
# A full training checkpoint: bf16 weights (2) + fp32 master weights and Adam m, v (12) bytes per parameter
# (PHYSICS.md 7: 14-16 bytes/param; BLOOM-176B 2.3 TB).
WEIGHT_BYTES = 2
OPTIMIZER_BYTES = 12
# One Python process serialising safetensors (device-to-host copy, then write) sustains ~1-2 GB/s whatever the
# file system [mem: operator experience; no log in reference/]: save_pretrained is single-writer.
SINGLE_WRITER_GBS = 1.5
# One pause (save or evaluation) in this many is stalled [mem: operator experience on shared Lustre/NFS].
SLOW_PAUSE_ODDS = 40
COMPANION_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)


@dataclass(frozen=True)
class ExportFile:
    """One file of an export or a checkpoint."""

    name: str
    nbytes: int


def checkpoint_bytes(model: ModelSpec, *, full: bool = True) -> int:
    """Bytes of a checkpoint: weights only (bf16) or with the optimizer state."""
    per_param = WEIGHT_BYTES + (OPTIMIZER_BYTES if full else 0)
    return model.params * per_param


def rank_checkpoint_bytes(job: JobSpec, *, full: bool = True) -> int:
    """Bytes each rank writes to a distributed (torch_dist) checkpoint: an even share of the whole."""
    return checkpoint_bytes(job.model, full=full) // job.world_size


def _bandwidth(job: JobSpec, aggregate_gbs: float, per_node_gbs: float) -> float:
    """Bytes/s all nodes get together: node-local storage scales with nodes, shared storage is capped."""
    per_node = (per_node_gbs or aggregate_gbs) * 1e9
    if not job.storage.shared:
        return per_node * job.nnodes
    return min(aggregate_gbs * 1e9, per_node * job.nnodes)


def _write_bandwidth(job: JobSpec) -> float:
    return _bandwidth(job, job.storage.write_gbs, job.storage.per_node_write_gbs)


def _read_bandwidth(job: JobSpec) -> float:
    return _bandwidth(job, job.storage.read_gbs, job.storage.per_node_read_gbs)


def usual_save_seconds(job: JobSpec, *, full: bool = True) -> float:
    """Seconds a checkpoint save takes without jitter or stall: bytes over the write bandwidth, plus barriers
    and metadata."""
    nbytes = checkpoint_bytes(job.model, full=full)
    files_per_node = job.nproc_per_node + 2
    fixed = 1.0 + files_per_node * job.storage.open_latency_ms / 1000.0
    return nbytes / _write_bandwidth(job) + fixed


def pause_keys(step: int, again: int) -> tuple[int, ...]:
    """The random draws' keys of a pause after `step`: its `again`-th of its kind there (0: the first, whose
    draws are the step's own) has draws of its own."""
    return (step,) if again == 0 else (step, again)


def storage_stall(job: JobSpec, stream: str, step: int, again: int = 0) -> float:
    """A rare slow-down of a pause after `step` (another job's I/O on shared storage, a metadata server's
    hiccup, a cold page cache): x2-4 about once in SLOW_PAUSE_ODDS, else 1. Never at step 0, whose pause
    sizes the default cadences."""
    keys = pause_keys(step, again)
    if step <= 0 or rand.uniform(job.seed, stream, *keys) >= 1.0 / SLOW_PAUSE_ODDS:
        return 1.0
    return 2.0 + 2.0 * rand.uniform(job.seed, stream + "-x", *keys)


def save_seconds(job: JobSpec, step: int, *, full: bool = True, again: int = 0) -> float:
    """Seconds to save a checkpoint at `step` (the `again`-th save there): the usual time, jittered, now and
    then stalled."""
    jitter = 1.0 + 0.08 * rand.normal(job.seed, "ckpt-save", *pause_keys(step, again))
    stall = storage_stall(job, "ckpt-stall", step, again)
    return usual_save_seconds(job, full=full) * max(0.8, jitter) * stall


def load_seconds(job: JobSpec, *, full: bool = True) -> float:
    """Wall time to load a checkpoint (resume or initial weights)."""
    nbytes = checkpoint_bytes(job.model, full=full)
    return nbytes / _read_bandwidth(job) + 0.5 + job.nproc_per_node * job.storage.open_latency_ms / 1000.0


def checkpoint_dir(step: int, style: str = "megatron") -> str:
    """Checkpoint directory: Megatron's iter_0001000, HF Trainer's checkpoint-1000, torchtitan's step-1000."""
    if style == "hf":
        return f"checkpoint-{step}"
    if style == "torchtitan":
        return f"step-{step}"
    return f"iter_{step:07d}"


def export_dir(model: ModelSpec) -> str:
    """Where fakerun's own trainer exports the model at the end of training."""
    return f"hf_export/{model.name}"


def distcp_files(job: JobSpec) -> tuple[ExportFile, ...]:
    """The files of a torch.distributed.checkpoint save: one .distcp per rank and the .metadata file."""
    share = rank_checkpoint_bytes(job)
    files = [ExportFile(f"__{r}_0.distcp", share) for r in range(job.world_size)]
    return (*files, ExportFile(".metadata", 2000 + 150 * job.world_size))


def preset_config(model: ModelSpec) -> dict[str, object]:
    """The config.json of a preset (no hf_config of its own): GPT-2's for GPT-2 and GPT-3, else Llama's or
    Mixtral's."""
    if model.family in ("gpt2", "gpt3"):
        names = ("n_embd", "n_layer", "n_head", "n_inner", "n_positions")
        figures = (model.hidden, model.layers, model.heads, model.ffn_hidden, model.max_position)
        return {"model_type": "gpt2", **dict(zip(names, figures, strict=True)), "vocab_size": model.vocab}
    return {
        "model_type": "mixtral" if model.is_moe else "llama",
        "hidden_size": model.hidden,
        "num_hidden_layers": model.layers,
        "num_attention_heads": model.heads,
        "num_key_value_heads": model.kv_heads,
        "intermediate_size": model.ffn_hidden,
        "vocab_size": model.vocab,
        "tie_word_embeddings": model.tied_embeddings,
        "attention_bias": model.bias != "none",
        "num_local_experts": model.experts,
    }


def hf_tensor_shapes(model: ModelSpec) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, shape) of the model's tensors in Hugging Face state_dict order (nn.Linear: out x in)."""
    return hf_layout.tensor_shapes(json.loads(model.hf_config) if model.hf_config else preset_config(model))


def hf_tensors(model: ModelSpec) -> Iterator[tuple[str, int]]:
    """(name, elements) of the model's tensors in Hugging Face state_dict order."""
    for name, shape in hf_tensor_shapes(model):
        yield name, math.prod(shape)


def safetensors_shards(model: ModelSpec, max_shard_bytes: int = HF_SHARD_BYTES) -> tuple[ExportFile, ...]:
    """bf16 safetensors files as save_pretrained writes them (model-00001-of-0000N.safetensors)."""
    return _shard_files(safetensors.shards(hf_tensor_shapes(model), max_shard_bytes))


def _shard_files(split: Sequence[safetensors.Shard]) -> tuple[ExportFile, ...]:
    """Each shard as a file: its header and its tensors' bytes."""
    return tuple(ExportFile(s.name, safetensors.file_bytes(s.tensors)) for s in split)


def export_files(model: ModelSpec, max_shard_bytes: int = HF_SHARD_BYTES) -> tuple[ExportFile, ...]:
    """All files of a Hugging Face export: the safetensors shards and the companion files, with sizes."""
    split = safetensors.shards(hf_tensor_shapes(model), max_shard_bytes)
    shards = _shard_files(split)
    # Sizes modelled on real repos: tokenizer.json ~70 bytes per vocab entry (Llama 3: ~9 MB for 128k) [mem].
    files = [
        *shards,
        ExportFile("config.json", 650 + 25 * (model.is_moe + (model.bias != "none"))),
        ExportFile("generation_config.json", 180),
        ExportFile("special_tokens_map.json", 301),
        ExportFile("tokenizer.json", 71 * model.vocab),
        ExportFile("tokenizer_config.json", 2_000 + model.vocab // 3),
    ]
    if len(shards) > 1:
        files.append(ExportFile("model.safetensors.index.json", len(safetensors.index(split))))
    return tuple(sorted(files, key=lambda f: f.name))


def export_seconds(job: JobSpec, step: int = 0, max_shard_bytes: int = HF_SHARD_BYTES) -> float:
    """Wall time of a Hugging Face export (save_pretrained): all its bytes from one writer, plus the gather.

    Rank 0 gathers the full bf16 state dict (over the data-parallel network, ~NIC speed) and writes every
    file alone, so one node's write bandwidth applies, not the job's aggregate; each file pays the storage's
    open/close latency. At the one process's ~1.5 GB/s: 16 GB of Llama 3 8B in ~12 s, 141 GB of 70B in ~100 s.
    """
    files = export_files(job.model, max_shard_bytes)
    nbytes = sum(f.nbytes for f in files)
    storage = job.storage
    writer = min((storage.per_node_write_gbs or storage.write_gbs) * 1e9, SINGLE_WRITER_GBS * 1e9)
    if storage.shared:
        writer = min(writer, storage.write_gbs * 1e9)
    gather = nbytes / max(job.cluster.nic_bytes_per_gpu, 1e9) if job.world_size > 1 else 0.0
    fixed = len(files) * storage.open_latency_ms / 1000.0
    jitter = 1.0 + 0.05 * rand.normal(job.seed, "export", step)
    return (nbytes / writer + gather + fixed) * max(0.85, jitter)
