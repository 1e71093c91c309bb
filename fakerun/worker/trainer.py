"""One rank of the simulated training job: the phase loop (start-up, paced steps with the coordinator, the
end), which emits typed events to the rank's printer and knows no framework's format."""

from __future__ import annotations

import math
import os
import signal
import statistics
import sys
import sysconfig
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fakerun import dialects
from fakerun.dialects import DEFAULT, nanogpt
from fakerun.dialects.base import Line, Seat
from fakerun.dialects.events import (
    BarrierPassed,
    CheckpointLoaded,
    CheckpointLoading,
    CheckpointSaved,
    CheckpointSaving,
    DatasetLoading,
    DatasetReady,
    DeviceSelected,
    EarlyStoppingCheck,
    EpochDone,
    EvalDone,
    EvalProgress,
    EvalStarted,
    Event,
    GpuGrid,
    GradientSync,
    JobStarted,
    LossSpike,
    MemoryReport,
    ModelBuilt,
    ModelConfigured,
    ModelExported,
    NanLoss,
    NcclInitialized,
    ParallelismDecided,
    ProcessGroupInitializing,
    ProcessGroupReady,
    RerunExit,
    ResultRejected,
    RunSummary,
    SlowPause,
    StepDone,
    Straggler,
    TokenizerLoaded,
    TrainingFinished,
    TrainingStarted,
    TrainingStopped,
    WeightsLoading,
    WorkerStarted,
)
from fakerun.dialects.files import Artifact, Removal, SaveRequest
from fakerun.frameworks import hf_results
from fakerun.launcher.outfile import notice
from fakerun.presets import host_name
from fakerun.render import c10, nccl
from fakerun.render.bar import BarWidth
from fakerun.render.grid import GridGpu
from fakerun.render.oom import crash_traceback
from fakerun.sim import (
    checkpoint,
    compute,
    ds_breakdown,
    ds_lossscale,
    estimates,
    failures,
    identity,
    loss,
    lossscale,
    memory,
    rand,
)
from fakerun.sim import megatron as megatron_figures
from fakerun.sim.clock import JobClock
from fakerun.sim.collectives import bucket_allreduces
from fakerun.sim.failures import Failure
from fakerun.sim.job import JobSpec
from fakerun.sim.rand import uniform
from fakerun.sim.run import (
    ENDING_HF,
    RERUN_EXIT_CODE,
    Pause,
    RunPlan,
    looped,
    startup_times,
    usual_eval_seconds,
)
from fakerun.sim.stack import stack_for
from fakerun.sim.step import ComputeTiming, StepNumbers, compute_timing, retimed, step_numbers
from fakerun.sim.stopping import Patience
from fakerun.sim.telemetry import Phase, telemetry
from fakerun.worker import artifacts
from fakerun.worker.channel import CoordinatorLink, JobAborted
from fakerun.worker.emit import set_clock
from fakerun.worker.printer import Printer

# Steps over which rank 0's bar smooths its rate (tqdm keeps a moving average; older steps weigh nothing).
_BAR_WINDOW = 50
# The events of the step loop drawn from a step's figures (StepNumbers).
_STEP_FIGURE_EVENTS: tuple[type[Event], ...] = (
    StepDone,
    NanLoss,
    LossSpike,
    Straggler,
    GpuGrid,
    TrainingStopped,
    EpochDone,
)
EVAL_BAR_REFRESH_S = 0.1  # tqdm's mininterval
SANITY_VAL_STEPS = 2  # Lightning's Trainer(num_sanity_val_steps=2): validation batches run before fit
# A pause worth a warning: this many times its usual length (a stall), and an evaluation also longer than
# this many training steps.
_SLOW_PAUSE = 1.5
_SLOW_EVAL_STEPS = 5


class Struck(Exception):
    """A --fake-fail scenario ends this rank: what it prints on stderr, then the signal it dies of (None:
    the script's exit code 1)."""

    def __init__(self, text: str, signum: int | None) -> None:
        super().__init__(text)
        self.text = text
        self.signum = signum


class ScriptExit(Exception):
    """The training script ends itself with an exit code (Megatron's sys.exit(16) after a NaN's rerun)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"exit {code}")
        self.code = code


class CudaOutOfMemory(Exception):
    """torch.OutOfMemoryError in this rank's backward pass (a job that does not fit, at its first step)."""

    def __init__(self, figures: memory.OomFigures, device: int) -> None:
        super().__init__("CUDA out of memory")
        self.figures = figures
        self.device = device


@dataclass(frozen=True)
class SimContext:
    """What every rank of the simulated job shares, decided once by the launcher before the fork."""

    run: RunPlan
    hosts: tuple[str, ...]  # one per node of the job
    speed: float
    log_format: str
    loop: bool
    # The terminal's width when rank 0's bar reaches one (the launcher updates it on a resize), else None.
    bar_width: BarWidth | None
    color: bool
    # The dialect the job prints in (fakerun/dialects: --fake-trainer, else what the script's arguments look
    # like; json and logfmt are fakerun's own events).
    trainer: str = DEFAULT
    grid: bool = True  # the GPU grid is shown (the dialect's default, or --fake-grid)
    # The job's clock (simulated time with --fake-speed); None: the wall clock.
    clock: JobClock | None = None
    # The node this launcher really is: its ranks show their real pids (a user may act on them), the other
    # simulated nodes' ranks show the pids their own host would have given them (sim/identity.py).
    real_node: int = 0
    # The script's textual settings a framework echoes in its log (hints.Hints.settings).
    settings: tuple[tuple[str, str], ...] = ()
    # When the launcher began forking this attempt's workers (monotonic; None: the rank's own fork). Every
    # rank's start-up is paced from it, as a real node's workers all start in the same few milliseconds:
    # forking many ranks on a small machine takes long enough to show at a high --fake-speed otherwise.
    spawned: float | None = None
    # A program that dies at its start on its arguments (hints.Hints.script_exit): its stderr text and exit
    # code (negative: the signal it dies of).
    script_exit: tuple[str, int] | None = None
    # What each rank prints on stdout before that death (hints.Hints.script_stdout, pytrace's slots in it).
    script_stdout: str = ""
    # Create the checkpoint and export files the job reports writing (dialects/files.py); --fake-no-files.
    files: bool = True
    log_level: str = "info"  # the lowest level of fakerun's own events shown (--fake-log-level)
    # --fake-tensorboard: the folder the writing rank's TensorBoard event files go to, whatever the script's
    # arguments say (worker/tensorboard.py).
    tensorboard: str | None = None


@dataclass
class _EpochTally:
    """What the phase loop counts over the current epoch of the run, for its EpochDone."""

    clock0: float  # the job's time when this run's part of the epoch began
    steps: int = 0
    loss_sum: float = 0.0
    losses: int = 0  # steps with a finite loss
    val_loss: float = math.nan

    def add(self, value: float) -> None:
        """One more step with this training loss (a NaN loss counts as a step, not in the mean)."""
        self.steps += 1
        if not math.isnan(value):
            self.loss_sum += value
            self.losses += 1


# A rank's step reports carry a GPU sample at most this often (real seconds), besides the first step's and the
# first after each phase change: what shows the GPUs (the grid, fakerun-smi, the metrics endpoint) reads them
# about as often (DCGM's default update is 1 Hz), and at a fast pace computing one every step would cost a
# rank most of its time.
TELEMETRY_EVERY_S = 1.0


@dataclass
class _Running:
    """The trainers' own running estimates, carried from step to step: nanoGPT's running_mfu, llm.c's
    windows of recent losses and gradient norms (its outlier z-scores) and its tokens/s EMA."""

    nanogpt_mfu: float = -1.0
    tps_ema: float = 0.0
    losses: list[float] = field(default_factory=list)
    norms: list[float] = field(default_factory=list)

    def advance(self, job: JobSpec, run: RunPlan, n: StepNumbers, index: int) -> tuple[float, float, float]:
        """Takes step `n` (the run's `index`-th) in; returns llm.c's loss and norm z-scores and tokens/s."""
        # nanoGPT logs (and only then updates running_mfu) when iter_num = step - 1 is a multiple of its
        # log_interval, once local_iter_num = index reaches 5.
        if (n.step - 1) % run.log_interval == 0 and index >= estimates.NANOGPT_SETTLE_ITERS:
            self.nanogpt_mfu = estimates.nanogpt_running_mfu(
                self.nanogpt_mfu, estimates.nanogpt_mfu(job, n.step_time_s)
            )
        loss_z = estimates.zscore(self.losses, n.loss)
        norm_z = estimates.zscore(self.norms, n.grad_norm)
        self.losses = [*self.losses[-estimates.LLMC_WINDOW :], n.loss]
        self.norms = [*self.norms[-estimates.LLMC_WINDOW :], n.grad_norm]
        self.tps_ema, tokens_per_s = estimates.llmc_tokens_per_s(self.tps_ema, n.tokens_per_s, index)
        return loss_z, norm_z, tokens_per_s


@dataclass
class _Sampler:
    """Whether a step report carries a GPU sample now."""

    last: float | None = None  # when the latest was sent (monotonic); None: the next one is due

    def due(self, now: float) -> bool:
        """Whether a sample is due at `now`; if so, it counts as sent."""
        if self.last is not None and now - self.last < TELEMETRY_EVERY_S:
            return False
        self.last = now
        return True


class RankTrainer:
    """Runs one rank: every figure comes from sim/, every wait from the coordinator or the pace, every line
    from the printer."""

    def __init__(self, ctx: SimContext, env: dict[str, str], link: CoordinatorLink) -> None:
        self.ctx = ctx
        self.env = env
        self.link = link
        self.rank = int(env["RANK"])
        self.local_rank = int(env["LOCAL_RANK"])
        self.run = ctx.run
        # --fake-early-stopping as the script's callback keeps it (the coordinator decides the stop), and the
        # step after which the validation that used up the patience already ran.
        self.patience: Patience | None = None
        self._evaluated: int | None = None
        self._early_eval_done = False  # that validation stands for the next one the run's pauses hold
        self._exits = False  # the run ends by a Megatron exit (--exit-interval, --exit-duration-in-mins)
        self._tally = _EpochTally(0.0)
        self._files_failed = False
        self._sampler = _Sampler()
        # The next step's compute timing, from the coordinator's latest answer (None: compute it).
        self._timing: ComputeTiming | None = None
        self._timing_step = 0
        # The step loop's end figures (an HF export's train metrics), and whether the run's end pauses are
        # running: HF's save there is the script's save_model(), written with the export, not checkpoint-N/.
        self._stopped: TrainingStopped | None = None
        self._ending = False
        self.born = time.monotonic() if ctx.spawned is None else min(ctx.spawned, time.monotonic())
        # The simulated moment this rank last woke for (a deadline, or the go) and when it really woke: lines
        # are stamped from the former, so a late wake-up is not multiplied by --fake-speed into the log.
        self._mark = self._woke = self.born
        self._last_stamp = 0.0
        if ctx.clock is not None:
            set_clock(self._job_time)  # also for what the worker prints when it dies (worker/main.py)
        job = ctx.run.job
        seat = Seat(
            rank=self.rank,
            local_rank=self.local_rank,
            world_size=job.world_size,
            nproc_per_node=job.nproc_per_node,
            hosts=ctx.hosts,
            log_format=ctx.log_format,
            log_level=ctx.log_level,
            color=ctx.color,
            terminal=ctx.bar_width,
            grid=ctx.grid,
            nccl_debug=env.get("NCCL_DEBUG", "").upper() in ("INFO", "TRACE"),
            nccl_collnet_enable=env.get("NCCL_COLLNET_ENABLE"),
            cwd=os.getcwd(),
        )
        clock = self._job_time if ctx.clock is not None else time.time
        self.out = Printer.for_rank(ctx.trainer, seat, clock, files=ctx.files, tensorboard=ctx.tensorboard)

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

    def _pace_from(self, start: float, sim_seconds: float) -> float:
        """Sleeps until `sim_seconds` of simulated time after `start` (monotonic); returns that deadline."""
        deadline = start + max(0.0, sim_seconds) / self.ctx.speed
        self._sleep_until(deadline)
        return deadline

    def _identity(self) -> tuple[int, int]:
        """The pid this rank shows and the thread id NCCL's init thread shows, as its host would draw it."""
        return shown_identity(self.ctx, self.env)

    def _sleep_until(self, deadline: float) -> None:
        # Sleeping on the control socket: an abort from the launcher (a lost node) ends the wait at once.
        self.link.wait_until(deadline)
        self._woke_at(deadline)

    def _telemetry(self, step: int, phase: Phase) -> list[Any]:
        t = telemetry(self.run.job, self.rank, step, phase)
        return [t.util_pct, t.mem_util_pct, t.temp_c, t.power_w, t.sm_clock_mhz, t.mem_used_mib, phase]

    def _note_timing(self, reply: dict[str, Any], step: int) -> None:
        """Keeps the compute timing of `step` that the coordinator's answer carries, if it does."""
        self._timing = ComputeTiming.from_wire(reply.get("next"))
        self._timing_step = step

    def _phase(self, step: int, phase: Phase) -> None:
        self.link.send({"k": "phase", "tel": self._telemetry(step, phase)})
        self._sampler.last = None  # the next step's report shows the GPU back at work

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
        self._stopped, self._ending = None, False
        self.startup(first=first)
        if self.run.steps == 0:
            # nanoGPT's eval_only: the loop breaks before its first step; the start's evaluation is the end.
            last, released, wall_start = self.run.last_step, time.monotonic(), time.time()
        else:
            last, released, wall_start = self.train()
        self.finish(last, released, wall_start)

    def startup(self, *, first: bool) -> None:
        """Everything before step one: each phase takes this rank's own drawn time, and the rank reports
        when it gets there; init_process_group's store barrier is the one place every rank waits for the
        others."""
        job = self.run.job
        emit = self.out.emit
        resume = job.start_step > 0
        times = startup_times(job, self.rank, resume=resume)
        pid, tid = self._identity()
        emit(JobStarted(run=self.run, first=first, resume=resume, settings=self.ctx.settings))
        started = self.out.clock()  # not before the dialects' start: Megatron's exit times count from it
        if first:
            # Nothing is printed before the interpreter has imported torch and the training framework.
            t = self._pace_from(self.born, times.import_s)
            emit(
                WorkerStarted(
                    host=self.ctx.hosts[self.node],
                    local_rank=self.local_rank,
                    world_size=job.world_size,
                    pid=pid,
                )
            )
            emit(
                DeviceSelected(
                    index=self.local_rank,
                    name=job.gpu.display_name,
                    memory_mib=job.gpu.memory_mib,
                    bus_id=nccl.pci_bus_id(self.local_rank, job.cluster.bus_ids),
                )
            )
            self._pace_from(t, times.cuda_s)
            emit(ProcessGroupInitializing(backend="nccl", world_size=job.world_size))
        # The store barrier of init_process_group: every rank leaves it when the slowest has arrived.
        self.link.send(
            {"k": "ready", "pid": os.getpid(), "t0": started, "tel": self._telemetry(job.start_step, "idle")}
        )
        self._note_timing(self.link.receive(), self.run.first_step)
        t = time.monotonic()
        self._woke_at(t)
        if first:
            emit(BarrierPassed(device_index=self.local_rank))
            # The barrier is the first collective: NCCL sets its communicator up, part by part, then the
            # rest of init_process_group's work (the subgroups) takes what remains of this rank's draw.
            schedule = nccl.init_schedule(job.seed, self.rank, job.nnodes)
            for part in nccl.INIT_PARTS:
                self._pace_from(t, schedule.at(part))
                emit(NcclInitialized(job=job, pid=pid, tid=tid, part=part))
            t = self._pace_from(t, max(times.nccl_s, schedule.end))
            coords = job.coords(self.rank)
            helpers_s, kernels_s = megatron_figures.compile_seconds(job)
            emit(
                ProcessGroupReady(
                    tp_rank=coords.tp_rank,
                    dp_rank=coords.dp_rank,
                    pp_rank=coords.pp_rank,
                    helpers_compile_s=helpers_s,
                    kernels_compile_s=kernels_s,
                )
            )
        emit(ModelConfigured(model=job.model, seq_len=job.seq_len, adapter_params=job.adapter_params))
        emit(
            ParallelismDecided(
                tp=job.tp,
                pp=job.pp,
                dp=job.dp,
                sharding=job.sharding,
                micro_batch=job.micro_batch,
                grad_accum=job.grad_accum,
                global_batch=job.global_batch,
                tokens_per_step=job.tokens_per_step,
            )
        )
        t = self._pace_from(t, times.tokenizer_s)
        emit(
            TokenizerLoaded(
                vocab_size=job.model.vocab,
                padded_vocab=megatron_figures.padded_vocab(job.model.vocab, job.tp),
            )
        )
        t = self._dataset(t, times.dataset_s)
        dataset_tokens = self.run.dataset_tokens
        emit(
            DatasetReady(
                tokens=dataset_tokens,
                samples=dataset_tokens // job.seq_len,
                epochs=self.run.epochs,
                steps_per_epoch=self.run.steps_per_epoch,
            )
        )
        t = self._pace_from(t, times.model_init_s)
        pp_rank = job.coords(self.rank).pp_rank
        stage, _ = memory.stage_params(job, pp_rank)
        built = memory.memory_breakdown(job, self.rank, 0)
        emit(
            ModelBuilt(
                dtype="bfloat16",
                params_on_rank=stage / job.tp,
                layers_on_rank=job.stage_layers(pp_rank),
                pp_rank=pp_rank,
                theory=megatron_figures.theory(job),
                groups=estimates.param_groups(job.model, padded=nanogpt.pads_vocab(job)),
                reported_params=estimates.nanogpt_num_params(job.model, padded=nanogpt.pads_vocab(job)),
                padded_params=estimates.gpt_params(job.model),
                padded_vocab=estimates.padded_vocab(job.model),
                weights_bytes=built.weights,
                init_s=times.model_init_s,
                capacity_bytes=built.capacity,
                ds_memory=ds_breakdown.init_memory(job, self.rank) if self._ds_breakdown()[1] else (),
            )
        )
        if resume:
            path = checkpoint.checkpoint_dir(job.start_step)
            emit(
                CheckpointLoading(
                    step=job.start_step, path=path, nbytes=checkpoint.checkpoint_bytes(job.model)
                )
            )
            t = self._load_weights(t, times.load_s, checkpoint.checkpoint_bytes(job.model))
            emit(
                CheckpointLoaded(
                    step=job.start_step,
                    path=path,
                    tokens=job.start_step * job.tokens_per_step,
                    loss=loss.train_loss(job, job.start_step),
                    lr=step_numbers(job, 0, job.start_step).lr,
                    seconds=times.load_s,
                )
            )
        elif job.regime == "finetune":
            # from_pretrained: the base model's bf16 weights, shard by shard.
            t = self._load_weights(t, times.load_s, checkpoint.checkpoint_bytes(job.model, full=False))
        model_ms, data_ms = megatron_figures.setup_timers_ms(job, resume=resume)
        sanity = min(SANITY_VAL_STEPS, self.run.eval_iters) if self.run.eval_interval > 0 else 0
        emit(
            TrainingStarted(
                first_step=self.run.first_step,
                last_step=self.run.last_step,
                total_steps=job.total_steps,
                warmup_steps=job.warmup_steps,
                lr=job.lr,
                schedule=job.lr_schedule,
                model_setup_ms=model_ms,
                data_setup_ms=data_ms,
                train_loss=loss.eval_loss(job, job.start_step, "train"),
                val_loss=loss.eval_loss(job, job.start_step),
                sanity_batches=sanity,
                sanity_s=usual_eval_seconds(job, sanity),
            )
        )
        # The first step's collectives make everyone wait for the slowest rank (the coordinator's barrier).

    def _dataset(self, start: float, seconds: float) -> float:
        """Maps the dataset's shards (a loader's progress, where it is printed) in `seconds` from `start`."""
        if not self.out.wants(DatasetLoading):
            return self._pace_from(start, seconds)
        shards = 16 if self.run.job.world_size <= 64 else 64
        sim_elapsed = 0.0
        for i in range(shards + 1):
            self.out.emit(DatasetLoading(shard=i, shards=shards, elapsed_s=sim_elapsed))
            if i < shards:
                sim_elapsed = seconds * (i + 1) / shards
                self._sleep_until(start + sim_elapsed / self.ctx.speed)
        return start + seconds / self.ctx.speed

    def _load_weights(self, start: float, seconds: float, nbytes: int) -> float:
        """Reads `nbytes` of weights as 5 GB safetensors shards (a loader's bar, where it is printed)."""
        if not self.out.wants(WeightsLoading):
            return self._pace_from(start, seconds)
        shards = max(1, -(-nbytes // checkpoint.HF_SHARD_BYTES))
        for i in range(shards + 1):
            # Every shard but the last is full: each takes its bytes' share of the read.
            sim_elapsed = seconds * min(i * checkpoint.HF_SHARD_BYTES, nbytes) / nbytes
            self._sleep_until(start + sim_elapsed / self.ctx.speed)
            self.out.emit(WeightsLoading(shard=i, shards=shards, elapsed_s=sim_elapsed))
        return start + seconds / self.ctx.speed

    def train(self) -> tuple[int, float, float]:
        """The step loop; returns the last step, when it ended (monotonic) and when training began (wall)."""
        job = self.run.job
        run = self.run
        emit = self.out.emit
        wall_start = time.time()
        self.patience = Patience(run.patience) if run.patience else None
        self._evaluated = None
        self._early_eval_done = False
        # The latest steps' times (a log interval's, the bar's window), and the sum and count of every step
        # after the first two (the frameworks' timed steps): a run of any length holds a bounded window.
        step_times: deque[float] = deque(maxlen=max(run.log_interval, _BAR_WINDOW))
        timed_s, timed_steps, steps_done = 0.0, 0, 0
        sim_elapsed = 0.0
        prev: StepNumbers | None = None
        step = run.first_step
        clock0, loss_sum = self.out.clock(), 0.0  # HF Trainer's train_runtime and train_loss
        self._tally = _EpochTally(clock0)
        running = _Running()  # the trainers' own running estimates
        # DeepSpeed's fp16 scaler (its config's), carried step to step, and its ThroughputTimer's span.
        ds = run.deepspeed
        ds_state = None if ds is None else ds_lossscale.initial_state(ds.initial_scale_power, ds.hysteresis)
        ds_timers, ds_memory = self._ds_breakdown()
        wants_steps = self.out.wants(StepDone)
        wants_sync = self.out.wants(GradientSync)  # asked once: the printer's layers are settled by now
        # A rank that prints (or writes) nothing drawn from its steps' figures computes only its compute
        # time for the coordinator; DeepSpeed's engine scaler changes that time, so it needs the figures.
        lean = ds is None and not any(self.out.wants(kind) for kind in _STEP_FIGURE_EVENTS)
        while True:
            # fp16: overflowed iterations are skipped; the lr and the model advance only on the others. A
            # DeepSpeed config's fp16 is its engine's scaler, unless the job's own arguments say fp16
            # (Megatron-DeepSpeed, HF --fp16: lossscale's scaler, which their dialects print, models it).
            ds_scaled = None
            numbers: StepNumbers | None = None
            if lean:
                timing = self._timing if self._timing_step == step else None
                compute_s = (timing or compute_timing(job, step)).compute_of(job, self.rank, step)
            else:
                numbers = step_numbers(job, self.rank, step)
                if ds is not None and ds_state is not None and job.precision != "fp16":
                    numbers, ds_scaled = ds_lossscale.engine_step(job, ds, ds_state, numbers)
                    ds_state = ds_scaled.state if ds_scaled is not None else ds_state
                else:
                    numbers = lossscale.with_skips(job, numbers)
                compute_s = numbers.compute_s
            overhead = compute.first_step_overhead_s(job) if step == run.first_step else 0.0
            if step == job.oom_at_step:
                self._run_out_of_memory(compute_s / max(job.grad_accum, 1) + overhead)
            failure = run.failure_for(step, self.rank, self._attempt())
            if failure is not None:
                self._strike(failure, step, compute_s + overhead)
            if run.nan_rerun(step) is not None:
                self._rerun_exit(step, compute_s + overhead)
            # The rank reports its compute time at once and waits for the step's end, which the coordinator
            # sets from the slowest rank's compute and the collectives: one wake-up per step, not two, on 64+
            # processes (sleeping through its own compute first would show nothing more).
            flapped = self._nic_flap(step, "down")
            report: dict[str, Any] = {"k": "step", "s": step, "c": compute_s}
            if self._sampler.due(time.monotonic()):
                report["tel"] = self._telemetry(step, "train")
            reply = self.link.request(report)
            self._note_timing(reply, step + 1)
            self._sleep_until(float(reply["rel"]))
            if flapped:
                self._nic_flap(step, "up")
            stop = bool(reply["stop"])
            self._exits = bool(reply.get("exit"))
            if step == run.first_step:
                m = memory.memory_breakdown(job, self.rank, step)
                emit(
                    MemoryReport(
                        step=step,
                        iterations=1,
                        allocated=m.allocated,
                        max_allocated=m.max_allocated,
                        reserved=m.reserved,
                        max_reserved=m.reserved,
                    )
                )
            logged = step % run.log_interval == 0 or step == run.first_step
            # The figures of the step, on ranks that print or write some of them (lean: this rank prints
            # none, and its step is its report and its pace alone).
            if numbers is not None:
                step_times.append(numbers.step_time_s + overhead)
                steps_done += 1
                if steps_done > 2:
                    timed_s += numbers.step_time_s + overhead
                    timed_steps += 1
                sim_elapsed += numbers.step_time_s + overhead
                loss_sum += numbers.loss
                self._tally.add(numbers.loss)
                if overhead:
                    # Iteration 1 took its warm-up too: its printed time and throughput say so.
                    numbers = retimed(numbers, overhead)
                self._warnings(numbers, prev)
                grid = reply.get("grid")
                if isinstance(grid, list) and self.out.wants(GpuGrid):
                    emit(self._grid(step, grid, numbers))
                # The step's event and the figures only it carries (the frameworks' running estimates), where
                # it is printed or written.
                if wants_steps:
                    emit(
                        self._step_done(
                            numbers,
                            logged=logged,
                            step_times=step_times,
                            elapsed_s=sim_elapsed,
                            timed=(timed_s, timed_steps),
                            overhead_s=overhead,
                            ds_scaled=ds_scaled,
                            ds_breakdowns=(ds_timers, ds_memory),
                            running=running,
                        )
                    )
            if logged and wants_sync:
                self._sync(step, reply)
            released = float(reply["rel"])
            if stop and self._early_stop(step):
                # The validation that used up the patience is printed before the loop ends, as a callback's.
                released = self._early_validation(step, released)
            if stop:
                # The loop's own evaluation and save after its last step (Megatron's), before it ends.
                released = self._pauses(step, released, run.loop_pauses(step, final=True, exits=self._exits))
                steps = step - run.first_step + 1
                self._stopped = TrainingStopped(
                    step=step,
                    reason=self._stop_reason(step),
                    runtime_s=self.out.clock() - clock0,
                    steps=steps,
                    samples=steps * job.global_batch,
                    mean_loss=loss_sum / steps,
                    total_flos=hf_results.total_flos(job, steps),
                )
                emit(self._stopped)
                return step, released, wall_start
            self._pauses(step, released, run.loop_pauses(step))
            self._epoch_end(step)
            prev = numbers
            step += 1

    def _step_done(
        self,
        numbers: StepNumbers,
        *,
        logged: bool,
        step_times: Sequence[float],
        elapsed_s: float,
        timed: tuple[float, int],
        overhead_s: float,
        ds_scaled: ds_lossscale.ScaleStep | None,
        ds_breakdowns: tuple[bool, bool],
        running: _Running,
    ) -> StepDone:
        """The step's event: its figures and those only it carries (the frameworks' own counters and
        estimates), `running` advanced by the step."""
        run, job, step = self.run, self.run.job, numbers.step
        interval = list(step_times)[-run.log_interval :]
        interval_s = sum(interval) / len(interval)
        # Megatron's counters cover the iterations since its previous log line (or the run's start).
        since = max(run.first_step - 1, (step - 1) // run.log_interval * run.log_interval)
        scaled = lossscale.loss_scale(job, job.seed, step)
        skipped_iters = lossscale.skipped_between(job, job.seed, since, step)
        nan_steps = sum(1 for s in job.nan_steps if since < s <= step)
        # torchtitan's figures as each rank measures them: its FLOPs per token over the step's wall time
        # (warm-up included on iteration 1), scaled by its own token rate against the job's.
        ratio = numbers.rank_tokens_per_s / numbers.tokens_per_s_per_gpu
        index = step - run.first_step
        loss_z, norm_z, llmc_tps = running.advance(job, run, numbers, index)
        titan_tflops = compute.framework_tflops_per_gpu(job, numbers.step_time_s, "torchtitan")
        ds = run.deepspeed
        ds_timers, ds_memory = ds_breakdowns
        overflow = ds_scaled is not None and ds_scaled.overflow
        return StepDone(
            run=run,
            numbers=numbers,
            elapsed_s=elapsed_s,
            recent_s=tuple(step_times)[-_BAR_WINDOW:],
            interval_s=interval_s,
            epoch=step / run.steps_per_epoch,
            rank_tflops=titan_tflops * ratio,
            rank_mfu=titan_tflops * 1e12 / job.gpu.peak_flops * ratio,
            logged=logged,
            loss_scale=scaled.scale,
            step_skipped=scaled.skipped_now,
            skipped_iters=skipped_iters,
            nan_steps=nan_steps,
            advanced_iters=step - since - skipped_iters,
            megatron_tflops=compute.framework_tflops_per_gpu(job, interval_s, "megatron"),
            samples_per_s=job.global_batch / interval_s,
            timers_ms=megatron_figures.step_timers_ms(job, numbers) if logged else (),
            nanogpt_mfu=running.nanogpt_mfu,
            llmc_mfu=estimates.llmc_mfu(job, numbers.step_time_s),
            loss_z=loss_z,
            norm_z=norm_z,
            llmc_tokens_per_s=llmc_tps,
            # A full Python GC of a trainer's heap: tens of milliseconds, drawn per rank and step.
            gc_s=0.004 + 0.05 * rand.uniform(job.seed, "gc", self.rank, step),
            ds_scale=ds_scaled,
            timed_s=timed[0],
            timed_steps=timed[1],
            ds_timers=(
                ds_breakdown.engine_times(
                    job,
                    numbers,
                    overhead_s=overhead_s,
                    bucket_elements=ds.reduce_bucket_size,
                    overflow=overflow,
                )
                if ds is not None and ds_timers
                else None
            ),
            ds_memory=tuple(
                ds_breakdown.micro_memory(
                    job, self.rank, step, i, first=index == 0 and i == 0, overflow=overflow
                )
                for i in range(job.grad_accum if ds_memory else 0)
            ),
        )

    def _ds_breakdown(self) -> tuple[bool, bool]:
        """DeepSpeed's (wall_clock_breakdown, memory_breakdown) on this rank: only global rank 0 prints
        either (print_dist ranks=[0], see_memory_usage)."""
        ds = self.run.deepspeed
        if ds is None or self.rank != 0:
            return False, False
        return ds.wall_clock_breakdown, ds.memory_breakdown

    def _run_out_of_memory(self, micro_batch_s: float) -> None:
        """The first micro-batch's backward asks for one tensor too many: every rank gets there within a few
        percent of the others (drawn per rank, so which ranks fail first is seeded) and raises."""
        job = self.run.job
        when = (0.7 + 0.03 * uniform(job.seed, "oom-when", self.rank)) * micro_batch_s
        self._pace_from(time.monotonic(), when)
        raise CudaOutOfMemory(memory.oom_figures(job), self.local_rank)

    def _strike(self, failure: Failure, step: int, compute_s: float) -> None:
        """--fake-fail's scenario on this rank, part-way through the step's compute: it raises what ends the
        process, or stops answering (hang), or waits inside a collective that never completes."""
        job = self.run.job
        self._pace_from(
            time.monotonic(), (0.2 + 0.6 * uniform(job.seed, "strike-when", self.rank, step)) * compute_s
        )
        kind = failure.kind
        if kind == "oom":
            raise CudaOutOfMemory(memory.oom_figures(job), self.local_rank)
        if kind == "hang":
            while True:  # never enqueues the collective: the others' watchdogs fire; the agent ends this one
                self.link.receive()
        if kind == "nccl-timeout":
            # Inside the collective, which never completes: its watchdog fires with everyone else's.
            self.link.send({"k": "stall", "s": step})
            while True:
                self.link.receive()
        site = sysconfig.get_paths()["purelib"]
        if kind == "nic-flap":
            # The link stays down past the queue pairs' last retry: the sends fail, NCCL reports a remote
            # error and the watchdog takes the process down.
            self._port_event(failure.rank, "down")
            self._pace_from(time.monotonic(), failure.seconds)
            peer = (self.node + 1) % job.nnodes
            text = ib_failure_text(self.ctx, self.env, peer, failure.rank, self._job_now())
            raise Struck(text, signal.SIGABRT)
        if kind == "crash":
            pid, _ = self._identity()
            worker_pid = pid + 40 + rand.hash64(job.seed, "loader-pid", self.rank) % 900
            raise Struck(crash_traceback(self.rank, script_path(), site, worker_pid), None)
        if kind in c10.CUDA_ERRORS:
            process = c10.Process(job.seed, self.rank, self._attempt(), site)
            raise Struck(c10.cuda_error(process, kind, self._job_now()), signal.SIGABRT)
        signum = {"segfault": signal.SIGSEGV, "sigkill": signal.SIGKILL, "node-loss": signal.SIGKILL}[kind]
        raise Struck("", signum)

    def _rerun_exit(self, step: int, compute_s: float) -> None:
        """Megatron-core's rerun state machine at NaN `step`: the check fails part-way through the step, the
        step runs once more in place (not on the GPU that found it, when the run resumed for that), then every
        rank saves after the step before (the coordinator's answer carries that save) and exits 16."""
        run = self.run
        again = run.nan_rerun(step) == "again"
        found = (0.5 + 0.3 * uniform(run.job.seed, "nan-found", self.rank)) * compute_s
        self._pace_from(time.monotonic(), found)
        self.out.emit(ResultRejected(step=step, again=again))
        runs = 1 if again else 2  # the step and its rerun in place
        tel = self._telemetry(step, "train")
        reply = self.link.request({"k": "step", "s": step, "c": compute_s * runs, "tel": tel})
        released = float(reply["rel"])
        self._sleep_until(released)
        self.out.emit(RerunExit(step=step, code=RERUN_EXIT_CODE, again=again))
        self._pauses(step - 1, released, run.rerun_pauses(step))
        self._phase(step, "idle")
        raise ScriptExit(RERUN_EXIT_CODE)

    def _nic_flap(self, step: int, event: str) -> bool:
        """Whether this node's NIC flaps at `step` and comes back within the queue pairs' retries; the IB
        async thread's WARN when it goes down ("down") or is back ("up"), under NCCL_DEBUG=WARN or INFO."""
        job = self.run.job
        if not job.net_stalls:  # the usual case, asked every step
            return False
        stall = next((s for s in job.net_stalls if s.step == step and s.node == self.node), None)
        if stall is None:
            return False
        self._port_event(stall.rank, event)
        return True

    def _port_event(self, flapping_rank: int, event: str) -> None:
        """The IB async thread's WARN for the port of `flapping_rank`'s NIC (NCCL_DEBUG=WARN or INFO)."""
        if not nccl_debug(self.env):
            return
        job = self.run.job
        topo = nccl.nccl_topo_for(job.cluster, job.nnodes, job.nproc_per_node, self.ctx.hosts)
        pid, tid = self._identity()
        # The IB async thread: started with the communicator, a few ids above NCCL's init thread.
        thread = c10.NcclThread(self.ctx.hosts[self.node], pid, tid + 2, self.local_rank)
        hca = nccl.nic_device(topo, flapping_rank % job.nproc_per_node)
        text = c10.ib_port_event(thread, hca, event, self._job_now())
        self.out.write([Line(line, "stderr") for line in text.rstrip("\n").split("\n")])

    def _attempt(self) -> int:
        return restart_count(self.env)

    def _job_now(self) -> float:
        return self._job_time() if self.ctx.clock is not None else time.time()

    def _early_stop(self, step: int) -> bool:
        """Whether the coordinator's stop after `step` is early stopping (its validation follows)."""
        run = self.run
        if self.patience is None or step >= run.last_step or not run.evaluates_after(step):
            return False
        return self.patience.would_stop(loss.eval_loss(run.job, step))

    def _early_validation(self, step: int, start: float) -> float:
        """The run's last validation, ahead of its end; returns when it ends (monotonic)."""
        seconds = next(s for phase, s in self.run.pauses_after(step, final=True) if phase == "eval")
        until = start + seconds / self.ctx.speed
        self._pause(step, "eval", seconds, until=until)
        self._evaluated = step
        self._early_eval_done = True
        return until

    def _stop_reason(self, step: int) -> str:
        if self._exits:
            return "exit interval" if self.run.exits_at(step) else "exit duration"
        if step >= self.run.job.total_steps:
            return "reached total steps"
        if step >= self.run.last_step:
            return "reached max steps"
        if self._evaluated == step:
            return "early stopping"
        return "reached max time"

    def _warnings(self, n: StepNumbers, prev: StepNumbers | None) -> None:
        """What a step gives cause to warn about: a NaN loss, the start of a spike, a new straggler."""
        job = self.run.job
        emit = self.out.emit
        if n.skipped:
            emit(NanLoss(step=n.step))
        if n.spike and (prev is None or not prev.spike):
            emit(LossSpike(step=n.step, loss=n.loss, grad_norm=n.grad_norm))
        # A lone GPU that slows down is not a straggler: there is no other rank to wait for it.
        slow = n.straggler_rank if job.world_size > 1 else None
        if slow is not None and (prev is None or prev.straggler_rank != slow):
            emit(
                Straggler(
                    step=n.step,
                    slow_rank=slow,
                    host=self.ctx.hosts[slow // job.nproc_per_node],
                    step_time_s=n.step_time_s,
                    mfu=n.mfu,
                )
            )

    def _sync(self, step: int, reply: dict[str, Any]) -> None:
        """The step's gradient collectives, timed by the coordinator's model."""
        buckets = bucket_allreduces(self.run.job, step)
        if not buckets:
            return
        total = sum(b.seconds for b in buckets)
        self.out.emit(
            GradientSync(
                step=step,
                op=buckets[0].op,
                buckets=len(buckets),
                nbytes=sum(b.nbytes for b in buckets),
                ranks=buckets[0].ranks,
                algo=buckets[0].algo,
                time_ms=float(reply["ar_ms"]),
                busbw_gbs=sum(b.busbw * b.seconds for b in buckets) / total / 1e9 if total else 0.0,
            )
        )

    def _grid(self, step: int, rows: list[list[Any]], n: StepNumbers) -> GpuGrid:
        """The coordinator's rows of every GPU at `step` as the grid's records."""
        job = self.run.job
        npn = job.nproc_per_node
        hosts = self.ctx.hosts
        gpus = tuple(
            GridGpu(
                rank=r,
                node=r // npn,
                local_rank=r % npn,
                host=hosts[r // npn] if r // npn < len(hosts) else host_name(job.cluster, r // npn),
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
        )
        # A slow node's GPUs are all behind, not only the one the warning names.
        slow = {r for r in range(job.world_size) if compute.slow_factor(job, r, step) > 1.0}
        stragglers = frozenset({n.straggler_rank} if n.straggler_rank is not None else set()) | slow
        return GpuGrid(step=step, gpus=gpus, stragglers=stragglers)

    def _pauses(self, step: int, start: float, pauses: Sequence[Pause]) -> float:
        """Runs `pauses` (evaluations and checkpoints) after `step` from `start`; returns when they end
        (monotonic)."""
        t = start
        for phase, seconds in pauses:
            if phase == "eval" and self._early_eval_done:
                self._early_eval_done = False
                continue  # early stopping's validation ran before the loop ended
            # Absolute deadlines: every rank leaves a collective save at the same moment, as in a real job.
            t += seconds / self.ctx.speed
            self._pause(step, phase, seconds, until=t)
        return t

    def _pause(self, step: int, phase: str, seconds: float, *, until: float) -> None:
        """An evaluation or a checkpoint after `step`: events before and after, GPUs in that phase."""
        job = self.run.job
        run = self.run
        emit = self.out.emit
        if phase in ("eval", "test"):
            split = "test" if phase == "test" else "validation"
            self._phase(step, "eval")
            emit(EvalStarted(step=step, iters=run.eval_iters, split=split))
            if self.out.wants(EvalProgress):
                self._eval_progress(step, seconds, until)
            self._sleep_until(until)
            value = loss.eval_loss(job, step, split)
            emit(
                EvalDone(
                    step=step,
                    loss=value,
                    ppl=loss.perplexity(value),
                    seconds=seconds,
                    samples=run.eval_iters * job.global_batch,
                    iters=run.eval_iters,
                    epoch=step / run.steps_per_epoch,
                    train_loss=loss.eval_loss(job, step, "train"),
                    split=split,
                )
            )
            self._slow_pause(step, "eval", seconds)
            if split == "test":
                return
            self._tally.val_loss = value
            if self.patience is not None and run.evaluates_after(step):
                self.patience.observe(step, value)
                p = self.patience
                emit(
                    EarlyStoppingCheck(
                        step=step,
                        val_loss=value,
                        best=p.best,
                        best_step=p.best_step,
                        strikes=p.strikes,
                        patience=p.patience,
                    )
                )
        else:
            self._phase(step, "checkpoint")
            path = checkpoint.checkpoint_dir(step)
            nbytes = checkpoint.checkpoint_bytes(job.model)
            emit(CheckpointSaving(step=step, path=path, format="torch_dist"))
            if not (self._ending and run.ending == ENDING_HF):
                # Written while the save lasts, so their real cost (rank 0 writes the most) does not delay
                # its end past what other ranks print after it (the last rank's test split in Megatron).
                self._write_files("checkpoint", step)
            self._sleep_until(until)
            emit(
                CheckpointSaved(
                    step=step, path=path, nbytes=nbytes, seconds=seconds, bandwidth_gbs=nbytes / seconds / 1e9
                )
            )
            self._slow_pause(step, phase, seconds)

    def _write_files(self, kind: Literal["checkpoint", "export"], step: int) -> Sequence[Artifact | Removal]:
        """This rank's files of a save, as its framework lays them out; written unless --fake-no-files."""
        job = self.run.job
        request = SaveRequest(
            run=self.run,
            settings=dict(self.ctx.settings),
            step=step,
            rank=self.rank,
            world_size=job.world_size,
            kind=kind,
            stopped=self._stopped if kind == "export" else None,
        )
        saved = dialects.artifacts(self.ctx.trainer, request)
        if not self.ctx.files:
            return saved
        failed = artifacts.write(saved)
        if failed is not None and not self._files_failed:
            self._files_failed = True  # one warning per rank, not one per save
            # In the launcher's notice format (a glog line), not a prefix no real job prints.
            print(notice(failed), file=sys.stderr, flush=True)
        return saved

    def _eval_progress(self, step: int, seconds: float, until: float) -> None:
        """The evaluation's batches as they end, evenly over its `seconds`, as often as tqdm refreshes."""
        batches = self.run.eval_iters
        per_batch = seconds / batches
        # tqdm redraws at most every mininterval (0.1 s of the job's time): fast batches show in strides.
        stride = max(1, math.ceil(EVAL_BAR_REFRESH_S / per_batch))
        start = until - seconds / self.ctx.speed
        for batch in (*range(stride, batches, stride), batches):
            self._sleep_until(start + batch * per_batch / self.ctx.speed)
            self.out.emit(EvalProgress(step=step, batch=batch, batches=batches, elapsed_s=batch * per_batch))

    def _slow_pause(self, step: int, phase: str, seconds: float) -> None:
        """A warning when the pause after `step` stalled far beyond its usual length (sim's rare stalls)."""
        job = self.run.job
        if phase == "eval":
            usual = usual_eval_seconds(job, self.run.eval_iters)
        else:
            usual = checkpoint.usual_save_seconds(job)
        step_s = compute.expected_step_time(job)
        if seconds > _SLOW_PAUSE * usual and (phase != "eval" or seconds > _SLOW_EVAL_STEPS * step_s):
            steps = seconds / step_s
            self.out.emit(
                SlowPause(step=step, phase=phase, seconds=seconds, usual_s=usual, train_steps=steps)
            )

    def _epoch_end(self, step: int) -> None:
        """The epoch that `step` ends, if it ends one, after that step's evaluation and save."""
        run = self.run
        tally = self._tally
        if tally.steps == 0 or (step % run.steps_per_epoch and step < run.job.total_steps):
            return
        now = self.out.clock()
        if self.out.wants(EpochDone):
            self.out.emit(
                EpochDone(
                    epoch=run.epoch_of(step),
                    epochs=run.epochs,
                    step=step,
                    train_loss=tally.loss_sum / tally.losses if tally.losses else math.nan,
                    val_loss=tally.val_loss,
                    tokens=tally.steps * run.job.tokens_per_step,
                    seconds=now - tally.clock0,
                )
            )
        self._tally = _EpochTally(now)

    def finish(self, last: int, released: float, wall_start: float) -> None:
        """After the last step: final evaluation and save, then the export and the run's summary."""
        self._ending = True
        self._pauses(last, released, self.run.end_pauses(last, exits=self._exits))
        self._epoch_end(last)
        self._phase(last, "idle")
        job = self.run.job
        exported = self._write_files("export", last)
        out_dir = checkpoint.export_dir(job.model)
        if self.out.wants(ModelExported):
            # The files as written, where the layout writes this export; else the export's modelled files.
            written = tuple(
                checkpoint.ExportFile(f.path.removeprefix(out_dir + "/"), f.size)
                for f in exported
                if isinstance(f, Artifact) and f.path.startswith(out_dir + "/")
            )
            files = tuple(sorted(written, key=lambda f: f.name)) or checkpoint.export_files(job.model)
            self.out.emit(ModelExported(path=out_dir, format="safetensors", files=files))
        if self.out.wants(RunSummary) and self.run.steps > 0:  # a run of no step has no figures to sum up
            self.out.emit(self._summary(last, wall_start))
        self.out.emit(TrainingFinished(step=last))

    def _summary(self, last: int, wall_start: float) -> RunSummary:
        """The run's figures: medians over its steps (as rank 0 saw them), the final evaluation."""
        job = self.run.job
        run = self.run
        steps = [step_numbers(job, 0, s) for s in range(run.first_step, last + 1)]
        final = steps[-1]
        val = loss.eval_loss(job, last)
        med_tps = statistics.median(n.tokens_per_s for n in steps)
        med_mfu = statistics.median(n.mfu for n in steps)
        return RunSummary(
            model=job.model,
            world_size=job.world_size,
            gpu_name=job.gpu.display_name,
            nnodes=job.nnodes,
            nproc_per_node=job.nproc_per_node,
            tp=job.tp,
            pp=job.pp,
            dp=job.dp,
            sharding=job.sharding,
            first_step=run.first_step,
            last_step=last,
            total_steps=job.total_steps,
            tokens=final.tokens,
            tokens_per_step=job.tokens_per_step,
            final_loss=final.loss,
            val_loss=val,
            val_ppl=loss.perplexity(val),
            median_step_s=statistics.median(n.step_time_s for n in steps),
            median_tokens_per_s=med_tps,
            median_tokens_per_s_per_gpu=med_tps / job.world_size,
            median_mfu=med_mfu,
            median_tflops=med_mfu * job.gpu.peak_bf16_tflops,
            checkpoints=sum(1 for s in range(run.first_step, last) if run.saves_after(s)) + int(run.saves),
            last_checkpoint=checkpoint.checkpoint_dir(last),
            wall_s=time.time() - wall_start,
            speed=self.ctx.speed,
        )


def restart_count(env: dict[str, str]) -> int:
    """The attempt a worker belongs to (torchrun's TORCHELASTIC_RESTART_COUNT; 0 for the first)."""
    return int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def script_path() -> str:
    """The training script as its traceback names it (the worker's argv is the script's)."""
    return os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else "train.py"


def shown_identity(ctx: SimContext, env: dict[str, str]) -> tuple[int, int]:
    """The pid a rank shows and the thread id NCCL's init thread shows, as its host would draw them."""
    job = ctx.run.job
    npn = job.nproc_per_node
    rank, local_rank = int(env["RANK"]), int(env["LOCAL_RANK"])
    node = rank // npn
    attempt = restart_count(env)
    if node == ctx.real_node:
        pid = os.getpid()
        # Forked one after another by this launcher: the node's last worker is about this far above.
        last = pid + (npn - 1 - local_rank)
    else:
        pids = identity.worker_pids(job.seed, node, npn, attempt, job.nnodes)
        pid, last = pids[local_rank], max(pids)
    tid = identity.nccl_tids(job.seed, node, last, npn, attempt)[local_rank]
    return pid, tid


def nccl_abort_text(ctx: SimContext, env: dict[str, str], abort: JobAborted, site_packages: str) -> str:
    """What a rank prints when its collective can never complete: the watchdog's timeout, or (a peer's
    process or node gone) NCCL's WARN under NCCL_DEBUG, the watchdog's error and std::terminate."""
    job = ctx.run.job
    failed_node = abort.node
    rank, local_rank = int(env["RANK"]), int(env["LOCAL_RANK"])
    node = rank // job.nproc_per_node
    if failed_node is None or not 0 <= failed_node < len(ctx.hosts):
        failed_node = (node + 1) % len(ctx.hosts)
    attempt = restart_count(env)
    process = c10.Process(job.seed, rank, attempt, site_packages)
    now = ctx.clock.at(time.monotonic()) if ctx.clock is not None else time.time()
    if abort.why == "timeout":
        timeout_ms = int(ctx.run.collective_timeout_s(abort.step) * 1000)
        numbers = failures.watchdog_numbers(job, rank, abort.step, timeout_ms)
        desync = env.get("TORCH_NCCL_DESYNC_DEBUG", "") == "1" and abort.culprit is not None
        return c10.watchdog_timeout(process, numbers, now, desync_with=abort.culprit if desync else None)
    if abort.why == "ib":
        # The link to that node is gone: this side's sends to it ran out of retries too.
        return ib_failure_text(ctx, env, failed_node, local_rank, now)
    peer = c10.socket_address(ctx.hosts[failed_node], job.seed, rank)
    text = c10.remote_error(process, stack_for(job.cluster).nccl, peer, now)
    if nccl_debug(env):
        pid, tid = shown_identity(ctx, env)
        # NCCL's proxy thread notices the closed socket: a thread of its own, a few ids above the init thread.
        text = c10.nccl_warn(ctx.hosts[node], pid, tid + 3, local_rank, peer) + text
    return text


def nccl_debug(env: dict[str, str]) -> bool:
    """Whether NCCL prints its WARN lines in this environment (NCCL_DEBUG=WARN, INFO or TRACE)."""
    return env.get("NCCL_DEBUG", "").upper() in ("WARN", "INFO", "TRACE")


def ib_failure_text(ctx: SimContext, env: dict[str, str], peer_node: int, nic_rank: int, now: float) -> str:
    """A rank's stderr when its IB sends to `peer_node` ran out of retries (the NIC of local rank `nic_rank`
    of its node is the one that went down, or its own): NCCL's WARN lines under NCCL_DEBUG, then the
    watchdog's ncclRemoteError with the IB error as its last error, and the abort."""
    job = ctx.run.job
    rank, local_rank = int(env["RANK"]), int(env["LOCAL_RANK"])
    node = rank // job.nproc_per_node
    attempt = restart_count(env)
    topo = nccl.nccl_topo_for(job.cluster, job.nnodes, job.nproc_per_node, ctx.hosts)
    here, there = ctx.hosts[node], ctx.hosts[peer_node]
    roce = topo.transport == "roce"
    h = rand.hash64(job.seed, "ib-cqe", rank, attempt)
    completion = c10.IbCompletion(
        peer=f"{nccl.node_ip(job.seed, peer_node, there)}<{32768 + h % 28232}>",
        hca=nccl.nic_device(topo, nic_rank % job.nproc_per_node),
        local_gid=f"::ffff:{nccl.node_ip(job.seed, node, here)}" if roce else None,
        remote_gid=f"::ffff:{nccl.node_ip(job.seed, peer_node, there)}" if roce else None,
        # The proxy thread's heap (0x7f.. mmap'd arenas), a request slot's wr_id, a queue pair's number.
        req=0x7F0000000000 + (h >> 20) % 0xFFFFFFFF * 0x40,
        comm=0x7F0000000000 + (h >> 24) % 0xFFFFFFFF * 0x40,
        wr_id=h % 256,
        qp_num=0x100 + (h >> 8) % 0x8000,
    )
    process = c10.Process(job.seed, rank, attempt, sysconfig.get_paths()["purelib"])
    text = c10.remote_error(
        process, stack_for(job.cluster).nccl, "", now, last_error=c10.ib_completion_message(completion)
    )
    if nccl_debug(env):
        pid, tid = shown_identity(ctx, env)
        thread = c10.NcclThread(here, pid, tid + 3, local_rank)  # the proxy's progress thread
        info = env.get("NCCL_DEBUG", "").upper() in ("INFO", "TRACE")
        text = c10.ib_error_lines(thread, completion, now, info=info) + text
    return text


def run_rank(ctx: SimContext, env: dict[str, str], link: CoordinatorLink) -> int:
    """Entry of a simulated rank, talking to the coordinator through `link`."""
    return RankTrainer(ctx, env, link).main()
