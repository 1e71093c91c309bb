"""Files the launcher writes while the job runs: whole records or nothing, one warning when a write fails."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import time
from collections.abc import Callable

from fakerun.launcher import glog

# What the owner of a file does when a write to it fails: (the file, the error).
OnError = Callable[["OutputFile", OSError], None]


def reason(exc: OSError) -> str:
    """The error as a user reads it (`No space left on device`)."""
    return exc.strerror or str(exc)


# The job's clock for fakerun's own notices, so that they fall in line with torchrun's (main sets it).
_clock: Callable[[], float] = time.time


def set_notice_clock(clock: Callable[[], float]) -> None:
    """Makes fakerun's notices take their time from the job's clock."""
    global _clock
    _clock = clock


def notice(message: str, level: str = "W", *, depth: int = 1) -> str:
    """fakerun's own notice in the launcher's glog format, naming the module and line that raised it.

    `W1205 07:40:00.123000 <pid> fakerun/launcher/control.py:157] message`: one line among torchrun's, in
    their shape, instead of a `fakerun:` prefix that no real job prints.
    """
    frame = sys._getframe(depth)
    path = frame.f_code.co_filename.replace(os.sep, "/")
    cut = path.rfind("fakerun/")
    source = f"{path[cut:] if cut >= 0 else os.path.basename(path)}:{frame.f_lineno}"
    text = " ".join(message.splitlines())  # one line: the console writes whole lines
    return glog.format_glog(level, _clock(), os.getpid(), source, text).rstrip("\n")


def warning(what: str, path: str, exc: OSError, then: str) -> str:
    """The notice of a file the launcher cannot write: which file, which error, what happens now."""
    return notice(f"cannot write {what} {path}: {reason(exc)}; {then}", depth=2)


class OutputFile:
    """An output file written a whole record (a line, a chunk) at a time; dropped at its first error."""

    def __init__(self, fd: int, path: str, on_error: OnError) -> None:
        self.path = path
        self._fd: int | None = fd
        self._on_error = on_error
        st = os.fstat(fd)
        # Where the file ends, so that a record cut short by a full disk can be cut back off. Devices and
        # pipes (/dev/full, a FIFO) cannot be truncated: there a failed record is simply not completed.
        self._end: int | None = st.st_size if stat.S_ISREG(st.st_mode) else None

    @classmethod
    def open(cls, path: str, on_error: OnError, *, append: bool = False, mode: int = 0o644) -> OutputFile:
        """Creates (or, with `append`, extends) `path`, unbuffered; OSError is the caller's.

        Non-blocking, which only matters for a FIFO: one without a reader fails at once (ENXIO), and a reader
        that stops reading makes a write fail (EAGAIN) rather than the whole job wait for it.
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
        flags |= os.O_APPEND if append else os.O_TRUNC
        fd = os.open(path, flags, mode)
        try:
            return cls(fd, path, on_error)
        except OSError:
            os.close(fd)
            raise

    @property
    def closed(self) -> bool:
        """Whether nothing more will be written (closed, or dropped after an error)."""
        return self._fd is None

    def write(self, data: bytes) -> bool:
        """Appends `data` whole, or leaves the file as it was and drops it; False when nothing was written."""
        fd = self._fd
        if fd is None:
            return False
        view = memoryview(data)
        try:
            while view:
                n = os.write(fd, view)
                if n <= 0:  # a regular file never does this; a device might: treat it as full
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[n:]
        except OSError as exc:
            if self._end is not None and len(view) < len(data):
                # A short write filled the disk mid-record: cut it back so the file ends on a whole record.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._end)
            self._fail(exc)
            return False
        if self._end is not None:
            self._end += len(data)
        return True

    def close(self) -> None:
        """Closes the file; an error reported only now (NFS, delayed allocation) counts as a write's."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.close(fd)
        except OSError as exc:
            self._on_error(self, exc)

    def _fail(self, exc: OSError) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._on_error(self, exc)
