"""The job's coordinator: a per-step barrier of every rank, collective timings, the job's aggregate state.

Pure logic: messages and the time come in, replies and metric records go out; launcher/control.py does
the I/O. Each rank reports its compute time and GPU telemetry for a step and waits; when the last rank has
reported, the step's collectives are timed (the slowest rank gates everyone), every rank gets its answer
with the wall time at which the step ends, and the metrics file gets the step's record.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fakerun.render.metrics import checkpoint_record, eval_record, run_record, step_record
from fakerun.sim import checkpoint, compute, loss
from fakerun.sim.clock import JobClock
from fakerun.sim.collectives import bucket_allreduces, comm_seconds
from fakerun.sim.run import RunPlan, looped
from fakerun.sim.stack import stack_for
from fakerun.sim.step import compute_timing, step_numbers, step_time
from fakerun.sim.stopping import Patience
from fakerun.sim.telemetry import Board, job_board, sensor_noise, settle, target_temp

# One GPU sample as workers send it: [util %, memory util %, temp C, power W, SM MHz, memory used MiB, phase].
TELEMETRY_FIELDS = ("util", "mem_util", "temp", "power", "sm_clock", "mem_used_mib", "phase")
Message = Mapping[str, Any]
Reply = tuple[int, dict[str, Any]]


class ProtocolError(ValueError):
    """A malformed message from a worker (logged and dropped, never fatal to the launcher)."""


@dataclass
class RankState:
    """What the coordinator last heard from one rank."""

    pid: int = 0
    telemetry: list[Any] = field(default_factory=list)
    phase: str = "init"
    compute_ms: float = 0.0
    alive: bool = True
    # The thermal state carried from sample to sample: die temperature, where it heads, and when (simulated
    # seconds on the coordinator's clock, and the wall time the sample arrived, for fakerun-smi in between).
    die_temp: float = math.nan
    temp_target: float = math.nan
    sim_at: float = math.nan
    sampled: float = 0.0
    board: Board | None = None


@dataclass
class Output:
    """What one message caused: replies to ranks and records for the metrics file."""

    replies: list[Reply] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    saves: list[tuple[int, float]] = field(default_factory=list)  # (step, monotonic end of its save)


def _number(msg: Message, key: str) -> float:
    value = msg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProtocolError(f"field {key!r} is not a finite number: {value!r}")
    return float(value)


def _telemetry(msg: Message) -> list[Any] | None:
    tel = msg.get("tel")
    if tel is None:
        return None
    if not isinstance(tel, list) or len(tel) != len(TELEMETRY_FIELDS) or not isinstance(tel[-1], str):
        raise ProtocolError(f"bad telemetry {tel!r}")
    return tel


# The shortest real wait before a collective is declared timed out, whatever --fake-speed: a loaded machine
# can delay one rank's report by a second or two, which must not read as a hang.
WATCHDOG_FLOOR_S = 3.0


class Coordinator:
    """The barrier and aggregate of one attempt of the job (all ranks, whichever node they run on)."""

    def __init__(
        self,
        run: RunPlan,
        *,
        ranks: Iterable[int],
        speed: float,
        run_id: str,
        attempt: int,
        record_steps: bool = True,
        clock: JobClock | None = None,
    ) -> None:
        self.base = run
        # The job's clock, which printed timestamps follow: the metrics records' times too (else wall time).
        self.clock = clock
        self.loops = 0  # runs completed with --fake-loop
        self.run = run
        self.job = run.job
        self.speed = speed
        self.run_id = run_id
        self.attempt = attempt
        self.record_steps = record_steps  # a step record costs a step_numbers() per round: only for a file
        self.ranks = {r: RankState() for r in ranks}
        self.ready: set[int] = set()
        self.reports: dict[int, float] = {}
        self.step = run.first_step  # the step being gathered
        self.step_start = math.nan  # monotonic time the current step began
        self.sim_elapsed = 0.0  # simulated seconds of training so far (steps and pauses)
        self.started = False
        # Simulated seconds since the coordinator began, never reset by --fake-loop: the thermal clock.
        self.sim_clock = 0.0
        self.pause_starts: dict[str, float] = {}  # phase -> when the pauses after the last step begin
        # --fake-early-stopping: the coordinator decides for every rank, so that all of them stop together.
        self.patience = Patience(run.patience) if run.patience else None
        self.started_at: float | None = None  # rank 0's start on the job's clock (its ready message says)
        # The NCCL watchdog's view of the step's collective: when its first rank entered it (monotonic), and
        # the ranks stuck inside it (--fake-fail nccl-timeout). Past the timeout, the waiting ranks abort.
        self.round_started: float | None = None
        self.stalled: set[int] = set()
        self.aborted = False  # the attempt's ranks were told to abort (once is enough)

    # -- messages -------------------------------------------------------------------------------------------

    def on_message(self, rank: int, msg: Message, now: float, wall: float) -> Output:
        """Handles one message of `rank`; `now` is time.monotonic(), `wall` time.time()."""
        if rank not in self.ranks:
            raise ProtocolError(f"message from unknown rank {rank}")
        kind = msg.get("k")
        state = self.ranks[rank]
        tel = _telemetry(msg)
        if tel is not None:
            self._sample(rank, state, tel, kind, wall)
        if kind == "ready":
            state.pid = int(_number(msg, "pid"))
            if rank == 0 and "t0" in msg:
                self.started_at = _number(msg, "t0")
            return self._on_ready(rank, now, wall)
        if kind == "step":
            step = int(_number(msg, "s"))
            if step != self.step:
                raise ProtocolError(f"rank {rank} reported step {step} while step {self.step} is gathered")
            seconds = _number(msg, "c")
            state.compute_ms = seconds * 1000.0
            return self._on_step(rank, seconds, now, wall)
        if kind == "phase":
            return Output()
        if kind == "stall":
            # Inside the step's collective, which will never complete for it: the watchdog decides.
            if int(_number(msg, "s")) == self.step:
                self.stalled.add(rank)
                if self.round_started is None:
                    self.round_started = now
            return Output()
        raise ProtocolError(f"unknown message kind {kind!r}")

    # -- failures -------------------------------------------------------------------------------------------

    def watchdog_deadline(self) -> float | None:
        """When the ranks waiting in the current step's collective time out (monotonic), if they wait."""
        if self.round_started is None or self.aborted:
            return None
        timeout = self.run.collective_timeout_s(self.step)
        return self.round_started + max(timeout / self.speed, WATCHDOG_FLOOR_S)

    def on_watchdog(self, now: float, wall: float) -> Output:
        """The collective timed out: every rank waiting in it aborts as its NCCL watchdog makes it."""
        due = self.watchdog_deadline()
        if due is None or now < due:
            return Output()
        waiting = sorted(set(self.reports) | self.stalled)
        missing = sorted(set(self.ranks) - set(self.reports) - self.stalled)
        culprit = missing[0] if missing else (min(self.stalled) if self.stalled else None)
        self.aborted = True
        reply: dict[str, Any] = {
            "k": "abort",
            "why": "timeout",
            "s": self.step,
            "culprit": culprit,
            "node": None if culprit is None else culprit // self.job.nproc_per_node,
            "reason": f"step {self.step}'s collective timed out",
        }
        out = Output(replies=[(r, reply) for r in waiting])
        out.records.append(self._failure_record("nccl-timeout" if self.stalled else "hang", culprit, wall))
        return out

    def on_death(self, rank: int, wall: float) -> Output:
        """`rank`'s process ended mid-run: the ranks of other nodes, whose network connections to it close,
        abort with NCCL's remote error (its own node's ranks wait in NVLink transfers for the agent)."""
        if self.aborted or not self.started:
            return Output()
        self.aborted = True
        node = rank // self.job.nproc_per_node
        planned = self.run.failure_for(self.step, rank, self.attempt)
        # A NIC that stayed down: the other side's sends to that node ran out of IB retries as well.
        why = "ib" if planned is not None and planned.kind == "nic-flap" else "remote"
        reply = {"k": "abort", "why": why, "node": node, "reason": f"rank {rank} exited"}
        others = [
            r for r in sorted(self.ranks) if r // self.job.nproc_per_node != node and self.ranks[r].alive
        ]
        out = Output(replies=[(r, reply) for r in others])
        out.records.append(self._failure_record(planned.kind if planned else "exit", rank, wall))
        return out

    def on_lost(self, node: int | None, wall: float) -> Output:
        """Node 0 of a multi-node job: the job was lost on `node` (a dead rank there, or its agent gone): the
        metrics file records it, with the planned failure's kind when one struck there."""
        if self.aborted:
            return Output()
        self.aborted = True
        npn = self.job.nproc_per_node
        ranks = range(node * npn, (node + 1) * npn) if node is not None else ()
        planned = next(
            (f for r in ranks if (f := self.run.failure_for(self.step, r, self.attempt)) is not None), None
        )
        rank = planned.rank if planned is not None else (ranks[0] if ranks else None)
        return Output(records=[self._failure_record(planned.kind if planned else "node-lost", rank, wall)])

    def _failure_record(self, kind: str, rank: int | None, wall: float) -> dict[str, Any]:
        """`{"event": "failure"}` for the metrics file: what struck, where, during which step."""
        at = self.clock.at(time.monotonic()) if self.clock is not None else wall
        return {
            "event": "failure",
            "kind": kind,
            "rank": rank,
            "step": self.step,
            "attempt": self.attempt,
            "time": round(at, 3),
        }

    def observe(self, rank: int, msg: Message, wall: float = 0.0) -> None:
        """Records what a rank reports without taking part in the barrier (nodes other than node 0)."""
        state = self.ranks.get(rank)
        if state is None:
            return
        tel = _telemetry(msg)
        if msg.get("k") == "step":
            step = int(_number(msg, "s"))
            if step >= self.step:
                # This node sees no step times: its thermal clock runs on the job's typical step.
                self.sim_clock += (step - self.step + 1) * compute.expected_step_time(self.job)
        if tel is not None:
            self._sample(rank, state, tel, msg.get("k"), wall)
        if msg.get("k") == "ready":
            state.pid = int(_number(msg, "pid"))
        elif msg.get("k") == "step":
            state.compute_ms = _number(msg, "c") * 1000.0
            self.step = max(self.step, int(_number(msg, "s")) + 1)

    def _sample(self, rank: int, state: RankState, tel: list[Any], kind: object, wall: float) -> None:
        """Keeps a rank's sample, its temperature lagging behind its power (first-order, THERMAL_TAU_S)."""
        phase = str(tel[-1])
        if kind == "ready":
            phase = "init"  # the ready sample: weights loaded, waiting for the others
        # When the sample was taken on the simulated clock: a step's start, or the start of its pause.
        at = self.pause_starts.get(phase, self.sim_clock) if kind == "phase" else self.sim_clock
        step = self.step if kind != "phase" else max(self.step - 1, self.run.first_step)
        if state.board is None:
            state.board = job_board(self.job, rank)
        target = target_temp(self.job, state.board, rank, step, phase, float(tel[3]))
        if math.isnan(state.die_temp):
            # Before its first sample the GPU idled; the start-up took long enough to settle at the target.
            state.die_temp = target
        else:
            state.die_temp = settle(state.die_temp, state.temp_target, at - state.sim_at)
        state.temp_target, state.sim_at, state.sampled = target, at, wall
        state.telemetry = [
            *tel[:2],
            round(state.die_temp + sensor_noise(self.job, rank, step)),
            *tel[3:-1],
            phase,
        ]
        state.phase = phase

    def on_gone(self, rank: int) -> None:
        """A rank's channel closed: its GPU shows as gone; the barrier never completes without it."""
        state = self.ranks.get(rank)
        if state is not None:
            state.alive = False
            state.phase = "dead"

    def _on_ready(self, rank: int, now: float, wall: float) -> Output:
        self.ready.add(rank)
        if len(self.ready) < len(self.ranks) or self.started:
            return Output()
        # NCCL init is collective: training starts for everyone when the last rank is ready.
        self.started = True
        self.step_start = now
        go = {"k": "go", "t0": now, "next": compute_timing(self.job, self.run.first_step).wire()}
        out = Output(replies=[(r, go) for r in sorted(self.ranks)])
        out.records.append(
            run_record(
                self.job,
                run_id=self.run_id,
                attempt=self.attempt,
                first_step=self.run.first_step,
                last_step=self.run.last_step,
            )
        )
        if self.run.steps == 0:
            self._next_run()  # a run of no step (nanoGPT's eval_only) ends here: no step round will come
        return out

    def _on_step(self, rank: int, seconds: float, now: float, wall: float) -> Output:
        if not self.reports and self.round_started is None:
            self.round_started = now
        self.reports[rank] = seconds
        if len(self.reports) < len(self.ranks):
            return Output()
        self.round_started = None
        step = self.step
        job = self.job
        computes = [self.reports[r] for r in sorted(self.reports)]
        self.reports.clear()
        comm = comm_seconds(job, step)
        sim_step = step_time(job, step, computes, comm)
        wall_step = sim_step / self.speed
        if step == self.run.first_step:
            # Ranks finish their start-up (data, model, checkpoint) at their own times: the first step starts
            # when the last one reports. Its warm-up (autotuning, lazy NCCL set-up) costs wall time outside
            # the step's figures; the workers add the same to their compute.
            self.step_start = now
            wall_step += compute.first_step_overhead_s(job) / self.speed
        release = max(now, self.step_start + wall_step)
        self.sim_elapsed += sim_step
        self.sim_clock += wall_step * self.speed
        stop = step >= self.run.last_step or (
            self.run.max_time_s is not None and self.sim_elapsed >= self.run.max_time_s
        )
        if self.patience is not None and self.run.evaluates_after(step):
            # The validation after this step is known now (pure physics): when it uses up the patience, the
            # answer stops every rank, and the run's last pauses (that validation, the save) follow.
            stop = self.patience.observe(step, loss.eval_loss(job, step)) or stop
        # Megatron's exits end the run after any step, the last one included (checked after its evaluation
        # and save): --exit-interval's step is the run's last, --exit-duration-in-mins' is known only now.
        exits = stop and self.run.exits_at(step)
        limit = self.run.exit_after_s
        if limit is not None:
            # Megatron's time since the process started, as rank 0 prints it; without the job's clock, the
            # simulated training time (a lower bound: the exit prints a time past the limit either way).
            if self.clock is not None and self.started_at is not None:
                spent = self.clock.at(release) - self.started_at
            else:
                spent = self.sim_elapsed
            if spent + self.run.periodic_pause_seconds(step) > limit:
                stop = exits = True
        pauses = self.run.pauses_after(step, final=stop, exits=exits)
        # Megatron-core's rerun of a NaN step: every rank saves after the step before (the step never ends)
        # and exits 16 together, which ends the run (the launcher then takes the exits as the script's own).
        rerun = self.run.nan_rerun(step)
        if rerun is not None:
            stop, pauses = True, self.run.rerun_pauses(step)
        saved_step = step - 1 if rerun is not None else step
        buckets = bucket_allreduces(job, step)
        allreduce_ms = 1000.0 * sum(b.seconds for b in buckets)
        reply: dict[str, Any] = {
            "k": "step",
            "s": step,
            "rel": release,
            "comm": comm,
            "ar_ms": allreduce_ms,
            "stop": stop,
            "exit": exits,
        }
        if not stop:
            # The next step's timing, computed once here rather than by each rank (see ComputeTiming).
            reply["next"] = compute_timing(job, step + 1).wire()
        # One answer object shared by every rank (the caller encodes it once); rank 0 may get the grid too.
        out = Output(replies=[(r, reply) for r in sorted(self.ranks)])
        if step % self.run.grid_interval == 0 or step == self.run.first_step or stop:
            first, _ = out.replies[0]
            out.replies[0] = (first, {**reply, "grid": self.grid_rows()})
        if self.clock is not None:
            release_wall, per_second = self.clock.at(release), 1.0  # the job clock counts simulated seconds
        else:
            release_wall, per_second = wall + (release - now), 1.0 / self.speed
        if rerun is not None:
            out.records.append(self._failure_record("nan", None, wall))
        elif self.record_steps:
            numbers = step_numbers(job, 0, step)
            mem_gib = max((s.telemetry[5] for s in self.ranks.values() if s.telemetry), default=0) / 1024.0
            out.records.append(
                step_record(numbers, allreduce_ms=allreduce_ms, mem_gib=mem_gib, time=release_wall)
            )
        t, ends = release_wall, release
        for phase, seconds_ in pauses:
            t += seconds_ * per_second
            ends += seconds_ / self.speed
            if phase == "checkpoint":
                out.saves.append((saved_step, ends))
            if phase == "eval":
                out.records.append(eval_record(job, step, seconds=seconds_, time=t))
            elif phase == "checkpoint":
                out.records.append(
                    checkpoint_record(
                        saved_step,
                        path=checkpoint.checkpoint_dir(saved_step),
                        nbytes=checkpoint.checkpoint_bytes(job.model),
                        seconds=seconds_,
                        time=t,
                    )
                )
        pause = sum(s for _, s in pauses)
        self.sim_elapsed += pause
        # The ranks report each pause when it begins; the last report of a run (idle) comes after them all.
        self.pause_starts = {}
        for phase, seconds_ in pauses:
            self.pause_starts[phase] = self.sim_clock
            self.sim_clock += seconds_
        self.pause_starts["idle"] = self.sim_clock
        self.step_start = release + pause / self.speed
        self.step = step + 1
        if stop:
            self._next_run()
        return out

    def _next_run(self) -> None:
        """After the last step: the barrier waits for the next run of a --fake-loop job."""
        self.loops += 1
        self.run = looped(self.base, self.loops)
        self.job = self.run.job
        self.step = self.run.first_step
        self.sim_elapsed = 0.0
        self.started = False
        self.ready.clear()
        self.patience = Patience(self.run.patience) if self.run.patience else None
        self.started_at = None
        self.round_started = None

    # -- aggregate ------------------------------------------------------------------------------------------

    def grid_rows(self) -> list[list[Any]]:
        """Every rank's latest sample, in rank order: telemetry fields then compute ms."""
        return [
            [*(s.telemetry or [0, 0, 0, 0, 0, 0, s.phase])[:-1], s.phase, round(s.compute_ms, 1)]
            for _, s in sorted(self.ranks.items())
        ]

    def state(
        self, hosts: Sequence[str], nproc_per_node: int, launcher_pid: int, wall: float
    ) -> dict[str, Any]:
        """The job state other tools read (fakerun-smi, fakerun-tail): identity, progress and every GPU."""
        job = self.job
        gpus = []
        for rank, s in sorted(self.ranks.items()):
            tel = s.telemetry or [0, 0, 0, 0, 0, 0, s.phase]
            gpus.append(
                {
                    "rank": rank,
                    "node": rank // nproc_per_node,
                    "local_rank": rank % nproc_per_node,
                    "host": hosts[rank // nproc_per_node] if hosts else "",
                    "pid": s.pid,
                    **dict(zip(TELEMETRY_FIELDS[:-1], tel[:-1], strict=True)),
                    "mem_total_mib": job.gpu.memory_mib,
                    "power_cap": job.gpu.tdp_w,
                    "phase": s.phase,
                    # fakerun-smi carries the temperature on between two samples (a long checkpoint).
                    "die_temp": round(s.die_temp, 2) if math.isfinite(s.die_temp) else None,
                    "temp_target": round(s.temp_target, 2) if math.isfinite(s.temp_target) else None,
                    "sampled": s.sampled,
                }
            )
        stack = stack_for(job.cluster)
        return {
            "version": 1,
            "run_id": self.run_id,
            "launcher_pid": launcher_pid,
            "attempt": self.attempt,
            "model": job.model.name,
            "gpu": job.gpu.name,
            "gpu_display_name": job.gpu.display_name,
            "bus_ids": list(job.cluster.bus_ids),  # the cluster's PCI layout, for fakerun-smi
            "cluster": job.cluster.name,  # with the host and index: which physical GPU (UUID, serial)
            "driver_version": stack.driver,  # nvidia-smi's header follows the job's driver
            "cuda_version": stack.driver_cuda,
            "speed": self.speed,  # simulated seconds per wall second: the thermal lag runs on simulated time
            "world_size": job.world_size,
            "nnodes": job.nnodes,
            "nproc_per_node": job.nproc_per_node,
            "step": self.step - 1,
            "last_step": self.run.last_step,
            "total_steps": job.total_steps,
            "updated": wall,
            "gpus": gpus,
        }
