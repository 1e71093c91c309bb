"""The simulated job of a command line: presets, the script's argument hints and --fake-* options."""

from __future__ import annotations

import dataclasses
import math
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from fakerun import dialects, presets
from fakerun.dialects.megatron import MegatronDialect
from fakerun.dialects.megatron_ds import MegatronDeepSpeedDialect
from fakerun.frameworks import hf_datasets, hf_deepspeed, megatron_argparse
from fakerun.hints import HintError, Hints, apply_arch, parse_hints
from fakerun.limits import MAX_SEED, MAX_STEPS, MAX_WALL_STEP_S
from fakerun.options import CommandLine, FakeOptions
from fakerun.sim import checkpoint, compute, failures, instruct, memory, rand
from fakerun.sim.job import JobSpec, make_job
from fakerun.sim.run import (
    DEFAULT_LADDER,
    ENDING_MEGATRON,
    RunPlan,
    eval_seconds,
    make_run,
    pick_default_model,
    startup_times,
)


class JobConfigError(Exception):
    """The job cannot be simulated as asked; the message is one line for the user."""


def draw_seed(shared_key: str | None = None) -> int:
    """A fresh seed for a run given none: from os.urandom, or from a key every agent of the job shares.

    Agents on other machines must simulate the same job (the rendezvous compares a digest of it), so a job
    whose nodes are played by several launchers derives its seed from what they share (the run id).
    """
    if shared_key is not None:
        return zlib.crc32(shared_key.encode("utf-8")) * 0x9E3779B1 & MAX_SEED
    return int(struct.unpack("<Q", os.urandom(8))[0]) & MAX_SEED


# HF TrainingArguments' defaults where the script's arguments are silent: AdamW at 5e-5, a linear decay to 0,
# no warm-up, 3 epochs, no gradient accumulation; data parallelism only (the Trainer shards with DDP, FSDP or
# DeepSpeed ZeRO: it has no tensor or pipeline parallel layout).
HF_LR = 5e-5
HF_EPOCHS = 3.0
HF_BATCH = 8  # per_device_train_batch_size
# TrainingArguments' defaults: logging_strategy and save_strategy "steps", every 500; eval_strategy "no".
HF_LOGGING_STEPS = 500
HF_SAVE_STEPS = 500
# torch.amp.GradScaler's defaults, which accelerate's fp16 mixed precision uses as they are.
HF_INIT_SCALE = 2.0**16
HF_GROWTH_INTERVAL = 2000
# A fine-tuning dataset (instruction / chat data): ~5k-100k examples (Alpaca 52k, Dolly 15k, OpenHermes 1M is
# the rare large one), log-uniform by seed.
FINETUNE_EXAMPLES = (5_000, 100_000)


def finetune_examples(seed: int) -> int:
    """Examples in the fine-tuning dataset of a run with this seed."""
    lo, hi = FINETUNE_EXAMPLES
    return int(lo * (hi / lo) ** rand.uniform(seed, "ft-examples"))


def _hf_defaults(kw: dict[str, Any], hints: Hints) -> None:
    """HF Trainer's defaults for what its arguments leave unset."""
    kw.setdefault("lr", HF_LR)
    kw.setdefault("micro_batch", HF_BATCH)
    # from_pretrained loads fp32 weights unless --torch_dtype says otherwise; --bf16/--fp16 autocast them.
    kw.setdefault("state_layout", "fp32")
    # DDP (no sharding without --deepspeed or --fsdp) and every activation kept (no --gradient_checkpointing).
    kw.setdefault("zero_stage", 0)
    kw.setdefault("recompute", "none")
    if "lr_schedule" not in kw:
        kw["lr_schedule"] = "linear"
        kw.setdefault("min_lr", 0.0)
    if hints.warmup_ratio is None:
        kw.setdefault("warmup_steps", 0)
    kw.setdefault("tp", 1)
    kw.setdefault("pp", 1)
    if "global_batch" not in kw:
        kw.setdefault("grad_accum", 1)
    # --fp16's loss scaler: the DeepSpeed engine's (its config's fp16 section) under --deepspeed, else
    # accelerate's torch.amp.GradScaler (init_scale 2**16, halved at each overflow, doubled after
    # growth_interval 2000 clean steps; no hysteresis).
    ds = hints.deepspeed
    scaler = (
        (2.0**ds.initial_scale_power, ds.hysteresis, ds.loss_scale_window, ds.min_loss_scale)
        if ds is not None
        else (HF_INIT_SCALE, 1, HF_GROWTH_INTERVAL, 1.0)
    )
    keys = ("initial_loss_scale", "hysteresis", "loss_scale_window", "min_loss_scale")
    for key, value in zip(keys, scaler, strict=True):
        kw.setdefault(key, value)


def _hf_default_notice(hints: Hints, model: presets.ModelSpec) -> str:
    """The launcher's line naming the model simulated when an HF script's arguments name none it can read."""
    what = (
        f"{hints.model_name!r} names no architecture fakerun can tell"
        if hints.model_name
        else ("no --model_name_or_path, --config_name or --model_type")
    )
    return f"{what}; simulating {model.display_name} ({model.params:,} parameters), fakerun's default model"


def _default_notice(cmd: CommandLine, model: presets.ModelSpec, world: int) -> str:
    """The launcher's line naming the model simulated when the script's arguments name none."""
    script = os.path.basename(cmd.torchrun.training_script)
    return (
        f"{script}'s arguments name no model: simulating {model.display_name} ({model.params:,} parameters), "
        f"the largest of fakerun's default models whose steps take a second or two on {world} GPUs"
    )


def _hf_data(hints: Hints, probe: JobSpec, seed: int) -> tuple[hf_datasets.Data, int]:
    """The script's training data (a known dataset's blocks, else a drawn fine-tuning set's size) and its
    update steps per epoch (Trainer.set_initial_training_values)."""
    data = hf_datasets.train_data(hints.settings, probe.seq_len, finetune_examples(seed))
    return data, hf_datasets.steps_per_epoch(data.examples, probe.micro_batch, probe.dp, probe.grad_accum)


def _hf_steps(
    hints: Hints, data: hf_datasets.Data, per_epoch: int, epochs: float
) -> tuple[int, tuple[str, ...]]:
    """max_steps of an HF run without --max_steps: its epochs over the script's data, and the notice naming
    the size assumed for data fakerun does not know."""
    steps = math.ceil(epochs * per_epoch)
    source = hints.sources.get("epochs", "--num_train_epochs")
    if steps > MAX_STEPS:
        raise JobConfigError(
            f"script argument {source}: {epochs:g} epochs of {per_epoch} steps are {steps} steps, more than "
            f"{MAX_STEPS}; give --max_steps"
        )
    if data.known:
        return steps, ()
    what = f"the size of {data.named}" if data.named else "the training data's size"
    return steps, (
        f"{what} is unknown; assuming {data.examples:,} examples: {epochs:g} epochs of {per_epoch:,} steps "
        f"({steps:,} steps; --max_steps sets the length)",
    )


def hf_cadence(run: RunPlan, hints: Hints) -> RunPlan:
    """The run with TrainingArguments' log, evaluation and save intervals (strategies, steps, defaults)."""
    total = run.job.total_steps

    def steps(key: str, default: int) -> int:
        # A fraction below 1 is of the run's max_steps, rounded up (TrainingArguments.__post_init__).
        ratio = hints.cadence_ratio.get(key)
        return math.ceil(ratio * total) if ratio is not None else hints.cadence.get(key) or default

    def interval(strategy: str, steps_given: int) -> int:
        if strategy == "epoch":
            return run.steps_per_epoch
        return steps_given if strategy == "steps" else 0

    strategy = hints.strategies
    log = steps("log_interval", HF_LOGGING_STEPS)
    # An interval longer than the run: logging_strategy "no" logs no step (the final train dict still prints).
    log_interval = interval(strategy.get("logging", "steps"), log) or total + 1
    # eval_strategy "steps" without --eval_steps evaluates every logging_steps; "no" ignores --eval_steps.
    eval_interval = interval(strategy.get("eval", "no"), steps("eval_interval", log))
    save = strategy.get("save", "steps")
    # save_strategy "best" saves when an evaluation finds a new best loss: each one, as the loss falls.
    save_interval = eval_interval if save == "best" else interval(save, steps("save_interval", HF_SAVE_STEPS))
    return dataclasses.replace(
        run,
        log_interval=log_interval,
        eval_interval=eval_interval,
        save_interval=save_interval,
        # DefaultFlowCallback saves at max_steps under save_strategy "steps", whatever save_steps divides.
        save_at_stop=save == "steps",
        # TrainingArguments turns do_eval on for any eval_strategy but "no"; run_clm.py evaluates after
        # training only with it.
        end_eval=hints.do_eval or strategy.get("eval", "no") != "no",
    )


def _job(bundle: presets.PresetBundle, model: presets.ModelSpec, nnodes: int, npn: int, **kw: Any) -> JobSpec:
    return make_job(model, bundle.cluster, bundle.storage, nnodes=nnodes, nproc_per_node=npn, **kw)


def _default_model(
    bundle: presets.PresetBundle, nnodes: int, npn: int, kw: dict[str, Any]
) -> presets.ModelSpec:
    """The largest ladder model whose steps take about a second or two on this many GPUs."""
    candidates: list[tuple[presets.ModelSpec, float]] = []
    for name in DEFAULT_LADDER:
        model = presets.load_model(name)
        try:
            job = _job(bundle, model, nnodes, npn, **kw)
        except ValueError:
            continue
        candidates.append((model, compute.expected_step_time(job)))
    if not candidates:
        return bundle.model
    return pick_default_model(candidates)


def build_run(
    cmd: CommandLine,
    bundle: presets.PresetBundle,
    *,
    nnodes: int,
    nproc_per_node: int,
    model_given: bool,
    fresh_seed: int | None = None,
) -> tuple[RunPlan, Hints]:
    """The run this command line asks for; JobConfigError with one line when it cannot be."""
    fake = cmd.fake
    args = cmd.torchrun
    try:
        hints = parse_hints(args.training_script, args.training_script_args)
    except HintError as exc:
        raise JobConfigError(str(exc)) from None
    world = nnodes * nproc_per_node
    refused = hints.world_exit(world) if hints.world_exit is not None else None
    if not args.use_env:
        # torch.distributed.launch passes --local-rank=N, which the older Megatron parsers do not know.
        usage = _legacy_megatron_usage(hints, args.training_script, args.training_script_args)
        refused = (usage, 2) if usage is not None else refused
    if refused is not None:
        # Every rank dies at start: the job it would have run is never built (its batch may not even divide).
        hints = Hints(
            style=hints.style,
            settings=hints.settings,
            script_exit=refused,
            script_stdout=hints.script_stdout,
            world_stdout=hints.world_stdout,
        )
    if hints.script_exit is not None and hints.world_stdout is not None:
        hints = dataclasses.replace(hints, script_stdout=hints.world_stdout(world))
    kw: dict[str, Any] = dict(hints.job)
    # --fake-seed (or FAKERUN_SEED) replays a run; the script's own --seed is deterministic like a real one;
    # otherwise each run draws a fresh seed (the launcher passes it; the metrics file's run record keeps it).
    if "seed" in fake.sources:
        kw["seed"] = fake.seed
    elif hints.seed is not None:
        kw["seed"] = hints.seed
    else:
        kw["seed"] = fake.seed if fresh_seed is None else fresh_seed
    if fake.start_step:
        kw["start_step"] = fake.start_step
    kw.setdefault("regime", hints.regime)
    if hints.style == "hf":
        _hf_defaults(kw, hints)
    epochs = hints.epochs
    try:
        if model_given:
            model = bundle.model
        elif hints.model is not None:
            model = hints.model
        else:
            # The default model is the one for this many GPUs whatever step the run resumes at.
            model = _default_model(bundle, nnodes, nproc_per_node, {**kw, "start_step": 0})
            if hints.style == "hf":
                hints = dataclasses.replace(hints, notices=(*hints.notices, _hf_default_notice(hints, model)))
            elif not hints.arch and not hints.notices and hints.script_exit is None:
                # No silent default: say what stands in for the model the arguments do not name. A job whose
                # ranks die at start (a refusal) builds no model, so nothing stands in for one.
                assumed = _default_notice(cmd, model, nnodes * nproc_per_node)
                hints = dataclasses.replace(hints, notices=(assumed,))
        if hints.arch:
            model = apply_arch(model, hints.arch)
        hf_epoch: tuple[hf_datasets.Data, int] | None = None
        if hints.style == "hf":
            probe = _job(bundle, model, nnodes, nproc_per_node, allow_oom=True, **{**kw, "start_step": 0})
            data, per_epoch = hf_epoch = _hf_data(hints, probe, kw["seed"])
            if "total_steps" in kw:
                # --max_steps: num_train_epochs = ceil(max_steps / num_update_steps_per_epoch).
                epochs = float(math.ceil(kw["total_steps"] / per_epoch))
            else:
                epochs = HF_EPOCHS if epochs is None else epochs
                kw["total_steps"], notice = _hf_steps(hints, data, per_epoch, epochs)
                hints = dataclasses.replace(hints, notices=(*hints.notices, *notice))
        if kw["regime"] == "finetune" and "total_steps" not in kw:
            # A fine-tune runs its epochs over an instruction dataset, not the preset's pre-training corpus.
            probe = _job(bundle, model, nnodes, nproc_per_node, allow_oom=True, **{**kw, "start_step": 0})
            if hints.examples is not None:  # torchtune: its config's dataset, through the recipe's sampler
                per_epoch = instruct.steps_per_epoch(
                    hints.examples, probe.micro_batch, probe.dp, probe.grad_accum
                )
            else:
                per_epoch = math.ceil(finetune_examples(kw["seed"]) / probe.global_batch)
            kw["total_steps"] = max(1, math.ceil((epochs or 1.0) * per_epoch))
        if hints.epochs is not None and "total_steps" not in kw:
            probe = _job(bundle, model, nnodes, nproc_per_node, allow_oom=True, **{**kw, "start_step": 0})
            # One epoch is the preset's run over its dataset; HF Trainer's --num_train_epochs repeats it.
            steps = math.ceil(hints.epochs * probe.total_steps)
            if steps > MAX_STEPS:
                source = hints.sources.get("epochs", "--num_train_epochs")
                raise JobConfigError(
                    f"script argument {source}: {hints.epochs:g} epochs of {probe.total_steps} steps are "
                    f"{steps} steps, more than {MAX_STEPS}"
                )
            kw["total_steps"] = steps
        if hints.train_tokens is not None and "total_steps" not in kw:
            # llm.c without -x: one epoch, train_num_batches = the split's tokens // total batch size.
            probe = _job(bundle, model, nnodes, nproc_per_node, allow_oom=True, **{**kw, "start_step": 0})
            steps = hints.train_tokens // probe.tokens_per_step
            if not 1 <= steps <= MAX_STEPS:
                raise JobConfigError(
                    f"one epoch of {hints.train_tokens} tokens in steps of {probe.tokens_per_step} tokens is "
                    f"{steps} steps (the simulation runs 1 to {MAX_STEPS}); give -x"
                )
            kw["total_steps"] = steps
        if hints.warmup_ratio is not None and "warmup_steps" not in kw:
            probe = _job(bundle, model, nnodes, nproc_per_node, allow_oom=True, **{**kw, "start_step": 0})
            kw["warmup_steps"] = math.ceil(hints.warmup_ratio * probe.total_steps)
        if epochs is not None:
            kw["epochs"] = max(1, math.ceil(epochs))
        if fake.start_step:
            probe = _job(bundle, model, nnodes, nproc_per_node, allow_oom=True, **{**kw, "start_step": 0})
            _check_start_step(fake, probe)
        # A job that does not fit starts and runs out of memory at its first step, as on real GPUs.
        job = _job(bundle, model, nnodes, nproc_per_node, allow_oom=True, **kw)
        style = dialects.choose(cmd.fake.trainer, hints.style, cmd.fake.log_format)
        ending, test = dialects.ending(style, hints.settings)
        run = make_run(
            job,
            max_steps=fake.max_steps,
            max_time_s=fake.max_time,
            patience=fake.early_stopping,
            epochs=epochs,
            log_interval=hints.cadence.get("log_interval"),
            eval_interval=hints.cadence.get("eval_interval"),
            save_interval=hints.cadence.get("save_interval"),
            eval_iters=hints.cadence.get("eval_iters"),
            saves=_saves(hints, style),
            ending=ending,
            test=test,
            exit_interval=hints.cadence.get("exit_interval", 0),
            # --exit-duration-in-mins 0 is falsy: Megatron never checks it.
            exit_after_s=60.0 * minutes if (minutes := hints.cadence.get("exit_minutes")) else None,
            rerun_nan=ending == ENDING_MEGATRON and _validates_results(job, hints.settings),
            # A script that saves only on a better validation loss (nanoGPT's always_save_checkpoint=False)
            # names the best one before the run in its settings.
            save_best=float(best) if (best := hints.settings.get("save_best")) else None,
            eval_only=bool(hints.cadence.get("eval_only")),
        )
        if hf_epoch is not None:
            # The epoch in the Trainer's logs is the step over the data's steps per epoch, not the run's.
            run = dataclasses.replace(run, examples=hf_epoch[0].examples, epoch_steps=hf_epoch[1])
            run = hf_cadence(run, hints)
        if fake.fail:
            run = _with_failures(run, fake.fail)
    except (ValueError, HintError) as exc:
        raise JobConfigError(str(exc)) from None
    if hints.deepspeed is not None:
        ds = hints.deepspeed
        if hints.style == "hf":  # the Trainer fills the config's "auto" values from its arguments
            # ... and refuses, on every rank, the values that contradict them (world size and the run's
            # length included: only the built job knows them all, and one message lists them together).
            death = hf_deepspeed.refusal(ds, run.job, hints.settings, args.training_script)
            if death is not None and hints.script_exit is None:
                hints = dataclasses.replace(hints, script_exit=death)
            ds = hf_deepspeed.filled(ds, run.job, hints.settings)
        run = dataclasses.replace(run, deepspeed=ds)
    run = _with_timeouts(run, style, hints, fake.nccl_timeout)
    _check_waits(run, fake.speed)
    return run, hints


def _check_start_step(fake: FakeOptions, probe: JobSpec) -> None:
    """JobConfigError when --fake-start-step leaves nothing to run, naming the model and its run's length."""
    if fake.start_step < probe.total_steps:
        return
    origin = fake.sources.get("start_step", "command line")
    where = "" if origin == "command line" else f" (from {origin})"
    raise JobConfigError(
        f"argument --fake-start-step: {fake.start_step} is not before the last step of the run: "
        f"{probe.model.display_name} trains {probe.total_steps:,} steps here{where}"
    )


def _legacy_megatron_usage(hints: Hints, script: str, args: Sequence[str]) -> str | None:
    """argparse's refusal of `--local-rank=N` by 2021-22 Megatron-LM or Megatron-DeepSpeed (their
    `--local_rank`): the usage and error every rank prints before exiting with code 2."""
    if hints.style == MegatronDeepSpeedDialect.name:
        words = megatron_argparse.MEGATRON_DEEPSPEED
    elif hints.style == MegatronDialect.name and MegatronDialect.legacy_for(hints.settings):
        words = megatron_argparse.LEGACY_MEGATRON
    else:
        return None
    return megatron_argparse.refusal(script, args, words)


def _validates_results(job: JobSpec, settings: Mapping[str, str]) -> bool:
    """Whether Megatron-core's rerun state machine rejects a NaN loss: --rerun-mode validate_results (its
    default) with check_for_nan_in_loss_and_grad, which --no-check-for-nan-in-loss-and-grad and validate_args
    turn off (dynamic fp16 loss scaling: "NaNs in grads / loss are signal to the loss scaler")."""
    if settings.get("rerun_mode", "validate_results") != "validate_results":
        return False
    if "no_check_for_nan_in_loss_and_grad" in settings:
        return False
    return job.precision != "fp16" or job.static_loss_scale is not None


def _with_failures(run: RunPlan, specs: tuple[str, ...]) -> RunPlan:
    """The run with --fake-fail's failures: spikes, NaNs, slow nodes and recovered NIC outages go into the
    physics, the rest strike ranks."""
    planned = failures.plan_failures(
        run.job, specs, first=run.first_step, last=run.last_step, step_s=compute.expected_step_time(run.job)
    )
    job = run.job
    for failure in planned:
        job = failures.with_failure(job, failure)
    strikes = tuple(f for f in planned if f.strikes)
    return dataclasses.replace(run, job=job, failures=strikes)


def _with_timeouts(run: RunPlan, style: str, hints: Hints, given: float | None) -> RunPlan:
    """The run with its collective timeouts: --fake-nccl-timeout's for every step, else the script's
    arguments' over the defaults of the framework the job prints as (`style`)."""
    if given is not None:
        return dataclasses.replace(run, nccl_timeout_s=given, nccl_init_timeout_s=None)
    timeout, first = dialects.collective_timeouts(style)
    timeout = hints.timeouts.get("nccl_timeout_s", timeout)
    if first is not None:
        first = hints.timeouts.get("nccl_init_timeout_s", first)
    return dataclasses.replace(run, nccl_timeout_s=timeout, nccl_init_timeout_s=first)


def _saves(hints: Hints, style: str) -> bool:
    """Whether the script saves checkpoints: Megatron's only with --save (its folder is a setting), in the
    dialect `style` the job prints (--fake-trainer fakerun on Megatron's arguments saves as fakerun does)."""
    option = dialects.DIALECTS[style].hints.save_option
    return option is None or bool(hints.settings.get(option))


def _check_waits(run: RunPlan, speed: float) -> None:
    """JobConfigError when start-up, a step, an evaluation or a checkpoint would pace past MAX_WALL_STEP_S."""
    # Workers sleep until absolute deadlines: a wait of billions of seconds is a job that never moves (and
    # beyond ~9e9 s, a deadline the kernel cannot even express).
    job = run.job
    waits = {
        "start-up": startup_times(job, 0, resume=job.start_step > 0).total_s,
        "step": compute.expected_step_time(job),
        "evaluation": eval_seconds(job, run.eval_iters, run.first_step),
        "checkpoint save": checkpoint.save_seconds(job, run.first_step),
        "checkpoint load": checkpoint.load_seconds(job),
    }
    if job.oom_at_step is not None:
        # The job dies at its first step, out of memory, before any step, evaluation or save would end.
        waits = {k: v for k, v in waits.items() if k in ("start-up", "checkpoint load")}
    gpus = f"{job.world_size} GPU" + ("s" if job.world_size != 1 else "")
    for what, seconds in waits.items():
        wall = seconds / speed
        if not wall <= MAX_WALL_STEP_S:  # also catches NaN
            raise JobConfigError(
                f"one {what} of {job.model.name} on {gpus} would take {wall:.3g} s of wall "
                f"time at speed {speed:g} (at most {MAX_WALL_STEP_S:g} s); use a higher --fake-speed, more "
                "GPUs or a smaller model"
            )


def check_report(job: JobSpec) -> tuple[int, str]:
    """--fake-check: (exit code, the feasibility line): 0 when the job fits in GPU memory, 1 when not."""
    fits, line = memory.feasibility(job)
    return (0 if fits else 1), line
