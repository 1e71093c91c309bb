"""The per-rank worker process of a simulated job: environment, process title, then the rank's trainer."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
import sysconfig
from collections.abc import Sequence

import setproctitle

from fakerun.frameworks import pytrace
from fakerun.launcher.procs import CONTROL_FD
from fakerun.render.oom import oom_traceback
from fakerun.sim.stack import stack_for
from fakerun.worker.channel import CoordinatorGone, CoordinatorLink, FramedStream, JobAborted
from fakerun.worker.emit import c10_prefix, script_traceback
from fakerun.worker.trainer import (
    CudaOutOfMemory,
    ScriptExit,
    SimContext,
    Struck,
    nccl_abort_text,
    run_rank,
    script_path,
)


def set_title(argv: Sequence[str]) -> None:
    """Makes `ps` show the command line torchrun's worker would have (`python -u train.py ...`)."""
    setproctitle.setproctitle(" ".join(argv))


# What torch prints when a process that called init_process_group exits without destroy_process_group().
_NOT_DESTROYED = (
    "Warning: WARNING: destroy_process_group() was not called before program exit, which can leak "
    "resources. For more info, please see https://pytorch.org/docs/stable/distributed.html#shutdown "
    "(function operator())"
)


def adopt_environment(env: dict[str, str]) -> None:
    """Makes os.environ hold `env`, changing only what differs from the launcher's: each variable set is a
    putenv whose allocations copy pages of the heap this forked worker shares with the launcher."""
    for key in [key for key in os.environ if key not in env]:
        del os.environ[key]
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def die_like_nccl(text: str) -> None:
    """How a rank dies when the job failed elsewhere: NCCL's watchdog text on stderr, then SIGABRT."""
    with contextlib.suppress(OSError):
        sys.stderr.write(text)
        sys.stderr.flush()
    die_of(signal.SIGABRT)  # std::terminate aborts


def die_of(signum: int) -> None:
    """Ends the process by `signum` with its default action, without a core file (which would be left in the
    working directory)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if signum != signal.SIGKILL:  # SIGKILL has no handler to reset, and cannot be blocked
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)


def die_at_start(text: str, code: int, rank: int = 0, stdout: str = "") -> int:
    """A program that refuses its arguments (llm.c's error_usage()): what it printed on stdout first, its text
    on stderr (with this rank's number where torch's excepthook puts it), then its exit code, or the signal it
    dies of (SIGABRT)."""
    with contextlib.suppress(OSError):
        # torchrun starts Python workers with -u: stdout is unbuffered, so it reaches the terminal (or its
        # --redirects file) before the traceback is written, in the order the program printed them.
        if stdout:
            sys.stdout.write(stdout)
            sys.stdout.flush()
        if text:
            sys.stderr.write(pytrace.with_rank(text, rank))
            sys.stderr.flush()
    if code < 0:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file left in the working directory
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def module_file(module: str) -> str:
    """The file `python -m module` runs (cwd): a package's __main__.py or the module."""
    path = os.path.abspath(module.replace(".", os.sep))
    return os.path.join(path, "__main__.py") if os.path.isdir(path) else f"{path}.py"


def worker_main(argv: list[str], env: dict[str, str], ctx: SimContext) -> int:
    """Entry point of a forked worker in simulation mode."""
    link = CoordinatorLink(CONTROL_FD)
    # Its stdout and stderr are frames on the control socket (fds 1 and 2 are that socket too): one
    # descriptor per rank in the launcher, and the two streams reach it in the order they were written.
    sys.stdout = FramedStream(link, 1)
    sys.stderr = FramedStream(link, 2)
    try:
        # Nothing before the launcher has forked the whole attempt: a large job's fork loop then runs
        # without the first workers' start-up taking the CPU from it.
        link.wait_start()
    except CoordinatorGone:
        return 1  # the launcher is stopping the job before it began
    except KeyboardInterrupt:
        return interrupted()
    # setproctitle relocates the environ block on first use; it must run before environ is rewritten.
    set_title(argv)
    adopt_environment(env)
    sys.argv = argv[2:] if len(argv) > 2 and argv[1] == "-u" else list(argv)
    module = sys.argv[:1] == ["-m"] and len(sys.argv) > 1
    if module:
        # `python -m pkg.mod`: runpy puts the module's file in sys.argv[0], the path its tracebacks name.
        sys.argv = [module_file(sys.argv[1]), *sys.argv[2:]]
    # A real (Python) worker's interpreter ignores these from its start, so a write to a stdout whose reader
    # left raises BrokenPipeError instead of killing it (the fork got the defaults, as subprocess gives).
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if ctx.script_exit is not None:
        rank, local_rank = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
        torch = stack_for(ctx.run.job.cluster).torch
        stdout = pytrace.stdout_for(ctx.script_stdout, rank, local_rank, torch)
        text, code = ctx.script_exit
        # torch.distributed.launch's --local-rank=N, echoed in an argparse refusal.
        text = text.replace(pytrace.LOCAL_RANK_SLOT, str(local_rank))
        return die_at_start(text, code, rank=rank, stdout=stdout)
    try:
        return run_rank(ctx, env, link)
    except BrokenPipeError as exc:
        # Its stdout or stderr went away (`fakerun ... | head`): the script dies of it, traceback and exit 1.
        with contextlib.suppress(OSError):
            sys.stderr.write(script_traceback(int(env.get("RANK", "0")), sys.argv[0], exc))
            sys.stderr.flush()
        return 1
    except CudaOutOfMemory as exc:
        # The script dies of torch.OutOfMemoryError: its traceback through torch's hook, exit 1 (the agent
        # reports the ChildFailedError); at exit torch warns that the process group was not destroyed.
        rank = int(env.get("RANK", "0"))
        script = script_path()
        with contextlib.suppress(OSError):
            site = sysconfig.get_paths()["purelib"]
            sys.stderr.write(oom_traceback(rank, script, site, exc.figures, exc.device, module=module))
            sys.stderr.write(f"{c10_prefix(rank, 'W', 'ProcessGroupNCCL.cpp:1505')} {_NOT_DESTROYED}\n")
            sys.stderr.flush()
        return 1
    except ScriptExit as exc:
        # sys.exit(code) out of the training loop: torch warns at exit that the process group was not
        # destroyed; the agent reports the code.
        with contextlib.suppress(OSError):
            rank = int(env.get("RANK", "0"))
            sys.stderr.write(f"{c10_prefix(rank, 'W', 'ProcessGroupNCCL.cpp:1505')} {_NOT_DESTROYED}\n")
            sys.stderr.flush()
        return exc.code
    except Struck as exc:
        # A --fake-fail scenario: its text, then the signal it dies of, or the script's exit code 1.
        with contextlib.suppress(OSError):
            sys.stderr.write(exc.text)
            sys.stderr.flush()
        if exc.signum is not None:
            die_of(exc.signum)
        return 1
    except CoordinatorGone:
        # The launcher is tearing the job down (it also signals us); leave quietly.
        return 1
    except JobAborted as exc:
        die_like_nccl(nccl_abort_text(ctx, env, exc, sysconfig.get_paths()["purelib"]))
        return 1
    except KeyboardInterrupt:
        return interrupted()


def interrupted() -> int:
    """Ctrl-C reaches every worker (own session, forwarded by the launcher): die of SIGINT as an interrupted
    program does, without a traceback of the simulator's own frames."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    return 130
