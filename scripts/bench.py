"""Benchmarks of fakerun against the service levels of PRODUCT.md section 8; prints a Markdown table.

Usage: python scripts/bench.py [--runs N] [--quick]

Every figure is measured over several runs (median and min-max). Every process the benchmark starts is
killed at the end, on success, on an exception and on Ctrl-C/SIGTERM. Standard library plus psutil only.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import importlib
import json
import os
import shutil
import signal
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


def _sweep_tagged() -> None:
    """SIGKILLs any process of ours whose environment carries this benchmark's tag."""
    for p in psutil.process_iter():
        if p.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if p.environ().get(TAG_NAME) == TAG:
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


class Job:
    """A launched command whose stdout is drained by a thread recording first-line and rank-start times."""

    def __init__(self, argv: Sequence[str], cwd: str, expected_ranks: int | None = None) -> None:
        self.expected_ranks = expected_ranks
        self.first_line_at: float | None = None
        self.all_started_at: float | None = None
        self.ranks_started: set[int] = set()
        self.first_line = threading.Event()
        self.all_started = threading.Event()
        self.stderr_path = os.path.join(cwd, f"stderr.{time.monotonic_ns()}")
        with open(self.stderr_path, "wb") as err:
            self.t0 = time.monotonic()
            self.proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                # TMPDIR inside the bench's own directory: a SIGKILLed launcher cannot remove its temp dir.
                env={**os.environ, TAG_NAME: TAG, "TMPDIR": cwd},
                preexec_fn=_die_with_parent,
            )
        REGISTRY.launchers.append(self.proc)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            if self.first_line_at is None:
                self.first_line_at = now
                self.first_line.set()
            if self.expected_ranks is not None and b"worker started" in line:
                try:
                    self.ranks_started.add(int(json.loads(line)["rank"]))
                except (ValueError, KeyError, TypeError):
                    continue
                if len(self.ranks_started) >= self.expected_ranks and self.all_started_at is None:
                    self.all_started_at = now
                    self.all_started.set()
        self.first_line.set()  # EOF: wake waiters, who see no timestamp
        self.all_started.set()

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
        return code


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


def cpu_ticks(pids: Sequence[int]) -> dict[int, int]:
    """utime+stime (clock ticks) from /proc/PID/stat of each pid still present."""
    ticks: dict[int, int] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        ticks[pid] = int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return ticks


# ----------------------------------------------------------------------------------------------------
# The figures; each function measures one run and returns a number.


def first_line_fakerun(cwd: str) -> float:
    job = Job(fakerun_argv(1, "--fake-max-steps", "1", "--fake-speed", "10"), cwd)
    try:
        return job.wait_first_line()
    finally:
        job.stop()


TRIVIAL_SCRIPT = "import os\nprint('hello from rank', os.environ['RANK'], flush=True)\n"


def first_line_torchrun(cwd: str) -> float:
    script = os.path.join(cwd, "trivial.py")
    with open(script, "w") as f:
        f.write(TRIVIAL_SCRIPT)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "8", script]
    job = Job(argv, cwd)
    try:
        return job.wait_first_line()
    finally:
        job.stop()


@dataclass
class StartAndPss:
    started_s: float
    pss_mb: float
    processes: int


def start_and_pss(nnodes: int, cwd: str, samples: int = 3) -> StartAndPss:
    """Time until every rank printed `worker started`, then the tree's PSS sampled while all are alive."""
    job = long_job(nnodes, cwd)
    try:
        started = job.wait_all_started()
        time.sleep(0.3)
        values: list[int] = []
        nprocs = 0
        for _ in range(samples):
            procs = job.tree()
            nprocs = len(procs)
            if nprocs < nnodes * RANKS_PER_NODE + 1:
                raise RuntimeError(f"only {nprocs} processes in the tree of {nnodes * RANKS_PER_NODE} ranks")
            values.append(pss_bytes([p.pid for p in procs]))
            time.sleep(0.2)
        return StartAndPss(started, statistics.mean(values) / 2**20, nprocs)
    finally:
        job.stop()


def cpu_per_wall(nnodes: int, cwd: str, window_s: float, *extra: str) -> float:
    """CPU seconds per wall second (x100 = % of one core) of the whole tree over `window_s` after start."""
    job = long_job(nnodes, cwd, *extra)
    try:
        job.wait_all_started()
        time.sleep(0.5)
        pids = [p.pid for p in job.tree()]
        before = cpu_ticks(pids)
        t0 = time.monotonic()
        time.sleep(window_s)
        after = cpu_ticks(pids)
        wall = time.monotonic() - t0
        used = sum(after[pid] - before[pid] for pid in before if pid in after)
        return used / CLK_TCK / wall
    finally:
        job.stop()


def teardown(nnodes: int, cwd: str, sig: int) -> float:
    """Seconds from `sig` to the launcher until no process of the job remains (zombies count as gone)."""
    job = long_job(nnodes, cwd)
    try:
        job.wait_all_started()
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


def completes(nnodes: int, cwd: str, steps: int) -> float:
    """Runs a job to --fake-max-steps; returns its wall time, raising unless it exits 0."""
    argv = fakerun_argv(
        nnodes, "--fake-max-steps", str(steps), "--fake-speed", "10", "--fake-log-format", "json"
    )
    job = Job(argv, cwd, expected_ranks=nnodes * RANKS_PER_NODE)
    code = job.proc.wait(timeout=START_TIMEOUT_S)
    elapsed = time.monotonic() - job.t0
    job.stop()
    if code != 0:
        raise RuntimeError(f"{nnodes * RANKS_PER_NODE}-rank job exited {code}:\n{job.stderr_tail()}")
    return elapsed


# ----------------------------------------------------------------------------------------------------
# Repetition, statistics and the table.


@dataclass
class Row:
    figure: str
    values: list[float]
    unit: str
    target: float | None = None  # the figure must be <= target
    target_text: str = ""
    note: str = ""

    def cells(self) -> list[str]:
        if not self.values:
            return [self.figure, self.note or "n/a", "", str(0), self.target_text or "", ""]
        med = statistics.median(self.values)
        spread = f"{_fmt(min(self.values), self.unit)} – {_fmt(max(self.values), self.unit)}"
        verdict = ""
        if self.target is not None:
            verdict = "met" if med <= self.target else "**not met**"
        figure = f"{self.figure} ({self.note})" if self.note else self.figure
        return [figure, _fmt(med, self.unit), spread, str(len(self.values)), self.target_text, verdict]


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "MB":
        return f"{value:.0f} MB"
    if unit == "%":
        return f"{value:.1f}%"
    if unit == "x":
        return f"{value:.1f}×"
    return f"{value:g} {unit}"


def repeat(runs: int, label: str, fn: Callable[[], float]) -> list[float]:
    values: list[float] = []
    for i in range(runs):
        value = fn()
        values.append(value)
        print(f"  {label} run {i + 1}/{runs}: {value:.4g}", file=sys.stderr, flush=True)
    return values


def torch_importable() -> bool:
    try:
        importlib.import_module("torch")
    except ImportError:
        return False
    return True


def measure(runs: int, quick: bool, cwd: str) -> list[Row]:
    sizes = [1, 8] if quick else [1, 8, 32, 128]
    window = 2.0 if quick else 5.0
    rows: list[Row] = []

    fake_first = repeat(runs, "first line fakerun", lambda: first_line_fakerun(cwd))
    rows.append(Row("first worker line, 8 ranks (fakerun)", fake_first, "s", 0.25, "≤ 0.25 s"))
    if torch_importable():
        torch_first = repeat(runs, "first line torchrun", lambda: first_line_torchrun(cwd))
        rows.append(Row("first worker line, 8 ranks (torchrun --standalone)", torch_first, "s"))
        ratio = [t / f for t, f in zip(torch_first, fake_first, strict=True)]
        rows.append(Row("torchrun / fakerun, first line", ratio, "x"))
    else:
        rows.append(Row("first worker line, 8 ranks (torchrun)", [], "s", note="n/a (torch not importable)"))

    start_targets = {8: (0.5, "≤ 0.5 s"), 128: (5.0, "≤ 5 s")}
    pss_targets = {8: (300.0, "≤ 300 MB")}
    start_rows: list[Row] = []
    pss_rows: list[Row] = []
    for nnodes in sizes:
        ranks = nnodes * RANKS_PER_NODE
        results: list[StartAndPss] = []
        for i in range(runs):
            r = start_and_pss(nnodes, cwd)
            results.append(r)
            print(
                f"  {ranks} ranks run {i + 1}/{runs}: started {r.started_s:.3f} s, "
                f"PSS {r.pss_mb:.0f} MB over {r.processes} processes",
                file=sys.stderr,
                flush=True,
            )
        st, st_text = start_targets.get(nnodes, (None, ""))
        start_rows.append(
            Row(
                f"all ranks started, {ranks} ranks ({nnodes}×8)",
                [r.started_s for r in results],
                "s",
                st,
                st_text,
            )
        )
        pt, pt_text = pss_targets.get(nnodes, (None, ""))
        pss_rows.append(
            Row(f"PSS of the job tree, {ranks} ranks", [r.pss_mb for r in results], "MB", pt, pt_text)
        )
    rows += start_rows + pss_rows

    if not quick:
        done = repeat(1, "1024 ranks to --fake-max-steps 3", lambda: completes(128, cwd, 3))
        rows.append(Row("1024 ranks run to --fake-max-steps 3, exit 0 (wall time)", done, "s"))

    cpu_default = repeat(runs, "CPU 64 ranks default pace", lambda: 100 * cpu_per_wall(8, cwd, window))
    rows.append(
        Row(
            f"CPU of the tree, 64 ranks, default pace ({window:g} s window)",
            cpu_default,
            "%",
            5.0,
            "≤ 5% of one core",
        )
    )
    cpu_fast = repeat(
        runs, "CPU 64 ranks speed 20", lambda: 100 * cpu_per_wall(8, cwd, window, "--fake-speed", "20")
    )
    rows.append(Row(f"CPU of the tree, 64 ranks, --fake-speed 20 ({window:g} s window)", cpu_fast, "%"))

    rows.append(Row("coordinator step rounds/s, 64 ranks", [], "", note="n/a (coordinator not built yet)"))
    rows.append(Row("coordinator step rounds/s, 1024 ranks", [], "", note="n/a (coordinator not built yet)"))

    term = repeat(runs, "SIGTERM teardown 64", lambda: teardown(8, cwd, signal.SIGTERM))
    rows.append(Row("SIGTERM launcher → all processes gone, 64 ranks", term, "s", 0.5, "≤ 0.5 s"))
    kill = repeat(runs, "SIGKILL teardown 64", lambda: teardown(8, cwd, signal.SIGKILL))
    rows.append(Row("SIGKILL launcher → all processes gone, 64 ranks", kill, "s", 1.0, "≤ 1 s"))
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
    args = parser.parse_args(argv)
    runs = 1 if args.quick else max(1, args.runs)
    with signals_raise(), tempfile.TemporaryDirectory(prefix="fakerun-bench.") as cwd:
        started = time.monotonic()
        try:
            rows = measure(runs, args.quick, cwd)
        except KeyboardInterrupt:
            print("interrupted; cleaning up", file=sys.stderr)
            return 130
        finally:
            REGISTRY.cleanup()
        print(f"  total benchmark time {time.monotonic() - started:.0f} s", file=sys.stderr)
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
