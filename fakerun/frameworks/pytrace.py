"""An uncaught Python exception as CPython 3.11 prints it, and what a script prints before it dies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Stands for the rank in a text every rank prints (hints.Hints.script_exit): torch's excepthook, installed by
# init_process_group, prefixes each line with `[rankN]: `; the worker puts its own rank in.
RANK_SLOT = "\x00"
# In a Hints.script_stdout text: LOCAL_RANK_SLOT stands for the rank's LOCAL_RANK, TORCH_SLOT for the job's
# torch.__version__, and a line that starts with MASTER_LINE is printed by rank 0 only (a script's print0).
LOCAL_RANK_SLOT = "\x01"
TORCH_SLOT = "\x02"
MASTER_LINE = "\x03"


@dataclass(frozen=True)
class Frame:
    """One traceback entry: where, the source line (None: exec'd text, which has none) and what is marked."""

    path: str
    line: int
    function: str = "<module>"
    source: str | None = None
    marked: str | None = None  # the part of the source the failing instruction spans
    # Python 3.11's underline as (column in the stripped source, its marks), when it is more than carets
    # under `marked` (a binary operation's or a subscript's `~~~~^^^^`).
    underline: tuple[int, str] | None = None


def _frame_lines(frame: Frame) -> list[str]:
    """The entry's lines: carets go under the marked part unless it spans the whole stripped line."""
    out = [f'  File "{frame.path}", line {frame.line}, in {frame.function}']
    if frame.source is None:
        return out
    code = frame.source.strip()
    out.append(f"    {code}")
    if frame.underline is not None:
        start, marks = frame.underline
        out.append("    " + " " * start + marks)
    elif frame.marked is not None and frame.marked != code:
        start = code.index(frame.marked)
        out.append("    " + " " * start + "^" * len(frame.marked))
    return out


def traceback_text(frames: Sequence[Frame], exception: str, *, after_init: bool = False) -> str:
    """The whole traceback ending in `exception` ("ValueError: ..."); after init_process_group each line
    carries torch's `[rankN]: ` prefix (RANK_SLOT where N goes)."""
    lines = ["Traceback (most recent call last):"]
    for frame in frames:
        lines += _frame_lines(frame)
    lines += exception.split("\n")
    prefix = f"[rank{RANK_SLOT}]: " if after_init else ""
    return "".join(f"{prefix}{line}\n" for line in lines)


def with_rank(text: str, rank: int) -> str:
    """A script_exit text as rank `rank` prints it."""
    return text.replace(RANK_SLOT, str(rank))


def stdout_for(text: str, rank: int, local_rank: int, torch: str) -> str:
    """A script_stdout text as rank `rank` (local rank `local_rank`, on torch `torch`) prints it."""
    lines = text.splitlines(keepends=True)
    kept = [line.removeprefix(MASTER_LINE) for line in lines if rank == 0 or not line.startswith(MASTER_LINE)]
    shown = "".join(kept).replace(LOCAL_RANK_SLOT, str(local_rank)).replace(TORCH_SLOT, torch)
    return with_rank(shown, rank)
