"""Connections between fakerun agents: one peer's framed messages, and the listening port's gate.

The gate stands between the rendezvous port (reachable by anyone on the network) and the job: it accepts
connections, at most `cap` of them waiting for their handshake at once (fewer when few fds are left), gives
each HANDSHAKE_TIMEOUT_S to prove the job's secret with small frames only, and refuses the rest with one
line each, rate-limited, so a flood or a retrying stranger costs neither fds nor the console.
"""

from __future__ import annotations

import contextlib
import errno
import math
import resource
import selectors
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fakerun.launcher.outfile import notice
from fakerun.launcher.wire import MAX_FRAME, FrameDecoder, WireError, challenge, encode, verify_answer

SEND_TIMEOUT_S = 5.0
HANDSHAKE_TIMEOUT_S = 5.0  # from accept() to a proven secret (and, at the rendezvous, the join message)
EVICT_AFTER_S = 1.0  # a connection keeps its place this long before a newer one may take it (agents need ms)
ACCEPT_BATCH = 16  # accepts per wake-up, so connections already in are read between bursts
NO_FD_PAUSE_S = 1.0  # accept() failed for lack of fds: stop accepting this long
MAX_PENDING = 64
REPEAT_S = 30.0  # a kind of refusal is logged once per this window; the rest are counted
LINES_PER_WINDOW = 5
_HELD_KINDS = 64  # distinct kinds counted per window (beyond, they are counted as one)
_OUT_OF_FDS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


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

    def authenticated(self) -> None:
        """The peer proved the secret: it may now send full-size frames."""
        self.decoder.limit = MAX_FRAME

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


def pending_cap() -> int:
    """How many connections may wait for their handshake at once: MAX_PENDING, less with few fds allowed."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_PENDING
    # Workers' pipes and sockets, log files and the agents' links need the rest.
    return max(4, min(MAX_PENDING, int(soft) // 8))


class Refusals:
    """Lines about refused connections: each kind (address and reason) once per window, the rest counted."""

    def __init__(
        self, warn: Callable[[str], None], window_s: float = REPEAT_S, burst: int = LINES_PER_WINDOW
    ) -> None:
        self.warn = warn
        self.window_s = window_s
        self.burst = burst
        self._window_end: float | None = None
        self._window_start = 0.0
        self._shown: set[tuple[str, str]] = set()
        self._held: Counter[tuple[str, str]] = Counter()

    def refuse(self, address: str, why: str, now: float) -> None:
        """A connection from `address` ("ip:port") was refused because `why`."""
        host = address.rpartition(":")[0] or address
        self.line((host, why), notice(f"refused a connection from {address}: {why}"), now)

    def line(self, kind: tuple[str, str], text: str, now: float) -> None:
        """Writes `text` unless its kind was written in this window or the window's lines are used up."""
        self.flush(now)
        if self._window_end is None:
            self._window_start = now
            self._window_end = now + self.window_s
        if kind in self._shown or len(self._shown) >= self.burst:
            if kind not in self._held and len(self._held) >= _HELD_KINDS:
                kind = ("", "other reasons")
            self._held[kind] += 1
            return
        self._shown.add(kind)
        self.warn(text)

    def deadline(self) -> float | None:
        """When flush() has a count to write (monotonic)."""
        return self._window_end if self._held else None

    def flush(self, now: float, *, final: bool = False) -> None:
        """At the end of a window (or of the job): one line counting what it held back; then afresh."""
        if self._window_end is None or (now < self._window_end and not final):
            return
        if self._held:
            total = sum(self._held.values())
            (host, why), _ = self._held.most_common(1)[0]
            most = f"most from {host}: {why}" if host else f"most: {why}"
            plural = "s" if total > 1 else ""
            seconds = math.ceil(min(now, self._window_end) - self._window_start)
            self.warn(notice(f"refused {total} more connection{plural} in the last {seconds} s ({most})"))
        self._window_end = None
        self._shown.clear()
        self._held.clear()


@dataclass
class Pending:
    """An accepted connection that has not been admitted yet (handshake, then the caller's decision)."""

    peer: Peer
    fd: int  # the socket's fd while it is open (fileno() is -1 once closed)
    sent: dict[str, Any]  # our challenge
    since: float
    authed: bool = False
    done: bool = False  # refused or admitted: later messages already read are ignored


class Gate:
    """The listening port: accepts strangers, caps and times their handshakes, admits or refuses each."""

    def __init__(
        self, listener: socket.socket, secret: bytes, warn: Callable[[str], None], *, cap: int | None = None
    ) -> None:
        self.listener = listener
        self.secret = secret
        self.refusals = Refusals(warn)
        self.cap = pending_cap() if cap is None else cap
        self.pending: dict[int, Pending] = {}
        self._fd = listener.fileno()
        self._selector: selectors.BaseSelector | None = None
        self._listening = False
        self._paused_until: float | None = None  # not accepting until then (cap full, or out of fds)
        self._out_of_fds = False

    def fileno(self) -> int:
        """The listening socket's fd."""
        return self._fd

    def attach(self, selector: selectors.BaseSelector) -> None:
        """Starts watching the port and the waiting connections in `selector`."""
        self._selector = selector
        for fd in self.pending:
            selector.register(fd, selectors.EVENT_READ)
        if self._paused_until is None:
            self._listen()

    def detach(self) -> None:
        """Stops watching (the selector is going away); the connections stay as they are."""
        selector, self._selector = self._selector, None
        if selector is None:
            return
        for fd in [*self.pending, self._fd]:
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(fd)
        self._listening = False

    def owns(self, fd: int) -> bool:
        """Whether `fd` is the port or a connection waiting at it."""
        return fd == self._fd or fd in self.pending

    def pump(self, fd: int, now: float) -> list[tuple[Pending, dict[str, Any]]]:
        """Handles `fd` being readable; returns the messages of connections that proved the secret."""
        if fd == self._fd:
            self._accept(now)
            return []
        p = self.pending.get(fd)
        if p is None:
            return []
        try:
            messages = p.peer.receive()
        except PeerGone:
            self.refuse(p, "it closed the connection", now, tell=False)
            return []
        except WireError as exc:
            self.refuse(p, str(exc), now)
            return []
        out: list[tuple[Pending, dict[str, Any]]] = []
        for message in messages:
            if p.authed:
                out.append((p, message))
                continue
            try:
                welcome = verify_answer(self.secret, p.sent, message)
                p.peer.send(welcome)
            except WireError as exc:
                self.refuse(p, str(exc), now)
                return []
            except PeerGone:
                self.refuse(p, "it closed the connection", now, tell=False)
                return []
            p.authed = True
            p.peer.authenticated()
        return out

    def refuse(self, p: Pending, why: str, now: float, *, tell: bool = True) -> None:
        """One (rate-limited) line; the peer is told why when `tell` (so an agent fails at once); closed."""
        if p.done:
            return
        self.refusals.refuse(p.peer.address, why, now)
        if tell:
            with contextlib.suppress(PeerGone, WireError):
                p.peer.send({"k": "reject", "reason": why[:200]})
        self._drop(p)
        p.peer.close()

    def admit(self, p: Pending) -> Peer:
        """The connection leaves the gate as a member of the job (no longer watched here)."""
        self._drop(p)
        return p.peer

    def deadline(self) -> float | None:
        """When tick() is due (monotonic): a handshake's end, the end of a pause, a count to write."""
        due = [p.since + HANDSHAKE_TIMEOUT_S for p in self.pending.values()]
        if self._paused_until is not None:
            due.append(self._paused_until)
        held = self.refusals.deadline()
        if held is not None:
            due.append(held)
        return min(due, default=None)

    def tick(self, now: float) -> None:
        """Refuses connections past their handshake deadline, ends pauses, writes held-back counts."""
        for p in list(self.pending.values()):
            if now - p.since > HANDSHAKE_TIMEOUT_S:
                self.refuse(p, f"no handshake in {HANDSHAKE_TIMEOUT_S:.0f} s", now, tell=False)
        if self._paused_until is not None and now >= self._paused_until:
            self._resume()
        self.refusals.flush(now)

    def close(self) -> None:
        """Closes the port and every waiting connection; says how many refusals it did not write."""
        self.detach()
        for p in list(self.pending.values()):
            self._drop(p)
            p.peer.close()
        self.refusals.flush(time.monotonic(), final=True)
        with contextlib.suppress(OSError):
            self.listener.close()

    # -- internals -----------------------------------------------------------------------------------------

    def _accept(self, now: float) -> None:
        for _ in range(ACCEPT_BATCH):
            if len(self.pending) >= self.cap and not self._evict(now):
                return
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_FDS:
                    continue  # the connection was reset before we took it: nothing to refuse
                # The queued connection stays queued: accept again once fds may have been freed.
                why = f"cannot accept connections: {exc.strerror or exc}"
                self.refusals.line(("", why), notice(f"{why}; waiting connections are refused"), now)
                self._pause(now + NO_FD_PAUSE_S, out_of_fds=True)
                return
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = Peer(sock, f"{addr[0]}:{addr[1]}")
            p = Pending(peer, sock.fileno(), challenge(), now)
            try:
                peer.send(p.sent)
            except PeerGone:
                peer.close()
                continue
            self.pending[p.fd] = p
            if self._selector is not None:
                self._selector.register(p.fd, selectors.EVENT_READ)

    def _evict(self, now: float) -> bool:
        """At the cap: refuses the oldest unproven connection if it had its chance; else pauses accepting."""
        waiting = [p for p in self.pending.values() if not p.authed]
        oldest = min(waiting, key=lambda p: p.since, default=None)
        if oldest is None or now - oldest.since < EVICT_AFTER_S:
            start = oldest.since if oldest is not None else now
            self._pause(start + EVICT_AFTER_S, out_of_fds=False)
            return False
        # Not told: an agent slowed down this much retries its connection rather than giving up.
        self.refuse(oldest, "too many connections waiting for a handshake", now, tell=False)
        return True

    def _drop(self, p: Pending) -> None:
        p.done = True
        if self.pending.pop(p.fd, None) is None:
            return
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(p.fd)
        if self._paused_until is not None and not self._out_of_fds:
            self._resume()  # a place is free again

    def _listen(self) -> None:
        if self._selector is not None and not self._listening:
            self._selector.register(self._fd, selectors.EVENT_READ)
            self._listening = True

    def _pause(self, until: float, *, out_of_fds: bool) -> None:
        # The port stays readable while connections queue: unwatch it, or the loop would spin.
        if self._selector is not None and self._listening:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._fd)
        self._listening = False
        self._paused_until = until
        self._out_of_fds = out_of_fds

    def _resume(self) -> None:
        self._paused_until = None
        self._out_of_fds = False
        self._listen()
