"""The single writer: routes worker pipes to the console, prefixes, log files and duplicate filters."""

from __future__ import annotations

import functools
import io
import os
import re
import select
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, ParamSpec, Protocol

from fakerun.launcher.outfile import OutputFile, notice, reason
from fakerun.launcher.plan import LaunchPlan
from fakerun.launcher.ranklogs import RankFile, RankLogs
from fakerun.render import bar

STDOUT, STDERR = 1, 2
# The longest unfinished line a route holds back: past it, a worker writing without newlines would take the
# launcher's memory (and time, as each read is appended), so what is held goes out as a partial line.
MAX_PARTIAL_LINE = 64 * 1024
_NEWLINES = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class RouteSpec:
    """Where one stream (stdout or stderr) of one local rank goes, per torch's LogsSpecs.reify."""

    to_console: bool
    prefix: str
    to_file: bool
    duplicate: bool


def route_spec(plan: LaunchPlan, local_rank: int, rank: int, stream: int) -> RouteSpec:
    """Applies --redirects, --tee, --local-ranks-filter and the prefix template to one stream."""
    tee = bool(plan.tee.get(local_rank, 0) & stream)
    redirected = tee or bool(plan.redirects.get(local_rank, 0) & stream)
    shown = plan.local_ranks_filter is None or local_rank in plan.local_ranks_filter
    filters = plan.args.duplicate_stdout_filters if stream == STDOUT else plan.args.duplicate_stderr_filters
    prefix = ""
    if tee:
        template = os.environ.get("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE")
        if template:
            prefix = string.Template(template).safe_substitute(
                role_name=plan.args.role, rank=rank, local_rank=local_rank
            )
        else:
            prefix = f"[{plan.args.role}{local_rank}]:"
    return RouteSpec(
        to_console=shown and (tee or not redirected),
        prefix=prefix,
        to_file=redirected,
        duplicate=tee and shown and bool(filters),
    )


class ByteWriter(Protocol):
    """Where a route copies bytes: a log file (an OutputFile, which reports its own errors)."""

    def write(self, data: bytes, /) -> object:
        """Writes all of `data`."""

    def close(self) -> None:
        """Closes the file."""


class LineState:
    """Which route left an unfinished live line (a `\\r` progress bar) on an output that is not a terminal."""

    def __init__(self) -> None:
        self.owner: object | None = None


class Sink:
    """One output stream of the launcher (its stdout or stderr), written in whole lines."""

    def __init__(self, stream: BinaryIO, line: LineState | None = None) -> None:
        self._stream = stream
        self._pending: list[bytes] = []
        self.broken = False
        # Shared by the two sinks when stdout and stderr are the same file (`2>&1`).
        self.line = line or LineState()

    @property
    def pending(self) -> bool:
        """Whether bytes wait for the next flush."""
        return bool(self._pending)

    def write(self, data: bytes, owner: object | None = None, live: bool = False) -> None:
        """Queues bytes; they reach the terminal at the next flush.

        A live segment (`live`: a bar refresh without a newline) leaves its line open for `owner`; anyone
        else writing first ends that line, so a bar in a file never has another rank's line glued to it.
        """
        if self.broken or not data:
            return
        if self.line.owner is not None and self.line.owner is not owner:
            self._pending.append(b"\n")
            self.line.owner = None
        self._pending.append(data)
        if live:
            self.line.owner = owner
        elif data.endswith(b"\n"):
            self.line.owner = None

    def raw(self, data: bytes) -> None:
        """Writes terminal control bytes at once (the pinned bar's erase and redraw)."""
        if self.broken:
            return
        try:
            self._write_all(data)
        except OSError:
            self._break()

    def _write_all(self, data: bytes) -> None:
        """Writes every byte: an unbuffered stream's write is one system call, which a terminal (a pty's
        buffer is a few kilobytes) may take only part of; the rest would be lost, not retried."""
        view = memoryview(data)
        while view:
            n = self._stream.write(view)
            if n is None:  # a non-blocking file that takes nothing now: wait until it can
                select.select([], [self._stream], [])
                continue
            view = view[n:]
        self._stream.flush()

    def flush(self) -> None:
        """Writes what is queued in one go."""
        if not self._pending or self.broken:
            self._pending.clear()
            return
        data = b"".join(self._pending)
        self._pending.clear()
        try:
            self._write_all(data)
        except OSError:
            # The reader went away (`fakerun ... | head`), or the file it was is full: stop writing.
            self._break()

    def _break(self) -> None:
        """The stream failed: no more writes, and the workers writing to it through us are cut off."""
        self.broken = True
        try:
            # Python flushes the std streams at exit: what failed to go out would fail again there, print
            # `Exception ignored ... BrokenPipeError` and turn the exit code into 120. /dev/null takes it.
            fd = self._stream.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass  # not a file descriptor (a test's BytesIO)


# Erase the terminal line the cursor is on (carriage return, then ANSI "erase to end of line").
ERASE_LINE = b"\r\x1b[K"
# Up one line and erase it: with ERASE_LINE, clears a status area of several lines from its bottom up.
ERASE_ROW_ABOVE = b"\x1b[A\x1b[K"
# tqdm's nested bar at position 1 (moveto(1), "\r" + text, moveto(-1)): down a line, draw, back up.
_LOWER_BAR = re.compile(rb"\n\r([^\r\n]*)\x1b\[A")
# Rows of a terminal a pinned status area may take (tqdm's bars at positions 0 and 1).
STATUS_ROWS = 2


def erase_rows(rows: int) -> bytes:
    """Clears the `rows` bottom lines the cursor ends on, leaving it at the start of the top one."""
    return ERASE_LINE + ERASE_ROW_ABOVE * (rows - 1) if rows > 0 else b""


class StatusBoard:
    """The bottom lines of a terminal (up to STATUS_ROWS: nested bars), held by one stream's live bars while
    other lines scroll above them."""

    def __init__(self) -> None:
        self.owner: object | None = None
        self.slots: dict[int, bytes] = {}  # bar position -> its latest text
        self.shown = 0  # rows of the area on the terminal now
        self.changed = False

    @property
    def text(self) -> bytes:
        """The top bar's text (b"" if none)."""
        return self.slots.get(0, b"")

    def rows(self) -> list[bytes]:
        """The area's lines, top first."""
        return [self.slots[position] for position in sorted(self.slots)]

    def show(self, owner: object, text: bytes, position: int = 0) -> None:
        """`owner`'s bar at `position` now reads `text` (another owner's bars give way)."""
        if position >= STATUS_ROWS:
            return
        if owner is not self.owner:
            self.owner, self.slots, self.changed = owner, {}, True
        if self.slots.get(position) != text:
            self.slots[position] = text
            self.changed = True

    def clear(self, owner: object, position: int) -> None:
        """`owner`'s bar at `position` was blanked (tqdm's leave=False): the area loses that row."""
        if owner is self.owner and position in self.slots:
            del self.slots[position]
            self.changed = True
            if not self.slots:
                self.owner = None

    def release(self, owner: object) -> bool:
        """`owner`'s bars ended; True if it held the board."""
        if self.owner is not owner:
            return False
        self.owner, self.slots, self.changed = None, {}, True
        return True


@dataclass
class Route:
    """One worker stream being pumped: its spec, its line remainder and its open files."""

    spec: RouteSpec
    sink: Sink
    log_file: ByteWriter | None
    filtered_file: ByteWriter | None
    filters: list[str]
    board: StatusBoard | None = None  # set when this stream reaches a terminal: bars pin to its bottom lines
    rank_file: RankFile | None = None  # the rank's raw copy for fakerun-tail (both streams, as written)
    stream: int = STDOUT
    remainder: bytes = b""
    prefix_bytes: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.prefix_bytes = self.spec.prefix.encode()

    @property
    def cut_off(self) -> bool:
        """Whether this stream's only way out is gone.

        Under torchrun this worker would write to the launcher's own (inherited) stdout or stderr, so its
        writes would now fail. Tee'd and redirected streams go to files there, hidden ones to /dev/null.
        """
        return self.sink.broken and self.spec.to_console and not self.spec.to_file

    def feed(self, data: bytes) -> None:
        """Takes raw bytes from the worker: raw into the log file, whole lines to the console."""
        if self.log_file is not None:
            self.log_file.write(data)
        if self.rank_file is not None:
            # Workers write whole lines (and whole bar refreshes) per write, so both streams interleave
            # in this file at line boundaries.
            self.rank_file.write(data, self.stream)
        if not self.spec.to_console:
            return
        buf = self.remainder + data
        if self.prefix_bytes:
            self._feed_universal(buf)
        else:
            self._feed_raw(buf)
        if len(self.remainder) > MAX_PARTIAL_LINE:
            self._spill()

    def _feed_raw(self, buf: bytes) -> None:
        """Unprefixed output: whole lines out, a bar refresh shown or written as it is, the rest held."""
        if self.board is not None:
            # On a terminal a nested bar's draw moves down a line and back: it is the area's second row, and
            # its `\n` ends no line. (Into files tqdm's bytes go out as they are, moves included.)
            while (m := _LOWER_BAR.search(buf)) is not None:
                self._feed_lines(buf[: m.start()])
                text = m.group(1)
                if text.strip(b" "):
                    self.board.show(self, text, 1)
                else:
                    self.board.clear(self, 1)
                buf = self.remainder + buf[m.end() :]
        self._feed_lines(buf)

    def _feed_lines(self, buf: bytes) -> None:
        cut = buf.rfind(b"\n") + 1
        tail = buf[cut:]
        if cut:
            self._emit([line + b"\n" for line in buf[: cut - 1].split(b"\n")])
        cr = tail.rfind(b"\r")
        if cr < 0 or cr == len(tail) - 1:
            # No bar refresh, or a `\r` that may be the first half of `\r\n`: wait for more.
            self.remainder = tail
        elif self.board is not None:
            self.board.show(self, tail[cr + 1 :])
            self.remainder = tail[cr:]  # only the latest refresh matters on a terminal
        else:
            # Into a file, a bar is its refreshes one after the other, as tqdm writes them into a .out file.
            self.sink.write(tail, owner=self, live=True)
            self.remainder = b""

    def _feed_universal(self, buf: bytes) -> None:
        """Prefixed (tee'd) output: torchrun reads it in text mode, where `\r`, `\n` and `\r\n` end lines."""
        # A final `\r` may be the first half of `\r\n`: keep it until the next read tells.
        scan = buf[:-1] if buf.endswith(b"\r") else buf
        cut = max(scan.rfind(b"\n"), scan.rfind(b"\r")) + 1
        self.remainder = buf[cut:]
        if cut:
            self._emit([line + b"\n" for line in _NEWLINES.split(buf[:cut])[:-1]])

    def _spill(self) -> None:
        """An overlong unfinished line goes out as it is, left open for this route (as a bar in a file is)."""
        held, self.remainder = self.remainder, b""
        if self.board is not None and held.startswith(b"\r"):
            self.remainder = b"\r" + held[-MAX_PARTIAL_LINE:]  # a bar refresh, shown already: its end will do
            return
        self.sink.write(self.prefix_bytes + held, owner=self, live=True)

    def close(self) -> None:
        """The worker closed the stream: a partial last line goes out as it is, then files close."""
        if self.board is not None and self.remainder and self.board.release(self):
            self._emit([self.remainder + b"\n"])
        elif self.remainder:
            self._emit([self.remainder])
        self.remainder = b""
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None

    def _emit(self, lines: list[bytes]) -> None:
        if self.board is not None:
            lines = [self._settle(line) for line in lines]
        if self.prefix_bytes:
            lines = [self.prefix_bytes + line for line in lines]
        self.sink.write(b"".join(lines), owner=self)
        if self.filtered_file is not None:
            texts = [(line, line.decode("utf-8", "replace")) for line in lines]
            matching = [line for line, text in texts if any(f in text for f in self.filters)]
            if matching:
                self.filtered_file.write(b"".join(matching))

    def _settle(self, line: bytes) -> bytes:
        """On a terminal a line with carriage returns shows only its last part; it also ends our bar."""
        body = line.rstrip(b"\r\n")
        cr = body.rfind(b"\r")
        if cr < 0:
            return line
        if self.board is not None:
            self.board.release(self)
        return body[cr + 1 :] + line[len(body) :]


_P = ParamSpec("_P")


def _silence_std_streams() -> None:
    """Points stdout and stderr at /dev/null: Python's flush at exit must not fail again (and exit 120)."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            os.dup2(null, fd)
    finally:
        os.close(null)


def quiet_broken_pipe(entry: Callable[_P, int]) -> Callable[_P, int]:
    """Wraps a command's entry point: its stdout or stderr closing under it (`fakerun --help | head -1`)
    ends it with exit code 1 instead of a traceback."""

    @functools.wraps(entry)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> int:
        try:
            code = entry(*args, **kwargs)
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:
                    stream.flush()  # what is still buffered fails here, where it can be handled
            return code
        except BrokenPipeError:
            _silence_std_streams()
            return 1

    return run


def open_std_streams() -> None:
    """Points a closed stdin, stdout or stderr of the launcher (`>&-`, `2>&-`) at /dev/null.

    Left closed, its number would go to the next file or pipe the launcher opens (our stdout writes landing in
    a worker's pipe, a worker's stdin being some socket), and sys.stdout would be None. Under torchrun the
    workers inherit the closed descriptor and what they print goes nowhere: /dev/null does the same.
    """
    for fd, flags in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, flags)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdin is None:
        sys.stdin = open(0, closefd=False, encoding="utf-8")  # noqa: SIM115
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115


def fit_line(text: bytes, columns: int) -> bytes:
    """`text` made to fit one terminal line, short of its last column: a pinned bar that wrapped could no
    longer be erased in place. A tqdm meter is refitted as tqdm fits it (its bar shrinks, its closing `]`
    stays), so a bar formatted before the terminal shrank shows its figures, not the start of its bar."""
    chars = text.decode("utf-8", "replace").rstrip(" ")  # a refresh's padding: nothing to show
    if len(chars) < columns:
        return chars.encode()
    return bar.fit(chars, max(columns - 1, 1)).encode()


def _isatty(stream: BinaryIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False


def _same_file(a: BinaryIO, b: BinaryIO) -> bool:
    """Whether two streams write to the same file or terminal (`>out 2>&1`)."""
    try:
        sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


class Console:
    """Owns the launcher's stdout and stderr; every byte the job shows goes through here."""

    def __init__(
        self,
        stdout: BinaryIO,
        stderr: BinaryIO,
        *,
        pin_bars: bool = False,
        bar_stream: int = STDERR,
        rank_logs: RankLogs | None = None,
        bar_width: bar.BarWidth | None = None,
    ) -> None:
        line = LineState() if _same_file(stdout, stderr) else None
        self.out = Sink(stdout, line)
        self.err = Sink(stderr, line)
        self._filtered: dict[str, OutputFile | None] = {}
        self._warned: set[str] = set()
        # On a terminal, worker progress bars (on the dialect's bar stream) stay on the bottom lines.
        self.board = StatusBoard() if pin_bars else None
        self.bar_stream = bar_stream
        self._bar_sink = self.sink(bar_stream)
        # Lines on the other stream scroll the pinned bar too when that stream is the same terminal.
        self._other_on_terminal = pin_bars and _isatty(stderr if bar_stream == STDOUT else stdout)
        self._bar_file = stdout if bar_stream == STDOUT else stderr
        self.rank_logs = rank_logs
        self.bar_width = bar_width  # the width the workers format their bars to (None: not a terminal)

    def resized(self) -> None:
        """The terminal was resized (SIGWINCH): the workers' next refreshes take its new width, and the pinned
        bars are redrawn at once, refitted to it."""
        if self.bar_width is not None:
            self.bar_width.set(self.columns())
        if self.board is not None and self.board.shown:
            self.board.changed = True

    def columns(self) -> int:
        """The terminal's width now (it may have been resized since the job started)."""
        try:
            return os.get_terminal_size(self._bar_file.fileno()).columns
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return 80

    def sink(self, stream: int) -> Sink:
        """The launcher sink for a worker stream."""
        return self.out if stream == STDOUT else self.err

    @property
    def broken(self) -> bool:
        """Whether stdout or stderr has gone away."""
        return self.out.broken or self.err.broken

    def launcher_lines(self, text: str) -> None:
        """Writes the launcher's own messages (stderr) and flushes at once."""
        self.err.write(text.encode())
        self.flush()

    def warn(self, line: str) -> None:
        """A one-line warning of the launcher (stderr)."""
        self.launcher_lines(line + "\n")

    def warn_once(self, key: str, line: str) -> None:
        """A one-line warning of the launcher, printed only the first time for `key`."""
        if key not in self._warned:
            self._warned.add(key)
            self.warn(line)

    def log_dir_failed(self, path: str, exc: OSError, what: str = "the log file") -> None:
        """Warns (once per attempt) that a log file or directory of an attempt cannot be written."""
        attempt = _attempt_of(path)
        self.warn_once(
            attempt,
            notice(
                f"cannot write {what} {path}: {reason(exc)}; the job carries on, "
                f"without the log files of {os.path.basename(attempt)} that cannot be written"
            ),
        )

    def _open_log(self, path: str) -> OutputFile | None:
        """A log file of this attempt, or None (warned) when it cannot be created."""
        try:
            return OutputFile.open(path, lambda f, exc: self.log_dir_failed(f.path, exc))
        except OSError as exc:
            self.log_dir_failed(path, exc)
            return None

    def open_route(
        self, plan: LaunchPlan, local_rank: int, rank: int, stream: int, attempt_path: str
    ) -> Route:
        """Opens the files one worker stream needs in this attempt and returns its route."""
        spec = route_spec(plan, local_rank, rank, stream)
        name = "stdout" if stream == STDOUT else "stderr"
        log_file = None
        if spec.to_file:
            # Unbuffered: the file holds what the worker wrote even if the launcher is killed.
            log_file = self._open_log(os.path.join(attempt_path, str(local_rank), f"{name}.log"))
        filters = (
            plan.args.duplicate_stdout_filters if stream == STDOUT else plan.args.duplicate_stderr_filters
        )
        filtered = self.filtered_file(attempt_path, name) if filters else None
        board = self.board if stream == self.bar_stream else None
        rank_file = self.rank_logs.file_for(rank) if self.rank_logs is not None else None
        return Route(
            spec,
            self.sink(stream),
            log_file,
            filtered if spec.duplicate else None,
            filters,
            board,
            rank_file,
            stream,
        )

    def filtered_file(self, attempt_path: str, name: str) -> OutputFile | None:
        """The attempt's `filtered_<stream>.log`, created once per attempt even if nothing matches."""
        path = os.path.join(attempt_path, f"filtered_{name}.log")
        if path not in self._filtered:
            self._filtered[path] = self._open_log(path)
        return self._filtered[path]

    def flush(self) -> None:
        """Pushes queued output of both streams to the terminal, keeping a pinned bar at the bottom."""
        board = self.board
        if board is None or (not board.shown and not board.owner):
            self.out.flush()
            self.err.flush()
        else:
            other = self.out if self.bar_stream == STDERR else self.err
            scrolls = self._bar_sink.pending or (self._other_on_terminal and other.pending)
            if board.shown and (scrolls or board.changed):
                self._bar_sink.raw(erase_rows(board.shown))
                board.shown = 0
            self.out.flush()
            self.err.flush()
            if board.owner is not None and not board.shown:
                columns = self.columns()
                if self.bar_width is not None:
                    self.bar_width.set(columns)  # a resize that came before the signal was watched
                rows = board.rows()
                # The area's rows, the cursor left at the end of the bottom one (where tqdm leaves it).
                self._bar_sink.raw(b"\n".join(fit_line(row, columns) for row in rows))
                board.shown = len(rows)
            board.changed = False

    def close_files(self) -> None:
        """Closes the duplicate-filter files."""
        for f in self._filtered.values():
            if f is not None:
                f.close()
        self._filtered.clear()


def _attempt_of(path: str) -> str:
    """The `attempt_N` directory a log file belongs to (`attempt_N/<local_rank>/stdout.log` or
    `attempt_N/filtered_stdout.log`)."""
    parent = os.path.dirname(path)
    return parent if os.path.basename(parent).startswith("attempt_") else os.path.dirname(parent)
