"""Tests for fakerun.launcher.glog against literal strings and torchrun 2.13's recorded console output."""

from __future__ import annotations

import calendar
import re
import time
from pathlib import Path

import pytest

from fakerun.launcher import glog
from tests.conftest import reference_dir

REF = reference_dir()
needs_reference = pytest.mark.skipif(
    not REF.is_dir(), reason=f"torchrun reference recordings not found at {REF} (set FAKERUN_REFERENCE_DIR)"
)

GLOG_LINE = re.compile(
    r"^(?P<level>[IWE])(?P<mon>\d\d)(?P<day>\d\d) (?P<h>\d\d):(?P<m>\d\d):(?P<s>\d\d)\.(?P<us>\d{6}) "
    r"(?P<pid>\d+) (?P<source>\S+:\d+)\] (?P<msg>.*)\n$"
)
# The recordings' clock was set to 2026; the year does not appear in the prefix.
YEAR = 2026

Message = tuple[str, str, str]


def _utc(month: int, day: int, h: int, m: int, s: int) -> float:
    return float(calendar.timegm((YEAR, month, day, h, m, s, 0, 0, 0)))


def parse_glog_line(line: str) -> tuple[str, float, int, str, str]:
    """(level, when, pid, source, message) of one recorded glog line; needs TZ=UTC."""
    match = GLOG_LINE.match(line)
    assert match, f"not a glog line: {line!r}"
    g = match.groupdict()
    when = time.mktime((YEAR, int(g["mon"]), int(g["day"]), int(g["h"]), int(g["m"]), int(g["s"]), 0, 0, -1))
    return g["level"], when + int(g["us"]) / 1e6, int(g["pid"]), g["source"], g["msg"]


def recorded_glog_lines(path: Path) -> list[str]:
    """The glog-prefixed lines of one recorded console, newline kept."""
    return [line for line in path.read_text().splitlines(keepends=True) if GLOG_LINE.match(line)]


def replay(path: Path, messages: list[Message]) -> tuple[str, str]:
    """Renders the messages with the times and pid of the recorded lines they should produce."""
    recorded = recorded_glog_lines(path)
    rendered: list[str] = []
    i = 0
    for level, source, message in messages:
        assert i < len(recorded), f"more messages than recorded lines; next: {message!r}"
        _, when, pid, _, _ = parse_glog_line(recorded[i])
        rendered.append(glog.format_glog(level, when, pid, source, message))
        i += message.count("\n") + 1
    return "".join(rendered), "".join(recorded)


def omp(_: str = "") -> list[Message]:
    return [("W", glog.RUN_PY_OMP, m) for m in glog.omp_banner()]


def group_started(restart_count: int, master_port: int) -> list[Message]:
    """INFO messages from a rendezvous to the started group, 2 local workers on 1 node."""
    block = glog.rendezvous_complete_block(
        role="default",
        restart_count=restart_count,
        master_addr="localhost",
        master_port=master_port,
        group_rank=0,
        group_world_size=1,
        local_ranks=[0, 1],
        role_ranks=[0, 1],
        global_ranks=[0, 1],
        role_world_sizes=[2, 2],
        global_world_sizes=[2, 2],
        event_log_handler="null",
    )
    return [
        ("I", glog.AGENT_RENDEZVOUSING, glog.rendezvousing("default")),
        ("I", glog.AGENT_RDZV_COMPLETE, "\n".join(block)),
        ("I", glog.AGENT_STARTING_GROUP, glog.starting_worker_group("default")),
        ("I", glog.LOCAL_AGENT_STORE, glog.use_agent_store()),
        ("I", glog.LOCAL_AGENT_FILE_TIMER, glog.no_file_timer()),
        ("I", glog.LOCAL_AGENT_HEALTH_CHECK, glog.no_health_check()),
    ]


def startup_info(run_id: str, script: str, max_restarts: int, log_dir: str) -> list[Message]:
    """The INFO startup of `LOGLEVEL=INFO torchrun --standalone --nproc-per-node 2`, OMP banner included."""
    view = glog.LaunchConfigView(
        entrypoint=script,
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=2,
        run_id=run_id,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        rdzv_configs={"timeout": 900},
        max_restarts=max_restarts,
        monitor_interval=0.1,
        log_dir=log_dir,
    )
    return [
        ("I", glog.RUN_PY_RDZV_INFO, "\n".join(glog.rendezvous_info_block("c10d", "localhost:0", run_id))),
        ("I", glog.RUN_PY_USING_NPROC, glog.using_nproc(2)),
        *omp(),
        ("I", glog.LAUNCHER_API_CONFIG, "\n".join(glog.launch_config_block(view))),
        ("I", glog.AGENT_STARTING_WORKERS, glog.starting_workers("default", "python3")),
    ]


PYTHON3 = "/opt/venv/bin/python3"


class TestGlogPrefix:
    """Every line gets `<L><MMDD> <HH:MM:SS>.<ms>000 <pid> <source>] ` in local time."""

    def test_single_line(self, utc: None) -> None:
        """A one-line warning renders exactly as torchrun's."""
        when = _utc(11, 22, 5, 2, 49) + 0.064
        assert glog.format_glog("W", when, 5700, glog.RUN_PY_OMP, "hi") == (
            "W1122 05:02:49.064000 5700 torch/distributed/run.py:874] hi\n"
        )

    def test_empty_message_keeps_the_space(self, utc: None) -> None:
        """An empty message leaves the prefix followed by one space."""
        when = _utc(1, 2, 3, 4, 5)
        assert glog.format_glog("I", when, 1, "a.py:1", "") == "I0102 03:04:05.000000 1 a.py:1] \n"

    def test_multiline_message_prefixes_every_line(self, utc: None) -> None:
        """Each line of a multi-line message gets the same prefix, a trailing newline gives an empty line."""
        when = _utc(12, 31, 23, 59, 59) + 0.5
        assert glog.format_glog("E", when, 9, "x.py:2", "a\nb\n") == (
            "E1231 23:59:59.500000 9 x.py:2] a\n"
            "E1231 23:59:59.500000 9 x.py:2] b\n"
            "E1231 23:59:59.500000 9 x.py:2] \n"
        )

    def test_milliseconds_are_truncated(self, utc: None) -> None:
        """Sub-millisecond digits are dropped, never rounded up, as logging's msecs."""
        when = _utc(3, 4, 5, 6, 7) + 0.0649
        assert glog.glog_prefix("W", when, 2, "s:1") == "W0304 05:06:07.064000 2 s:1]"

    def test_float_noise_does_not_lose_a_millisecond(self, utc: None) -> None:
        """A float just below the millisecond (x.064 stored as x.06399999) still shows 064."""
        when = 1795323910.064
        assert glog.glog_prefix("W", when, 2, "s:1").endswith(".064000 2 s:1]")

    def test_level_names_map_to_letters(self, utc: None) -> None:
        """WARNING, INFO and ERROR (any case) give W, I and E."""
        when = _utc(1, 1, 0, 0, 0)
        for name, letter in (("WARNING", "W"), ("info", "I"), ("Error", "E")):
            assert glog.format_glog(name, when, 1, "s:1", "m").startswith(f"{letter}0101 ")

    def test_uses_local_time(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The time is local: UTC-2 shows two hours earlier than UTC."""
        monkeypatch.setenv("TZ", "XXX+2")
        time.tzset()
        try:
            line = glog.format_glog("W", _utc(6, 1, 12, 0, 0), 1, "s:1", "m")
        finally:
            monkeypatch.undo()
            time.tzset()
        assert line == "W0601 10:00:00.000000 1 s:1] m\n"


class TestPlainFormat:
    """Under `python -m torch.distributed.run`, run.py logs through Python's last-resort handler."""

    def test_warning_is_bare_text(self) -> None:
        """A warning is its text and a newline, multi-line text unchanged."""
        assert glog.format_plain("W", "a\nb") == "a\nb\n"

    def test_info_is_dropped(self) -> None:
        """INFO is below the last-resort handler's WARNING level, so nothing is printed."""
        assert glog.format_plain("I", "Using nproc_per_node=2.") == ""

    def test_format_log_only_strips_run_py(self, utc: None) -> None:
        """Only run.py's logger is `__main__`; torch modules keep the glog prefix under python -m."""
        when = _utc(1, 1, 0, 0, 0)
        assert glog.format_log("W", when, 1, glog.RUN_PY_OMP, "x", python_m=True) == "x\n"
        sending = glog.format_log("W", when, 1, glog.API_SENDING, "y", python_m=True)
        assert sending == f"W0101 00:00:00.000000 1 {glog.API_SENDING}] y\n"
        assert glog.format_log("W", when, 1, glog.RUN_PY_OMP, "x", python_m=False).startswith("W0101")


class TestMessageTexts:
    """Each builder returns torch's exact words."""

    def test_omp_banner(self) -> None:
        """Four messages: empty, 41 stars, the sentence with its trailing space, 41 stars."""
        banner = glog.omp_banner()
        assert banner[0] == "" and banner[1] == banner[3] == "*" * 41
        assert banner[2].startswith("Setting OMP_NUM_THREADS environment variable for each process to be 1 ")
        assert banner[2].endswith("application as needed. ")

    def test_failure_path_lines(self) -> None:
        """The W/E lines of a worker failure and of a launcher signal."""
        assert glog.sending_closing_signal(10624, "SIGTERM") == "Sending process 10624 closing signal SIGTERM"
        assert glog.failed_line(-9, 1, 16254, PYTHON3) == (
            "failed (exitcode: -9) local_rank: 1 (pid: 16254) of binary: /opt/venv/bin/python3"
        )
        assert glog.unable_to_shutdown(19571, 15, 9) == (
            "Unable to shutdown process 19571 via 15, forcefully exiting via 9"
        )
        assert glog.received_death_signal(2) == "Received 2 death signal, shutting down workers"

    def test_error_file_lines(self) -> None:
        """The tuple-looking INFO line and the parent error-file line."""
        assert glog.no_error_file_for_local_rank(1) == (
            "('local_rank %s FAILED with no error file. Decorate your entrypoint fn with @record for "
            "traceback info. See: https://pytorch.org/docs/stable/elastic/errors.html', 1)"
        )
        assert glog.no_error_file_for_parent("/tmp/e.json") == (
            "no error file defined for parent, to copy child error file (/tmp/e.json)"
        )

    def test_restart_lines(self) -> None:
        """The INFO lines of a group restart."""
        assert glog.worker_group_failed_will_restart("trainer", 1, 2) == (
            "[trainer] Worker group FAILED. 1/2 attempts left; will restart worker group"
        )
        assert glog.stopping_worker_group("default") == "[default] Stopping worker group"

    def test_launch_config_alignment(self) -> None:
        """Keys are padded to `duplicate_stdout_filters`, values use Python's str()."""
        view = glog.LaunchConfigView(
            entrypoint="t.py",
            min_nodes=1,
            max_nodes=2,
            nproc_per_node=8,
            run_id="none",
            rdzv_backend="static",
            rdzv_endpoint="127.0.0.1:29500",
            rdzv_configs={"rank": 0, "timeout": 900},
            max_restarts=0,
            monitor_interval=2,
            log_dir="/tmp/x",
            duplicate_stdout_filters=["0"],
        )
        lines = glog.launch_config_block(view)
        assert lines[0] == "Starting elastic_operator with launch configs:"
        assert lines[8] == "  rdzv_configs             : {'rank': 0, 'timeout': 900}"
        assert lines[10] == "  monitor_interval         : 2.0"
        assert lines[14] == "  numa_options             : None"
        assert lines[16] == "  duplicate_stdout_filters : ['0']"
        assert lines[-1] == "" and len(lines) == 19

    def test_success_lines(self) -> None:
        """Three INFO lines; the elapsed time is the float's repr."""
        assert glog.success_lines("default", 0.5) == [
            (
                glog.AGENT_GROUP_SUCCEEDED,
                "[default] worker group successfully finished. "
                "Waiting 300 seconds for other agents to finish.",
            ),
            (
                glog.AGENT_LOCAL_GROUP_FINISHED,
                "Local worker group finished (WorkerState.SUCCEEDED). "
                "Waiting 300 seconds for other agents to finish",
            ),
            (glog.AGENT_DONE_WAITING, "Done waiting for other agents. Elapsed: 0.5 seconds"),
        ]


@needs_reference
class TestAgainstRecordings:
    """Rendering the recorded runs' messages gives their console bytes."""

    def test_every_recorded_glog_line_round_trips(self, utc: None) -> None:
        """Each recorded glog line equals format_glog of its own parsed fields."""
        count = 0
        for path in sorted(REF.rglob("console_stderr.txt")):
            for line in recorded_glog_lines(path):
                level, when, pid, source, message = parse_glog_line(line)
                assert glog.format_glog(level, when, pid, source, message) == line, path
                count += 1
        assert count > 100

    def test_sources_table_matches_recordings(self) -> None:
        """Every source seen in a torchrun recording is one of the named constants."""
        named = {v for k, v in vars(glog).items() if k.isupper() and isinstance(v, str) and ":" in v}
        seen: set[str] = set()
        for path in REF.rglob("console_stderr.txt"):
            if "legacy_torch_distributed_launch" in str(path):
                continue  # its sources are relative to a different sys.path entry
            seen |= {GLOG_LINE.match(line)["source"] for line in recorded_glog_lines(path)}  # type: ignore[index]
        assert seen and seen <= named, seen - named

    def test_omp_banner_exit3(self, utc: None) -> None:
        """The 4-line OMP banner of 04_failure/exit3."""
        rendered, recorded = replay(REF / "04_failure/exit3/console_stderr.txt", omp())
        assert rendered == recorded[: len(rendered)]

    def test_exit3_warning_level(self, utc: None) -> None:
        """The banner, the three SIGTERM lines and the E failed line of exit3."""
        messages = omp() + [
            ("W", glog.API_SENDING, glog.sending_closing_signal(pid, "SIGTERM"))
            for pid in (10624, 10626, 10627)
        ]
        messages.append(("E", glog.API_FAILED, glog.failed_line(3, 1, 10625, PYTHON3)))
        rendered, recorded = replay(REF / "04_failure/exit3/console_stderr.txt", messages)
        assert rendered == recorded

    def test_worker_killed_sigkill(self, utc: None) -> None:
        """A worker killed by SIGKILL reports exitcode -9."""
        messages = [
            *omp(),
            ("W", glog.API_SENDING, glog.sending_closing_signal(16253, "SIGTERM")),
            ("E", glog.API_FAILED, glog.failed_line(-9, 1, 16254, PYTHON3)),
        ]
        rendered, recorded = replay(REF / "04_failure/worker_killed_SIGKILL/console_stderr.txt", messages)
        assert rendered == recorded

    def test_raise_with_record(self, utc: None) -> None:
        """With @record the E line about the parent's missing error file follows the failed line."""
        # The error file under the recorded run's --log-dir.
        path = "/tmp/lr2/6e4b14f7-1ef9-42ec-bcd1-b6742f27767e_voi2h731/attempt_0/1/error.json"
        messages = omp() + [
            ("W", glog.API_SENDING, glog.sending_closing_signal(pid, "SIGTERM"))
            for pid in (11468, 11470, 11471)
        ]
        messages += [
            ("E", glog.API_FAILED, glog.failed_line(1, 1, 11469, PYTHON3)),
            ("E", glog.ERROR_HANDLER_NO_PARENT_FILE, glog.no_error_file_for_parent(path)),
        ]
        rendered, recorded = replay(REF / "04_failure/raise_with_record/console_stderr.txt", messages)
        assert rendered == recorded

    def test_sigterm_workers_ignore(self, utc: None) -> None:
        """A launcher SIGTERM: death signal, forwarded SIGTERMs, then the SIGKILL escalation lines."""
        messages = [
            *omp(),
            ("W", glog.AGENT_DEATH_SIGNAL, glog.received_death_signal(15)),
            ("W", glog.API_SENDING, glog.sending_closing_signal(19571, "SIGTERM")),
            ("W", glog.API_SENDING, glog.sending_closing_signal(19572, "SIGTERM")),
            ("W", glog.API_UNABLE, glog.unable_to_shutdown(19571, 15, 9)),
            ("W", glog.API_UNABLE, glog.unable_to_shutdown(19572, 15, 9)),
        ]
        path = REF / "05_signals/SIGTERM_workers_ignore_shutdown_timeout3/console_stderr.txt"
        rendered, recorded = replay(path, messages)
        assert rendered == recorded

    def test_sigusr1_forwarded(self, utc: None) -> None:
        """A handled SIGUSR1 is reported as signal 10 and forwarded by name."""
        messages = [
            *omp(),
            ("W", glog.AGENT_DEATH_SIGNAL, glog.received_death_signal(10)),
            ("W", glog.API_SENDING, glog.sending_closing_signal(21379, "SIGUSR1")),
            ("W", glog.API_SENDING, glog.sending_closing_signal(21380, "SIGUSR1")),
        ]
        path = REF / "05_signals/SIGUSR1_with_signals_to_handle/console_stderr.txt"
        rendered, recorded = replay(path, messages)
        assert rendered == recorded

    def test_loglevel_info_success(self, utc: None) -> None:
        """The whole INFO-level console of a successful standalone run."""
        run_id = "20c2486b-909f-4dc7-94a8-165037fa97c0"
        messages = startup_info(run_id, "/home/user/ref/scripts/train.py", 0, "/tmp/torchelastic_bknu0kjc")
        messages += group_started(0, 45901)
        messages += [("I", s, m) for s, m in glog.success_lines("default", 0.00024271011352539062)]
        rendered, recorded = replay(REF / "07_misc/LOGLEVEL_INFO_success/console_stderr.txt", messages)
        assert rendered == recorded

    def test_loglevel_info_restart(self, utc: None) -> None:
        """The whole INFO-level console of exit 3 with one restart, up to the launcher traceback."""
        run_id = "4393b5ae-8c6f-4eb0-a976-f202e73c1cf1"
        messages = startup_info(run_id, "/home/user/ref/scripts/fail.py", 1, "/tmp/torchelastic_ty33bl_u")
        messages += group_started(0, 34633)
        messages += [
            ("W", glog.API_SENDING, glog.sending_closing_signal(11951, "SIGTERM")),
            ("E", glog.API_FAILED, glog.failed_line(3, 1, 11952, PYTHON3)),
            ("I", glog.AGENT_GROUP_FAILED, glog.worker_group_failed_will_restart("default", 1, 1)),
            ("I", glog.AGENT_STOPPING_GROUP, glog.stopping_worker_group("default")),
        ]
        messages += group_started(1, 34633)
        messages += [
            ("W", glog.API_SENDING, glog.sending_closing_signal(11983, "SIGTERM")),
            ("E", glog.API_FAILED, glog.failed_line(3, 1, 11984, PYTHON3)),
            ("I", glog.ERRORS_NO_ERROR_FILE, glog.no_error_file_for_local_rank(1)),
        ]
        path = REF / "04_failure/exit3_max_restarts1_LOGLEVEL_INFO/console_stderr.txt"
        rendered, recorded = replay(path, messages)
        assert rendered == recorded

    def test_python_m_has_no_prefix(self) -> None:
        """Under `python -m torch.distributed.run` the banner is bare text and is all of stderr."""
        recorded = (REF / "07_misc/python_m_torch_distributed_run/console_stderr.txt").read_text()
        assert "".join(glog.format_plain("W", m) for m in glog.omp_banner()) == recorded
