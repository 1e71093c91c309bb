"""The safetensors format and save_pretrained's sharding: exact headers, file sizes and the shard index."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Tensor = tuple[str, tuple[int, ...]]  # (name, shape)

# Bytes per element of the dtypes a checkpoint holds, by safetensors' dtype names.
DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "I64": 8}


@dataclass(frozen=True)
class Shard:
    """One safetensors file of a save: its name and its tensors in the order they are stored."""

    name: str
    tensors: tuple[Tensor, ...]


def header(tensors: Iterable[Tensor], dtype: str = "BF16", metadata: dict[str, str] | None = None) -> bytes:
    """The file's first bytes as the safetensors library writes them: the little-endian u64 length, then
    compact JSON (`__metadata__` first, then each tensor's dtype, shape and data_offsets), padded with
    spaces to a multiple of 8 so the data that follows is aligned."""
    entries: dict[str, object] = {"__metadata__": metadata if metadata is not None else {"format": "pt"}}
    offset = 0
    size = DTYPE_BYTES[dtype]
    # safetensors orders tensors by dtype alignment, then name; one dtype here, so by name.
    for name, shape in sorted(tensors):
        end = offset + math.prod(shape) * size
        entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def data_bytes(tensors: Iterable[Tensor], dtype: str = "BF16") -> int:
    """The bytes of the tensors' data (what the index's total_size counts)."""
    return sum(math.prod(shape) for _, shape in tensors) * DTYPE_BYTES[dtype]


def file_bytes(tensors: Sequence[Tensor], dtype: str = "BF16") -> int:
    """The size of a safetensors file holding `tensors`: header and data."""
    return len(header(tensors, dtype)) + data_bytes(tensors, dtype)


def shards(tensors: Iterable[Tensor], max_shard_bytes: int, dtype: str = "BF16") -> tuple[Shard, ...]:
    """save_pretrained's split (huggingface_hub's split_torch_state_dict_into_shards): in state_dict order, a
    new file when the next tensor would pass max_shard_size; a tensor larger than it has a file of its own."""
    groups: list[list[Tensor]] = [[]]
    size = 0
    for tensor in tensors:
        nbytes = data_bytes([tensor], dtype)
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(tensor)
        size += nbytes
    if len(groups) == 1:
        return (Shard("model.safetensors", tuple(groups[0])),)
    n = len(groups)
    return tuple(Shard(f"model-{i + 1:05d}-of-{n:05d}.safetensors", tuple(g)) for i, g in enumerate(groups))


def index(files: Sequence[Shard], dtype: str = "BF16") -> str:
    """model.safetensors.index.json as save_pretrained writes it (indent 2, sorted keys, final newline)."""
    weight_map = {name: shard.name for shard in files for name, _ in shard.tensors}
    total = sum(data_bytes(shard.tensors, dtype) for shard in files)
    doc = {"metadata": {"total_size": total}, "weight_map": weight_map}
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"
