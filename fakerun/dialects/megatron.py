"""Megatron-LM (Megatron-core v0.15, or the 2021-22 format for older scripts): start-up, iteration lines,
memory reports, timers, validation, saves."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

from fakerun.dialects.base import HintRule, Line, Output, Seat, seconds_time, words
from fakerun.dialects.events import (
    CheckpointLoaded,
    CheckpointSaved,
    CheckpointSaving,
    EvalDone,
    EvalStarted,
    Event,
    JobStarted,
    MemoryReport,
    ModelBuilt,
    ProcessGroupInitializing,
    ProcessGroupReady,
    RerunExit,
    ResultRejected,
    StepDone,
    TokenizerLoaded,
    TrainingFinished,
    TrainingStarted,
    TrainingStopped,
    WorkerStarted,
)
from fakerun.dialects.files import Artifact, SaveRequest
from fakerun.frameworks import megatron_args
from fakerun.sim import checkpoint
from fakerun.sim.checkpoint import checkpoint_dir
from fakerun.sim.job import JobSpec
from fakerun.sim.megatron import Theory
from fakerun.sim.run import ENDING_MEGATRON, ENDING_MEGATRON_2022, RunPlan

_MIB = 1024.0**2
# The ranks a kind of event prints on (_AUDIENCES): all, print_rank_0's, print_rank_last's, and data-parallel
# rank 0 of each model-parallel shard.
Role = Literal["every", "first", "last", "dp_first"]
SAVE_DIR = "checkpoints"  # the folder of a job that saves without --save (a Megatron dialect forced on it)
# Arguments of Megatron-LM before mid-2022 that newer versions renamed, removed or only warn about
# (--checkpoint-activations deprecated in 2022, --activations-checkpoint-* renamed to --recompute-* in April
# 2022, --DDP-impl removed in August 2023): a script passing one was written for the older log format.
LEGACY_OPTIONS = frozenset(
    {
        "checkpoint_activations",
        "activations_checkpoint_method",
        "activations_checkpoint_num_layers",
        "distribute_checkpointed_activations",
        "DDP_impl",
    }
)

# The options that turn activation recompute on (validate_args: --checkpoint-activations is full recompute).
RECOMPUTE_OPTIONS = frozenset({"recompute_granularity", "recompute_activations", "checkpoint_activations"})

# Options only Megatron-LM spells so (its argparse takes dashes only).
MEGATRON_OPTIONS = (
    "num-layers hidden-size ffn-hidden-size num-attention-heads num-query-groups group-query-attention "
    "max-position-embeddings seq-length micro-batch-size global-batch-size min-lr lr-warmup-iters "
    "lr-warmup-fraction lr-warmup-samples lr-decay-style lr-decay-iters train-iters train-samples "
    "tensor-model-parallel-size pipeline-model-parallel-size expert-model-parallel-size num-experts "
    "moe-router-topk recompute-granularity recompute-activations recompute-method "
    "use-distributed-optimizer data-path tokenizer-type tokenizer-model vocab-file merge-file "
    "save-interval eval-interval eval-iters log-interval distributed-backend sequence-parallel "
    "use-flash-attn use-mcore-models normalization position-embedding-type disable-bias-linear "
    "untie-embeddings-and-output-weights clip-grad adam-beta1 adam-beta2 init-method-std "
    "attention-dropout hidden-dropout transformer-impl initial-loss-scale loss-scale-window loss-scale "
    "min-loss-scale hysteresis exit-interval exit-duration-in-mins checkpoint-activations "
    "activations-checkpoint-method activations-checkpoint-num-layers distribute-checkpointed-activations "
    "DDP-impl hybrid-layer-pattern hybrid-override-pattern"
)
HINTS = HintRule(
    script=re.compile(r"megatron|pretrain_(gpt|bert|t5|mamba|hybrid|retro|ict|vlm|vision)"),
    exact=words(MEGATRON_OPTIONS),
    arch_defaults=True,
    save_option="save",
)


def _e(value: float) -> str:
    """Megatron's E notation (`9.763827E+00`); nan as Python prints it."""
    return "nan" if math.isnan(value) else f"{value:E}"


def iteration_line(
    *,
    timestamp: str | None,
    step: int,
    total: int,
    samples: int,
    step_ms: float,
    tflops: float,
    lr: float,
    global_batch: int,
    loss: float | None,
    loss_scale: float,
    grad_norm: float | None,
    skipped: int,
    nan_iters: int,
    aux_loss: float | None = None,
) -> str:
    """training_log's line: leading space, fixed-width numbers, trailing `|`; Megatron-core's has a `[time]`
    prefix (timestamp), the throughput and a 6-digit learning rate, the 2021-22 one (timestamp None) not."""
    legacy = timestamp is None
    parts = [
        f"{'' if legacy else f' [{timestamp}]'} iteration {step:8d}/{total:8d}",
        f" consumed samples: {samples:12d}",
        f" elapsed time per iteration (ms): {step_ms:.1f}",
    ]
    if not legacy:
        parts.append(f" throughput per GPU (TFLOP/s/GPU): {tflops:.1f}")
    parts += [
        f" learning rate: {lr:.3E}" if legacy else f" learning rate: {lr:.6E}",
        f" global batch size: {global_batch:5d}",
    ]
    # Losses are averaged over the interval's updated iterations; a skipped-only interval averages 0 and
    # Megatron prints no loss then (`if avg > 0.0`).
    if loss is not None:
        parts.append(f" lm loss: {_e(loss)}")
        if aux_loss is not None:
            parts.append(f" load_balancing_loss: {_e(aux_loss)}")
    parts.append(f" loss scale: {loss_scale:.1f}")
    if grad_norm is not None:  # None when the interval's last iteration was skipped
        parts.append(f" grad norm: {grad_norm:.3f}" if not math.isnan(grad_norm) else " grad norm: nan")
    parts += [
        f" number of skipped iterations: {skipped:3d}",
        f" number of nan iterations: {nan_iters:3d}",
    ]
    return " |".join(parts) + " |"


def nan_iterations(event: StepDone) -> int:
    """training_log's nan iterations: the interval's skipped ones whose loss is NaN or inf (fp16's scaler
    skips a NaN step; bf16 updates with it, and counts none)."""
    return event.nan_steps if event.run.job.precision == "fp16" else 0


def interval_loss(event: StepDone) -> float | None:
    """The interval's lm loss as training_log prints it: the mean over its updated iterations, none when
    there were none or the mean is NaN (`if avg > 0.0`: a bf16 NaN step's loss is in the sum)."""
    if event.advanced_iters <= 0:
        return None
    if event.run.job.precision != "fp16" and event.nan_steps:
        return None
    return event.numbers.loss


def memory_line(
    rank: int, iterations: int, allocated_mb: float, max_allocated_mb: float, reserved_mb: float
) -> str:
    """Megatron's per-rank memory report (bytes / 2**20, printed unrounded with str())."""
    return (
        f"[Rank {rank}] (after {iterations} iterations) memory (MB) | allocated: {allocated_mb} | "
        f"max allocated: {max_allocated_mb} | reserved: {reserved_mb} | max reserved: {reserved_mb}"
    )


def validation_block(prefix: str, loss: float, ppl: float, label: str = " validation") -> list[str]:
    """evaluate_and_print_results: a dashed rule one longer than the line, the line, the rule again; Megatron
    names every split's loss ` validation` (a leading space), Megatron-DeepSpeed by its data group."""
    body = f"{label} loss at {prefix} | lm loss value: {_e(loss)} | lm loss PPL: {_e(ppl)} | "
    rule = "-" * (len(body) + 1)
    return [rule, body, rule]


def timers_block(rows: Sequence[tuple[str, float, float]], *, legacy: bool = False) -> list[str]:
    """Timers.log: Megatron-core's `(min, max) time across ranks (ms):` and one dotted row per timer; before
    August 2022 one `time (ms) | name: value` line of the last rank's own times."""
    if legacy:
        return ["time (ms)" + "".join(f" | {name}: {hi:.2f}" for name, _, hi in rows)]
    out = ["(min, max) time across ranks (ms):"]
    out += [f"    {(name + ' ').ljust(48, '.')}: ({lo:.2f}, {hi:.2f})" for name, lo, hi in rows]
    return out


# The simulation's schedule names as Megatron's --lr-decay-style spells them.
_DECAY_STYLES = {"wsd": "WSD"}


def argument_rows(
    run: RunPlan,
    seed: int,
    save: str | None = SAVE_DIR,
    *,
    recompute_given: bool = True,
    settings: Mapping[str, str] | None = None,
    legacy: bool = False,
) -> list[tuple[str, object]]:
    """The arguments Megatron echoes, by their attribute names (a subset of its ~500, the ones a job sets);
    recompute_granularity is None (its default) unless the script asked for recompute (`recompute_given`).
    `settings` (megatron_args.read's) carry what the job spec does not: --ckpt-format, --sequence-parallel,
    the fp8 options and the decay's end and WSD annealing, which the 2021-22 code (`legacy`) does not have."""
    given = settings or {}
    job = run.job
    m = job.model
    fp16 = job.precision == "fp16"
    rows: list[tuple[str, object]] = [
        ("adam_beta1", 0.9),
        ("adam_beta2", 0.95),
        ("adam_eps", 1e-08),
        ("attention_dropout", 0.0 if m.family != "gpt2" else 0.1),
        ("bf16", not fp16),
        ("ckpt_format", given.get("megatron.ckpt_format", "torch_dist")),
        ("clip_grad", job.grad_clip),
        ("context_parallel_size", job.cp),
        ("data_parallel_size", job.dp),
        ("distributed_backend", "nccl"),
        ("eval_interval", run.eval_interval),
        ("eval_iters", run.eval_iters),
        ("expert_model_parallel_size", job.ep),
        ("ffn_hidden_size", m.ffn_hidden),
        ("fp16", fp16),
        ("global_batch_size", job.global_batch),
        ("group_query_attention", m.kv_heads != m.heads),
        ("hidden_dropout", 0.0 if m.family != "gpt2" else 0.1),
        ("hidden_size", m.hidden),
        ("hysteresis", job.hysteresis),
        ("init_method_std", 0.02),
        ("initial_loss_scale", job.initial_loss_scale),
        ("log_interval", run.log_interval),
        ("log_throughput", True),
        ("loss_scale", job.static_loss_scale),
        ("loss_scale_window", job.loss_scale_window),
        ("lr", job.lr),
        ("lr_decay_style", _DECAY_STYLES.get(job.lr_schedule, job.lr_schedule)),
        ("lr_warmup_iters", job.warmup_steps),
        ("make_vocab_size_divisible_by", 128),
        ("max_position_embeddings", m.max_position),
        ("micro_batch_size", job.micro_batch),
        ("min_loss_scale", job.min_loss_scale),
        ("min_lr", job.min_lr),
        ("num_attention_heads", m.heads),
        ("num_experts", m.experts if m.is_moe else None),
        ("num_layers", m.layers),
        ("num_query_groups", m.kv_heads),
        ("params_dtype", "torch.float16" if fp16 else "torch.bfloat16"),
        ("pipeline_model_parallel_size", job.pp),
        ("rank", 0),
        ("recompute_granularity", job.recompute if recompute_given and job.recompute != "none" else None),
        ("save", save),
        ("save_interval", run.save_interval or None),  # --save-interval defaults to None
        ("seed", seed),
        ("seq_length", job.seq_len),
        # validate_args turns --sequence-parallel off without tensor parallelism; it is never on unasked.
        ("sequence_parallel", job.tp > 1 and given.get("megatron.sequence_parallel") == "1"),
        ("tensor_model_parallel_size", job.tp),
        ("train_iters", job.total_steps),
        ("untie_embeddings_and_output_weights", not m.tied_embeddings),
        ("use_distributed_optimizer", job.zero_stage >= 1),
        ("weight_decay", 0.1),
        ("world_size", job.world_size),
    ]
    # The script's own values (megatron_args.echoed) where Megatron read its arguments.
    shown = dict(rows)
    for key, value in given.items():
        dest = key.removeprefix(megatron_args.ECHO_PREFIX)
        if dest != key and not (legacy and dest in megatron_args.MODERN_ONLY):
            shown[dest] = value
    rows = list(shown.items())
    if not legacy:
        # TransformerConfig's fp8 (--fp8-format, default None) and fp8_recipe (default "delayed").
        rows += [
            ("fp8", given.get("megatron.fp8") or None),
            ("fp8_recipe", given.get("megatron.fp8_recipe", "delayed")),
            # The decay's end and WSD's annealing, as the script gave them.
            ("lr_decay_iters", given.get("megatron.lr_decay_iters")),
            ("lr_wsd_decay_iters", given.get("megatron.lr_wsd_decay_iters")),
            ("lr_wsd_decay_style", given.get("megatron.lr_wsd_decay_style", "exponential")),
        ]
    return rows


def arguments_block(
    run: RunPlan,
    seed: int,
    save: str | None = SAVE_DIR,
    *,
    recompute_given: bool = True,
    settings: Mapping[str, str] | None = None,
    legacy: bool = False,
) -> list[str]:
    """_print_args: `  name ..... value` rows (dots to column 48) sorted case-insensitively, between rules."""
    chosen = argument_rows(run, seed, save, recompute_given=recompute_given, settings=settings, legacy=legacy)
    rows = [f"  {name} {'.' * (48 - len(name))} {value}" for name, value in chosen]
    return [
        "------------------------ arguments ------------------------",
        *sorted(rows, key=str.lower),
        "-------------------- end of arguments ---------------------",
    ]


TRACKER = "latest_checkpointed_iteration.txt"  # get_checkpoint_tracker_filename
# dist_checkpointing's metadata.json (CheckpointingConfig as json.dump writes it) and the size of common.pt
# (the arguments, iteration, RNG and optimizer param groups: a few kilobytes).
_DIST_CONFIG = (
    '{"sharded_backend": "torch_dist", "sharded_backend_version": 1, '
    '"common_backend": "torch", "common_backend_version": 1}'
)
_COMMON_PT_BYTES = 18_000
_DIST_THREADS = 2  # TorchDistSaveShardedStrategy's thread_count: each rank writes __R_0 and __R_1


def tracker(save: str, request: SaveRequest) -> list[Artifact]:
    """The tracker file rank 0 writes once every rank has saved: the iteration, no newline."""
    return [Artifact.text(os.path.join(save, TRACKER), str(request.step))] if request.rank == 0 else []


def _torch_dist(directory: str, request: SaveRequest) -> list[Artifact]:
    """torch_dist: the rank's share in its writer threads' files; rank 0 also common.pt, then at the
    finalization .metadata and metadata.json."""
    job = request.run.job
    share = checkpoint.rank_checkpoint_bytes(job)
    part = share // _DIST_THREADS
    sizes = [part] * (_DIST_THREADS - 1) + [share - part * (_DIST_THREADS - 1)]
    out = [Artifact(f"{directory}/__{request.rank}_{i}.distcp", n) for i, n in enumerate(sizes)]
    if request.rank == 0:
        metadata = checkpoint.distcp_files(job)[-1]
        out.insert(0, Artifact(f"{directory}/common.pt", _COMMON_PT_BYTES))
        out += [
            Artifact(f"{directory}/{metadata.name}", metadata.nbytes),
            Artifact.text(f"{directory}/metadata.json", _DIST_CONFIG),
        ]
    return out


def _torch_legacy(directory: str, request: SaveRequest) -> list[Artifact]:
    """--ckpt-format torch: the first data-parallel rank of each model-parallel shard writes its
    mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt (the optimizer apart, in distrib_optim.pt, when distributed)."""
    job = request.run.job
    c = job.coords(request.rank)
    if c.dp_rank != 0 or c.cp_rank != 0:
        return []
    name = f"mp_rank_{c.tp_rank:02d}" + (f"_{c.pp_rank:03d}" if job.pp > 1 else "")
    name += f"_{c.ep_rank:03d}" if job.ep > 1 else ""
    shard = job.model.params // (job.tp * job.pp)
    weights, optimizer = shard * checkpoint.WEIGHT_BYTES, shard * checkpoint.OPTIMIZER_BYTES
    if job.zero_stage >= 1:
        return [
            Artifact(f"{directory}/{name}/model_optim_rng.pt", weights + _COMMON_PT_BYTES),
            Artifact(f"{directory}/{name}/distrib_optim.pt", optimizer),
        ]
    return [Artifact(f"{directory}/{name}/model_optim_rng.pt", weights + optimizer + _COMMON_PT_BYTES)]


def split_has_test(split: str | None) -> bool:
    """Whether --split gives the test split a share (its third weight; unset, Megatron's default "969, 30, 1"
    and Megatron-core's mock data's "1,1,1" both do)."""
    if split is None:
        return True
    weights = [float(w) for w in re.findall(r"[0-9]*\.?[0-9]+", split)] + [0.0, 0.0, 0.0]
    return weights[2] > 0.0


def tokenizer_name(job: JobSpec) -> str:
    """The --tokenizer-type a script for this model passes."""
    return "GPT2BPETokenizer" if job.model.family == "gpt2" else "HuggingFaceTokenizer"


class MegatronDialect:
    """Megatron-core's console: rank 0's start-up, the last rank's iteration lines, timers and validation,
    the memory reports of the first data-parallel group; nothing else of fakerun's. A script passing
    arguments of 2021-22 Megatron (LEGACY_OPTIONS) gets that era's lines instead."""

    name: ClassVar[str] = "megatron"
    hints: ClassVar[HintRule] = HINTS
    grid: ClassVar[bool] = False  # the grid is fakerun's own: --fake-grid shows it
    nccl_timeout_s: ClassVar[float] = 60.0 * 10  # --distributed-timeout-minutes' default
    always_legacy: ClassVar[bool] = False  # a fork of the older code prints its lines whatever the arguments

    @staticmethod
    def artifacts(request: SaveRequest) -> Sequence[Artifact]:
        """This rank's files of a save under --save: `iter_0000020/` in the --ckpt-format layout, then, from
        rank 0 once every rank is done, the tracker file naming the iteration."""
        if request.kind != "checkpoint":
            return ()
        save = request.settings.get("save") or SAVE_DIR
        directory = os.path.join(save, checkpoint_dir(request.step))
        # The 2021-22 code knows only the torch format (--ckpt-format came with distributed checkpoints).
        legacy = MegatronDialect.legacy_for(request.settings)
        if not legacy and request.settings.get("megatron.ckpt_format", "torch_dist") == "torch_dist":
            out = _torch_dist(directory, request)
        else:
            out = _torch_legacy(directory, request)
        return out + tracker(save, request)

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        self.run: RunPlan | None = None
        self.started_at = 0.0  # the process's start (Megatron's _TRAIN_START_TIME)
        self.memory: MemoryReport | None = None  # reported after the first log line
        self.stopped = False  # the step loop is over and training is done: the final evaluation follows
        self.exiting: TrainingStopped | None = None  # the loop ended by Megatron's --exit-* options
        self.theory: Theory | None = None
        self.legacy = self.always_legacy
        self.save_dir: str | None = SAVE_DIR
        self.settings: dict[str, str] = {}  # the script's settings (hints.Hints.settings)
        # The script passed a recompute option (else Megatron recomputes nothing).
        self.recompute_given = False

    # -- ranks -------------------------------------------------------------------------------------------

    @property
    def first(self) -> bool:
        """print_rank_0's rank."""
        return self.seat.rank == 0

    @property
    def last(self) -> bool:
        """print_rank_last's rank: the last pipeline stage holds the loss."""
        return self.seat.rank == self.seat.world_size - 1

    def dp_first(self) -> bool:
        """Whether this rank is data-parallel rank 0 (memory and parameter counts print there)."""
        return self.run is not None and self.run.job.coords(self.seat.rank).dp_rank == 0

    def plays(self, role: Role) -> bool:
        """Whether this rank is among `role`'s ranks; every rank may be a data-parallel first one until
        JobStarted brings the layout."""
        if role == "every":
            return True
        if role == "first":
            return self.first
        if role == "last":
            return self.last
        return self.run is None or self.dp_first()

    def wants(self, kind: type[Event]) -> bool:
        """Whether this rank may print anything for events of `kind`, or keeps from them what its own later
        lines need (_AUDIENCES; the summary and export never)."""
        return any(self.plays(role) for role in _AUDIENCES.get(kind, ()))

    # -- rendering ---------------------------------------------------------------------------------------

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """Megatron's lines for `event` on this rank."""
        return [Line(text) for text in self.lines(event, at)]

    def lines(self, event: Event, at: float) -> list[str]:
        """The text lines of `event` on this rank."""
        if isinstance(event, JobStarted):
            self.run = event.run
            settings = dict(event.settings)
            self.settings = settings
            self.legacy = self.legacy_for(settings)
            self.save_dir = settings.get("save") or (SAVE_DIR if event.run.saves else None)
            self.recompute_given = not RECOMPUTE_OPTIONS.isdisjoint(settings)
            self.started_at = at
            self.stopped = False
            self.exiting = None
            return []
        run = self.run
        # The ranks of each kind's lines (_AUDIENCES); the branches below pick among them where they differ.
        if run is None or not self.wants(type(event)):
            return []
        job = run.job
        if isinstance(event, WorkerStarted):
            return self.startup(run)
        if isinstance(event, ProcessGroupInitializing):
            return ["> initializing torch distributed ..."]
        if isinstance(event, ProcessGroupReady):
            return self.initialized(event, at)
        if isinstance(event, TokenizerLoaded):
            # A model read from Megatron's arguments holds its padded table; the tokenizer's size: a setting.
            vocab = int(self.settings.get("megatron.vocab", event.vocab_size))
            padded = job.model.vocab if "megatron.vocab" in self.settings else event.padded_vocab
            return [
                f"> building {self.settings.get('megatron.tokenizer') or tokenizer_name(job)} tokenizer ...",
                f" > padded vocab (size: {vocab}) with {padded - vocab} dummy tokens (new size: {padded})",
            ]
        if isinstance(event, ModelBuilt):
            self.theory = event.theory
            out: list[str] = []
            if self.dp_first():
                c = job.coords(self.seat.rank)
                out.append(
                    " > number of parameters on (tensor, pipeline) model parallel rank "
                    f"({c.tp_rank}, {c.pp_rank}): {int(event.params_on_rank)}"
                )
            if self.first and not run.job.start_step:
                out.append(self.datetime("after model, optimizer, and learning rate scheduler are built", at))
            return out
        if isinstance(event, CheckpointLoaded):
            restored = run.nan_rerun(run.first_step) == "again"
            return [
                f" loading distributed checkpoint from {self.save_dir} at iteration {event.step}",
                *([f"WARNING:{_RERUN_LOGGER}:{_RESTORED}"] if restored else []),
                f"  successfully loaded checkpoint from {self.save_dir} [ t 1/{job.tp}, p 1/{job.pp} ] "
                f"at iteration {event.step}",
                self.datetime("after model, optimizer, and learning rate scheduler are built", at),
            ]
        if isinstance(event, TrainingStarted):
            return self.training_started(event, at)
        if isinstance(event, MemoryReport):
            if event.iterations == 1:
                self.memory = event
            return []
        if isinstance(event, StepDone):
            return self.step(event, at)
        if isinstance(event, TrainingStopped):
            return self.stop_lines(event, at)
        if isinstance(event, EvalStarted):
            return self.evaluating_lines(event) if self.stopped else []
        if isinstance(event, EvalDone):
            return self.validation_lines(event)
        if isinstance(event, CheckpointSaving):
            return [self.saving_line(event)]
        if isinstance(event, CheckpointSaved):
            out = []
            if self.first:
                out.append(self.saved_line(event, job))
            # save_checkpoint_and_time's timer: every save in the loop (the exits' included), not pretrain()'s
            # own after it.
            if self.last and not self.stopped:
                ms = 1000.0 * event.seconds
                out += self.timers([("save-checkpoint", ms, ms)])
            return out
        if isinstance(event, TrainingFinished):
            return self.exit_lines(at)
        if isinstance(event, ResultRejected):
            return self.rejected_lines(event)
        if isinstance(event, RerunExit):
            return self.rerun_exit_lines(event)
        return []

    def rejected_lines(self, event: ResultRejected) -> list[str]:
        """validate_result's ERROR on every rank (logging's basic format on stdout, Megatron's handler): the
        last stage's loss check (the loss keeps its autograd node), the other stages' local grad norm check
        of their first bucket before the data-parallel reduction; on the rerun from the checkpoint, the same
        node and GPU as the first run."""
        assert self.run is not None
        seat = self.seat
        if event.again:
            host = seat.hosts[seat.rank // seat.nproc_per_node]
            return [
                f"ERROR:{_RERUN_LOGGER}:Got rescheduled on the same GPU. Need to resume again from the same "
                f"checkpoint (node: {host}, gpu: {seat.local_rank})"
            ]
        job = self.run.job
        result = self.nan_tensor()
        if job.coords(seat.rank).pp_rank == job.pp - 1:
            message = "found NaN in local forward loss calculation"
        else:
            message = (
                "found NaN in local grad norm for bucket #0 in backward pass before data-parallel "
                "communication collective"
            )
        return [
            f"ERROR:{_RERUN_LOGGER}:Unexpected result {result} on rank {seat.rank} at iteration "
            f"#{event.step} invokation #1 (message='{message}')"
        ]

    def nan_tensor(self) -> str:
        """The rejected result as str() shows it: the loss (last stage) or a bucket's grad norm."""
        assert self.run is not None
        job = self.run.job
        last_stage = job.coords(self.seat.rank).pp_rank == job.pp - 1
        grad_fn = ", grad_fn=<SumBackward0>" if last_stage else ""
        return f"tensor(nan, device='cuda:{self.seat.local_rank}'{grad_fn})"

    def rerun_exit_lines(self, event: RerunExit) -> list[str]:
        """After the rerun: rank 0's decision to rerun, each rank's verdict (reproduced), rank 0's exit
        warning; after the rerun from the checkpoint on the same GPU, rank 0's two warnings."""
        warn = f"WARNING:{_RERUN_LOGGER}:"
        if event.again:
            if not self.first:
                return []
            return [
                f"{warn}Need to restart job from the same checkpoint because it was scheduled on the same "
                "node/GPU",
                f"{warn}Exiting now. Please resume the job from the same checkpoint to rerun the last "
                "iteration and establish a diagnostic",
            ]
        result = self.nan_tensor()
        verdict = (
            f"{warn}First rerun: unexpected result is reproducible within the tolerance "
            f"({result} = {result}). Need to rerun on a different GPU to verify correctness"
        )
        if not self.first:
            return [verdict]
        return [
            f"{warn}Need to rerun step to check reproducibility of initial result",
            verdict,
            f"{warn}Saving a checkpoint and exiting now. Please resume the job from the checkpoint to rerun "
            "the last iteration and establish a diagnostic",
        ]

    @classmethod
    def ending(cls, settings: Mapping[str, str]) -> tuple[str, bool]:
        """What follows the last step (sim/run.ENDINGS: this era's pretrain()) and whether it evaluates a test
        split, from the script's arguments (`settings`)."""
        legacy = cls.legacy_for(settings)
        return (ENDING_MEGATRON_2022 if legacy else ENDING_MEGATRON), cls.has_test(settings)

    @classmethod
    def legacy_for(cls, settings: Mapping[str, str]) -> bool:
        """Whether the script's arguments (`settings`) were written for 2021-22 Megatron-LM's log format."""
        return cls.always_legacy or not LEGACY_OPTIONS.isdisjoint(settings)

    @classmethod
    def has_test(cls, settings: Mapping[str, str]) -> bool:
        """Megatron's do_test: a test dataset is built (--test-data-path beside the other splits' paths, or
        --split's third share). Its --eval-iters is at least 1 here (hints.py), as do_test also needs."""
        if {"train_data_path", "valid_data_path", "test_data_path"} & settings.keys():
            return "test_data_path" in settings
        return split_has_test(settings.get("split"))

    def evaluating_lines(self, event: EvalStarted) -> list[str]:
        """evaluate(verbose=True)'s progress on rank 0 after training: Megatron-core's on both splits, every
        batch; the older code's on the test split only, every --log-interval batches."""
        assert self.run is not None
        if not self.legacy:
            return [f"Evaluating on {event.iters * self.run.job.global_batch} samples"] + [
                f"Evaluating iter {i}/{event.iters}" for i in range(1, event.iters + 1)
            ]
        if event.split != "test":
            return []
        every = self.run.log_interval
        return [f"Evaluating iter {i}/{event.iters}" for i in range(every, event.iters + 1, every)]

    def validation_lines(self, event: EvalDone) -> list[str]:
        """evaluate_and_print_results on the last rank: Megatron-core's `evaluate` timer (the older code has
        none) and the validation block, its prefix the split's after training."""
        test = event.split == "test"
        if not self.stopped:
            prefix = f"iteration {event.step}"
        elif self.legacy:
            prefix = f"the end of training for {'test' if test else 'val'} data"
        else:
            prefix = f"iteration {event.step} on {'test' if test else 'validation'} set"
        ms = 1000.0 * event.seconds
        timers = [] if self.legacy else self.timers([("evaluate", ms, ms)])
        return timers + validation_block(prefix, event.loss, event.ppl, self.loss_label(event.split))

    def loss_label(self, split: str) -> str:
        """What the validation block calls the loss of `split`: Megatron calls every split's ` validation`."""
        del split
        return " validation"

    def timers(self, rows: Sequence[tuple[str, float, float]]) -> list[str]:
        """A Timers.log of (name, min, max) rows in this version's form."""
        return timers_block(rows, legacy=self.legacy)

    def rerun_line(self, event: TrainingStarted) -> list[str]:
        """train() moves core v0.15's rerun state machine to the checkpoint's iteration: from its initial -1
        (a checkpoint keeps the machine's state only when it was saved to rerun a step), or from the iteration
        the rerun's checkpoint recorded, the NaN step (older code: none)."""
        if self.legacy:
            return []
        assert self.run is not None
        start = event.first_step - 1
        machine = event.first_step if self.run.nan_rerun(event.first_step) == "again" else -1
        return [f"Overwriting rerun_state_machine.current_iteration from {machine} to {start}..."]

    def saving_line(self, event: CheckpointSaving) -> str:
        """save_checkpoint's first line on rank 0 (the older code names no format)."""
        line = f"saving checkpoint at iteration {event.step:7d} to {self.save_dir}"
        return line if self.legacy else f"{line} in {event.format} format"

    def saved_line(self, event: CheckpointSaved, job: JobSpec) -> str:
        """save_checkpoint's last line on rank 0: rank 0's tensor and pipeline rank of their sizes."""
        if self.legacy:
            return f"  successfully saved checkpoint at iteration {event.step:7d} to {self.save_dir}"
        return (
            f"  successfully saved checkpoint from iteration {event.step:7d} to {self.save_dir} "
            f"[ t 1/{job.tp}, p 1/{job.pp} ]"
        )

    def datetime(self, what: str, at: float) -> str:
        """print_datetime: `[what] datetime: 2026-11-22 08:41:57 ` (a trailing space)."""
        return f"[{what}] datetime: {seconds_time(at)} "

    def startup(self, run: RunPlan) -> list[str]:
        """Rank 0 after parsing its arguments: the layout line, the arguments, the micro-batch count."""
        job = run.job
        dtype = "torch.float16" if job.precision == "fp16" else "torch.bfloat16"
        if self.legacy:  # megatron/arguments.py of 2021-22: its own spacing and wording
            return [
                f"using world size: {job.world_size}, data-parallel-size: {job.dp}, tensor-model-parallel "
                f"size: {job.tp}, pipeline-model-parallel size: {job.pp} ",
                f"using {dtype} for parameters ...",
                *arguments_block(
                    run,
                    _SEED,
                    self.save_dir,
                    recompute_given=self.recompute_given,
                    settings=self.settings,
                    legacy=self.legacy,
                ),
                f"setting number of micro-batches to constant {job.grad_accum}",
            ]
        return [
            f"using world size: {job.world_size}, data-parallel size: {job.dp}, "
            f"context-parallel size: {job.cp}, hierarchical context-parallel sizes: None, "
            f"tensor-model-parallel size: {job.tp}, "
            f"pipeline-model-parallel size: {job.pp}",
            f"using {dtype} for parameters ...",
            *arguments_block(
                run,
                _SEED,
                self.save_dir,
                recompute_given=self.recompute_given,
                settings=self.settings,
                legacy=self.legacy,
            ),
            "INFO:megatron.core.num_microbatches_calculator:setting number of microbatches to constant "
            f"{job.grad_accum}",
        ]

    def initialized(self, event: ProcessGroupReady, at: float) -> list[str]:
        """Rank 0 once the process groups exist: model parallel sizes, seeds, compiled helpers, the time."""
        assert self.run is not None
        job = self.run.job
        # The older code says `initializing` where Megatron-core says `initialized`, and reports its seeds.
        verb = "initializing" if self.legacy else "initialized"
        seeds = [
            "> initializing model parallel cuda seeds on global rank 0, model parallel rank 0, and data "
            f"parallel rank 0 with model parallel seed: {_SEED + 2718} and data parallel seed: {_SEED}"
        ]
        return [
            f"> {verb} tensor model parallel with size {job.tp}",
            f"> {verb} pipeline model parallel with size {job.pp}",
            f"> setting random seeds to {_SEED} ...",
            *(seeds if self.legacy else []),
            "> compiling dataset index builder ...",
            f">>> done with dataset index builder. Compilation time: {event.helpers_compile_s:.3f} seconds",
            "> compiling and loading fused kernels ...",
            ">>> done with compiling and loading fused kernels. Compilation time: "
            f"{event.kernels_compile_s:.3f} seconds",
            f"time to initialize megatron (seconds): {at - self.started_at:.3f}",
            self.datetime("after megatron is initialized", at),
        ]

    def training_started(self, event: TrainingStarted, at: float) -> list[str]:
        """Rank 0 before the first step: datasets, set-up timers, `training ...`."""
        assert self.run is not None
        run = self.run
        job = run.job
        train = job.total_steps * job.global_batch
        valid = (job.total_steps // max(run.eval_interval, 1) + 1) * run.eval_iters * job.global_batch
        return [
            "> building train, validation, and test datasets ...",
            " > datasets target sizes (minimum size):",
            f"    train:      {train}",
            f"    validation: {valid}",
            f"    test:       {run.eval_iters * job.global_batch}",
            "> finished creating GPT datasets ...",
            self.datetime("after dataloaders are built", at),
            "done with setup ...",
            *self.timers(
                [
                    ("model-and-optimizer-setup", *event.model_setup_ms),
                    ("train/valid/test-data-iterators-setup", *event.data_setup_ms),
                ]
            ),
            "training ...",
            *self.rerun_line(event),
            self.datetime("before the start of training step", at),
        ]

    def step(self, event: StepDone, at: float) -> list[str]:
        """A log iteration: the last rank's line, then rank 0's theoretical memory and the memory reports."""
        run = event.run
        n = event.numbers
        if n.step % run.log_interval:
            return []
        out: list[str] = []
        if self.last:
            out.append(self.iteration(event, at))
        if self.memory is not None and self.report_now(event):
            if self.first:
                out += self.theory_lines()
            if self.dp_first():
                m = self.memory
                out.append(
                    memory_line(
                        self.seat.rank, n.step, m.allocated / _MIB, m.max_allocated / _MIB, m.reserved / _MIB
                    )
                )
            self.memory = None
        if self.last:
            out += self.timer_lines(event)
        return out

    def report_now(self, event: StepDone) -> bool:
        """Megatron-core reports memory at its first log line, the older code at the first whose lr is above
        zero (fp16 skips keep it at 0)."""
        return not self.legacy or event.numbers.lr > 0.0

    def theory_lines(self) -> list[str]:
        """report_theoretical_memory(verbose=True) on rank 0 (the short form: no activation estimate); the
        older code has none."""
        t = self.theory
        if t is None or self.legacy:
            return []
        return [
            f"Number of parameters in transformer block in billions: {t.transformer / 1e9: .2f}",
            f"Number of parameters in embedding layers in billions: {t.embedding / 1e9:.2f}",
            f"Total number of parameters in billions: {t.total / 1e9:.2f}",
            f"Number of parameters in most loaded shard in billions: {t.most_loaded_shard / 1e9:.4f}",
            f"Theoretical memory footprints: weight and optimizer={t.weight_and_optimizer_mb:.2f} MB",
        ]

    def timer_lines(self, event: StepDone) -> list[str]:
        """Timers logged after the line: Megatron-core's default --timing-log-level 0 logs none, the older
        code every timer, `time (ms) | name: value | ...` averaged over the interval."""
        if not self.legacy or not event.timers_ms:
            return []
        return timers_block([(name, ms, ms) for name, ms in event.timers_ms], legacy=True)

    def iteration(self, event: StepDone, at: float) -> str:
        """The iteration line: figures over the log interval, TFLOP/s from Megatron's FLOPs and its time."""
        n = event.numbers
        job = event.run.job
        return iteration_line(
            timestamp=None if self.legacy else seconds_time(at),
            step=n.step,
            total=job.total_steps,
            samples=n.samples,
            step_ms=1000.0 * event.interval_s,
            tflops=event.megatron_tflops,
            lr=n.lr,
            global_batch=job.global_batch,
            loss=interval_loss(event),
            loss_scale=event.loss_scale,
            grad_norm=None if event.step_skipped else n.grad_norm,
            skipped=event.skipped_iters,
            nan_iters=nan_iterations(event),
            aux_loss=n.moe_aux_loss,
        )

    def stop_lines(self, event: TrainingStopped, at: float) -> list[str]:
        """When the loop ends: rank 0's end of training; an exit prints once its evaluation and save are over
        (exit_lines). fakerun's own stops (--fake-max-steps, --fake-max-time) end training as the last
        iteration would."""
        if event.reason in ("exit interval", "exit duration"):
            self.exiting = event
            return []
        self.stopped = True
        if not self.first:
            return []
        return [self.datetime("after training is done", at)]

    def exit_lines(self, at: float) -> list[str]:
        """checkpoint_and_decide_exit's last line before sys.exit(0), after the exit's save (rank 0); its
        minutes are Python's float, since the process started."""
        event = self.exiting
        if event is None:
            return []
        if event.reason == "exit interval":
            return [self.datetime(f"exiting program at iteration {event.step}", at)]
        return [self.datetime(f"exiting program after {(at - self.started_at) / 60.0} minutes", at)]


_SEED = 1234  # --seed's default
_RERUN_LOGGER = "megatron.core.rerun_state_machine"  # its logging.getLogger(__name__)
_RESTORED = "Getting RerunStateMachine state from checkpoint. Will rerun step."
# Who prints (or keeps for its own later lines) each kind's lines: print_rank_0's rank 0, print_rank_last's
# last rank, the data-parallel first ranks' parameter counts and memory reports (rank 0's theory among them),
# every rank's rerun verdicts; JobStarted sets up every rank. The step loop's stop is kept by rank 0 (its
# evaluation progress and exit line) and the last rank (its validation's prefix and save timers).
_AUDIENCES: dict[type[Event], tuple[Role, ...]] = {
    JobStarted: ("every",),
    WorkerStarted: ("first",),
    ProcessGroupInitializing: ("first",),
    ProcessGroupReady: ("first",),
    TokenizerLoaded: ("first",),
    ModelBuilt: ("dp_first",),
    ResultRejected: ("every",),
    RerunExit: ("every",),
    CheckpointLoaded: ("first",),
    TrainingStarted: ("first",),
    MemoryReport: ("dp_first",),
    StepDone: ("last", "dp_first"),
    TrainingStopped: ("first", "last"),
    TrainingFinished: ("first",),
    EvalStarted: ("first",),
    EvalDone: ("last",),
    CheckpointSaving: ("first",),
    CheckpointSaved: ("first", "last"),
}
