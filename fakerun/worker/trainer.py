"""One rank of the simulated training job: start-up, the paced step loop with the coordinator, the end."""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from fakerun.presets import host_name
from fakerun.render import bar, nccl
from fakerun.render.grid import GridGpu, render_grid
from fakerun.render.lines import (
    hf_eval_dict,
    hf_log_dict,
    megatron_iteration,
    megatron_memory,
    megatron_validation,
    titan_step,
)
from fakerun.render.summary import summary_table
from fakerun.sim import checkpoint, compute, identity, loss, memory
from fakerun.sim.collectives import bucket_allreduces
from fakerun.sim.run import JobClock, RunPlan, looped, startup_times
from fakerun.sim.step import StepNumbers, step_numbers
from fakerun.sim.telemetry import Phase, telemetry
from fakerun.worker.channel import CoordinatorLink
from fakerun.worker.emit import BarWriter, c10_prefix, configure_logging, print_lines, set_clock
from fakerun.worker.emit import now as job_now

GIB = 1024**3


@dataclass(frozen=True)
class SimContext:
    """What every rank of the simulated job shares, decided once by the launcher before the fork."""

    run: RunPlan
    hosts: tuple[str, ...]  # one per node of the job
    speed: float
    log_format: str
    loop: bool
    bar_columns: int | None  # the terminal's width when rank 0's bar reaches a terminal, else None
    color: bool
    # Which trainer the script looks like (hints.Hints.style): its metric lines are printed in that
    # trainer's own format on the console; json/logfmt keep structured events for log pipelines.
    style: str = "generic"
    # The job's clock (simulated time with --fake-speed); None: the wall clock.
    clock: JobClock | None = None
    # The node this launcher really is: its ranks show their real pids (a user may act on them), the other
    # simulated nodes' ranks show the pids their own host would have given them (sim/identity.py).
    real_node: int = 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _log_time() -> str:
    """Now as Python's logging prints it: `2026-11-22 08:23:31,507`."""
    now = job_now()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"


def _barrier_warning(rank: int, local_rank: int) -> str:
    """torch's C++ warning (c10 format, nanosecond time, `[rankN]:` prefix) for a device-less barrier."""
    return (
        f"{c10_prefix(rank, 'W', 'ProcessGroupNCCL.cpp:4561')} [PG ID 0 PG GUID 0 Rank {rank}]  using GPU "
        f"{local_rank} to perform barrier as devices used by this process are currently unknown. This can "
        "potentially cause a hang if this rank to GPU mapping is incorrect. Specify device_ids in barrier() "
        "to force use of a particular device, or call init_process_group() with a device_id."
    )


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB"


def _count(n: float) -> str:
    """1.24B, 62.9M: how trainers print parameter and token counts."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def _with_warmup(n: StepNumbers, overhead_s: float) -> StepNumbers:
    """A step's figures as measured over its wall time plus `overhead_s` of warm-up (the first step)."""
    f = n.step_time_s / (n.step_time_s + overhead_s)
    return dataclasses.replace(
        n,
        step_time_s=n.step_time_s + overhead_s,
        mfu=n.mfu * f,
        tflops_per_gpu=n.tflops_per_gpu * f,
        tokens_per_s=n.tokens_per_s * f,
        tokens_per_s_per_gpu=n.tokens_per_s_per_gpu * f,
        rank_tokens_per_s=n.rank_tokens_per_s * f,
    )


class RankTrainer:
    """Runs one rank: every printed figure comes from sim/, every wait from the coordinator or the pace."""

    def __init__(self, ctx: SimContext, env: dict[str, str], link: CoordinatorLink) -> None:
        self.ctx = ctx
        self.env = env
        self.link = link
        self.rank = int(env["RANK"])
        self.local_rank = int(env["LOCAL_RANK"])
        self.log = configure_logging(ctx.log_format, self.rank, color=ctx.color)
        self.bar = BarWriter()
        self.run = ctx.run
        self.style = ctx.style if ctx.log_format == "console" else "generic"
        self.born = time.monotonic()  # the fork, give or take the few ms the launcher took to get here
        # The simulated moment this rank last woke for (a deadline, or the go) and when it really woke: lines
        # are stamped from the former, so a late wake-up is not multiplied by --fake-speed into the log.
        self._mark = self._woke = self.born
        self._last_stamp = 0.0
        if ctx.clock is not None:
            set_clock(self._job_time)

    def _job_time(self) -> float:
        """The job's time for a line printed now: the simulated moment reached plus real time since then."""
        assert self.ctx.clock is not None
        t = self.ctx.clock.at(self._mark) + (time.monotonic() - self._woke)
        self._last_stamp = max(self._last_stamp, t)
        return self._last_stamp

    def _woke_at(self, mark: float) -> None:
        self._mark = mark
        self._woke = time.monotonic()

    # -- helpers --------------------------------------------------------------------------------------------

    def _pace(self, sim_seconds: float) -> None:
        self._sleep_until(time.monotonic() + max(0.0, sim_seconds / self.ctx.speed))

    def _pace_from(self, start: float, sim_seconds: float) -> float:
        """Sleeps until `sim_seconds` of simulated time after `start` (monotonic); returns that deadline."""
        deadline = start + max(0.0, sim_seconds) / self.ctx.speed
        self._sleep_until(deadline)
        return deadline

    def _identity(self) -> tuple[int, int]:
        """The pid this rank shows and the thread id NCCL's init thread shows, as its host would draw them."""
        job = self.run.job
        npn = job.nproc_per_node
        attempt = int(self.env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
        if self.node == self.ctx.real_node:
            pid = os.getpid()
            # Forked one after another by this launcher: the node's last worker is about this far above.
            last = pid + (npn - 1 - self.local_rank)
        else:
            pids = identity.worker_pids(job.seed, self.node, npn, attempt, job.nnodes)
            pid, last = pids[self.local_rank], max(pids)
        tid = identity.nccl_tids(job.seed, self.node, last, npn, attempt)[self.local_rank]
        return pid, tid

    def _sleep_until(self, deadline: float) -> None:
        # Sleeping on the control socket: an abort from the launcher (a lost node) ends the wait at once.
        self.link.wait_until(deadline)
        self._woke_at(deadline)

    def _telemetry(self, step: int, phase: Phase) -> list[Any]:
        t = telemetry(self.run.job, self.rank, step, phase)
        return [t.util_pct, t.mem_util_pct, t.temp_c, t.power_w, t.sm_clock_mhz, t.mem_used_mib, phase]

    def _phase(self, step: int, phase: Phase) -> None:
        self.link.send({"k": "phase", "tel": self._telemetry(step, phase)})

    @property
    def node(self) -> int:
        """This rank's node in the job."""
        return self.rank // self.run.job.nproc_per_node

    # -- the job --------------------------------------------------------------------------------------------

    def main(self) -> int:
        """Runs job after job with --fake-loop, else one; returns the exit code."""
        index = 0
        while True:
            self.run_job(first=index == 0)
            if not self.ctx.loop:
                return 0
            index += 1
            self.run = looped(self.ctx.run, index)

    def run_job(self, *, first: bool) -> None:
        """Start-up, training until the coordinator says stop, then evaluation, save, export and summary."""
        self.startup(first=first)
        last, released, wall_start = self.train()
        self.finish(last, released, wall_start)

    def startup(self, *, first: bool) -> None:
        """Everything before step one: each phase takes this rank's own drawn time, and the rank prints when
        it gets there; init_process_group's store barrier is the one place every rank waits for the others."""
        job = self.run.job
        rank0 = self.rank == 0
        resume = job.start_step > 0
        times = startup_times(job, self.rank, resume=resume)
        log = self.log
        pid, tid = self._identity()
        if first:
            # Nothing is printed before the interpreter has imported torch and the training framework.
            t = self._pace_from(self.born, times.import_s)
            log.info(
                "worker started",
                host=self.ctx.hosts[self.node],
                local_rank=self.local_rank,
                world_size=job.world_size,
                pid=pid,
            )
            log.info(
                "cuda device",
                device=f"cuda:{self.local_rank}",
                name=job.gpu.display_name,
                memory_gib=round(job.gpu.memory_mib / 1024, 1),
                bus_id=nccl.pci_bus_id(self.local_rank, job.cluster.bus_ids),
            )
            self._pace_from(t, times.cuda_s)
            log.info("initializing process group", backend="nccl", world_size=job.world_size)
        # The store barrier of init_process_group: every rank leaves it when the slowest has arrived.
        self.link.send({"k": "ready", "pid": os.getpid(), "tel": self._telemetry(job.start_step, "idle")})
        self.link.receive()
        t = time.monotonic()
        self._woke_at(t)
        if first:
            # What torch's ProcessGroupNCCL prints on each rank of a job calling barrier() without device_ids;
            # that barrier is the first collective, which sets NCCL's communicator up.
            print(_barrier_warning(self.rank, self.local_rank), file=sys.stderr, flush=True)
            t = self._pace_from(t, times.nccl_s)
            if self.env.get("NCCL_DEBUG", "").upper() in ("INFO", "TRACE"):
                topo = nccl.nccl_topo_for(job.cluster, job.nnodes, job.nproc_per_node, self.ctx.hosts)
                print_lines(nccl.nccl_init_lines(topo, self.rank, pid=pid, tid=tid, seed=job.seed))
            log.info(
                "process group initialized",
                tp_rank=job.coords(self.rank).tp_rank,
                dp_rank=job.coords(self.rank).dp_rank,
                pp_rank=job.coords(self.rank).pp_rank,
            )
        if rank0:
            m = job.model
            log.info(
                "model config",
                model=m.hf_name or m.display_name,
                params=_count(m.params),
                layers=m.layers,
                hidden=m.hidden,
                heads=m.heads,
                kv_heads=m.kv_heads,
                vocab=m.vocab,
                seq_len=job.seq_len,
            )
            log.info(
                "parallelism",
                tp=job.tp,
                pp=job.pp,
                dp=job.dp,
                sharding=job.sharding,
                micro_batch=job.micro_batch,
                grad_accum=job.grad_accum,
                global_batch=job.global_batch,
                tokens_per_step=job.tokens_per_step,
            )
            t = self._pace_from(t, times.tokenizer_s)
            log.info("tokenizer loaded", vocab_size=m.vocab)
            t = self._dataset_bar(t, times.dataset_s)
            dataset_tokens = job.total_steps * job.tokens_per_step // self.run.epochs
            log.info(
                "dataset ready",
                tokens=_count(dataset_tokens),
                samples=dataset_tokens // job.seq_len,
                epochs=self.run.epochs,
                steps_per_epoch=self.run.steps_per_epoch,
            )
        else:
            t = self._pace_from(t, times.tokenizer_s + times.dataset_s)
        t = self._pace_from(t, times.model_init_s)
        pp_rank = job.coords(self.rank).pp_rank
        stage, _ = memory.stage_params(job, pp_rank)
        log.info(
            "model initialized",
            dtype="bfloat16",
            params_on_rank=_count(stage / job.tp),
            layers_on_rank=job.stage_layers(pp_rank),
        )
        if resume:
            path = checkpoint.checkpoint_dir(job.start_step)
            if rank0:
                log.info("loading checkpoint", path=path, size=_gb(checkpoint.checkpoint_bytes(job.model)))
            t = self._pace_from(t, times.load_s)
            if rank0:
                log.info(
                    "resumed from checkpoint",
                    path=path,
                    step=job.start_step,
                    tokens=_count(job.start_step * job.tokens_per_step),
                    loss=round(loss.train_loss(job, job.start_step), 4),
                    lr=f"{step_numbers(job, 0, job.start_step).lr:.3e}",
                    seconds=round(times.load_s, 1),
                )
        if rank0:
            log.info(
                "starting training",
                first_step=self.run.first_step,
                last_step=self.run.last_step,
                total_steps=job.total_steps,
                warmup_steps=job.warmup_steps,
                lr=job.lr,
                schedule=job.lr_schedule,
            )
        # The first step's collectives make everyone wait for the slowest rank (the coordinator's barrier).

    def _dataset_bar(self, start: float, seconds: float) -> float:
        """`Loading dataset shards: 100%|...| 64/64`: the bar data loaders draw while mapping shards."""
        shards = 16 if self.run.job.world_size <= 64 else 64
        sim_elapsed = 0.0
        for i in range(shards + 1):
            text = bar.meter(
                i, shards, sim_elapsed, prefix="Loading dataset shards", ncols=self.ctx.bar_columns
            )
            if i < shards:
                self.bar.draw(text)
                sim_elapsed = seconds * (i + 1) / shards
                self._sleep_until(start + sim_elapsed / self.ctx.speed)
            else:
                self.bar.close(text)
        return start + seconds / self.ctx.speed

    def train(self) -> tuple[int, float, float]:
        """The step loop; returns the last step, when it ended (monotonic) and when training began (wall)."""
        job = self.run.job
        run = self.run
        rank0 = self.rank == 0
        log = self.log
        wall_start = time.time()
        step_times: list[float] = []
        sim_elapsed = 0.0
        prev: StepNumbers | None = None
        step = run.first_step
        while True:
            numbers = step_numbers(job, self.rank, step)
            overhead = compute.first_step_overhead_s(job) if step == run.first_step else 0.0
            # The rank reports its compute time at once and waits for the step's end, which the coordinator
            # sets from the slowest rank's compute and the collectives: one wake-up per step, not two, on 64+
            # processes (sleeping through its own compute first would show nothing more).
            reply = self.link.request(
                {"k": "step", "s": step, "c": numbers.compute_s, "tel": self._telemetry(step, "train")}
            )
            self._sleep_until(float(reply["rel"]))
            stop = bool(reply["stop"])
            step_times.append(numbers.step_time_s + overhead)
            sim_elapsed += numbers.step_time_s + overhead
            if overhead:
                # Iteration 1 took its warm-up too: its printed time and throughput say so.
                numbers = _with_warmup(numbers, overhead)
            if step == run.first_step:
                self._memory_report(step)
            if rank0:
                self._rank0_step(numbers, prev, reply, step_times, sim_elapsed)
            if step % run.log_interval == 0 or step == run.first_step:
                self._metrics_line(numbers, step_times)
                if rank0:
                    self._sync_line(step, reply)
            released = float(reply["rel"])
            if stop:
                if rank0:
                    self.bar.close()
                    log.info("stopping", step=step, reason=self._stop_reason(step))
                return step, released, wall_start
            self._pauses(step, released, final=False)
            prev = numbers
            step += 1

    def _stop_reason(self, step: int) -> str:
        if step >= self.run.job.total_steps:
            return "reached total steps"
        if step >= self.run.last_step:
            return "reached max steps"
        return "reached max time"

    def _memory_report(self, step: int) -> None:
        """Every rank's memory after its first step (Megatron's `[Rank N] (after 1 iterations) memory`)."""
        m = memory.memory_breakdown(self.run.job, self.rank, step)
        mib = 1024.0**2
        if self.style == "megatron":
            print_lines(
                [megatron_memory(self.rank, 1, m.allocated / mib, m.max_allocated / mib, m.reserved / mib)]
            )
            return
        self.log.info(
            "memory after first step",
            allocated_mib=round(m.allocated / mib, 1),
            max_allocated_mib=round(m.max_allocated / mib, 1),
            reserved_mib=round(m.reserved / mib, 1),
            max_reserved_mib=round(m.reserved / mib, 1),
        )

    def _rank0_step(
        self,
        n: StepNumbers,
        prev: StepNumbers | None,
        reply: dict[str, Any],
        step_times: list[float],
        sim_elapsed: float,
    ) -> None:
        """Rank 0's view of a finished step: the bar, metric lines, AllReduce timings, grid, warnings."""
        job = self.run.job
        run = self.run
        log = self.log
        step = n.step
        ncols = self.ctx.bar_columns
        postfix = bar.train_postfix(n.loss, n.lr, n.tokens_per_s, width=ncols)
        self.bar.draw(
            bar.meter(
                step,
                job.total_steps,
                sim_elapsed,
                prefix=f"Epoch {run.epoch_of(step)}/{run.epochs}",
                postfix=postfix,
                rate=bar.ema_rate(step_times[-50:]),
                ncols=ncols,
                initial=job.start_step,
            )
        )
        if n.skipped:
            log.warning("nan loss detected, skipping optimizer step", step=step, grad_norm="nan")
        if n.spike and (prev is None or not prev.spike):
            log.warning("loss spike", step=step, loss=round(n.loss, 4), grad_norm=round(n.grad_norm, 3))
        # A lone GPU that slows down is not a straggler: there is no other rank to wait for it.
        slow = n.straggler_rank if job.world_size > 1 else None
        if slow is not None and (prev is None or prev.straggler_rank != slow):
            log.warning(
                "straggler detected",
                step=step,
                slow_rank=slow,
                host=self.ctx.hosts[slow // job.nproc_per_node],
                step_time_s=round(n.step_time_s, 3),
                mfu=f"{100 * n.mfu:.1f}%",
            )
        grid = reply.get("grid")
        if isinstance(grid, list):
            self._print_grid(step, grid, n)

    def _metrics_line(self, n: StepNumbers, step_times: list[float]) -> None:
        """The periodic metric line, by the rank that prints it in the trainer the script looks like."""
        job = self.run.job
        style = self.style
        step = n.step
        interval = step_times[-self.run.log_interval :]
        if style == "megatron":
            # Megatron prints on the last rank (the last pipeline stage holds the loss), interval averages.
            if self.rank == job.world_size - 1:
                print_lines(
                    [
                        megatron_iteration(
                            timestamp=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job_now())),
                            step=step,
                            total=job.total_steps,
                            samples=n.samples,
                            step_ms=1000.0 * sum(interval) / len(interval),
                            tflops=n.tflops_per_gpu,
                            lr=n.lr,
                            global_batch=job.global_batch,
                            loss=n.loss,
                            grad_norm=n.grad_norm,
                            skipped=int(n.skipped),
                            nan_iters=int(n.skipped),
                            aux_loss=n.moe_aux_loss,
                        )
                    ]
                )
            return
        if style == "hf":
            if self.rank == 0:
                epoch = step / self.run.steps_per_epoch
                print_lines([hf_log_dict(n.loss, n.grad_norm, n.lr, epoch)])
            return
        if style == "titan":
            # torchtitan logs on every rank: same loss, throughput as each rank measured it.
            print_lines(
                [
                    titan_step(
                        timestamp=_log_time(),
                        step=step,
                        loss=n.loss,
                        grad_norm=n.grad_norm,
                        memory_gib=n.mem_gib,
                        memory_pct=n.mem_pct,
                        tps=n.rank_tokens_per_s,
                        tflops=n.tflops_per_gpu * n.rank_tokens_per_s / n.tokens_per_s_per_gpu,
                        mfu_pct=100.0 * n.mfu * n.rank_tokens_per_s / n.tokens_per_s_per_gpu,
                    )
                ]
            )
            return
        if self.rank == 0:
            self.log.info(
                "train",
                step=step,
                loss=round(n.loss, 4) if not math.isnan(n.loss) else "nan",
                ppl=round(n.ppl, 2) if not math.isnan(n.ppl) else "nan",
                lr=f"{n.lr:.4e}",
                grad_norm=round(n.grad_norm, 4),
                tokens_per_s=round(n.tokens_per_s),
                tflops=round(n.tflops_per_gpu, 1),
                mfu=f"{100 * n.mfu:.2f}%",
                step_time_s=round(n.step_time_s, 3),
                memory_gib=round(n.mem_gib, 2),
            )

    def _sync_line(self, step: int, reply: dict[str, Any]) -> None:
        """Rank 0's account of the step's gradient collectives, timed by the coordinator's model."""
        log = self.log
        buckets = bucket_allreduces(self.run.job, step)
        if buckets:
            total = sum(b.seconds for b in buckets)
            size = sum(b.nbytes for b in buckets)
            log.debug(
                "gradient sync",
                op=buckets[0].op,
                buckets=len(buckets),
                size_mb=round(size / 1e6, 1),
                ranks=buckets[0].ranks,
                algo=buckets[0].algo,
                time_ms=round(float(reply["ar_ms"]), 2),
                busbw_gbs=round(sum(b.busbw * b.seconds for b in buckets) / total / 1e9, 1) if total else 0.0,
            )

    def _print_grid(self, step: int, rows: list[list[Any]], n: StepNumbers) -> None:
        job = self.run.job
        npn = job.nproc_per_node
        gpus = [
            GridGpu(
                rank=r,
                node=r // npn,
                local_rank=r % npn,
                host=self.ctx.hosts[r // npn]
                if r // npn < len(self.ctx.hosts)
                else host_name(job.cluster, r // npn),
                util_pct=int(row[0]),
                temp_c=int(row[2]),
                power_w=int(row[3]),
                power_cap_w=job.gpu.tdp_w,
                mem_used_mib=int(row[5]),
                mem_total_mib=job.gpu.memory_mib,
                phase=str(row[6]),
                step_ms=float(row[7]),
            )
            for r, row in enumerate(rows)
        ]
        stragglers = frozenset({n.straggler_rank}) if n.straggler_rank is not None else frozenset()
        width = self.ctx.bar_columns or 100
        print_lines(
            render_grid(gpus, step=step, width=min(width, 100), color=self.ctx.color, stragglers=stragglers)
        )

    def _pauses(self, step: int, start: float, *, final: bool) -> float:
        """Runs the evaluation and checkpoint after `step` from `start`; returns when they end (monotonic)."""
        t = start
        for phase, seconds in self.run.pauses_after(step, final=final):
            # Absolute deadlines: every rank leaves a collective save at the same moment, as in a real job.
            t += seconds / self.ctx.speed
            self._pause(step, phase, seconds, until=t)
        return t

    def _pause(self, step: int, phase: str, seconds: float, *, until: float) -> None:
        """An evaluation or a checkpoint after `step`: lines before and after, GPUs in that phase."""
        job = self.run.job
        rank0 = self.rank == 0
        if phase == "eval":
            self._phase(step, "eval")
            if rank0:
                self.log.info("evaluating", step=step, iters=self.run.eval_iters)
            self._sleep_until(until)
            value = loss.eval_loss(job, step)
            if self.style == "megatron" and self.rank == job.world_size - 1:
                print_lines(megatron_validation(step, value, loss.perplexity(value)))
            elif self.style == "hf" and rank0:
                samples = self.run.eval_iters * job.global_batch
                epoch = step / self.run.steps_per_epoch
                print_lines([hf_eval_dict(value, seconds, samples, self.run.eval_iters, epoch)])
            elif self.style not in ("megatron", "hf") and rank0:
                self.log.info(
                    "validation",
                    step=step,
                    val_loss=round(value, 4),
                    val_ppl=round(loss.perplexity(value), 2),
                    seconds=round(seconds, 1),
                )
        else:
            self._phase(step, "checkpoint")
            path = checkpoint.checkpoint_dir(step)
            nbytes = checkpoint.checkpoint_bytes(job.model)
            if rank0:
                self.log.info("saving checkpoint", step=step, path=path, format="torch_dist")
            self._sleep_until(until)
            if rank0:
                self.log.info(
                    "checkpoint saved",
                    step=step,
                    path=path,
                    size=_gb(nbytes),
                    seconds=round(seconds, 1),
                    bandwidth_gbs=round(nbytes / seconds / 1e9, 2),
                )

    def finish(self, last: int, released: float, wall_start: float) -> None:
        """After the last step: final evaluation and save, then rank 0 exports and prints the summary."""
        self._pauses(last, released, final=True)
        self._phase(last, "idle")
        if self.rank == 0:
            self._export()
            self._summary(last, wall_start)
        self.log.info("training finished", step=last)

    def _export(self) -> None:
        job = self.run.job
        out_dir = f"hf_export/{job.model.name}"
        self.log.info("exporting model", path=out_dir, format="safetensors")
        for f in checkpoint.export_files(job.model):
            self.log.info(
                "wrote",
                file=f"{out_dir}/{f.name}",
                size=_gb(f.nbytes) if f.nbytes >= 1e8 else f"{f.nbytes:,} B",
            )

    def _summary(self, last: int, wall_start: float) -> None:
        job = self.run.job
        run = self.run
        steps = [step_numbers(job, 0, s) for s in range(run.first_step, last + 1)]
        final = steps[-1]
        val = loss.eval_loss(job, last)
        med_time = statistics.median(n.step_time_s for n in steps)
        med_tps = statistics.median(n.tokens_per_s for n in steps)
        med_mfu = statistics.median(n.mfu for n in steps)
        saves = sum(1 for s in range(run.first_step, last) if run.saves_after(s)) + 1
        wall = time.time() - wall_start
        rows = [
            ("model", f"{job.model.display_name} ({_count(job.model.params)} parameters)"),
            (
                "GPUs",
                f"{job.world_size} x {job.gpu.display_name} ({job.nnodes} nodes x {job.nproc_per_node})",
            ),
            ("parallelism", f"TP {job.tp} / PP {job.pp} / DP {job.dp}, {job.sharding}"),
            ("steps", f"{run.first_step:,}-{last:,} of {job.total_steps:,}"),
            ("tokens", f"{_count(final.tokens)} ({job.tokens_per_step:,} per step)"),
            ("final loss", f"{final.loss:.4f} (validation {val:.4f}, ppl {loss.perplexity(val):.2f})"),
            ("step time", f"{med_time:.3f} s (median)"),
            ("throughput", f"{med_tps:,.0f} tokens/s ({med_tps / job.world_size:,.0f} per GPU)"),
            ("MFU", f"{100 * med_mfu:.1f}% ({med_mfu * job.gpu.peak_bf16_tflops:.0f} TFLOP/s per GPU)"),
            ("checkpoints", f"{saves} (last {checkpoint.checkpoint_dir(last)})"),
            ("wall time", f"{wall:.1f} s at speed {self.ctx.speed:g}"),
        ]
        print_lines(summary_table("Training summary", rows, width=min(self.ctx.bar_columns or 100, 100)))


def run_rank(ctx: SimContext, env: dict[str, str], control_fd: int) -> int:
    """Entry of a simulated rank."""
    return RankTrainer(ctx, env, CoordinatorLink(control_fd)).main()
