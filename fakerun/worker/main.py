"""The per-rank worker process of a simulated job: environment, process title, then the rank's trainer."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

import setproctitle

from fakerun.launcher.procs import CONTROL_FD
from fakerun.worker.channel import CoordinatorGone
from fakerun.worker.trainer import SimContext, run_rank


def set_title(argv: Sequence[str]) -> None:
    """Makes `ps` show the command line torchrun's worker would have (`python -u train.py ...`)."""
    setproctitle.setproctitle(" ".join(argv))


def worker_main(argv: list[str], env: dict[str, str], ctx: SimContext) -> int:
    """Entry point of a forked worker in simulation mode."""
    # setproctitle relocates the environ block on first use; it must run before environ is rewritten.
    set_title(argv)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = argv[2:] if len(argv) > 2 and argv[1] == "-u" else list(argv)
    try:
        return run_rank(ctx, env, CONTROL_FD)
    except CoordinatorGone:
        # The launcher is tearing the job down (it also signals us); leave quietly.
        return 1
    except KeyboardInterrupt:
        # Ctrl-C reaches every worker (own session, forwarded by the launcher): die of SIGINT as an
        # interrupted program does, without a traceback of the simulator's own frames.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130
