"""The coordinator's I/O in the launcher: a socket per worker, newline-framed JSON, metrics and state."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fakerun.coordinator import Coordinator, Output, ProtocolError
from fakerun.launcher.cluster import ClusterLink, Membership
from fakerun.launcher.console import Route
from fakerun.launcher.outfile import OutputFile, notice, warning
from fakerun.launcher.procs import FRAME_HEADER, MAX_FRAME, OUTPUT_STREAMS, encode_message
from fakerun.launcher.wire import WireError
from fakerun.paths import release_state_dir, state_dir

# A worker's messages are a few hundred bytes; anything this long is not ours.
MAX_MESSAGE = 64 * 1024
_READ_CHUNK = 65536
# The first message a simulated worker waits for (worker.channel.CoordinatorLink.wait_start).
_START = encode_message({"k": "start"})
STATE_EVERY_S = 1.0


@dataclass
class SavedStep:
    """The newest checkpoint the job has completely saved: where a restarted attempt resumes."""

    done: int = 0  # the newest step whose save has finished
    pending: list[tuple[float, int]] = field(default_factory=list)  # (monotonic end of the save, step)

    def saving(self, step: int, ends: float) -> None:
        """A save of `step` began; it is complete at monotonic time `ends`."""
        self.pending.append((ends, step))

    @property
    def step(self) -> int:
        """The newest complete checkpoint now: a save cut short by a failure is not one to resume from."""
        now = time.monotonic()
        self.done = max([self.done, *(step for ends, step in self.pending if ends <= now)])
        self.pending = [p for p in self.pending if p[0] > now]
        return self.done

    def settle(self, step: int) -> None:
        """The job resumes from `step`: saves still pending were cut short (every worker is gone)."""
        self.done = step
        self.pending.clear()


@dataclass
class _Channel:
    """One worker's control socket as the launcher holds it, with the routes of the output it carries."""

    rank: int
    sock: socket.socket
    buffer: bytes = b""
    routes: Mapping[int, Route] = field(default_factory=dict)  # stream number (1, 2) -> its route
    told_gone: set[int] = field(default_factory=set)  # streams the worker was told are gone (cut_off)


@dataclass
class ControlHub:
    """Owns the workers' control sockets of the current attempt and feeds their messages to a coordinator."""

    selector: selectors.BaseSelector
    make_coordinator: Callable[[int, Iterable[int]], Coordinator]  # (attempt, ranks) -> coordinator
    hosts: tuple[str, ...]
    nproc_per_node: int
    metrics: OutputFile | None = None  # the --fake-metrics file, opened by the caller, closed by close()
    saved: SavedStep = field(default_factory=SavedStep)
    warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr)
    coordinator: Coordinator | None = None
    channels: dict[int, _Channel] = field(default_factory=dict)
    by_rank: dict[int, _Channel] = field(default_factory=dict)  # the same channels by their rank
    cluster: ClusterLink | None = None  # the other agents of a multi-node job
    regroup: Callable[[Membership], None] | None = None  # the launcher's job follows a new membership
    world_size: int = 0  # every rank of the job (the root's coordinator waits for all of them)
    finished: bool = False  # the run's last step was answered: workers closing their sockets is expected
    stopping: bool = False  # the agent stops its healthy workers for a new round (nodes join the job)
    loop: bool = False  # --fake-loop: runs follow one another
    state_failed: bool = False  # the state file cannot be written: warned once, not tried again
    # Root: batches of other nodes that reported before this agent's own attempt (and coordinator) began.
    _early: list[tuple[int, list[tuple[int, dict[str, Any]]]]] = field(default_factory=list)
    _state_path: str | None = None
    _state_written: float = 0.0

    def attach(self, cluster: ClusterLink) -> None:
        """Joins the agents of a multi-node job: batches to and from them, aborts when one is lost."""
        self.cluster = cluster
        cluster.handle_batch = self._remote_batch
        cluster.deliver = self._deliver
        cluster.abort = self.abort
        cluster.new_round = self._new_round
        cluster.start()

    def request_round(self, restart_count: int) -> None:
        """The agent restarts: the stopped attempt's sockets go, and we rejoin the other agents."""
        for fd in list(self.channels):
            self._close(fd, teardown=True)  # a late EOF must not count as a death in the next attempt
        if self.cluster is not None:
            self.cluster.rejoin()

    def round_complete(self, restart_count: int) -> bool:
        """Whether every agent is in the round this agent rejoined for (or it can never be)."""
        return self.cluster is None or self.cluster.round_complete()

    def stopping_for_round(self) -> None:
        """The agent stops its healthy workers to let agents in: their sockets closing loses nothing, and
        the stopped attempt's barrier is dropped (other nodes' reports for it too)."""
        self.stopping = True
        self.coordinator = None

    def nodes_waiting(self) -> int:
        """How many agents wait to join the job at its next round (an elastic job short of MAX nodes)."""
        return 0 if self.cluster is None else self.cluster.nodes_waiting

    def round_timed_out(self) -> bool:
        """Whether the round this agent waits for timed out (an elastic job below its minimum of nodes)."""
        return self.cluster is not None and self.cluster.timed_out

    def _new_round(self, resume: int | None, membership: Membership | None) -> int:
        """Every agent rejoined: all resume from node 0's newest complete checkpoint; the old barrier goes.
        `membership` when the job goes on with other nodes (fewer, or newcomers)."""
        step = self.saved.step if resume is None else resume
        self.saved.settle(step)
        if membership is not None:
            self.hosts = membership.hosts
            self.world_size = len(membership.hosts) * self.nproc_per_node
            if self.regroup is not None:
                self.regroup(membership)
        # The stopped attempt's coordinator must not answer (or time out) anyone of the next one.
        self.coordinator = None
        self.stopping = False  # reports from here on are the next attempt's
        return step

    def new_attempt(self, attempt: int, ranks: Iterable[int]) -> None:
        """Drops the previous attempt's channels and starts a fresh barrier."""
        for fd in list(self.channels):
            self._close(fd, teardown=True)
        self.finished = False
        if self.cluster is not None and self.cluster.is_root:
            ranks = range(self.world_size)  # remote ranks report through their agents
        self.coordinator = self.make_coordinator(attempt, list(ranks))
        # Agents start their workers as soon as the rendezvous completes on their side, so a fast node's
        # first reports can reach the root before the root forked its own workers: they count now.
        early, self._early = self._early, []
        for node, items in early:
            try:
                self._remote_batch(node, items)
            except WireError as exc:
                if self.cluster is not None:
                    self.cluster.reject(node, str(exc))

    def adopt(self, rank: int, ours: socket.socket, routes: Mapping[int, Route] | None = None) -> None:
        """Watches rank's control socket (the launcher's end, non-blocking), whose output frames go to
        `routes` by stream number."""
        self.channels[ours.fileno()] = self.by_rank[rank] = _Channel(rank, ours, routes=routes or {})
        self.selector.register(ours.fileno(), selectors.EVENT_READ)

    def drain(self, rank: int) -> None:
        """Reads all an ended worker left on its socket (its last output, its last reports), to its EOF."""
        channel = self.by_rank.get(rank)
        while channel is not None and self.channels.get(channel.sock.fileno()) is channel:
            if not self.pump(channel.sock.fileno()):
                return

    def cut_off(self) -> None:
        """Tells each worker whose stdout or stderr can no longer go anywhere (the launcher's own is gone)
        that its next write there fails, as it would on torchrun's inherited stream."""
        for channel in list(self.channels.values()):
            for stream, route in channel.routes.items():
                if route.cut_off and stream not in channel.told_gone:
                    channel.told_gone.add(stream)
                    self._send(channel, {"k": "epipe", "stream": stream})

    def start_workers(self) -> None:
        """Lets every local worker begin (they wait for this after their fork, so that a large job's fork loop
        does not compete with the first workers' start-up for the CPU)."""
        for channel in self.channels.values():
            self._send_bytes(channel, _START)

    def owns(self, fd: int) -> bool:
        """Whether `fd` is one of our control sockets or cluster connections."""
        return fd in self.channels or (self.cluster is not None and self.cluster.owns(fd))

    def deadline(self) -> float | None:
        """When tick() is due: the cluster's heartbeats, the state file's refresh, the NCCL watchdog."""
        dues: list[float | None] = [self.cluster.deadline()] if self.cluster is not None else []
        if self.coordinator is not None:
            dues.append(self._state_written + STATE_EVERY_S)
            if self._runs_watchdog():
                dues.append(self.coordinator.watchdog_deadline())
        known = [due for due in dues if due is not None]
        return min(known) if known else None

    def tick(self, now: float) -> None:
        """Timers: the cluster's heartbeats and liveness checks; the state stays fresh through long pauses;
        a collective that waited past its timeout aborts the ranks in it."""
        if self.cluster is not None:
            self.cluster.tick(now)
        if self.coordinator is not None and self._runs_watchdog():
            self._dispatch(self.coordinator.on_watchdog(now, time.time()))
        self.publish_state()

    def _runs_watchdog(self) -> bool:
        """The coordinator that sees every rank's reports (node 0's) keeps the collective's timeout."""
        return self.cluster is None or self.cluster.is_root

    def pump(self, fd: int) -> bool:
        """Reads what a worker (or another agent) sent and handles each complete message and output frame;
        False when nothing more can be read now (nothing waiting, or the socket closed)."""
        if self.cluster is not None and fd not in self.channels and self.cluster.owns(fd):
            self.cluster.pump(fd)
            return False
        channel = self.channels.get(fd)
        if channel is None:
            return False
        try:
            data = channel.sock.recv(_READ_CHUNK)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._close(fd)
            return False
        channel.buffer = self._take(channel, channel.buffer + data)
        return True

    def _take(self, channel: _Channel, buf: bytes) -> bytes:
        """Handles the whole messages and output frames at the start of `buf`; returns the rest."""
        at, end = 0, len(buf)
        while at < end:
            if buf[at] in OUTPUT_STREAMS:
                if end - at < FRAME_HEADER:
                    break
                size = int.from_bytes(buf[at + 1 : at + FRAME_HEADER], "big")
                if size > MAX_FRAME:
                    # Not a frame the worker wrote (a raw write to its fd 1 or 2, say): what follows
                    # cannot be told apart, so it is dropped, with one notice.
                    self.warn(notice(f"dropping unframed output from rank {channel.rank}"))
                    return b""
                if end - at - FRAME_HEADER < size:
                    break
                route = channel.routes.get(buf[at])
                if route is not None:
                    route.feed(buf[at + FRAME_HEADER : at + FRAME_HEADER + size])
                at += FRAME_HEADER + size
                continue
            newline = buf.find(b"\n", at)
            if newline < 0:
                if end - at > MAX_MESSAGE:
                    self.warn(notice(f"dropping an oversized control message from rank {channel.rank}"))
                    return b""
                break
            self._handle(channel, buf[at:newline])
            at = newline + 1
        return buf[at:]

    def _handle(self, channel: _Channel, line: bytes) -> None:
        coordinator = self.coordinator
        if coordinator is None or not line:
            return
        cluster = self.cluster
        try:
            msg = json.loads(line.decode())  # UTF-8, as workers write (json's detection costs more per rank)
            if not isinstance(msg, dict):
                raise ProtocolError("not a JSON object")
            if cluster is not None and cluster.lost is not None:
                # A restarted attempt of a job that lost a node cannot complete: its workers abort too.
                self._send(channel, {"k": "abort", "reason": cluster.lost, "node": cluster.lost_node})
                return
            if cluster is not None and not cluster.is_root:
                coordinator.observe(channel.rank, msg, time.time())  # for this node's state file
                cluster.collect(channel.rank, msg)
                return
            out = coordinator.on_message(channel.rank, msg, time.monotonic(), time.time())
        except (ValueError, ProtocolError) as exc:
            self.warn(notice(f"bad control message from rank {channel.rank}: {exc}"))
            return
        self._dispatch(out)

    def _remote_batch(self, node: int, items: list[tuple[int, dict[str, Any]]]) -> None:
        """Root: another node's ranks reported (its local barrier is complete)."""
        coordinator = self.coordinator
        if coordinator is None:
            if not self.stopping:
                self._early.append((node, items))
            return
        for rank, msg in items:
            if rank // self.nproc_per_node != node:
                self.warn(notice(f"node {node} reported for rank {rank}, which is not on it; ignored"))
                continue
            try:
                out = coordinator.on_message(rank, msg, time.monotonic(), time.time())
            except ProtocolError as exc:
                # The agent broke the protocol (cluster.py ends its connection with one line).
                raise WireError(f"a report for rank {rank}: {exc}") from None
            self._dispatch(out)

    def _dispatch(self, out: Output) -> None:
        """Answers to local ranks directly, to remote ones through their agents; records to the file."""
        by_rank = self.by_rank
        # The coordinator shares one answer object between ranks: noted and encoded once.
        encoded: dict[int, bytes] = {}
        for rank, reply in out.replies:
            data = encoded.get(id(reply))
            if data is None:
                self._note(reply)
                data = encoded[id(reply)] = encode_message(reply)
            target = by_rank.get(rank)
            if target is not None:
                self._send_bytes(target, data)
            elif self.cluster is not None:
                self.cluster.route(rank, reply)
        if self.cluster is not None:
            self.cluster.flush()
        for step, ends in out.saves:
            self.saved.saving(step, ends)
        if self.metrics is not None:
            for record in out.records:
                # One write per record: a full disk keeps every record before it whole, and none after.
                self.metrics.write((json.dumps(record, separators=(", ", ": ")) + "\n").encode())
        if out.replies:
            self.publish_state()

    def _deliver(self, items: list[tuple[int, dict[str, Any]]]) -> None:
        """Non-root: answers from node 0's coordinator for our ranks."""
        by_rank = self.by_rank
        for rank, reply in items:
            self._note(reply)
            target = by_rank.get(rank)
            if target is not None:
                self._send(target, reply)
        self.publish_state()

    def _note(self, reply: dict[str, Any]) -> None:
        """Tracks whether the run is over (workers then leave on their own)."""
        if reply.get("k") == "go":
            self.finished = False
        elif reply.get("k") == "step" and reply.get("stop"):
            self.finished = True
        if self.cluster is not None:
            # With --fake-loop another run follows: an agent leaving between runs is still a lost node.
            self.cluster.finished = self.finished and not self.loop

    def abort(self, reason: str, node: int | None = None) -> None:
        """The job is lost (on `node`, if known): every local worker is told to fail as NCCL would make it;
        node 0 records the failure in the metrics file."""
        for channel in list(self.channels.values()):
            self._send(channel, {"k": "abort", "reason": reason, "node": node})
        if self.coordinator is not None and self._runs_watchdog():
            self._dispatch(self.coordinator.on_lost(node, time.time()))

    def _send(self, channel: _Channel, reply: dict[str, Any]) -> None:
        self._send_bytes(channel, encode_message(reply))

    def _send_bytes(self, channel: _Channel, data: bytes) -> None:
        # The worker waits for this very reply, so its buffer has room and one non-blocking send takes it
        # whole (a blocking socket would cost two fcntl calls per answer); a dead worker just loses it.
        # (try/except, not contextlib.suppress: this runs once per rank and step.)
        try:
            sent = channel.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return
        if sent < len(data):  # a large answer (the grid) on a full buffer: the rest, blocking
            try:
                channel.sock.setblocking(True)
                channel.sock.sendall(data[sent:])
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    channel.sock.setblocking(False)

    def _close(self, fd: int, *, teardown: bool = False) -> None:
        channel = self.channels.pop(fd)
        if self.by_rank.get(channel.rank) is channel:
            del self.by_rank[channel.rank]
        for route in channel.routes.values():
            route.close()  # a partial last line goes out, and the stream's files close
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(fd)
        channel.sock.close()
        if self.coordinator is not None:
            self.coordinator.on_gone(channel.rank)
        if teardown or self.finished or self.stopping:
            return
        if self.cluster is not None:
            # A worker died mid-run: the collective it was part of can never complete on any node.
            self.cluster.report_lost_rank(channel.rank)
        elif self.coordinator is not None:
            # One launcher playing every node: the other simulated nodes' ranks see the network peer close.
            self._dispatch(self.coordinator.on_death(channel.rank, time.time()))

    def publish_state(self, force: bool = False) -> None:
        """Writes the job state file (atomically, at most once a second) for fakerun-smi and friends."""
        coordinator = self.coordinator
        now = time.monotonic()
        if coordinator is None or self.state_failed:
            return
        if not force and now - self._state_written < STATE_EVERY_S:
            return
        self._state_written = now
        state = coordinator.state(self.hosts, self.nproc_per_node, os.getpid(), time.time())
        directory = state_dir()
        path = os.path.join(directory, f"job-{os.getpid()}.json")
        tmp = path + ".tmp"
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps(state))  # json.dump would take the pure-Python encoder, ~10x slower
            os.replace(tmp, path)
            self._state_path = path
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self.state_failed = True
            self.warn(warning("the job state file", path, exc, "fakerun-smi will not see this job"))
            self.close_state()  # a state frozen at this step would show a job that no longer moves

    def close(self) -> None:
        """Closes every socket and file and removes the state file: nothing outlives the job."""
        for fd in list(self.channels):
            self._close(fd, teardown=True)
        if self.cluster is not None:
            self.cluster.close()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        self.close_state()

    def close_state(self) -> None:
        """Removes the state file, if one was written."""
        if self._state_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._state_path)
            release_state_dir(os.path.dirname(self._state_path))
            self._state_path = None
