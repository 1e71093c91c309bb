"""`fakerun-tail`: one rank's (or one node's) output of a job running on this host, from its rank files."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import BinaryIO, NoReturn

import psutil

from fakerun.launcher.ranklogs import META, rank_file_name
from fakerun.paths import state_dir

PROG = "fakerun-tail"
POLL_S = 0.1  # ~10 Hz: new output shows promptly and an idle follower costs next to no CPU
READ_CHUNK = 1 << 20
PID_REUSE_SLACK_S = 5.0
_BACK_BLOCK = 1 << 16
_LINE, _BAR = "line", "bar"
_CR, _LF = 0x0D, 0x0A
_CR_OR_LF = re.compile(rb"[\r\n]")
# The end of tqdm's meter: `[elapsed<remaining, rate, postfix]` or `[elapsed, rate]`. The rank file holds
# stdout and stderr in one byte stream, so a stdout line written right after a bar refresh (which has no
# newline) is glued to it; this bracket is where the refresh ends and the line begins.
_METER_END = re.compile(rb"\[(?:\d+d )?\d+:\d\d(?::\d\d)?(?:[<,][^\]\r\n]*)?\]")


class TailError(Exception):
    """A one-line error for the user, with the exit code it calls for."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Stop(BaseException):
    """Raised from a signal handler: Ctrl-C, SIGTERM or SIGHUP ends the tail quietly."""


# ---------------------------------------------------------------------------------------------- pure parts


@dataclass(frozen=True)
class Job:
    """A running job as its meta.json describes it."""

    run_id: str
    launcher_pid: int
    nproc_per_node: int
    nodes: dict[int, str]
    ranks: tuple[int, ...]
    started: float
    script: str = ""
    directory: str = ""

    def label(self) -> str:
        """How the job is named in messages: run id and launcher pid (run ids need not be unique)."""
        return f"{self.run_id} (pid {self.launcher_pid})"


def parse_meta(raw: object, directory: str = "") -> Job | None:
    """The job a meta.json describes, or None when it is not a meta we understand."""
    if not isinstance(raw, Mapping):
        return None
    try:
        nproc = int(raw["nproc_per_node"])
        ranks = tuple(sorted(int(r) for r in raw["ranks"]))
        nodes_raw = raw.get("nodes") or {}
        nodes = {int(k): str(v) for k, v in nodes_raw.items()}
        job = Job(
            run_id=str(raw["run_id"]),
            launcher_pid=int(raw["launcher_pid"]),
            nproc_per_node=nproc,
            nodes=nodes or {r // nproc: "" for r in ranks},
            ranks=ranks,
            started=float(raw.get("started", 0.0)),
            script=str(raw.get("script", "")),
            directory=directory,
        )
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError):
        return None
    return job if nproc > 0 else None


def _holding(jobs: Sequence[Job], rank: int | None, node: int | None) -> list[Job]:
    """The agents among `jobs` that run the wanted ranks: node `node`'s, else rank `rank` (default 0)."""
    if node is not None:
        return [j for j in jobs if node_ranks(j, node)]
    return [j for j in jobs if (0 if rank is None else rank) in j.ranks]


def choose_job(
    jobs: Sequence[Job], run_id: str | None, *, rank: int | None = None, node: int | None = None
) -> Job:
    """The job to tail among the running ones: the only one, or the one --run-id (run id or pid) names.

    The agents of one job (one launcher per node, all on this host) share its run id: among them, the one
    running the ranks asked for (--node, --rank, else rank 0) is the one to tail.
    """
    if run_id is not None:
        matches = [j for j in jobs if run_id in (j.run_id, str(j.launcher_pid))]
        if not matches:
            running = ", ".join(j.label() for j in jobs) or "none"
            raise TailError(f"no running fakerun job has run id {run_id} (running: {running})")
    elif not jobs:
        raise TailError("no fakerun job is running on this host")
    else:
        matches = list(jobs)
    if len(matches) > 1 and len({j.run_id for j in matches}) == 1:
        holding = _holding(matches, rank, node)
        matches = holding if len(holding) == 1 else matches
    if len(matches) == 1:
        return matches[0]
    if run_id is not None:
        pids = ", ".join(str(j.launcher_pid) for j in matches)
        raise TailError(f"{len(matches)} running jobs have run id {run_id}; pick one by pid: --run-id {pids}")
    listed = ", ".join(j.label() for j in matches)
    raise TailError(f"{len(matches)} fakerun jobs are running: {listed}; pick one with --run-id")


def format_ranges(values: Sequence[int]) -> str:
    """`0-7` or `0-3, 8-11`: sorted integers as compact ranges."""
    spans: list[list[int]] = []
    for v in sorted(set(values)):
        if spans and v == spans[-1][1] + 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def node_ranks(job: Job, node: int) -> list[int]:
    """The global ranks of one node of the job (global rank r is on node r // nproc_per_node)."""
    return [r for r in job.ranks if r // job.nproc_per_node == node]


def select_ranks(job: Job, rank: int | None, node: int | None) -> list[int]:
    """The ranks to show for --rank / --node (rank 0 by default); a bad one is a usage error (exit 2)."""
    if node is not None:
        ranks = node_ranks(job, node)
        if node not in job.nodes or not ranks:
            valid = format_ranges(list(job.nodes))
            raise TailError(f"argument --node: {node} is not a node of job {job.run_id} (valid: {valid})", 2)
        return ranks
    rank = 0 if rank is None else rank
    if rank not in job.ranks:
        valid = format_ranges(job.ranks)
        raise TailError(f"argument --rank: {rank} is not a rank of job {job.run_id} (valid: {valid})", 2)
    return [rank]


@dataclass(frozen=True)
class Unit:
    """One piece of a rank's output: a whole line, or one bar refresh (`\\r` + text, maybe a newline)."""

    kind: str  # _LINE or _BAR
    text: bytes  # without the `\r` of a bar and without the final `\n`
    newline: bool = True

    def encode(self) -> bytes:
        """The bytes this unit was read from."""
        head = b"\r" if self.kind == _BAR else b""
        return head + self.text + (b"\n" if self.newline else b"")


def _cut_line(buf: bytes, start: int, end: int) -> int:
    """The first `\\r` in buf[start:end] that starts a bar refresh (not the `\\r` of a `\\r\\n`), or -1."""
    k = buf.find(b"\r", start, end)
    while k != -1:
        if k + 1 < len(buf) and buf[k + 1] != _LF:
            return k
        k = buf.find(b"\r", k + 1, end)
    return -1


def split_units(buf: bytes, *, flush: bool = False, final: bool = False) -> tuple[list[Unit], bytes]:
    """Splits raw rank output into whole lines and bar refreshes; returns them and the undecided rest.

    A partial line stays in the rest until its newline arrives (or `final`: the job is over). A bar refresh
    at the end is returned when it looks like a whole tqdm meter, or with `flush` (no bytes came since),
    since workers write each refresh in one write but a read may still catch half of one.
    """
    units: list[Unit] = []
    i, n = 0, len(buf)
    while i < n:
        if buf[i] == _CR:
            m = _CR_OR_LF.search(buf, i + 1)
            j = m.start() if m else n
            body = buf[i + 1 : j]
            meter = _METER_END.search(body)
            if meter is not None and meter.end() < len(body):
                units.append(Unit(_BAR, body[: meter.end()], newline=False))
                i += 1 + meter.end()
                continue
            if j == n:
                if final or (body and (flush or meter is not None)):
                    units.append(Unit(_BAR, body, newline=False))
                    i = n
                break
            units.append(Unit(_BAR, body, newline=buf[j] == _LF))
            i = j + 1 if buf[j] == _LF else j
            continue
        j = buf.find(b"\n", i)
        k = _cut_line(buf, i, n if j == -1 else j)
        if k != -1:
            # A line without its newline and then a refresh: shown as a terminal would show it.
            units.append(Unit(_LINE, buf[i:k], newline=False))
            i = k
        elif j != -1:
            units.append(Unit(_LINE, buf[i:j]))
            i = j + 1
        else:
            if final:
                units.append(Unit(_LINE, buf[i:], newline=False))
                i = n
            break
    return units, buf[i:]


def tail_start(data: bytes, lines: int, at_file_start: bool) -> int | None:
    """Where the last `lines` lines of `data` (a file's suffix) begin, as `tail -n` counts them.

    None when `data` holds fewer lines and more of the file lies before it. A last line without its
    newline counts as a line.
    """
    if lines <= 0:
        return len(data)
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(lines):
        idx = data.rfind(b"\n", 0, end)
        if idx == -1:
            return 0 if at_file_start else None
        end = idx
    return end + 1


@dataclass
class Display:
    """Turns units into output bytes: in place on a terminal, as they are into a pipe or a file.

    On a terminal only the latest of consecutive refreshes is drawn, cut to the width (a wrapped bar could
    not be redrawn in place), and a line after a bar starts on a new line. Into a pipe a single rank's
    bytes are passed through untouched; --node mode ends an open bar line before another line so that
    every line is whole and starts with its prefix.
    """

    tty: bool
    node_mode: bool = False
    columns: Callable[[], int] = lambda: 80
    chop: bool = False  # on a terminal, cut lines at its width instead of letting them wrap (less -S)
    open: bool = False  # the cursor is not at the start of a line (a bar or a partial line was written)

    def render(self, units: Sequence[Unit], prefix: bytes = b"") -> bytes:
        """The bytes to write for these units of one rank."""
        out: list[bytes] = []
        raw = not self.tty and not self.node_mode
        for idx, unit in enumerate(units):
            if raw:
                out.append(unit.encode())
            elif unit.kind == _BAR:
                if self.tty and not unit.newline and idx + 1 < len(units):
                    nxt = units[idx + 1]
                    if nxt.kind == _BAR and nxt.text:
                        continue  # a newer refresh follows: draw that one only
                out.append(self._bar(unit, prefix))
            else:
                if self.open:
                    out.append(b"\n")
                out.append(self._fit(prefix + unit.text) + (b"\n" if unit.newline else b""))
            if unit.kind == _BAR and not unit.text:
                self.open = self.open and not unit.newline
            else:
                self.open = not unit.newline
        return b"".join(out)

    def _fit(self, text: bytes) -> bytes:
        """A line as shown: cut at the terminal's width now when chopping, else whole."""
        if not (self.chop and self.tty):
            return text
        shown = text.decode("utf-8", "replace")
        width = max(self.columns(), 1)
        return shown[:width].encode() if len(shown) > width else text

    def _bar(self, unit: Unit, prefix: bytes) -> bytes:
        """One refresh: `\\r` + prefix + text, cut to the terminal and clearing a longer previous one."""
        end = b"\n" if unit.newline else b""
        if not unit.text:
            # `\r` alone (or `\r\n`) redraws nothing: never erase the bar shown
            return end if unit.newline and (self.tty or self.open) else b""
        text = prefix + unit.text
        if not self.tty:
            return b"\r" + text + end
        limit = max(self.columns() - 1, 1)  # the last column would make the terminal wrap
        shown = text.decode("utf-8", "replace")
        if len(shown) > limit:
            text = shown[:limit].encode()
        return b"\r" + text + b"\x1b[K" + end

    def finish(self) -> bytes:
        """What ends the output: a newline after an open bar, except for a raw pipe."""
        raw = not self.tty and not self.node_mode
        if self.open and not raw:
            self.open = False
            return b"\n"
        return b""


# ------------------------------------------------------------------------------------------ files, processes


def _launcher_alive(job: Job) -> bool:
    """Whether the job's launcher still runs (not a zombie, not a later process that reused its pid)."""
    try:
        proc = psutil.Process(job.launcher_pid)
        # The launcher writes meta.json after it starts: a process born later only reuses the pid (the slack
        # covers the boot-time rounding in psutil's start times).
        if job.started and proc.create_time() > job.started + PID_REUSE_SLACK_S:
            return False
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def running_jobs(base: str) -> list[Job]:
    """The jobs with a tail directory under `base` whose launcher is alive, oldest first."""
    try:
        names = os.listdir(base)
    except OSError:
        return []
    jobs = []
    for name in names:
        if not (name.startswith("job-") and name[4:].isdigit()):
            continue
        directory = os.path.join(base, name)
        try:
            with open(os.path.join(directory, META), encoding="utf-8") as f:
                job = parse_meta(json.load(f), directory)
        except (OSError, ValueError):
            continue  # not a directory, no meta.json yet, or the job just ended
        if job is not None and _launcher_alive(job):
            jobs.append(job)
    return sorted(jobs, key=lambda j: (j.started, j.launcher_pid))


def find_job(
    base: str, run_id: str | None, wait_s: float, *, rank: int | None = None, node: int | None = None
) -> Job:
    """The job to tail; with --wait, retries for that long while none (or not the named one) is running."""
    deadline = time.monotonic() + wait_s
    while True:
        jobs = running_jobs(base)
        try:
            return choose_job(jobs, run_id, rank=rank, node=node)
        except TailError:
            # Waiting does not make several jobs one: ambiguity fails at once.
            waiting_helps = run_id is not None or not jobs
            if not waiting_helps or time.monotonic() >= deadline:
                raise
        time.sleep(POLL_S)


def _tail_offset(f: BinaryIO, lines: int) -> int:
    """The offset where the last `lines` lines of an open file begin, reading backwards by blocks."""
    pos = os.fstat(f.fileno()).st_size
    data = b""
    while True:
        step = min(_BACK_BLOCK, pos)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
        found = tail_start(data, lines, at_file_start=pos == 0)
        if found is not None:
            return pos + found


@dataclass
class RankFile:
    """One rank's file, opened once it exists, read from where the last read stopped."""

    rank: int
    path: str
    prefix: bytes
    lines: int | None  # -n: start this many lines before the end (only for files that exist at start)
    file: BinaryIO | None = None
    rest: bytes = b""

    def read(self) -> bytes:
        """New bytes since the last read (b"" when none, or while the file does not exist)."""
        if self.file is None:
            try:
                self.file = open(self.path, "rb")  # noqa: SIM115 - held open while the job runs
            except OSError:
                self.lines = None  # created later: everything in it is new
                return b""
            if self.lines is not None:
                self.file.seek(_tail_offset(self.file, self.lines))
        return self.file.read(READ_CHUNK)

    def close(self) -> None:
        """Closes the file."""
        if self.file is not None:
            self.file.close()
            self.file = None


@dataclass
class Tail:
    """Reads the chosen ranks' files and writes their units to the output."""

    sources: list[RankFile]
    display: Display
    out: BinaryIO

    def pump(self, *, settle: bool = False, final: bool = False) -> None:
        """Writes every whole unit that arrived, chunk by chunk (a long backlog is never held in memory).

        A source that stayed quiet since the last pump (or every source with `settle`) also gives up its
        trailing bar refresh; `final` (the job is over) gives up everything, a partial last line too.
        """
        for src in self.sources:
            got = False
            while data := src.read():
                got = True
                units, src.rest = split_units(src.rest + data)
                self._write(units, src.prefix)
            if src.rest and (settle or final or not got):
                units, src.rest = split_units(src.rest, flush=True, final=final)
                self._write(units, src.prefix)

    def _write(self, units: Sequence[Unit], prefix: bytes) -> None:
        if units:
            self.out.write(self.display.render(units, prefix))
            self.out.flush()

    def finish(self) -> None:
        """Ends an open bar line and closes the files."""
        end = self.display.finish()
        if end:
            self.out.write(end)
            self.out.flush()
        for src in self.sources:
            src.close()


def _job_over(job: Job) -> bool:
    """Whether the job ended: its directory is gone or its launcher is."""
    return not os.path.isdir(job.directory) or not _launcher_alive(job)


def _stdout_waiter() -> Callable[[float], None]:
    """Sleeps between polls; when stdout is a pipe whose reader left, dies of SIGPIPE as a write would."""
    try:
        mode = os.fstat(sys.stdout.fileno()).st_mode
    except (OSError, ValueError):
        return time.sleep
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return time.sleep
    poller = select.poll()
    poller.register(sys.stdout.fileno(), 0)  # no events asked: POLLERR/POLLHUP are always reported

    def wait(seconds: float) -> None:
        if poller.poll(seconds * 1000):
            # `tail -f | head` must end when head does, even while nothing new is written.
            os.kill(os.getpid(), signal.SIGPIPE)

    return wait


def follow(tail: Tail, job: Job, keep_following: bool) -> None:
    """Shows what is there, then (with -f) what arrives, until the job ends."""
    wait = _stdout_waiter()
    while True:
        # Without -f: the bar the worker is drawing counts as written; a half-written line does not.
        tail.pump(settle=not keep_following)
        if not keep_following:
            return
        if _job_over(job):
            tail.pump(final=True)  # the files are unlinked but still readable through our handles
            return
        wait(POLL_S)


# ------------------------------------------------------------------------------------------------- the CLI


def build_parser() -> argparse.ArgumentParser:
    """fakerun-tail's command line."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Show one rank's (or one node's) output of a fakerun job running on this host.",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--rank", type=int, metavar="R", help="global rank to show (default: 0)")
    which.add_argument("--node", type=int, metavar="N", help="show every rank of node N, prefixed [rankR]:")
    p.add_argument("-f", "--follow", action="store_true", help="keep showing new output until the job ends")
    p.add_argument("-n", "--lines", type=_non_negative_int, metavar="K", help="start with the last K lines")
    p.add_argument(
        "-S",
        "--chop-long-lines",
        action="store_true",
        help="on a terminal, cut lines at its width instead of wrapping them (as less -S)",
    )
    p.add_argument("--run-id", metavar="ID", help="the job to show (run id or launcher pid) when several run")
    p.add_argument(
        "--wait",
        type=_non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for the job to appear (default: 0)",
    )
    return p


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects nan
        raise ValueError(text)
    return value


def _raise_stop(signum: int, frame: FrameType | None) -> NoReturn:
    raise _Stop


@contextlib.contextmanager
def _quiet_signals() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP end the tail quietly; a closed pipe kills it silently, like `tail`."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    saved = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _error(message: str) -> None:
    with contextlib.suppress(OSError):
        print(f"{PROG}: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of `fakerun-tail`."""
    args = build_parser().parse_args(argv)
    tail: Tail | None = None
    try:
        with _quiet_signals():
            try:
                job = find_job(state_dir(), args.run_id, args.wait, rank=args.rank, node=args.node)
                ranks = select_ranks(job, args.rank, args.node)
                node_mode = args.node is not None
                tty = sys.stdout.isatty()
                display = Display(
                    tty=tty, node_mode=node_mode, columns=lambda: _columns(80), chop=args.chop_long_lines
                )
                sources = [
                    RankFile(
                        r,
                        os.path.join(job.directory, rank_file_name(r)),
                        f"[rank{r}]: ".encode() if node_mode else b"",
                        args.lines,
                    )
                    for r in ranks
                ]
                tail = Tail(sources, display, sys.stdout.buffer)
                follow(tail, job, args.follow)
            finally:
                if tail is not None:
                    with contextlib.suppress(OSError):
                        tail.finish()
    except _Stop:
        return 0
    except TailError as exc:
        _error(str(exc))
        return exc.code
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a tool that only reads must not greet its user with a traceback
        _error(f"{type(exc).__name__}: {exc}")
        return 1
    return 0


def _columns(default: int) -> int:
    """The terminal's width now (a tmux pane may have been resized)."""
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError):
        return default


if __name__ == "__main__":
    sys.exit(main())
