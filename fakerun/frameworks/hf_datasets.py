"""The training data of an HF example script: well-known datasets' sizes and run_clm.py's blocks of them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Data", "steps_per_epoch", "train_data"]

# group_texts runs over datasets.map's batches of 1,000 rows, each dropping its last partial block.
_MAP_BATCH = 1_000


@dataclass(frozen=True)
class _Known:
    """A dataset's training split: its GPT-2 BPE tokens and its rows."""

    tokens: int
    rows: int


# WikiText-2's train split (36,718 rows) is 2,318 blocks of 1,024 GPT-2 tokens in run_clm.py (its published
# runs' `Num examples = 2318`): 2.393M tokens with the half block each map batch drops. WikiText-103's
# (1,801,350 rows) scales that by the two splits' word counts in the WikiText paper (103,227,021 / 2,088,628).
_KNOWN: dict[tuple[str, str], _Known] = {
    ("wikitext", "wikitext-2-raw-v1"): _Known(2_393_000, 36_718),
    ("wikitext", "wikitext-2-v1"): _Known(2_393_000, 36_718),
    ("wikitext", "wikitext-103-raw-v1"): _Known(118_272_000, 1_801_350),
    ("wikitext", "wikitext-103-v1"): _Known(118_272_000, 1_801_350),
}


@dataclass(frozen=True)
class Data:
    """The examples of one pass over the training data, and what the script's arguments named."""

    examples: int
    known: bool  # False: the size is fakerun's assumption (the launcher says so)
    named: str  # `--dataset_name wikitext wikitext-2-raw-v1`, `--train_file x.txt`, or ""


def _named(settings: Mapping[str, str]) -> str:
    name, config = settings.get("dataset_name"), settings.get("dataset_config_name")
    if name:
        return f"--dataset_name {name}" + (f" --dataset_config_name {config}" if config else "")
    file = settings.get("train_file")
    return f"--train_file {file}" if file else ""


def train_data(settings: Mapping[str, str], block: int, assumed: int) -> Data:
    """The training examples of the script's data: a known dataset's blocks of `block` tokens (run_clm.py's
    group_texts), else `assumed` examples."""
    name = settings.get("dataset_name", "").rsplit("/", 1)[-1]
    known = _KNOWN.get((name, settings.get("dataset_config_name", "")))
    if known is None:
        return Data(assumed, False, _named(settings))
    dropped = math.ceil(known.rows / _MAP_BATCH) * block // 2
    return Data(max(1, (known.tokens - dropped) // block), True, _named(settings))


def steps_per_epoch(examples: int, micro_batch: int, dp: int, grad_accum: int) -> int:
    """Trainer.set_initial_training_values: the dataloader's batches on one rank (DistributedSampler's share,
    the last batch partial), over the accumulation steps, at least 1."""
    batches = math.ceil(math.ceil(examples / dp) / micro_batch)
    return max(batches // grad_accum, 1)
