"""scripts/slurm/fake_srun.sh under hostile conditions: Ctrl-C, hangups, SIGTERM, SIGKILL, dead pipes, -N 16.

Each job runs in its own session, as a command typed in a terminal runs in its own process group: a
Ctrl-C or a hangup of the terminal is a signal to that whole group (fake_srun.sh, the batch script, srun),
which the srun tasks, each in a session of its own, never see directly. The `runner` fixture then checks
that no process of the test (its marker in the environment, or its directory as the working directory)
is left: no launcher, no worker, no srun.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import Runner, fakerun_exe, marked_processes
from tests.integration.test_multinode import free_port

FAKE_SRUN = Path(__file__).resolve().parents[2] / "scripts" / "slurm" / "fake_srun.sh"
JOBID = "4242"
# A task that outlives a broken pipe (SIGPIPE ignored, failed writes ignored): only srun can end it.
STUBBORN = "trap '' PIPE; while :; do echo \"tick $SLURM_PROCID\" 2>/dev/null || :; sleep 0.1; done"


def batch(runner: Runner, body: str, nodes: int = 2, name: str = "job.sbatch") -> Path:
    """Writes a batch script for NODES nodes that runs BODY."""
    path = runner.tmp / name
    path.write_text(f"#!/bin/bash\n#SBATCH --nodes={nodes}\nset -euo pipefail\n{body}\n")
    return path


def fakerun_batch(runner: Runner, nodes: int, nproc: int, *fake: str) -> Path:
    """A batch script whose one step is a fakerun agent per node, meeting at a c10d rendezvous here."""
    fake_args = " ".join(fake)
    return batch(
        runner,
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)\n'
        f'srun fakerun --nnodes "$SLURM_NNODES" --nproc-per-node {nproc} --rdzv-backend c10d '
        f'--rdzv-endpoint 127.0.0.1:{free_port()} --rdzv-id "$SLURM_JOB_ID" {fake_args} train.py',
        nodes,
    )


def env(runner: Runner) -> dict[str, str]:
    """The runner's environment with the `fakerun` command on PATH and TMPDIR in the test's directory."""
    tmp = runner.tmp / "tmp"
    tmp.mkdir(exist_ok=True)
    return runner.env(
        PATH=f"{Path(fakerun_exe()).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}", TMPDIR=str(tmp)
    )


def start(runner: Runner, script: Path, stdout: int, stderr: int, *args: str) -> subprocess.Popen[bytes]:
    """Starts `fake_srun.sh ARGS SCRIPT` in a session of its own, as a shell starts a foreground job."""
    return subprocess.Popen(
        ["bash", str(FAKE_SRUN), "--jobid", JOBID, *args, str(script)],
        stdout=stdout,
        stderr=stderr,
        env=env(runner),
        cwd=runner.tmp,
        start_new_session=True,
    )


def start_to_files(runner: Runner, script: Path, *args: str) -> subprocess.Popen[bytes]:
    """Starts fake_srun.sh with its stdout and stderr in out.txt and err.txt."""
    with open(runner.tmp / "out.txt", "wb") as out, open(runner.tmp / "err.txt", "wb") as err:
        return start(runner, script, out.fileno(), err.fileno(), *args)


def read_until(fd: int, marker: bytes, timeout: float = 60) -> bytes:
    """Reads the pipe FD until MARKER has come (the job is running), or fails."""
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        left = deadline - time.monotonic()
        assert left > 0, f"{marker!r} never came: {data[-2000:]!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"the output ended before {marker!r}: {data[-2000:]!r}"
            data += chunk
    return data


def wait_for_text(path: Path, marker: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Waits until the file PATH holds MARKER (the job is running), or fails."""
    deadline = time.monotonic() + timeout
    while marker not in path.read_text(errors="replace"):
        assert proc.poll() is None, f"fake_srun.sh ended ({proc.returncode}) before {marker!r}"
        assert time.monotonic() < deadline, f"{marker!r} never came in {path.name}"
        time.sleep(0.05)


def end(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """fake_srun.sh's exit status; a hang is a failure (and is killed)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"fake_srun.sh still running after {timeout} s")


def nothing_left(runner: Runner, timeout: float = 15) -> None:
    """No process of the test is left (a launcher's workers follow it within a second), nor the shims."""
    assert not list((runner.tmp / "tmp").glob("fake_srun.*"))
    deadline = time.monotonic() + timeout
    left = marked_processes(runner.mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = marked_processes(runner.mark)
    described = []
    for p in left:
        try:
            described.append((p.pid, " ".join(p.cmdline())[:100]))
        except psutil.Error:
            continue
    assert not described, f"left behind: {described}"


def srun_lines(text: str) -> list[str]:
    """srun's and slurmstepd's lines, also those that follow a progress bar's last update on its line."""
    return re.findall(r"(?:srun|slurmstepd): [^\r\n]*", text)


def srun_pid(runner: Runner) -> int:
    """The pid of the srun shim (`bash .../srun CMD...`) of the test's job."""
    for p in marked_processes(runner.mark):
        try:
            if any(arg.endswith("/srun") for arg in p.cmdline()[:3]):
                return p.pid
        except psutil.Error:
            continue
    pytest.fail("no srun is running")


class TestCtrlC:
    """srun's Ctrl-C: one reports the tasks' states, a second within a second ends the step."""

    def test_once_reports_and_the_job_runs_on(self, runner: Runner) -> None:
        """A single Ctrl-C: srun's two status lines, the tasks never see it, the job completes, exit 0."""
        script = fakerun_batch(runner, 2, 2, "--fake-max-steps", "300", "--fake-speed", "20")
        proc = start_to_files(runner, script)
        wait_for_text(runner.tmp / "out.txt", "memory after first step", proc)
        os.killpg(proc.pid, signal.SIGINT)
        assert end(proc) == 0, (runner.tmp / "err.txt").read_text()[-2000:]
        err = (runner.tmp / "err.txt").read_text()
        assert srun_lines(err) == [
            "srun: interrupt (one more within 1 sec to abort)",
            f"srun: StepId={JOBID}.0 tasks 0-1: running",
        ], err[-3000:]
        assert "Training summary" in (runner.tmp / "out.txt").read_text()
        nothing_left(runner)

    def test_twice_within_a_second_ends_the_step(self, runner: Runner) -> None:
        """Two Ctrl-Cs: srun's status, then Ctrl-C and SIGKILL to the step and srun's abort lines."""
        script = fakerun_batch(runner, 2, 2, "--fake-speed", "20")
        proc = start_to_files(runner, script)
        wait_for_text(runner.tmp / "out.txt", "memory after first step", proc)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        assert end(proc) != 0
        nothing_left(runner)
        err = (runner.tmp / "err.txt").read_text()
        lines = srun_lines(err)
        assert lines[:6] == [
            "srun: interrupt (one more within 1 sec to abort)",
            f"srun: StepId={JOBID}.0 tasks 0-1: running",
            f"srun: sending Ctrl-C to StepId={JOBID}.0",
            "srun: forcing job termination",
            "srun: Job step aborted: Waiting up to 32 seconds for job step to finish.",
            lines[5],
        ], err[-3000:]
        assert re.fullmatch(
            rf"slurmstepd: error: \*\*\* STEP {JOBID}\.0 ON fake-001 CANCELLED AT "
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d DUE to SIGNAL Killed \*\*\*",
            lines[5],
        )

    def test_with_the_reader_of_its_output_gone(self, runner: Runner) -> None:
        """`fake_srun.sh ... 2>&1 | tee log`, Ctrl-C twice (tee dies of the first): nothing survives."""
        script = fakerun_batch(runner, 2, 2, "--fake-speed", "20")
        r, w = os.pipe()
        try:
            proc = start(runner, script, w, w)
        finally:
            os.close(w)
        try:
            read_until(r, b"memory after first step")
        finally:
            os.close(r)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        end(proc)
        nothing_left(runner)


class TestEndOfOutput:
    """srun gets SIGPIPE when the reader of its output goes away, and ends the step (signals.c)."""

    def test_tasks_that_ignore_the_broken_pipe_are_ended(self, runner: Runner) -> None:
        """`fake_srun.sh ... | head`: tasks ignoring SIGPIPE and EPIPE still end, without a signal."""
        (runner.tmp / "task.sh").write_text(STUBBORN + "\n")
        script = batch(runner, "srun bash task.sh")
        r, w = os.pipe()
        try:
            proc = start(runner, script, w, subprocess.DEVNULL)
        finally:
            os.close(w)
        try:
            read_until(r, b"tick 1\n")
        finally:
            os.close(r)
        assert end(proc) == 128 + signal.SIGKILL
        nothing_left(runner)


class TestTermination:
    """Signals that end a job: a hangup of the terminal, `kill` of fake_srun.sh or of srun, SIGKILL."""

    @pytest.mark.parametrize(
        ("target", "sig"),
        [
            ("group", signal.SIGHUP),
            ("fake_srun", signal.SIGTERM),
            ("srun", signal.SIGTERM),
            ("srun", signal.SIGKILL),
        ],
        ids=["hangup", "sigterm-fake_srun", "sigterm-srun", "sigkill-srun"],
    )
    def test_ends_everything(self, runner: Runner, target: str, sig: signal.Signals) -> None:
        """Every launcher and worker is gone, and fake_srun.sh has ended."""
        script = fakerun_batch(runner, 2, 2, "--fake-speed", "20")
        proc = start_to_files(runner, script)
        wait_for_text(runner.tmp / "out.txt", "memory after first step", proc)
        if target == "group":
            os.killpg(proc.pid, sig)
        elif target == "fake_srun":
            proc.send_signal(sig)
        else:
            os.kill(srun_pid(runner), sig)
        end(proc)
        nothing_left(runner)
        err = (runner.tmp / "err.txt").read_text()
        if sig != signal.SIGKILL:
            lines = srun_lines(err)
            assert lines.count("srun: forcing job termination") == 1, err[-3000:]
            assert "srun: Job step aborted: Waiting up to 32 seconds for job step to finish." in lines


class TestSteps:
    """srun's reports and exit codes, and jobs of many nodes."""

    def test_failed_and_killed_tasks(self, runner: Runner) -> None:
        """Exit codes and signals as srun reports them; srun's code is the highest (128+N for a signal)."""
        script = batch(
            runner,
            "rc=0; srun bash -c 'exit $SLURM_PROCID' || rc=$?; echo \"first $rc\"\n"
            "rc=0; srun -l bash -c 'echo hi; [[ $SLURM_PROCID != 1 ]] || kill -9 $$' || rc=$?; "
            'echo "second $rc"',
            nodes=3,
        )
        res = subprocess.run(
            ["bash", str(FAKE_SRUN), "--jobid", JOBID, str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env(runner),
            cwd=runner.tmp,
        )
        assert res.returncode == 0, res.stderr
        assert "first 2\n" in res.stdout and "second 137\n" in res.stdout
        assert sorted(line for line in res.stdout.splitlines() if line.endswith(": hi")) == [
            "0: hi",
            "1: hi",
            "2: hi",
        ]
        lines = srun_lines(res.stderr)
        assert sorted(lines[:2]) == [
            "srun: error: fake-002: task 1: Exited with exit code 1",
            "srun: error: fake-003: task 2: Exited with exit code 2",
        ]
        assert lines[2:] == [
            "srun: error: fake-002: task 1: Killed",
            f"srun: Force Terminated StepId={JOBID}.1",
        ]

    def test_sixteen_nodes(self, runner: Runner) -> None:
        """-N 16 exits 0 every time: no SIGPIPE from `| head -n1` under pipefail (fake_srun.sh, script)."""
        noop = batch(runner, 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1', 16, "noop.sbatch")
        for _ in range(40):
            res = subprocess.run(
                ["bash", str(FAKE_SRUN), str(noop)],
                capture_output=True,
                text=True,
                timeout=30,
                env=env(runner),
                cwd=runner.tmp,
            )
            assert (res.returncode, res.stdout) == (0, "fake-001\n"), res.stderr
        for _ in range(3):
            script = fakerun_batch(runner, 16, 1, "--fake-max-steps", "1", "--fake-speed", "1000")
            res = subprocess.run(
                ["bash", str(FAKE_SRUN), str(script)],
                capture_output=True,
                text=True,
                timeout=60,
                env=env(runner),
                cwd=runner.tmp,
            )
            assert res.returncode == 0, res.stderr[-2000:]
            assert "16 GPUs on 16 nodes" in res.stdout and "Training summary" in res.stdout
        assert not list((runner.tmp / "tmp").glob("fake_srun.*"))
