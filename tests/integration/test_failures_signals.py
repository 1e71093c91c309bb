"""Worker failures, restarts, and signals to the launcher, with real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import SCRIPTS, Runner, marked_processes

FAIL = str(SCRIPTS / "fail.py")
PREFIX = re.compile(r"^([IWE])\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ ([\w/.]+:\d+)\] ", re.M)


def normalise(text: str) -> str:
    """Masks what changes from run to run: glog times and pids, pids, dates, paths."""
    text = PREFIX.sub(r"\1MMDD hh:mm:ss.uuuuuu PID \2] ", text)
    text = re.sub(r"\d{4}-\d\d-\d\d_\d\d:\d\d:\d\d", "TIME", text)
    text = re.sub(r"(pid:? |PID |process )\d+", r"\1N", text)
    return text


def report_block(stderr: str) -> str:
    """The ChildFailedError block, from its exception line to the closing border."""
    start = stderr.index("torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n")
    return stderr[start:]


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Polls until predicate() is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def started_ranks(tmp: Path) -> int:
    """How many `start` events the fail.py workers logged."""
    log = tmp / "events.log"
    return log.read_text().count(" start ") if log.exists() else 0


class TestWorkerFailure:
    """One worker fails; the others are SIGTERMed; the report; exit code 1."""

    def test_exit3_report_matches_recording(self, runner: Runner, reference: Path) -> None:
        """The report block equals torchrun's, pids and times aside."""
        res = runner.run(["--standalone", "--nproc-per-node", "4", "--fake-exec", FAIL], FAIL_AFTER="1")
        assert res.code == 1
        recorded = (reference / "04_failure/exit3/console_stderr.txt").read_text()
        want = normalise(report_block(recorded)).replace("/home/user/ref/scripts/fail.py", FAIL)
        got = normalise(report_block(res.stderr))
        # The rule width follows the longest line; our script path differs in length from the recording's.
        assert re.sub(r"^[=-]+$", "RULE", got, flags=re.M) == re.sub(r"^[=-]+$", "RULE", want, flags=re.M)
        assert normalise(res.stderr).count("closing signal SIGTERM") == 3
        failed = (
            "EMMDD hh:mm:ss.uuuuuu PID torch/distributed/elastic/multiprocessing/api.py:1002] "
            "failed (exitcode: 3) local_rank: 1 (pid: N) of binary: "
        )
        assert failed in normalise(res.stderr)

    def test_order_of_launcher_messages(self, runner: Runner) -> None:
        """The worker's last line, then SIGTERM lines, the failed line, the traceback and the block."""
        res = runner.run(["--standalone", "--nproc-per-node", "2", "--fake-exec", FAIL])
        assert res.code == 1
        err = res.stderr
        order = [
            err.index(s)
            for s in (
                "rank1 exiting",
                "closing signal SIGTERM",
                "failed (exitcode: 3)",
                "Traceback (most recent call last):",
                "raise ChildFailedError(",
                "Root Cause (first observed failure):",
            )
        ]
        assert order == sorted(order)

    @pytest.mark.parametrize(("sig", "name"), [("SIGKILL", "SIGKILL"), ("SIGSEGV", "SIGSEGV")])
    def test_worker_killed_by_signal(self, runner: Runner, sig: str, name: str) -> None:
        """A worker dying by a signal is reported with the negative code and the signal's name."""
        res = runner.run(
            ["--standalone", "--nproc-per-node", "2", "--fake-exec", FAIL], MODE="selfkill", SELF_SIG=sig
        )
        assert res.code == 1
        num = int(getattr(signal, sig))
        block = normalise(report_block(res.stderr))
        assert f"  exitcode  : -{num} (pid: N)  ({name})\n" in block
        assert f"  traceback : Signal {num} ({name}) received by PID N\n" in block
        assert f"failed (exitcode: -{num}) local_rank: 1" in res.stderr

    def test_error_file_from_record(self, runner: Runner) -> None:
        """A worker's error.json shows up in the Root Cause with its traceback, indented."""
        logs = runner.tmp / "logs"
        res = runner.run(
            ["--standalone", "--nproc-per-node", "2", "--log-dir", str(logs), "--fake-exec", FAIL],
            MODE="record",
        )
        assert res.code == 1
        (run_dir,) = list(logs.iterdir())
        path = run_dir / "attempt_0/1/error.json"
        assert json.loads(path.read_text())["message"]["message"] == "ValueError: boom from rank 1"
        block = report_block(res.stderr)
        assert f"  error_file: {path}\n" in block
        assert "  traceback : Traceback (most recent call last):\n" in block
        assert "  ValueError: boom from rank 1\n" in block
        assert f"no error file defined for parent, to copy child error file ({path})" in res.stderr
        assert (
            "ValueError: boom from rank 1" in res.stderr.split("Traceback")[1]
        )  # the worker's own traceback

    def test_exception_without_record(self, runner: Runner) -> None:
        """An uncaught exception: exit code 1, no error file, the pointer to the docs."""
        res = runner.run(["--standalone", "--nproc-per-node", "2", "--fake-exec", FAIL], MODE="raise")
        assert res.code == 1
        block = report_block(res.stderr)
        assert "  error_file: <N/A>\n" in block
        assert "To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html" in block

    def test_single_worker(self, runner: Runner) -> None:
        """With one worker, Failures reads <NO_OTHER_FAILURES>."""
        res = runner.run(["--nproc-per-node", "1", "--fake-exec", FAIL], FAIL_RANK="0")
        assert res.code == 1
        assert "Failures:\n  <NO_OTHER_FAILURES>\n" in res.stderr

    def test_missing_script(self, runner: Runner) -> None:
        """Python's own `can't open file` error from every worker, each one's exit code 2 in the report (none
        SIGTERMed: all are gone by the monitor's first look, here a second after the start), rank 0 as the
        root cause, launcher exit 1."""
        res = runner.run(["--nproc-per-node", "2", "--monitor-interval", "1", "--fake-exec", "nope.py"])
        assert res.code == 1
        assert res.stderr.count("can't open file") == 2
        assert res.stderr.count("  exitcode  : 2 (pid: ") == 2
        assert "closing signal" not in res.stderr and "SIGTERM" not in res.stderr
        assert "] failed (exitcode: 2) local_rank: 0 (pid: " in res.stderr
        root = res.stderr.split("Root Cause (first observed failure):\n")[1]
        assert "  rank      : 0 (local_rank: 0)\n" in root

    def test_early_clean_exit_keeps_others_running(self, runner: Runner) -> None:
        """A rank that exits 0 early does not stop the others; the run ends with 0."""
        res = runner.run(
            ["--standalone", "--nproc-per-node", "2", "--fake-exec", FAIL], MODE="none", SLEEP="0.5"
        )
        assert res.code == 0
        assert "closing signal" not in res.stderr


class TestRestarts:
    """--max-restarts restarts the whole group."""

    def test_three_attempts(self, runner: Runner) -> None:
        """max-restarts 2: three attempts with RESTART_COUNT 0, 1, 2, then the report; exit 1."""
        res = runner.run(
            ["--standalone", "--nproc-per-node", "2", "--max-restarts", "2", "--fake-exec", FAIL],
            FAIL_AFTER="0.3",
        )
        assert res.code == 1
        assert sorted(res.stdout.splitlines()) == sorted(
            f"rank{r} started restart_count={a}" for r in (0, 1) for a in (0, 1, 2)
        )
        assert res.stderr.count("failed (exitcode: 3) local_rank: 1") == 3
        assert res.stderr.count("ChildFailedError: \n") == 1

    def test_restart_info_lines(self, runner: Runner) -> None:
        """LOGLEVEL=INFO adds the worker-group-failed line with the attempts left."""
        res = runner.run(
            ["--standalone", "--nproc-per-node", "2", "--max-restarts", "1", "--fake-exec", FAIL],
            LOGLEVEL="INFO",
            FAIL_AFTER="0.3",
        )
        assert res.code == 1
        assert "[default] Worker group FAILED. 1/1 attempts left; will restart worker group" in res.stderr
        assert "  restart_count=1\n" in res.stderr

    def test_attempt_directories(self, runner: Runner) -> None:
        """Each attempt gets its own attempt_N directory."""
        logs = runner.tmp / "logs"
        res = runner.run(
            [
                "--standalone",
                "--nproc-per-node",
                "2",
                "--max-restarts",
                "1",
                "--log-dir",
                str(logs),
                "--redirects",
                "3",
                "--fake-exec",
                FAIL,
            ],
            FAIL_AFTER="0.3",
        )
        assert res.code == 1
        (run_dir,) = list(logs.iterdir())
        assert sorted(p.name for p in run_dir.iterdir()) == ["attempt_0", "attempt_1"]
        assert (run_dir / "attempt_1/1/stderr.log").read_text() == "rank1 exiting\n"


class TestSignals:
    """Signals to the launcher are forwarded as the same signal; exit code 1; nothing survives."""

    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT])
    def test_forwarded(self, runner: Runner, sig: signal.Signals) -> None:
        """Received-death-signal line, one closing line per worker, the SignalException, exit 1."""
        tmpdir = runner.tmp / "tmp"
        tmpdir.mkdir()
        proc = runner.start(
            ["--standalone", "--nproc-per-node", "3", "--fake-exec", FAIL], MODE="none", TMPDIR=str(tmpdir)
        )
        wait_for(lambda: started_ranks(runner.tmp) == 3)
        workers = [p.pid for p in psutil.Process(proc.pid).children()]
        t0 = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 1
        assert time.monotonic() - t0 < 10
        assert f"Received {int(sig)} death signal, shutting down workers" in err
        assert sorted(
            int(p) for p in re.findall(rf"Sending process (\d+) closing signal {sig.name}", err)
        ) == sorted(workers)
        exc = "torch.distributed.elastic.multiprocessing.api.SignalException"
        assert err.rstrip().endswith(f"{exc}: Process {proc.pid} got signal: {int(sig)}")
        assert "ChildFailedError" not in err
        events = (runner.tmp / "events.log").read_text()
        assert events.count(f"got signal {sig.name}") == 3
        assert not any(
            psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in workers
        )
        assert list(tmpdir.iterdir()) == []

    def test_shutdown_timeout_escalates(self, runner: Runner) -> None:
        """Workers ignoring SIGTERM are SIGKILLed after --shutdown-timeout, with torchrun's line."""
        proc = runner.start(
            ["--standalone", "--nproc-per-node", "2", "--shutdown-timeout", "1", "--fake-exec", FAIL],
            MODE="none",
            IGNORE_TERM="1",
        )
        wait_for(lambda: started_ranks(runner.tmp) == 2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 1
        assert len(re.findall(r"Unable to shutdown process \d+ via 15, forcefully exiting via 9", err)) == 2

    def test_unhandled_signal_takes_workers_along(self, runner: Runner) -> None:
        """Unhandled SIGUSR1 kills the launcher and, unlike under torchrun, its workers and temp files too."""
        tmpdir = runner.tmp / "tmp"
        tmpdir.mkdir()
        proc = runner.start(
            ["--standalone", "--nproc-per-node", "2", "--fake-exec", FAIL], MODE="none", TMPDIR=str(tmpdir)
        )
        wait_for(lambda: started_ranks(runner.tmp) == 2)
        (own_dir,) = [
            d for d in tmpdir.iterdir() if not d.name.startswith("fakerun-")
        ]  # fakerun-tail's copies
        assert own_dir.name.startswith("torchelastic_")
        proc.send_signal(signal.SIGUSR1)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGUSR1
        wait_for(lambda: not marked_processes(runner.mark), timeout=1.0)
        assert list(tmpdir.iterdir()) == []

    def test_signals_to_handle(self, runner: Runner) -> None:
        """--signals-to-handle adds SIGUSR1, which is then forwarded."""
        proc = runner.start(
            [
                "--standalone",
                "--nproc-per-node",
                "2",
                "--signals-to-handle",
                "SIGTERM,SIGINT,SIGUSR1",
                "--fake-exec",
                FAIL,
            ],
            MODE="none",
        )
        wait_for(lambda: started_ranks(runner.tmp) == 2)
        proc.send_signal(signal.SIGUSR1)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 1
        assert "Received 10 death signal" in err and "closing signal SIGUSR1" in err

    def test_sigkill_of_launcher_takes_workers_within_a_second(self, runner: Runner) -> None:
        """Better than torchrun: a SIGKILLed launcher leaves no orphans (parent-death signal)."""
        # A SIGKILLed launcher cannot remove its temporary log dir: keep it inside the test's directory.
        tmpdir = str(runner.tmp / "tmp")
        os.mkdir(tmpdir)
        proc = runner.start(
            ["--standalone", "--nproc-per-node", "4", "--fake-exec", FAIL], MODE="none", TMPDIR=tmpdir
        )
        wait_for(lambda: started_ranks(runner.tmp) == 4)
        proc.kill()
        proc.communicate(timeout=10)
        wait_for(lambda: not marked_processes(runner.mark), timeout=1.0)


class TestBadInput:
    """Bad values end with torchrun's exit codes and last line; a traceback, if any, is torch's own."""

    @pytest.mark.parametrize(
        ("args", "code", "last"),
        [
            (["--nproc-per-node", "foo", "x.py"], 1, "ValueError: Unsupported nproc_per_node value: foo"),
            (
                ["--nnodes", "3:2", "x.py"],
                1,
                "AssertionError: min_nodes must be > 0 and <= max_nodes, got min_nodes=3, max_nodes=2",
            ),
            pytest.param(
                ["--nproc-per-node", "gpu", "--fake-exec", "x.py"],
                1,
                "ValueError: Cuda is not available.",
                marks=pytest.mark.skipif(
                    os.path.isdir("/proc/driver/nvidia/gpus"), reason="the real scripts would have CUDA here"
                ),
            ),
            (
                ["--nproc", "2", "x.py"],
                2,
                "fakerun: error: ambiguous option: --nproc could match --nproc-per-node, --nproc_per_node",
            ),
            (
                [],
                2,
                "fakerun: error: the following arguments are required: training_script, training_script_args",
            ),
            (["--start-method", "bogus", "x.py"], 2, None),
        ],
    )
    def test_errors(self, runner: Runner, args: list[str], code: int, last: str | None) -> None:
        """Exit code and final line as torchrun's; no frame of fakerun's own code."""
        res = runner.run(args)
        assert res.code == code
        frames = [line for line in res.stderr.splitlines() if line.startswith('  File "')]
        assert all("/torch/distributed/" in f or '/torchrun", line' in f for f in frames)
        if code == 2:
            assert "Traceback" not in res.stderr
        else:
            assert res.stderr.startswith("Traceback (most recent call last):\n")
        if last is not None:
            assert res.stderr.rstrip("\n").splitlines()[-1] == last


def test_ps_shows_torchrun_like_titles(runner: Runner) -> None:
    """Simulated workers appear in ps as `python -u train.py args`, children of the launcher."""
    proc = runner.start(["--nproc-per-node", "2", "--fake-max-steps", "50", "train.py", "--lr", "3e-4"])
    try:
        wait_for(lambda: len(psutil.Process(proc.pid).children()) == 2)
        time.sleep(0.3)
        out = subprocess.run(
            ["ps", "-o", "args=", "--ppid", str(proc.pid)], capture_output=True, text=True
        ).stdout
        lines = out.splitlines()
        assert len(lines) == 2
        for line in lines:
            python, rest = line.split(" ", 1)
            assert rest == "-u train.py --lr 3e-4"
            assert os.path.basename(python).startswith("python")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


class TestPresetOptions:
    """--fake-model/--fake-gpu/--fake-cluster name shipped presets; bad names end with one line."""

    def test_unknown_model(self, runner: Runner) -> None:
        """An unknown model: one line listing the valid names, exit 2, no worker started."""
        res = runner.run(["--fake-model", "gpt-17", "train.py"])
        assert res.code == 2
        (line,) = res.stderr.splitlines()
        assert line.startswith("fakerun: error: unknown model 'gpt-17' (choose from: ")
        assert "llama3-8b" in line
        assert res.stdout == ""

    def test_list_presets(self, runner: Runner) -> None:
        """--fake-list-presets needs no script and lists every kind."""
        res = runner.run(["--fake-list-presets"])
        assert res.code == 0
        kinds = [line.split()[0] for line in res.stdout.splitlines() if not line.startswith(" ")]
        assert kinds == ["models", "gpus", "clusters", "storage"]

    def test_cluster_names_the_simulated_hosts(self, runner: Runner) -> None:
        """In a local multi-node run the report names each node after the cluster's host pattern."""
        args = ["--nnodes", "2", "--nproc-per-node", "1", "--fake-cluster", "dgx-h100", "--fake-exec", FAIL]
        res = runner.run(args)
        assert res.code == 1
        hosts = re.findall(r"  host      : (\S+)", res.stderr)
        assert sorted(hosts) == ["gpu-node-001", "gpu-node-002"]
