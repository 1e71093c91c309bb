"""The launcher's voice: torchrun's glog lines, INFO blocks, tracebacks and the failure report."""

from __future__ import annotations

import os
import signal
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass

from fakerun.launcher import glog, report
from fakerun.launcher.agent import Failure, Worker
from fakerun.launcher.console import Console
from fakerun.launcher.envs import WorkerSlot, worker_slots
from fakerun.launcher.plan import LaunchPlan

_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "WARN": 30, "ERROR": 40, "CRITICAL": 50, "FATAL": 50}
_LETTER_LEVEL = {"I": 20, "W": 30, "E": 40}


def log_level(environ: dict[str, str] | os._Environ[str]) -> int:
    """torchrun's threshold: LOGLEVEL (a name or a number), WARNING by default."""
    value = environ.get("LOGLEVEL", "WARNING").strip().upper()
    if value.isdigit():
        return int(value)
    return _LEVELS.get(value, 30)


@dataclass
class LauncherLog:
    """Writes glog-style lines (or plain ones under `python -m`) at or above the threshold."""

    console: Console
    threshold: int
    plain: bool
    pid: int
    clock: Callable[[], float] = time.time
    where: Callable[[str], str] | None = None  # a source's path as shown, when not site-packages-relative

    def log(self, level: str, source: str, message: str) -> None:
        """Logs one message (all its lines) at level I, W or E."""
        if _LETTER_LEVEL[level] < self.threshold:
            return
        # Under `python -m`, only run.py's logger is `__main__` and loses its glog prefix.
        when = self.clock()
        text = glog.format_log(level, when, self.pid, source, message, python_m=self.plain, where=self.where)
        if text:
            self.console.launcher_lines(text)

    def block(self, level: str, source: str, messages: list[str]) -> None:
        """Logs several messages with one timestamp, as torch logs a multi-line string."""
        self.log(level, source, "\n".join(messages))

    def enabled(self, level: str) -> bool:
        """Whether lines of this level are shown."""
        return _LETTER_LEVEL[level] >= self.threshold

    def raw(self, text: str) -> None:
        """Writes text that torchrun prints without a prefix (tracebacks, the report block)."""
        self.console.launcher_lines(text)


def site_packages() -> str:
    """Where torch would be installed next to this interpreter, for the tracebacks' file names."""
    return sysconfig.get_paths()["purelib"]


class TorchrunVoice:
    """Implements the agent's output in the exact words and formats of torchrun 2.13."""

    def __init__(
        self,
        plan: LaunchPlan,
        log: LauncherLog,
        argv0: str,
        python: str,
        error_file_of: Callable[[WorkerSlot, int], str],
        shown_pid: Callable[[WorkerSlot, int, int], int] | None = None,
        *,
        announced: bool = False,
    ) -> None:
        self.plan = plan
        # (slot, real pid, restart count) -> the pid its own host's agent would name: a simulated node's
        # workers are real processes here, but their agent would report the pids of that other host.
        self.shown_pid = shown_pid
        self._shown: dict[int, int] = {}
        # The attempt whose `Rendezvous'ing` is out (an agent meeting others over TCP says it before).
        self._announced: int | None = 0 if announced else None
        self.error_file_of = error_file_of
        self.log = log
        self.argv0 = argv0
        self.python = python
        self.role = plan.args.role

    def rendezvousing(self, restart_count: int) -> None:
        """INFO: `starting workers` (first attempt) and `Rendezvous'ing worker group`."""
        if self._announced == restart_count:
            return
        self._announced = restart_count
        if not self.log.enabled("I"):
            return
        if restart_count == 0:
            self.log.log(
                "I", glog.AGENT_STARTING_WORKERS, glog.starting_workers(self.role, self._binary_name())
            )
        self.log.log("I", glog.AGENT_RENDEZVOUSING, glog.rendezvousing(self.role))

    def group_started(self, restart_count: int, workers: list[Worker]) -> None:
        """The workers' pids as the lines about them show them."""
        if self.shown_pid is not None:
            self._shown = {w.pid: self.shown_pid(w.slot, w.pid, restart_count) for w in workers}

    def group_starting(self, restart_count: int) -> None:
        """INFO: the rendezvous result (this node's) and `Starting worker group`, before the fork."""
        if self._announced != restart_count:
            self.rendezvousing(restart_count)
        if not self.log.enabled("I"):
            return
        me = self.plan.nodes[0].group_rank  # the node this agent is (the first it plays)
        mine = [slot for slot in worker_slots(self.plan) if slot.node_index == me]
        n = self.plan.world_size
        self.log.block(
            "I",
            glog.AGENT_RDZV_COMPLETE,
            glog.rendezvous_complete_block(
                role=self.role,
                restart_count=restart_count,
                master_addr=self.plan.rdzv.master_addr,
                master_port=self.plan.rdzv.master_port,
                group_rank=me,
                group_world_size=self.plan.group_world_size,
                local_ranks=[s.local_rank for s in mine],
                role_ranks=[s.rank for s in mine],
                global_ranks=[s.rank for s in mine],
                role_world_sizes=[n] * len(mine),
                global_world_sizes=[n] * len(mine),
                event_log_handler=self.plan.args.event_log_handler,
            ),
        )
        self.log.log("I", glog.AGENT_STARTING_GROUP, glog.starting_worker_group(self.role))
        self.log.log("I", glog.LOCAL_AGENT_STORE, glog.use_agent_store())
        self.log.log("I", glog.LOCAL_AGENT_FILE_TIMER, glog.no_file_timer())
        self.log.log("I", glog.LOCAL_AGENT_HEALTH_CHECK, glog.no_health_check())

    def sending_closing_signal(self, pid: int, sig: signal.Signals) -> None:
        """W: `Sending process N closing signal SIGTERM`."""
        self.log.log("W", glog.API_SENDING, glog.sending_closing_signal(self._pid(pid), sig.name))

    def unable_to_shutdown(self, pid: int, sig: signal.Signals) -> None:
        """W: `Unable to shutdown process N via 15, forcefully exiting via 9`."""
        self.log.log(
            "W", glog.API_UNABLE, glog.unable_to_shutdown(self._pid(pid), int(sig), int(signal.SIGKILL))
        )

    def worker_failed(self, failure: Failure) -> None:
        """E: `failed (exitcode: 3) local_rank: 1 (pid: N) of binary: ...`."""
        self.log.log(
            "E",
            glog.API_FAILED,
            glog.failed_line(
                failure.exitcode, failure.slot.local_rank, self._pid(failure.pid), self._binary()
            ),
        )

    def will_restart(self, attempts_left: int) -> None:
        """INFO: the group failed and will restart."""
        self.log.log(
            "I",
            glog.AGENT_GROUP_FAILED,
            glog.worker_group_failed_will_restart(self.role, attempts_left, self.plan.args.max_restarts),
        )
        self.log.log("I", glog.AGENT_STOPPING_GROUP, glog.stopping_worker_group(self.role))

    def new_nodes_detected(self, waiting: int) -> None:
        """INFO: agents wait to join (an elastic job's membership changes): the group restarts, uncounted."""
        me = self.plan.nodes[0].group_rank
        self.log.log("I", glog.AGENT_NEW_NODES, glog.new_nodes_detected(self.role, waiting, me))
        self.log.log("I", glog.AGENT_STOPPING_GROUP, glog.stopping_worker_group(self.role))
        self._announced = None  # the same attempt rendezvous again

    def received_death_signal(self, signum: int) -> None:
        """W: `Received 15 death signal, shutting down workers`."""
        self.log.log("W", glog.AGENT_DEATH_SIGNAL, glog.received_death_signal(signum))

    def child_failed_report(self, root: Failure, others: list[Failure], restart_count: int) -> None:
        """The traceback and ChildFailedError block with its Root Cause."""
        payload = report.read_error_file(self._error_file(root, restart_count))
        root_rec = self._record(root, restart_count, payload)
        if payload is not None:
            self.log.log(
                "E",
                glog.ERROR_HANDLER_NO_PARENT_FILE,
                glog.no_error_file_for_parent(root_rec.error_file or ""),
            )
        else:
            self.log.log("I", glog.ERRORS_NO_ERROR_FILE, glog.no_error_file_for_local_rank(root.slot.rank))
        other_recs = [self._record(f, restart_count, None) for f in others]
        text = report.launcher_traceback("child_failed", self.argv0, site_packages())
        text += report.format_child_failed_error(self.plan.entrypoint, root_rec, other_recs)
        self.log.raw(text)

    def signal_exception(self, signum: int) -> None:
        """The traceback ending in `SignalException: Process N got signal: 15`."""
        text = report.launcher_traceback("signal", self.argv0, site_packages())
        text += report.signal_exception_line(self.log.pid, signum)
        self.log.raw(text)

    def rendezvous_timed_out(self) -> None:
        """A restart's round never completed: the traceback ending in RendezvousTimeoutError."""
        text = report.launcher_traceback("c10d_rejoin_timeout", self.argv0, site_packages())
        self.log.raw(text + report.rendezvous_timeout_line())

    def group_succeeded(self) -> None:
        """INFO: the success lines."""
        # The exit barrier's wait is a store round trip once every agent is done (0.00024 s recorded): the
        # time this agent takes to get there stands for it, not the run's length.
        begun = time.perf_counter()
        lines = glog.success_lines(self.role, 0.0)
        for source, message in lines[:-1]:
            self.log.log("I", source, message)
        source, _ = lines[-1]
        self.log.log("I", source, glog.done_waiting(time.perf_counter() - begun))

    def _record(
        self, f: Failure, restart_count: int, payload: dict[str, object] | None
    ) -> report.FailureRecord:
        return report.FailureRecord(
            rank=f.slot.rank,
            local_rank=f.slot.local_rank,
            pid=self._pid(f.pid),
            exitcode=f.exitcode,
            # On the job's clock, like every other line of the run: now, less the real time since it failed.
            time=self.log.clock() - (time.time() - f.time),
            host=f.slot.host,
            error_file=self._error_file(f, restart_count) if payload is not None else None,
            error_payload=payload,
        )

    def _pid(self, pid: int) -> int:
        """The pid a worker's own agent names it by."""
        return self._shown.get(pid, pid)

    def _error_file(self, f: Failure, restart_count: int) -> str:
        return self.error_file_of(f.slot, restart_count)

    def _binary(self) -> str:
        args = self.plan.args
        if args.no_python and not args.run_path:
            return args.training_script
        return self.python

    def _binary_name(self) -> str:
        return os.path.basename(self._binary())


def python_executable() -> str:
    """The interpreter workers run, as torch chooses it (PYTHON_EXEC overrides sys.executable)."""
    return os.environ.get("PYTHON_EXEC", sys.executable)
