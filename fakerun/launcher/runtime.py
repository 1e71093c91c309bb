"""The launcher's event loop: one selector over worker pipes, signals and timers, feeding the agent."""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fakerun.launcher.agent import Agent, AgentOutput
from fakerun.launcher.console import STDERR, STDOUT, Console, Route, route_spec
from fakerun.launcher.envs import WorkerSlot, worker_slots
from fakerun.launcher.logdir import LogDir, attempt_dir, error_file, make_attempt_dirs
from fakerun.launcher.plan import LaunchPlan
from fakerun.launcher.procs import (
    ChildMain,
    ChildPipes,
    ForkProcessTable,
    ForkRequest,
    SpawnFailed,
    copy_window_size,
    exit_code_of,
)

if TYPE_CHECKING:
    from fakerun.launcher.control import ControlHub  # the simulated job's: a --fake-exec run never loads it

_READ_CHUNK = 65536
# Workers forked in one tight loop (ForkProcessTable.spawn_all): a signal that ends the launcher stops the
# start between two batches, and a batch's pipes and sockets are all open at once.
FORK_BATCH = 128

# Builds what a forked worker runs: given its slot and attempt, returns the child's main function.
ChildFactory = Callable[[WorkerSlot, int, str], ChildMain]


@dataclass
class _Stream:
    """A worker pipe (or pseudo-terminal master) registered in the selector."""

    pid: int
    fd: int
    route: Route
    tty: bool = False


@dataclass
class LocalWorkerGroup:
    """Starts the workers of every simulated node of this host by fork, with routes for their output."""

    plan: LaunchPlan
    console: Console
    selector: selectors.BaseSelector
    procs: ForkProcessTable
    child_factory: ChildFactory
    run_dirs: dict[int, str]  # node (group rank) -> its `<run_id>_<rand8>` directory
    control: ControlHub | None = None  # the simulated job's coordinator channels (None with --fake-exec)
    # Whether a signal that ends the launcher has arrived: the fork loop stops at once, so that the loop
    # can shut down the workers that exist (a 1,000-rank fork loop takes seconds).
    interrupted: Callable[[], bool] = lambda: False
    # --fake-exec: a real script's stream that torchrun would leave on the launcher's terminal is a pseudo-
    # terminal, so the script sees a terminal (isatty, its size) while the launcher stays its only writer.
    worker_ttys: bool = False
    streams: dict[int, _Stream] = field(default_factory=dict)
    by_pid: dict[int, list[int]] = field(default_factory=dict)
    ranks_of: dict[int, int] = field(default_factory=dict)  # a simulated worker's pid -> its rank

    def error_file_path(self, slot: WorkerSlot, restart_count: int) -> str:
        """TORCHELASTIC_ERROR_FILE of a worker."""
        return error_file(self.run_dirs[slot.node_index], restart_count, slot.local_rank)

    def start(self, restart_count: int) -> list[tuple[int, WorkerSlot]]:
        """Starts every worker of one attempt and registers its pipes."""
        for run_dir in self.run_dirs.values():
            make_attempt_dirs(run_dir, restart_count, self.plan.nproc_per_node, self._attempt_dir_failed)
        new_session = not self.plan.args.run_path
        started: list[tuple[int, WorkerSlot]] = []
        slots = worker_slots(self.plan)
        if self.control is not None:
            self.control.new_attempt(restart_count, [slot.rank for slot in slots])
        for first in range(0, len(slots), FORK_BATCH):
            if self.interrupted():
                break
            self._start_batch(slots, first, restart_count, new_session, started)
        if self.control is not None:
            self.control.start_workers()
        return started

    def _start_batch(
        self,
        slots: list[WorkerSlot],
        first: int,
        restart_count: int,
        new_session: bool,
        started: list[tuple[int, WorkerSlot]],
    ) -> None:
        """Forks slots[first:first + FORK_BATCH] in one tight loop (ForkProcessTable.spawn_all), then
        registers their streams."""
        batch = slots[first : first + FORK_BATCH]
        requests = [
            ForkRequest(
                self.child_factory(slot, restart_count, self.error_file_path(slot, restart_count)),
                control=self.control is not None,
                ttys=self._terminal_streams(slot) if self.worker_ttys else frozenset(),
            )
            for slot in batch
        ]
        # Objects allocated so far (every preloaded module) leave the collector's care: a child's collections
        # would otherwise touch their headers and copy every page of them (Instagram's gc.freeze() recipe).
        gc.freeze()
        failure: OSError | None = None
        try:
            spawned = self.procs.spawn_all(requests, new_session=new_session)
        except SpawnFailed as exc:
            spawned, failure = exc.started, exc.error
        for (pid, pipes), slot in zip(spawned, batch, strict=False):  # those started
            self._register(pid, pipes, slot, restart_count)
            started.append((pid, slot))
        if failure is not None:
            # Out of processes, memory or descriptors although the preflight passed (another job took
            # them meanwhile): what was started goes, and the launcher ends with one line.
            self._stop_started(started)
            what = "fork" if failure.errno in (errno.EAGAIN, errno.ENOMEM) else "create its pipes"
            raise StartError(
                f"cannot start rank {slots[len(started)].rank} ({len(started)} of {len(slots)} started): "
                f"{what}: {failure.strerror or failure}"
            ) from None

    def _register(self, pid: int, pipes: ChildPipes, slot: WorkerSlot, restart_count: int) -> None:
        """Routes a started worker's streams and watches them (or its control socket, which carries them)."""
        apath = attempt_dir(self.run_dirs[slot.node_index], restart_count)
        routes = {
            stream: self.console.open_route(self.plan, slot.local_rank, slot.rank, stream, apath)
            for stream in (STDOUT, STDERR)
        }
        if pipes.control is not None and self.control is not None:
            self.control.adopt(slot.rank, pipes.control, routes)
            self.ranks_of[pid] = slot.rank
        fds = []
        for fd, stream in ((pipes.stdout, STDOUT), (pipes.stderr, STDERR)):
            if fd is None:
                continue
            self.streams[fd] = _Stream(pid, fd, routes[stream], tty=stream in pipes.ttys)
            self.selector.register(fd, selectors.EVENT_READ)
            fds.append(fd)
        self.by_pid[pid] = fds

    def _terminal_streams(self, slot: WorkerSlot) -> frozenset[int]:
        """The worker's std fds that would be the launcher's terminal under torchrun: a stream shown on the
        console and neither redirected nor tee'd (torch gives those a file, or /dev/null when filtered out),
        where the launcher's own stream of that number is a terminal."""
        terminal = set()
        for stream in (STDOUT, STDERR):
            spec = route_spec(self.plan, slot.local_rank, slot.rank, stream)
            # STDOUT and STDERR are the fd numbers 1 and 2 the worker would inherit.
            if spec.to_console and not spec.to_file and os.isatty(stream):
                terminal.add(stream)
        return frozenset(terminal)

    def resize_ttys(self) -> None:
        """The launcher's terminal was resized: the workers' pseudo-terminals take its new size, so a script
        asking for its size gets it as it would from the terminal itself. No SIGWINCH reaches the scripts,
        as none reaches torchrun's workers, which run in sessions of their own."""
        for stream in self.streams.values():
            if stream.tty:
                copy_window_size(stream.route.stream, stream.fd)

    def kill(self, pid: int, sig: int) -> None:
        """Sends `sig` to one worker."""
        self.procs.kill(pid, sig)

    def _stop_started(self, started: list[tuple[int, WorkerSlot]]) -> None:
        """Kills and reaps the workers of an attempt that could not be started whole."""
        for pid, _ in started:
            self.procs.kill(pid, signal.SIGKILL)
        for pid, _ in started:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self.drain_pid(pid)

    def pump(self, fd: int, drain: bool = False) -> None:
        """Moves what a worker wrote into its route; closes the stream at EOF."""
        stream = self.streams.get(fd)
        if stream is None:
            return
        while True:
            try:
                data = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close(stream)
                return
            stream.route.feed(data)
            if not drain:
                return

    def _attempt_dir_failed(self, path: str, exc: OSError) -> None:
        self.console.log_dir_failed(path, exc, "the log directory")

    def cut_off(self) -> None:
        """Closes our end of every pipe whose output can no longer go anywhere (our stdout or stderr is gone),
        so the worker's own next write fails as it would on torchrun's inherited stdout (a simulated worker
        is told so on its control socket)."""
        if self.control is not None:
            self.control.cut_off()
        for stream in list(self.streams.values()):
            if stream.route.cut_off:
                # What the worker wrote already still reaches its copies (fakerun-tail); one read, as a
                # worker writing without pause would never let a drain end.
                with contextlib.suppress(OSError):
                    data = os.read(stream.fd, _READ_CHUNK)
                    if data:
                        stream.route.feed(data)
                fds = self.by_pid.get(stream.pid)
                if fds is not None and stream.fd in fds:
                    fds.remove(stream.fd)  # the number may be reused by a restarted worker's pipe
                self._close(stream)

    def drain_pid(self, pid: int) -> None:
        """Reads everything an ended worker left in its pipes (or its control socket), so its last lines
        precede our messages."""
        self.procs.forget(pid)
        for fd in self.by_pid.pop(pid, []):
            self.pump(fd, drain=True)
        rank = self.ranks_of.pop(pid, None)
        if rank is not None and self.control is not None:
            self.control.drain(rank)

    def _close(self, stream: _Stream) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(stream.fd)
        os.close(stream.fd)
        stream.route.close()
        del self.streams[stream.fd]

    def close_all(self) -> None:
        """Flushes and closes every stream still open (workers' children may hold them)."""
        for stream in list(self.streams.values()):
            with contextlib.suppress(OSError):
                data = os.read(stream.fd, _READ_CHUNK)
                if data:
                    stream.route.feed(data)
            self._close(stream)


# Signals whose default action kills the launcher (as it kills torchrun) when they are not in
# --signals-to-handle. We still die of them, but only after removing our temporary files and stopping the
# workers. SIGINT is Python's KeyboardInterrupt: torchrun dies of it with a traceback, we die of it quietly.
FATAL_BY_DEFAULT = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
)


class StartError(Exception):
    """A worker could not be forked: the one line that says why (the started ones are gone)."""


class FatalSignal(Exception):
    """An unhandled signal arrived: the launcher must clean up and then die of it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def die_of(signum: int) -> None:
    """Ends the process by the signal's default action, so the parent sees the same wait status."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


class SignalPipe:
    """Turns signals into bytes on a pipe the selector watches (the self-pipe trick, via set_wakeup_fd)."""

    def __init__(self, signals: tuple[signal.Signals, ...], noted: tuple[signal.Signals, ...] = ()) -> None:
        """Watches `signals` (--signals-to-handle), the fatal ones, SIGCHLD and `noted` (ending nothing)."""
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)
        self._old_fd = signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)
        self._saved = {}
        # Signals received so far (the wakeup fd carries them to the loop; this is for the fork loop).
        self.arrived: set[int] = set()
        fatal = [sig for sig in FATAL_BY_DEFAULT if sig not in signals]
        self.ending = frozenset(int(sig) for sig in (*signals, *fatal))
        for sig in (*signals, *fatal, signal.SIGCHLD, *noted):
            self._saved[sig] = signal.signal(sig, self._note)

    def _note(self, signum: int, frame: object) -> None:
        """Handler of every watched signal: records it (the wakeup fd has already carried its number)."""
        self.arrived.add(signum)

    def interrupted(self) -> bool:
        """Whether a signal that ends the launcher has arrived."""
        return not self.ending.isdisjoint(self.arrived)

    def read(self) -> list[int]:
        """Signal numbers received since the last read."""
        try:
            return list(os.read(self.r, 4096))
        except BlockingIOError:
            return []

    def close(self) -> None:
        """Restores the previous handlers."""
        signal.set_wakeup_fd(self._old_fd)
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        os.close(self.r)
        os.close(self.w)


def run_job(
    plan: LaunchPlan,
    console: Console,
    out_factory: Callable[[LocalWorkerGroup], AgentOutput],
    child_factory: ChildFactory,
    log_dir: LogDir,
    control: Callable[[selectors.BaseSelector], ControlHub] | None = None,
    child_fd_limit: int | None = None,
    rendezvous_s: Callable[[int], float] | None = None,
    worker_ttys: bool = False,
) -> int:
    """Runs the job to its end and returns the launcher's exit code; workers get `child_fd_limit` files;
    each attempt's rendezvous takes `rendezvous_s(restart_count)` seconds of wall time first; `worker_ttys`
    gives workers pseudo-terminals where torchrun's would write to the launcher's terminal."""
    selector = selectors.DefaultSelector()
    # A resize reaches the workers' pseudo-terminals, or the bars the launcher pins and the workers format.
    resizes = worker_ttys or console.bar_width is not None
    sigpipe = SignalPipe(plan.signals_to_handle, (signal.SIGWINCH,) if resizes else ())
    handled = {int(s) for s in plan.signals_to_handle}
    selector.register(sigpipe.r, selectors.EVENT_READ)
    run_dirs = {node.group_rank: log_dir.new_run_dir(plan.rdzv.run_id) for node in plan.nodes}
    hub = control(selector) if control is not None else None
    procs = ForkProcessTable(child_fd_limit)
    group = LocalWorkerGroup(
        plan,
        console,
        selector,
        procs,
        child_factory,
        run_dirs,
        hub,
        interrupted=sigpipe.interrupted,
        worker_ttys=worker_ttys,
    )
    agent = Agent(
        group,
        out_factory(group),
        max_restarts=plan.args.max_restarts,
        shutdown_timeout=plan.shutdown_timeout,
        rendezvous_s=rendezvous_s,
        monitor_interval=plan.args.monitor_interval,
        # The agents of a multi-node job restart together: each attempt after the first is a new round.
        rejoin=hub if hub is not None and hub.cluster is not None else None,
    )
    try:
        agent.start(time.time())
        while agent.exit_code is None:
            deadline = agent.deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            beat = hub.deadline() if hub is not None else None
            if beat is not None:
                wait = max(0.0, beat - time.monotonic())
                timeout = wait if timeout is None else min(timeout, wait)
            for key, _ in selector.select(timeout):
                fd = int(key.fd)
                if fd == sigpipe.r:
                    for signum in sigpipe.read():
                        if signum == signal.SIGCHLD:
                            _reap(group, agent)
                        elif signum in handled:
                            agent.on_signal(signum, time.time())
                        elif signum == signal.SIGWINCH:
                            group.resize_ttys()
                            console.resized()
                        else:
                            raise FatalSignal(signum)
                elif hub is not None and hub.owns(fd):
                    hub.pump(fd)
                else:
                    group.pump(fd)
            if hub is not None:
                hub.tick(time.monotonic())
            # A SIGCHLD may coalesce with another; reaping each round keeps no exit unseen.
            _reap(group, agent)
            agent.on_tick(time.time())
            console.flush()
            if console.broken:
                group.cut_off()
        return agent.exit_code
    except StartError as exc:
        console.launcher_lines(f"fakerun: error: {exc}\n")
        return 1
    finally:
        for w in agent.alive():
            group.kill(w.pid, signal.SIGKILL)
        _reap_all_blocking(agent)
        group.close_all()
        if hub is not None:
            hub.close()
        console.flush()
        console.close_files()
        selector.close()
        sigpipe.close()


def _reap(group: LocalWorkerGroup, agent: Agent) -> None:
    """Collects every ended child and hands its exit code to the agent."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        group.drain_pid(pid)
        agent.on_exit(pid, exit_code_of(status), time.time())


def _reap_all_blocking(agent: Agent) -> None:
    """Waits for workers we just SIGKILLed, so none outlives the launcher."""
    for w in agent.alive():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(w.pid, 0)
