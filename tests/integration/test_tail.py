"""fakerun-tail against real jobs: from the start, following to the end, a node, several jobs, none."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from tests.conftest import Runner, fakerun_exe

# A job that outlives every check made while it runs; it is stopped by the test.
LONG_JOB = ["--nproc-per-node", "4", "--fake-speed", "20", "--fake-max-steps", "400", "train.py"]
# A job that ends by itself within seconds.
SHORT_JOB = ["--nproc-per-node", "4", "--fake-speed", "20", "--fake-max-steps", "20"]
TIMEOUT = 60.0


def tail_exe() -> str:
    """The `fakerun-tail` console script installed next to the interpreter running the tests."""
    exe = Path(sys.executable).parent / "fakerun-tail"
    if not exe.exists():
        pytest.fail(f"fakerun-tail is not installed next to {sys.executable}; run pip install -e '.[test]'")
    return str(exe)


def state_env(runner: Runner) -> dict[str, str]:
    """The test's environment with a private state directory, so that no other job on the host is seen."""
    return runner.env(FAKERUN_STATE_DIR=str(runner.tmp / "state"))


def tail(runner: Runner, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Runs fakerun-tail to completion; its output decoded as is (text mode would turn `\r` into `\n`)."""
    proc = subprocess.run(
        [tail_exe(), *args], capture_output=True, timeout=timeout, env=state_env(runner), cwd=runner.tmp
    )
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def wait_for(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Polls until `check` holds; fails the test (it is not a timing assertion) after a generous timeout."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def job_dirs(runner: Runner) -> list[Path]:
    """The tail directories of the running jobs that already wrote their meta.json."""
    state = runner.tmp / "state"
    return sorted(p.parent for p in state.glob("job-*/meta.json")) if state.is_dir() else []


@contextmanager
def job(runner: Runner, args: list[str], name: str = "job") -> Iterator[subprocess.Popen[bytes]]:
    """A fakerun job in the background, its output in files (a full pipe would stall the launcher)."""
    with open(runner.tmp / f"{name}.out", "wb") as out, open(runner.tmp / f"{name}.err", "wb") as err:
        proc = subprocess.Popen(
            [fakerun_exe(), *args], stdout=out, stderr=err, env=state_env(runner), cwd=runner.tmp
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=TIMEOUT)


def lines_of(text: str) -> list[str]:
    """The lines of some output."""
    return text.splitlines()


def test_rank_from_the_start_node_lines_and_quiet_exits(runner: Runner) -> None:
    with job(runner, LONG_JOB):
        # Without -f, fakerun-tail shows what is there now: retried until rank 2 has started (--wait: until
        # the job's directory exists).
        def rank2_started() -> bool:
            res = tail(runner, "--rank", "2", "--wait", "30")
            assert res.returncode == 0, res.stderr
            return "worker started" in res.stdout

        wait_for(rank2_started, "rank 2's first line")
        res = tail(runner, "--rank", "2")
        first = lines_of(res.stdout)[0]
        assert "worker started" in first and "rank=2 " in first
        assert all("rank=2 " in line or "Rank 2]" in line for line in lines_of(res.stdout)), res.stdout
        assert res.stderr == ""

        # Default: rank 0, whose stderr carries the tqdm bar; into a pipe its refreshes pass through as is.
        wait_for(lambda: "\r" in tail(runner).stdout, "rank 0's bar")

        # --node 0: every rank of the node, each line whole and prefixed.
        res = tail(runner, "--node", "0")
        assert res.returncode == 0, res.stderr
        for rank in range(4):
            assert any(
                line.startswith(f"[rank{rank}]: ") and "worker started" in line
                for line in lines_of(res.stdout)
            ), res.stdout
        assert all(line.startswith(("[rank", "\r[rank")) for line in lines_of(res.stdout) if line)

        # -n K: the last K lines only.
        res = tail(runner, "--rank", "3", "-n", "2")
        assert res.returncode == 0 and len(lines_of(res.stdout)) == 2, res

        # Bad rank or node: one line naming the valid range, exit 2.
        for args, valid in ((["--rank", "4"], "valid: 0-3"), (["--node", "1"], "valid: 0)")):
            res = tail(runner, *args)
            assert res.returncode == 2 and res.stdout == "", res
            assert len(lines_of(res.stderr)) == 1 and valid in res.stderr, res.stderr

        # Following, then Ctrl-C or SIGTERM: exit 0 without a word.
        for sig in (signal.SIGINT, signal.SIGTERM):
            follower = subprocess.Popen(
                [tail_exe(), "--rank", "1", "-f"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=state_env(runner),
            )
            assert follower.stdout is not None
            assert "worker started" in follower.stdout.readline()
            follower.send_signal(sig)
            _, err = follower.communicate(timeout=TIMEOUT)
            assert (follower.returncode, err) == (0, "")

        # Piped into `head`: fakerun-tail -f ends when head does, quietly (no traceback, no error line).
        piped = subprocess.run(
            f"'{tail_exe()}' -f | head -n 3",
            shell=True,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=state_env(runner),
        )
        assert len(lines_of(piped.stdout)) == 3 and piped.stderr == "", piped


def test_follow_ends_with_the_job(runner: Runner) -> None:
    logs = runner.tmp / "logs"
    with job(runner, [*SHORT_JOB, "--log-dir", str(logs), "--tee", "3", "train.py"]) as proc:
        # Started with the job: --wait covers the moment before the job's directory exists.
        res = tail(runner, "--rank", "1", "-f", "--wait", "30")
        assert proc.wait(timeout=TIMEOUT) == 0
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    # Everything rank 1 wrote, on both streams, and nothing else.
    (attempt,) = logs.glob("*/attempt_0")
    written = lines_of((attempt / "1" / "stdout.log").read_text()) + lines_of(
        (attempt / "1" / "stderr.log").read_text()
    )
    assert sorted(lines_of(res.stdout)) == sorted(written)
    assert "worker started" in res.stdout and "training finished" in res.stdout
    assert job_dirs(runner) == []


def test_two_jobs_need_a_run_id(runner: Runner) -> None:
    with job(runner, LONG_JOB, "a"), job(runner, LONG_JOB, "b"):
        wait_for(lambda: len(job_dirs(runner)) == 2, "two job directories")
        metas = [json.loads((d / "meta.json").read_text()) for d in job_dirs(runner)]
        res = tail(runner)
        assert res.returncode == 1 and res.stdout == ""
        assert len(lines_of(res.stderr)) == 1, res.stderr
        for meta in metas:
            assert meta["run_id"] in res.stderr

        def started(run_id: str) -> Callable[[], bool]:
            return lambda: "worker started" in tail(runner, "--run-id", run_id).stdout

        for meta in metas:
            wait_for(started(meta["run_id"]), "rank 0's output")
        for key, meta in (("run_id", metas[1]), ("launcher_pid", metas[0])):  # a run id or a launcher pid
            res = tail(runner, "--run-id", str(meta[key]))
            assert res.returncode == 0, res.stderr
            # rank 0's first line names its worker's pid: a child of the chosen job's launcher
            found = re.search(r"worker started .* pid=(\d+)", res.stdout)
            assert found is not None, res.stdout
            assert psutil.Process(int(found[1])).ppid() == meta["launcher_pid"]


def test_no_job_running(runner: Runner) -> None:
    for args in ([], ["-f"], ["--wait", "0.3"], ["--run-id", "nope"]):
        res = tail(runner, *args)
        assert res.returncode == 1 and res.stdout == "", res
        assert len(lines_of(res.stderr)) == 1 and res.stderr.startswith("fakerun-tail: error: "), res.stderr


DEMO = Path(__file__).resolve().parents[2] / "scripts" / "tmux" / "demo.sh"


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_tmux_demo_runs_and_leaves_nothing_behind(runner: Runner) -> None:
    # A private tmux server (its own socket directory): the user's sessions are neither seen nor touched.
    sockets = Path(tempfile.mkdtemp(prefix="tmux-", dir="/tmp"))  # short: socket paths are limited to ~100
    env = {
        **state_env(runner),
        "TMUX_TMPDIR": str(sockets),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }

    def tmux(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30, env=env)

    def panes() -> dict[str, list[str]]:
        """Pane title -> [pane id, dead, exit status]."""
        out = tmux(
            "list-panes", "-t", "=demo", "-F", "#{pane_title}|#{pane_id}|#{pane_dead}|#{pane_dead_status}"
        )
        return {title: rest for title, *rest in (line.split("|") for line in out.stdout.splitlines())}

    def shown(title: str, *, join: bool = True) -> str:
        """Everything the pane shows and scrolled past, wrapped lines joined (or not)."""
        flags = ["-J"] if join else []
        return tmux("capture-pane", "-p", *flags, "-S", "-", "-t", panes()[title][0]).stdout

    try:
        res = subprocess.run(
            # Long enough (~8 s of training) that the tail panes surely find the job before it ends.
            [str(DEMO), "--detach", "-s", "demo", "--fake-speed", "20", "--fake-max-steps", "120"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=env,
            cwd=runner.tmp,
        )
        assert res.returncode == 0, res.stderr
        assert set(panes()) == {"fakerun", "rank 5", "rank 12", "fakerun-smi"}
        # The job ends by itself; the tails end with it and stay on screen.
        wait_for(lambda: panes()["rank 5"][1] == panes()["rank 12"][1] == "1", "the tail panes to end")
        # tmux 3.3a sometimes never records the status of one of two panes that die together (empty
        # #{pane_dead_status}, no "Pane is dead" line); when it does, it must be 0. `fakerun-tail -f` exiting
        # 0 at the end of a job is asserted without tmux in test_follow_ends_with_the_job.
        assert {panes()["rank 5"][2], panes()["rank 12"][2]} <= {"0", ""}
        for rank in (5, 12):
            text = shown(f"rank {rank}")
            # The demo's default style is torchtitan's: every rank logs its steps to the end.
            assert f"Rank {rank}]" in text and " - step: " in text and "Training completed" in text, text
            assert f"Rank {rank + 1}]" not in text
            # Nothing wrapped: joining wrapped rows changes nothing (step lines are longer than the pane).
            rows = [row for row in shown(f"rank {rank}", join=False).splitlines() if row]
            assert [line for line in text.splitlines() if line] == rows
        wait_for(lambda: "fakerun exited with status 0" in shown("fakerun"), "the job's closing prompt")
        tmux("send-keys", "-t", panes()["fakerun"][0], "Enter")
        wait_for(lambda: tmux("has-session", "-t", "=demo").returncode != 0, "the window to close")
    finally:
        tmux("kill-server")
        shutil.rmtree(sockets, ignore_errors=True)
