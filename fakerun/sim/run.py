"""One simulated run: the steps it covers, when it logs, evaluates and saves, how long each phase takes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from fakerun.presets import ModelSpec
from fakerun.sim import checkpoint, compute, rand
from fakerun.sim.job import JobSpec

# Intervals real configs use: people pick round numbers, never 37.
NICE_INTERVALS = (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000)
# Wall-time targets (simulated seconds) the default intervals aim for: a metric line every few seconds,
# the GPU grid every ~20 s, an evaluation every ~5 min and a checkpoint every ~10 min.
LOG_EVERY_S = 5.0
GRID_EVERY_S = 20.0
EVAL_EVERY_S = 300.0
SAVE_EVERY_S = 600.0
EVAL_ITERS = 10  # validation batches per evaluation (Megatron's --eval-iters default is 100; demos use 10)
# The default model is the largest of these whose steps take at most this long on the job's GPUs, so that
# the default demo moves about every second (PRODUCT.md 5).
DEFAULT_LADDER = ("llama3-70b", "llama3-8b", "llama3.2-3b", "llama3.2-1b", "gpt2-124m")
DEFAULT_MAX_STEP_S = 2.5
EVAL_MARGIN = 0.05  # evaluation wall time over the forward FLOPs: data loading, all-reduce of the loss

Pause = tuple[str, float]  # (phase name, simulated seconds)


def nice_interval(target_s: float, step_s: float) -> int:
    """The round step interval closest (in log scale) to `target_s` of simulated time."""
    want = max(1.0, target_s / max(step_s, 1e-9))
    return min(NICE_INTERVALS, key=lambda n: abs(math.log(n / want)))


def pick_default_model(candidates: Sequence[tuple[ModelSpec, float]]) -> ModelSpec:
    """The first (largest) model whose expected step time is short enough, else the fastest one."""
    for model, step_s in candidates:
        if step_s <= DEFAULT_MAX_STEP_S:
            return model
    return min(candidates, key=lambda c: c[1])[0]


@dataclass(frozen=True)
class RunPlan:
    """The steps one attempt runs and its cadence; every rank and the coordinator derive the same plan."""

    job: JobSpec
    first_step: int  # the first optimizer step this run executes (start_step + 1)
    last_step: int  # the last one, unless --fake-max-time stops the run earlier
    log_interval: int
    grid_interval: int
    eval_interval: int
    save_interval: int
    eval_iters: int
    epochs: int
    max_time_s: float | None = None  # simulated seconds of training before a clean stop
    max_steps: int | None = None  # steps per run (--fake-max-steps), kept for the next run of a loop

    @property
    def steps(self) -> int:
        """Steps this run executes when nothing stops it early."""
        return self.last_step - self.first_step + 1

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per pass over the dataset."""
        return max(1, math.ceil(self.job.total_steps / self.epochs))

    def epoch_of(self, step: int) -> int:
        """1-based epoch that `step` belongs to."""
        return min(self.epochs, (max(step, 1) - 1) // self.steps_per_epoch + 1)

    def evaluates_after(self, step: int) -> bool:
        """Whether an evaluation follows `step` (periodic; the end of the run is handled by the caller)."""
        return self.eval_interval > 0 and step % self.eval_interval == 0 and step != self.last_step

    def saves_after(self, step: int) -> bool:
        """Whether a checkpoint follows `step` (periodic; the end of the run is handled by the caller)."""
        return self.save_interval > 0 and step % self.save_interval == 0 and step != self.last_step

    def pauses_after(self, step: int, *, final: bool = False) -> tuple[Pause, ...]:
        """Evaluation and checkpoint that follow `step`, in order, with their simulated durations."""
        out: list[Pause] = []
        if final or self.evaluates_after(step):
            out.append(("eval", eval_seconds(self.job, self.eval_iters, step)))
        if final or self.saves_after(step):
            out.append(("checkpoint", checkpoint.save_seconds(self.job, step)))
        return tuple(out)

    def pause_seconds(self, step: int, *, final: bool = False) -> float:
        """Total simulated time of the pauses after `step`."""
        return sum(seconds for _, seconds in self.pauses_after(step, final=final))


def make_run(
    job: JobSpec,
    *,
    max_steps: int | None = None,
    max_time_s: float | None = None,
    log_interval: int | None = None,
    eval_interval: int | None = None,
    save_interval: int | None = None,
    eval_iters: int | None = None,
    epochs: float | None = None,
) -> RunPlan:
    """The run of `job` from its start step: cadences default to round numbers fitted to the step time."""
    step_s = compute.expected_step_time(job)
    first = job.start_step + 1
    last = job.total_steps if max_steps is None else min(job.total_steps, job.start_step + max_steps)
    if last < first:
        raise ValueError(f"nothing to run: start step {job.start_step} is the last of {job.total_steps}")
    return RunPlan(
        job=job,
        first_step=first,
        last_step=last,
        log_interval=log_interval or nice_interval(LOG_EVERY_S, step_s),
        grid_interval=nice_interval(GRID_EVERY_S, step_s),
        eval_interval=nice_interval(EVAL_EVERY_S, step_s) if eval_interval is None else eval_interval,
        save_interval=nice_interval(SAVE_EVERY_S, step_s) if save_interval is None else save_interval,
        eval_iters=EVAL_ITERS if eval_iters is None else eval_iters,
        epochs=max(1, math.ceil(epochs)) if epochs else 1,
        max_time_s=max_time_s,
        max_steps=max_steps,
    )


def resumed(run: RunPlan, saved_step: int) -> RunPlan:
    """The run restarted (torchrun --max-restarts) from its newest checkpoint, saved after `saved_step`."""
    step = min(saved_step, run.last_step - 1)
    if step <= run.job.start_step:
        return run
    job = dataclasses.replace(run.job, start_step=step)
    return dataclasses.replace(run, job=job, first_step=step + 1)


def looped(run: RunPlan, index: int) -> RunPlan:
    """The `index`-th run after `run` with --fake-loop: the same job from step 0 with the next seed."""
    if index == 0:
        return run
    job = dataclasses.replace(run.job, seed=run.job.seed + index, start_step=0)
    return dataclasses.replace(
        run,
        job=job,
        first_step=1,
        last_step=job.total_steps if run.max_steps is None else min(job.total_steps, run.max_steps),
    )


def eval_seconds(job: JobSpec, iters: int, step: int) -> float:
    """One evaluation: `iters` global batches forward only (2N FLOPs per token) at the job's MFU."""
    tokens = iters * job.tokens_per_step
    flops = 2.0 * job.model.active_params * tokens
    rate = job.world_size * compute.mfu_center(job) * job.gpu.peak_bf16_tflops * 1e12
    jitter = 1.0 + 0.03 * rand.normal(job.seed, "eval-time", step)
    return flops / rate * (1.0 + EVAL_MARGIN) * jitter


@dataclass(frozen=True)
class StartupTimes:
    """Simulated seconds of each start-up phase of one rank, before the first step."""

    tokenizer_s: float
    dataset_s: float
    model_init_s: float
    dist_init_s: float
    load_s: float  # checkpoint or initial weights; 0 when training from scratch

    @property
    def total_s(self) -> float:
        """All of start-up."""
        return self.tokenizer_s + self.dataset_s + self.model_init_s + self.dist_init_s + self.load_s


def startup_times(job: JobSpec, rank: int, *, resume: bool) -> StartupTimes:
    """How long this rank spends in each start-up phase (they differ a little between ranks)."""

    def vary(stream: str, base: float) -> float:
        return base * (1.0 + 0.15 * rand.uniform(job.seed, stream, rank))

    # Building a model on the meta device and sharding it costs ~0.1 s per billion parameters per layer
    # group; NCCL init grows with log(world size) (bootstrap all-gather, ring and tree search).
    init = 1.5 + 0.25 * job.model.params / 1e9 / max(job.tp * job.pp, 1) ** 0.5
    dist = 1.0 + 0.6 * math.log2(max(job.world_size, 2))
    load = checkpoint.load_seconds(job) if resume else 0.0
    return StartupTimes(
        tokenizer_s=vary("st-tok", 0.4),
        dataset_s=vary("st-data", 2.0 + 0.4 * math.log2(max(job.world_size, 2))),
        model_init_s=vary("st-init", init),
        dist_init_s=vary("st-dist", dist),
        load_s=load,
    )
