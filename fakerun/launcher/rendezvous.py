"""Multi-node rendezvous over TCP, before any worker starts: static (node ranks given) or c10d (join order).

The agent of node 0 (static) or the first agent to bind the c10d endpoint hosts: it accepts the other
agents, checks that each knows the job's secret and agrees on the job (run id, ranks per node), and when
all nodes have joined, tells each its group rank, every node's host name and the workers' master address.
The connections stay open for the run (step relays and heartbeats, see cluster.py).
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import time
from dataclasses import dataclass
from typing import Any

from fakerun.launcher.peers import Peer, PeerGone
from fakerun.launcher.wire import WireError, answer, challenge, verify_answer, verify_welcome

CONNECT_RETRY_S = 0.5


class RendezvousTimeout(Exception):
    """Not every node joined in time; `joined` of `expected` agents made it."""

    def __init__(self, joined: int, expected: int, waited_s: float) -> None:
        super().__init__(f"{joined}/{expected} nodes joined in {waited_s:.0f} s")
        self.joined = joined
        self.expected = expected
        self.waited_s = waited_s


@dataclass(frozen=True)
class Join:
    """What an agent says about itself when it joins."""

    node_rank: int | None  # static: its --node-rank; c10d: None (numbered by join order)
    host: str
    nproc_per_node: int
    run_id: str

    def message(self) -> dict[str, Any]:
        """As sent on the wire."""
        return {
            "k": "join",
            "node_rank": self.node_rank,
            "host": self.host,
            "nproc": self.nproc_per_node,
            "run_id": self.run_id,
        }


@dataclass(frozen=True)
class Assignment:
    """What the rendezvous decided for this agent."""

    group_rank: int
    hosts: tuple[str, ...]  # by group rank
    master_addr: str
    master_port: int


def _parse_join(message: dict[str, Any]) -> Join:
    node_rank = message.get("node_rank")
    host, nproc, run_id = message.get("host"), message.get("nproc"), message.get("run_id")
    if message.get("k") != "join" or not isinstance(host, str) or not isinstance(run_id, str):
        raise WireError("expected a join message")
    if not isinstance(nproc, int) or isinstance(nproc, bool):
        raise WireError("malformed join message")
    if node_rank is not None and (not isinstance(node_rank, int) or isinstance(node_rank, bool)):
        raise WireError("malformed node rank")
    return Join(node_rank, host[:255], nproc, run_id)


def listen(port: int, host: str = "") -> socket.socket:
    """A listening socket on `port` (all interfaces unless `host`); OSError when the port is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def try_listen(port: int) -> socket.socket | None:
    """The c10d host election: whoever binds the endpoint's port first hosts; None if another agent did."""
    try:
        return listen(port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return None
        raise


class _Pending:
    """An accepted connection going through the handshake."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.sent = challenge()
        self.authed = False
        peer.send(self.sent)


def host_rendezvous(
    server: socket.socket,
    me: Join,
    *,
    nnodes: int,
    secret: bytes,
    timeout_s: float,
    master_addr: str,
    master_port: int,
    warn: Any,
) -> tuple[Assignment, dict[int, Peer]]:
    """Hosts the rendezvous until `nnodes` agents (us included) joined; returns our assignment and peers."""
    start = time.monotonic()
    deadline = start + timeout_s
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ)
    pending: dict[int, _Pending] = {}
    joined: list[tuple[Join, Peer | None]] = [(me, None)]
    try:
        while len(joined) < nnodes:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RendezvousTimeout(len(joined), nnodes, time.monotonic() - start)
            for key, _ in selector.select(min(left, 1.0)):
                if key.fileobj is server:
                    _accept(server, selector, pending)
                    continue
                fd = int(key.fd)
                p = pending[fd]
                try:
                    for message in p.peer.receive():
                        done = _advance(p, message, secret, me, joined, nnodes)
                        if done:
                            selector.unregister(fd)
                            del pending[fd]
                            break
                except (WireError, PeerGone) as exc:
                    warn(f"fakerun: rendezvous: dropped the connection from {p.peer.address}: {exc}")
                    if isinstance(exc, WireError):
                        # Say why before closing, so a misconfigured agent fails at once instead of retrying.
                        with contextlib.suppress(PeerGone):
                            p.peer.send({"k": "reject", "reason": str(exc)[:200]})
                    selector.unregister(fd)
                    del pending[fd]
                    p.peer.close()
        return _assign(joined, master_addr, master_port)
    finally:
        for p in pending.values():
            p.peer.close()
        selector.close()


def _accept(server: socket.socket, selector: selectors.BaseSelector, pending: dict[int, _Pending]) -> None:
    try:
        sock, addr = server.accept()
    except (BlockingIOError, InterruptedError):
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    peer = Peer(sock, f"{addr[0]}:{addr[1]}")
    try:
        p = _Pending(peer)
    except PeerGone:
        peer.close()
        return
    pending[sock.fileno()] = p
    selector.register(sock, selectors.EVENT_READ)


def _advance(
    p: _Pending,
    message: dict[str, Any],
    secret: bytes,
    me: Join,
    joined: list[tuple[Join, Peer | None]],
    nnodes: int,
) -> bool:
    """One handshake or join step of a pending connection; True once it has joined."""
    if not p.authed:
        p.peer.send(verify_answer(secret, p.sent, message))
        p.authed = True
        return False
    join = _parse_join(message)
    if join.run_id != me.run_id:
        raise WireError(f"joined with run id {join.run_id!r}, this job is {me.run_id!r}")
    if join.nproc_per_node != me.nproc_per_node:
        raise WireError(f"has --nproc-per-node {join.nproc_per_node}, this job {me.nproc_per_node}")
    if join.node_rank is not None:
        taken = {j.node_rank for j, _ in joined}
        if not 0 <= join.node_rank < nnodes or join.node_rank in taken:
            raise WireError(f"node rank {join.node_rank} is out of range or already taken")
    p.peer.host = join.host
    joined.append((join, p.peer))
    return True


def _assign(
    joined: list[tuple[Join, Peer | None]], master_addr: str, master_port: int
) -> tuple[Assignment, dict[int, Peer]]:
    """Group ranks (node ranks, else join order: the host first), sent to every peer."""
    if all(j.node_rank is not None for j, _ in joined):
        ordered = sorted(joined, key=lambda jp: int(jp[0].node_rank or 0))
    else:
        ordered = joined
    hosts = tuple(j.host for j, _ in ordered)
    peers: dict[int, Peer] = {}
    mine = 0
    for group_rank, (_, peer) in enumerate(ordered):
        if peer is None:
            mine = group_rank
            continue
        peer.group_rank = group_rank
        peers[group_rank] = peer
    for group_rank, peer in peers.items():
        peer.send(
            {
                "k": "assign",
                "group_rank": group_rank,
                "hosts": list(hosts),
                "master_addr": master_addr,
                "master_port": master_port,
            }
        )
    return Assignment(mine, hosts, master_addr, master_port), peers


def join_rendezvous(
    host: str, port: int, me: Join, *, secret: bytes, timeout_s: float
) -> tuple[Assignment, Peer]:
    """Joins the rendezvous hosted at host:port, retrying the connection until the deadline."""
    start = time.monotonic()
    deadline = start + timeout_s
    while True:
        peer = _connect(host, port, deadline)
        try:
            sent = answer(secret, peer.receive_blocking(deadline))
            peer.send(sent)
            verify_welcome(secret, sent, _unless_rejected(peer.receive_blocking(deadline)))
            peer.send(me.message())
            assign = _unless_rejected(peer.receive_blocking(deadline))
            return _parse_assign(assign), peer
        except PeerGone:
            # The host dropped us (it may be restarting, or we were early): try again while time is left.
            peer.close()
            if time.monotonic() >= deadline:
                raise RendezvousTimeout(0, 1, time.monotonic() - start) from None
            time.sleep(CONNECT_RETRY_S)
        except TimeoutError:
            peer.close()
            raise RendezvousTimeout(0, 1, time.monotonic() - start) from None
        except WireError:
            peer.close()
            raise


def _unless_rejected(message: dict[str, Any]) -> dict[str, Any]:
    if message.get("k") == "reject":
        raise WireError(f"the rendezvous host refused this agent: {str(message.get('reason', ''))[:200]}")
    return message


def _connect(host: str, port: int, deadline: float) -> Peer:
    start = time.monotonic()
    while True:
        try:
            sock = socket.create_connection(
                (host, port), timeout=max(0.1, min(2.0, deadline - time.monotonic()))
            )
        except OSError:
            if time.monotonic() + CONNECT_RETRY_S >= deadline:
                raise RendezvousTimeout(0, 1, time.monotonic() - start) from None
            time.sleep(CONNECT_RETRY_S)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        return Peer(sock, f"{host}:{port}")


def _parse_assign(message: dict[str, Any]) -> Assignment:
    hosts = message.get("hosts")
    group_rank, addr, port = message.get("group_rank"), message.get("master_addr"), message.get("master_port")
    if (
        message.get("k") != "assign"
        or not isinstance(group_rank, int)
        or not isinstance(hosts, list)
        or not all(isinstance(h, str) for h in hosts)
        or not isinstance(addr, str)
        or not isinstance(port, int)
    ):
        raise WireError("malformed assignment from the rendezvous host")
    return Assignment(group_rank, tuple(hosts), addr, port)


def close_all(peers: dict[int, Peer]) -> None:
    """Closes every connection (on failure paths)."""
    for peer in peers.values():
        with contextlib.suppress(Exception):
            peer.close()
