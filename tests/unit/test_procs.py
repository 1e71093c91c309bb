"""Worker output channels: the pseudo-terminals --fake-exec scripts get where torchrun's see a terminal."""

from __future__ import annotations

import fcntl
import os
import struct
import termios

from fakerun.launcher.procs import ForkProcessTable, ForkRequest, copy_window_size, open_pty

# Bytes a terminal's output processing would change: `\n` (ONLCR adds `\r`), a bare `\r`, a tab, colour codes.
RAW = b"line\nbar 1/2\rbar 2/2\r\n\ttab\x1b[31mred\x1b[0m\n"


def window(fd: int) -> tuple[int, int, int, int]:
    """The terminal's struct winsize: rows, columns, x pixels, y pixels."""
    rows, cols, xpix, ypix = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    return rows, cols, xpix, ypix


def read_all(fd: int) -> bytes:
    """Everything on a pipe or pty master until EOF (a pty master says EIO once every slave is closed)."""
    os.set_blocking(fd, True)
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def open_fds() -> set[int]:
    """This process's open descriptors (the one that read the list is closed by now)."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:
            continue
        fds.add(int(name))
    return fds


class TestOpenPty:
    def test_bytes_pass_unchanged_and_nothing_echoes(self) -> None:
        """What a worker writes reaches the master as written; nothing the master is sent comes back."""
        null = os.open(os.devnull, os.O_WRONLY)
        master, slave = open_pty(null)
        try:
            os.write(master, b"typed\n")  # echoed by a pty's default settings
            os.write(slave, RAW)
            os.close(slave)
            assert read_all(master) == RAW
        finally:
            os.close(master)
            os.close(null)

    def test_size_copied_from_the_launchers_terminal(self) -> None:
        """The worker's terminal has the launcher's rows, columns and pixels; copied again on a resize."""
        term_master, term = os.openpty()
        master, slave = -1, -1
        try:
            fcntl.ioctl(term, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 97, 800, 600))
            master, slave = open_pty(term)
            assert os.isatty(slave)
            assert window(slave) == (33, 97, 800, 600)
            fcntl.ioctl(term, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            copy_window_size(term, master)
            assert window(slave) == (40, 120, 0, 0)
        finally:
            for fd in (term_master, term, master, slave):
                if fd >= 0:
                    os.close(fd)

    def test_size_left_alone_when_the_source_is_no_terminal(self) -> None:
        """A launcher stream that is a file or pipe has no size to give: the pty keeps the kernel's 0 x 0."""
        r, w = os.pipe()
        master, slave = open_pty(w)
        try:
            assert window(slave) == (0, 0, 0, 0)
        finally:
            for fd in (r, w, master, slave):
                os.close(fd)


def test_spawned_worker_sees_a_terminal_only_on_the_streams_asked_and_no_descriptor_leaks() -> None:
    """stdout a pty, stderr a pipe; the launcher keeps one descriptor per stream, none once closed."""
    before = open_fds()

    def child() -> int:
        os.write(1, f"{os.isatty(1)} {os.isatty(2)}\n".encode() + RAW)
        os.write(2, b"on stderr\n")
        return 0

    procs = ForkProcessTable()
    [(pid, pipes)] = procs.spawn_all([ForkRequest(child, ttys=frozenset({1}))], new_session=True)
    assert pipes.ttys == frozenset({1})
    assert pipes.stdout is not None and pipes.stderr is not None
    assert open_fds() - before == {pipes.stdout, pipes.stderr}
    out, err = read_all(pipes.stdout), read_all(pipes.stderr)
    _, status = os.waitpid(pid, 0)
    procs.forget(pid)
    os.close(pipes.stdout)
    os.close(pipes.stderr)
    assert os.waitstatus_to_exitcode(status) == 0
    assert out == b"True False\n" + RAW
    assert err == b"on stderr\n"
    assert open_fds() == before
