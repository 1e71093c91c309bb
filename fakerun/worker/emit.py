"""Where a worker's output goes: structlog events on stdout, plain lines on stdout, rank 0's bar on stderr."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import structlog

# Timestamps as real trainers print them: local time with milliseconds on the console, ISO 8601 UTC in json,
# from the job's clock (epoch seconds): the simulated time with --fake-speed, so that every printed timestamp
# agrees with the elapsed times and throughputs printed beside it. The trainer sets it after the fork.
_clock: Callable[[], float] = time.time


def set_clock(clock: Callable[[], float]) -> None:
    """Makes every timestamp this worker prints come from `clock`."""
    global _clock
    _clock = clock


def now() -> float:
    """The job's time now, in epoch seconds."""
    return _clock()


def _stamp(logger: object, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Python logging's console time from the job's clock: `2026-11-22 08:23:31,507`."""
    t = _clock()
    event["timestamp"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f",{int(t % 1 * 1000):03d}"
    return event


def _stamp_iso(logger: object, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """ISO 8601 UTC from the job's clock, as structlog's TimeStamper(fmt="iso", utc=True) writes it."""
    t = _clock()
    event["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"
    return event


def c10_prefix(rank: int, level: str, source: str) -> str:
    """The prefix torch's C++ logging puts on a rank's line: `[rank3]:[W1122 08:41:58.102931737 f.cpp:9]`."""
    now = _clock()
    stamp = time.strftime("%m%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1e9):09d}"
    return f"[rank{rank}]:[{level}{stamp} {source}]"


def script_traceback(rank: int, script: str, exc: BaseException) -> str:
    """An uncaught exception of the training script as a rank prints it once init_process_group has installed
    torch's excepthook: Python's traceback, every line prefixed `[rankN]: `."""
    lines = ["Traceback (most recent call last):", f'  File "{script}", line 1, in <module>']
    lines += "".join(traceback.format_exception_only(type(exc), exc)).splitlines()
    return "".join(f"[rank{rank}]: {line}\n" for line in lines)


def configure_logging(log_format: str, rank: int, *, color: bool) -> Any:
    """structlog with the chosen renderer, bound to this rank; colour only when asked."""
    renderer: structlog.typing.Processor
    processors: list[structlog.typing.Processor] = [structlog.processors.add_log_level]
    if log_format == "json":
        processors.append(_stamp_iso)
        renderer = structlog.processors.JSONRenderer()
    elif log_format == "logfmt":
        processors.append(_stamp_iso)
        renderer = structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event", "rank"])
    else:
        processors.append(_stamp)
        renderer = structlog.dev.ConsoleRenderer(colors=color, pad_event=28, sort_keys=False)
    structlog.configure(
        processors=[*processors, renderer],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger().bind(rank=rank)


def print_lines(lines: Iterable[str]) -> None:
    """Plain lines (NCCL's own output, the GPU grid, the summary) in one write."""
    text = "".join(line + "\n" for line in lines)
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()


class BarWriter:
    """tqdm's way of drawing a bar on a stream: `\\r` + meter per refresh, a newline when it closes."""

    def __init__(self) -> None:
        self.open = False

    def draw(self, text: str) -> None:
        """Redraws the bar in place."""
        sys.stderr.write("\r" + text)
        sys.stderr.flush()
        self.open = True

    def close(self, text: str | None = None) -> None:
        """Draws the last state and ends the line, as tqdm.close() does."""
        if text is not None:
            sys.stderr.write("\r" + text)
        if self.open or text is not None:
            sys.stderr.write("\n")
            sys.stderr.flush()
        self.open = False
