"""Rank 0's progress bar as tqdm draws it, and the figures of its postfix."""

from __future__ import annotations

import math
import mmap
import re
import struct
from collections.abc import Sequence

# tqdm's own smoothing of the displayed rate (tqdm(smoothing=0.3)): an exponential moving average.
SMOOTHING = 0.3
# tqdm's default minimum time between two refreshes of a bar (tqdm(mininterval=0.1)), in seconds.
MININTERVAL = 0.1
# A meter with a bar: `{desc}: {pct}%|` (desc may hold `|`, as torchtune's `1|12|Loss: ...`), the bar drawn
# with tqdm's characters, then `|` and the rest.
_METER = re.compile(r"(?P<l>.*?\d%\|)(?P<bar>[ \u2588-\u258f]*)(?P<r>\|.*)", re.DOTALL)
# The last field of a postfix (`, loss=2.34`) before the closing `]`, after tqdm's own two (`[00:01<00:10,
# 1.07it/s`), which stay.
_LAST_FIELD = re.compile(r"(?<=\[)([^,\[\]]*,[^,\[\]]*(?:,[^,\[\]]*)*?),[^,\[\]]*\]$")


class BarWidth:
    """The terminal's width in columns, shared by the launcher (which sees the resizes) with the workers it
    forks (which format the bars): memory mapped before the fork, so a resize reaches the next refresh."""

    def __init__(self, columns: int) -> None:
        self._cell = mmap.mmap(-1, 4)  # anonymous and shared: the forked workers see the launcher's writes
        self.set(columns)

    @property
    def columns(self) -> int:
        """The width now."""
        value: int = struct.unpack_from("I", self._cell)[0]
        return value

    def set(self, columns: int) -> None:
        """The terminal has `columns` columns now (one aligned 4-byte store: no reader sees half of it)."""
        struct.pack_into("I", self._cell, 0, max(1, columns))


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
    """tqdm's meter text for these figures (no carriage return, no newline; `0/?` with no total), fitted to
    `ncols` as tqdm fits it, except that what is too long keeps its closing `]` (see `fit`)."""
    # Imported here: tqdm's import costs ~60 ms (importlib.metadata), paid by rank 0 only, not by every fork.
    from tqdm.std import tqdm

    text: str = tqdm.format_meter(
        n,
        total,  # type: ignore[arg-type]  # tqdm's stub says float; None is its unknown total (`0/?`)
        elapsed_s,
        ncols=None,  # the bar 10 wide: `fit` gives it the room left, as tqdm would
        prefix=prefix,
        unit=unit,
        rate=rate,
        postfix=postfix,
        initial=initial,
        bar_format=bar_format,
    )
    if ncols is None:
        return text
    # tqdm's frac; a total it has passed counts as none (`if total and n >= total + 0.5: total = None`).
    frac = n / total if total and n < total + 0.5 else None
    return fit(text, ncols, frac)


def fit(text: str, columns: int, frac: float | None = None) -> str:
    """A tqdm meter fitted to `columns`: its bar takes the room the rest leaves, as tqdm's ncols does; when
    even a 1-character bar does not fit, the postfix loses fields from its end, then the description is cut,
    and only then the end (tqdm cuts the end at once, closing `]` and all). `frac`: the progress the bar
    shows (None: read from the bar itself, as the launcher must when the terminal is resized)."""
    from tqdm.std import Bar  # type: ignore[attr-defined]  # in tqdm, not in its stubs
    from tqdm.utils import disp_len, disp_trim

    text = text.rstrip(" ")  # a refresh's padding (tqdm's status_printer) is no part of the meter
    m = _METER.fullmatch(text)
    if m is None:
        left, bar_text, right = "", None, text
    else:
        left, bar_text, right = m["l"], m["bar"], m["r"]
    room = columns - disp_len(left) - disp_len(right)
    while room < 1 and (shorter := _LAST_FIELD.sub(r"\1]", right, count=1)) != right:
        room += disp_len(right) - disp_len(shorter)
        right = shorter
    if room < 1 and left:
        # The description goes from its end; its `: ` and the percentage stay while there is room for them.
        desc = re.sub(r"\s*\d+%\|$", "", left) if bar_text is not None else ""
        keep = left[len(desc) :]
        cut = desc[: max(0, len(desc) - (1 - room))]
        room += disp_len(desc) - disp_len(cut)
        left = cut + keep
    if bar_text is None:
        return disp_trim(left + right, columns)
    if frac is None:
        frac = _bar_frac(bar_text)
    return disp_trim(left + format(Bar(frac, max(1, room), charset=Bar.UTF)) + right, columns)


def _bar_frac(drawn: str) -> float:
    """The progress a tqdm bar shows: full blocks and the eighths of the partial one over its width (plus half
    an eighth, so that the same width draws the same bar back despite rounding)."""
    from tqdm.std import Bar  # type: ignore[attr-defined]  # in tqdm, not in its stubs

    charset: str = Bar.UTF  # " ▏▎▍▌▋▊▉█": a character's index is its eighths
    if not drawn:
        return 0.0
    eighths = sum(charset.index(ch) for ch in drawn if ch in charset)
    return min(1.0, (eighths + 0.5) / (8 * len(drawn)))
