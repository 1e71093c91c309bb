"""What a worker prints outside its printer, when it dies: its clock, torch's C++ prefix, the traceback."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable

from fakerun.dialects.base import c10_prefix as c10_prefix_at

# Timestamps come from the job's clock (epoch seconds): the simulated time with --fake-speed, so that every
# printed timestamp agrees with the elapsed times and throughputs printed beside it. The trainer sets it after
# the fork; its printer reads the same clock.
_clock: Callable[[], float] = time.time


def set_clock(clock: Callable[[], float]) -> None:
    """Makes every timestamp this worker prints come from `clock`."""
    global _clock
    _clock = clock


def now() -> float:
    """The job's time now, in epoch seconds."""
    return _clock()


def c10_prefix(rank: int, level: str, source: str) -> str:
    """torch's C++ logging prefix of a rank's line now (dialects.base.c10_prefix at the job's time)."""
    return c10_prefix_at(rank, level, source, _clock())


def script_traceback(rank: int, script: str, exc: BaseException) -> str:
    """An uncaught exception of the training script as a rank prints it once init_process_group has installed
    torch's excepthook: Python's traceback, every line prefixed `[rankN]: `."""
    lines = ["Traceback (most recent call last):", f'  File "{script}", line 1, in <module>']
    lines += "".join(traceback.format_exception_only(type(exc), exc)).splitlines()
    return "".join(f"[rank{rank}]: {line}\n" for line in lines)
