"""The Dialect protocol: a pure renderer from one rank's events to that framework's output lines."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, TypeAlias

from fakerun.dialects.events import Event
from fakerun.render.bar import BarWidth

Stream: TypeAlias = Literal["stdout", "stderr"]


@dataclass(frozen=True)
class Line:
    """One whole line (no newline) for a stream."""

    text: str
    stream: Stream = "stdout"


@dataclass(frozen=True)
class BarDraw:
    """A progress bar redrawn in place (tqdm's `\\r` + meter) on its stream (tqdm's file=, stderr default)."""

    text: str
    position: int = 0  # tqdm's position=: a nested bar drawn that many lines below the cursor's
    stream: Stream = "stderr"
    # tqdm's refresh() (set_description, set_postfix, Lightning's bars, the redraw after tqdm.write): drawn
    # at once. Otherwise an update(): drawn only once tqdm's mininterval has passed since the last refresh.
    forced: bool = False


@dataclass(frozen=True)
class BarClose:
    """The progress bar's last state (None: as last drawn) and the newline that ends it, as tqdm.close().

    A nested bar (position > 0) closes as tqdm's leave=False does: its line is blanked, no newline."""

    text: str | None = None
    position: int = 0
    stream: Stream = "stderr"


@dataclass(frozen=True)
class LogWrite:
    """Text the script writes into a log file of its own (llm.c's main.log), appended or, `fresh`, replacing
    what the file held (its directory made first); nothing with --fake-no-files."""

    path: str
    text: str
    fresh: bool = False


Output: TypeAlias = Line | BarDraw | BarClose | LogWrite


@dataclass(frozen=True)
class Seat:
    """Where a dialect prints from: this rank in the job, and how its output is shown."""

    rank: int
    local_rank: int
    world_size: int
    nproc_per_node: int
    hosts: tuple[str, ...]  # one per node of the job
    log_format: str = "console"  # fakerun's own events: "console", "json" or "logfmt"
    log_level: str = "info"  # the lowest level of fakerun's own events shown: "debug", "info" or "warning"
    color: bool = False
    terminal: BarWidth | None = None  # the terminal's width (kept up to date) when rank 0's bar reaches one
    grid: bool = False  # the GPU grid is shown (fakerun's own style, or --fake-grid)
    nccl_debug: bool = False  # NCCL_DEBUG=INFO (or TRACE) in the rank's environment
    nccl_collnet_enable: str | None = None  # NCCL_COLLNET_ENABLE as the environment spells it; None: unset
    cwd: str = ""  # the rank's working directory (NeMo logs under it); "": paths stay relative

    @property
    def bar_columns(self) -> int | None:
        """The terminal's width now, for tqdm's ncols (None: not a terminal, tqdm's 10-character bar)."""
        return None if self.terminal is None else self.terminal.columns

    @property
    def width(self) -> int:
        """Columns for boxed text (the grid, the summary): the terminal's, at most 100."""
        return min(self.bar_columns or 100, 100)


@dataclass(frozen=True)
class HintRule:
    """Which training-script arguments select a dialect, and what its argument parser does with them."""

    # The script's path matches this (`pretrain_gpt.py`): it decides when no option votes, and breaks ties.
    script: re.Pattern[str] | None = None
    # Option names (without dashes) only this framework spells so; each one given is a vote. `options` match
    # in either spelling (dashes or underscores), `exact` only as written.
    options: frozenset[str] = frozenset()
    exact: frozenset[str] = frozenset()
    # Dotted options (`--training.steps`) vote when their first part is one of these config sections.
    sections: frozenset[str] = frozenset()
    # Its boolean options take any word as their value (`--bf16 True`), as HfArgumentParser's do.
    bool_words: bool = False
    # An architecture spelled in its arguments gets its own defaults (Megatron: multi-head attention unless
    # --group-query-attention, a 4h FFN, tied embeddings).
    arch_defaults: bool = False
    # The option without which the script saves no checkpoint (Megatron's --save), None if it always saves.
    save_option: str | None = None

    def votes(self, name: str) -> bool:
        """Whether the option `name` (as spelled, without its leading dashes) votes for this framework."""
        if "." in name:
            return name.split(".", 1)[0].replace("-", "_") in self.sections
        return name in self.exact or name.replace("-", "_") in self.options


class Renderer(Protocol):
    """Turns one rank's events into output: pure (no I/O, clock or global RNG)."""

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """What this rank prints for `event`, happening at `at` (epoch seconds on the job's clock)."""
        ...

    def wants(self, kind: type[Event]) -> bool:
        """Whether this rank prints anything for events of `kind` (the loop skips building costly ones)."""
        ...


class Dialect(Renderer, Protocol):
    """One framework's output, constructed once per rank from its seat, and how its arguments select it."""

    name: ClassVar[str]  # the registry's key, --fake-trainer's value
    hints: ClassVar[HintRule]  # which script arguments select it
    grid: ClassVar[bool]  # whether the GPU grid is shown without --fake-grid

    def __init__(self, seat: Seat) -> None: ...


def words(text: str) -> frozenset[str]:
    """The whitespace-separated words of `text` (option name tables)."""
    return frozenset(text.split())


# -- how frameworks write times ---------------------------------------------------------------------------


def log_time(at: float) -> str:
    """Python logging's asctime, local: `2026-11-22 08:23:31,507`."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) + f",{int(at % 1 * 1000):03d}"


def iso_time(at: float) -> str:
    """ISO 8601 UTC with microseconds, as structlog's TimeStamper(fmt="iso", utc=True) writes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1e6):06d}Z"


def seconds_time(at: float) -> str:
    """Local time to the second: `2026-11-22 08:23:31`."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def c10_log_prefix(level: str, source: str, at: float) -> str:
    """torch's C++ logging prefix, as a process outside a process group (the launcher) prints it:
    `[W1122 08:41:58.102931737 socket.cpp:755]`."""
    stamp = time.strftime("%m%d %H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1e9):09d}"
    return f"[{level}{stamp} {source}]"


def c10_prefix(rank: int, level: str, source: str, at: float) -> str:
    """The prefix torch's C++ logging puts on a rank's line: `[rank3]:[W1122 08:41:58.102931737 f.cpp:9]`."""
    return f"[rank{rank}]:{c10_log_prefix(level, source, at)}"


def count(n: float) -> str:
    """1.24B, 62.9M: how trainers print parameter and token counts."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def gigabytes(nbytes: float) -> str:
    """`17.3 GB`: decimal gigabytes with one decimal."""
    return f"{nbytes / 1e9:.1f} GB"
