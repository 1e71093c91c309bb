"""The run phase between agents: step reports relayed to node 0's coordinator, answers back, heartbeats.

Hierarchical barrier: an agent gathers its own ranks' reports first (the local barrier), then sends them
upstream in one message; node 0's coordinator answers when every node's batch is in, and each agent hands
the answers to its ranks. Every connection carries a heartbeat each second; a node silent for
HEARTBEAT_TIMEOUT_S, or whose connection breaks, is lost: every agent then aborts its workers, which die as
NCCL makes them die when a peer vanishes, and each agent reports that failure as torchrun would.

Restarts (--max-restarts) are a new round over the same connections: each agent whose workers have all
stopped sends `rejoin` for its next attempt; once every other agent has, node 0 answers each with `round`
and the step every rank resumes from (the newest checkpoint whose save had finished, as node 0 saw it).
A round without every node cannot happen (a lost agent does not come back; node 0 says `broken` to the
others): each agent then starts its attempt on a lost job, whose workers abort at once, and its restarts
run out as they would. Elastic jobs (c10d, --nnodes MIN:MAX) are the exception: node 0 holds the round by
torch's rules (elastic.py) over the agents still connected, and its `round` names the members, which take
new group ranks; below MIN the round times out and every waiting agent ends with RendezvousTimeoutError.
An agent that dials node 0's port while an elastic job runs short of MAX is taken in as torch's waiting
node: node 0 tells every agent how many wait (`waiting`), each stops its workers as torch's agent does on
seeing them (no restart counted) and rejoins, and the newcomer's assignment comes when that round completes,
with the round's number and the step the job resumes from. Rounds are numbered from the first rendezvous
(round 0), restarts and membership changes alike.

Authenticated is not trusted: every field of every message from another agent is checked for type and
range before it reaches the coordinator or a worker, and a bad one ends that agent's connection with one
line (the job is then lost, as when that node breaks). Release times cross the wire as offsets from the
sender's clock: the monotonic clocks of two machines do not agree.
"""

from __future__ import annotations

import contextlib
import math
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fakerun.launcher.elastic import RoundRules, Verdict, regroup
from fakerun.launcher.outfile import notice
from fakerun.launcher.peers import Gate, Peer, PeerGone, Pending
from fakerun.launcher.rendezvous import Assignment, Join, check_join, is_int, is_name
from fakerun.launcher.wire import WireError, shown
from fakerun.limits import MAX_NNODES
from fakerun.sim.telemetry import PHASES

HEARTBEAT_S = 1.0
HEARTBEAT_TIMEOUT_S = 5.0
MAX_WAIT_S = 86400.0  # the longest a step (or a pause's start) may be ahead: a 1-GPU 70B step takes ~20 min
MAX_STEP = 1 << 53
MAX_PID = (1 << 31) - 1
# Bounds of a GPU sample's numbers, in TELEMETRY_FIELDS order (coordinator.py): %, %, C, W, MHz, MiB.
TELEMETRY_MAX = (100.0, 100.0, 200.0, 10_000.0, 10_000.0, float(1 << 24))

Deliver = Callable[[list[tuple[int, dict[str, Any]]]], None]  # replies to local ranks
# Tell every local worker that the job is lost, and on which node it failed (None: unknown).
Abort = Callable[[str, int | None], None]
# The names of a round's nodes, given the names of those that stay and the newcomers' own host names (a
# clash needs others).
NameHosts = Callable[[tuple[str, ...], tuple[str, ...]], tuple[str, ...]]


@dataclass(frozen=True)
class Membership:
    """The nodes of a round whose membership changed: `members`, the group ranks (in the previous round) of
    the nodes that stay, and `hosts`, every node's host by its new group rank (the newcomers last)."""

    members: tuple[int, ...]
    hosts: tuple[str, ...]


# A round is complete: root passes None and gets the step every rank resumes from; others pass it. The
# second argument is the new membership when it changed (an elastic job lost or gained nodes), else None.
NewRound = Callable[[int | None, Membership | None], int]


@dataclass
class Newcomer:
    """Root: an agent that joined a running elastic job and waits for its next round."""

    peer: Peer
    since: float  # when it joined (monotonic): a join restarts torch's last call


@dataclass
class ClusterLink:
    """This agent's connections to the other agents of the job, during the run."""

    selector: selectors.BaseSelector
    group_rank: int
    local_ranks: frozenset[int]
    nproc_per_node: int
    warn: Callable[[str], None]
    peers: dict[int, Peer] = field(default_factory=dict)  # root: every other node; else: {0: root}
    listener: Gate | None = None  # root: the rendezvous port, still answered (and refused)
    handle_batch: Callable[[int, list[tuple[int, dict[str, Any]]]], None] | None = None  # root
    deliver: Deliver | None = None  # non-root
    abort: Abort | None = None
    new_round: NewRound | None = None
    rules: RoundRules | None = None  # root of an elastic job: the rules a round completes by
    hosts: tuple[str, ...] = ()  # every node's host, by group rank
    me: Join | None = None  # root of an elastic job: its own join, which a newcomer's must match
    master: tuple[str, int] = ("", 0)  # root: the workers' master address and port, for newcomers
    epoch: float = 0.0  # root: when the job's first agent started (monotonic), for newcomers' clocks
    name_hosts: NameHosts = lambda kept, arriving: kept + arriving
    round_no: int = 0  # the newest round this agent is in (0: the first rendezvous)
    timed_out: bool = False  # the round this agent waits for can never complete (below MIN at join_timeout)
    lost: str | None = None  # why the job is lost, once it is
    lost_node: int | None = None  # the node where it failed: the peer its workers' NCCL sees close
    finished: bool = False  # the run's last step was answered: agents leaving now is the normal end
    _gathered: dict[int, dict[str, Any]] = field(default_factory=dict)  # non-root: the local barrier
    _outbox: dict[int, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)  # root
    _next_beat: float = 0.0
    _nnodes: int = 0
    _wanted: int = 0  # the round this agent rejoined for (0: none yet)
    _rejoined: dict[int, int] = field(default_factory=dict)  # root: node -> the round it rejoined for
    _waiting: list[Newcomer] = field(default_factory=list)  # root: agents waiting for the next round
    _told_waiting: int = 0  # non-root: how many agents node 0 says wait for the next round
    _broken: bool = False  # a node is gone for good: no round can complete again
    _began: float = 0.0  # root: when this agent joined the round it waits for (monotonic)
    _joined_at: dict[int, float] = field(default_factory=dict)  # root: node -> when it rejoined

    @property
    def is_root(self) -> bool:
        """Whether this agent runs the global coordinator (group rank 0)."""
        return self.group_rank == 0

    def start(self) -> None:
        """Registers the connections in the run loop's selector."""
        self._nnodes = len(self.peers) + 1
        for peer in self.peers.values():
            self.selector.register(peer.fileno(), selectors.EVENT_READ)
        if self.listener is not None:
            self.listener.attach(self.selector)
        self._next_beat = time.monotonic() + HEARTBEAT_S

    def owns(self, fd: int) -> bool:
        """Whether `fd` is one of our sockets."""
        if self.listener is not None and self.listener.owns(fd):
            return True
        return any(p.fileno() == fd for p in self.peers.values())

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
        """Sends the queued answers, with our clock's time so that the receiver can read release times."""
        outbox, self._outbox = self._outbox, {}
        now = time.monotonic()
        for node, items in outbox.items():
            self._send(node, {"k": "replies", "now": now, "items": [[r, m] for r, m in items]})

    def report_lost_rank(self, rank: int) -> None:
        """A local worker died mid-run: the whole job is lost (root tells everyone, others tell root)."""
        if self.lost is not None:
            return  # the job is lost already: every agent knows
        reason = f"rank {rank} on node {self.group_rank} exited"
        if self.is_root:
            self._lose(reason, self.group_rank)
        else:
            self._send(0, {"k": "lost", "reason": reason, "node": self.group_rank})

    # -- restarts ----------------------------------------------------------------------------------------

    @property
    def nodes_waiting(self) -> int:
        """How many agents wait to join at the next round (torch's num_nodes_waiting)."""
        return len(self._waiting) if self.is_root else self._told_waiting

    def rejoin(self) -> None:
        """This agent's workers have stopped: it joins the next round (root: waits for the others)."""
        self._wanted = self.round_no + 1
        if self.is_root:
            self._began = time.monotonic()
            self._try_round()
        else:
            self._send(0, {"k": "rejoin", "round": self._wanted})

    def round_complete(self) -> bool:
        """Whether the round this agent rejoined for completed, or never can (a node is gone; the job is
        then lost, so that the next attempt's workers abort rather than wait for that node)."""
        if self.round_no >= self._wanted or self.timed_out:
            return True
        if self.rules is not None and not self._broken:
            return False  # the round's rules decide (_try_round), not the number of nodes connected
        if not self._broken and len(self.peers) == (self._nnodes - 1 if self.is_root else 1):
            return False
        if self.lost is None:
            self._abort_locally("a node of the job is gone and cannot rejoin it", self.lost_node)
        return True

    def _try_round(self) -> None:
        """Root: once every other agent rejoined for our round, starts the round on every node."""
        wanted = self._wanted
        if wanted <= self.round_no or self.timed_out:
            return
        for node, theirs in list(self._rejoined.items()):
            peer = self.peers.get(node)
            if peer is not None and theirs != wanted:
                self._peer_lost(peer, f"it rejoined for round {theirs}, the job's next is {wanted}")
        if any(node not in self._rejoined for node in self.peers):
            return  # a connected agent is stopping its workers: it joins within torch's last call
        membership: Membership | None = None
        if self.rules is not None:
            joined, last_join = self._joined()
            count = len(joined) + len(self._waiting)
            verdict = self.rules.verdict(count, self._began, last_join, time.monotonic())
            if verdict is Verdict.WAIT:
                return
            if verdict is Verdict.TIMEOUT:
                # The agents waiting with us reach their own join deadline as well.
                self.timed_out = True
                for node in list(self.peers):
                    self._send(node, {"k": "timeout", "round": wanted})
                self._drop_newcomers("the round it waited for timed out")
                return
            if len(joined) < self._nnodes or self._waiting:
                membership = self._membership(joined)
        elif len(self.peers) < self._nnodes - 1:
            return
        step = self.new_round(None, membership) if self.new_round is not None else 0
        newcomers = [n.peer for n in self._waiting]
        fresh = {id(peer) for peer in newcomers}
        self._waiting.clear()
        if membership is not None:
            self._regroup(membership, newcomers)
        # The job is whole from here: a send that fails now loses it again, and the others are told so.
        self._begin_round(wanted)
        for node in list(self.peers):
            peer = self.peers[node]
            if id(peer) in fresh:
                # Its join is answered now, as torch's rendezvous answers a waiting node at the new round.
                age = max(0.0, time.monotonic() - self.epoch)
                assign = Assignment(node, self.hosts, *self.master, age, self.round_no, step)
                self._send(node, assign.message())
                continue
            message: dict[str, Any] = {"k": "round", "round": wanted, "resume": step}
            if membership is not None:
                message.update(members=list(membership.members), hosts=list(membership.hosts))
            self._send(node, message)

    def _membership(self, joined: tuple[int, ...]) -> Membership:
        """Root: the next round's nodes: those that rejoined, then the newcomers, named by `name_hosts`."""
        kept = tuple(self.hosts[m] for m in joined)
        return Membership(joined, self.name_hosts(kept, tuple(n.peer.host for n in self._waiting)))

    def _regroup(self, membership: Membership, newcomers: list[Peer] | None = None) -> None:
        """The round's members take their new group ranks (the store's host stays 0), newcomers the last."""
        ranks = regroup(membership.members)
        self.group_rank = ranks[self.group_rank]
        first = self.group_rank * self.nproc_per_node
        self.local_ranks = frozenset(range(first, first + self.nproc_per_node))
        if self.is_root:
            peers, self.peers = self.peers, {}
            for old, peer in peers.items():
                peer.group_rank = ranks[old]
                self.peers[peer.group_rank] = peer
            now = time.monotonic()
            for peer in newcomers or []:
                peer.group_rank = len(self.peers) + 1
                peer.last_seen = now  # it was silent while it waited, as a joining agent is
                self.peers[peer.group_rank] = peer
        # A newcomer sharing a machine with a node renames them all (see NameHosts).
        for peer in self.peers.values():
            peer.host = membership.hosts[peer.group_rank]
        self.hosts = membership.hosts
        self._nnodes = len(membership.hosts)

    def round_deadline(self) -> float | None:
        """Root of an elastic job waiting for a round: when its verdict may change without a message."""
        if self.rules is None or not self.is_root or self._wanted <= self.round_no or self.timed_out:
            return None
        if any(node not in self._rejoined for node in self.peers):
            return None  # a connected agent's rejoin (or its loss) moves the round on, not the clock
        joined, last_join = self._joined()
        return self.rules.deadline(len(joined) + len(self._waiting), self._began, last_join)

    def _joined(self) -> tuple[tuple[int, ...], float]:
        """Root: the job's agents in the round it waits for (itself first, connected ones that rejoined),
        and when the latest agent (newcomers included) joined."""
        joined = (0, *sorted(node for node in self._rejoined if node in self.peers))
        times = [self._joined_at.get(node, 0.0) for node in joined[1:]] + [n.since for n in self._waiting]
        return joined, max([self._began, *times])

    def _begin_round(self, round_no: int) -> None:
        """Every agent is in round `round_no`: the job is whole again."""
        self.round_no = round_no
        self._told_waiting = 0
        self._rejoined.clear()
        self._joined_at.clear()
        self._gathered.clear()
        self._outbox.clear()
        self.lost = None
        self.lost_node = None
        self.finished = False

    # -- events from the loop --------------------------------------------------------------------------

    def pump(self, fd: int) -> None:
        """Handles what arrived on one of our sockets."""
        gate = self.listener
        if gate is not None and gate.owns(fd):
            now = time.monotonic()
            for p, message in gate.pump(fd, now):
                if not p.done:
                    self._arrival(gate, p, message, now)
            return
        newcomer = next((n for n in self._waiting if n.peer.fileno() == fd), None)
        if newcomer is not None:
            self._newcomer_spoke(newcomer)
            return
        peer = next((p for p in self.peers.values() if p.fileno() == fd), None)
        if peer is None:
            return
        try:
            messages = peer.receive()
        except PeerGone:
            self._peer_lost(peer, "its agent closed the connection")
            return
        except WireError as exc:
            self._peer_lost(peer, f"it sent garbage ({exc})")
            return
        for message in messages:
            if self.peers.get(peer.group_rank) is not peer:
                return  # dropped while handling an earlier message
            self._handle(peer, message)

    def _arrival(self, gate: Gate, p: Pending, message: dict[str, Any], now: float) -> None:
        """Root: an agent that knows the job's secret dialled in during the run. An elastic job short of
        MAX nodes takes it in at its next round; otherwise it came too late, or is one too many."""
        rules, me = self.rules, self.me
        if (
            rules is None
            or me is None
            or self.finished
            or self.timed_out
            or len(self.peers) + 1 + len(self._waiting) >= rules.max_nodes
        ):
            gate.refuse(p, f"the job's {self._nnodes} nodes have all joined and are running", now)
            return
        try:
            join = check_join(message, me, [], rules.max_nodes)
        except WireError as exc:
            gate.refuse(p, str(exc), now)
            return
        peer = gate.admit(p)
        peer.host = join.host
        self.selector.register(peer.fileno(), selectors.EVENT_READ)
        self._waiting.append(Newcomer(peer, now))
        for node in list(self.peers):
            self._send(node, {"k": "waiting", "n": len(self._waiting)})
        self._try_round()

    def _newcomer_spoke(self, newcomer: Newcomer) -> None:
        """Root: a waiting agent sent something: it waits for its assignment in silence, so it is gone."""
        try:
            messages = newcomer.peer.receive()
        except PeerGone:
            self._drop_newcomer(newcomer, "its agent closed the connection")
            return
        except WireError as exc:
            self._drop_newcomer(newcomer, f"it sent garbage ({exc})")
            return
        if messages:
            self._drop_newcomer(newcomer, f"it sent {shown(messages[0].get('k'), 40)!r} before its round")

    def _drop_newcomer(self, newcomer: Newcomer, why: str) -> None:
        """Root: a waiting agent leaves the next round (the others are told how many still wait)."""
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(newcomer.peer.fileno())
        newcomer.peer.close()
        self._waiting.remove(newcomer)
        self.warn(notice(f"the agent waiting to join from {newcomer.peer.address} left: {why}"))
        for node in list(self.peers):
            self._send(node, {"k": "waiting", "n": len(self._waiting)})
        self._try_round()

    def _drop_newcomers(self, why: str) -> None:
        for newcomer in list(self._waiting):
            self._drop_newcomer(newcomer, why)

    def deadline(self) -> float:
        """When the loop must call tick() next (monotonic)."""
        due = [self._next_beat, self.listener.deadline() if self.listener is not None else None]
        due.append(self.round_deadline())
        return min(t for t in due if t is not None)

    def tick(self, now: float) -> None:
        """Heartbeats out, silent peers and stalled handshakes detected."""
        if now >= self._next_beat:
            self._next_beat = now + HEARTBEAT_S
            for node in list(self.peers):
                self._send(node, {"k": "hb"})
        for peer in list(self.peers.values()):
            if now - peer.last_seen > HEARTBEAT_TIMEOUT_S:
                self._peer_lost(peer, f"no heartbeat for {HEARTBEAT_TIMEOUT_S:.0f} s")
        if self.listener is not None:
            self.listener.tick(now)
        if self.round_deadline() is not None:
            self._try_round()

    def close(self) -> None:
        """Closes every connection (the job is over here)."""
        for peer in [*self.peers.values(), *(n.peer for n in self._waiting)]:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(peer.fileno())
            peer.close()
        self.peers.clear()
        self._waiting.clear()
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    # -- internals -------------------------------------------------------------------------------------

    def _handle(self, peer: Peer, message: dict[str, Any]) -> None:
        kind = message.get("k")
        if kind == "hb":
            return
        try:
            if kind == "batch" and self.is_root:
                items = _batch_items(message, peer.group_rank, self.nproc_per_node)
                if self.handle_batch is not None:
                    self.handle_batch(peer.group_rank, items)
            elif kind == "replies" and not self.is_root:
                replies = _reply_items(message, self.local_ranks, time.monotonic())
                if self.deliver is not None:
                    self.deliver(replies)
            elif kind == "lost" and self.is_root:
                self._lose(_reason(message), _node(message))
            elif kind == "abort" and not self.is_root:
                self._abort_locally(_reason(message), _node(message))
            elif kind == "rejoin" and self.is_root:
                self._rejoined[peer.group_rank] = _round(message)
                self._joined_at[peer.group_rank] = time.monotonic()
                self._try_round()
            elif kind == "broken" and not self.is_root:
                if _node(message) is None:
                    raise WireError("field 'node' is missing")
                self._broken = True
            elif kind == "waiting" and not self.is_root:
                count = message.get("n")
                if not is_int(count, 0, MAX_NNODES):
                    raise WireError("field 'n' is not a number of nodes")
                assert isinstance(count, int)
                self._told_waiting = count
            elif kind == "timeout" and not self.is_root:
                if _round(message) != self._wanted or self._wanted <= self.round_no:
                    raise WireError("a timeout for a round this node is not waiting for")
                self.timed_out = True
            elif kind == "round" and not self.is_root:
                round_no = _round(message)
                step = message.get("resume")
                if round_no != self._wanted or round_no <= self.round_no:
                    raise WireError(f"round {round_no}, not the one this node rejoined for")
                if not is_int(step, 0, MAX_STEP):
                    raise WireError("field 'resume' is not a step number")
                membership = self._membership_of(message)
                if self.new_round is not None:
                    self.new_round(step, membership)
                if membership is not None:
                    self._regroup(membership)
                self._begin_round(round_no)
            else:
                raise WireError(f"unexpected message {shown(kind, 40)!r}")
        except WireError as exc:
            self._peer_lost(peer, f"it sent a malformed message ({exc})")

    def _membership_of(self, message: dict[str, Any]) -> Membership | None:
        """A `round`'s new membership (None: unchanged): the members, distinct group ranks in order from 0
        including ours, and a host name for each node of the new round (members first)."""
        members, hosts = message.get("members"), message.get("hosts")
        if members is None:
            return None
        if (
            not isinstance(members, list)
            or not all(is_int(m, 0, MAX_NNODES - 1) for m in members)
            or members != sorted(set(members))
            or members[:1] != [0]
            or self.group_rank not in members
        ):
            raise WireError("field 'members' is not a membership of this job")
        if (
            not isinstance(hosts, list)
            or not len(members) <= len(hosts) <= MAX_NNODES
            or not all(is_name(h) for h in hosts)
        ):
            raise WireError("field 'hosts' is not the hosts of this job")
        return Membership(tuple(members), tuple(str(h) for h in hosts))

    def _send(self, node: int, message: dict[str, Any]) -> None:
        peer = self.peers.get(node)
        if peer is None:
            return
        try:
            peer.send(message)
        except (PeerGone, WireError) as exc:
            self._peer_lost(peer, f"sending failed ({exc})")

    def reject(self, node: int, why: str) -> None:
        """Root: ends node's connection for a report the coordinator refused (the job is lost with it)."""
        peer = self.peers.get(node)
        if peer is not None:
            self._peer_lost(peer, f"it sent a malformed message ({why})")

    def _peer_lost(self, peer: Peer, why: str) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(peer.fileno())
        peer.close()
        self.peers.pop(peer.group_rank, None)
        if self.finished:
            return  # the run is over: the other agents leave once their workers are done
        if self.is_root and self.rules is not None:
            # An elastic job goes on without the node: a round waiting for it is decided without it.
            self._rejoined.pop(peer.group_rank, None)
            self._joined_at.pop(peer.group_rank, None)
        elif self.is_root and not self._broken:
            # The node cannot come back: agents waiting for a restart's round must not wait for it.
            self._broken = True
            for node in list(self.peers):
                self._send(node, {"k": "broken", "node": peer.group_rank})
        reason = f"lost node {peer.group_rank} ({peer.host or peer.address}): {why}"
        if self.is_root:
            self._lose(reason, peer.group_rank)
            if self.rules is not None:
                self._try_round()
        else:
            self._abort_locally(reason, peer.group_rank)

    def _lose(self, reason: str, node: int | None) -> None:
        """Root: the job is lost; every node aborts its workers."""
        if self.lost is not None:
            return
        for peer in list(self.peers):
            self._send(peer, {"k": "abort", "reason": reason, "node": node})
        self._abort_locally(reason, node)

    def _abort_locally(self, reason: str, node: int | None) -> None:
        if self.lost is not None:
            return
        self.lost = reason
        self.lost_node = node
        self.warn(notice(reason))
        if self.abort is not None:
            self.abort(reason, node)


def _node(message: dict[str, Any]) -> int | None:
    """The node a `lost` or `abort` message names, if it names one."""
    node = message.get("node")
    if node is None:
        return None
    if not is_int(node, 0, MAX_NNODES - 1):
        raise WireError("field 'node' is not a node")
    assert isinstance(node, int)
    return node


def _round(message: dict[str, Any]) -> int:
    """The round a `rejoin`, `round` or `timeout` message names (the first one after the rendezvous is 1)."""
    round_no = message.get("round")
    if not is_int(round_no, 1, MAX_STEP):
        raise WireError("field 'round' is not a round number")
    assert isinstance(round_no, int)
    return round_no


def _reason(message: dict[str, Any]) -> str:
    """The text of a `lost` or `abort` message, made one printable line."""
    reason = message.get("reason")
    if not isinstance(reason, str):
        raise WireError("reason missing")
    return shown(reason)


def _number(message: dict[str, Any], key: str, low: float, high: float) -> float:
    """message[key] as a finite float in [low, high]; WireError otherwise."""
    value = message.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WireError(f"field {key!r} is not a number")
    # Ints are compared as they are (math.isfinite() or float() of a 400-digit int would overflow).
    if (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
        raise WireError(f"field {key!r} is out of range")
    try:
        return float(value)
    except OverflowError:
        raise WireError(f"field {key!r} is out of range") from None


def _telemetry(message: dict[str, Any]) -> list[Any] | None:
    """A GPU sample ([six numbers, phase]) checked for type and range; None when the message has none."""
    tel = message.get("tel")
    if tel is None:
        return None
    if not isinstance(tel, list) or len(tel) != len(TELEMETRY_MAX) + 1 or tel[-1] not in PHASES:
        raise WireError("malformed telemetry")
    values = {str(i): v for i, v in enumerate(tel[:-1])}
    return [_number(values, str(i), 0.0, high) for i, high in enumerate(TELEMETRY_MAX)] + [tel[-1]]


def _report(message: dict[str, Any]) -> dict[str, Any]:
    """One rank's report relayed by its agent (`ready` or `step`), rebuilt from its checked fields only."""
    kind = message.get("k")
    tel = _telemetry(message)
    if kind == "ready":
        out: dict[str, Any] = {"k": "ready", "pid": int(_number(message, "pid", 1, MAX_PID))}
    elif kind == "step":
        step = message.get("s")
        if not is_int(step, 0, MAX_STEP):
            raise WireError("field 's' is not a step number")
        out = {"k": "step", "s": step, "c": _number(message, "c", 0.0, MAX_WAIT_S)}
    elif kind == "stall":
        step = message.get("s")
        if not is_int(step, 0, MAX_STEP):
            raise WireError("field 's' is not a step number")
        out = {"k": "stall", "s": step}
    else:
        raise WireError(f"unexpected report {shown(kind, 40)!r}")
    if tel is not None:
        out["tel"] = tel
    return out


def _batch_items(message: dict[str, Any], node: int, nproc: int) -> list[tuple[int, dict[str, Any]]]:
    """A node's batch: [[rank, report], ...] for distinct ranks of that node, every report checked."""
    items = message.get("items")
    if not isinstance(items, list) or len(items) > nproc:
        raise WireError("malformed batch")
    out: list[tuple[int, dict[str, Any]]] = []
    seen: set[int] = set()
    for item in items:
        if not isinstance(item, list) or len(item) != 2 or not isinstance(item[1], dict):
            raise WireError("malformed batch item")
        rank = item[0]
        if not is_int(rank, node * nproc, node * nproc + nproc - 1) or rank in seen:
            raise WireError(f"a report for rank {shown(rank, 40)}, which is not on node {node}")
        seen.add(rank)
        out.append((rank, _report(item[1])))
    return out


def _reply_items(
    message: dict[str, Any], local_ranks: frozenset[int], now: float
) -> list[tuple[int, dict[str, Any]]]:
    """Node 0's answers for our ranks, rebuilt from their checked fields, release times on our clock."""
    items = message.get("items")
    sent = _number(message, "now", -math.inf, math.inf)  # the sender's monotonic clock
    if not isinstance(items, list) or len(items) > len(local_ranks):
        raise WireError("malformed replies")
    out: list[tuple[int, dict[str, Any]]] = []
    for item in items:
        if not isinstance(item, list) or len(item) != 2 or not isinstance(item[1], dict):
            raise WireError("malformed reply item")
        rank, reply = item
        if not is_int(rank, 0, MAX_STEP) or rank not in local_ranks:
            raise WireError(f"a reply for rank {shown(rank, 40)}, which is not on this node")
        out.append((rank, _reply(reply, sent, now)))
    return out


def _reply(reply: dict[str, Any], sent: float, now: float) -> dict[str, Any]:
    """One answer of the coordinator ("go" or "step") checked, its release time moved to our clock."""
    kind = reply.get("k")
    if kind == "go":
        t0 = now + _number(reply, "t0", sent - MAX_WAIT_S, sent + MAX_WAIT_S) - sent
        return {"k": "go", "t0": t0, **_next_timing(reply)}
    if kind == "abort":
        # The coordinator's watchdog (a timed-out collective) or a rank's death elsewhere.
        why, step, culprit = reply.get("why"), reply.get("s", 0), reply.get("culprit")
        if why not in ("timeout", "remote") or not is_int(step, 0, MAX_STEP):
            raise WireError("malformed abort reply")
        if culprit is not None and not is_int(culprit, 0, MAX_STEP):
            raise WireError("malformed abort reply")
        return {
            "k": "abort",
            "why": why,
            "s": step,
            "culprit": culprit,
            "node": _node(reply),
            "reason": _reason(reply),
        }
    if kind != "step":
        raise WireError(f"unexpected reply {shown(kind, 40)!r}")
    step, stop = reply.get("s"), reply.get("stop")
    if not is_int(step, 0, MAX_STEP) or not isinstance(stop, bool):
        raise WireError("malformed step reply")
    return {
        "k": "step",
        "s": step,
        # Ahead of the sender's clock by at most a day (a release in the past is a late answer: no wait).
        "rel": now + _number(reply, "rel", sent - MAX_WAIT_S, sent + MAX_WAIT_S) - sent,
        "comm": _number(reply, "comm", 0.0, MAX_WAIT_S),
        "ar_ms": _number(reply, "ar_ms", 0.0, 1000.0 * MAX_WAIT_S),
        "stop": stop,
        "exit": reply.get("exit") is True,
        **_next_timing(reply),
    }


def _next_timing(reply: dict[str, Any]) -> dict[str, Any]:
    """The next step's compute timing an answer may carry (sim.step.ComputeTiming.wire), checked; {} without.
    A rank given none computes it itself."""
    value = reply.get("next")
    if value is None:
        return {}
    if not isinstance(value, list) or len(value) != 4 or not is_int(value[0], 0, MAX_STEP):
        raise WireError("malformed step timing")
    fields = {str(i): v for i, v in enumerate(value)}
    return {"next": [value[0], *(_number(fields, str(i), 0.0, MAX_WAIT_S) for i in (1, 2, 3))]}
