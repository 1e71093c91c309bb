"""A worker's end of its coordinator socket: newline-framed JSON, blocking, one request at a time."""

from __future__ import annotations

import json
import select
import socket
import time
from typing import Any

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

    def send(self, message: dict[str, Any]) -> None:
        """One message, written whole."""
        try:
            self._sock.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        except OSError as exc:
            raise CoordinatorGone(str(exc)) from None

    def receive(self) -> dict[str, Any]:
        """Blocks until the next answer arrives."""
        while b"\n" not in self._buffer:
            self._buffer += self._recv_some()
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise CoordinatorGone("malformed reply")
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
                # Only an abort arrives unasked; receive() raises it (or CoordinatorGone at EOF).
                self._buffer += self._recv_some()
                if b"\n" in self._buffer:
                    self.receive()

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
