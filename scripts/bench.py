"""Benchmarks of fakerun against the service levels of PRODUCT.md section 8; prints a Markdown table.

Usage: python scripts/bench.py [--runs N] [--quick] [--only first-line|page-merging]
                              [--torch-venv PATH | --no-torch]

Every figure is measured over several runs (median and min-max); a figure compared with a baseline is
measured interleaved with it, run by run, in the same run of the benchmark. Every process the benchmark
starts is killed at the end, on success, on an exception and on Ctrl-C/SIGTERM. Standard library plus
psutil only. Jobs run without PYTHONDONTWRITEBYTECODE in their environment, after one untimed warm-up, so
that the launcher loads cached bytecode as a user's install does.

The figures, each with its target where PRODUCT.md section 8 sets one:
- first line of a --fake-exec hello script, 8 ranks, vs torchrun running the same script (>= 10x sooner),
  from this checkout's venv (the README's editable install) and, but for --quick, installed by pip into a
  venv of the benchmark's own (untimed), as a user installs it and as torch is;
- first line of the simulated job at the default pace, 8 ranks (--quick: of its 64-rank default-pace
  training run): the start-up pacing (realism), reported apart from the launcher's overhead (no target);
- all ranks started and the tree's PSS, 8 to 1024 ranks; at 1024 ranks (64 with --quick) the start vs a
  Python that imported what the launcher preloads forking as many sleeping children (<= 2x);
- 1024 ranks run to --fake-max-steps 3, and 4096 ranks (512 x 8) run to --fake-max-steps 3 with the tree's
  peak PSS (exit 0, PSS <= 12 GB; a job fakerun's preflight refuses is reported with its one line);
- CPU of a 64-rank job while training (<= 3% at the default pace), PSS and the launcher's open descriptors
  per rank while training, at 64 and 1024 ranks (<= 2.5 MB and <= 2 per rank at 1024 ranks);
- coordinator step rounds/s with pacing removed vs a bare socket barrier, 64 and 1024 ranks (>= 0.5x);
- PSS per rank of a 1024-rank job at the default pace as training begins and through the 15 minutes after,
  where the kernel's same-page merging runs (KSM, which root turns on; n/a elsewhere), and ksmd's CPU;
- SIGTERM and SIGKILL to the launcher until every process is gone, 64 and 1024 ranks (<= 0.5 s / 1 s at 64
  ranks, <= 1 s at 1024).
--quick runs each figure once, at 64 ranks at most (figures of 1024 and 4096 ranks read n/a), in about a
minute; the full run takes about a quarter of an hour.

The first-line figure is compared with torchrun running the same script in the same run. torchrun comes
from a virtual environment of the benchmark's own with the CPU build of torch (TORCH_REQUIREMENT), cached
in $XDG_CACHE_HOME/fakerun-bench/torch-venv (~/.cache/... by default) and built there, untimed, by the first
run that finds it missing or stale (a few minutes: pip installs a ~200 MB wheel and its dependencies).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import fcntl
import functools
import gc
import json
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType

import psutil

RANKS_PER_NODE = 8
LONG_RUN_STEPS = 10**6  # a job that outlives any measurement; it is ended by SIGTERM
START_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Pace of the barrier-throughput runs: every simulated sleep becomes ~0, so steps go as fast as the
# coordinator's rounds allow.
ROUNDS_SPEED = "100000"
# Pace of the start-up runs: the simulated `import torch` and CUDA context (seconds) become microseconds.
START_SPEED = "1000000"
# How often "alive" (all N children exist) is checked, for fakerun and for its fork baseline alike.
ALIVE_POLL_S = 0.005
# The largest job: 4096 ranks, run to FLEET_STEPS at FLEET_SPEED (its simulated start-up takes no time to
# speak of), its tree's PSS sampled every PSS_PERIOD_S. Forking and ending 4096 ranks on two cores takes
# minutes, hence its own timeout.
FLEET_NODES = 512
FLEET_STEPS = 3
FLEET_SPEED = "1000"
FLEET_TIMEOUT_S = 900.0
PSS_PERIOD_S = 0.5
# Removed from the environment of every process the benchmark starts. PYTHONDONTWRITEBYTECODE (exported by
# some shells, this machine's among them) keeps the editable install from caching bytecode, so that every
# launcher start would recompile fakerun's modules; users' installs have .pyc files.
DROPPED_ENV = ("PYTHONDONTWRITEBYTECODE",)


# ----------------------------------------------------------------------------------------------------
# Process bookkeeping: every launcher we start and every descendant we ever saw, for the final cleanup.


@dataclass
class Registry:
    """Every launcher started and every descendant seen, so that cleanup can kill them all."""

    launchers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    def note_tree(self, launcher: subprocess.Popen[bytes]) -> list[psutil.Process]:
        """The launcher and its current descendants, remembered for the cleanup."""
        procs: list[psutil.Process] = []
        try:
            root = psutil.Process(launcher.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return [p for p in self.seen.values() if _alive(p)]
        for p in procs:
            self.seen.setdefault(p.pid, p)
        return procs

    def cleanup(self) -> None:
        """SIGKILLs everything still alive that we started, and reaps the launchers."""
        for launcher in self.launchers:
            if launcher.poll() is None:
                self.note_tree(launcher)
                # The launcher first: it forks no more workers, and those die of their parent-death signal.
                with contextlib.suppress(OSError):
                    launcher.kill()
        for p in list(self.seen.values()):
            with contextlib.suppress(psutil.Error):
                p.kill()  # psutil checks the create time: never a reused pid
        _sweep_tagged()
        for launcher in self.launchers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                launcher.wait(timeout=5)
            if launcher.stdout is not None:
                with contextlib.suppress(OSError):
                    launcher.stdout.close()
        self.launchers.clear()
        self.seen.clear()


REGISTRY = Registry()
# Every launcher gets this in its environment, so that the cleanup also finds one whose Popen never returned
# (an interrupt arriving between fork and return).
TAG_NAME = "FAKERUN_BENCH_TAG"
TAG = f"{os.getpid()}.{time.time_ns()}"


# The benchmark's own directory, where every process it starts runs: workers retitle themselves with
# setproctitle, which overwrites their /proc/PID/environ, so the tag alone no longer finds them.
BENCH_DIRS: list[str] = []


def _ours(p: psutil.Process) -> bool:
    """Whether `p` carries this benchmark's tag or runs in its directory."""
    with contextlib.suppress(psutil.Error):
        if p.environ().get(TAG_NAME) == TAG:
            return True
    with contextlib.suppress(psutil.Error):
        cwd = p.cwd()
        return any(cwd == d or cwd.startswith(d + os.sep) for d in BENCH_DIRS)
    return False


def _sweep_tagged() -> None:
    """SIGKILLs any process of ours: carrying this benchmark's tag or running in its directory."""
    for p in psutil.process_iter():
        if p.pid == os.getpid():
            continue
        if _ours(p):
            with contextlib.suppress(psutil.Error):
                p.kill()


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the forked child before exec: a SIGKILLed benchmark takes its launchers with it."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _alive(p: psutil.Process) -> bool:
    """True while `p` (the very process, not a reuse of its pid) exists and is not a zombie."""
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


# ----------------------------------------------------------------------------------------------------
# One job: the launcher with its stdout read by a thread that timestamps the lines that matter.


def child_env(cwd: str) -> dict[str, str]:
    """The environment of every process the benchmark starts: ours, minus DROPPED_ENV, plus tag and TMPDIR."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env[TAG_NAME] = TAG
    # TMPDIR inside the bench's own directory: a SIGKILLed launcher cannot remove its temp dir.
    env["TMPDIR"] = cwd
    return env


class Job:
    """A launched command whose stdout is drained by a thread timestamping the lines that matter.

    With `expected_ranks` (and `--fake-log-format json`), it records when every rank printed `worker started`
    and when training runs: every rank printed `memory after first step` (after its step 1) and rank 0 its
    first `train` event.
    """

    def __init__(self, argv: Sequence[str], cwd: str, expected_ranks: int | None = None) -> None:
        self.expected_ranks = expected_ranks
        self.first_line_at: float | None = None
        self.all_started_at: float | None = None
        self.training_at: float | None = None
        self.ranks_started: set[int] = set()
        self.ranks_stepped: set[int] = set()
        self.rank0_trained = False
        self.last_line = b""
        self.stderr_checked = False
        self.first_line = threading.Event()
        self.all_started = threading.Event()
        self.training = threading.Event()
        self.stderr_path = os.path.join(cwd, f"stderr.{time.monotonic_ns()}")
        with open(self.stderr_path, "wb") as err:
            self.t0 = time.monotonic()
            self.proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env=child_env(cwd),
                preexec_fn=_die_with_parent,
            )
        REGISTRY.launchers.append(self.proc)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.last_line = line
            if self.training_at is not None:
                continue  # nothing left to watch for: keep up with a fast job's output
            now = time.monotonic()
            if self.first_line_at is None:
                self.first_line_at = now
                self.first_line.set()
            if self.expected_ranks is not None:
                self._watch(line, now, self.expected_ranks)
        self.first_line.set()  # EOF: wake waiters, who see no timestamp
        self.all_started.set()
        self.training.set()

    def _watch(self, line: bytes, now: float, ranks: int) -> None:
        if b"worker started" in line:
            rank = _rank_of(line)
            if rank is not None:
                self.ranks_started.add(rank)
            if len(self.ranks_started) >= ranks and self.all_started_at is None:
                self.all_started_at = now
                self.all_started.set()
        elif b"memory after first step" in line:
            rank = _rank_of(line)
            if rank is not None:
                self.ranks_stepped.add(rank)
        elif b'"event": "train"' in line and _rank_of(line) == 0:
            self.rank0_trained = True
        else:
            return
        if self.rank0_trained and len(self.ranks_stepped) >= ranks:
            self.training_at = now
            self.training.set()

    def stderr_tail(self) -> str:
        with open(self.stderr_path, "rb") as f:
            return f.read()[-2000:].decode(errors="replace")

    def wait_first_line(self, timeout: float = START_TIMEOUT_S) -> float:
        self.first_line.wait(timeout)
        if self.first_line_at is None:
            raise RuntimeError(f"no line on stdout from {self.proc.args!r}:\n{self.stderr_tail()}")
        return self.first_line_at - self.t0

    def wait_all_started(self, timeout: float = START_TIMEOUT_S) -> float:
        self.all_started.wait(timeout)
        if self.all_started_at is None:
            raise RuntimeError(
                f"only {len(self.ranks_started)}/{self.expected_ranks} ranks started:\n{self.stderr_tail()}"
            )
        return self.all_started_at - self.t0

    def wait_training(self, timeout: float = START_TIMEOUT_S) -> float:
        """Seconds from launch until every rank finished step 1 and rank 0 printed its first `train` event."""
        self.training.wait(timeout)
        if self.training_at is None:
            raise RuntimeError(
                f"training not running: {len(self.ranks_stepped)}/{self.expected_ranks} ranks past step 1, "
                f"rank 0 train event {'seen' if self.rank0_trained else 'not seen'}, "
                f"launcher exit code {self.proc.poll()}:\n{self.stderr_tail()}"
            )
        return self.training_at - self.t0

    def check_running(self, what: str) -> None:
        """Raises if the launcher has exited (a measurement over a dead job would be meaningless)."""
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(f"launcher exited {code} during {what}:\n{self.stderr_tail()}")

    def tree(self) -> list[psutil.Process]:
        return REGISTRY.note_tree(self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signals the launcher and waits for it; SIGKILLs the tree if it does not end in time."""
        self.tree()
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            REGISTRY.cleanup()
            raise RuntimeError(f"launcher {self.proc.pid} ignored signal {sig}") from None
        self._reader.join(timeout=5)
        self._check_stderr()
        return code

    def _check_stderr(self) -> None:
        """Notes (once) a job whose stderr holds a traceback through fakerun's code.

        Tracebacks through torch's files are the launcher imitating torchrun (SIGTERM prints one).
        """
        if self.stderr_checked:
            return
        self.stderr_checked = True
        with contextlib.suppress(OSError), open(self.stderr_path, "rb") as f:
            data = f.read()
            frame = OWN_FRAME.search(data)
            if frame is not None:
                at = data.rfind(b"Traceback (most recent call last)", 0, frame.start())
                text = data[max(at, 0) :][:3000].decode(errors="replace")
                PROBLEMS.append(f"{self.proc.args!r}:\n{text}")


# A traceback frame in fakerun's own code (a file under a `fakerun/` package directory).
OWN_FRAME = re.compile(rb'File "[^"\n]*/fakerun/[^"\n]*\.py", line \d+')
# Jobs whose stderr showed such a frame, reported at the end (a job may fail in a way no figure shows).
PROBLEMS: list[str] = []


def _rank_of(line: bytes) -> int | None:
    """The `rank` field of a JSON log line, or None."""
    try:
        return int(json.loads(line)["rank"])
    except (ValueError, KeyError, TypeError):
        return None


def fakerun_argv(nnodes: int, *extra: str) -> list[str]:
    exe = shutil.which("fakerun") or os.path.join(os.path.dirname(sys.executable), "fakerun")
    return [exe, "--nnodes", str(nnodes), "--nproc-per-node", str(RANKS_PER_NODE), *extra, "train.py"]


def long_job(nnodes: int, cwd: str, *extra: str) -> Job:
    """A job of nnodes x 8 ranks that runs until it is signalled, logging JSON lines."""
    argv = fakerun_argv(nnodes, "--fake-max-steps", str(LONG_RUN_STEPS), "--fake-log-format", "json", *extra)
    return Job(argv, cwd, expected_ranks=nnodes * RANKS_PER_NODE)


# ----------------------------------------------------------------------------------------------------
# /proc readers.


def pss_bytes(pids: Sequence[int]) -> int:
    """Sum of the `Pss:` lines of /proc/PID/smaps_rollup over `pids` (processes already gone count 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        total += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def _stat_seconds(pid: int) -> float:
    """utime+stime of /proc/PID/stat (all threads, dead ones included), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def _schedstat_works() -> bool:
    """Whether /proc/PID/schedstat reports time on CPU here (it reads `0 0 0` without sched_info)."""
    try:
        with open(f"/proc/{os.getpid()}/schedstat", "rb") as f:
            return int(f.read().split()[0]) > 0
    except (OSError, ValueError, IndexError):
        return False


SCHEDSTAT = _schedstat_works()


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """CPU seconds used so far by each pid still present.

    utime+stime of /proc/PID/stat are sampled at the timer tick (CONFIG_TICK_CPU_ACCOUNTING: a tick of 4 ms
    charged to whichever task runs at that instant), far too coarse for 64 processes that each run ~100 µs
    a step: a 2 s window read 0.5% where the exact figure was 6%. So a single-threaded process is read from
    /proc/PID/schedstat (nanoseconds on CPU, kept by the scheduler); a multi-threaded one, whose exited
    threads only /proc/PID/stat still counts, from its ticks.
    """
    used: dict[int, float] = {}
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
            if SCHEDSTAT and len(tasks) == 1:
                with open(f"/proc/{pid}/task/{tasks[0]}/schedstat", "rb") as f:
                    used[pid] = int(f.read().split()[0]) / 1e9
            else:
                used[pid] = _stat_seconds(pid)
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            continue
    return used


# ----------------------------------------------------------------------------------------------------
# torchrun for the first-line comparison: a virtual environment of the benchmark's own, built untimed.

# PRODUCT.md §8 compares with torchrun of this release.
TORCH_REQUIREMENT = "torch==2.13.*"
# PyTorch's index of CPU builds (`2.13.0+cpu`, a ~200 MB wheel); PyPI's Linux wheel of the same release pulls
# several GB of CUDA libraries. pip ranks `2.13.0+cpu` above `2.13.0` (a local version label sorts after
# the bare version), so with both indexes (and any wheel directory pip is configured with) it takes the CPU
# build wherever one is offered; an unreachable index is skipped with a warning.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Written last into a finished venv: what it was built for. A venv without it (half-built) or built for
# another requirement or Python is rebuilt.
TORCH_MARKER = "fakerun-bench-torch.json"
PIP_TIMEOUT_S = 1800.0


@dataclass
class Torch:
    """The python of a venv where torch imports, and torch's version there."""

    python: str
    version: str


def default_torch_venv() -> str:
    """The per-user cache directory of the benchmark's torch venv."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "fakerun-bench", "torch-venv")


def _venv_python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def _marker() -> dict[str, str]:
    return {"requirement": TORCH_REQUIREMENT, "python": platform.python_version()}


def _cached_torch(venv: str) -> Torch | None:
    """The torch of a finished venv built for TORCH_REQUIREMENT and this Python, or None."""
    try:
        with open(os.path.join(venv, TORCH_MARKER)) as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or any(marker.get(k) != v for k, v in _marker().items()):
        return None
    python = _venv_python(venv)
    if not os.access(python, os.X_OK):  # e.g. the base interpreter it links to is gone
        return None
    return Torch(python, str(marker.get("torch", "?")))


def probe_torch(python: str) -> str:
    """torch's version as `python` imports it, with the modules torchrun loads (untimed: warms the cache)."""
    out = subprocess.run(
        [python, "-c", "import torch, torch.distributed.run; print(torch.__version__)"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k not in DROPPED_ENV},
        timeout=START_TIMEOUT_S,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"torch does not import with {python}:\n{out.stderr[-2000:]}")
    return out.stdout.strip()


def _pip_install(python: str, requirement: str) -> bool:
    """Installs `requirement` into the venv of `python`, pip's progress on our stderr; False on failure."""
    argv = [python, "-m", "pip", "install", "--disable-pip-version-check", "--retries", "1"]
    log(f"pip install {requirement} (extra index {TORCH_CPU_INDEX})")
    code = subprocess.run(
        [*argv, "--extra-index-url", TORCH_CPU_INDEX, requirement],
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr,
        timeout=PIP_TIMEOUT_S,
        check=False,
    ).returncode
    return code == 0


def _build_torch_venv(venv: str) -> None:
    """Builds the venv in a temporary sibling directory and renames it into place once torch imports."""
    parent = os.path.dirname(venv)
    build = tempfile.mkdtemp(prefix=os.path.basename(venv) + ".build.", dir=parent)
    try:
        log(f"building {venv} (untimed; pip installs torch, ~200 MB, and its dependencies)")
        subprocess.run([sys.executable, "-m", "venv", build], check=True, stdin=subprocess.DEVNULL)
        python = _venv_python(build)
        if not _pip_install(python, TORCH_REQUIREMENT):
            log(f"{TORCH_REQUIREMENT} is not available: installing the newest torch pip finds")
            if not _pip_install(python, "torch"):
                raise RuntimeError("pip could not install torch (see its output above)")
        version = probe_torch(python)
        if "+cpu" not in version:
            log(f"torch {version} is not a CPU build (PyPI's wheel, with CUDA libraries)")
        with open(os.path.join(build, TORCH_MARKER), "w") as f:
            json.dump({**_marker(), "torch": version}, f)
        if os.path.lexists(venv):  # stale or half-built: moved aside first, as rename needs an empty target
            stale = tempfile.mkdtemp(prefix=os.path.basename(venv) + ".stale.", dir=parent)
            os.rename(venv, os.path.join(stale, "venv"))
            shutil.rmtree(stale, ignore_errors=True)
        # venvs are not relocatable in general, but `bin/python -m ...` is: its prefix comes from the
        # pyvenv.cfg beside it (only the console scripts' shebangs keep the build path, and none is used).
        os.rename(build, venv)
        log(f"built {venv}: torch {version}")
    finally:
        shutil.rmtree(build, ignore_errors=True)  # gone after the rename; a failed build's leftovers


def ensure_torch_venv(venv: str) -> Torch:
    """The cached torch venv, built first if it is missing, half-built or stale (one builder at a time)."""
    os.makedirs(os.path.dirname(venv), exist_ok=True)
    with open(venv + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second benchmark waits for the first one's build, then uses it
        cached = _cached_torch(venv)
        if cached is None:
            _build_torch_venv(venv)
            cached = _cached_torch(venv)
            if cached is None:
                raise RuntimeError(f"{venv} has no valid {TORCH_MARKER} right after its build")
    return cached


def find_torch(venv: str | None, enabled: bool) -> Torch | None:
    """The torch to compare with: of `--torch-venv` if given, else the cached venv's; None with --no-torch."""
    if not enabled:
        return None
    if venv is not None:
        python = _venv_python(os.path.abspath(venv))
        torch = Torch(python, probe_torch(python))
    else:
        torch = ensure_torch_venv(default_torch_venv())
        torch.version = probe_torch(torch.python)  # untimed: the first torchrun starts with a warm page cache
    wanted = TORCH_REQUIREMENT.split("==", 1)[1].rstrip(".*")
    if not torch.version.startswith(wanted + "."):
        log(f"torch {wanted} was not available: comparing with torch {torch.version}")
    log(f"torchrun: {torch.python} -m torch.distributed.run (torch {torch.version})")
    return torch


# ----------------------------------------------------------------------------------------------------
# The figures; each function measures one run and returns a number.


TRIVIAL_SCRIPT = "import os\nprint('hello from rank', os.environ['RANK'], flush=True)\n"


def trivial_script(cwd: str) -> str:
    """A hello script both launchers run (the simulated job's own start-up is paced like a real one's)."""
    script = os.path.join(cwd, "trivial.py")
    with open(script, "w") as f:
        f.write(TRIVIAL_SCRIPT)
    return script


def first_line_fakerun(cwd: str, python: str | None = None, exe: str | None = None) -> float:
    """The hello script under fakerun --fake-exec (`exe`, by default this venv's); with `python`, its
    workers run that interpreter (as torchrun's run theirs), so that both launchers start the same worker
    processes."""
    exe = exe or shutil.which("fakerun") or os.path.join(os.path.dirname(sys.executable), "fakerun")
    script = [trivial_script(cwd)] if python is None else ["--no-python", python, "-u", trivial_script(cwd)]
    argv = [exe, "--fake-exec", "--standalone", "--nproc-per-node", "8", *script]
    job = Job(argv, cwd)
    try:
        return job.wait_first_line()
    finally:
        job.stop()


# What a copy of this checkout to install leaves out: environments, caches and build leftovers.
NOT_INSTALLED = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")


def install_fakerun(cwd: str) -> str | None:
    """The `fakerun` of this checkout as `pip install` leaves it for a user (untimed): a copy of the source
    installed, not editable, with its dependencies, into a venv in `cwd`; None if pip fails (its output is
    on our stderr). The copy keeps pip's in-tree build out of the checkout."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source, venv = os.path.join(cwd, "fakerun-src"), os.path.join(cwd, "fakerun-venv")
    log(f"pip install of this checkout into {venv} (untimed)")
    shutil.copytree(repo, source, ignore=shutil.ignore_patterns(*NOT_INSTALLED))
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, stdin=subprocess.DEVNULL)
    code = subprocess.run(
        [_venv_python(venv), "-m", "pip", "install", "-q", "--disable-pip-version-check", source],
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr,
        timeout=PIP_TIMEOUT_S,
        check=False,
    ).returncode
    exe = os.path.join(venv, "bin", "fakerun")
    if code != 0 or not os.access(exe, os.X_OK):
        log("pip could not install this checkout: its first line is not measured")
        return None
    return exe


def first_line_torchrun(cwd: str, python: str) -> float:
    """The same hello script under the real torchrun (its workers inherit its stdout, as fakerun's do)."""
    script = trivial_script(cwd)
    argv = [python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "8", script]
    job = Job(argv, cwd)
    try:
        return job.wait_first_line()
    finally:
        job.stop()


def first_line_simulated(cwd: str) -> float:
    """First stdout line of a simulated 8-rank job at the default pace (paced like a real start-up)."""
    job = Job(fakerun_argv(1, "--fake-max-steps", str(LONG_RUN_STEPS)), cwd)
    try:
        return job.wait_first_line()
    finally:
        job.stop()


def launcher_fds_per_rank(job: Job, ranks: int) -> float:
    """The launcher's open file descriptors divided by its (local) ranks."""
    try:
        fds: int = psutil.Process(job.proc.pid).num_fds()
        return fds / ranks
    except psutil.Error:
        job.check_running("the count of descriptors")
        raise


def sample_pss(job: Job, ranks: int, samples: int = 3) -> float:
    """The tree's PSS in MB, mean of `samples` samples 0.2 s apart; raises unless every rank is alive."""
    values: list[int] = []
    for i in range(samples):
        if i:
            time.sleep(0.2)
        procs = job.tree()
        if len(procs) < ranks + 1:
            raise RuntimeError(f"only {len(procs)} processes in the tree of {ranks} ranks")
        values.append(pss_bytes([p.pid for p in procs]))
    return statistics.mean(values) / 2**20


@dataclass
class StartAndPss:
    alive_s: float  # launch until the launcher's N workers all exist
    started_s: float
    pss_mb: float
    processes: int


def children_of(pid: int) -> int:
    """How many children `pid` has now (/proc/PID/task/PID/children: one small read, unlike a /proc scan)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return len(f.read().split())
    except OSError:
        return 0


def wait_children(job: Job, n: int, timeout: float = START_TIMEOUT_S) -> float:
    """Seconds from the job's launch until its process has `n` children (polled every ALIVE_POLL_S)."""
    deadline = time.monotonic() + timeout
    while children_of(job.proc.pid) < n:
        if job.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{n} children never existed:\n{job.stderr_tail()}")
        time.sleep(ALIVE_POLL_S)
    return time.monotonic() - job.t0


def start_and_pss(nnodes: int, cwd: str) -> StartAndPss:
    """Time until every rank printed `worker started`, then the tree's PSS sampled while all are alive.

    The simulated start-up (importing torch, the CUDA context) is paced like a real node's, seconds at the
    default pace: at START_SPEED it takes microseconds, so the figure is the launcher's own cost.
    """
    ranks = nnodes * RANKS_PER_NODE
    job = long_job(nnodes, cwd, "--fake-speed", START_SPEED)
    try:
        alive = wait_children(job, ranks)
        started = job.wait_all_started()
        time.sleep(0.3)
        pss = sample_pss(job, ranks)
        return StartAndPss(alive, started, pss, len(job.tree()))
    finally:
        job.stop()


@dataclass
class Training:
    """One run of a job measured once training runs."""

    first_line_s: float  # launch until the job's first stdout line
    to_training_s: float  # launch until every rank finished step 1 (and rank 0 printed `train`)
    cpu_pct: float  # CPU seconds per wall second x 100 of the whole tree over the window
    pss_mb: float  # the tree's PSS right after the window
    fds_per_rank: float  # the launcher's open descriptors per rank, right after the window


def training_run(nnodes: int, cwd: str, window_s: float, *extra: str) -> Training:
    """CPU of the launcher and all workers over `window_s` of training, then its PSS and descriptors."""
    ranks = nnodes * RANKS_PER_NODE
    job = long_job(nnodes, cwd, *extra)
    try:
        to_training = job.wait_training()
        procs = job.tree()
        if len(procs) < ranks + 1:
            raise RuntimeError(f"only {len(procs)} processes in the tree of {ranks} ranks")
        pids = [p.pid for p in procs]
        before = cpu_seconds(pids)
        t0 = time.monotonic()
        time.sleep(window_s)
        after = cpu_seconds(pids)
        wall = time.monotonic() - t0
        job.check_running("the CPU window")
        if len(after) < len(before):
            raise RuntimeError(f"{len(before) - len(after)} processes of the job ended during the CPU window")
        used = sum(after[pid] - before[pid] for pid in before)
        pss = sample_pss(job, ranks)
        assert job.first_line_at is not None  # set before training_at, on the first line
        first_line = job.first_line_at - job.t0
        return Training(first_line, to_training, 100.0 * used / wall, pss, launcher_fds_per_rank(job, ranks))
    finally:
        job.stop()


class MetricsTail:
    """Reads the step records a running job appends to its --fake-metrics file (line-buffered JSON lines)."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._rest = b""

    def step_records(self) -> int:
        """Complete `"event": "step"` lines written since the previous call."""
        data = self._rest + self._file.read()
        *lines, self._rest = data.split(b"\n")
        return sum(1 for line in lines if b'"event": "step"' in line)

    def close(self) -> None:
        self._file.close()


@dataclass
class Rounds:
    """One run of a barrier-throughput measurement."""

    rounds_per_s: float
    pss_mb: float | None = None  # fakerun's: the tree's PSS after the window
    fds_per_rank: float | None = None  # fakerun's: the launcher's open descriptors per rank


def fakerun_rounds(nnodes: int, cwd: str, window_s: float) -> Rounds:
    """Step rounds/s of the job's coordinator at a pace where nothing sleeps: step records per second."""
    ranks = nnodes * RANKS_PER_NODE
    metrics = os.path.join(cwd, f"metrics.{time.monotonic_ns()}.jsonl")
    job = long_job(nnodes, cwd, "--fake-speed", ROUNDS_SPEED, "--fake-metrics", metrics)
    tail: MetricsTail | None = None
    try:
        job.wait_training()
        tail = MetricsTail(metrics)
        tail.step_records()  # everything up to now is before the window
        t0 = time.monotonic()
        time.sleep(window_s)
        records = tail.step_records()
        wall = time.monotonic() - t0
        job.check_running("the rounds window")
        pss = sample_pss(job, ranks)
        return Rounds(records / wall, pss, launcher_fds_per_rank(job, ranks))
    finally:
        if tail is not None:
            tail.close()
        job.stop()
        with contextlib.suppress(OSError):
            os.unlink(metrics)


# The baseline: the same barrier shape in a few lines of pure Python, run by this script in a child process
# of its own (`--baseline-barrier N`), which forks N ranks before it starts any thread, as the launcher does.

BASELINE_TELEMETRY: list[object] = [97, 61, 71, 655, 1980, 43521, "train"]


def _baseline_rank(sock: socket.socket, rank: int) -> None:
    """One baseline rank: report a step as one JSON line, wait for the answer line, repeat until EOF."""
    buffer = b""
    step = 0
    while True:
        report = {"k": "step", "s": step, "c": 0.7 + rank * 1e-6, "tel": BASELINE_TELEMETRY}
        sock.sendall(json.dumps(report, separators=(",", ":")).encode() + b"\n")
        while b"\n" not in buffer:
            data = sock.recv(65536)
            if not data:
                return
            buffer += data
        line, buffer = buffer.split(b"\n", 1)
        json.loads(line)
        step += 1


def baseline_barrier(nprocs: int, window_s: float, warmup_s: float = 0.5) -> float:
    """Barrier rounds/s of N forked processes, each with a socketpair to this one, over a selector.

    Each round every rank sends one small newline-terminated JSON report; when all have arrived (each
    parsed), every rank gets the same small JSON answer. Rounds are counted over `window_s` after
    `warmup_s` of rounds.
    """
    parent = os.getpid()
    selector = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    pids: list[int] = []
    try:
        for rank in range(nprocs):
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 1
                try:
                    _die_with_parent()
                    if os.getppid() == parent:
                        for s in [*socks, mine]:
                            s.close()
                        _baseline_rank(theirs, rank)
                        code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
            theirs.close()
            mine.setblocking(False)
            selector.register(mine.fileno(), selectors.EVENT_READ, rank)
            socks.append(mine)
        buffers = [b""] * nprocs
        arrived = 0
        step = 0
        begin = time.monotonic()
        counting_from: float | None = None
        first_counted = 0
        while True:
            for key, _ in selector.select(timeout=30):
                rank = key.data
                data = socks[rank].recv(65536)
                if not data:
                    raise RuntimeError(f"baseline rank {rank} closed its socket")
                *lines, buffers[rank] = (buffers[rank] + data).split(b"\n")
                for line in lines:
                    json.loads(line)
                    arrived += 1
            if arrived < nprocs:
                continue
            arrived = 0
            answer = {"k": "step", "s": step, "rel": time.monotonic(), "stop": False}
            payload = json.dumps(answer, separators=(",", ":")).encode() + b"\n"
            for s in socks:
                s.sendall(payload)
            step += 1
            now = time.monotonic()
            if counting_from is None:
                if now - begin >= warmup_s:
                    counting_from, first_counted = now, step
            elif now - counting_from >= window_s:
                return (step - first_counted) / (now - counting_from)
    finally:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
        for s in socks:
            s.close()
        selector.close()


def baseline_rounds(nprocs: int, cwd: str, window_s: float) -> Rounds:
    """Runs the baseline barrier in a child process of its own (tagged and cleaned up like the jobs)."""
    answer = bench_child(cwd, "--baseline-barrier", str(nprocs), "--window", str(window_s))
    return Rounds(answer["rounds_per_s"])


def bench_child(cwd: str, *args: str) -> dict[str, float]:
    """Runs this script with the internal option `args` in a child process (tagged and cleaned up like the
    jobs); returns the JSON object it prints last."""
    job = Job([sys.executable, os.path.abspath(__file__), *args], cwd)
    try:
        code = job.proc.wait(timeout=START_TIMEOUT_S)
        job.stop()  # joins the reader: last_line is the child's answer
        if code != 0:
            raise RuntimeError(f"bench child {' '.join(args)} exited {code}:\n{job.stderr_tail()}")
        answer: dict[str, float] = json.loads(job.last_line)
        return answer
    finally:
        job.stop(signal.SIGKILL)


# The baseline of the start-up: a Python that imported what the launcher preloads forks N children that
# sleep, as the launcher's fork loop does, with nothing else (no pipes, no workers' own start). Run by this
# script in a child process of its own (`--baseline-fork N`).


def fork_sleepers(nprocs: int) -> None:
    """Forks `nprocs` children that sleep until killed, from a Python preloaded like the launcher (the same
    fakerun.main.preload_simulation() and gc.freeze() before its fork loop), then waits to be killed; the
    children die with it (parent-death signal)."""
    import fakerun.main

    fakerun.main.preload_simulation()
    gc.freeze()
    for _ in range(nprocs):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                _die_with_parent()
                while True:
                    signal.pause()
            finally:
                os._exit(1)
    while True:
        signal.pause()


def baseline_fork(nprocs: int, cwd: str) -> float:
    """Seconds from launching fork_sleepers(nprocs) in a process of its own until its N children exist,
    measured as fakerun's "all ranks alive" is."""
    job = Job([sys.executable, os.path.abspath(__file__), "--baseline-fork", str(nprocs)], cwd)
    try:
        return wait_children(job, nprocs)
    finally:
        job.stop(signal.SIGKILL)


# ----------------------------------------------------------------------------------------------------
# The largest job: run to its end while its tree's peak PSS is sampled.


class PeakPss:
    """A thread sampling a job's tree PSS every PSS_PERIOD_S until stopped; keeps the peak."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.peak_bytes = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            procs = self.job.tree()  # also notes every process for the cleanup
            pss = pss_bytes([p.pid for p in procs])
            if pss > self.peak_bytes:
                self.peak_bytes, self.peak_processes = pss, len(procs)
            self._stop.wait(PSS_PERIOD_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Fleet:
    """How a job run to its end went: exit code (None: killed at the timeout), wall time, peak PSS."""

    code: int | None
    wall_s: float
    peak_pss_gb: float
    peak_processes: int
    refusal: str | None  # fakerun's one-line refusal to start the job, if that is why it exited


# fakerun's preflight refusing a job that cannot fit on this host (memory or open files).
REFUSAL = re.compile(rb"^\S+: error: cannot start \d+ ranks: .*$", re.MULTILINE)


def refusal_line(stderr: bytes) -> str | None:
    """The launcher's one-line refusal to start a job (preflight), if its stderr holds one."""
    match = REFUSAL.search(stderr)
    return None if match is None else match.group(0).decode(errors="replace").rstrip()


def fleet_run(nnodes: int, cwd: str) -> Fleet:
    """Runs nnodes x 8 ranks to FLEET_STEPS at FLEET_SPEED, sampling the tree's PSS until it exits."""
    argv = fakerun_argv(
        nnodes, "--fake-max-steps", str(FLEET_STEPS), "--fake-speed", FLEET_SPEED, "--fake-log-format", "json"
    )
    job = Job(argv, cwd)  # no expected_ranks: the reader only drains, parsing nothing
    sampler = PeakPss(job)
    code: int | None = None
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = job.proc.wait(timeout=FLEET_TIMEOUT_S)
        wall = time.monotonic() - job.t0
    finally:
        sampler.stop()
        if job.proc.poll() is None:  # timed out (or interrupted): its workers go with it, not at the end
            REGISTRY.cleanup()
        job.stop(signal.SIGKILL)
    with open(job.stderr_path, "rb") as f:
        refusal = refusal_line(f.read()) if code == 1 else None
    if code != 0 and refusal is None:
        log(f"{nnodes * RANKS_PER_NODE}-rank job: exit code {code}; stderr ends:\n{job.stderr_tail()}")
    return Fleet(code, wall, sampler.peak_bytes / 2**30, sampler.peak_processes, refusal)


def teardown(nnodes: int, cwd: str, sig: int) -> float:
    """Seconds from `sig` to the launcher until no process of the job remains (zombies count as gone).

    The signal arrives while the job trains at --fake-speed 20 (reached in about a second, where the default
    pace takes ~18 s of simulated start-up).
    """
    job = long_job(nnodes, cwd, "--fake-speed", "20")
    try:
        job.wait_training()
        time.sleep(0.3)
        procs = job.tree()
        t0 = time.monotonic()
        job.proc.send_signal(sig)
        deadline = t0 + 30
        remaining = procs
        while remaining and time.monotonic() < deadline:
            remaining = [p for p in remaining if _alive(p)]
            if remaining:
                time.sleep(0.002)
        elapsed = time.monotonic() - t0
        if remaining:
            raise RuntimeError(f"{len(remaining)} processes survived {signal.Signals(sig).name} for 30 s")
        return elapsed
    finally:
        job.stop(signal.SIGKILL)


def completes(nnodes: int, cwd: str, steps: int, speed: str = "10") -> float:
    """Runs a job to --fake-max-steps; returns its wall time, raising unless it exits 0."""
    argv = fakerun_argv(
        nnodes, "--fake-max-steps", str(steps), "--fake-speed", speed, "--fake-log-format", "json"
    )
    job = Job(argv, cwd, expected_ranks=nnodes * RANKS_PER_NODE)
    code = job.proc.wait(timeout=START_TIMEOUT_S)
    elapsed = time.monotonic() - job.t0
    job.stop()
    if code != 0:
        raise RuntimeError(f"{nnodes * RANKS_PER_NODE}-rank job exited {code}:\n{job.stderr_tail()}")
    return elapsed


def warm_up(cwd: str) -> None:
    """Untimed: the imports once (writing the .pyc files a user's install has), then one small job."""
    env = child_env(cwd)
    subprocess.run(
        [sys.executable, "-c", "import fakerun.main, fakerun.worker.main"],
        env=env,
        cwd=cwd,
        check=True,
        stdin=subprocess.DEVNULL,
        timeout=START_TIMEOUT_S,
    )
    completes(1, cwd, 1, speed="1000")


def describe_environment() -> None:
    """What the figures depend on, on stderr: code version, machine, load."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return out.stdout.rstrip()

    dirty = [line[3:] for line in git("status", "--porcelain").splitlines() if line.strip()]
    print(f"  commit {git('rev-parse', '--short', 'HEAD')}; uncommitted: {dirty or 'none'}", file=sys.stderr)
    print(
        f"  Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        file=sys.stderr,
        flush=True,
    )


# ----------------------------------------------------------------------------------------------------
# Repetition, statistics and the table.


@dataclass
class Row:
    figure: str
    values: list[float]
    unit: str
    target: float | None = None  # the figure must be <= target (>= with at_least)
    target_text: str = ""
    note: str = ""
    at_least: bool = False

    def cells(self) -> list[str]:
        if not self.values:
            return [self.figure, self.note or "n/a", "", str(0), self.target_text or "", ""]
        med = statistics.median(self.values)
        spread = f"{_fmt(min(self.values), self.unit)} – {_fmt(max(self.values), self.unit)}"
        verdict = ""
        if self.target is not None:
            met = med >= self.target if self.at_least else med <= self.target
            verdict = "met" if met else "**not met**"
        figure = f"{self.figure} ({self.note})" if self.note else self.figure
        return [figure, _fmt(med, self.unit), spread, str(len(self.values)), self.target_text, verdict]


# How a value of each unit prints (rounds/s: grouped digits from 100 up, one decimal below).
_FORMATS = {
    "s": "{:.3f} s",
    "MB": "{:.0f} MB",
    "MB/rank": "{:.2f} MB",
    "GB": "{:.2f} GB",
    "fds/rank": "{:.2f}",
    "exit": "exit {:.0f}",
    "%": "{:.1f}%",
    "x": "{:.1f}×",
    "ratio": "{:.2f}×",
}


def _fmt(value: float, unit: str) -> str:
    if unit == "rounds/s":
        return f"{value:,.0f}/s" if value >= 100 else f"{value:.1f}/s"
    if unit in _FORMATS:
        return _FORMATS[unit].format(value)
    return f"{value:g} {unit}"


def repeat(runs: int, label: str, fn: Callable[[], float]) -> list[float]:
    values: list[float] = []
    for i in range(runs):
        value = fn()
        values.append(value)
        log(f"{label} run {i + 1}/{runs}: {value:.4g}")
    return values


def log(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def first_line_rows(runs: int, cwd: str, torch: Torch | None, installed: str | None) -> list[Row]:
    """fakerun's first line of the hello script (from this venv and, with `installed`, from a pip install)
    and, interleaved run by run, torchrun's and the ratios."""
    fake: list[float] = []
    pip: list[float] = []
    real: list[float] = []
    python = torch.python if torch is not None else None
    if installed is not None:
        first_line_fakerun(cwd, python, installed)  # untimed, as warm_up() runs this venv's once
    for i in range(runs):  # interleaved, so that the machine's noise hits both alike
        fake.append(first_line_fakerun(cwd, python))
        text = f"first line run {i + 1}/{runs}: fakerun {fake[-1]:.3f} s"
        if installed is not None:
            pip.append(first_line_fakerun(cwd, python, installed))
            text += f", pip-installed fakerun {pip[-1]:.3f} s"
        if torch is not None:
            real.append(first_line_torchrun(cwd, torch.python))
            text += f", torchrun {real[-1]:.3f} s ({real[-1] / fake[-1]:.1f}x)"
        log(text)
    # With torch, both launchers' workers run the torch venv's Python (fakerun through --no-python): the
    # figure compares the launchers, not two interpreters' start-up. This checkout's venv is the README's
    # editable install, whose import hook every Python start in it loads (torch's venv has none); the pip
    # install is the launcher as a user's `pip install` leaves it, torch's own case.
    workers = "" if torch is None else ", workers on the torch venv's Python"
    rows = [
        Row(
            f"first line of a --fake-exec hello script, 8 ranks (fakerun, editable install{workers})",
            fake,
            "s",
        )
    ]
    if installed is not None:
        rows.append(Row(f"... the same, fakerun installed by pip install{workers}", pip, "s"))
    if torch is None:
        rows.append(
            Row("first line of the same script, 8 ranks (torchrun)", [], "s", note="n/a (--no-torch)")
        )
        return rows
    rows.append(
        Row(
            f"first line of the same script, 8 ranks (torchrun --standalone, torch {torch.version})",
            real,
            "s",
        )
    )
    # PRODUCT.md §8: at least 10x sooner than torchrun running the same script, measured in the same run.
    ratio = [r / f for r, f in zip(real, fake, strict=True)]
    rows.append(
        Row(
            "torchrun / fakerun first line (editable install)",
            ratio,
            "x",
            10.0,
            "≥ 10× sooner",
            at_least=True,
        )
    )
    if installed is not None:
        ratio = [r / f for r, f in zip(real, pip, strict=True)]
        rows.append(
            Row(
                "torchrun / fakerun first line (pip install)", ratio, "x", 10.0, "≥ 10× sooner", at_least=True
            )
        )
    return rows


# What a figure of 1024 or 4096 ranks reads under --quick.
FULL_ONLY = "n/a (full run only)"


def simulated_first_line_row(job: str, values: list[float]) -> Row:
    """The simulated job's own paced start-up, reported apart from the launcher's overhead (no target)."""
    label = f"first line of the simulated job at speed 1, {job} (realism: follows real start-up times)"
    return Row(label, values, "s")


def start_rows(runs: int, quick: bool, cwd: str) -> list[Row]:
    """All ranks started and the tree's PSS by size; the largest interleaved with the fork baseline."""
    sizes = [1, 8] if quick else [1, 8, 32, 128]
    start_targets = {8: (0.5, "≤ 0.5 s"), 128: (5.0, "≤ 5 s")}
    pss_targets = {8: (300.0, "≤ 300 MB")}
    started: list[Row] = []
    pss_rows: list[Row] = []
    for nnodes in sizes:
        ranks = nnodes * RANKS_PER_NODE
        results: list[StartAndPss] = []
        forks: list[float] = []
        for i in range(runs):  # the fork baseline interleaved, so that the machine's noise hits both alike
            r = start_and_pss(nnodes, cwd)
            results.append(r)
            text = (
                f"{ranks} ranks run {i + 1}/{runs}: alive {r.alive_s:.3f} s, started {r.started_s:.3f} s, "
                f"PSS {r.pss_mb:.0f} MB over {r.processes} processes"
            )
            if nnodes == sizes[-1]:
                forks.append(baseline_fork(ranks, cwd))
                text += f"; baseline alive {forks[-1]:.3f} s ({r.alive_s / forks[-1]:.1f}x)"
            log(text)
        st, st_text = start_targets.get(nnodes, (None, ""))
        alive = [r.alive_s for r in results]
        started.append(Row(f"all ranks alive, {ranks} ranks ({nnodes}×8)", alive, "s"))
        values = [r.started_s for r in results]
        started.append(
            Row(f"all ranks started (printed their first line), {ranks} ranks", values, "s", st, st_text)
        )
        if forks:
            started.append(
                Row(
                    f"baseline: a Python preloaded like the launcher, all {ranks} sleeping children alive",
                    forks,
                    "s",
                )
            )
            started.append(
                Row(
                    f"all ranks alive / baseline, {ranks} ranks",
                    [v / f for v, f in zip(alive, forks, strict=True)],
                    "ratio",
                    2.0,
                    "≤ 2×",
                )
            )
        pt, pt_text = pss_targets.get(nnodes, (None, ""))
        pss_rows.append(
            Row(
                f"PSS of the job tree at start-up, {ranks} ranks",
                [r.pss_mb for r in results],
                "MB",
                pt,
                pt_text,
            )
        )
    return started + pss_rows


def exit_status(code: int) -> int:
    """A Popen return code as a shell reports it: killed by signal N reads 128 + N (never 0)."""
    return code if code >= 0 else 128 - code


def completion_rows(quick: bool, cwd: str) -> list[Row]:
    """1024 and 4096 ranks run to their last step (full run only, one run each)."""
    ranks = FLEET_NODES * RANKS_PER_NODE
    label = f"{ranks} ranks ({FLEET_NODES}×8) run to --fake-max-steps {FLEET_STEPS}"
    fleet_target = "exit 0, PSS ≤ 12 GB"
    if quick:
        return [Row(label, [], "", target_text=fleet_target, note=FULL_ONLY)]
    done = repeat(1, "1024 ranks to --fake-max-steps 3", lambda: completes(128, cwd, 3))
    rows = [Row("1024 ranks run to --fake-max-steps 3 at --fake-speed 10, exit 0 (wall)", done, "s")]
    log(f"{ranks} ranks to --fake-max-steps {FLEET_STEPS} at --fake-speed {FLEET_SPEED}, PSS sampled")
    fleet = fleet_run(FLEET_NODES, cwd)
    log(
        f"{ranks} ranks: exit code {fleet.code}, wall {fleet.wall_s:.1f} s, "
        f"peak PSS {fleet.peak_pss_gb:.2f} GB over {fleet.peak_processes} processes"
    )
    if fleet.refusal is not None:
        return [*rows, Row(label, [], "", target_text=fleet_target, note=f"refused: `{fleet.refusal}`")]
    if fleet.code is None:
        rows.append(Row(label, [], "", 0.0, "exits 0", note=f"killed: no exit in {FLEET_TIMEOUT_S:.0f} s"))
    else:
        rows.append(
            Row(f"{label} at --fake-speed {FLEET_SPEED}", [exit_status(fleet.code)], "exit", 0.0, "exits 0")
        )
    rows.append(Row(f"{label}: wall time", [fleet.wall_s], "s"))
    peak = [fleet.peak_pss_gb] if fleet.peak_processes else []
    rows.append(
        Row(
            f"peak PSS of the job tree, {ranks} ranks (sampled every {PSS_PERIOD_S:g} s)",
            peak,
            "GB",
            12.0,
            "≤ 12 GB",
            note=f"at {fleet.peak_processes} processes",
        )
    )
    return rows


def training_rows(runs: int, quick: bool, cwd: str, window: float) -> list[Row]:
    """CPU of a 64-rank job while training at two paces; at the default pace also PSS and descriptors."""
    nnodes = 8
    ranks = nnodes * RANKS_PER_NODE
    rows: list[Row] = []
    paces: list[tuple[str, tuple[str, ...]]] = [
        ("default pace", ()),
        ("--fake-speed 20", ("--fake-speed", "20")),
    ]
    for pace, extra in paces:
        samples: list[Training] = []
        for i in range(runs):
            t = training_run(nnodes, cwd, window, *extra)
            samples.append(t)
            log(
                f"{ranks} ranks {pace} run {i + 1}/{runs}: first line after {t.first_line_s:.2f} s, "
                f"training after {t.to_training_s:.2f} s, "
                f"CPU {t.cpu_pct:.2f}%, PSS {t.pss_mb:.0f} MB, launcher fds/rank {t.fds_per_rank:.2f}"
            )
        cpu_target = (3.0, "≤ 3% of one core") if not extra else (None, "")
        rows.append(
            Row(
                f"CPU of the tree while training, {ranks} ranks, {pace} ({window:g} s window)",
                [t.cpu_pct for t in samples],
                "%",
                *cpu_target,
            )
        )
        if not extra and quick:
            first = [t.first_line_s for t in samples]
            rows.append(simulated_first_line_row(f"{ranks} ranks, of the default-pace training run", first))
        if not extra:
            pss = [t.pss_mb for t in samples]
            rows += [
                Row(
                    f"PSS of the job tree while training, {ranks} ranks, default pace",
                    pss,
                    "MB",
                    300.0,
                    "≤ 300 MB",
                ),
                Row(
                    f"PSS per rank while training, {ranks} ranks, default pace (tree / ranks)",
                    [v / ranks for v in pss],
                    "MB/rank",
                ),
                Row(
                    f"launcher's open descriptors per rank while training, {ranks} ranks, default pace",
                    [t.fds_per_rank for t in samples],
                    "fds/rank",
                    2.0,
                    "≤ 2",
                ),
            ]
    return rows


# Same-page merging (fakerun/launcher/pagemerge.py): measured where the machine runs KSM, which only root
# turns on (`echo 1 > /sys/kernel/mm/ksm/run`); the benchmark never changes the kernel's settings.
KSM = "/sys/kernel/mm/ksm"
MERGE_NODES = 128  # 1024 ranks, as the PSS-per-rank target
MERGE_SAMPLE_S = 15.0
# How long the job is followed once training runs. Merging 1024 ranks' pages takes minutes, and the job's
# evaluations and checkpoints touch pages that were merged (each write copies the page again), so the
# figure is the samples of the second half: what the job holds once merging has caught up with it.
MERGE_FOLLOW_S = 900.0


def _ksm_setting(name: str) -> str:
    try:
        with open(os.path.join(KSM, name), encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _ksmd_seconds() -> float:
    """CPU seconds of the kernel's ksmd thread so far (0 without one)."""
    for p in psutil.process_iter(["name"]):
        if p.info["name"] == "ksmd":
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                return float(t.user + t.system)
    return 0.0


def merge_rows(cwd: str) -> list[Row]:
    """PSS per rank of a 1024-rank job at the default pace as training begins, then sampled for
    MERGE_FOLLOW_S with the kernel merging the ranks' identical pages (the second half's samples), and
    ksmd's CPU meanwhile; n/a where KSM does not run."""
    ranks = MERGE_NODES * RANKS_PER_NODE
    label = f"PSS per rank while training, {ranks} ranks, default pace, kernel same-page merging on"
    if _ksm_setting("run") != "1":
        return [
            Row(label, [], "MB/rank", 2.5, "≤ 2.5 MB", note=f"n/a: KSM does not run ({KSM}/run is not 1)")
        ]
    scan = f"ksmd scanning {_ksm_setting('pages_to_scan')} pages every {_ksm_setting('sleep_millisecs')} ms"
    job = long_job(MERGE_NODES, cwd)
    try:
        job.wait_training()
        first = sample_pss(job, ranks) / ranks
        ksmd0, t0 = _ksmd_seconds(), time.monotonic()
        late: list[float] = []
        while time.monotonic() - t0 < MERGE_FOLLOW_S:
            time.sleep(MERGE_SAMPLE_S)
            job.check_running("the merging window")
            pss = sample_pss(job, ranks) / ranks
            at = time.monotonic() - t0
            if at >= MERGE_FOLLOW_S / 2:
                late.append(pss)
            log(f"page merging: {at:.0f} s into training, PSS {pss:.2f} MB/rank")
        ksmd_pct = 100.0 * (_ksmd_seconds() - ksmd0) / (time.monotonic() - t0)
    finally:
        job.stop()
    half = f"{MERGE_FOLLOW_S / 2:g}-{MERGE_FOLLOW_S:g} s into training, every {MERGE_SAMPLE_S:g} s"
    return [
        Row(f"{label}: as training begins", [first], "MB/rank"),
        Row(f"{label}: {half} ({scan})", late, "MB/rank", 2.5, "≤ 2.5 MB"),
        Row(f"CPU of ksmd over those {MERGE_FOLLOW_S:g} s", [ksmd_pct], "%"),
    ]


def rounds_rows(runs: int, quick: bool, cwd: str, window: float) -> list[Row]:
    """Coordinator rounds/s vs the bare barrier, interleaved; at 1024 ranks PSS and descriptors per rank."""
    rows: list[Row] = []
    for nnodes in [8] if quick else [8, 128]:
        ranks = nnodes * RANKS_PER_NODE
        fake: list[Rounds] = []
        base: list[Rounds] = []
        for i in range(runs):  # interleaved, so that the machine's noise hits both alike
            fake.append(fakerun_rounds(nnodes, cwd, window))
            base.append(baseline_rounds(ranks, cwd, window))
            log(
                f"rounds {ranks} ranks run {i + 1}/{runs}: fakerun {fake[-1].rounds_per_s:.1f}/s "
                f"(PSS {fake[-1].pss_mb or 0:.0f} MB, launcher fds/rank {fake[-1].fds_per_rank or 0:.2f}), "
                f"baseline {base[-1].rounds_per_s:.1f}/s"
            )
        rows += [
            Row(
                f"coordinator step rounds/s, {ranks} ranks (speed {ROUNDS_SPEED}, {window:g} s window)",
                [r.rounds_per_s for r in fake],
                "rounds/s",
            ),
            Row(
                f"baseline barrier rounds/s, {ranks} forked processes (pure Python, socketpair + selector)",
                [r.rounds_per_s for r in base],
                "rounds/s",
            ),
            Row(
                f"fakerun / baseline rounds, {ranks} ranks",
                [f.rounds_per_s / b.rounds_per_s for f, b in zip(fake, base, strict=True)],
                "ratio",
                0.5,
                "≥ 0.5×",
                at_least=True,
            ),
        ]
        if nnodes == 128:
            pss = [r.pss_mb for r in fake if r.pss_mb is not None]
            fds = [r.fds_per_rank for r in fake if r.fds_per_rank is not None]
            speed = f"--fake-speed {ROUNDS_SPEED}"
            rows += [
                Row(f"PSS of the job tree while training, {ranks} ranks, {speed}", pss, "MB"),
                Row(
                    f"PSS per rank while training, {ranks} ranks (tree / ranks)",
                    [v / ranks for v in pss],
                    "MB/rank",
                    2.5,
                    "≤ 2.5 MB",
                ),
                Row(
                    f"launcher's open descriptors per rank while training, {ranks} ranks",
                    fds,
                    "fds/rank",
                    2.0,
                    "≤ 2",
                ),
            ]
    if quick:
        rows += [
            Row("coordinator step rounds/s, 1024 ranks", [], "", 0.5, "≥ 0.5×", note=FULL_ONLY),
            Row("PSS per rank while training, 1024 ranks", [], "", 2.5, "≤ 2.5 MB", note=FULL_ONLY),
            Row(
                "launcher's open descriptors per rank while training, 1024 ranks",
                [],
                "",
                2.0,
                "≤ 2",
                note=FULL_ONLY,
            ),
        ]
    return rows


def teardown_rows(runs: int, quick: bool, cwd: str) -> list[Row]:
    """SIGTERM and SIGKILL to the launcher until every process is gone, 64 ranks and (full run) 1024."""
    rows: list[Row] = []
    for nnodes in [8] if quick else [8, 128]:
        ranks = nnodes * RANKS_PER_NODE
        for sig in (signal.SIGTERM, signal.SIGKILL):
            # 1 s for each, but a SIGTERM of 64 ranks within half a second.
            target, text = (0.5, "≤ 0.5 s") if (nnodes, sig) == (8, signal.SIGTERM) else (1.0, "≤ 1 s")
            values = repeat(
                runs, f"{sig.name} teardown {ranks}", functools.partial(teardown, nnodes, cwd, sig)
            )
            rows.append(
                Row(
                    f"{sig.name} launcher → all processes gone, {ranks} ranks training",
                    values,
                    "s",
                    target,
                    text,
                )
            )
    if quick:
        rows.append(
            Row(
                "SIGTERM / SIGKILL launcher → all processes gone, 1024 ranks",
                [],
                "",
                1.0,
                "≤ 1 s",
                note=FULL_ONLY,
            )
        )
    return rows


def measure(runs: int, quick: bool, cwd: str, torch: Torch | None, only: str | None) -> list[Row]:
    """Every figure, in turn (--only: those figures alone)."""
    window = 2.0 if quick else 5.0
    if only == "page-merging":
        return merge_rows(cwd)
    # --quick (CI) leaves out the pip install: building it takes longer than the quick run itself.
    installed = None if quick else install_fakerun(cwd)
    rows = first_line_rows(runs, cwd, torch, installed)
    if only == "first-line":
        return rows
    if not quick:  # --quick takes it from its default-pace training run (a job of its own takes 5-40 s)
        values = repeat(runs, "simulated first line, default pace", lambda: first_line_simulated(cwd))
        rows.append(simulated_first_line_row(f"{RANKS_PER_NODE} ranks", values))
    rows += start_rows(runs, quick, cwd)
    rows += completion_rows(quick, cwd)
    rows += training_rows(runs, quick, cwd, window)
    rows += rounds_rows(runs, quick, cwd, window)
    rows += teardown_rows(runs, quick, cwd)
    if not quick:
        rows += merge_rows(cwd)
    return rows


def render(rows: Sequence[Row]) -> str:
    header = ["figure", "median", "min – max", "runs", "target (PRODUCT.md §8)", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Turns SIGTERM/SIGHUP into KeyboardInterrupt so that the cleanup in `finally` always runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (default: 5)")
    parser.add_argument("--quick", action="store_true", help="one run per figure, 8 and 64 ranks only (CI)")
    parser.add_argument(
        "--only",
        choices=["first-line", "page-merging"],
        help="measure only these figures (first-line: fakerun and torchrun; page-merging: PSS with KSM on)",
    )
    parser.add_argument(
        "--torch-venv",
        metavar="PATH",
        help="a virtual environment with torch to take torchrun from (default: the benchmark's own, cached "
        "in $XDG_CACHE_HOME/fakerun-bench/torch-venv and built there if missing or stale)",
    )
    parser.add_argument("--no-torch", action="store_true", help="skip torchrun (no ratio for the first line)")
    # Internal: the baseline barrier runs in a child process of the benchmark (see baseline_rounds).
    parser.add_argument("--baseline-barrier", type=int, metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--window", type=float, default=5.0, help=argparse.SUPPRESS)
    # Internal: the baseline of the start-up runs in a child process of the benchmark (see baseline_fork).
    parser.add_argument("--baseline-fork", type=int, metavar="N", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_barrier is not None:
        rate = baseline_barrier(args.baseline_barrier, args.window)
        print(json.dumps({"rounds_per_s": rate}), flush=True)
        return 0
    if args.baseline_fork is not None:
        fork_sleepers(args.baseline_fork)
        return 0
    if args.no_torch and args.torch_venv is not None:
        parser.error("--torch-venv and --no-torch exclude each other")
    if args.torch_venv is not None and not os.access(_venv_python(args.torch_venv), os.X_OK):
        parser.error(f"--torch-venv {args.torch_venv}: no {_venv_python(args.torch_venv)}")
    runs = 1 if args.quick else max(1, args.runs)
    with signals_raise(), tempfile.TemporaryDirectory(prefix="fakerun-bench.") as cwd:
        BENCH_DIRS.append(os.path.realpath(cwd))
        try:
            # Before the clock starts: building the venv takes minutes once, then checking it a second or two.
            t0 = time.monotonic()
            torch = find_torch(args.torch_venv, not args.no_torch)
            started = time.monotonic()
            if torch is not None:
                log(f"torch venv ready in {started - t0:.1f} s (not part of the benchmark time)")
            describe_environment()
            warm_up(cwd)
            rows = measure(runs, args.quick, cwd, torch, args.only)
        except KeyboardInterrupt:
            print("interrupted; cleaning up", file=sys.stderr)
            return 130
        finally:
            REGISTRY.cleanup()
        log(f"total benchmark time {time.monotonic() - started:.0f} s")
        describe_environment()
        for problem in PROBLEMS:
            log(f"a job printed a traceback: {problem}")
        log(f"jobs with a traceback through fakerun's code on stderr: {len(PROBLEMS)}")
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
