"""The per-rank worker process of a simulated job: environment, process title, then the job itself."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

import setproctitle
import structlog


def set_title(argv: Sequence[str]) -> None:
    """Makes `ps` show the command line torchrun's worker would have (`python -u train.py ...`)."""
    setproctitle.setproctitle(" ".join(argv))


def run_placeholder(env: dict[str, str], max_steps: int, step_seconds: float) -> int:
    """A small honest loop until the simulated trainer lands: a few structured lines per step."""
    rank = int(env["RANK"])
    log = structlog.get_logger().bind(rank=rank)
    log.info("worker started", local_rank=int(env["LOCAL_RANK"]), world_size=int(env["WORLD_SIZE"]))
    for step in range(1, max_steps + 1):
        time.sleep(step_seconds)
        log.info("step", step=step)
    log.info("worker finished", steps=max_steps)
    return 0


def worker_main(argv: list[str], env: dict[str, str], max_steps: int, step_seconds: float) -> int:
    """Entry point of a forked worker in simulation mode."""
    # setproctitle relocates the environ block on first use; it must run before environ is rewritten.
    set_title(argv)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = argv[2:] if len(argv) > 2 and argv[1] == "-u" else list(argv)
    return run_placeholder(env, max_steps, step_seconds)
