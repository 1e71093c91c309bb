"""A connection to another fakerun agent: framed messages in and out, and when we last heard from it."""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from fakerun.launcher.wire import FrameDecoder, encode

SEND_TIMEOUT_S = 5.0


class PeerGone(Exception):
    """The connection closed or broke."""


@dataclass
class Peer:
    """One TCP connection between agents (either end), with its decoder and liveness."""

    sock: socket.socket
    address: str
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    last_seen: float = field(default_factory=time.monotonic)
    group_rank: int = -1
    host: str = ""
    inbox: list[dict[str, Any]] = field(default_factory=list)  # decoded, not yet handled

    def fileno(self) -> int:
        """The socket's fd (for selectors)."""
        return self.sock.fileno()

    def send(self, message: dict[str, Any]) -> None:
        """Writes one frame whole; PeerGone if the peer is gone or stuck for SEND_TIMEOUT_S."""
        data = encode(message)
        try:
            self.sock.settimeout(SEND_TIMEOUT_S)
            self.sock.sendall(data)
        except OSError as exc:
            raise PeerGone(str(exc) or type(exc).__name__) from None
        finally:
            with contextlib.suppress(OSError):
                self.sock.setblocking(False)

    def receive(self) -> list[dict[str, Any]]:
        """The messages available now (non-blocking); PeerGone at EOF, WireError on garbage."""
        if self.inbox:
            queued, self.inbox = self.inbox, []
            return queued
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError as exc:
            raise PeerGone(str(exc) or type(exc).__name__) from None
        if not data:
            raise PeerGone("connection closed")
        self.last_seen = time.monotonic()
        return self.decoder.feed(data)

    def receive_blocking(self, deadline: float) -> dict[str, Any]:
        """The next message, waiting until `deadline` (monotonic); TimeoutError after it."""
        while not self.inbox:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from the peer in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise
            except OSError as exc:
                raise PeerGone(str(exc) or type(exc).__name__) from None
            finally:
                with contextlib.suppress(OSError):
                    self.sock.setblocking(False)
            if not data:
                raise PeerGone("connection closed")
            self.last_seen = time.monotonic()
            self.inbox += self.decoder.feed(data)
        return self.inbox.pop(0)

    def close(self) -> None:
        """Closes the connection."""
        with contextlib.suppress(OSError):
            self.sock.close()
