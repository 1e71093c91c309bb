"""HfArgumentParser's argument files: a JSON or YAML file of TrainingArguments read as its command line."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["expand", "read_yaml"]

_SUFFIXES = (".json", ".yaml", ".yml")
# Keys only a Trainer's argument file holds: a file with none of them is no TrainingArguments file.
_TRAINER_KEYS = frozenset(
    {"output_dir", "model_name_or_path", "per_device_train_batch_size", "learning_rate"}
)
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _scalar(text: str) -> Any:
    """A YAML scalar as yaml.safe_load gives it for the values TrainingArguments files hold."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "~", ""):
        return None
    if _NUMBER.fullmatch(text):
        return float(text) if any(c in text for c in ".eE") else int(text)
    if text.startswith("[") and text.endswith("]"):
        return [_scalar(part) for part in text[1:-1].split(",") if part.strip()]
    return text


def read_yaml(text: str) -> dict[str, Any]:
    """A flat YAML mapping (`key: value`, block or flow lists, comments), the shape of a TrainingArguments
    file; nested mappings are kept as their lines' text (the Trainer reads them as JSON strings)."""
    out: dict[str, Any] = {}
    key: str | None = None
    for raw in text.splitlines():
        line = re.sub(r"\s+#.*$", "", raw).rstrip()
        if not line.strip() or line.lstrip().startswith("#") or line.strip() == "---":
            continue
        if line[0] in " \t-" and key is not None:
            item = line.strip()
            if item.startswith("- "):
                current = out.get(key)
                out[key] = [*(current if isinstance(current, list) else []), _scalar(item[2:])]
            continue
        name, colon, value = line.partition(":")
        if not colon:
            continue
        key = name.strip()
        out[key] = _scalar(value) if value.strip() else None
    return out


def _tokens(values: Mapping[str, Any]) -> list[str]:
    """The command line a mapping of arguments stands for: `--key value`, lists as nargs words."""
    out: list[str] = []
    for key, value in values.items():
        if value is None or isinstance(value, dict):
            continue
        out.append(f"--{key}")
        if isinstance(value, bool):
            out.append("true" if value else "false")
        elif isinstance(value, list):
            out += [str(v) for v in value]
        else:
            out.append(str(value))
    return out


def _read(path: str) -> dict[str, Any] | None:
    """The arguments in a JSON or YAML file, None when it cannot be read as a TrainingArguments file."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None
    try:
        values = json.loads(text) if path.endswith(".json") else read_yaml(text)
    except ValueError:
        return None
    return values if isinstance(values, dict) and _TRAINER_KEYS & set(values) else None


def expand(args: Sequence[str]) -> list[str]:
    """The script's arguments with an argument file spelled out: a JSON or YAML file as the sole argument
    (HfArgumentParser.parse_json_file / parse_yaml_file, as the example scripts call them), or TRL's
    `--config FILE.yaml` (its values first, so that the command line overrides them)."""
    if len(args) == 1 and args[0].endswith(_SUFFIXES):
        values = _read(args[0])
        return _tokens(values) if values is not None else list(args)
    for i, tok in enumerate(args[:-1]):
        if tok == "--config" and args[i + 1].endswith((".yaml", ".yml")):
            values = _read(args[i + 1])
            # TRL's recipes name their model; torchtune's YAML (also `--config`) has no such key.
            if values is not None and "model_name_or_path" in values:
                return [*_tokens(values), *args[:i], *args[i + 2 :]]
    return list(args)
