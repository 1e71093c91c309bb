"""The per-rank worker process of a simulated job: environment, process title, then the job itself."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

import setproctitle
import structlog

from fakerun.options import FakeOptions

# How long a step of the placeholder loop lasts at --fake-speed 1.
PLACEHOLDER_STEP_S = 0.5
PLACEHOLDER_STEPS = 20


def set_title(argv: Sequence[str]) -> None:
    """Makes `ps` show the command line torchrun's worker would have (`python -u train.py ...`)."""
    setproctitle.setproctitle(" ".join(argv))


def configure_logging(log_format: str, rank: int) -> structlog.stdlib.BoundLogger:
    """structlog with the chosen renderer; colour only on a TTY and never with NO_COLOR."""
    colors = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    renderer: structlog.typing.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    elif log_format == "logfmt":
        renderer = structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event", "rank"])
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso" if log_format != "console" else "%Y-%m-%d %H:%M:%S"),
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger().bind(rank=rank)  # type: ignore[no-any-return]


def run_placeholder(env: dict[str, str], fake: FakeOptions) -> int:
    """A small honest loop until the simulated trainer lands: a few structured lines per step."""
    rank = int(env["RANK"])
    log = configure_logging(fake.log_format, rank)
    max_steps = fake.max_steps or PLACEHOLDER_STEPS
    step_s = PLACEHOLDER_STEP_S / fake.speed
    deadline = None if fake.max_time is None else time.monotonic() + fake.max_time / fake.speed
    log.info("worker started", local_rank=int(env["LOCAL_RANK"]), world_size=int(env["WORLD_SIZE"]))
    step = 0
    while step < max_steps and (deadline is None or time.monotonic() < deadline):
        time.sleep(step_s)
        step += 1
        log.info("step", step=step)
    log.info("worker finished", steps=step)
    return 0


def worker_main(argv: list[str], env: dict[str, str], fake: FakeOptions) -> int:
    """Entry point of a forked worker in simulation mode."""
    # setproctitle relocates the environ block on first use; it must run before environ is rewritten.
    set_title(argv)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = argv[2:] if len(argv) > 2 and argv[1] == "-u" else list(argv)
    return run_placeholder(env, fake)
