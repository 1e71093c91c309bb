"""Worker processes: fork from the preloaded launcher, own session, parent-death signal, exec or simulate."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import resource
import signal
import socket
import sys
import termios
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from fakerun.launcher import pagemerge

_PR_SET_PDEATHSIG = 1
# A simulated worker finds its coordinator socket here (after stdin, stdout and stderr).
CONTROL_FD = 3
# On that socket the worker also writes its output, in frames: the stream's number (1 stdout, 2 stderr),
# the length (4 bytes, big-endian), the bytes. Its control messages are JSON objects, one a line: their
# first byte is `{`, never 1 or 2.
OUTPUT_STREAMS = (1, 2)
FRAME_HEADER = 5
MAX_FRAME = 1 << 20  # a larger write goes in several frames; a larger announced length is not a frame
# One compact encoder for every control message: json.dumps with options builds a new encoder per call, and
# every rank sends a report and gets an answer each step.
_compact = json.JSONEncoder(separators=(",", ":")).encode
_libc: ctypes.CDLL | None = None


_prctl: Callable[..., int] | None = None
_madvise: Callable[[int, int, int], int] | None = None


def encode_message(message: dict[str, Any]) -> bytes:
    """One control message as it goes on the socket, either way: compact JSON and a newline."""
    return _compact(message).encode() + b"\n"


def _set_parent_death_signal(sig: int) -> None:
    """Asks the kernel to send `sig` to this process when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    preload_libc()
    assert _prctl is not None
    _prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def preload_libc() -> None:
    """Loads libc and looks prctl up in the launcher, so that forked workers need not: ctypes' first lookup
    of a function builds objects that would cost each worker ~1.5 MB of pages copied from the launcher."""
    global _libc, _prctl, _madvise
    if _prctl is not None or not sys.platform.startswith("linux"):
        return
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:  # not glibc: ask the linker's cache (a subprocess running ldconfig -p)
            from ctypes.util import find_library

            _libc = ctypes.CDLL(find_library("c") or "libc.so.6", use_errno=True)
    _prctl = _libc.prctl
    madvise = _libc.madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)  # 64-bit addresses and lengths
    madvise.restype = ctypes.c_int
    _madvise = madvise


@dataclass
class ChildPipes:
    """The parent's ends of one worker's pipes (or pseudo-terminal masters)."""

    stdout: int | None  # None: a simulated worker, whose output comes as frames on its control socket
    stderr: int | None
    ttys: frozenset[int] = frozenset()  # the std fds (1, 2) that are pseudo-terminals
    control: socket.socket | None = None  # the launcher's end of the worker's control socket, if asked


# What a forked child runs once its fds and session are set up; it never returns normally.
ChildMain = Callable[[], int]


class ForkProcessTable:
    """Starts workers by fork(): cheap, since the launcher has already imported what workers need."""

    def __init__(self, child_fd_limit: int | None = None) -> None:
        self.launcher_pid = os.getpid()
        # The soft RLIMIT_NOFILE workers get back: the launcher raised its own, torchrun's workers keep the
        # user's.
        self.child_fd_limit = child_fd_limit
        # Workers in a session of their own: a signal for one goes to its whole process group, so whatever
        # the worker started (a --fake-exec script's children) gets it too, as torch's killpg does.
        self._leaders: set[int] = set()
        self._all_signals = signal.valid_signals()
        preload_libc()

    def spawn_all(
        self, requests: Sequence[ForkRequest], *, new_session: bool
    ) -> list[tuple[int, ChildPipes]]:
        """Forks one worker per request, in order: its stdout and stderr pipes to the launcher
        (pseudo-terminals for the fds in `ttys`, sized like the launcher's terminal on that fd), or with
        `control` one socket pair that is its fds 1, 2 and CONTROL_FD; raises SpawnFailed (with the workers
        started) when a pipe, a socket or a fork cannot be made.

        Between two forks the launcher only makes the next worker's pipes and forks: each memory page it
        writes then stays behind, copied, in every worker forked before (copy-on-write), a private page per
        worker and per write, so what costs Python objects is done before the first fork or after the last.
        """
        if _madvise is not None and any(request.control for request in requests):
            # Simulated workers: the pages they will copy from the launcher, which the kernel can merge back
            # into one where it runs same-page merging (madvise was looked up by preload_libc() in __init__).
            pagemerge.mark_mergeable(_madvise)
        started: list[tuple[int, _Ends]] = []
        failure: OSError | None = None
        # Signals wait until each child has its own handlers: one landing in between would run the
        # launcher's handler in the child, and a SIGTERM meant for the worker would be lost.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, self._all_signals)
        try:
            for request in requests:
                ends = _Ends.open(request.ttys, request.control)
                try:
                    pid = self._fork()
                except BaseException:
                    ends.close_theirs()
                    ends.close_ours()
                    raise
                if pid == 0:  # pragma: no cover - runs in the child, which never returns
                    self._run_child(request, ends, new_session, mask)
                ends.close_theirs()
                started.append((pid, ends))
        except OSError as exc:
            failure = exc
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if new_session:
            self._leaders.update(pid for pid, _ in started)
        pipes = [(pid, ends.ours()) for pid, ends in started]
        if failure is not None:
            raise SpawnFailed(pipes, failure)
        return pipes

    def _fork(self) -> int:
        """os.fork(); a seam for tests that run out of processes."""
        return os.fork()

    def _run_child(
        self, request: ForkRequest, ends: _Ends, new_session: bool, mask: set[int | signal.Signals]
    ) -> NoReturn:
        """The child's side of a fork: its fds and session, then its main; ends the process."""
        code = 1
        try:
            theirs = ends.control_w.fileno() if ends.control_w is not None else None
            limit = self.child_fd_limit
            _setup_child(self.launcher_pid, new_session, ends.out_w, ends.err_w, theirs, mask, limit)
            code = request.child_main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            with contextlib.suppress(Exception):
                traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def kill(self, pid: int, sig: int) -> None:
        """Sends `sig` to the worker, to its whole process group when it has its own (as torch does)."""
        if pid in self._leaders:
            try:
                os.killpg(pid, sig)
                return
            except (ProcessLookupError, PermissionError):
                pass  # not its group's leader yet (it is still setting up, signals blocked): itself only
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def forget(self, pid: int) -> None:
        """The worker was reaped: its pid, and so its group id, may be reused."""
        self._leaders.discard(pid)


@dataclass(frozen=True)
class ForkRequest:
    """One worker to fork: what it runs, whether it gets a control socket, its std fds that are ptys."""

    child_main: ChildMain
    control: bool = False
    ttys: frozenset[int] = frozenset()


class SpawnFailed(Exception):
    """A pipe, a socket or a fork could not be made: the workers started before it, and the error."""

    def __init__(self, started: list[tuple[int, ChildPipes]], error: OSError) -> None:
        super().__init__(str(error))
        self.started = started
        self.error = error


@dataclass
class _Ends:
    """Both ends of one worker's channels: its stdout and stderr pipes (or ptys), or, for a simulated worker,
    one socket pair that is its stdout, its stderr and its control socket at once."""

    out_r: int | None
    out_w: int
    out_tty: bool
    err_r: int | None
    err_w: int
    err_tty: bool
    control_r: socket.socket | None = None
    control_w: socket.socket | None = None

    @classmethod
    def open(cls, ttys: frozenset[int], control: bool) -> _Ends:
        """The channels of a worker: a socket pair with `control`, else pipes (ptys for the fds in `ttys`)."""
        if control:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            return cls(None, theirs.fileno(), False, None, theirs.fileno(), False, ours, theirs)
        out_r, out_w, out_tty = _output_channel(1 in ttys, 1)
        try:
            err_r, err_w, err_tty = _output_channel(2 in ttys, 2)
        except BaseException:
            os.close(out_r)
            os.close(out_w)
            raise
        return cls(out_r, out_w, out_tty, err_r, err_w, err_tty)

    def close_theirs(self) -> None:
        """Closes the worker's ends (in the launcher, once the worker has them)."""
        if self.control_w is not None:
            self.control_w.close()
            return
        os.close(self.out_w)
        os.close(self.err_w)

    def close_ours(self) -> None:
        """Closes the launcher's ends (a worker that was never started)."""
        for fd in (self.out_r, self.err_r):
            if fd is not None:
                os.close(fd)
        if self.control_r is not None:
            self.control_r.close()

    def ours(self) -> ChildPipes:
        """The launcher's ends, non-blocking, as ChildPipes."""
        for fd in (self.out_r, self.err_r):
            if fd is not None:
                os.set_blocking(fd, False)
        if self.control_r is not None:
            self.control_r.setblocking(False)
        ptys = frozenset(fd for fd, tty in ((1, self.out_tty), (2, self.err_tty)) if tty)
        return ChildPipes(self.out_r, self.err_r, ptys, self.control_r)


def _output_channel(tty: bool, like: int) -> tuple[int, int, bool]:
    """A worker output stream's (launcher's end, worker's end, whether a pty): a pseudo-terminal sized like
    the launcher's terminal on fd `like` if `tty`, else a pipe."""
    if tty:
        try:
            master, slave = open_pty(like)
            return master, slave, True
        except (OSError, termios.error):
            pass  # out of ptys (kernel.pty.max is system-wide): this worker writes to a pipe instead
    r, w = os.pipe()
    return r, w, False


def open_pty(like: int) -> tuple[int, int]:
    """A pseudo-terminal (master, slave) that passes a worker's bytes unchanged, sized like the terminal on
    fd `like`."""
    master, slave = os.openpty()
    try:
        attrs = termios.tcgetattr(slave)
        # No output processing: the worker's `\n` must reach the launcher as `\n`, not `\r\n` (the launcher's
        # own terminal adds the `\r`, as for torchrun's workers writing to it); nobody types into it to echo.
        attrs[1] &= ~termios.OPOST
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    copy_window_size(like, master)
    return master, slave


def copy_window_size(source: int, pty: int) -> None:
    """Gives the pseudo-terminal `pty` the rows and columns of the terminal on fd `source` (if it is one)."""
    # The struct winsize as it is (rows, columns and pixels): termios.tcgetwinsize is Python 3.11+.
    with contextlib.suppress(OSError):
        fcntl.ioctl(pty, termios.TIOCSWINSZ, fcntl.ioctl(source, termios.TIOCGWINSZ, bytes(8)))


_replaced_streams: list[object] = []


def _setup_child(
    launcher_pid: int,
    new_session: bool,
    out_w: int,
    err_w: int,
    control: int | None,
    mask: set[int | signal.Signals],
    fd_limit: int | None,
) -> None:
    """Makes a fresh fork look like a worker torchrun started: own session, std streams, no inherited fds."""
    signal.set_wakeup_fd(-1)
    for sig in (
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGCHLD,
        signal.SIGWINCH,
    ):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Python ignores SIGPIPE and SIGXFSZ; a worker must get the defaults, as subprocess restores them.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    # Handlers are the worker's own now: a signal that came meanwhile is delivered to them.
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if new_session:
        os.setsid()
    # Better than torchrun on purpose: a SIGKILLed launcher takes its workers with it.
    _set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != launcher_pid:
        os._exit(1)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    keep = 3
    if control is not None:
        # After 1 and 2 are set, so clobbering whatever sat at fd 3 (maybe out_w) is harmless.
        if control != CONTROL_FD:
            os.dup2(control, CONTROL_FD)
        keep = CONTROL_FD + 1
    # Close every other inherited fd: sibling pipe ends would otherwise keep EOFs from arriving.
    os.closerange(keep, _max_fd())
    if fd_limit is not None:
        # Only after the close: a lower limit than an open fd's number would make closerange miss it.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (fd_limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
            )
    # Python's sys.stdout still wraps fd 1; rebind it line-buffered as `python -u` would be unbuffered (a
    # simulated worker's own main rebinds both to frames on its control socket instead).
    # The old stream objects are kept alive: if one owned an fd we have just reused (an embedding program
    # that pointed sys.stdout at a file), collecting it would close that fd under us, or flush the
    # launcher's unwritten output into the worker's socket.
    _replaced_streams.extend((sys.stdout, sys.stderr))
    if control is None:
        sys.stdout = open(1, "w", buffering=1, closefd=False, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115


def _max_fd() -> int:
    """The highest fd number that may be open in this process, plus one."""
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 65536


def exec_child(argv: list[str], env: dict[str, str]) -> ChildMain:
    """A child main that replaces the forked worker with the real program (`--fake-exec`)."""

    def run() -> int:
        try:
            if os.sep in argv[0]:
                os.execve(argv[0], argv, env)
            else:
                os.execvpe(argv[0], argv, env)
        except OSError as exc:
            print(f"{argv[0]}: {exc.strerror}", file=sys.stderr)
            return 127
        return 0  # unreachable: execve does not return

    return run


def exit_code_of(status: int) -> int:
    """waitpid status -> torch's exit code convention (negative signal number when killed)."""
    return os.waitstatus_to_exitcode(status)
