"""nanoGPT's out_dir/ckpt.pt: the leading bytes fakerun writes (a zip's first record, data.pkl), reading the
iteration and best validation loss back from them to resume, and torch.load's death when it is missing."""

from __future__ import annotations

import io
import os
import pickle
import struct
import sysconfig
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fakerun.frameworks import pytrace

# torch.save names the archive's records after the file's stem: ckpt.pt -> "ckpt/data.pkl" first.
_RECORD = "ckpt/data.pkl"
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # PK\3\4, version, flags, method, time, date, crc, sizes, names
_SIGNATURE = 0x04034B50
_PICKLE_PROTOCOL = 2  # torch.save's DEFAULT_PROTOCOL
_MAX_PICKLE = 1 << 20
# train.py's model_args, as the checkpoint keeps them (the keys a resume forces onto the model).
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")
# train.py's `checkpoint = torch.load(ckpt_path, map_location=device)` (karpathy/nanoGPT 3adf61e).
_LOAD_LINE = 162
_LOAD_SOURCE = "    checkpoint = torch.load(ckpt_path, map_location=device)"
# torch 2.13's serialization.py frames from load() down to open() (the stack fakerun simulates; lines as in
# the 2.x releases, whose opening code has not moved since the weights_only default changed in 2.6).
_TORCH_FRAMES = (
    (1484, "load", 'with _open_file_like(f, "rb") as opened_file:', '_open_file_like(f, "rb")'),
    (759, "_open_file_like", "return _open_file(name_or_buffer, mode)", "_open_file(name_or_buffer, mode)"),
    (740, "__init__", "super().__init__(open(name, mode))", "open(name, mode)"),
)


@dataclass(frozen=True)
class Saved:
    """What a resume reads from ckpt.pt: the iteration it was saved at, its best val loss, the model."""

    iter_num: int
    best_val_loss: float
    model_args: dict[str, int]


def ckpt_path(out_dir: str) -> str:
    """os.path.join(out_dir, 'ckpt.pt'), as train.py names it."""
    return os.path.join(out_dir, "ckpt.pt")


def head(
    iter_num: int, best_val_loss: float, model_args: Mapping[str, int], config: Mapping[str, object]
) -> bytes:
    """The file's first zip record, data.pkl, with the checkpoint dict's plain entries (iter_num,
    best_val_loss, model_args, config); the model's and the optimizer's tensors are the sparse rest."""
    data = pickle.dumps(
        {
            "model_args": dict(model_args),
            "iter_num": iter_num,
            "best_val_loss": best_val_loss,
            "config": dict(config),
        },
        protocol=_PICKLE_PROTOCOL,
    )
    name = _RECORD.encode()
    crc = zlib.crc32(data)
    # Stored (method 0), as torch's writer stores every record; DOS time 0 (1980-01-01) as torch writes it.
    local = _LOCAL_HEADER.pack(_SIGNATURE, 20, 0, 0, 0, 0x21, crc, len(data), len(data), len(name), 0)
    return local + name + data


class _PlainData(pickle.Unpickler):
    """Plain data only: a data.pkl naming a class or function (a real torch.save's tensors) is not read."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def read(path: str) -> Saved | None:
    """The checkpoint fakerun wrote at `path`; None when the file is not one (or cannot be read)."""
    try:
        with open(path, "rb") as f:
            fixed = f.read(_LOCAL_HEADER.size)
            if len(fixed) < _LOCAL_HEADER.size:
                return None
            fields = _LOCAL_HEADER.unpack(fixed)
            signature, size, name_len, extra_len = fields[0], fields[8], fields[9], fields[10]
            # data.pkl of plain entries is a few kB (a real checkpoint's may be anything: not read past this).
            if signature != _SIGNATURE or size > _MAX_PICKLE or f.read(name_len) != _RECORD.encode():
                return None
            f.read(extra_len)
            data = f.read(size)
    except OSError:
        return None
    try:
        saved = _PlainData(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError):
        return None
    if not isinstance(saved, dict):
        return None
    iter_num, best, args = saved.get("iter_num"), saved.get("best_val_loss"), saved.get("model_args")
    if not (
        isinstance(iter_num, int) and iter_num >= 0 and isinstance(best, float) and isinstance(args, dict)
    ):
        return None
    model = {k: args.get(k) for k in MODEL_KEYS}
    if not all(isinstance(v, int) for v in model.values()):
        return None
    return Saved(iter_num=iter_num, best_val_loss=best, model_args={k: int(v) for k, v in model.items()})  # type: ignore[arg-type]


def missing_traceback(script: str, path: str) -> str:
    """torch.load's FileNotFoundError out of train.py on each rank (after init_process_group)."""
    site = sysconfig.get_paths()["purelib"]
    frames = [
        pytrace.Frame(script, _LOAD_LINE, source=_LOAD_SOURCE, marked=_LOAD_SOURCE.split("= ", 1)[1]),
        *(
            pytrace.Frame(f"{site}/torch/serialization.py", line, function, source=source, marked=marked)
            for line, function, source, marked in _TORCH_FRAMES
        ),
    ]
    message = f"FileNotFoundError: [Errno 2] No such file or directory: {path!r}"
    return pytrace.traceback_text(frames, message, after_init=True)
