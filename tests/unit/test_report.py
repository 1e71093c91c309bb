"""Tests for fakerun.launcher.report against literal strings and torchrun 2.13's recorded failures."""

from __future__ import annotations

import calendar
import json
import re
import time
from pathlib import Path

import pytest

from fakerun.launcher import report
from fakerun.launcher.report import FailureRecord
from tests.conftest import reference_dir

REF = reference_dir()
needs_reference = pytest.mark.skipif(
    not REF.is_dir(), reason=f"torchrun reference recordings not found at {REF} (set FAKERUN_REFERENCE_DIR)"
)

RECORDED_ARGV0 = "/opt/venv/bin/torchrun"
RECORDED_SITE = "/opt/venv/lib/python3.11/site-packages"
LAUNCHER_TRACEBACK = f'Traceback (most recent call last):\n  File "{RECORDED_ARGV0}", line 8, in <module>\n'
BLOCK_START = f"{report.CHILD_FAILED_ERROR}: \n"
URL_HINT = "To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html"


def _utc(y: int, mo: int, d: int, h: int, mi: int, s: int) -> float:
    return float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)))


def rec(rank: int, pid: int, exitcode: int, when: float, **kw: object) -> FailureRecord:
    """A failure on host `localhost` whose local rank equals its rank."""
    return FailureRecord(rank, rank, pid, exitcode, when, "localhost", **kw)  # type: ignore[arg-type]


def launcher_tail(text: str) -> str:
    """Everything from the launcher's own traceback (the last one starting at torchrun) to the end."""
    start = text.rfind(LAUNCHER_TRACEBACK)
    assert start >= 0, "no launcher traceback in this recording"
    return text[start:]


def error_files(case_dir: Path) -> dict[str, dict[str, object]]:
    """error.json contents from a recorded logdir_file_contents.txt, keyed by path relative to the log dir."""
    contents = case_dir / "logdir_file_contents.txt"
    if not contents.exists():
        return {}
    found: dict[str, dict[str, object]] = {}
    for match in re.finditer(r"^===== \./(\S+/error\.json)\n(.*?)<EOF>", contents.read_text(), re.M | re.S):
        found[match.group(1)] = json.loads(match.group(2))
    return found


def parse_block(block: str, case_dir: Path) -> tuple[str, FailureRecord, list[FailureRecord]]:
    """(name, root, others) from a recorded ChildFailedError block; needs TZ=UTC.

    Failures with an error file get a deliberately wrong record time so the error file's timestamp must win.
    """
    payloads = error_files(case_dir)
    lines = block.split("\n")
    name = lines[2].removesuffix(" FAILED")
    entries: list[dict[str, str]] = []
    for line in lines:
        if re.fullmatch(r"\[\d+\]:", line):
            entries.append({})
        elif entries and line.startswith("  ") and line[2:12].strip() and line[12:14] == ": ":
            entries[-1][line[2:12].strip()] = line[14:]
    records: list[FailureRecord] = []
    for e in entries:
        when = time.mktime(time.strptime(e["time"], "%Y-%m-%d_%H:%M:%S")) + 0.75
        rank, local_rank = map(int, re.fullmatch(r"(\d+) \(local_rank: (\d+)\)", e["rank"]).groups())  # type: ignore[union-attr]
        exitcode, pid = map(int, re.match(r"(-?\d+) \(pid: (\d+)\)", e["exitcode"]).groups())  # type: ignore[union-attr]
        error_file: str | None = None
        payload: dict[str, object] | None = None
        if e["error_file"] != report.NOT_AVAILABLE:
            error_file = e["error_file"]
            payload = next(p for rel, p in payloads.items() if error_file.endswith("/" + rel))
            when += 3600
        records.append(FailureRecord(rank, local_rank, pid, exitcode, when, e["host"], error_file, payload))
    # The recorded order is: others [1], [2], ... then the root cause [0].
    return name, records[-1], records[:-1]


FAILURE_CASES = [
    "04_failure/exit3",
    "04_failure/exit3_max_restarts2",
    "04_failure/exit3_max_restarts1_LOGLEVEL_INFO",
    "04_failure/raise_no_record",
    "04_failure/raise_with_record",
    "04_failure/raise_record_max_restarts1_logdir",
    "04_failure/worker_killed_SIGKILL",
    "04_failure/nproc1_exit3",
    "07_misc/monitor_interval_2_exit3",
    "07_misc/process_group_gloo_exception",
]

SIGNAL_CASES = [
    "05_signals/SIGINT",
    "05_signals/SIGINT_plain_worker_no_handler",
    "05_signals/SIGTERM",
    "05_signals/SIGTERM_workers_ignore_shutdown_timeout3",
    "05_signals/SIGUSR1_with_signals_to_handle",
]


class TestChildFailedErrorBlock:
    """The block reproduces torch's ChildFailedError message field by field."""

    def test_exit3_literal(self, utc: None) -> None:
        """One worker exits 3 and the other is SIGTERMed: the exact block, width capped at 60."""
        when = _utc(2026, 11, 22, 5, 5, 11) + 0.5
        text = report.format_child_failed_error("/w/fail.py", rec(1, 11, 3, when), [rec(0, 10, -15, when)])
        border, section = "=" * 60, "-" * 60
        assert text == (
            f"{report.CHILD_FAILED_ERROR}: \n{border}\n/w/fail.py FAILED\n{section}\nFailures:\n"
            "[1]:\n  time      : 2026-11-22_05:05:11\n  host      : localhost\n"
            "  rank      : 0 (local_rank: 0)\n"
            "  exitcode  : -15 (pid: 10)  (SIGTERM)\n  error_file: <N/A>\n"
            "  traceback : Signal 15 (SIGTERM) received by PID 10\n"
            f"{section}\nRoot Cause (first observed failure):\n"
            "[0]:\n  time      : 2026-11-22_05:05:11\n  host      : localhost\n"
            "  rank      : 1 (local_rank: 1)\n"
            f"  exitcode  : 3 (pid: 11) \n  error_file: <N/A>\n  traceback : {URL_HINT}\n{border}\n"
        )

    def test_no_other_failures(self, utc: None) -> None:
        """A single failure lists `  <NO_OTHER_FAILURES>`."""
        text = report.format_child_failed_error("a.py", rec(0, 5, 3, 0.0), [])
        assert "\nFailures:\n  <NO_OTHER_FAILURES>\n" + "-" * 60 + "\n" in text

    def test_signal_root_sets_a_narrower_width(self, utc: None) -> None:
        """Without a long line the rules are as wide as the widest line, here the signal traceback."""
        text = report.format_child_failed_error("a.py", rec(1, 7, -9, 0.0), [rec(0, 6, -15, 0.0)])
        widest = "  traceback : Signal 15 (SIGTERM) received by PID 6"
        assert text.split("\n")[1] == "=" * len(widest)
        assert "  exitcode  : -9 (pid: 7)  (SIGKILL)\n" in text
        assert "  traceback : Signal 9 (SIGKILL) received by PID 7\n" in text

    def test_long_title_widens_the_rules(self, utc: None) -> None:
        """The title counts towards the width (still capped at 60)."""
        name = "/" + "x" * 52
        text = report.format_child_failed_error(name, rec(0, 7, -9, 0.0), [])
        assert text.split("\n")[1] == "=" * len(name + " FAILED")
        text = report.format_child_failed_error("/" + "y" * 80, rec(0, 7, -9, 0.0), [])
        assert text.split("\n")[1] == "=" * 60

    def test_sigsegv(self, utc: None) -> None:
        """A segfault shows -11 and SIGSEGV."""
        text = report.format_child_failed_error("a.py", rec(0, 7, -11, 0.0), [])
        assert "  exitcode  : -11 (pid: 7)  (SIGSEGV)\n" in text
        assert "  traceback : Signal 11 (SIGSEGV) received by PID 7\n" in text

    def test_unknown_signal(self, utc: None) -> None:
        """An unknown signal number has no name suffix and `<N/A>` in the traceback, as in torch."""
        text = report.format_child_failed_error("a.py", rec(0, 7, -99, 0.0), [])
        assert "  exitcode  : -99 (pid: 7) \n" in text
        assert "  traceback : Signal 99 (<N/A>) received by PID 7\n" in text

    def test_local_time(self, utc: None) -> None:
        """The time is local, seconds truncated."""
        text = report.format_child_failed_error("a.py", rec(0, 7, 1, _utc(2030, 1, 2, 3, 4, 5) + 0.99), [])
        assert "  time      : 2030-01-02_03:04:05\n" in text

    def test_error_file_with_callstack(self, utc: None) -> None:
        """py_callstack is indented under `traceback :` and its timestamp replaces the record time."""
        payload: dict[str, object] = {
            "message": {
                "message": "ValueError: boom",
                "extraInfo": {
                    "py_callstack": "Traceback:\n  x\nValueError: boom\n",
                    "timestamp": "1893456000",
                },
            }
        }
        root = rec(1, 7, 1, _utc(2031, 5, 5, 5, 5, 5), error_file="/l/e.json", error_payload=payload)
        text = report.format_child_failed_error("a.py", root, [])
        assert text.endswith(
            "  time      : 2030-01-01_00:00:00\n  host      : localhost\n  rank      : 1 (local_rank: 1)\n"
            "  exitcode  : 1 (pid: 7) \n  error_file: /l/e.json\n"
            "  traceback : Traceback:\n    x\n  ValueError: boom\n  \n" + "=" * 33 + "\n"
        )

    def test_error_file_without_callstack_uses_message(self, utc: None) -> None:
        """Without py_callstack the message is shown; without both, `<N/A>`."""
        payload: dict[str, object] = {"message": {"message": "boom", "extraInfo": {"timestamp": "0"}}}
        text = report.format_child_failed_error(
            "a.py", rec(0, 7, 1, 0.0, error_file="/e", error_payload=payload), []
        )
        assert "  traceback : boom\n" in text
        payload = {"message": {"extraInfo": {"timestamp": "0"}}}
        text = report.format_child_failed_error(
            "a.py", rec(0, 7, 1, 0.0, error_file="/e", error_payload=payload), []
        )
        assert "  traceback : <N/A>\n" in text

    def test_error_file_with_string_message(self, utc: None) -> None:
        """A plain-string message is shown as is, dated by the file's top-level timestamp."""
        payload: dict[str, object] = {"message": "line1\nline2", "timestamp": 1893456000}
        text = report.format_child_failed_error(
            "a.py", rec(0, 7, 1, 0.0, error_file="/e", error_payload=payload), []
        )
        assert "  time      : 2030-01-01_00:00:00\n" in text
        assert "  traceback : line1\nline2\n" in text

    def test_error_file_path_without_contents(self, utc: None) -> None:
        """A path whose contents could not be read shows `<N/A>` and the default hint, like a missing file."""
        text = report.format_child_failed_error("a.py", rec(0, 7, 1, 0.0, error_file="/missing.json"), [])
        assert "  error_file: <N/A>\n" in text and f"  traceback : {URL_HINT}\n" in text

    def test_payload_timestamp_that_is_not_a_number(self, utc: None) -> None:
        """A malformed timestamp falls back to the record's time instead of failing."""
        payload: dict[str, object] = {"message": {"message": "m", "extraInfo": {"timestamp": "soon"}}}
        root = rec(0, 7, 1, _utc(2029, 9, 9, 9, 9, 9), error_file="/e", error_payload=payload)
        assert "  time      : 2029-09-09_09:09:09\n" in report.format_child_failed_error("a.py", root, [])


class TestExceptionLines:
    """The last line torchrun prints for each way the launcher ends."""

    def test_signal_exception(self) -> None:
        """SignalException names the launcher pid and the signal number."""
        assert report.signal_exception_line(18634, 15) == (
            "torch.distributed.elastic.multiprocessing.api.SignalException: Process 18634 got signal: 15\n"
        )

    def test_rendezvous_timeouts(self) -> None:
        """The c10d timeout has no message; the static one counts the clients that joined."""
        assert (
            report.rendezvous_timeout_line()
            == "torch.distributed.elastic.rendezvous.api.RendezvousTimeoutError\n"
        )
        assert report.dist_store_timeout_line(6, 1, 2) == (
            "torch.distributed.DistStoreError: "
            "Timed out after 6 seconds waiting for clients. 1/2 clients joined.\n"
        )


class TestLauncherTraceback:
    """The launcher's own traceback keeps Python 3.11's frames and carets with the caller's paths."""

    def test_paths_are_substituted(self) -> None:
        """argv0 and site-packages replace the recorded paths; the caret lines stay."""
        text = report.launcher_traceback(
            "child_failed", "/usr/bin/fakerun", "/usr/lib/python3.12/site-packages/"
        )
        # Run as fakerun, the frame names torchrun beside it; any other name (a torchrun shim) as it is.
        assert text.startswith(
            'Traceback (most recent call last):\n  File "/usr/bin/torchrun", line 8, in <module>\n'
        )
        shim = report.launcher_traceback("child_failed", "/home/u/.local/bin/torchrun", "/s")
        assert '  File "/home/u/.local/bin/torchrun", line 8, in <module>\n' in shim
        assert "/opt/venv" not in text
        assert (
            '  File "/usr/lib/python3.12/site-packages/torch/distributed/run.py", line 1028, in main\n'
            in text
        )
        assert "    sys.exit(main())\n             ^^^^^^\n" in text
        assert text.endswith("    raise ChildFailedError(\n")

    def test_signal_kind_ends_in_the_handler(self) -> None:
        """The signal traceback ends in torch's _terminate_process_handler."""
        text = report.launcher_traceback("signal", "t", "/s")
        assert text.endswith(
            '    raise SignalException(f"Process {os.getpid()} got signal: {sigval}", sigval=sigval)\n'
        )


class TestExceptionText:
    """A bad option's exception as Python 3.11 prints it from torch 2.13's run.py (config_from_args)."""

    def test_chained_value_error_of_nproc_per_node(self) -> None:
        """`--nproc-per-node foo`: int()'s ValueError, then torch's raised from it, each with its frames."""
        site = "/s/site-packages/torch/distributed"
        text = report.exception_text(
            "ValueError: Unsupported nproc_per_node value: foo",
            "nproc_unsupported",
            "/v/bin/torchrun",
            "/s/site-packages",
            ("nproc_int", "ValueError: invalid literal for int() with base 10: 'foo'"),
        )
        # torch's determine_local_world_size: `return int(nproc_per_node)` (line 748) in a try whose except
        # raises `ValueError(\n f"Unsupported ..."\n) from e` (line 776); config_from_args calls it at 871.
        assert text == (
            "Traceback (most recent call last):\n"
            f'  File "{site}/run.py", line 748, in determine_local_world_size\n'
            "    return int(nproc_per_node)\n"
            "           ^^^^^^^^^^^^^^^^^^^\n"
            "ValueError: invalid literal for int() with base 10: 'foo'\n"
            "\n"
            "The above exception was the direct cause of the following exception:\n"
            "\n"
            "Traceback (most recent call last):\n"
            '  File "/v/bin/torchrun", line 8, in <module>\n'
            "    sys.exit(main())\n"
            "             ^^^^^^\n"
            f'  File "{site}/elastic/multiprocessing/errors/__init__.py", line 367, in wrapper\n'
            "    return f(*args, **kwargs)\n"
            "           ^^^^^^^^^^^^^^^^^^\n"
            f'  File "{site}/run.py", line 1028, in main\n'
            "    run(args)\n"
            f'  File "{site}/run.py", line 1018, in run\n'
            "    config, cmd, cmd_args = config_from_args(args)\n"
            "                            ^^^^^^^^^^^^^^^^^^^^^^\n"
            f'  File "{site}/run.py", line 871, in config_from_args\n'
            "    nproc_per_node = determine_local_world_size(args.nproc_per_node)\n"
            "                     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
            f'  File "{site}/run.py", line 776, in determine_local_world_size\n'
            "    raise ValueError(\n"
            "ValueError: Unsupported nproc_per_node value: foo\n"
        )

    def test_nnodes_frames(self) -> None:
        """The range check is a multi-line raise (no carets); the format error's raise is marked up to its
        trailing comment; a bad number is int()'s error in parse_min_max_nnodes."""
        ranged = report.exception_text("AssertionError: m", "nnodes_range", "t", "/s")
        assert ranged.endswith(
            ", line 855, in config_from_args\n    raise AssertionError(\nAssertionError: m\n"
        )
        assert "The above exception" not in ranged
        raise_stmt = """raise RuntimeError(f'nnodes={nnodes} is not in "MIN:MAX" format')"""
        fmt = report.exception_text("RuntimeError: r", "nnodes_format", "t", "/s")
        assert fmt.endswith(f"    {raise_stmt}  # noqa: E231\n    {'^' * len(raise_stmt)}\nRuntimeError: r\n")
        bad_max = report.exception_text("ValueError: v", "nnodes_max_int", "t", "/s")
        assert bad_max.endswith(
            "    min_nodes, max_nodes = parse_min_max_nnodes(args.nnodes)\n"
            f"    {' ' * len('min_nodes, max_nodes = ')}{'^' * len('parse_min_max_nnodes(args.nnodes)')}\n"
            '  File "/s/torch/distributed/run.py", line 738, in parse_min_max_nnodes\n'
            "    max_nodes = int(arr[1])\n"
            "                ^^^^^^^^^^^\n"
            "ValueError: v\n"
        )

    def test_no_cuda_is_raised_from_int(self) -> None:
        """`gpu` without CUDA: the same int() cause, then the one-line raise at line 755 (no carets)."""
        text = report.exception_text(
            "ValueError: Cuda is not available.", "nproc_no_cuda", "t", "/s", ("nproc_int", "ValueError: c")
        )
        assert text.count("Traceback (most recent call last):\n") == 2
        assert text.endswith(
            ", line 755, in determine_local_world_size\n"
            '    raise ValueError("Cuda is not available.") from e\n'
            "ValueError: Cuda is not available.\n"
        )


class TestReadErrorFile:
    """read_error_file is tolerant: anything but a JSON object gives None."""

    def test_reads_an_object(self, tmp_path: Path) -> None:
        """A torch error.json is returned as a dict."""
        path = tmp_path / "error.json"
        path.write_text('{"message": {"message": "m", "extraInfo": {"timestamp": "1"}}}')
        assert report.read_error_file(str(path)) == {
            "message": {"message": "m", "extraInfo": {"timestamp": "1"}}
        }

    def test_missing_invalid_or_not_an_object(self, tmp_path: Path) -> None:
        """A missing file, a directory, bad JSON, bad UTF-8 or a JSON list give None."""
        bad = tmp_path / "bad.json"
        bad.write_text("{not json")
        binary = tmp_path / "bin.json"
        binary.write_bytes(b"\xff\xfe\x00")
        listed = tmp_path / "list.json"
        listed.write_text("[1]")
        for path in (tmp_path / "missing.json", tmp_path, bad, binary, listed):
            assert report.read_error_file(str(path)) is None


@needs_reference
class TestAgainstRecordings:
    """Rendering the recorded failures gives their console bytes."""

    @pytest.mark.parametrize("case", FAILURE_CASES)
    def test_child_failed_tail(self, case: str, utc: None) -> None:
        """The launcher traceback and the ChildFailedError block equal the end of the recorded stderr."""
        case_dir = REF / case
        tail = launcher_tail((case_dir / "console_stderr.txt").read_text())
        block = tail[tail.index(BLOCK_START) :]
        name, root, others = parse_block(block, case_dir)
        expected = report.launcher_traceback("child_failed", RECORDED_ARGV0, RECORDED_SITE)
        expected += report.format_child_failed_error(name, root, others)
        assert expected == tail

    def test_report_block_whitespace(self, utc: None) -> None:
        """exit3's block matches report_block_cat-A.txt, where every line end is shown as `$`."""
        case_dir = REF / "04_failure/exit3"
        shown = (case_dir / "report_block_cat-A.txt").read_text()
        block = shown.replace("$\n", "\n")
        name, root, others = parse_block(block, case_dir)
        assert report.format_child_failed_error(name, root, others).replace("\n", "$\n") == shown

    def test_sigkill_block_is_55_wide(self, utc: None) -> None:
        """worker_killed_SIGKILL has no long line, so its rules are 55 characters."""
        when = _utc(2026, 11, 22, 5, 6, 56)
        text = report.format_child_failed_error(
            "/home/user/ref/scripts/fail.py", rec(1, 16254, -9, when), [rec(0, 16253, -15, when)]
        )
        assert text.split("\n")[1] == "=" * 55
        recorded = (REF / "04_failure/worker_killed_SIGKILL/console_stderr.txt").read_text()
        assert recorded.endswith(text)

    @pytest.mark.parametrize("case", SIGNAL_CASES)
    def test_signal_tail(self, case: str) -> None:
        """A launcher killed by a handled signal prints the signal traceback and SignalException."""
        text = (REF / case / "console_stderr.txt").read_text()
        match = re.search(r"^W\d{4} \S+ (\d+) \S+\] Received (\d+) death signal", text, re.M)
        assert match
        pid, signum = int(match.group(1)), int(match.group(2))
        expected = report.launcher_traceback("signal", RECORDED_ARGV0, RECORDED_SITE)
        expected += report.signal_exception_line(pid, signum)
        assert launcher_tail(text) == expected

    def test_c10d_join_timeout(self) -> None:
        """One of two c10d nodes times out in next_rendezvous with RendezvousTimeoutError."""
        text = (REF / "07_misc/c10d_one_of_two_nodes_join_timeout5/console_stderr.txt").read_text()
        expected = report.launcher_traceback("c10d_join_timeout", RECORDED_ARGV0, RECORDED_SITE)
        assert launcher_tail(text) == expected + report.rendezvous_timeout_line()

    def test_static_store_timeout(self) -> None:
        """One of two static nodes times out creating the TCPStore."""
        text = (REF / "07_misc/static_one_of_two_nodes_timeout5/console_stderr.txt").read_text()
        expected = report.launcher_traceback("static_store_timeout", RECORDED_ARGV0, RECORDED_SITE)
        assert launcher_tail(text) == expected + report.dist_store_timeout_line(6, 1, 2)

    def test_recorded_error_file_reads_back(self, tmp_path: Path) -> None:
        """A recorded error.json written to disk reads back as the same object."""
        payloads = error_files(REF / "04_failure/raise_with_record")
        assert len(payloads) == 1
        (payload,) = payloads.values()
        path = tmp_path / "error.json"
        path.write_text(json.dumps(payload))
        assert report.read_error_file(str(path)) == payload
