"""What happens on one rank of the simulated job, as typed events: every figure a framework may print."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeAlias

from fakerun.presets import ModelSpec
from fakerun.render.grid import GridGpu
from fakerun.sim.checkpoint import ExportFile
from fakerun.sim.ds_breakdown import MemoryUsage, StepTimes
from fakerun.sim.ds_lossscale import ScaleStep
from fakerun.sim.estimates import ParamGroups
from fakerun.sim.job import JobSpec
from fakerun.sim.megatron import Theory
from fakerun.sim.run import RunPlan
from fakerun.sim.step import StepNumbers

# Every figure here is computed by the rank's phase loop from sim/ (or read from the coordinator's answer);
# a dialect only chooses which of them to print, on which ranks, and how. Times are simulated seconds,
# sizes bytes, rates per second, unless a field's name says otherwise. The moment an event is printed at
# is the printer's business (the job clock), so events carry no timestamp.

# -- start-up, in the order a rank lives through it ---------------------------------------------------------


@dataclass(frozen=True)
class JobStarted:
    """A run begins on this rank (again with --fake-loop): its whole plan, for dialects echoing arguments."""

    run: RunPlan
    first: bool  # the process's first run: the interpreter, CUDA and NCCL start-up happen only then
    resume: bool  # it starts from the checkpoint of run.job.start_step
    # The script's textual settings a framework echoes (hints.Hints.settings: torchtitan's job.description).
    settings: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class WorkerStarted:
    """The interpreter has imported torch and the training framework: the script's first line runs."""

    host: str
    local_rank: int
    world_size: int
    pid: int  # as this rank's host shows it (real on the launcher's node, drawn on the others)


@dataclass(frozen=True)
class DeviceSelected:
    """torch.cuda.set_device(local_rank): the GPU this rank drives."""

    index: int
    name: str
    memory_mib: int
    bus_id: str  # 00000000:18:00.0


@dataclass(frozen=True)
class ProcessGroupInitializing:
    """init_process_group() is called (its store barrier follows: every rank waits for the slowest)."""

    backend: str
    world_size: int


@dataclass(frozen=True)
class BarrierPassed:
    """The store barrier is over and the first barrier() runs on `device_index` (torch warns about it)."""

    device_index: int


@dataclass(frozen=True)
class NcclInitialized:
    """NCCL's communicator reached a part of its set-up (NCCL_DEBUG=INFO's lines about it are torch's layer,
    not a dialect's)."""

    job: JobSpec
    pid: int
    tid: int  # NCCL's init thread as this rank's host draws it
    part: str | None = None  # one of render.nccl.INIT_PARTS; None: the whole set-up at once


@dataclass(frozen=True)
class ProcessGroupReady:
    """init_process_group() returned: this rank's place in the tensor, data and pipeline groups."""

    tp_rank: int
    dp_rank: int
    pp_rank: int
    helpers_compile_s: float = 0.0  # Megatron: its dataset index builder's compilation on rank 0
    kernels_compile_s: float = 0.0  # Megatron: loading its fused kernels


@dataclass(frozen=True)
class ModelConfigured:
    """The model's configuration is known (before any weight exists)."""

    model: ModelSpec
    seq_len: int
    adapter_params: int = 0  # LoRA's trainable parameters (the model's are frozen), 0 without LoRA


@dataclass(frozen=True)
class ParallelismDecided:
    """The parallel layout and the batch arithmetic of the job."""

    tp: int
    pp: int
    dp: int
    sharding: str  # "DDP", "ZeRO-1", "FSDP"...
    micro_batch: int
    grad_accum: int
    global_batch: int
    tokens_per_step: int


@dataclass(frozen=True)
class TokenizerLoaded:
    """The tokenizer is loaded."""

    vocab_size: int
    padded_vocab: int = 0  # Megatron pads it to a multiple of 128 x TP (sim/megatron.padded_vocab)


@dataclass(frozen=True)
class DatasetLoading:
    """`shard` of `shards` dataset shards are mapped after `elapsed_s` (a loader's progress bar)."""

    shard: int
    shards: int
    elapsed_s: float


@dataclass(frozen=True)
class DatasetReady:
    """The training dataset is ready."""

    tokens: int
    samples: int
    epochs: int
    steps_per_epoch: int


@dataclass(frozen=True)
class ModelBuilt:
    """This rank's part of the model exists on its GPU."""

    dtype: str
    params_on_rank: float  # parameters of this rank's pipeline stage over its tensor-parallel group
    layers_on_rank: int
    pp_rank: int
    weights_bytes: float = 0.0  # this rank's share of the weights on its GPU after init (torchtitan's line)
    init_s: float = 0.0  # instantiating the model and loading its weights took this long
    capacity_bytes: float = 0.0  # the GPU's memory as torch.cuda reports it
    theory: Theory | None = None  # Megatron's theoretical memory figures for the job (sim/megatron.theory)
    # nanoGPT / llm.c: the weight-decay groups, get_num_params() (no position table), all with padded vocab.
    groups: ParamGroups | None = None
    reported_params: int = 0
    padded_params: int = 0
    padded_vocab: int = 0
    # DeepSpeed's memory_breakdown: see_memory_usage's figures in the engine's __init__ (sim/ds_breakdown).
    ds_memory: tuple[MemoryUsage, ...] = ()


@dataclass(frozen=True)
class CheckpointLoading:
    """Loading the checkpoint a resumed run starts from."""

    step: int
    path: str
    nbytes: int


@dataclass(frozen=True)
class CheckpointLoaded:
    """The checkpoint is loaded: the run continues after `step`."""

    step: int
    path: str
    tokens: int
    loss: float
    lr: float
    seconds: float


@dataclass(frozen=True)
class WeightsLoading:
    """`shard` of `shards` safetensors shards (5 GB each) of pretrained weights or a checkpoint are read
    after `elapsed_s` (transformers' `Loading checkpoint shards` bar)."""

    shard: int
    shards: int
    elapsed_s: float


@dataclass(frozen=True)
class TrainingStarted:
    """The step loop begins (its first step waits for the slowest rank's start-up)."""

    first_step: int
    last_step: int
    total_steps: int
    warmup_steps: int
    lr: float
    schedule: str
    # Megatron's set-up timers, (min, max) over the ranks in ms: model and optimizer, data iterators.
    model_setup_ms: tuple[float, float] = (0.0, 0.0)
    data_setup_ms: tuple[float, float] = (0.0, 0.0)
    # The losses an evaluation before the first step would measure (nanoGPT evaluates at iter_num 0).
    train_loss: float = math.nan
    val_loss: float = math.nan
    # Lightning's sanity check before fit (num_sanity_val_steps=2): its batches (0 when the run never
    # validates) and the time they take.
    sanity_batches: int = 0
    sanity_s: float = 0.0


# -- training ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepDone:
    """An optimizer step has ended on every rank (the coordinator's barrier); this rank's figures of it."""

    run: RunPlan
    numbers: StepNumbers  # the first step's figures include its warm-up
    elapsed_s: float  # simulated training time so far, this step included
    recent_s: tuple[float, ...]  # the last (up to 50) step times, oldest first
    interval_s: float  # mean step time over the last log interval (Megatron's "elapsed time per iteration")
    epoch: float  # fractional epochs done (HF's "epoch")
    rank_tflops: float  # TFLOP/s per GPU as this rank measures it (torchtitan's, last digits differ by rank)
    rank_mfu: float  # likewise, as a fraction
    logged: bool  # a log step: the first of the run or a multiple of run.log_interval
    gc_s: float = 0.0  # a Python garbage collection at this step, for frameworks that run one periodically
    # fp16 loss scaling (sim/lossscale.py; bf16: 1.0 and no skips) and Megatron's interval counters: the log
    # interval is (the previous multiple of run.log_interval or the run's start, this step].
    loss_scale: float = 1.0
    step_skipped: bool = False  # this iteration overflowed: no update, no grad norm
    skipped_iters: int = 0  # skipped iterations in the log interval
    nan_steps: int = 0  # iterations of the log interval whose loss was NaN
    advanced_iters: int = 1  # iterations in the log interval that updated the model
    megatron_tflops: float = 0.0  # Megatron's TFLOP/s per GPU over interval_s (compute.framework_*)
    samples_per_s: float = 0.0  # global batch over interval_s (Megatron-DeepSpeed's samples per second)
    timers_ms: tuple[tuple[str, float], ...] = ()  # Megatron's per-phase timers of this iteration
    nanogpt_mfu: float = -1.0  # nanoGPT's running_mfu (A100-promised, -1 for its first iterations)
    llmc_mfu: float = 0.0  # llm.c's MFU of this step against the device's promised bf16 FLOPS
    loss_z: float = math.nan  # llm.c's z-scores of loss and grad norm (nan until its window is full)
    norm_z: float = math.nan
    llmc_tokens_per_s: float = 0.0  # llm.c's bias-corrected EMA of tok/s (the first step raw)
    # DeepSpeed: its fp16 dynamic loss scaler at this step (sim/ds_lossscale.py; None unless fp16), and the
    # ThroughputTimer's span (the run's steps after its first two, which it does not time).
    ds_scale: ScaleStep | None = None
    timed_s: float = 0.0
    timed_steps: int = 0
    # DeepSpeed's wall_clock_breakdown and memory_breakdown (sim/ds_breakdown.py): the engine's timers and
    # see_memory_usage's figures at each phase, per micro-step of the step (empty unless configured).
    ds_timers: StepTimes | None = None
    ds_memory: tuple[tuple[MemoryUsage, ...], ...] = ()


@dataclass(frozen=True)
class MemoryReport:
    """This rank's CUDA memory after its first `iterations` steps (torch.cuda memory statistics)."""

    step: int
    iterations: int
    allocated: float
    max_allocated: float
    reserved: float
    max_reserved: float


@dataclass(frozen=True)
class GradientSync:
    """The step's gradient collectives as the collective model times them (a log step)."""

    step: int
    op: str  # "all_reduce", "reduce_scatter"
    buckets: int
    nbytes: float
    ranks: int
    algo: str  # "RING", "TREE"
    time_ms: float
    busbw_gbs: float


@dataclass(frozen=True)
class GpuGrid:
    """Every GPU of the job at a step, gathered by the coordinator (sent to rank 0 every grid interval)."""

    step: int
    gpus: tuple[GridGpu, ...]
    stragglers: frozenset[int]


@dataclass(frozen=True)
class NanLoss:
    """A step whose loss was NaN: the optimizer skipped its update."""

    step: int


@dataclass(frozen=True)
class ResultRejected:
    """Megatron-core's rerun state machine rejects this rank's result at `step` (a NaN loss, or a NaN local
    grad norm on a stage before the last); `again`: the run resumed to rerun that step and is on the GPU
    that found it."""

    step: int
    again: bool = False


@dataclass(frozen=True)
class RerunExit:
    """The rerun state machine's verdict on NaN `step` once it has rerun it: the script exits with `code`
    (after a save of the step before, unless `again`)."""

    step: int
    code: int
    again: bool = False


@dataclass(frozen=True)
class LossSpike:
    """The first step of a loss spike."""

    step: int
    loss: float
    grad_norm: float


@dataclass(frozen=True)
class Straggler:
    """A rank became the slowest and gates the job (only in jobs of more than one GPU)."""

    step: int
    slow_rank: int
    host: str
    step_time_s: float
    mfu: float


@dataclass(frozen=True)
class TrainingStopped:
    """The step loop ends after `step`."""

    step: int
    # "reached total steps", "reached max steps", "reached max time", "early stopping", and Megatron's exits:
    # "exit interval", "exit duration"
    reason: str
    # HF Trainer's end-of-training figures: simulated seconds since the step loop began (pauses included), the
    # steps and samples this run trained, the mean of its training losses and its FLOPs (6 N tokens).
    runtime_s: float = 0.0
    steps: int = 0
    samples: int = 0
    mean_loss: float = math.nan
    total_flos: float = 0.0


@dataclass(frozen=True)
class EarlyStoppingCheck:
    """A validation against the best so far (--fake-early-stopping): an improvement, or one more strike."""

    step: int
    val_loss: float
    best: float  # the best validation loss so far, this one included
    best_step: int
    strikes: int  # validations in a row without improvement; the run stops when it reaches patience
    patience: int


# -- pauses -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalStarted:
    """An evaluation begins after `step`."""

    step: int
    iters: int
    split: str = "validation"  # or "test": Megatron's evaluation of the test split after training


@dataclass(frozen=True)
class EvalProgress:
    """An evaluation after `step` has run `batch` of its `batches` batches in `elapsed_s`."""

    step: int
    batch: int
    batches: int
    elapsed_s: float


@dataclass(frozen=True)
class EvalDone:
    """An evaluation has ended."""

    step: int
    loss: float
    ppl: float
    seconds: float
    samples: int
    iters: int
    epoch: float
    train_loss: float = math.nan  # the training loss an evaluation of the train split measures (nanoGPT)
    split: str = "validation"  # or "test" (EvalStarted.split)


@dataclass(frozen=True)
class CheckpointSaving:
    """A checkpoint save begins after `step`."""

    step: int
    path: str
    format: str


@dataclass(frozen=True)
class CheckpointSaved:
    """The checkpoint is on storage."""

    step: int
    path: str
    nbytes: int
    seconds: float
    bandwidth_gbs: float


@dataclass(frozen=True)
class SlowPause:
    """An evaluation or a checkpoint save after `step` took much longer than usual (a rare stall)."""

    step: int
    phase: str  # "eval" or "checkpoint"
    seconds: float
    usual_s: float  # what such a pause takes without the stall
    train_steps: float  # the pause in training steps of the job's expected step time


@dataclass(frozen=True)
class EpochDone:
    """A pass over the dataset has ended after `step` (and the evaluation and save that followed it)."""

    epoch: int
    epochs: int
    step: int
    train_loss: float  # mean training loss over the epoch's steps in this run
    val_loss: float  # the epoch's last evaluation (nan if none ran in it)
    tokens: int  # trained in this epoch by this run
    seconds: float  # simulated time of the epoch in this run, pauses included


# -- the end ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelExported:
    """The trained model written in a serving format (rank 0)."""

    path: str
    format: str
    files: tuple[ExportFile, ...]


@dataclass(frozen=True)
class RunSummary:
    """The figures of the whole run: medians over its steps, the last step's loss and the final evaluation."""

    model: ModelSpec
    world_size: int
    gpu_name: str
    nnodes: int
    nproc_per_node: int
    tp: int
    pp: int
    dp: int
    sharding: str
    first_step: int
    last_step: int
    total_steps: int
    tokens: int
    tokens_per_step: int
    final_loss: float
    val_loss: float
    val_ppl: float
    median_step_s: float
    median_tokens_per_s: float
    median_tokens_per_s_per_gpu: float
    median_mfu: float
    median_tflops: float  # per GPU
    checkpoints: int
    last_checkpoint: str
    wall_s: float  # real seconds the training took
    speed: float


@dataclass(frozen=True)
class TrainingFinished:
    """The script's last line: this rank is done with the run."""

    step: int


Event: TypeAlias = (
    JobStarted
    | WorkerStarted
    | DeviceSelected
    | ProcessGroupInitializing
    | BarrierPassed
    | NcclInitialized
    | ProcessGroupReady
    | ModelConfigured
    | ParallelismDecided
    | TokenizerLoaded
    | DatasetLoading
    | DatasetReady
    | ModelBuilt
    | CheckpointLoading
    | CheckpointLoaded
    | WeightsLoading
    | TrainingStarted
    | StepDone
    | MemoryReport
    | GradientSync
    | GpuGrid
    | NanLoss
    | ResultRejected
    | RerunExit
    | LossSpike
    | Straggler
    | TrainingStopped
    | EarlyStoppingCheck
    | EvalStarted
    | EvalProgress
    | EvalDone
    | CheckpointSaving
    | CheckpointSaved
    | SlowPause
    | EpochDone
    | ModelExported
    | RunSummary
    | TrainingFinished
)
