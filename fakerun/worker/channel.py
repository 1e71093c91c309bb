"""A worker's end of its coordinator socket: newline-framed JSON, blocking, one request at a time; and the
worker's stdout and stderr, as frames on the same socket."""

from __future__ import annotations

import errno
import io
import json
import os
import select
import socket
import time
from typing import Any

from fakerun.launcher.procs import MAX_FRAME, OUTPUT_STREAMS, encode_message

_MAX_WAIT_S = 86_400.0


class CoordinatorGone(Exception):
    """The launcher closed the control socket: the job is being torn down."""


class JobAborted(Exception):
    """Another node of the job is lost: this rank's collectives can never complete."""

    def __init__(
        self, reason: str, node: int | None, *, why: str = "remote", step: int = 0, culprit: int | None = None
    ) -> None:
        super().__init__(reason)
        self.node = node  # the node where the job failed, if the launcher knows it
        # "remote": a peer's process or node is gone; "timeout": the collective timed out; "ib": the network
        # to the peer's node is gone (its IB sends ran out of retries).
        self.why = why
        self.step = step  # the step whose collective timed out
        self.culprit = culprit  # the rank that never joined it, when known


class CoordinatorLink:
    """Sends this rank's reports and waits for the coordinator's answers."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)
        self._buffer = b""
        self.broken: set[int] = set()  # output streams the launcher can no longer write anywhere

    def output(self, stream: int, data: bytes) -> None:
        """Writes `data` to the worker's stdout (1) or stderr (2): one frame, whole."""
        if stream in self.broken:
            # torchrun's worker would write to the launcher's stdout or stderr, whose reader is gone.
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
        try:
            for at in range(0, len(data), MAX_FRAME):
                part = data[at : at + MAX_FRAME]
                self._sock.sendall(bytes((stream,)) + len(part).to_bytes(4, "big") + part)
        except OSError:
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE)) from None

    def send(self, message: dict[str, Any]) -> None:
        """One message, written whole."""
        try:
            self._sock.sendall(encode_message(message))
        except OSError as exc:
            raise CoordinatorGone(str(exc)) from None

    def receive(self) -> dict[str, Any]:
        """Blocks until the next answer arrives."""
        while True:
            while b"\n" not in self._buffer:
                self._buffer += self._recv_some()
            reply = self._take()
            if reply is not None:
                return reply

    def _take(self) -> dict[str, Any] | None:
        """The first message of the buffer (whole): an answer, None for a notice it has applied, or raises."""
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply = json.loads(line.decode())  # UTF-8, as the launcher writes: json's own detection is slower
        if not isinstance(reply, dict):
            raise CoordinatorGone("malformed reply")
        if reply.get("k") == "epipe":
            # The launcher's stdout (or stderr) reader is gone: this worker's next write there fails.
            stream = reply.get("stream")
            if stream in OUTPUT_STREAMS:
                self.broken.add(stream)
            return None
        if reply.get("k") == "abort":
            node, step, culprit = reply.get("node"), reply.get("s"), reply.get("culprit")
            raise JobAborted(
                str(reply.get("reason", "")),
                node if isinstance(node, int) else None,
                why=str(reply["why"]) if reply.get("why") in ("timeout", "ib") else "remote",
                step=step if isinstance(step, int) else 0,
                culprit=culprit if isinstance(culprit, int) else None,
            )
        return reply

    def wait_start(self) -> None:
        """Blocks until the launcher has forked every worker of the attempt and lets them begin."""
        reply = self.receive()
        if reply.get("k") != "start":
            raise CoordinatorGone(f"expected the start, got {reply.get('k')!r}")

    def wait_until(self, deadline: float) -> None:
        """Sleeps until `deadline` (monotonic), waking at once if the launcher aborts the job meanwhile."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            # select() overflows past ~9e9 s; waking once a day and looping costs nothing.
            readable, _, _ = select.select([self._sock], [], [], min(left, _MAX_WAIT_S))
            if readable:
                # Only notices arrive unasked: an abort (raised here) or a stream gone (applied).
                self._buffer += self._recv_some()
                while b"\n" in self._buffer:
                    if self._take() is not None:
                        raise CoordinatorGone("an answer nobody asked for")

    def _recv_some(self) -> bytes:
        try:
            data = self._sock.recv(65536)
        except OSError as exc:
            raise CoordinatorGone(str(exc)) from None
        if not data:
            raise CoordinatorGone("control socket closed")
        return data

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Sends and waits for the answer."""
        self.send(message)
        return self.receive()


class FramedStream(io.TextIOBase):
    """A simulated worker's sys.stdout or sys.stderr: each write goes to the launcher as one frame."""

    def __init__(self, link: CoordinatorLink, stream: int) -> None:
        super().__init__()
        self._link = link
        self._stream = stream

    encoding = "utf-8"
    errors = "backslashreplace"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        """Sends `text` (utf-8), whole."""
        if text:
            self._link.output(self._stream, text.encode("utf-8", "backslashreplace"))
        return len(text)
