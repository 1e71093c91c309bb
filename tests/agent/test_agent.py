"""State-machine tests of the agent with a fake clock and a scripted process table."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

import pytest

from fakerun.launcher.agent import FAILURE_SHUTDOWN_TIMEOUT, Agent, Failure, State, Worker
from fakerun.launcher.envs import WorkerSlot


@dataclass
class FakeGroup:
    """A process table that hands out pids and records the signals it is asked to send."""

    nproc: int
    next_pid: int = 100
    starts: list[int] = field(default_factory=list)
    kills: list[tuple[int, int]] = field(default_factory=list)

    def start(self, restart_count: int) -> list[tuple[int, WorkerSlot]]:
        self.starts.append(restart_count)
        out = []
        for lr in range(self.nproc):
            out.append((self.next_pid, WorkerSlot(0, lr, lr, "localhost")))
            self.next_pid += 1
        return out

    def kill(self, pid: int, sig: int) -> None:
        self.kills.append((pid, sig))


@dataclass
class Recorder:
    """Records what the agent asks the launcher to say, as (event, details) tuples."""

    events: list[tuple[str, object]] = field(default_factory=list)

    def rendezvousing(self, restart_count: int) -> None:
        self.events.append(("rendezvous", restart_count))

    def group_starting(self, restart_count: int) -> None:
        pass

    def group_started(self, restart_count: int, workers: list[Worker]) -> None:
        self.events.append(("started", restart_count))

    def sending_closing_signal(self, pid: int, sig: signal.Signals) -> None:
        self.events.append(("sending", (pid, sig.name)))

    def unable_to_shutdown(self, pid: int, sig: signal.Signals) -> None:
        self.events.append(("unable", (pid, int(sig))))

    def worker_failed(self, failure: Failure) -> None:
        self.events.append(("failed", (failure.pid, failure.exitcode)))

    def will_restart(self, attempts_left: int) -> None:
        self.events.append(("will_restart", attempts_left))

    def new_nodes_detected(self, waiting: int) -> None:
        self.events.append(("new_nodes", waiting))

    def received_death_signal(self, signum: int) -> None:
        self.events.append(("death_signal", signum))

    def child_failed_report(self, root: Failure, others: list[Failure], restart_count: int) -> None:
        self.events.append(("report", (root.pid, [(o.pid, o.exitcode) for o in others], restart_count)))

    def signal_exception(self, signum: int) -> None:
        self.events.append(("signal_exception", signum))

    def group_succeeded(self) -> None:
        self.events.append(("succeeded", None))

    def rendezvous_timed_out(self) -> None:
        self.events.append(("rendezvous_timeout", None))

    def names(self) -> list[str]:
        return [e for e, _ in self.events]


@dataclass
class FakeRejoin:
    """The other agents of a job: records the rounds asked for; a round completes when the test says."""

    requested: list[int] = field(default_factory=list)
    complete: set[int] = field(default_factory=set)
    timed_out: bool = False
    waiting: int = 0  # agents waiting to join at the next round
    stopped_for_round: int = 0

    def request_round(self, restart_count: int) -> None:
        self.requested.append(restart_count)

    def round_complete(self, restart_count: int) -> bool:
        return restart_count in self.complete or self.timed_out

    def round_timed_out(self) -> bool:
        return self.timed_out

    def nodes_waiting(self) -> int:
        return self.waiting

    def stopping_for_round(self) -> None:
        self.stopped_for_round += 1


def make_agent(
    nproc: int = 3, max_restarts: int = 0, shutdown_timeout: float = 30.0
) -> tuple[Agent, FakeGroup, Recorder]:
    group, out = FakeGroup(nproc), Recorder()
    agent = Agent(group, out, max_restarts=max_restarts, shutdown_timeout=shutdown_timeout)
    agent.start(0.0)
    return agent, group, out


class TestSuccess:
    """A group whose workers all exit 0."""

    def test_exit_code_zero_after_last_worker(self) -> None:
        """The agent finishes with 0 only once every worker has exited 0."""
        agent, _, out = make_agent(3)
        agent.on_exit(100, 0, 1.0)
        agent.on_exit(101, 0, 1.1)
        assert agent.exit_code is None
        agent.on_exit(102, 0, 1.2)
        assert agent.exit_code == 0
        assert out.names() == ["started", "succeeded"]

    def test_early_clean_exit_does_not_stop_others(self) -> None:
        """A worker that exits 0 early sends no signal to the others (04_failure/rank1_exits_0_early)."""
        agent, group, _ = make_agent(2)
        agent.on_exit(101, 0, 1.0)
        assert group.kills == []
        assert agent.state is State.RUNNING


class TestFailure:
    """A worker that exits non-zero or dies by a signal."""

    @pytest.mark.parametrize("exitcode", [3, 1, -9, -11])
    def test_survivors_get_sigterm_then_report(self, exitcode: int) -> None:
        """The others get SIGTERM, then the failed line and the report name the first failure; exit 1."""
        agent, group, out = make_agent(3)
        agent.on_exit(101, exitcode, 5.0)
        assert group.kills == [(100, signal.SIGTERM), (102, signal.SIGTERM)]
        assert agent.exit_code is None
        agent.on_exit(100, -15, 5.05)
        agent.on_exit(102, -15, 5.06)
        assert agent.exit_code == 1
        assert out.events[-2] == ("failed", (101, exitcode))
        assert out.events[-1] == ("report", (101, [(100, -15), (102, -15)], 0))

    def test_single_worker_report_has_no_others(self) -> None:
        """With one worker the report has an empty Failures section."""
        agent, group, out = make_agent(1)
        agent.on_exit(100, 3, 1.0)
        assert group.kills == []
        assert out.events[-1] == ("report", (100, [], 0))
        assert agent.exit_code == 1

    def test_survivor_that_exits_zero_is_not_reported(self) -> None:
        """Only non-zero exits are listed among the other failures."""
        agent, _, out = make_agent(3)
        agent.on_exit(100, 3, 1.0)
        agent.on_exit(101, 0, 1.1)
        agent.on_exit(102, -15, 1.2)
        assert out.events[-1] == ("report", (100, [(102, -15)], 0))

    def test_sigkill_after_thirty_seconds_regardless_of_shutdown_timeout(self) -> None:
        """Survivors ignoring SIGTERM are SIGKILLed after 30 s; --shutdown-timeout does not apply here."""
        agent, group, out = make_agent(2, shutdown_timeout=3.0)
        agent.on_exit(101, 3, 10.0)
        agent.on_tick(10.0 + 3.0)
        assert (100, signal.SIGKILL) not in group.kills
        assert agent.deadline() == pytest.approx(10.0 + FAILURE_SHUTDOWN_TIMEOUT)
        agent.on_tick(10.0 + FAILURE_SHUTDOWN_TIMEOUT)
        assert (100, signal.SIGKILL) in group.kills
        assert ("unable", (100, 15)) in out.events
        agent.on_exit(100, -9, 40.1)
        assert agent.exit_code == 1


class TestRestarts:
    """--max-restarts restarts the whole group with a new attempt number."""

    def test_restarts_until_exhausted(self) -> None:
        """max_restarts=2 gives three attempts, then the report of the last one."""
        agent, group, out = make_agent(2, max_restarts=2)
        for attempt in range(3):
            pids = [w.pid for w in agent.workers.values()]
            agent.on_exit(pids[1], 3, 1.0 + attempt)
            agent.on_exit(pids[0], -15, 1.1 + attempt)
        assert group.starts == [0, 1, 2]
        assert out.names().count("will_restart") == 2
        assert [e for e in out.events if e[0] == "will_restart"] == [("will_restart", 2), ("will_restart", 1)]
        assert out.events[-1][0] == "report"
        assert out.events[-1][1][2] == 2  # type: ignore[index]
        assert agent.exit_code == 1

    def test_signal_is_never_followed_by_restart(self) -> None:
        """A death signal ends the run even when restarts are left."""
        agent, group, out = make_agent(2, max_restarts=2)
        agent.on_signal(signal.SIGTERM, 1.0)
        agent.on_exit(100, -15, 1.01)
        agent.on_exit(101, -15, 1.02)
        assert group.starts == [0]
        assert out.names()[-1] == "signal_exception"
        assert agent.exit_code == 1


class TestSignals:
    """Signals received by the launcher."""

    @pytest.mark.parametrize(
        "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1]
    )
    def test_forwarded_as_same_signal(self, sig: signal.Signals) -> None:
        """Each worker gets the very signal the launcher received."""
        agent, group, out = make_agent(3)
        agent.on_signal(sig, 2.0)
        assert group.kills == [(100, sig), (101, sig), (102, sig)]
        assert out.events[1] == ("death_signal", sig)
        for pid in (100, 101, 102):
            agent.on_exit(pid, -int(sig), 2.01)
        assert out.events[-1] == ("signal_exception", sig)
        assert agent.exit_code == 1

    def test_shutdown_timeout_escalates_to_sigkill(self) -> None:
        """Workers that ignore the signal are SIGKILLed after --shutdown-timeout."""
        agent, group, out = make_agent(2, shutdown_timeout=3.0)
        agent.on_signal(signal.SIGTERM, 10.0)
        agent.on_tick(12.9)
        assert all(sig != signal.SIGKILL for _, sig in group.kills)
        agent.on_tick(13.0)
        assert [(p, s) for p, s in group.kills if s == signal.SIGKILL] == [
            (100, signal.SIGKILL),
            (101, signal.SIGKILL),
        ]
        assert ("unable", (100, 15)) in out.events and ("unable", (101, 15)) in out.events
        agent.on_exit(100, -9, 13.01)
        agent.on_exit(101, -9, 13.02)
        assert agent.exit_code == 1

    def test_second_signal_is_ignored_while_stopping(self) -> None:
        """A repeated signal does not resend or restart the shutdown."""
        agent, group, _ = make_agent(2)
        agent.on_signal(signal.SIGINT, 1.0)
        agent.on_signal(signal.SIGINT, 1.1)
        assert len(group.kills) == 2

    def test_signal_during_failure_shutdown_forwards_it(self) -> None:
        """A signal while stopping after a failure still ends in the signal exception."""
        agent, group, out = make_agent(3)
        agent.on_exit(100, 3, 1.0)
        agent.on_signal(signal.SIGINT, 1.05)
        assert (101, signal.SIGINT) in group.kills
        agent.on_exit(101, -2, 1.1)
        agent.on_exit(102, -2, 1.1)
        assert out.names()[-1] == "signal_exception"
        assert agent.exit_code == 1


class TestRendezvous:
    """An attempt's rendezvous takes time: the workers start when it completes, not when it begins."""

    def rendezvous_agent(
        self, seconds: list[float], max_restarts: int = 0
    ) -> tuple[Agent, FakeGroup, Recorder]:
        group, out = FakeGroup(2), Recorder()
        agent = Agent(
            group,
            out,
            max_restarts=max_restarts,
            shutdown_timeout=30.0,
            rendezvous_s=lambda attempt: seconds[attempt],
        )
        agent.start(10.0)
        return agent, group, out

    def test_workers_start_at_the_deadline(self) -> None:
        """`Rendezvous'ing` at once; the workers and the complete block only once its time has passed."""
        agent, group, out = self.rendezvous_agent([0.3])
        assert out.names() == ["rendezvous"] and group.starts == []
        assert agent.deadline() == pytest.approx(10.3)
        agent.on_tick(10.29)
        assert group.starts == []
        agent.on_tick(10.3)
        assert group.starts == [0] and out.names() == ["rendezvous", "started"]
        assert agent.state is State.RUNNING

    def test_restart_rendezvous_again(self) -> None:
        """A restarted group goes through its own rendezvous before its workers start."""
        agent, group, out = self.rendezvous_agent([0.2, 0.5], max_restarts=1)
        agent.on_tick(10.2)
        agent.on_exit(100, 3, 11.0)
        agent.on_exit(101, -15, 11.1)
        assert out.names()[-1] == "rendezvous" and group.starts == [0]
        agent.on_tick(11.5)
        assert group.starts == [0]
        agent.on_tick(11.6)
        assert group.starts == [0, 1] and out.events[-1] == ("started", 1)

    def test_restart_waits_for_the_other_agents(self) -> None:
        """A multi-node restart: the round is requested once the workers are gone, and the workers start
        only when it is complete, however long after the rendezvous time that is."""
        rounds = FakeRejoin()
        group, out = FakeGroup(2), Recorder()
        agent = Agent(
            group, out, max_restarts=1, shutdown_timeout=30.0, rendezvous_s=lambda a: 0.2, rejoin=rounds
        )
        agent.start(10.0)
        agent.on_tick(10.2)
        assert group.starts == [0] and rounds.requested == []  # the first attempt is the rendezvous itself
        agent.on_exit(100, 1, 11.0)
        agent.on_exit(101, -15, 11.1)
        assert rounds.requested == [1]
        agent.on_tick(20.0)
        assert group.starts == [0] and agent.deadline() is None and agent.state is State.RENDEZVOUS
        rounds.complete.add(1)
        assert agent.deadline() == pytest.approx(11.3)
        agent.on_tick(20.1)
        assert group.starts == [0, 1] and out.events[-1] == ("started", 1)

    def test_a_round_that_times_out_ends_the_agent(self) -> None:
        """An elastic round below its minimum of nodes: torch's next_rendezvous raises out of the agent's
        run, so the agent exits 1 with that error and no worker-failure report, starting nothing."""
        rounds = FakeRejoin()
        group, out = FakeGroup(2), Recorder()
        agent = Agent(
            group, out, max_restarts=3, shutdown_timeout=30.0, rendezvous_s=lambda a: 0.2, rejoin=rounds
        )
        agent.start(10.0)
        agent.on_tick(10.2)
        agent.on_exit(100, 1, 11.0)
        agent.on_exit(101, -15, 11.1)
        rounds.timed_out = True
        agent.on_tick(40.0)
        assert agent.exit_code == 1 and group.starts == [0]
        assert out.names()[-2:] == ["rendezvous", "rendezvous_timeout"] and "report" not in out.names()

    def test_nodes_waiting_to_join_restart_the_group_uncounted(self) -> None:
        """torch's HEALTHY branch: agents waiting to join are seen at the monitor's next look; the group is
        SIGTERMed and rejoins, then starts again with the same restart count and every restart still left."""
        rounds = FakeRejoin()
        group, out = FakeGroup(2), Recorder()
        agent = Agent(
            group,
            out,
            max_restarts=1,
            shutdown_timeout=30.0,
            rendezvous_s=lambda a: 0.2,
            rejoin=rounds,
            monitor_interval=5.0,
        )
        agent.start(10.0)
        agent.on_tick(10.2)  # the attempt starts at 10.2: the monitor looks at 15.2, 20.2...
        rounds.waiting = 1
        agent.on_tick(12.0)
        assert group.kills == [] and agent.deadline() == pytest.approx(15.2)
        agent.on_tick(15.2)
        stops = [("sending", (100, "SIGTERM")), ("sending", (101, "SIGTERM"))]
        assert out.events[-3:] == [("new_nodes", 1), *stops]
        assert group.kills == [(100, signal.SIGTERM), (101, signal.SIGTERM)] and rounds.stopped_for_round == 1
        agent.on_exit(100, -15, 15.3)
        assert rounds.requested == []  # a worker is still stopping
        agent.on_exit(101, -15, 15.4)
        assert rounds.requested == [0] and out.events[-1] == ("rendezvous", 0)
        assert "failed" not in out.names() and "will_restart" not in out.names()
        agent.on_tick(16.0)
        assert group.starts == [0]  # the round is not complete
        rounds.waiting = 0
        rounds.complete.add(0)
        agent.on_tick(16.1)
        assert group.starts == [0, 0] and agent.restart_count == 0
        # A failure after it still has its one restart.
        agent.on_exit(102, 1, 17.0)
        agent.on_tick(21.1)  # the look after it (the attempt started at 16.1)
        agent.on_exit(103, -15, 21.2)
        assert ("will_restart", 1) in out.events and rounds.requested == [0, 1]

    def test_signal_during_rendezvous_ends_without_workers(self) -> None:
        """A handled signal before any worker exists: the signal exception, exit 1, nothing started."""
        agent, group, out = self.rendezvous_agent([5.0])
        agent.on_signal(signal.SIGTERM, 11.0)
        assert agent.exit_code == 1 and group.starts == [] and group.kills == []
        assert out.names() == ["rendezvous", "death_signal", "signal_exception"]


class TestMonitorInterval:
    """torchrun's agent acts on a failure at its monitor loop's next look, not the moment it happens."""

    def test_survivors_get_sigterm_at_the_next_look(self) -> None:
        """Looks every 5 s from the attempt's start: a failure at 12 s is acted on at 15 s; a worker that dies
        meanwhile (its NCCL abort) is reported as it died, not as killed."""
        group, out = FakeGroup(3), Recorder()
        agent = Agent(group, out, max_restarts=0, shutdown_timeout=30.0, monitor_interval=5.0)
        agent.start(0.0)
        agent.on_exit(101, 1, 12.0)
        assert group.kills == [] and agent.deadline() == 15.0
        agent.on_exit(102, -6, 13.0)
        agent.on_tick(14.9)
        assert group.kills == []
        agent.on_tick(15.0)
        assert group.kills == [(100, signal.SIGTERM)]
        agent.on_exit(100, -15, 15.1)
        assert agent.exit_code == 1

    def test_all_gone_before_the_look(self) -> None:
        """Every worker dead before the next look: nothing to signal, the report comes at that look."""
        group, out = FakeGroup(2), Recorder()
        agent = Agent(group, out, max_restarts=0, shutdown_timeout=30.0, monitor_interval=5.0)
        agent.start(0.0)
        agent.on_exit(100, -9, 1.0)
        agent.on_exit(101, -6, 1.5)
        assert agent.exit_code is None and agent.deadline() == 5.0
        agent.on_tick(5.0)
        assert group.kills == [] and agent.exit_code == 1
        assert out.events[-1] == ("report", (100, [(101, -6)], 0))

    def test_missing_script_every_worker_exits_2(self) -> None:
        """Every worker fails the same way before the first look (a missing script): all are reported with
        their exit code 2, none as SIGTERMed, and the root cause is rank 0 whichever was reaped first."""
        group, out = FakeGroup(4), Recorder()
        agent = Agent(group, out, max_restarts=0, shutdown_timeout=30.0, monitor_interval=0.1)
        agent.start(0.0)
        for pid, t in ((102, 0.02), (100, 0.03), (103, 0.04), (101, 0.05)):
            agent.on_exit(pid, 2, t)
        agent.on_tick(0.1)
        assert group.kills == []
        assert ("failed", (100, 2)) in out.events
        assert out.events[-1] == ("report", (100, [(101, 2), (102, 2), (103, 2)], 0))

    def test_root_is_the_lowest_rank_found_failed(self) -> None:
        """Two failures seen at one look: the lower rank is the root, listed first among the others is the
        other one found failed, then the workers stopped by SIGTERM."""
        group, out = FakeGroup(4), Recorder()
        agent = Agent(group, out, max_restarts=0, shutdown_timeout=30.0, monitor_interval=1.0)
        agent.start(0.0)
        agent.on_exit(103, 1, 0.5)
        agent.on_exit(102, 1, 0.6)
        agent.on_tick(1.0)
        assert group.kills == [(100, signal.SIGTERM), (101, signal.SIGTERM)]
        agent.on_exit(100, -15, 1.1)
        agent.on_exit(101, -15, 1.1)
        assert out.events[-1] == ("report", (102, [(103, 1), (100, -15), (101, -15)], 0))
