"""The run phase between agents: step reports relayed to node 0's coordinator, answers back, heartbeats.

Hierarchical barrier: an agent gathers its own ranks' reports first (the local barrier), then sends them
upstream in one message; node 0's coordinator answers when every node's batch is in, and each agent hands
the answers to its ranks. Every connection carries a heartbeat each second; a node silent for
HEARTBEAT_TIMEOUT_S, or whose connection breaks, is lost: every agent then aborts its workers, which die as
NCCL makes them die when a peer vanishes, and each agent reports that failure as torchrun would.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fakerun.launcher.peers import Peer, PeerGone
from fakerun.launcher.wire import WireError, challenge

HEARTBEAT_S = 1.0
HEARTBEAT_TIMEOUT_S = 5.0
HANDSHAKE_TIMEOUT_S = 5.0

Deliver = Callable[[list[tuple[int, dict[str, Any]]]], None]  # replies to local ranks
Abort = Callable[[str], None]  # tell every local worker that the job is lost


@dataclass
class ClusterLink:
    """This agent's connections to the other agents of the job, during the run."""

    selector: selectors.BaseSelector
    group_rank: int
    local_ranks: frozenset[int]
    nproc_per_node: int
    warn: Callable[[str], None]
    peers: dict[int, Peer] = field(default_factory=dict)  # root: every other node; else: {0: root}
    listener: socket.socket | None = None  # root: the rendezvous port, still answered (and refused)
    strangers: dict[int, tuple[Peer, float]] = field(default_factory=dict)  # late connections being refused
    handle_batch: Callable[[int, list[tuple[int, dict[str, Any]]]], None] | None = None  # root
    deliver: Deliver | None = None  # non-root
    abort: Abort | None = None
    lost: str | None = None  # why the job is lost, once it is
    finished: bool = False  # the run's last step was answered: agents leaving now is the normal end
    _gathered: dict[int, dict[str, Any]] = field(default_factory=dict)  # non-root: the local barrier
    _outbox: dict[int, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)  # root
    _next_beat: float = 0.0

    @property
    def is_root(self) -> bool:
        """Whether this agent runs the global coordinator (group rank 0)."""
        return self.group_rank == 0

    def start(self) -> None:
        """Registers the connections in the run loop's selector."""
        for peer in self.peers.values():
            self.selector.register(peer.fileno(), selectors.EVENT_READ)
        if self.listener is not None:
            self.selector.register(self.listener.fileno(), selectors.EVENT_READ)
        self._next_beat = time.monotonic() + HEARTBEAT_S

    def owns(self, fd: int) -> bool:
        """Whether `fd` is one of our sockets."""
        if self.listener is not None and fd == self.listener.fileno():
            return True
        return fd in self.strangers or any(p.fileno() == fd for p in self.peers.values())

    # -- the local barrier (non-root) ------------------------------------------------------------------

    def collect(self, rank: int, message: dict[str, Any]) -> None:
        """A local rank's report; the batch goes upstream once every local rank has reported."""
        if message.get("k") not in ("ready", "step"):
            return  # phase changes stay local: the grid is refreshed from step reports
        self._gathered[rank] = message
        if len(self._gathered) < len(self.local_ranks):
            return
        batch = sorted(self._gathered.items())
        self._gathered.clear()
        self._send(0, {"k": "batch", "node": self.group_rank, "items": [[r, m] for r, m in batch]})

    # -- routing answers (root) ------------------------------------------------------------------------

    def route(self, rank: int, reply: dict[str, Any]) -> None:
        """Queues an answer for a remote rank; flush() sends one message per node."""
        self._outbox.setdefault(rank // self.nproc_per_node, []).append((rank, reply))

    def flush(self) -> None:
        """Sends the queued answers."""
        outbox, self._outbox = self._outbox, {}
        for node, items in outbox.items():
            self._send(node, {"k": "replies", "items": [[r, m] for r, m in items]})

    def report_lost_rank(self, rank: int) -> None:
        """A local worker died mid-run: the whole job is lost (root tells everyone, others tell root)."""
        reason = f"rank {rank} on node {self.group_rank} exited"
        if self.is_root:
            self._lose(reason)
        else:
            self._send(0, {"k": "lost", "reason": reason})

    # -- events from the loop --------------------------------------------------------------------------

    def pump(self, fd: int) -> None:
        """Handles what arrived on one of our sockets."""
        if self.listener is not None and fd == self.listener.fileno():
            self._accept_stranger()
            return
        if fd in self.strangers:
            self._refuse(fd)
            return
        peer = next(p for p in self.peers.values() if p.fileno() == fd)
        try:
            messages = peer.receive()
        except PeerGone:
            self._peer_lost(peer, "its agent closed the connection")
            return
        except WireError as exc:
            self._peer_lost(peer, f"it sent garbage ({exc})")
            return
        for message in messages:
            self._handle(peer, message)

    def deadline(self) -> float:
        """When the loop must call tick() next (monotonic)."""
        return self._next_beat

    def tick(self, now: float) -> None:
        """Heartbeats out, silent peers and stalled handshakes detected."""
        if now >= self._next_beat:
            self._next_beat = now + HEARTBEAT_S
            for node in list(self.peers):
                self._send(node, {"k": "hb"})
        for peer in list(self.peers.values()):
            if now - peer.last_seen > HEARTBEAT_TIMEOUT_S:
                self._peer_lost(peer, f"no heartbeat for {HEARTBEAT_TIMEOUT_S:.0f} s")
        for fd, (stranger, since) in list(self.strangers.items()):
            if now - since > HANDSHAKE_TIMEOUT_S:
                self.warn(f"fakerun: refused a connection from {stranger.address}: no handshake in time")
                self._drop_stranger(fd)

    def close(self) -> None:
        """Closes every connection (the job is over here)."""
        for peer in self.peers.values():
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(peer.fileno())
            peer.close()
        self.peers.clear()
        for fd in list(self.strangers):
            self._drop_stranger(fd)
        if self.listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.listener.fileno())
            self.listener.close()
            self.listener = None

    # -- internals -------------------------------------------------------------------------------------

    def _handle(self, peer: Peer, message: dict[str, Any]) -> None:
        kind = message.get("k")
        if kind == "hb":
            return
        try:
            if kind == "batch" and self.is_root and self.handle_batch is not None:
                self.handle_batch(peer.group_rank, _items(message))
            elif kind == "replies" and not self.is_root and self.deliver is not None:
                self.deliver(_items(message))
            elif kind == "lost" and self.is_root:
                self._lose(str(message.get("reason", "a node lost a rank"))[:200])
            elif kind == "abort" and not self.is_root:
                self._abort_locally(str(message.get("reason", "the job was aborted"))[:200])
            else:
                raise WireError(f"unexpected message {kind!r}")
        except WireError as exc:
            self.warn(f"fakerun: ignored a message from node {peer.group_rank} ({peer.address}): {exc}")

    def _send(self, node: int, message: dict[str, Any]) -> None:
        peer = self.peers.get(node)
        if peer is None:
            return
        try:
            peer.send(message)
        except (PeerGone, WireError) as exc:
            self._peer_lost(peer, f"sending failed ({exc})")

    def _peer_lost(self, peer: Peer, why: str) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(peer.fileno())
        peer.close()
        self.peers.pop(peer.group_rank, None)
        if self.finished:
            return  # the run is over: the other agents leave once their workers are done
        reason = f"lost node {peer.group_rank} ({peer.host or peer.address}): {why}"
        if self.is_root:
            self._lose(reason)
        else:
            self._abort_locally(reason)

    def _lose(self, reason: str) -> None:
        """Root: the job is lost; every node aborts its workers."""
        if self.lost is not None:
            return
        for node in list(self.peers):
            self._send(node, {"k": "abort", "reason": reason})
        self._abort_locally(reason)

    def _abort_locally(self, reason: str) -> None:
        if self.lost is not None:
            return
        self.lost = reason
        self.warn(f"fakerun: {reason}")
        if self.abort is not None:
            self.abort(reason)

    def _accept_stranger(self) -> None:
        assert self.listener is not None
        try:
            sock, addr = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        stranger = Peer(sock, f"{addr[0]}:{addr[1]}")
        try:
            stranger.send(challenge())
        except PeerGone:
            stranger.close()
            return
        self.strangers[sock.fileno()] = (stranger, time.monotonic())
        self.selector.register(sock.fileno(), selectors.EVENT_READ)

    def _refuse(self, fd: int) -> None:
        """Anything a late or foreign connection sends: one line, then the connection is closed."""
        stranger, _ = self.strangers[fd]
        try:
            stranger.receive()
            why = "the job's nodes have all joined"
        except PeerGone:
            why = "it closed the connection"
        except WireError as exc:
            why = str(exc)
        self.warn(f"fakerun: refused a connection from {stranger.address}: {why}")
        self._drop_stranger(fd)

    def _drop_stranger(self, fd: int) -> None:
        stranger, _ = self.strangers.pop(fd)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(fd)
        stranger.close()


def _items(message: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """[[rank, message], ...] checked for shape."""
    items = message.get("items")
    if not isinstance(items, list):
        raise WireError("items missing")
    out: list[tuple[int, dict[str, Any]]] = []
    for item in items:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], int)
            or isinstance(item[0], bool)
            or not isinstance(item[1], dict)
        ):
            raise WireError("malformed item")
        out.append((item[0], item[1]))
    return out
