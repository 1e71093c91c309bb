"""torchrun's elastic agent as a state machine: start the group, watch it, restart, stop, report."""

from __future__ import annotations

import enum
import math
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fakerun.launcher.envs import WorkerSlot

# torch waits this long for SIGTERMed workers after a worker failure; --shutdown-timeout does not apply.
FAILURE_SHUTDOWN_TIMEOUT = 30.0


class State(enum.Enum):
    """Where the agent is in its run."""

    RENDEZVOUS = "rendezvous"
    RUNNING = "running"
    STOPPING_AFTER_FAILURE = "stopping_after_failure"
    STOPPING_AFTER_SIGNAL = "stopping_after_signal"
    STOPPING_FOR_NEW_NODES = "stopping_for_new_nodes"  # an elastic job grows: a restart that is not counted
    DONE = "done"


@dataclass
class Worker:
    """One worker process of the current attempt and what became of it."""

    slot: WorkerSlot
    pid: int
    exitcode: int | None = None
    exit_time: float | None = None


@dataclass(frozen=True)
class Failure:
    """A worker that ended badly: its place, pid, exit code (negative = signal) and when."""

    slot: WorkerSlot
    pid: int
    exitcode: int
    time: float


class WorkerGroup(Protocol):
    """Starts and signals the processes of a worker group; the agent never touches processes itself."""

    def start(self, restart_count: int) -> list[tuple[int, WorkerSlot]]:
        """Starts every worker of one attempt and returns (pid, slot) for each."""
        ...

    def kill(self, pid: int, sig: int) -> None:
        """Sends `sig` to one worker."""
        ...


class Rejoin(Protocol):
    """The other agents of a multi-node job: a restarted attempt starts once every agent is in its round."""

    def request_round(self, restart_count: int) -> None:
        """This agent stopped its workers and rejoins the job for attempt `restart_count`."""
        ...

    def round_complete(self, restart_count: int) -> bool:
        """Whether attempt `restart_count` may start (every agent rejoined, or the round can never happen)."""
        ...

    def nodes_waiting(self) -> int:
        """How many agents wait to join at the next round (torch's num_nodes_waiting; elastic jobs)."""
        ...

    def stopping_for_round(self) -> None:
        """This agent stops its healthy workers for a round: their ends are no failure of the job."""
        ...

    def round_timed_out(self) -> bool:
        """Whether the round this agent waits for ended in torch's RendezvousTimeoutError (elastic jobs)."""
        ...


class AgentOutput(Protocol):
    """The launcher's messages, in the words torchrun uses; the agent says what, this says how."""

    def rendezvousing(self, restart_count: int) -> None: ...
    def group_starting(self, restart_count: int) -> None: ...
    def group_started(self, restart_count: int, workers: list[Worker]) -> None: ...
    def sending_closing_signal(self, pid: int, sig: signal.Signals) -> None: ...
    def unable_to_shutdown(self, pid: int, sig: signal.Signals) -> None: ...
    def worker_failed(self, failure: Failure) -> None: ...
    def will_restart(self, attempts_left: int) -> None: ...
    def new_nodes_detected(self, waiting: int) -> None: ...
    def received_death_signal(self, signum: int) -> None: ...
    def child_failed_report(self, root: Failure, others: list[Failure], restart_count: int) -> None: ...
    def signal_exception(self, signum: int) -> None: ...
    def group_succeeded(self) -> None: ...
    def rendezvous_timed_out(self) -> None: ...


class Agent:
    """Drives one launcher's worker groups from events: worker exits, signals, and the passing of time."""

    def __init__(
        self,
        group: WorkerGroup,
        out: AgentOutput,
        *,
        max_restarts: int,
        shutdown_timeout: float,
        rendezvous_s: Callable[[int], float] | None = None,
        monitor_interval: float = 0.0,
        rejoin: Rejoin | None = None,
    ) -> None:
        self.group = group
        self.rejoin = rejoin
        # torchrun's agent looks at its workers every --monitor-interval seconds: a failure is acted on at
        # the next look, not the moment it happens (the others' NCCL errors have that long to print).
        self.monitor_interval = monitor_interval
        self._attempt_start = 0.0
        self._terminate_at: float | None = None
        # How long each attempt's rendezvous takes before its workers start (None: no rendezvous step).
        self.rendezvous_s = rendezvous_s
        self.out = out
        self.max_restarts = max_restarts
        self.shutdown_timeout = shutdown_timeout
        self.state = State.RUNNING
        self.restart_count = 0
        self.workers: dict[int, Worker] = {}
        self.exit_code: int | None = None
        self._root: Failure | None = None
        self._found_failed: list[Worker] = []  # the failed workers the look that found a failure saw
        self._deadline: float | None = None
        self._stop_signal: signal.Signals = signal.SIGTERM
        self._death_signum = 0
        self._rejoining = False  # this attempt starts at a new round of the job's agents
        self._new_nodes_look: float | None = None  # the monitor's look that acts on agents waiting to join

    # -- events -----------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Starts the first attempt."""
        self._begin_attempt(now)

    def on_exit(self, pid: int, exitcode: int, now: float) -> None:
        """A worker process ended with `exitcode` (negative: killed by that signal)."""
        worker = self.workers.get(pid)
        if worker is None or worker.exitcode is not None:
            return
        worker.exitcode, worker.exit_time = exitcode, now
        if self.state is State.RUNNING:
            if exitcode != 0:
                # The root cause is picked at the look that finds this failure (_terminate).
                self.state = State.STOPPING_AFTER_FAILURE
                self._terminate_at = self._next_look(now)
                if self._terminate_at <= now:
                    self._terminate(now)
            elif not self.alive():
                self.out.group_succeeded()
                self._finish(0)
                return
        self._maybe_stopped(now)

    def on_signal(self, signum: int, now: float) -> None:
        """The launcher received one of --signals-to-handle: forward it and shut down, exit code 1."""
        if self.state in (State.STOPPING_AFTER_SIGNAL, State.DONE):
            return
        self._death_signum = signum
        self._terminate_at = None
        self.out.received_death_signal(signum)
        self.state = State.STOPPING_AFTER_SIGNAL
        self._stop_all(signal.Signals(signum), now + self.shutdown_timeout)
        self._maybe_stopped(now)

    def on_tick(self, now: float) -> None:
        """Time passed: the rendezvous ends, the monitor's next look finds a failure and SIGTERMs the others,
        or workers past their shutdown deadline are SIGKILLed."""
        if self.state is State.RENDEZVOUS:
            if self._rejoining and self.rejoin is not None and self.rejoin.round_timed_out():
                # torch's next_rendezvous raises out of the agent's run: no worker failure to report.
                self.out.rendezvous_timed_out()
                self._finish(1)
                return
            if self._deadline is not None and now >= self._deadline and self._round_complete():
                self._start_attempt(now)
            return
        if self._terminate_at is not None:
            if now >= self._terminate_at:
                self._terminate(now)
            return
        if self.state is State.RUNNING and self.rejoin is not None and self.rejoin.nodes_waiting() > 0:
            # torch's monitor loop asks the rendezvous at each look whether nodes wait to join.
            if self._new_nodes_look is None:
                self._new_nodes_look = self._next_look(now)
            if now >= self._new_nodes_look:
                self._restart_for_new_nodes(self.rejoin.nodes_waiting(), now)
            return
        if self._deadline is not None and now >= self._deadline:
            self._deadline = None
            for w in self.workers.values():
                if w.exitcode is None:
                    self.out.unable_to_shutdown(w.pid, self._stop_signal)
                    self.group.kill(w.pid, signal.SIGKILL)

    # -- queries ----------------------------------------------------------------------------------

    def alive(self) -> list[Worker]:
        """Workers of the current attempt that have not ended."""
        return [w for w in self.workers.values() if w.exitcode is None]

    def deadline(self) -> float | None:
        """When on_tick must next be called, if ever."""
        if self.state is State.RENDEZVOUS and not self._round_complete():
            return None  # the other agents' messages end the wait (the loop calls on_tick after each)
        due = [t for t in (self._deadline, self._terminate_at, self._new_nodes_look) if t is not None]
        return min(due) if due else None

    # -- internals --------------------------------------------------------------------------------

    def _begin_attempt(self, now: float, *, rejoining: bool = False) -> None:
        """An attempt's rendezvous: its workers start when it completes (on_tick), at once without one.
        `rejoining`: it is a new round of the job's agents (a restart, or nodes joining)."""
        if self.rendezvous_s is None:
            self._start_attempt(now)
            return
        self.out.rendezvousing(self.restart_count)
        self.state = State.RENDEZVOUS
        self._rejoining = rejoining and self.rejoin is not None
        if self._rejoining and self.rejoin is not None:
            self.rejoin.request_round(self.restart_count)
        self._deadline = now + max(0.0, self.rendezvous_s(self.restart_count))
        self.on_tick(now)

    def _round_complete(self) -> bool:
        """Whether the other agents (if any) are ready for this attempt; the first one needs no round."""
        rejoin = self.rejoin
        return not self._rejoining or rejoin is None or rejoin.round_complete(self.restart_count)

    def _restart_for_new_nodes(self, waiting: int, now: float) -> None:
        """torch's _restart_workers on a membership change: stop the healthy group, rejoin, start it again,
        with the restart count (and the restarts left) unchanged."""
        self._new_nodes_look = None
        self.out.new_nodes_detected(waiting)
        self.state = State.STOPPING_FOR_NEW_NODES
        if self.rejoin is not None:
            self.rejoin.stopping_for_round()
        self._stop_all(signal.SIGTERM, now + FAILURE_SHUTDOWN_TIMEOUT)
        self._maybe_stopped(now)

    def _start_attempt(self, now: float) -> None:
        self._attempt_start = now
        self._terminate_at = None
        self._new_nodes_look = None
        # torch's agent logs the rendezvous result and its start-up lines before it forks the workers.
        self.out.group_starting(self.restart_count)
        self.workers = {pid: Worker(slot, pid) for pid, slot in self.group.start(self.restart_count)}
        self.state = State.RUNNING
        self._root = None
        self._found_failed = []
        self._deadline = None
        self.out.group_started(self.restart_count, list(self.workers.values()))

    def _next_look(self, now: float) -> float:
        """The monitor loop's next look at the workers after `now` (it looks every monitor_interval from the
        attempt's start)."""
        if self.monitor_interval <= 0:
            return now
        looks = math.floor((now - self._attempt_start) / self.monitor_interval) + 1
        return self._attempt_start + looks * self.monitor_interval

    def _terminate(self, now: float) -> None:
        """The look that finds the failure: pick its root cause, SIGTERM the survivors."""
        self._terminate_at = None
        # torch's poll records every worker found failed at this look with the same timestamp (whole
        # seconds) in local-rank order, and the first of them is the root cause: the lowest rank. A missing
        # script's workers all exit 2 before the first look, so rank 0's is.
        self._found_failed = sorted(
            (w for w in self.workers.values() if w.exitcode not in (None, 0)), key=lambda w: w.slot.rank
        )
        first = self._found_failed[0]
        assert first.exitcode is not None
        when = first.exit_time if first.exit_time is not None else now
        self._root = Failure(first.slot, first.pid, first.exitcode, when)
        self._stop_all(signal.SIGTERM, now + FAILURE_SHUTDOWN_TIMEOUT)
        self._maybe_stopped(now)

    def _stop_all(self, sig: signal.Signals, deadline: float) -> None:
        self._stop_signal = sig
        self._deadline = deadline
        for w in self.alive():
            self.out.sending_closing_signal(w.pid, sig)
            self.group.kill(w.pid, sig)

    def _maybe_stopped(self, now: float) -> None:
        if self.state in (State.RUNNING, State.RENDEZVOUS, State.DONE) or self.alive():
            return
        if self.state is State.STOPPING_AFTER_FAILURE and self._terminate_at is not None:
            return  # every worker is gone, but torch's monitor reports only at its next look
        if self.state is State.STOPPING_AFTER_SIGNAL:
            self.out.signal_exception(self._death_signum)
            self._finish(1)
            return
        if self.state is State.STOPPING_FOR_NEW_NODES:
            self._begin_attempt(now, rejoining=True)
            return
        assert self._root is not None
        root = self._root
        self.out.worker_failed(root)
        if self.restart_count < self.max_restarts:
            self.out.will_restart(self.max_restarts - self.restart_count)
            self.restart_count += 1
            self._begin_attempt(now, rejoining=True)
            return
        # torch lists the failures its look found first (rank order), then those of the workers it stopped.
        found = {w.pid for w in self._found_failed}
        later = sorted(
            (w for w in self.workers.values() if w.pid not in found and w.exitcode not in (None, 0)),
            key=lambda w: w.slot.rank,
        )
        others = [
            Failure(w.slot, w.pid, w.exitcode, w.exit_time or root.time)
            for w in [*self._found_failed, *later]
            if w.pid != root.pid and w.exitcode is not None
        ]
        self.out.child_failed_report(root, others, self.restart_count)
        self._finish(1)

    def _finish(self, code: int) -> None:
        self.state = State.DONE
        self._deadline = None
        self.exit_code = code
