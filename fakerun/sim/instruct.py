"""Instruction datasets of torchtune's recipes: how many samples they hold and how long their batches are."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from statistics import NormalDist


@dataclass(frozen=True)
class InstructData:
    """An instruction dataset: its sample count and its samples' token lengths (log-normal)."""

    component: str  # the builder a torchtune config names
    examples: int
    mean_tokens: float  # prompt template + instruction + input + response, Llama 3 tokenizer
    sigma: float  # log-normal spread: most samples are short, a long tail of essays and code

    @property
    def mu(self) -> float:
        """The log-normal's location for this mean: ln(mean) - sigma^2 / 2."""
        return math.log(self.mean_tokens) - self.sigma**2 / 2


# tatsu-lab/alpaca (52,002 rows) and yahma/alpaca-cleaned (51,760 rows) through torchtune's Alpaca template:
# ~270 tokens on average with the Llama 3 tokenizer; sigma 0.6 puts the median near 225 and the 99th
# percentile near 900 tokens, alpaca's longest responses.
ALPACA = InstructData("torchtune.datasets.alpaca_dataset", 52_002, 270.0, 0.6)
ALPACA_CLEANED = InstructData("torchtune.datasets.alpaca_cleaned_dataset", 51_760, 270.0, 0.6)
DATASETS = {d.component: d for d in (ALPACA, ALPACA_CLEANED)}
_QUADRATURE = 4000  # midpoints over the quantiles: the expectation to well under a token


@functools.lru_cache(maxsize=256)
def padded_length(data: InstructData, batch: int, max_seq_len: int | None = None) -> int:
    """Tokens per sample of a padded batch (packed=False): the expected longest of `batch` samples, each
    truncated to max_seq_len as the tokenizer does."""
    dist = NormalDist(data.mu, data.sigma)
    cap = math.inf if max_seq_len is None else float(max_seq_len)
    total = 0.0
    for i in range(_QUADRATURE):
        u = (i + 0.5) / _QUADRATURE
        # The largest of `batch` uniform draws has density batch * u^(batch - 1).
        total += min(math.exp(dist.inv_cdf(u)), cap) * batch * u ** (batch - 1)
    return max(1, round(total / _QUADRATURE))


def packs(data: InstructData, max_seq_len: int) -> int:
    """Sequences of max_seq_len tokens PackedDataset fills with the whole dataset's samples."""
    return max(1, math.ceil(data.examples * data.mean_tokens / max_seq_len))


def steps_per_epoch(examples: int, micro_batch: int, dp: int, grad_accum: int) -> int:
    """A torchtune recipe's steps per epoch: the DistributedSampler's share (padded up), whole batches only
    (drop_last), over the accumulation steps."""
    per_rank = math.ceil(examples / dp)
    return max(1, per_rank // micro_batch // grad_accum)
