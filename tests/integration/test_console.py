"""Worker output on the console and in the log directory, as torchrun routes it."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import stat
import struct
import termios
import time
import tty
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SCRIPTS, Runner, fakerun_exe, marked_processes

CHATTY = str(SCRIPTS / "chatty.py")
GLOG = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d{3}000 \d+ [\w/.]+:\d+\] ")


def worker_lines(text: str) -> list[str]:
    """Output lines that are not launcher log lines."""
    return [line for line in text.splitlines(keepends=True) if not GLOG.match(line)]


def chatty_lines(ranks: list[int], stream: str, prefix: str = "{lr}") -> list[str]:
    """What chatty.py prints on one stream, per rank, with an optional per-rank prefix."""
    lines = []
    for r in ranks:
        p = prefix.format(lr=r, r=r) if prefix != "{lr}" else ""
        lines += [f"{p}{stream} rank{r} line{i}\n" for i in range(3)]
    return lines


def partials(text: str) -> str:
    """The last line of stdout: the workers' partial lines, concatenated."""
    return text.splitlines(keepends=True)[-1]


def assert_same_lines_per_rank(got: list[str], want: list[str]) -> None:
    """Same lines, and each rank's lines in its own order (ranks interleave by timing)."""
    assert sorted(got) == sorted(want)
    for r in range(8):
        tag = f"rank{r} "
        assert [x for x in got if tag in x] == [x for x in want if tag in x]


def logdir_tree(root: Path) -> dict[str, tuple[str, int | None]]:
    """The log directory as {relative path with the run dir renamed: (mode, size of files)}."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = re.sub(r"^[^/]+_[a-z0-9_]{8}", "RUN", str(path.relative_to(root)))
            st = path.stat()
            out[rel] = (stat.filemode(st.st_mode), st.st_size if path.is_file() else None)
    return out


class TestDefault:
    """Without --tee or --redirects, worker output is unprefixed and partial lines stay partial."""

    def test_default(self, runner: Runner) -> None:
        """stdout and stderr of every rank reach the matching launcher stream, unchanged."""
        res = runner.run(["--standalone", "--nproc-per-node", "3", "--fake-exec", CHATTY])
        assert res.code == 0
        out = worker_lines(res.stdout)
        assert_same_lines_per_rank(out[:-1], chatty_lines([0, 1, 2], "stdout"))
        assert sorted(re.findall(r"stdout rank\d partial-no-newline", out[-1])) == [
            f"stdout rank{r} partial-no-newline" for r in range(3)
        ]
        assert not out[-1].endswith("\n")
        assert_same_lines_per_rank(worker_lines(res.stderr), chatty_lines([0, 1, 2], "stderr"))

    def test_omp_banner_is_the_only_launcher_output(self, runner: Runner) -> None:
        """On success at WARNING level, stderr carries exactly the 4-line OMP_NUM_THREADS banner."""
        res = runner.run(["--standalone", "--nproc-per-node", "2", "--fake-exec", CHATTY])
        launcher = [line for line in res.stderr.splitlines() if GLOG.match(line)]
        assert [GLOG.sub("", line) for line in launcher] == [
            "",
            "*" * 41,
            "Setting OMP_NUM_THREADS environment variable for each process to be 1 in default, to avoid your "
            "system being overloaded, please further tune the variable for optimal performance in your "
            "application as needed. ",
            "*" * 41,
        ]
        assert all(line.split()[3].startswith("torch/distributed/run.py:") for line in launcher)
        assert res.stdout.count("\n") == 6

    def test_local_ranks_filter(self, runner: Runner) -> None:
        """Ranks outside --local-ranks-filter are not shown."""
        res = runner.run(
            ["--standalone", "--nproc-per-node", "3", "--local-ranks-filter", "0,2", "--fake-exec", CHATTY]
        )
        assert res.code == 0
        assert_same_lines_per_rank(worker_lines(res.stderr), chatty_lines([0, 2], "stderr"))
        assert "rank1" not in res.stdout


class TestTee:
    """--tee prefixes each line with the role and local rank (or the prefix template)."""

    @pytest.mark.parametrize(
        ("extra_args", "env", "prefix"),
        [
            ([], {}, "[default{lr}]:"),
            (["--role", "trainer"], {}, "[trainer{lr}]:"),
            (
                [],
                {"TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": "[${role_name}|r${rank}|l${local_rank}]"},
                "[default|r{r}|l{lr}]",
            ),
        ],
    )
    def test_prefixes(self, runner: Runner, extra_args: list[str], env: dict[str, str], prefix: str) -> None:
        """Every line and every partial line carries its rank's prefix."""
        res = runner.run(
            ["--standalone", "--nproc-per-node", "3", "--tee", "3", *extra_args, "--fake-exec", CHATTY], **env
        )
        assert res.code == 0
        out = worker_lines(res.stdout)
        assert_same_lines_per_rank(out[:-1], chatty_lines([0, 1, 2], "stdout", prefix))
        assert sorted(re.findall(r"\S+?stdout rank\d partial-no-newline", out[-1])) == sorted(
            prefix.format(lr=r, r=r) + f"stdout rank{r} partial-no-newline" for r in range(3)
        )
        assert_same_lines_per_rank(worker_lines(res.stderr), chatty_lines([0, 1, 2], "stderr", prefix))

    def test_tee_with_filter_still_writes_files(self, runner: Runner) -> None:
        """Filtered-out tee'd ranks are not shown but still logged."""
        logs = runner.tmp / "logs"
        res = runner.run(
            [
                "--standalone",
                "--nproc-per-node",
                "3",
                "--tee",
                "3",
                "--local-ranks-filter",
                "0,2",
                "--log-dir",
                str(logs),
                "--fake-exec",
                CHATTY,
            ]
        )
        assert res.code == 0
        assert "rank1" not in res.stdout + res.stderr
        (run_dir,) = list(logs.iterdir())
        assert (run_dir / "attempt_0/1/stdout.log").read_text().startswith("stdout rank1 line0\n")


class TestLogDir:
    """--log-dir with --redirects: raw bytes in `<run_id>_<rand8>/attempt_N/<local_rank>/`."""

    def test_redirects_tree_and_contents(self, runner: Runner, reference: Path) -> None:
        """Same tree, modes, sizes and bytes as the recorded run; nothing on the console."""
        logs = runner.tmp / "x"
        res = runner.run(
            [
                "--standalone",
                "--nproc-per-node",
                "3",
                "--log-dir",
                str(logs),
                "--redirects",
                "3",
                "--fake-exec",
                CHATTY,
            ]
        )
        assert res.code == 0
        assert worker_lines(res.stdout) == [] and worker_lines(res.stderr) == []
        recorded = {}
        for line in (reference / "03_console/logdir_redirects3/logdir_tree.txt").read_text().splitlines():
            mode, size, rel = line.split()
            if rel != ".":
                rel = re.sub(r"^\./[^/]+_[a-z0-9_]{8}", "RUN", rel)
                recorded[rel] = (mode, int(size) if mode.startswith("-") else None)
        assert logdir_tree(logs) == recorded
        (run_dir,) = list(logs.iterdir())
        assert (run_dir / "attempt_0/2/stdout.log").read_bytes() == (
            b"stdout rank2 line0\nstdout rank2 line1\nstdout rank2 line2\nstdout rank2 partial-no-newline"
        )

    def test_duplicate_filters_with_tee(self, runner: Runner) -> None:
        """Matching tee'd lines, prefixed, go to attempt_N/filtered_{stdout,stderr}.log."""
        logs = runner.tmp / "x7"
        args = ["--standalone", "--nproc-per-node", "2", "--log-dir", str(logs), "--tee", "3"]
        args += [
            "--duplicate-stdout-filters",
            "line1,partial",
            "--duplicate-stderr-filters",
            "line2",
            "--fake-exec",
            CHATTY,
        ]
        res = runner.run(args)
        assert res.code == 0
        (run_dir,) = list(logs.iterdir())
        out = (run_dir / "attempt_0/filtered_stdout.log").read_text()
        err = (run_dir / "attempt_0/filtered_stderr.log").read_text()
        assert sorted(err.splitlines()) == ["[default0]:stderr rank0 line2", "[default1]:stderr rank1 line2"]
        assert sorted(re.findall(r"\[default\d\]:stdout rank\d [\w-]+", out)) == [
            "[default0]:stdout rank0 line1",
            "[default0]:stdout rank0 partial-no-newline",
            "[default1]:stdout rank1 line1",
            "[default1]:stdout rank1 partial-no-newline",
        ]

    def test_no_log_dir_leaves_no_temp_dir(self, runner: Runner) -> None:
        """Unlike torchrun, the default /tmp/torchelastic_* directory is removed when the job ends."""
        tmpdir = runner.tmp / "tmp"
        tmpdir.mkdir()
        res = runner.run(
            ["--nproc-per-node", "2", "--fake-exec", str(SCRIPTS / "probe.py")], TMPDIR=str(tmpdir)
        )
        assert res.code == 0
        assert list(tmpdir.iterdir()) == []


def _mask(text: str, script: str) -> list[str]:
    """Masks times, pids, uuids, ports, temp names and the script path in launcher lines."""
    text = text.replace(script, "SCRIPT").replace("/home/user/ref/scripts/train.py", "SCRIPT")
    text = re.sub(r"^([IWE])\d{4} [\d:.]+ \d+ ", r"\1 ", text, flags=re.M)
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "UUID", text)
    text = re.sub(r"(master_port=|Elapsed: )[\d.e-]+", r"\1N", text)
    text = re.sub(r"/[\w/]*torchelastic_[a-z0-9_]{8}", "LOGDIR", text)
    return [line for line in text.splitlines() if GLOG.match(line) or re.match(r"^[IWE] ", line)]


class TestLauncherVoice:
    """The launcher's own lines at INFO level and under `python -m`."""

    def test_loglevel_info_success_matches_recording(self, runner: Runner, reference: Path) -> None:
        """LOGLEVEL=INFO prints torchrun's rendezvous, config, group and success blocks, line for line."""
        probe = str(SCRIPTS / "probe.py")
        res = runner.run(["--standalone", "--nproc-per-node", "2", "--fake-exec", probe], LOGLEVEL="INFO")
        assert res.code == 0
        recorded = (reference / "07_misc/LOGLEVEL_INFO_success/console_stderr.txt").read_text()
        assert _mask(res.stderr, probe) == _mask(recorded, probe)

    def test_python_m_prints_plain_lines(self, runner: Runner) -> None:
        """Under `python -m fakerun` the banner has no glog prefix, as under torch's `python -m`."""
        import subprocess
        import sys

        env = runner.env()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "fakerun",
                "--nproc-per-node",
                "2",
                "--fake-exec",
                str(SCRIPTS / "probe.py"),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=runner.tmp,
            timeout=60,
        )
        assert proc.returncode == 0
        assert proc.stderr.splitlines()[:2] == ["", "*" * 41]


# Under a terminal: what each rank's streams are, its terminal's size before and after the outer terminal is
# resized (rank 0 waits for that), and a tqdm-style bar line on stdout once the size is taken.
TTY_SCRIPT = """\
import json, os, sys, time

r = os.environ["LOCAL_RANK"]


def size():
    return list(os.get_terminal_size(1)) if sys.stdout.isatty() else None


seen = {name: getattr(sys, name).isatty() for name in ("stdin", "stdout", "stderr")}
seen["size"] = size()
sys.stdout.write(f"rank{r} bar 1/2\\rrank{r} bar 2/2\\r\\n")
print(f"rank{r} on stderr", file=sys.stderr)
if r == "0" and seen["stdout"]:
    print("rank0 waits for a resize")
    while size() == seen["size"]:
        time.sleep(0.01)
    seen["resized"] = size()
with open(f"tty_rank{r}.json", "w") as f:
    json.dump(seen, f)
"""
# The outer terminal's rows and columns, then after the resize.
ROWS, COLS = 33, 97
NEW_ROWS, NEW_COLS = 40, 120


@dataclass
class TerminalRun:
    """A --fake-exec job under a pseudo-terminal: its exit code, the terminal's bytes, each rank's view."""

    code: int
    shown: bytes
    seen: dict[int, dict[str, object]]


def r_bar(r: int) -> str:
    """The bar line the script writes for local rank `r`."""
    return f"rank{r} bar 1/2\rrank{r} bar 2/2\r\n"


def winsize(rows: int, cols: int) -> bytes:
    """A struct winsize."""
    return struct.pack("HHHH", rows, cols, 0, 0)


def _terminal_output(master: int) -> bytes | None:
    """What the terminal shows within a second (b"" if nothing); None once the job closed it (EIO, EOF)."""
    if not select.select([master], [], [], 1.0)[0]:
        return b""
    try:
        data = os.read(master, 65536)
    except OSError:  # EIO: the job has ended and closed the terminal
        return None
    return data or None


def _fakerun_in_a_terminal(
    runner: Runner, args: list[str], cwd: Path, rows: int, cols: int, *, raw: bool = False
) -> tuple[int, int]:
    """fakerun started as a shell starts it in a terminal of rows x cols (its session, the pty as its
    controlling terminal and its three streams); (its pid, the terminal's master end)."""
    master, slave = os.openpty()
    if raw:
        tty.setraw(slave)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, winsize(rows, cols))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            os.chdir(cwd)
            os.execve(fakerun_exe(), [fakerun_exe(), *args], runner.env())
        finally:
            os._exit(127)
    os.close(slave)
    return pid, master


@pytest.fixture(scope="module")
def terminal_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TerminalRun]:
    """One job in a terminal of its own (raw, so the bytes read are the bytes written): local rank 1's stdout
    tee'd, rank 2's stderr redirected, rank 3 filtered out; the terminal is resized once rank 0 asks."""
    tmp = tmp_path_factory.mktemp("tty")
    runner = Runner(uuid.uuid4().hex, tmp)
    (tmp / "tty_script.py").write_text(TTY_SCRIPT)
    args = ["--standalone", "--nproc-per-node", "4", "--tee", "1:1", "--redirects", "2:2"]
    args += ["--local-ranks-filter", "0,1,2", "--fake-exec", "tty_script.py"]
    pid, master = _fakerun_in_a_terminal(runner, args, tmp, ROWS, COLS, raw=True)
    shown = b""
    resized = False
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            data = _terminal_output(master)
            if data is None:
                break
            shown += data
            # Once every rank on the terminal has taken its size (the bar line comes after).
            if not resized and b"rank0 waits for a resize" in shown and r_bar(2).encode() in shown:
                # As a terminal window does: a new size, and SIGWINCH to the foreground job (the launcher).
                fcntl.ioctl(master, termios.TIOCSWINSZ, winsize(NEW_ROWS, NEW_COLS))
                resized = True
    finally:
        os.close(master)
        left = marked_processes(runner.mark)
        for proc in left:
            proc.kill()
        _, status = os.waitpid(pid, 0)
    seen = {int(f.stem[len("tty_rank") :]): json.loads(f.read_text()) for f in tmp.glob("tty_rank*.json")}
    yield TerminalRun(os.waitstatus_to_exitcode(status), shown, seen)
    assert not left, f"processes left behind: {[p.pid for p in left]}"


class TestTerminal:
    """--fake-exec in a terminal: scripts see one where torchrun's would; their bytes reach it unchanged."""

    def test_each_stream_is_a_terminal_where_torchruns_would_be(self, terminal_run: TerminalRun) -> None:
        """torch gives a tee'd or redirected stream a file and a filtered-out one /dev/null; the rest is the
        launcher's terminal, at its size; stdin is always the launcher's (inherited)."""
        assert terminal_run.code == 0, terminal_run.shown
        seen = terminal_run.seen
        size = [COLS, ROWS]
        assert seen == {
            0: {"stdin": True, "stdout": True, "stderr": True, "size": size, "resized": [NEW_COLS, NEW_ROWS]},
            1: {"stdin": True, "stdout": False, "stderr": True, "size": None},
            2: {"stdin": True, "stdout": True, "stderr": False, "size": size},
            3: {"stdin": True, "stdout": False, "stderr": False, "size": None},
        }

    def test_bytes_reach_the_terminal_as_torchrun_shows_them(self, terminal_run: TerminalRun) -> None:
        """Unprefixed bar lines arrive byte for byte (`\\r` kept, no `\\r` added before `\\n`); the tee'd
        stream is prefixed line by line; a redirected or filtered-out stream shows nothing."""
        shown = terminal_run.shown
        for r in (0, 2):
            assert shown.count(f"\n{r_bar(r)}".encode()) == 1
        assert b"\n[default1]:rank1 bar 1/2\n[default1]:rank1 bar 2/2\n" in shown
        assert b"\nrank0 on stderr\n" in shown and b"\nrank1 on stderr\n" in shown
        assert b"rank2 on stderr" not in shown and b"rank3" not in shown
        assert b"\r\n" not in shown.replace(b"2/2\r\n", b"")


class TestBarResize:
    """A simulated job's pinned bar when the terminal it runs in is resized."""

    def test_bar_refits_after_the_terminal_shrinks(self, tmp_path: Path) -> None:
        """In a 200-column terminal shrunk to 80 once the bar shows (TIOCSWINSZ: the kernel sends the
        launcher SIGWINCH), every bar drawn after fits 79 columns with its count and closing `]` (not
        `Epoch 1/1:   0%|` and blanks), and the bar's last line is the worker's, formatted for 80 columns."""
        runner = Runner(uuid.uuid4().hex, tmp_path)
        args = ["--nproc-per-node", "1", "--fake-model", "gpt2-124m", "--fake-speed", "20"]
        args += ["--fake-max-steps", "40", "train.py"]
        pid, master = _fakerun_in_a_terminal(runner, args, tmp_path, 50, 200)
        shown, resized_at = b"", -1
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                data = _terminal_output(master)
                if data is None:
                    break
                shown += data
                if resized_at < 0 and b"Epoch 1/1:" in shown:
                    fcntl.ioctl(master, termios.TIOCSWINSZ, winsize(50, 80))
                    resized_at = len(shown)
        finally:
            os.close(master)
            left = marked_processes(runner.mark)
            for proc in left:
                proc.kill()
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, shown[-2000:]
        assert not left
        # What the terminal shows after the resize, cut where the launcher erases or a line ends.
        pieces = re.split(r"\r\x1b\[K|\r?\n", shown[resized_at:].decode("utf-8", "replace"))
        bars = [p for p in pieces if p.startswith("Epoch 1/1:")]
        # Bars already on their way when the signal came are as wide as before; from the launcher's first
        # redraw at the new width on, none is.
        first = next(i for i, text in enumerate(bars) if len(text) < 80)
        *pinned, last = bars[first:]
        assert len(pinned) >= 2
        for text in pinned:
            assert len(text) <= 79 and re.search(r"\| \d+/\d+ \[[^\]]+\]$", text), text
        assert len(last) == 80 and last.endswith("]") and "| 40/" in last, last
