"""Unit tests of stream routing (tee, redirects, filter, prefixes), line assembly and log-dir paths."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import threading
import time
import tty
from pathlib import Path

import pytest

from fakerun.launcher.console import (
    ERASE_LINE,
    STDERR,
    STDOUT,
    Console,
    Route,
    RouteSpec,
    Sink,
    erase_rows,
    fit_line,
    route_spec,
)
from fakerun.launcher.logdir import LogDir, error_file, make_attempt_dirs
from fakerun.launcher.plan import make_plan
from fakerun.launcher.ranklogs import RankLogs, prune_stale
from fakerun.options import TorchrunArgs


def plan_for(**kw: object):  # type: ignore[no-untyped-def]
    args = TorchrunArgs(training_script="t.py", nproc_per_node="3", **kw)  # type: ignore[arg-type]
    return make_plan(args, {}, fqdn="localhost", free_port=1, cpu_count=2, run_uuid="u")


class TestRouteSpec:
    """Where each stream goes, per torch's LogsSpecs rules."""

    def test_default_is_console_without_prefix(self) -> None:
        """No flags: console, no prefix, no file."""
        assert route_spec(plan_for(), 0, 0, STDOUT) == RouteSpec(True, "", False, False)

    def test_redirect_goes_to_file_only(self) -> None:
        """--redirects 1: stdout to its file only, stderr untouched."""
        p = plan_for(redirects="1")
        assert route_spec(p, 1, 1, STDOUT) == RouteSpec(False, "", True, False)
        assert route_spec(p, 1, 1, STDERR) == RouteSpec(True, "", False, False)

    def test_tee_prefixes_and_files(self) -> None:
        """--tee 3 --role trainer: console with `[trainer2]:` and a file."""
        assert route_spec(plan_for(tee="3", role="trainer"), 2, 2, STDERR) == RouteSpec(
            True, "[trainer2]:", True, False
        )

    def test_mapping_per_local_rank(self) -> None:
        """`-r 0:1,1:2 -t 2:3` applies per local rank."""
        p = plan_for(redirects="0:1,1:2", tee="2:3")
        assert route_spec(p, 0, 0, STDOUT).to_console is False
        assert route_spec(p, 1, 1, STDOUT).to_console is True
        assert route_spec(p, 1, 1, STDERR).to_file is True
        assert route_spec(p, 2, 2, STDOUT).prefix == "[default2]:"

    def test_filtered_rank_is_hidden_but_teed_file_kept(self) -> None:
        """A rank outside --local-ranks-filter is not shown; with --tee its file is still written."""
        p = plan_for(tee="3", local_ranks_filter="0,2")
        assert route_spec(p, 1, 1, STDOUT) == RouteSpec(False, "[default1]:", True, False)
        assert route_spec(plan_for(local_ranks_filter="0"), 1, 1, STDOUT).to_console is False

    def test_prefix_template(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE replaces the prefix, no colon added."""
        monkeypatch.setenv("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE", "[${role_name}|r${rank}|l${local_rank}]")
        assert route_spec(plan_for(tee="3"), 1, 7, STDOUT).prefix == "[default|r7|l1]"

    def test_duplicate_only_for_teed_streams(self) -> None:
        """Duplicate filters apply only to tee'd output."""
        assert route_spec(plan_for(duplicate_stdout_filters=["x"]), 0, 0, STDOUT).duplicate is False
        assert route_spec(plan_for(tee="3", duplicate_stdout_filters=["x"]), 0, 0, STDOUT).duplicate is True


class TestRouteLines:
    """Bytes in, whole lines out."""

    def make(self, prefix: str = "") -> tuple[Route, io.BytesIO, io.BytesIO, io.BytesIO]:
        console, log, filtered = io.BytesIO(), io.BytesIO(), io.BytesIO()
        sink = Sink(console)
        route = Route(RouteSpec(True, prefix, True, bool(prefix)), sink, log, filtered, ["keep"])
        return route, console, log, filtered

    def test_partial_lines_wait_for_newline(self) -> None:
        """A line split across reads is written once, whole; the file gets raw bytes at once."""
        route, console, log, _ = self.make("[d0]:")
        route.feed(b"hel")
        route.sink.flush()
        assert console.getvalue() == b"" and log.getvalue() == b"hel"
        route.feed(b"lo\nwor")
        route.sink.flush()
        assert console.getvalue() == b"[d0]:hello\n"

    def test_partial_last_line_flushed_at_close(self) -> None:
        """At EOF the partial line goes out with its prefix and without a newline."""
        route, console, _, _ = self.make("[d0]:")
        route.feed(b"a\nb")
        route.close()
        route.sink.flush()
        assert console.getvalue() == b"[d0]:a\n[d0]:b"

    def test_duplicate_filter_matches_substrings(self) -> None:
        """Lines containing a filter string are duplicated, prefixed."""
        route, _, _, filtered = self.make("[d0]:")
        route.feed(b"keep me\ndrop me\n")
        assert filtered.getvalue() == b"[d0]:keep me\n"

    def test_broken_pipe_stops_writing(self) -> None:
        """A closed reader makes the sink stop, not crash."""

        class Broken(io.BytesIO):
            def write(self, data: bytes) -> int:  # type: ignore[override]
                raise BrokenPipeError

        sink = Sink(Broken())
        sink.write(b"x\n")
        sink.flush()
        assert sink.broken

    def test_a_terminal_gets_every_byte_of_a_big_flush(self) -> None:
        """A write to a pty that a signal interrupts (the launcher's SIGCHLD) returns what it wrote so far:
        the rest is written, not dropped."""
        master, slave = os.openpty()
        tty.setraw(slave)
        data = b"".join(b"%07d " % i + b"x" * 92 + b"\n" for i in range(5000))  # 500 kB in one flush
        got = bytearray()
        reader = threading.Thread(target=_drain, args=(master, len(data), got))
        previous = signal.signal(signal.SIGALRM, lambda *_: None)
        signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
        try:
            reader.start()
            with open(slave, "wb", buffering=0) as terminal:
                sink = Sink(terminal)
                sink.write(data)
                sink.flush()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        reader.join(timeout=60)
        os.close(master)
        assert not sink.broken
        assert bytes(got) == data


def _drain(fd: int, size: int, into: bytearray) -> None:
    """Reads a pty's master end until `size` bytes came (or the other end closed)."""
    while len(into) < size:
        time.sleep(0.0005)  # a terminal that reads slower than the writer writes
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return
        if not chunk:
            return
        into += chunk


class Tty(io.BytesIO):
    """A terminal stand-in."""

    def isatty(self) -> bool:
        return True


class TestLiveBars:
    """Carriage-return bars: pinned to the bottom line of a terminal, tqdm-like in files, never glued."""

    def console(self, pin: bool) -> tuple[Console, io.BytesIO, io.BytesIO, Route, Route]:
        out, err = Tty(), Tty()
        console = Console(out, err, pin_bars=pin)
        spec = RouteSpec(True, "", False, False)
        bar = Route(spec, console.err, None, None, [], console.board)
        other = Route(spec, console.out, None, None, [])
        return console, out, err, bar, other

    def test_terminal_bar_redrawn_below_scrolling_lines(self) -> None:
        """A line from another rank erases the bar, scrolls, and the bar is drawn again below it."""
        console, out, err, bar, other = self.console(pin=True)
        bar.feed(b"\r 1/10")
        console.flush()
        assert err.getvalue() == b" 1/10"
        other.feed(b"rank 3 says hi\n")
        console.flush()
        assert out.getvalue() == b"rank 3 says hi\n"
        assert err.getvalue() == b" 1/10" + ERASE_LINE + b" 1/10"

    def test_stdout_bar_pinned_on_stdout(self) -> None:
        """A dialect whose bars go to stdout pins them there; its stderr lines scroll them on one terminal."""
        out, err = Tty(), Tty()
        console = Console(out, err, pin_bars=True, bar_stream=STDOUT)
        spec = RouteSpec(True, "", False, False)
        bar = Route(spec, console.out, None, None, [], console.board, stream=STDOUT)
        info = Route(spec, console.err, None, None, [], stream=STDERR)
        bar.feed(b"\r 1/10")
        console.flush()
        info.feed(b"rank 1 says hi\n")
        console.flush()
        assert out.getvalue() == b" 1/10" + ERASE_LINE + b" 1/10"
        assert err.getvalue() == b"rank 1 says hi\n"

    def test_terminal_bar_cut_to_the_width(self) -> None:
        """A bar wider than the terminal is cut (by characters, not bytes) so it never wraps."""
        console, _, err, bar, _ = self.console(pin=True)
        bar.feed("\r█".encode() * 1 + "█".encode() * 200)
        console.flush()
        assert err.getvalue().decode() == "█" * (console.columns() - 1)

    def test_fit_line(self) -> None:
        """Short lines pass through; long ones keep columns - 1 characters."""
        assert fit_line(b"abc", 80) == b"abc"
        assert fit_line("é".encode() * 100, 10) == "é".encode() * 9

    def test_terminal_bar_refresh_replaces_in_place(self) -> None:
        """A refresh erases the old bar and draws the newest only, even if several came in one read."""
        console, _, err, bar, _ = self.console(pin=True)
        bar.feed(b"\r 1/10")
        console.flush()
        bar.feed(b"\r 2/10\r 3/10")
        console.flush()
        assert err.getvalue() == b" 1/10" + ERASE_LINE + b" 3/10"

    def test_terminal_bar_closed_by_newline_becomes_a_line(self) -> None:
        """tqdm's close (final refresh + newline) leaves the last state as an ordinary line."""
        console, _, err, bar, _ = self.console(pin=True)
        bar.feed(b"\r 9/10")
        console.flush()
        bar.feed(b"\r10/10\n")
        console.flush()
        assert err.getvalue() == b" 9/10" + ERASE_LINE + b"10/10\n"
        assert console.board is not None and console.board.owner is None

    def test_terminal_bar_left_open_is_kept_at_exit(self) -> None:
        """A worker that dies with its bar open leaves the bar's last state as a line."""
        console, _, err, bar, _ = self.console(pin=True)
        bar.feed(b"\r 4/10")
        console.flush()
        bar.close()
        console.flush()
        assert err.getvalue().endswith(b" 4/10\n")

    def test_file_bar_written_raw_and_ended_before_other_lines(self) -> None:
        """Into a file, refreshes go out as tqdm writes them; another line first ends the bar's line."""
        out = io.BytesIO()
        console = Console(out, out)  # the same stream, as with 2>&1
        spec = RouteSpec(True, "", False, False)
        bar = Route(spec, console.err, None, None, [])
        other = Route(spec, console.err, None, None, [])
        bar.feed(b"\r 1/10")
        bar.feed(b"\r 2/10")
        other.feed(b"hello\n")
        bar.feed(b"\r 3/10")
        bar.feed(b"\r 3/10\n")
        console.flush()
        assert out.getvalue() == b"\r 1/10\r 2/10\nhello\n\r 3/10\r 3/10\n"

    def test_teed_bars_split_like_text_mode(self) -> None:
        """Prefixed (tee'd) output follows torchrun's text-mode reading: every `\\r` ends a line."""
        out = io.BytesIO()
        console = Console(out, out)
        route = Route(RouteSpec(True, "[d0]:", False, False), console.err, None, None, [])
        route.feed(b"\r 1/2\r 2/2\r")
        route.feed(b"\nok\n")
        console.flush()
        assert out.getvalue() == b"[d0]:\n[d0]: 1/2\n[d0]: 2/2\n[d0]:ok\n"

    def test_crlf_is_a_plain_line_end(self) -> None:
        """`\\r\\n` split across reads is not taken for a bar."""
        console, _, err, bar, _ = self.console(pin=True)
        bar.feed(b"windows line\r")
        bar.feed(b"\n")
        console.flush()
        assert err.getvalue() == b"windows line\r\n"


class TestNestedBars:
    """tqdm's nested bars (positions 0 and 1): two rows pinned to a terminal's bottom, raw into files."""

    OUTER = b"\rTraining:  0%| | 0/2"
    INNER = b"\n\rEpoch 1/2:  10%| | 1/10\x1b[A"

    def console(self) -> tuple[Console, Tty, Route, Route]:
        term = Tty()
        console = Console(term, term, pin_bars=True)  # one terminal: the true order of every byte
        spec = RouteSpec(True, "", False, False)
        return (
            console,
            term,
            Route(spec, console.err, None, None, [], console.board),
            Route(spec, console.out, None, None, []),
        )

    def test_two_rows_drawn_and_redrawn_whole(self) -> None:
        """Both bars on the area's two rows; a refresh of the lower one erases both rows and draws both."""
        console, term, bar, _ = self.console()
        bar.feed(self.OUTER + self.INNER)
        console.flush()
        assert term.getvalue() == b"Training:  0%| | 0/2\nEpoch 1/2:  10%| | 1/10"
        bar.feed(b"\n\rEpoch 1/2:  20%| | 2/10\x1b[A")
        console.flush()
        assert term.getvalue().endswith(erase_rows(2) + b"Training:  0%| | 0/2\nEpoch 1/2:  20%| | 2/10")
        assert erase_rows(2) == ERASE_LINE + b"\x1b[A\x1b[K"

    def test_other_lines_scroll_above_both_rows(self) -> None:
        """Another rank's line goes out between the erase and the redraw: never inside the area's rows."""
        console, term, bar, other = self.console()
        bar.feed(self.OUTER + self.INNER)
        console.flush()
        before = len(term.getvalue())
        other.feed(b"rank 3 says hi\n")
        console.flush()
        assert term.getvalue()[before:] == (
            erase_rows(2) + b"rank 3 says hi\n" + b"Training:  0%| | 0/2\nEpoch 1/2:  10%| | 1/10"
        )

    def test_blanked_lower_bar_shrinks_the_area_then_outer_close_is_a_line(self) -> None:
        """leave=False blanks the lower bar (one row left); the outer's close leaves its last state."""
        console, term, bar, _ = self.console()
        bar.feed(self.OUTER + self.INNER)
        console.flush()
        bar.feed(b"\n\r" + b" " * 24 + b"\x1b[A\rTraining: 50%| | 1/2")
        console.flush()
        assert term.getvalue().endswith(erase_rows(2) + b"Training: 50%| | 1/2")
        assert console.board is not None and console.board.rows() == [b"Training: 50%| | 1/2"]
        bar.feed(b"\rTraining: 100%| | 2/2\n")
        console.flush()
        assert term.getvalue().endswith(ERASE_LINE + b"Training: 100%| | 2/2\n")
        assert console.board.owner is None

    def test_rows_cut_to_the_width(self) -> None:
        """Each row is cut to the terminal's width, so neither wraps and the erase stays exact."""
        console, term, bar, _ = self.console()
        bar.feed(b"\r" + b"a" * 300 + b"\n\r" + b"b" * 300 + b"\x1b[A")
        console.flush()
        top, bottom = term.getvalue().split(b"\n")
        assert len(top) == len(bottom) == console.columns() - 1

    def test_into_a_file_tqdm_bytes_pass_through(self) -> None:
        """Not on a terminal, the moves go out as tqdm wrote them; another line first ends the bar's line."""
        out = io.BytesIO()
        console = Console(out, out)
        spec = RouteSpec(True, "", False, False)
        bar = Route(spec, console.err, None, None, [])
        other = Route(spec, console.err, None, None, [])
        bar.feed(self.OUTER + self.INNER)
        bar.feed(self.INNER)
        other.feed(b"hello\n")
        console.flush()
        assert out.getvalue() == self.OUTER + self.INNER + self.INNER + b"\nhello\n"


class TestLogDir:
    """torch's log directory layout."""

    def test_layout(self, tmp_path: Path) -> None:
        """`<base>/<run_id>_<rand8>/attempt_N/<local_rank>/error.json`, run dir mode 0700."""
        ld = LogDir.create(str(tmp_path / "logs"))
        run_dir = ld.new_run_dir("none")
        assert (
            os.path.basename(run_dir).startswith("none_")
            and len(os.path.basename(run_dir)) == len("none_") + 8
        )
        assert os.stat(run_dir).st_mode & 0o777 == 0o700
        make_attempt_dirs(run_dir, 1, 2)
        assert sorted(os.listdir(os.path.join(run_dir, "attempt_1"))) == ["0", "1"]
        assert error_file(run_dir, 1, 1) == os.path.join(run_dir, "attempt_1", "1", "error.json")

    def test_temporary_base_is_removed_user_dir_kept(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Our own torchelastic_* directory is removed at cleanup; a --log-dir is kept."""
        monkeypatch.setenv("TMPDIR", str(tmp_path))
        import tempfile

        monkeypatch.setattr(tempfile, "tempdir", None)
        own = LogDir.create(None)
        assert os.path.basename(own.base).startswith("torchelastic_")
        own.cleanup()
        assert not os.path.exists(own.base)
        user = LogDir.create(str(tmp_path / "mine"))
        user.cleanup()
        assert os.path.isdir(tmp_path / "mine")


class TestPruneStale:
    """A new job clears what SIGKILLed launchers left in the state directory."""

    def test_dead_launchers_entries_go_live_ones_stay(self, tmp_path: Path) -> None:
        """job-<pid> entries of a pid that is gone are removed; ours and unrelated files stay."""
        gone = _reaped_pid()
        (tmp_path / f"job-{gone}").mkdir()
        (tmp_path / f"job-{gone}" / "meta.json").write_text("{}")
        (tmp_path / f"job-{gone}.json").write_text("{}")
        (tmp_path / f"job-{os.getpid()}.json").write_text("{}")
        (tmp_path / "notes.txt").write_text("x")
        prune_stale(str(tmp_path))
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"job-{os.getpid()}.json", "notes.txt"])


class TestJobDescription:
    """fakerun-tail's meta.json follows an elastic job's shape: a new round's nodes and ranks replace the old
    ones whole, the launcher and its start staying."""

    def test_a_new_shape_replaces_the_description(self, tmp_path: Path) -> None:
        meta = {"run_id": "el", "nodes": {"2": "n2"}, "ranks": [4, 5]}
        logs = RankLogs(str(tmp_path / "job-1"), meta, print)
        first = json.loads((tmp_path / "job-1" / "meta.json").read_text())
        logs.describe({"run_id": "el", "nodes": {"1": "n2"}, "ranks": [2, 3]})
        now = json.loads((tmp_path / "job-1" / "meta.json").read_text())
        assert (now["nodes"], now["ranks"]) == ({"1": "n2"}, [2, 3])
        assert (now["launcher_pid"], now["started"]) == (first["launcher_pid"], first["started"])
        assert sorted(p.name for p in (tmp_path / "job-1").iterdir()) == ["meta.json"]
        logs.close()


def _reaped_pid() -> int:
    """The pid of a child that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
