"""Exhausted resources and signals to the launcher: open files, memory, the fork loop, workers' children."""

from __future__ import annotations

import errno
import gc
import io
import math
import os
import re
import resource
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from fakerun.cli import parse_command_line
from fakerun.launcher import preflight, runtime
from fakerun.launcher.agent import Failure, Worker
from fakerun.launcher.console import Console
from fakerun.launcher.envs import WorkerSlot
from fakerun.launcher.logdir import LogDir
from fakerun.launcher.plan import make_plan
from fakerun.launcher.procs import ChildMain, ForkProcessTable, exec_child
from fakerun.limits import MAX_NNODES
from fakerun.main import RANK_FILES_OPEN
from tests.conftest import Result, Runner, fakerun_exe, marked_processes

FAST = ["--fake-max-steps", "2", "--fake-speed", "1000", "train.py"]
REFUSAL = re.compile(r"^fakerun: error: cannot start (\d+) ranks: .*; at most (\d+) ranks fit")


def run_limited(runner: Runner, args: list[str], soft: int, hard: int, **extra: str) -> Result:
    """Runs fakerun to its end with RLIMIT_NOFILE set to (soft, hard), as `ulimit -n` would."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    t0 = time.monotonic()
    proc = subprocess.run(
        [fakerun_exe(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=runner.env(**extra),
        cwd=runner.tmp,
        preexec_fn=limit,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)


def hard_nofile() -> int:
    """This process's hard limit on open files (the tests may lower, never raise, it)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return preflight._nr_open() if hard == resource.RLIM_INFINITY else hard


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Polls until predicate() holds; fails the test (instead of hanging it) after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def gone(pids: list[int]) -> bool:
    """Whether none of the processes is still running (a zombie awaiting its reaper counts as gone)."""
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


class TestOpenFiles:
    """The launcher raises its soft limit, needs ~3 descriptors per rank, and refuses what cannot fit."""

    def test_256_ranks_run_under_a_soft_limit_of_1024(self, runner: Runner) -> None:
        """`ulimit -n 1024` (hard limit higher): a 256-rank job runs to its end (it used to crash)."""
        if hard_nofile() < 1100:
            pytest.skip(f"the hard limit on open files ({hard_nofile()}) is too low for 256 ranks")
        res = run_limited(runner, ["--nnodes", "32", "--nproc-per-node", "8", *FAST], 1024, hard_nofile())
        assert res.code == 0, res.stderr[-2000:]
        assert "Traceback" not in res.stderr
        assert len(re.findall(r"training finished +rank=\d+", res.stdout)) == 256

    def test_a_large_job_holds_under_two_descriptors_per_rank(self, runner: Runner) -> None:
        """200 ranks that have all written: the launcher holds each one's control socket (its output comes on
        it) and at most RANK_FILES_OPEN of their output copies (a regression guard on descriptors per rank,
        no timing)."""
        ranks = 200
        args = ["--nnodes", "25", "--nproc-per-node", "8", "--fake-speed", "50", "--fake-max-steps", "100000"]
        proc = subprocess.Popen(
            [fakerun_exe(), *args, "t.py"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=runner.env(),
            cwd=runner.tmp,
        )
        try:
            launcher = psutil.Process(proc.pid)
            copies = runner.tmp / "state" / f"job-{proc.pid}"
            # Every rank has written (its copy exists) and they all train.
            wait_until(lambda: len(list(copies.glob("rank-*.log"))) == ranks, "every rank's first lines")
            wait_until(lambda: len(launcher.children()) == ranks, "every worker")
            held = launcher.num_fds()
            assert held <= ranks + min(RANK_FILES_OPEN, ranks // 2) + preflight.LAUNCHER_FDS, held
            assert held > ranks  # the count is the launcher's: every rank's socket
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)

    def test_workers_get_the_users_soft_limit_back(self, runner: Runner) -> None:
        """Raised for the launcher only: a worker sees the soft limit the job was started with."""
        hard = hard_nofile()
        res = run_limited(
            runner,
            ["--nproc-per-node", "2", "--fake-exec", "--no-python", "/bin/sh", "-c", "ulimit -Sn"],
            1000,
            hard,
        )
        assert res.code == 0, res.stderr[-2000:]
        assert res.stdout.split() == ["1000", "1000"]

    def test_a_hard_limit_too_low_is_refused_before_forking(self, runner: Runner) -> None:
        """`ulimit -n 200` and 256 ranks: one line naming the limit and how many ranks fit; that many run."""
        res = run_limited(runner, ["--nnodes", "32", "--nproc-per-node", "8", *FAST], 200, 200)
        assert res.code == 1
        assert res.stdout == ""
        lines = res.stderr.splitlines()
        assert len(lines) == 1, res.stderr  # not even torchrun's banner: nothing started
        match = REFUSAL.match(lines[0])
        assert match is not None, lines[0]
        assert "open files but the limit is 200 (ulimit -n; hard limit 200)" in lines[0]
        fit = int(match[2])
        assert 0 < fit < 256
        # The count the line names is honest: that many ranks run under the same limit.
        res = run_limited(runner, ["--nnodes", str(fit), "--nproc-per-node", "1", *FAST], 200, 200)
        assert res.code == 0, res.stderr[-2000:]
        assert "Traceback" not in res.stderr
        assert len(re.findall(r"training finished +rank=\d+", res.stdout)) == fit
        # One rank more is refused.
        res = run_limited(runner, ["--nnodes", str(fit + 1), "--nproc-per-node", "1", *FAST], 200, 200)
        assert res.code == 1
        assert REFUSAL.match(res.stderr) is not None, res.stderr


def too_many_for_memory() -> int:
    """A node count (of 8 ranks) whose ranks need about twice the memory available now."""
    available = preflight.available_memory()
    if available is None:
        pytest.skip("this host does not say how much memory is available")
    nodes = math.ceil(2 * available / preflight.RANK_BYTES / 8)
    if nodes > MAX_NNODES:
        pytest.skip("this host has more memory than the largest job the command line accepts would use")
    return nodes


class TestMemory:
    """A job whose ranks cannot fit in the memory available is refused before forking."""

    def test_refused_with_one_line(self, runner: Runner) -> None:
        """Twice the available memory: one line with the need, what is available and how many ranks fit."""
        nodes = too_many_for_memory()
        res = runner.run(["--nnodes", str(nodes), "--nproc-per-node", "8", *FAST])
        assert res.code == 1
        assert res.stdout == ""
        lines = res.stderr.splitlines()
        assert len(lines) == 1, res.stderr
        match = REFUSAL.match(lines[0])
        assert match is not None, lines[0]
        assert int(match[1]) == nodes * 8
        assert 0 < int(match[2]) < nodes * 8
        assert re.search(r"GiB of memory \(4.5 MiB each\) and [\d.]+ GiB is available", lines[0])
        assert lines[0].endswith("(--fake-skip-memory-check starts them anyway)")

    @pytest.mark.parametrize("how", ["option", "env"])
    def test_the_override_skips_the_memory_check(self, runner: Runner, how: str) -> None:
        """With the override the same job passes the memory check (and meets the open-file one here)."""
        nodes = too_many_for_memory()
        args = ["--nnodes", str(nodes), "--nproc-per-node", "8", *FAST]
        extra = {}
        if how == "option":
            args.insert(0, "--fake-skip-memory-check")
        else:
            extra["FAKERUN_SKIP_MEMORY_CHECK"] = "1"
        # A low open-file limit refuses the job before anything is forked, so no memory is used.
        res = run_limited(runner, args, 200, 200, **extra)
        assert res.code == 1
        assert "memory" not in res.stderr
        assert "open files but the limit is 200" in res.stderr
        assert len(res.stderr.splitlines()) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_the_fork_loop_ends_the_job_at_once(runner: Runner, sig: signal.Signals) -> None:
    """A 512-rank job signalled while it forks: forking stops, the started workers go, torchrun's exit."""
    proc = runner.start(["--nnodes", "64", "--nproc-per-node", "8", *FAST])
    try:
        launcher = psutil.Process(proc.pid)
        wait_until(lambda: len(launcher.children()) >= 16, "the first workers")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert f"Received {int(sig)} death signal, shutting down workers" in err
    closing = err.count(f"closing signal {sig.name}")
    # Every worker that existed was told; the rest of the 512 were never forked.
    assert 16 <= closing < 512
    assert len(re.findall(r"worker started +rank=\d+", out)) <= closing
    assert err.rstrip().endswith(f"SignalException: Process {proc.pid} got signal: {int(sig)}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_a_signal_left_out_of_signals_to_handle_kills_quietly(runner: Runner, sig: signal.Signals) -> None:
    """Not in --signals-to-handle: the launcher dies of it as torchrun does, but stops its workers first and
    prints no traceback (Python's KeyboardInterrupt, for SIGINT)."""
    args = ["--nproc-per-node", "4", "--signals-to-handle", "SIGTERM", "--fake-speed", "10", "train.py"]
    proc = runner.start(args)
    try:
        launcher = psutil.Process(proc.pid)
        wait_until(lambda: len(launcher.children()) == 4, "the workers")
        workers = [p.pid for p in launcher.children()]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -sig
    assert "Traceback" not in err
    assert "death signal" not in err  # not handled: nothing forwarded, no torchrun shutdown messages
    assert gone(workers)


GRANDCHILD = """#!/bin/sh
{trap}
sleep 1000 &
echo "rank $RANK started its child"
wait
"""


@pytest.mark.parametrize("ignores_sigterm", [False, True])
def test_fake_exec_signal_reaches_the_workers_children(
    runner: Runner, tmp_path: Path, ignores_sigterm: bool
) -> None:
    """SIGTERM to the launcher reaches each worker's process group; so does SIGKILL after the timeout."""
    script = tmp_path / "spawns.sh"
    script.write_text(GRANDCHILD.format(trap="trap '' TERM" if ignores_sigterm else ""))
    script.chmod(0o755)
    args = ["--nproc-per-node", "2", "--shutdown-timeout", "1", "--fake-exec", "--no-python", str(script)]
    proc = runner.start(args)
    sleepers: list[int] = []

    def command(p: psutil.Process) -> list[str]:
        try:
            return p.cmdline()
        except psutil.Error:  # gone, or a zombie, since it was listed (the shell's short-lived children)
            return []

    def both_started() -> bool:
        sleepers[:] = [p.pid for p in marked_processes(runner.mark) if command(p) == ["sleep", "1000"]]
        return len(sleepers) == 2

    try:
        wait_until(both_started, "the workers' children")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert err.count("closing signal SIGTERM") == 2
    if ignores_sigterm:
        assert err.count("forcefully exiting via 9") == 2
    wait_until(lambda: gone(sleepers), "the workers' children to go", timeout=10)


class _Silent:
    """An AgentOutput that says nothing (the test checks the launcher's own error line)."""

    def group_starting(self, restart_count: int) -> None: ...
    def group_started(self, restart_count: int, workers: list[Worker]) -> None: ...
    def sending_closing_signal(self, pid: int, sig: signal.Signals) -> None: ...
    def unable_to_shutdown(self, pid: int, sig: signal.Signals) -> None: ...
    def worker_failed(self, failure: Failure) -> None: ...
    def will_restart(self, attempts_left: int) -> None: ...
    def received_death_signal(self, signum: int) -> None: ...
    def child_failed_report(self, root: Failure, others: list[Failure], restart_count: int) -> None: ...
    def signal_exception(self, signum: int) -> None: ...
    def group_succeeded(self) -> None: ...
    def rendezvous_timed_out(self) -> None: ...


def test_a_fork_failing_midway_ends_the_job_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fork() failing at the 4th rank (EAGAIN: out of processes): the 3 started go, one line, exit 1."""
    started: list[int] = []

    class RunsOutOfProcesses(ForkProcessTable):
        """Real forks, until the process table is "full"."""

        def _fork(self) -> int:
            if len(started) == 3:
                raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
            pid = super()._fork()
            if pid != 0:
                started.append(pid)
            return pid

    monkeypatch.setattr(runtime, "ForkProcessTable", RunsOutOfProcesses)
    cmd = parse_command_line(["--nproc-per-node", "8", "--fake-exec", "--no-python", "/bin/sleep", "30"], {})
    plan = make_plan(
        cmd.torchrun,
        {},
        fqdn="localhost",
        free_port=29500,
        cpu_count=2,
        gpus_per_node=8,
        node_host=lambda i: f"node{i}",
    )
    out, err = io.BytesIO(), io.BytesIO()
    console = Console(out, err)
    log_dir = LogDir.create(str(tmp_path / "logs"))

    def child(slot: WorkerSlot, restart_count: int, error_file: str) -> ChildMain:
        return exec_child(["/bin/sleep", "30"], dict(os.environ))

    try:
        code = runtime.run_job(plan, console, lambda group: _Silent(), child, log_dir)
    finally:
        gc.unfreeze()  # run_job froze this process's objects for its forks
    assert code == 1
    assert err.getvalue().decode() == (
        "fakerun: error: cannot start rank 3 (3 of 8 started): fork: Resource temporarily unavailable\n"
    )
    assert len(started) == 3
    assert gone(started)
    for pid in started:  # reaped by the launcher, not left as zombies
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
