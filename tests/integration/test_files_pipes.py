"""Files and pipes that fail under a running job: full disks, /dev/full, read-only or replaced directories,
a reader that leaves (`| head`), and the temporary log directories SIGKILLed launchers leave behind."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import fakerun
from tests.conftest import Runner, fakerun_exe

TIMEOUT = 60
MAX_HELD = 64 * 1024  # the most of an unfinished line the launcher holds back
# A short simulated job: 2 ranks of GPT-2, every step at 1000x real time.
FAST = ["--nproc-per-node", "2", "--fake-model", "gpt2-124m", "--fake-speed", "1000"]
# One that would take minutes to finish: whatever ends it early is the test's subject.
SLOW = [*FAST[:4], "--fake-speed", "20", "--fake-max-steps", "100000"]
OWN_CODE = str(Path(fakerun.__file__).resolve().parent)
# fakerun's own notices: one glog line in the launcher's shape, naming fakerun's module, no `fakerun:` word.
NOTICE = re.compile(r"^W\d{4} \d\d:\d\d:\d\d\.\d{3}000 \d+ fakerun/[\w/]+\.py:\d+\] (.*)$")
WARNING = re.compile(r"^W\d{4} [\d:.]+ \d+ \S+\] cannot write (?:the [\w ]+?) (/\S+): ([^;]+); .+$")


def warnings(stderr: str) -> list[str]:
    """The launcher's warning lines."""
    return [line for line in stderr.splitlines() if NOTICE.match(line)]


def warned_files(stderr: str) -> dict[str, str]:
    """{file named in a warning: its error}, asserting each warning is one well-formed line about one file."""
    found: dict[str, str] = {}
    for line in warnings(stderr):
        m = WARNING.match(line)
        assert m, line
        assert m.group(1) not in found, f"warned twice about {m.group(1)}:\n{stderr}"
        found[m.group(1)] = m.group(2)
    return found


def assert_no_own_traceback(text: str) -> None:
    """No frame of fakerun's code (torchrun's own report traceback is not ours)."""
    assert OWN_CODE not in text, text


def json_lines(path: Path) -> list[dict[str, object]]:
    """A JSON-lines file, every line whole."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), data[-200:]
    return [json.loads(line) for line in data.decode().splitlines()]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mounts small tmpfs file systems (a full disk, a read-only one); skips where we may not mount."""
    mounted: list[Path] = []

    def mount(name: str, *options: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        try:
            res = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", ",".join(("size=64k", *options)), "tmpfs", str(where)],
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
        except FileNotFoundError:
            pytest.skip("no mount command")
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=TIMEOUT)


def fill(directory: Path, leave: int) -> None:
    """Fills a 64 KiB tmpfs but for `leave` bytes (whole pages)."""
    (directory / "filler").write_bytes(b"\0" * (64 * 1024 - leave))


class TestMetricsFile:
    """--fake-metrics on a device or disk that refuses writes: one warning, whole records, the job goes on."""

    def test_dev_full(self, runner: Runner) -> None:
        res = runner.run([*FAST, "--fake-max-steps", "5", "--fake-metrics", "/dev/full", "train.py"])
        assert res.code == 0, res.stderr
        assert warned_files(res.stderr) == {"/dev/full": "No space left on device"}
        assert "training finished" in res.stdout
        assert_no_own_traceback(res.stderr)

    def test_full_disk_keeps_whole_records(self, runner: Runner, tmpfs: Callable[..., Path]) -> None:
        disk = tmpfs("disk")
        fill(disk, leave=8192)  # room for ~25 records: the disk fills in the middle of one
        metrics = disk / "metrics.jsonl"
        res = runner.run([*FAST, "--fake-max-steps", "100", "--fake-metrics", str(metrics), "train.py"])
        assert res.code == 0, res.stderr
        assert warned_files(res.stderr) == {str(metrics): "No space left on device"}
        records = json_lines(metrics)
        assert records[0]["event"] == "run"
        steps = [r["step"] for r in records if r["event"] == "step"]
        assert steps == list(range(1, len(steps) + 1)) and 0 < len(steps) < 100
        assert "training finished" in res.stdout
        assert_no_own_traceback(res.stderr)

    def test_fifo_without_reader_is_one_line(self, runner: Runner) -> None:
        fifo = runner.tmp / "metrics.fifo"
        os.mkfifo(fifo)
        res = runner.run([*FAST, "--fake-max-steps", "5", "--fake-metrics", str(fifo), "train.py"])
        assert res.code == 1
        assert res.stderr.splitlines() == [
            f"fakerun: error: cannot write the metrics file {fifo}: No such device or address"
        ]

    def test_fifo_reader_that_stops_reading(self, runner: Runner) -> None:
        """The job does not wait for a metrics reader: when the FIFO is full, the file is dropped."""
        fifo = runner.tmp / "metrics.fifo"
        os.mkfifo(fifo)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open, but reads nothing until the job ends
        try:
            res = runner.run([*FAST, "--fake-max-steps", "400", "--fake-metrics", str(fifo), "train.py"])
            data = b""
            while chunk := os.read(reader, 65536):
                data += chunk
        except BlockingIOError:
            pass
        finally:
            os.close(reader)
        assert res.code == 0, res.stderr
        assert warned_files(res.stderr) == {str(fifo): "Resource temporarily unavailable"}
        assert "training finished" in res.stdout
        assert data.endswith(b"\n") and all(json.loads(line) for line in data.splitlines())


class TestFileSizeLimit:
    """RLIMIT_FSIZE (EFBIG, as from a quota) on every file the launcher writes, in one job."""

    def test_every_file_stops_alone_and_the_job_finishes(self, runner: Runner) -> None:
        limit = 6000
        logs = runner.tmp / "logs"
        metrics = runner.tmp / "metrics.jsonl"

        def limited() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        args = [*FAST, "--fake-max-steps", "60", "--fake-metrics", str(metrics)]
        proc = subprocess.run(
            [fakerun_exe(), *args, "--log-dir", str(logs), "--tee", "3", "train.py"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=runner.env(),
            cwd=runner.tmp,
            preexec_fn=limited,
        )
        assert proc.returncode == 0, proc.stderr
        warned = warned_files(proc.stderr)
        assert set(warned.values()) == {"File too large"}, warned
        names = {Path(path).name for path in warned}
        # The metrics file, one log file of the attempt (rank 0's outgrow the limit: one warning per attempt)
        # and a rank's copy for fakerun-tail (one warning for all of them).
        assert "metrics.jsonl" in names and len(names & {"stdout.log", "stderr.log"}) == 1, warned
        assert len(warned) == 3, warned
        assert any(re.fullmatch(r"rank-\d{5}\.log", name) for name in names), warned
        assert all(path.startswith(str(runner.tmp)) for path in warned)
        assert len(json_lines(metrics)) > 1 and metrics.stat().st_size <= limit
        assert "training finished" in proc.stdout  # tee'd output still reaches the console in full
        assert_no_own_traceback(proc.stderr)


class TestStateDir:
    """The state directory (FAKERUN_STATE_DIR) of fakerun-tail and fakerun-smi, when it cannot be written."""

    def test_read_only(self, runner: Runner, tmpfs: Callable[..., Path]) -> None:
        state = tmpfs("state", "ro")
        res = runner.run([*FAST, "--fake-max-steps", "5", "train.py"], FAKERUN_STATE_DIR=str(state))
        assert res.code == 0, res.stderr
        assert warned_files(res.stderr) == {str(state): "Read-only file system"}
        assert "fakerun-tail and fakerun-smi" in warnings(res.stderr)[0]
        assert "training finished" in res.stdout
        assert_no_own_traceback(res.stderr)

    def test_file_in_the_way(self, runner: Runner) -> None:
        blocker = runner.tmp / "blocker"
        blocker.write_text("not a directory\n")
        state = blocker / "state"
        res = runner.run([*FAST, "--fake-max-steps", "5", "train.py"], FAKERUN_STATE_DIR=str(state))
        assert res.code == 0, res.stderr
        assert warned_files(res.stderr) == {str(state): "Not a directory"}
        assert "training finished" in res.stdout

    def test_full_after_start(self, runner: Runner, tmpfs: Callable[..., Path]) -> None:
        """One page left: the job's description fits, its state file and output copies do not."""
        state = tmpfs("state")
        fill(state, leave=4096)
        res = runner.run([*FAST, "--fake-max-steps", "5", "train.py"], FAKERUN_STATE_DIR=str(state))
        assert res.code == 0, res.stderr
        warned = warned_files(res.stderr)
        names = sorted(Path(path).name for path in warned)
        assert len(names) == 2 and names[0].startswith("job-") and names[0].endswith(".json"), warned
        assert re.fullmatch(r"rank-\d{5}\.log", names[1]), warned
        assert set(warned.values()) == {"No space left on device"}
        assert "training finished" in res.stdout
        assert sorted(p.name for p in state.iterdir()) == ["filler"]  # nothing of the job is left
        assert_no_own_traceback(res.stderr)


RESTART_SCRIPT = """
import os, sys, time
from pathlib import Path
error_file = Path(os.environ["TORCHELASTIC_ERROR_FILE"])
run_dir = error_file.parents[2]
print(f"rank{os.environ['RANK']} attempt{os.environ['TORCHELASTIC_RESTART_COUNT']}", flush=True)
if os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
    if os.environ["RANK"] == "1":
        # Before the restart, the run's log directory is replaced by a file.
        time.sleep(0.3)
        for sub in sorted(run_dir.rglob("*"), reverse=True):
            sub.rmdir() if sub.is_dir() else sub.unlink()
        run_dir.rmdir()
        run_dir.write_text("in the way\\n")
        sys.exit(3)
    time.sleep(30)
"""


class TestLogDir:
    """--log-dir files when the directory they belong in is gone."""

    def test_run_dir_replaced_by_a_file_before_a_restart(self, runner: Runner) -> None:
        script = runner.tmp / "restart.py"
        script.write_text(RESTART_SCRIPT)
        logs = runner.tmp / "logs"
        res = runner.run(
            [
                "--nproc-per-node",
                "2",
                "--max-restarts",
                "1",
                "--redirects",
                "3",
                "--log-dir",
                str(logs),
                "--fake-exec",
                str(script),
            ]
        )
        assert res.code == 0, res.stderr
        warned = warned_files(res.stderr)
        assert len(warned) == 1, res.stderr
        [(path, error)] = warned.items()
        assert re.search(r"/attempt_1/0$", path) and error == "Not a directory", res.stderr
        assert "the job carries on" in warnings(res.stderr)[0]
        assert_no_own_traceback(res.stderr)

    def test_unwritable_log_dir_is_one_line(self, runner: Runner, tmpfs: Callable[..., Path]) -> None:
        logs = tmpfs("logs", "ro")
        res = runner.run([*FAST, "--fake-max-steps", "5", "--log-dir", str(logs), "train.py"])
        assert res.code == 1
        assert res.stderr.splitlines()[-1] == (
            f"fakerun: error: cannot create the log directory in {logs}: Read-only file system"
        )
        assert_no_own_traceback(res.stderr)


def pipeline(runner: Runner, args: list[str], lines: int = 3) -> tuple[int, str, str]:
    """`fakerun args | head -<lines>`: the launcher's exit code, head's output and the launcher's stderr."""
    launcher = subprocess.Popen(
        [fakerun_exe(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=runner.env(),
        cwd=runner.tmp,
    )
    assert launcher.stdout is not None and launcher.stderr is not None
    head = subprocess.Popen(["head", f"-{lines}"], stdin=launcher.stdout, stdout=subprocess.PIPE)
    launcher.stdout.close()  # head holds the only read end, as in a shell pipeline
    shown, _ = head.communicate(timeout=TIMEOUT)
    try:
        err = launcher.stderr.read()  # to EOF: the launcher and every worker have closed it
        code = launcher.wait(timeout=TIMEOUT)
    finally:
        launcher.kill()
        launcher.wait()
    return code, shown.decode(), err.decode()


class TestBrokenPipe:
    """The reader of the launcher's stdout or stderr leaves: as under torchrun, whose workers inherit them."""

    def test_head_ends_the_job(self, runner: Runner) -> None:
        code, shown, err = pipeline(runner, [*SLOW, "train.py"])
        assert len(shown.splitlines()) == 3
        assert code == 1, err
        # A worker's own write failed: it died of BrokenPipeError as a Python script does...
        assert re.search(r"^\[rank\d\]: BrokenPipeError: \[Errno 32\] Broken pipe$", err, re.M), err
        # ...and the launcher reported it as torchrun does.
        assert "torch.distributed.elastic.multiprocessing.errors.ChildFailedError" in err
        assert re.search(r"exitcode  : 1 \(pid: \d+\) $", err, re.M), err
        assert_no_own_traceback(err)
        assert warnings(err) == []

    def test_teed_output_goes_on_as_under_torchrun(self, runner: Runner) -> None:
        """With --tee, workers write to files (torchrun tails them to the console): the pipe is not theirs."""
        logs = runner.tmp / "logs"
        code, shown, err = pipeline(
            runner, [*FAST, "--fake-max-steps", "20", "--tee", "3", "--log-dir", str(logs), "train.py"]
        )
        assert len(shown.splitlines()) == 3
        assert code == 0, err
        [rank0] = logs.glob("*/attempt_0/0/stdout.log")
        assert "training finished" in rank0.read_text()
        assert_no_own_traceback(err)

    def test_stderr_gone(self, runner: Runner) -> None:
        """The launcher's stderr reader leaves: no traceback (hooks record it: none could be seen), exit 1."""
        hooks = runner.tmp / "hooks.txt"
        out = runner.tmp / "out.txt"
        wrapper = (
            "import sys, traceback\n"
            f"log = {str(hooks)!r}\n"
            "def hook(t, v, tb):\n"
            "    open(log, 'a').write(''.join(traceback.format_exception(t, v, tb)))\n"
            "def unraisable(u):\n"
            "    open(log, 'a').write(f'unraisable: {u.exc_value!r} in {u.object!r}\\n')\n"
            "sys.excepthook, sys.unraisablehook = hook, unraisable\n"
            "from fakerun.main import main\n"
            "sys.argv[0] = 'fakerun'\n"
            "sys.exit(main())\n"
        )
        with out.open("wb") as stdout:
            launcher = subprocess.Popen(
                [sys.executable, "-c", wrapper, *SLOW, "train.py"],
                stdout=stdout,
                stderr=subprocess.PIPE,
                env=runner.env(),
                cwd=runner.tmp,
            )
            assert launcher.stderr is not None
            try:
                assert launcher.stderr.readline()  # the job has started
                launcher.stderr.close()
                code = launcher.wait(timeout=TIMEOUT)
            finally:
                launcher.kill()
                launcher.wait()
        assert code == 1  # a worker failed (its stderr is gone too); not 120, a failed flush at exit
        assert not hooks.exists(), hooks.read_text()
        assert "Training summary" not in out.read_text()


ENDLESS_LINE = """
import os, sys, time
if os.environ["RANK"] == "0":
    for _ in range(32):  # 2 MiB without a newline...
        sys.stdout.write("x" * 65536)
    deadline = time.time() + 60
    while not os.path.exists("go") and time.time() < deadline:  # ...which the test sees before the line ends
        time.sleep(0.01)
    sys.stdout.write("\\n")
else:
    for i in range(50):
        print(f"rank1 line{i}")
        time.sleep(0.002)
"""


def test_line_without_end_goes_out_in_pieces(runner: Runner) -> None:
    """A worker's endless line is not held back whole (the launcher holds at most 64 KiB of it): it reaches
    stdout while still unfinished, every byte in order, and another rank's lines are never cut into it."""
    script = runner.tmp / "endless.py"
    script.write_text(ENDLESS_LINE)
    proc = runner.start(["--nproc-per-node", "2", "--fake-exec", str(script)])
    assert proc.stdout is not None
    early = b""
    deadline = time.monotonic() + TIMEOUT
    try:
        while early.count(b"x") < 2 * 1024 * 1024 - MAX_HELD:
            assert time.monotonic() < deadline, "the unfinished line was held back"
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, "stdout closed before the line went out"
            early += chunk
        (runner.tmp / "go").touch()
        rest, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()  # its workers die with it (parent-death signal)
            proc.communicate()
    assert proc.returncode == 0, err
    lines = (early.decode() + rest).splitlines()
    rank1 = [line for line in lines if line.startswith("rank1")]
    assert sorted(rank1) == sorted(f"rank1 line{i}" for i in range(50))
    xs = [line for line in lines if not line.startswith("rank1")]
    assert set("".join(xs)) == {"x"} and sum(map(len, xs)) == 32 * 65536


@pytest.mark.parametrize("args", [["--fake-list-presets"], ["--help"]])
def test_listing_into_a_closed_pipe_is_quiet(runner: Runner, args: list[str]) -> None:
    """Commands that only print: a reader gone before they write ends them without a word on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [fakerun_exe(), *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=TIMEOUT,
            env=runner.env(),
            cwd=runner.tmp,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode in (0, 1)  # argparse's help ignores a failed write (as torchrun's does)


@pytest.mark.parametrize("closed", [1, 2])
def test_stdout_or_stderr_closed_from_the_start(runner: Runner, closed: int) -> None:
    """`fakerun ... >&-` or `2>&-`: what would go there goes nowhere, as under torchrun; the job runs."""
    proc = subprocess.run(
        [fakerun_exe(), *FAST, "--fake-max-steps", "3", "train.py"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=runner.env(),
        cwd=runner.tmp,
        preexec_fn=lambda: os.close(closed),
    )
    assert proc.returncode == 0, proc.stderr
    if closed == 1:
        assert "Epoch 1/1" in proc.stderr  # rank 0's bar, on the stream that is still open
        assert_no_own_traceback(proc.stderr)
    else:
        assert "training finished" in proc.stdout


def launcher_dirs(tmp: Path) -> set[str]:
    """The `torchelastic_*` directories in a temporary directory."""
    return {p.name for p in tmp.glob("torchelastic_*")}


def wait_for(check: Callable[[], bool], what: str) -> None:
    """Polls `check` (bounded, so that a failure cannot hang the suite)."""
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class TestTempLogDirs:
    """A SIGKILLed launcher's temporary log directory is removed by the next job, and nothing else is."""

    def test_dead_launchers_dir_pruned_live_and_foreign_kept(self, runner: Runner) -> None:
        tmp = runner.tmp / "tmp"
        tmp.mkdir()
        env = {"TMPDIR": str(tmp)}
        foreign = tmp / "torchelastic_realtorch"  # a real torchrun's: no owner marker, never removed
        (foreign / "none_abcdefgh" / "attempt_0").mkdir(parents=True)
        live = runner.start([*SLOW, "train.py"], **env)
        killed: subprocess.Popen[str] | None = None
        try:
            wait_for(lambda: len(launcher_dirs(tmp)) == 2, "the live job's log directory")
            live_dir = launcher_dirs(tmp) - {foreign.name}
            killed = runner.start([*SLOW, "train.py"], **env)
            wait_for(lambda: len(launcher_dirs(tmp)) == 3, "the second job's log directory")
            killed_dir = launcher_dirs(tmp) - live_dir - {foreign.name}
            # Its owner marker is written before the launcher's first line: wait for that, then kill it.
            assert killed.stderr is not None
            assert killed.stderr.readline()
            killed.send_signal(signal.SIGKILL)
            assert killed.wait(timeout=TIMEOUT) == -signal.SIGKILL
            assert launcher_dirs(tmp) == {foreign.name, *live_dir, *killed_dir}  # left behind

            res = runner.run([*FAST, "--fake-max-steps", "2", "train.py"], **env)
            assert res.code == 0, res.stderr
            assert launcher_dirs(tmp) == {foreign.name, *live_dir}
        finally:
            live.send_signal(signal.SIGTERM)
            live.communicate(timeout=TIMEOUT)
            if killed is not None and killed.poll() is None:
                killed.kill()
                killed.communicate(timeout=TIMEOUT)
        assert launcher_dirs(tmp) == {foreign.name}  # the live job removed its own at its end
        assert os.path.isdir(foreign / "none_abcdefgh" / "attempt_0")
