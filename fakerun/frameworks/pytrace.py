"""An uncaught Python exception as CPython 3.11 prints it: frames with their source line and carets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Stands for the rank in a text every rank prints (hints.Hints.script_exit): torch's excepthook, installed by
# init_process_group, prefixes each line with `[rankN]: `; the worker puts its own rank in.
RANK_SLOT = "\x00"


@dataclass(frozen=True)
class Frame:
    """One traceback entry: where, the source line (None: exec'd text, which has none) and what is marked."""

    path: str
    line: int
    function: str = "<module>"
    source: str | None = None
    marked: str | None = None  # the part of the source the failing instruction spans


def _frame_lines(frame: Frame) -> list[str]:
    """The entry's lines: carets go under the marked part unless it spans the whole stripped line."""
    out = [f'  File "{frame.path}", line {frame.line}, in {frame.function}']
    if frame.source is None:
        return out
    code = frame.source.strip()
    out.append(f"    {code}")
    if frame.marked is not None and frame.marked != code:
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
