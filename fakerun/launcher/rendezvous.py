"""Multi-node rendezvous over TCP, before any worker starts: static (node ranks given) or c10d (join order).

The agent of node 0 (static) or the first agent to bind the c10d endpoint hosts: its gate (peers.py)
accepts the other agents and checks that each knows the job's secret; the host then checks that each
agrees on the job (run id, ranks per node, the simulated model and GPUs) and, when the round completes
(every node joined; for an elastic job, MIN of them and torch's last call passed), tells each its group
rank, every node's host name and the workers' master address. Every field either side receives is checked
for type and range: a bad one refuses that connection (host) or ends the rendezvous with one line (agent).
The connections stay open for the run (step relays and heartbeats, see cluster.py).
"""

from __future__ import annotations

import contextlib
import errno
import random
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fakerun.launcher.elastic import RoundRules, Verdict
from fakerun.launcher.peers import Gate, Peer, PeerGone
from fakerun.launcher.wire import WireError, answer, shown, verify_welcome

CONNECT_RETRY_S = 0.5
MAX_NAME = 255  # host names and addresses
MAX_NPROC = 1 << 16
MAX_AGE_S = 7 * 86400.0  # how long ago an agent may have started: a rendezvous times out long before
MAX_ROUND = 1 << 53  # round numbers and steps


class RendezvousTimeout(Exception):
    """Not every node joined in time; `joined` of `expected` agents made it."""

    def __init__(self, joined: int, expected: int, waited_s: float) -> None:
        super().__init__(f"{joined}/{expected} nodes joined in {waited_s:.0f} s")
        self.joined = joined
        self.expected = expected
        self.waited_s = waited_s


class StoreUnreachable(Exception):
    """torch's TCPStore client gave up: the rendezvous host's name did not resolve before its timeout."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        super().__init__(f"{host}:{port} did not resolve in {timeout_s:g} s")
        self.host = host
        self.port = port
        self.timeout_s = timeout_s


class Backoff:
    """c10d's ExponentialBackoffWithJitter as TCPStore's client uses it: 500 ms, x1.5 per retry up to 60 s,
    each delay drawn within +-50%."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._interval = 0.5

    def next(self) -> float:
        """The next delay in seconds."""
        delay = self._interval * self._rng.uniform(0.5, 1.5)
        self._interval = min(self._interval * 1.5, 60.0)
        return delay


# Where a failed name lookup is reported: (host, port, gai error code, its text).
OnGaiError = Callable[[str, int, int, str], None]


@dataclass(frozen=True)
class Join:
    """What an agent says about itself when it joins."""

    node_rank: int | None  # static: its --node-rank; c10d: None (numbered by join order)
    host: str
    nproc_per_node: int
    run_id: str
    job: str = ""  # the simulated job in a few words ("llama3-8b on h100"), or "--fake-exec"
    job_digest: str = ""  # every figure of the simulated job: agents that agree print the same job
    started: float | None = None  # our monotonic time at start (not sent: monotonic clocks differ)

    def age(self) -> float:
        """Seconds since this agent started (0 when unknown)."""
        return 0.0 if self.started is None else max(0.0, time.monotonic() - self.started)

    def message(self) -> dict[str, Any]:
        """As sent on the wire."""
        return {
            "k": "join",
            "node_rank": self.node_rank,
            "host": self.host,
            "nproc": self.nproc_per_node,
            "run_id": self.run_id,
            "job": self.job,
            "job_digest": self.job_digest,
            "age": self.age(),
        }


@dataclass(frozen=True)
class Assignment:
    """What the rendezvous decided for this agent."""

    group_rank: int
    hosts: tuple[str, ...]  # by group rank
    master_addr: str
    master_port: int
    # Seconds ago (when the assignment arrived) the first agent of the job started: every agent's job clock
    # starts then, so that the nodes' timestamps agree as NTP-synchronised hosts' do.
    epoch_age: float = 0.0
    # An agent that joins a running elastic job: the round it joins (rounds so far, the first being 0) and
    # the step the job resumes from in it; 0 and 0 for the job's first round.
    round: int = 0
    resume: int = 0

    def message(self) -> dict[str, Any]:
        """As the host sends it to the agent it is for."""
        message: dict[str, Any] = {
            "k": "assign",
            "group_rank": self.group_rank,
            "hosts": list(self.hosts),
            "master_addr": self.master_addr,
            "master_port": self.master_port,
            "epoch_age": self.epoch_age,
        }
        if self.round:
            message.update(round=self.round, resume=self.resume)
        return message


def is_age(value: object) -> bool:
    """Whether `value` is a finite number of seconds in [0, MAX_AGE_S]."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= MAX_AGE_S


def is_int(value: object, low: int, high: int) -> bool:
    """Whether `value` is an int (not a bool) in [low, high]."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def is_name(value: object) -> bool:
    """Whether `value` can be a host name or address: 1-255 printable characters, no spaces."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_NAME
        and value.isprintable()
        and not any(c.isspace() for c in value)
    )


def _parse_join(message: dict[str, Any]) -> Join:
    if message.get("k") != "join":
        raise WireError("expected a join message")
    node_rank, host, nproc = message.get("node_rank"), message.get("host"), message.get("nproc")
    run_id, job, digest = message.get("run_id"), message.get("job", ""), message.get("job_digest", "")
    if not is_name(host):
        raise WireError("malformed join message (host)")
    if not is_int(nproc, 1, MAX_NPROC):
        raise WireError("malformed join message (nproc)")
    if node_rank is not None and not is_int(node_rank, 0, MAX_NPROC):
        raise WireError("malformed join message (node rank)")
    for value in (run_id, job, digest):
        if not isinstance(value, str) or len(value) > 1024:
            raise WireError("malformed join message")
    age = message.get("age", 0.0)
    if not is_age(age):
        raise WireError("malformed join message (age)")
    assert isinstance(host, str) and isinstance(nproc, int) and isinstance(run_id, str)
    # The agent's start moved to our monotonic clock (the message's time in flight is negligible).
    return Join(node_rank, host, nproc, run_id, str(job), str(digest), time.monotonic() - float(age))


def check_join(
    message: dict[str, Any], me: Join, joined: list[tuple[Join, Peer | None]], nnodes: int
) -> Join:
    """The join of an authenticated agent, if it belongs to this job; WireError saying why not."""
    join = _parse_join(message)
    if join.run_id != me.run_id:
        raise WireError(f"joined with run id {shown(join.run_id)!r}, this job is {me.run_id!r}")
    if join.nproc_per_node != me.nproc_per_node:
        raise WireError(f"has --nproc-per-node {join.nproc_per_node}, this job {me.nproc_per_node}")
    if join.job != me.job:
        if join.job_digest and me.job_digest:
            fix = "start every agent with the same --fake-model, --fake-gpu and script arguments"
        else:  # only --fake-exec agents have no digest: they simulate nothing
            fix = "give --fake-exec to every agent or to none"
        raise WireError(f"runs {shown(join.job, 80)}, this job runs {me.job}: {fix}")
    if join.job_digest != me.job_digest:
        raise WireError(
            f"runs {me.job} with other settings than this job: start every agent with the same "
            "--fake-* options and script arguments"
        )
    if join.node_rank is not None:
        taken = {j.node_rank for j, _ in joined}
        if not 0 <= join.node_rank < nnodes or join.node_rank in taken:
            raise WireError(f"node rank {join.node_rank} is out of range or already taken")
    return join


def listen(port: int, host: str = "") -> socket.socket:
    """A listening socket on `port` (all IPv4 interfaces unless `host`); OSError when the port is taken."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def try_listen(port: int, host: str = "") -> socket.socket | None:
    """The c10d host election: whoever binds the endpoint's port first hosts; None if another agent did."""
    try:
        return listen(port, host)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return None
        raise


def host_rendezvous(
    gate: Gate,
    me: Join,
    *,
    rules: RoundRules,
    master_addr: str,
    master_port: int,
) -> tuple[Assignment, dict[int, Peer]]:
    """Hosts the job's first rendezvous until `rules` complete it (at once with MAX agents, us included;
    an elastic job's once MIN have joined and the last call after the latest join passed); returns our
    assignment and peers. RendezvousTimeout at the join timeout short of that."""
    start = last_join = time.monotonic()
    selector = selectors.DefaultSelector()
    gate.attach(selector)
    joined: list[tuple[Join, Peer | None]] = [(me, None)]
    try:
        while True:
            now = time.monotonic()
            verdict = rules.verdict(len(joined), start, last_join, now)
            if verdict is Verdict.COMPLETE:
                break
            if verdict is Verdict.TIMEOUT:
                raise RendezvousTimeout(len(joined), rules.max_nodes, now - start)
            gate.tick(now)
            due = rules.deadline(len(joined), start, last_join)
            wait = min(due, gate.deadline() or due, now + 1.0) - now
            for key, _ in selector.select(max(0.0, wait)):
                now = time.monotonic()
                for p, message in gate.pump(int(key.fd), now):
                    if p.done or len(joined) >= rules.max_nodes:
                        continue
                    try:
                        join = check_join(message, me, joined, rules.max_nodes)
                    except WireError as exc:
                        gate.refuse(p, str(exc), now)
                        continue
                    peer = gate.admit(p)
                    peer.host = join.host
                    joined.append((join, peer))
                    last_join = now  # each join restarts the last call
        return _assign(joined, master_addr, master_port)
    except BaseException:
        for _, member in joined:
            if member is not None:
                member.close()
        raise
    finally:
        gate.detach()
        selector.close()


def _assign(
    joined: list[tuple[Join, Peer | None]], master_addr: str, master_port: int
) -> tuple[Assignment, dict[int, Peer]]:
    """Group ranks (node ranks, else join order: the host first), sent to every peer."""
    if all(j.node_rank is not None for j, _ in joined):
        ordered = sorted(joined, key=lambda jp: int(jp[0].node_rank or 0))
    else:
        ordered = joined
    hosts = tuple(j.host for j, _ in ordered)
    first = min((j.started for j, _ in joined if j.started is not None), default=time.monotonic())
    peers: dict[int, Peer] = {}
    mine = 0
    for group_rank, (_, peer) in enumerate(ordered):
        if peer is None:
            mine = group_rank
            continue
        peer.group_rank = group_rank
        peers[group_rank] = peer
    for group_rank, peer in peers.items():
        # An agent that left after joining is noticed by the run (its connection reads EOF): the job is
        # then lost as when a node dies mid-run.
        with contextlib.suppress(PeerGone):
            peer.send(
                Assignment(
                    group_rank, hosts, master_addr, master_port, max(0.0, time.monotonic() - first)
                ).message()
            )
    return Assignment(mine, hosts, master_addr, master_port, max(0.0, time.monotonic() - first)), peers


def join_rendezvous(
    host: str,
    port: int,
    me: Join,
    *,
    nnodes: int,
    secret: bytes,
    timeout_s: float,
    min_nodes: int | None = None,
    store_timeout_s: float | None = None,
    on_gai_error: OnGaiError | None = None,
) -> tuple[Assignment, Peer]:
    """Joins the rendezvous hosted at host:port, retrying the connection until the deadline; a host name
    that does not resolve is retried as torch's TCPStore client does, until `store_timeout_s`. An elastic
    job's assignment may name from `min_nodes` to `nnodes` nodes (a job we join while it runs)."""
    start = time.monotonic()
    deadline = start + timeout_s
    store_s = timeout_s if store_timeout_s is None else store_timeout_s
    lookup = _Lookup(host, port, store_s, start + store_s)
    while True:
        peer = _connect(host, port, deadline, lookup, on_gai_error)
        try:
            sent = answer(secret, _unless_rejected(peer.receive_blocking(deadline)))
            peer.send(sent)
            verify_welcome(secret, sent, _unless_rejected(peer.receive_blocking(deadline)))
            peer.authenticated()
            peer.send(me.message())
            assignment = _parse_assign(
                _unless_rejected(peer.receive_blocking(deadline)), me, nnodes, min_nodes
            )
        except PeerGone:
            # The host dropped us (it may be restarting, or we were early): try again while time is left.
            peer.close()
            if time.monotonic() >= deadline:
                raise RendezvousTimeout(0, 1, time.monotonic() - start) from None
            time.sleep(CONNECT_RETRY_S)
            continue
        except TimeoutError:
            peer.close()
            raise RendezvousTimeout(0, 1, time.monotonic() - start) from None
        except WireError:
            peer.close()
            raise
        # The host is group rank 0: a lost host is then reported as "lost node 0 (its host name)".
        peer.group_rank = 0
        peer.host = assignment.hosts[0]
        return assignment, peer


def _unless_rejected(message: dict[str, Any]) -> dict[str, Any]:
    if message.get("k") == "reject":
        raise WireError(f"the rendezvous host refused this agent: {shown(message.get('reason', ''))}")
    return message


@dataclass
class _Lookup:
    """The TCPStore client's name lookups: their deadline (its timeout) and its backoff between tries."""

    host: str
    port: int
    timeout_s: float
    deadline: float
    backoff: Backoff | None = None

    def failed(self, exc: socket.gaierror, on_gai_error: OnGaiError | None) -> None:
        """Logs a failed lookup and waits the backoff's delay, or gives up as SocketConnectOp does: when
        the next delay would end past the deadline (so before it)."""
        if on_gai_error is not None:
            on_gai_error(self.host, self.port, int(exc.errno or 0), exc.strerror or str(exc))
        self.backoff = self.backoff or Backoff()
        delay = self.backoff.next()
        now = time.monotonic()
        if now >= self.deadline - delay:
            raise StoreUnreachable(self.host, self.port, self.timeout_s)
        time.sleep(delay)


def resolve(host: str, port: int, timeout_s: float, on_gai_error: OnGaiError | None = None) -> None:
    """Returns once `host` resolves, as the store's own client on the host (static node 0) first looks its
    master address up: each failed lookup logged and retried on the client's backoff; StoreUnreachable when
    the next try would pass `timeout_s`."""
    lookup = _Lookup(host, port, timeout_s, time.monotonic() + timeout_s)
    while True:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            return
        except socket.gaierror as exc:
            lookup.failed(exc, on_gai_error)


def _connect(
    host: str,
    port: int,
    deadline: float,
    lookup: _Lookup | None = None,
    on_gai_error: OnGaiError | None = None,
) -> Peer:
    start = time.monotonic()
    while True:
        try:
            sock = socket.create_connection(
                (host, port), timeout=max(0.1, min(2.0, deadline - time.monotonic()))
            )
        except OSError as exc:
            if lookup is not None and isinstance(exc, socket.gaierror):
                lookup.failed(exc, on_gai_error)
                continue
            if time.monotonic() + CONNECT_RETRY_S >= deadline:
                raise RendezvousTimeout(0, 1, time.monotonic() - start) from None
            time.sleep(CONNECT_RETRY_S)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        return Peer(sock, f"{host}:{port}")


def _parse_assign(message: dict[str, Any], me: Join, nnodes: int, min_nodes: int | None = None) -> Assignment:
    """The host's answer to our join, checked for type and range; WireError saying what is wrong.

    An elastic job (c10d, --nnodes MIN:MAX) may have from `min_nodes` to `nnodes` nodes when we join it.
    """
    if message.get("k") != "assign":
        raise WireError(
            f"expected an assignment from the rendezvous host, got {shown(message.get('k'), 40)!r}"
        )
    group_rank, hosts = message.get("group_rank"), message.get("hosts")
    addr, port = message.get("master_addr"), message.get("master_port")
    epoch_age = message.get("epoch_age", 0.0)
    round_no, resume = message.get("round", 0), message.get("resume", 0)
    low = nnodes if min_nodes is None else min_nodes
    if not isinstance(hosts, list) or not low <= len(hosts) <= nnodes or not all(is_name(h) for h in hosts):
        raise WireError("malformed assignment from the rendezvous host (host names)")
    # The host itself is group rank 0; a static agent keeps its node rank.
    if not is_int(group_rank, 1, len(hosts) - 1) or (me.node_rank is not None and group_rank != me.node_rank):
        raise WireError(f"malformed assignment from the rendezvous host (group rank {shown(group_rank, 40)})")
    if not is_name(addr) or not is_int(port, 1, 65535):
        raise WireError("malformed assignment from the rendezvous host (master address)")
    if not is_age(epoch_age):
        raise WireError("malformed assignment from the rendezvous host (epoch)")
    if not is_int(round_no, 0, MAX_ROUND) or not is_int(resume, 0, MAX_ROUND):
        raise WireError("malformed assignment from the rendezvous host (round)")
    assert isinstance(group_rank, int) and isinstance(addr, str) and isinstance(port, int)
    assert isinstance(epoch_age, (int, float)) and isinstance(round_no, int) and isinstance(resume, int)
    return Assignment(
        group_rank, tuple(str(h) for h in hosts), addr, port, float(epoch_age), round_no, resume
    )


def close_all(peers: dict[int, Peer]) -> None:
    """Closes every connection (on failure paths)."""
    for peer in peers.values():
        with contextlib.suppress(Exception):
            peer.close()
