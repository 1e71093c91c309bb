"""Rank 0's progress bar as tqdm draws it, and the figures of its postfix."""

from __future__ import annotations

import math
from collections.abc import Sequence

# tqdm's own smoothing of the displayed rate (tqdm(smoothing=0.3)): an exponential moving average.
SMOOTHING = 0.3


def ema_rate(step_times: Sequence[float]) -> float | None:
    """Iterations per second as tqdm smooths them over the step times seen so far."""
    avg: float | None = None
    for dt in step_times:
        avg = dt if avg is None else SMOOTHING * dt + (1.0 - SMOOTHING) * avg
    return None if not avg else 1.0 / avg


def human_count(value: float) -> str:
    """3 significant digits with a k/M/G suffix, as tqdm's unit_scale prints (2.10M)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def train_postfix(loss: float, lr: float, tokens_per_s: float, *, width: int | None) -> str:
    """`loss=2.345, ppl=10.43, lr=3.00e-04, tok/s=2.10M`; narrow terminals keep loss (and lr) only."""
    ppl = math.exp(min(loss, 700.0)) if not math.isnan(loss) else math.nan
    parts = [f"loss={loss:.4f}", f"ppl={ppl:.4g}", f"lr={lr:.2e}", f"tok/s={human_count(tokens_per_s)}"]
    if width is not None and width < 90:
        parts = [parts[0]]  # an 80-column pane: the meter's times and rate already take ~60 columns
    elif width is not None and width < 100:
        parts = [parts[0], parts[2]]
    return ", ".join(parts)


def meter(
    n: int,
    total: int | None,
    elapsed_s: float,
    *,
    prefix: str = "",
    postfix: str | None = None,
    rate: float | None = None,
    ncols: int | None = None,
    initial: int = 0,
    unit: str = "it",
    bar_format: str | None = None,
) -> str:
    """tqdm's meter text for these figures (no carriage return, no newline; `0/?` with no total)."""
    # Imported here: tqdm's import costs ~60 ms (importlib.metadata), paid by rank 0 only, not by every fork.
    from tqdm.std import tqdm

    text: str = tqdm.format_meter(
        n,
        total,  # type: ignore[arg-type]  # tqdm's stub says float; None is its unknown total (`0/?`)
        elapsed_s,
        ncols=ncols,
        prefix=prefix,
        unit=unit,
        rate=rate,
        postfix=postfix,
        initial=initial,
        bar_format=bar_format,
    )
    return text
