"""One simulated run: the steps it covers, when it logs, evaluates and saves, how long each phase takes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from fakerun.dsconfig import DsConfig
from fakerun.presets import ModelSpec
from fakerun.sim import checkpoint, compute, loss, rand
from fakerun.sim.failures import WATCHDOG_TIMEOUT_MS, Failure
from fakerun.sim.job import JobSpec

# Intervals real configs use: people pick round numbers, never 37.
NICE_INTERVALS = (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000)
# Wall-time targets (simulated seconds) the default intervals aim for: a metric line every few seconds,
# the GPU grid every ~30 s, an evaluation every ~5 min and a checkpoint every ~10 min.
LOG_EVERY_S = 5.0
GRID_EVERY_S = 30.0
# Metric lines at least between two GPU grids: a grid is a dozen lines, and with slow steps (a metric line
# each) one per ~30 s would come every step and bury the metric lines.
GRID_MIN_LOG_LINES = 5
EVAL_EVERY_S = 300.0
SAVE_EVERY_S = 600.0
EVAL_ITERS = 10  # validation batches per evaluation (Megatron's --eval-iters default is 100; demos use 10)
# The default model is the largest of these whose steps take at most this long on the job's GPUs, so that
# the default demo moves about every second (PRODUCT.md 5).
DEFAULT_LADDER = ("llama3-70b", "llama3-8b", "llama3.2-3b", "llama3.2-1b", "gpt2-124m")
DEFAULT_MAX_STEP_S = 2.5
# Default evaluation and checkpoint cadences also keep each pause under this share of the wall time: real jobs
# spend ~0.4% saving (BLOOM-176B: 2.3 TB in ~40 s every ~3 h, PHYSICS.md 7) and a few percent validating.
EVAL_SHARE = 0.03
# Large checkpoints are written less often: ~5 s of training per GB (BLOOM-176B: 2.3 TB every ~3 h, PHYSICS.md
# 7), so a 988 GB 70B checkpoint comes every ~80 min, not every ~10.
SAVE_S_PER_GB = 5.0
SAVE_SHARE = 0.03
EVAL_MARGIN = 0.05  # evaluation wall time over the forward FLOPs: data loading, all-reduce of the loss

Pause = tuple[str, float]  # (phase name, simulated seconds)
# What follows a run's last step (RunPlan.ending): fakerun's validation and save; Megatron-core's pretrain()
# (its loop's evaluation and save at their intervals, then a save unless the loop's was at that step, the
# validation and test sets); 2021-22 Megatron-LM's (its loop's, then the validation, a save, the test set).
ENDING_FAKERUN = "fakerun"
ENDING_MEGATRON = "megatron"
ENDING_MEGATRON_2022 = "megatron-2022"
ENDING_HF = "hf"  # HF Trainer's loop, then an example script's save_model() and, with --do_eval, evaluate()
# torchtitan's train(): each step saves (at the interval, and at training.steps) then validates (at step 1 and
# the interval's multiples); nothing follows its loop.
ENDING_TITAN = "titan"
ENDINGS = (ENDING_FAKERUN, ENDING_MEGATRON, ENDING_MEGATRON_2022, ENDING_HF, ENDING_TITAN)
# Megatron-core's EXIT_CODE_RESUME_TO_DISAMBIGUATE (rerun_state_machine.py): the job is to resume from the
# checkpoint it saved and rerun the step on another GPU.
RERUN_EXIT_CODE = 16


def grid_interval(step_s: float, log_interval: int) -> int:
    """Steps between two GPU grids: the round multiple of the log interval (a grid follows a metric line)
    nearest to GRID_EVERY_S of simulated time, with at least GRID_MIN_LOG_LINES metric lines between grids."""
    want = max(1.0, GRID_EVERY_S / max(step_s, 1e-9))
    least = GRID_MIN_LOG_LINES * log_interval
    nice = [n for n in NICE_INTERVALS if n >= least and n % log_interval == 0]
    if not nice:  # an unround log interval (a script's --log-interval 7): its multiples
        return max(least, math.ceil(want / log_interval) * log_interval)
    return min(nice, key=lambda n: abs(math.log(n / want)))


def nice_interval(target_s: float, step_s: float) -> int:
    """The round step interval closest (in log scale) to `target_s` of simulated time."""
    want = max(1.0, target_s / max(step_s, 1e-9))
    return min(NICE_INTERVALS, key=lambda n: abs(math.log(n / want)))


def costed_interval(target_s: float, step_s: float, pause_s: float, share: float) -> int:
    """The round interval near `target_s` of training, lengthened until the pause is <= `share` of it."""
    base = nice_interval(target_s, step_s)
    need = pause_s / (share * max(step_s, 1e-9))
    if base >= need:
        return base
    return next((n for n in NICE_INTERVALS if n >= need), NICE_INTERVALS[-1])


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
    patience: int | None = None  # --fake-early-stopping: validations without improvement before a clean stop
    deepspeed: DsConfig | None = None  # the script's DeepSpeed config (--deepspeed_config), None if none
    saves: bool = True  # the script writes checkpoints at all (Megatron only when given --save)
    # Megatron's --exit-interval: the run ends after the first step it divides (last_step is that one), and
    # --exit-duration-in-mins: after the first step that ends (its evaluation and save included) past this
    # many simulated seconds since the process started. Either exit saves and evaluates no more (exit_pauses).
    exit_interval: int = 0
    exit_after_s: float | None = None
    failures: tuple[Failure, ...] = ()  # --fake-fail's strikes on processes, by step
    # The collective timeout of the job's process groups (torch's default; the framework and the script may
    # set their own), and the one in force until step 1 ends when it differs (torchtitan's init timeout,
    # which a run resumed past step 1 keeps to its end: it lowers the timeout only after step 1).
    nccl_timeout_s: float = WATCHDOG_TIMEOUT_MS / 1000.0
    nccl_init_timeout_s: float | None = None

    # HF Trainer's end (ENDING_HF, hf_cadence): the save also when the interval does not divide the last step
    # (`save_at_stop`, DefaultFlowCallback at max_steps under save_strategy "steps"), and the script's
    # evaluation only with --do_eval (`end_eval`, run_clm.py).
    save_at_stop: bool = False
    end_eval: bool = True
    # What follows the last step when no exit ends the run (ENDINGS), and whether a test-set evaluation ends
    # it (Megatron's do_test: the data has a test split).
    ending: str = "fakerun"
    test: bool = False
    # Megatron-core's rerun state machine checks every loss and local grad norm (v0.15's defaults: rerun mode
    # validate_results, the NaN check on unless dynamic fp16 loss scaling turns it off): a NaN ends the run.
    rerun_nan: bool = False
    # The saves of a script that saves only on a better validation loss (nanoGPT without
    # always_save_checkpoint); None: every step the save interval divides.
    best_saves: BestSaves | None = dataclasses.field(default=None, compare=False)
    # HF Trainer: the optimizer steps of one pass over the script's data and its examples, when the data's
    # size sets them rather than the run's length (--max_steps over a known dataset: its epochs are
    # ceil(max_steps / epoch_steps)); 0: the run's steps over its epochs.
    epoch_steps: int = 0
    examples: int = 0
    # nanoGPT's eval_only: the run evaluates its start (iteration 0) and ends there: no step, no save
    # (last_step is the start step: `steps` is 0).
    eval_only: bool = False

    def nan_rerun(self, step: int) -> str | None:
        """How Megatron-core's rerun state machine meets a NaN at `step`: "initial" (found, rerun in place,
        reproduced: save after the step before and exit 16), "again" (the run resumed from that save and is on
        the same GPU: exit 16 again, no save), None (no NaN, no check, or the process's first iteration, which
        it does not validate)."""
        if not self.rerun_nan or step not in self.job.nan_steps:
            return None
        if step > self.first_step:
            return "initial"
        # A run resumed right before a NaN step resumed from the save that the rerun asked for.
        return "again" if self.job.start_step == step - 1 > 0 else None

    def rerun_pauses(self, step: int) -> tuple[Pause, ...]:
        """The save that the rerun of NaN `step` makes before its exit: of the step before, as
        save_checkpoint_and_time(iteration) in train() (none in a run that does not save, or again)."""
        if self.nan_rerun(step) != "initial" or not self.saves:
            return ()
        return (("checkpoint", checkpoint.save_seconds(self.job, step - 1)),)

    def failure_for(self, step: int, rank: int, attempt: int = 0) -> Failure | None:
        """The failure that strikes `rank` during `step` of attempt `attempt`: the attempt-th of the job's
        failures (each strikes once: a restarted attempt meets the next one, not the one that ended it)."""
        if attempt >= len(self.failures):
            return None
        failure = self.failures[attempt]
        if failure.step == step and (
            rank == failure.rank or (failure.kind in ("node-loss", "nic-flap") and rank in failure.ranks)
        ):
            return failure
        return None

    def collective_timeout_s(self, step: int) -> float:
        """The collective timeout the process groups have while `step` runs."""
        if self.nccl_init_timeout_s is None or (self.first_step == 1 and step > 1):
            return self.nccl_timeout_s
        return self.nccl_init_timeout_s

    @property
    def steps(self) -> int:
        """Steps this run executes when nothing stops it early."""
        return self.last_step - self.first_step + 1

    @property
    def dataset_tokens(self) -> int:
        """Tokens in one pass over the training data: its examples' when known, else an epoch's share of the
        run's steps."""
        if self.examples:
            return self.examples * self.job.seq_len
        return self.job.total_steps * self.job.tokens_per_step // self.epochs

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per pass over the dataset."""
        return self.epoch_steps or max(1, math.ceil(self.job.total_steps / self.epochs))

    def epoch_of(self, step: int) -> int:
        """1-based epoch that `step` belongs to."""
        return min(self.epochs, (max(step, 1) - 1) // self.steps_per_epoch + 1)

    def evaluates_after(self, step: int) -> bool:
        """Whether an evaluation follows `step` (periodic; the end of the run is handled by the caller)."""
        return self.periodic_eval(step) and step != self.last_step

    def saves_after(self, step: int) -> bool:
        """Whether a checkpoint follows `step` (periodic; the end of the run is handled by the caller)."""
        return self.periodic_save(step) and step != self.last_step

    def periodic_eval(self, step: int) -> bool:
        """Whether `step` is one the evaluation interval divides (the last step's is the final evaluation);
        torchtitan's Validator.should_validate also takes step 1."""
        if self.eval_interval <= 0:
            return False
        return step % self.eval_interval == 0 or (self.ending == ENDING_TITAN and step == 1)

    def periodic_save(self, step: int) -> bool:
        """Whether `step` is one the save interval divides (or best_saves holds), in a run that saves."""
        if self.best_saves is not None:
            return self.saves and self.best_saves.saves_after(step)
        return self.saves and self.save_interval > 0 and step % self.save_interval == 0

    def exits_at(self, step: int) -> bool:
        """Whether Megatron's --exit-interval ends the run after `step`."""
        return self.exit_interval > 0 and step % self.exit_interval == 0

    def pauses_after(self, step: int, *, final: bool = False, exits: bool = False) -> tuple[Pause, ...]:
        """Evaluations and checkpoint that follow `step`, in order, with their simulated durations: the step
        loop's (loop_pauses), then those after it on the `final` step (end_pauses)."""
        return self.loop_pauses(step, final=final, exits=exits) + (
            self.end_pauses(step, exits=exits) if final else ()
        )

    def loop_pauses(self, step: int, *, final: bool = False, exits: bool = False) -> tuple[Pause, ...]:
        """The pauses inside the step loop after `step`: its intervals' on any step but the last; on the
        `final` one Megatron's loop still evaluates and saves at its intervals, and its exits (`exits`, or
        --exit-interval's step) save there whatever the interval (fakerun's other endings: none)."""
        if final and self.ending == ENDING_FAKERUN:
            return ()
        if self.ending == ENDING_TITAN:
            return self._titan_pauses(step)
        exiting = final and (exits or self.exits_at(step))
        out: list[Pause] = []
        if self.periodic_eval(step) if final else self.evaluates_after(step):
            out.append(("eval", eval_seconds(self.job, self.eval_iters, step)))
        at_stop = final and self.ending == ENDING_HF and self.save_at_stop
        saves = self.periodic_save(step) if final else self.saves_after(step)
        if saves or ((exiting or at_stop) and self.saves):
            out.append(("checkpoint", checkpoint.save_seconds(self.job, step)))
        return tuple(out)

    def _titan_pauses(self, step: int) -> tuple[Pause, ...]:
        """torchtitan's step loop after `step`: CheckpointManager.save at the interval or at training.steps
        (a run cut short by --fake-max-steps or --fake-max-time saves only at the interval), then the
        validation."""
        out: list[Pause] = []
        if self.saves and (self.periodic_save(step) or step == self.job.total_steps):
            out.append(("checkpoint", checkpoint.save_seconds(self.job, step)))
        if self.periodic_eval(step):
            out.append(("eval", eval_seconds(self.job, self.eval_iters, step)))
        return tuple(out)

    def end_pauses(self, step: int, *, exits: bool = False) -> tuple[Pause, ...]:
        """The pauses after the step loop ended on `step`, by the run's ending (ENDINGS). An exit (`exits`,
        or --exit-interval's step) ends the process in Megatron's loop; fakerun's ending then evaluates when
        the interval says so and saves."""
        exits = exits or self.exits_at(step)
        job = self.job
        if self.eval_only:
            return (("eval", eval_seconds(job, self.eval_iters, step)),)
        if self.ending == ENDING_FAKERUN:
            validation = ("eval", eval_seconds(job, self.eval_iters, step))
            save = (("checkpoint", checkpoint.save_seconds(job, step)),) if self.saves else ()
            return ((validation,) if not exits or self.periodic_eval(step) else ()) + save
        if exits or self.ending == ENDING_TITAN:
            return ()
        if self.ending == ENDING_HF:
            # The script's save_model() (the loop may have saved this step too), then evaluate() with do_eval.
            model = (("checkpoint", checkpoint.save_seconds(job, step, again=1)),) if self.saves else ()
            evaluation = (
                (("eval", eval_seconds(job, self.eval_iters, step, again=1)),) if self.end_eval else ()
            )
            return model + evaluation
        # Megatron's loop may have evaluated and saved after this step already: these draw their own times.
        validation = ("eval", eval_seconds(job, self.eval_iters, step, again=1))
        save = (("checkpoint", checkpoint.save_seconds(job, step, again=1)),) if self.saves else ()
        test = (("test", eval_seconds(job, self.eval_iters, step, again=2)),) if self.test else ()
        if self.ending == ENDING_MEGATRON:
            # pretrain() saves unless the loop's interval just did, then evaluates both splits.
            return (() if self.periodic_save(step) else save) + (validation, *test)
        # The 2021-22 pretrain(): validation, a save whatever the loop saved, then the test split.
        return (validation, *save, *test)

    def pause_seconds(self, step: int, *, final: bool = False) -> float:
        """Total simulated time of the pauses after `step`."""
        return sum(seconds for _, seconds in self.pauses_after(step, final=final))

    def periodic_pause_seconds(self, step: int) -> float:
        """Simulated time of the evaluation and save the intervals put after `step`, last step or not (what
        Megatron has spent when it checks --exit-duration-in-mins)."""
        seconds = eval_seconds(self.job, self.eval_iters, step) if self.periodic_eval(step) else 0.0
        return seconds + (checkpoint.save_seconds(self.job, step) if self.periodic_save(step) else 0.0)


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
    patience: int | None = None,
    saves: bool = True,
    exit_interval: int = 0,
    exit_after_s: float | None = None,
    ending: str = ENDING_FAKERUN,
    test: bool = False,
    rerun_nan: bool = False,
    save_best: float | None = None,
    eval_only: bool = False,
) -> RunPlan:
    """The run of `job` from its start step: cadences default to round numbers fitted to the step time;
    `save_best`: the script saves only on a validation loss below the best so far, this one before the run;
    `eval_only`: nanoGPT's, which evaluates iteration 0 and stops there (a resumed run trains on)."""
    step_s = compute.expected_step_time(job)
    first = job.start_step + 1
    # train.py breaks out of its loop on `iter_num == 0 and eval_only`: only a run from the start stops.
    eval_only = eval_only and job.start_step == 0
    last = job.start_step if eval_only else _last_step(job, max_steps, exit_interval)
    iters = EVAL_ITERS if eval_iters is None else eval_iters
    if last < first and not eval_only:
        raise ValueError(f"nothing to run: start step {job.start_step} is the last of {job.total_steps}")
    log_every = log_interval or nice_interval(LOG_EVERY_S, step_s)
    plan = RunPlan(
        job=job,
        first_step=first,
        last_step=last,
        log_interval=log_every,
        grid_interval=grid_interval(step_s, log_every),
        eval_interval=(
            costed_interval(EVAL_EVERY_S, step_s, eval_seconds(job, iters, 0), EVAL_SHARE)
            if eval_interval is None
            else eval_interval
        ),
        save_interval=(
            costed_interval(
                max(SAVE_EVERY_S, SAVE_S_PER_GB * checkpoint.checkpoint_bytes(job.model) / 1e9),
                step_s,
                checkpoint.save_seconds(job, 0),
                SAVE_SHARE,
            )
            if save_interval is None
            else save_interval
        ),
        eval_iters=iters,
        epochs=max(1, math.ceil(epochs)) if epochs else 1,
        max_time_s=max_time_s,
        max_steps=max_steps,
        patience=patience,
        saves=saves and not eval_only,  # its save is guarded by iter_num > 0
        exit_interval=exit_interval,
        exit_after_s=exit_after_s,
        ending=ending,
        test=test,
        rerun_nan=rerun_nan,
        eval_only=eval_only,
    )
    if save_best is None or eval_only:
        return plan
    return dataclasses.replace(plan, best_saves=BestSaves(job, plan.eval_interval, save_best))


class BestSaves:
    """Which evaluations a script follows with a save because the validation loss beats the best so far
    (nanoGPT: `losses['val'] < best_val_loss`): a pure function of the job, worked out as far as asked."""

    def __init__(self, job: JobSpec, eval_interval: int, best: float) -> None:
        self.job = job
        self.interval = eval_interval
        # The run's start is evaluated and counts toward the best (no save follows it): the first multiple of
        # the interval at or after it is the next evaluation to look at.
        self._next = -(-job.start_step // eval_interval) * eval_interval if eval_interval > 0 else 0
        self._best = best
        self._saves: set[int] = set()

    def saves_after(self, step: int) -> bool:
        """Whether the evaluation after `step` improves on every one before it (and the initial best)."""
        if self.interval <= 0 or step % self.interval:
            return False
        while self._next <= step:
            value = loss.eval_loss(self.job, self._next)
            if value < self._best:
                self._best = value
                if self._next > self.job.start_step:
                    self._saves.add(self._next)
            self._next += self.interval
        return step in self._saves


def _last_step(job: JobSpec, max_steps: int | None, exit_interval: int) -> int:
    """The last step a run of `job` from its start step executes: the total, --fake-max-steps of them, or
    the first step --exit-interval divides."""
    last = job.total_steps if max_steps is None else min(job.total_steps, job.start_step + max_steps)
    if exit_interval > 0:
        last = min(last, (job.start_step // exit_interval + 1) * exit_interval)
    return last


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
    last = 0 if run.eval_only else _last_step(job, run.max_steps, run.exit_interval)
    return dataclasses.replace(run, job=job, first_step=1, last_step=last)


def usual_eval_seconds(job: JobSpec, iters: int) -> float:
    """One evaluation without jitter or stall: `iters` global batches forward only (2N FLOPs per token) at
    the job's MFU."""
    tokens = iters * job.tokens_per_step
    flops = 2.0 * job.model.active_params * tokens
    rate = job.world_size * compute.mfu_center(job) * job.gpu.peak_bf16_tflops * 1e12
    return flops / rate * (1.0 + EVAL_MARGIN)


def eval_seconds(job: JobSpec, iters: int, step: int, again: int = 0) -> float:
    """One evaluation after `step` (the `again`-th there): the usual time, jittered, now and then stalled
    (validation shards read cold from shared storage)."""
    jitter = 1.0 + 0.03 * rand.normal(job.seed, "eval-time", *checkpoint.pause_keys(step, again))
    return usual_eval_seconds(job, iters) * jitter * checkpoint.storage_stall(job, "eval-stall", step, again)


# Start-up bands, simulated seconds on a real GPU node. The interpreter with `import torch` (CUDA build, its
# libraries paged in from a shared file system) and the training framework: 3-15 s, all ranks of a node
# reading the same files at once (the reference machine's CPU-only wheel alone takes 1.4 s, 06_timing).
IMPORT_S = (3.0, 15.0)
# The CUDA context and the caching allocator's first segment (torch.cuda.set_device + the first tensor).
CUDA_S = (1.0, 3.0)


@dataclass(frozen=True)
class StartupTimes:
    """Simulated seconds of each start-up phase of one rank, from its fork to its first step."""

    import_s: float  # interpreter start, `import torch`, the framework: before the script prints anything
    cuda_s: float  # CUDA context creation, before init_process_group
    nccl_s: float  # NCCL communicator set-up after the store barrier every rank passes together
    tokenizer_s: float
    dataset_s: float
    model_init_s: float
    load_s: float  # checkpoint or initial weights; 0 when training from scratch

    @property
    def to_init_s(self) -> float:
        """From the fork to init_process_group's store barrier (the rank's own share, before it waits)."""
        return self.import_s + self.cuda_s

    @property
    def after_init_s(self) -> float:
        """From the barrier to the first step."""
        return self.nccl_s + self.tokenizer_s + self.dataset_s + self.model_init_s + self.load_s

    @property
    def total_s(self) -> float:
        """All of start-up that is this rank's own (waiting for the slowest rank at the barrier aside)."""
        return self.to_init_s + self.after_init_s


def _clamp(x: float, band: tuple[float, float]) -> float:
    """`x` folded back into the band: distinct draws stay distinct (a hard clamp gives several ranks the
    same duration to the microsecond, a visible tell when their lines carry the same timestamp)."""
    low, high = band
    if x < low:
        x = low + 0.25 * (low - x)
    elif x > high:
        x = high - 0.25 * (x - high)
    return min(high, max(low, x))


def startup_times(job: JobSpec, rank: int, *, resume: bool) -> StartupTimes:
    """How long this rank spends in each start-up phase: per node and per rank draws, no two alike."""
    seed = job.seed
    node = rank // max(job.nproc_per_node, 1)

    def vary(stream: str, base: float, spread: float = 0.15) -> float:
        return base * (1.0 + spread * (2.0 * rand.uniform(seed, stream, rank) - 1.0))

    # A node's import time is set by its file system and page cache (log-normal around 6 s); its ranks
    # read the same files at once and differ by ~15%.
    node_import = 6.0 * math.exp(0.35 * rand.normal(seed, "st-import-node", node))
    import_s = _clamp(node_import * (1.0 + 0.15 * rand.normal(seed, "st-import", rank)), IMPORT_S)
    cuda_s = CUDA_S[0] + (CUDA_S[1] - CUDA_S[0]) * rand.uniform(seed, "st-cuda", rank) ** 1.5
    # Building a model on the meta device and sharding it costs ~0.1 s per billion parameters per layer
    # group; NCCL init grows with log(world size) (bootstrap all-gather, ring and tree search).
    init = 1.5 + 0.25 * job.model.params / 1e9 / max(job.tp * job.pp, 1) ** 0.5
    nccl = 0.6 + 0.45 * math.log2(max(job.world_size, 2))
    # A resumption reads the whole checkpoint; a fine-tune the pretrained weights (bf16) before step one.
    if resume:
        load = checkpoint.load_seconds(job)
    else:
        load = checkpoint.load_seconds(job, full=False) if job.regime == "finetune" else 0.0
    return StartupTimes(
        import_s=import_s,
        cuda_s=cuda_s,
        nccl_s=vary("st-nccl", nccl, 0.1),
        tokenizer_s=vary("st-tok", 0.4),
        dataset_s=vary("st-data", 2.0 + 0.4 * math.log2(max(job.world_size, 2))),
        model_init_s=vary("st-init", init),
        load_s=load,
    )


def rendezvous_seconds(seed: int, nnodes: int, attempt: int = 0) -> float:
    """The agent's rendezvous, from `Rendezvous'ing worker group` to `Rendezvous complete`.

    One node: creating the store and one round of it, ~0.1-0.35 s (torchrun 2.13 recorded 0.24 and 0.31 s,
    04_failure and 07_misc LOGLEVEL_INFO). Several: the agents are started by srun or by hand within
    seconds of each other and every one waits for the last, more nodes wait longer.
    """
    base = 0.1 + 0.25 * rand.uniform(seed, "rdzv-one", attempt)
    if nnodes <= 1:
        return base
    spread = 0.4 + 0.6 * math.log2(nnodes)
    return base + spread * (0.5 + rand.uniform(seed, "rdzv-many", attempt))
