"""DeepSpeed 0.19 (a script calling deepspeed.initialize): its engine's lines, as its logger prints them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

from fakerun.dialects.base import HintRule, Line, Output, Seat, log_time, words
from fakerun.dialects.events import (
    CheckpointSaving,
    Event,
    JobStarted,
    ModelBuilt,
    StepDone,
)
from fakerun.dsconfig import DsConfig
from fakerun.sim import rand
from fakerun.sim.ds_breakdown import ENGINE_PHASES, EngineTimes, MemoryUsage, init_optimizer_ms, total_times
from fakerun.sim.ds_lossscale import ScaleStep, scheduler_lr
from fakerun.sim.job import JobSpec

# Options DeepSpeed's add_config_arguments and its examples define (`--deepspeed` is a flag there; HF
# Trainer's --deepspeed takes the config file and is the HF dialect's when HF options dominate).
HINTS = HintRule(
    # DeepSpeedExamples and tutorials (cifar10_deepspeed.py, train_bert_ds.py); not Megatron-DeepSpeed.
    script=re.compile(r"(?<!megatron.)deepspeed(?!.*megatron)|_ds\.py$|(^|/)ds_(train|pretrain)"),
    options=words("deepspeed deepspeed_config deepscale deepscale_config zero_stage"),
)

VERSION = "0.19.6"
GIT_HASH = "unknown"
GIT_BRANCH = "unknown"

# Where each line comes from in DeepSpeed 0.19.6's source: file:line:function of the logging call.
_LOG_DIST = "logging.py:123:log_dist"
_GROUPS = "engine.py:1867:_configure_distributed_model"
_ZERO = "stage_1_and_2.py:{}:__init__"
_STAGE3 = "stage3.py:{}:{}"
_CONFIG = "config.py:{}:print"
_USER_CONFIG = "config.py:999:print_user_config"
_TIMER = "timer.py:264:stop"
_SCALER = "loss_scaler.py:{}:update_scale"
# Stage 0's 16-bit wrappers: their _update_scale's logger.info lines (overflow, increase), and the unfused
# one's overflow message in step() (step_fused_lamb's for Lamb).
_FUSED = "fused_optimizer.py:{}:_update_scale"
_UNFUSED = "unfused_optimizer.py:{}:{}"
_GIB = 1024.0**3
_OFFLOAD = (
    "device='cpu' nvme_path=None buffer_count=4 pin_memory=False pipeline_read=False pipeline_write=False "
    "fast_init=False ratio=1.0"
)

# torch dtypes as DeepSpeed names them in 'Creating ... ZeRO stage N optimizer'.
_DTYPES = {"fp16": "torch.float16", "bf16": "torch.bfloat16", "fp32": "torch.float32"}
# The config's optimizer types -> the class DeepSpeed builds (FusedAdam for Adam/AdamW on CUDA).
_OPTIMIZERS = {"adam": "FusedAdam", "adamw": "FusedAdam", "lamb": "FusedLamb", "lion": "FusedLion"}


def prefix(at: float, where: str, level: str = "INFO") -> str:
    """DeepSpeed's logging.Formatter: `[asctime] [LEVEL] [file.py:line:func] `."""
    return f"[{log_time(at)}] [{level}] [{where}] "


def encode(value: Any, level: int = 0) -> str:
    """DeepSpeed's ScientificNotationEncoder: keys in file order, `, ` before each newline, numbers over 1e3
    in `e` notation."""
    close, level = " " * level * 4, level + 1
    inner = " " * level * 4
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{value:e}" if value > 1e3 else f"{value}"
    if isinstance(value, dict):
        items = [f'\n{inner}"{k}": {encode(v, level)}' for k, v in value.items()]
        return "{" + ", ".join(items) + f"\n{close}" + "}"
    if isinstance(value, list):
        return "[" + ", ".join(encode(v) for v in value) + "]"
    if value is None:
        return "null"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def py_float(x: float) -> str:
    """A float as Python's repr prints it in a list (`5e-05`, `0.0001`)."""
    return repr(float(x))


def progress_line(step: int, skipped: int, lr: float, mom: str, shown: str | None = None) -> str:
    """engine._report_progress: `step=40, skipped=2, lr=[5e-05], mom=[[0.9, 0.999]]` (`shown`: the lr's
    text when it is not a float's)."""
    return f"[Rank 0] step={step}, skipped={skipped}, lr=[{shown or py_float(lr)}], mom={mom}"


def _json_number(ds: DsConfig, name: str, value: float) -> str:
    """A scheduler param as Python prints the JSON's value: `0` for an integer, else the float's repr."""
    params = ds.user_config().get("scheduler", {}).get("params", {})
    given = params.get(name) if isinstance(params, dict) else None
    return str(given) if isinstance(given, int) and not isinstance(given, bool) else py_float(value)


def throughput_line(
    micro_step: int, global_step: int, running: float, current: float, allocated: float, max_allocated: float
) -> str:
    """ThroughputTimer.stop's report (samples per second unrounded, memory in GiB rounded to 2 places)."""
    return (
        f"epoch=0/micro_step={micro_step}/global_step={global_step}, RunningAvgSamplesPerSec={running!r}, "
        f"CurrSamplesPerSec={current!r}, MemAllocated={round(allocated / _GIB, 2)!r}GB, "
        f"MaxMemAllocated={round(max_allocated / _GIB, 2)!r}GB"
    )


def memory_lines(message: str, m: MemoryUsage) -> list[str]:
    """runtime/utils.see_memory_usage: plain print()s on global rank 0, whatever the log level; the f-string's
    backslash continuations keep each next line's 8-space indent, hence the 9 spaces and the trailing one."""
    gap = " " * 9
    return [
        message,
        f"MA {round(m.allocated / _GIB, 2)} GB{gap}Max_MA {round(m.max_allocated / _GIB, 2)} GB{gap}"
        f"CA {round(m.reserved / _GIB, 2)} GB{gap}Max_CA {round(m.max_reserved / _GIB)} GB ",
        f"CPU Virtual Memory:  used = {round(m.host_used / _GIB, 2)} GB, percent = {m.host_percent}%",
    ]


def timers_line(t: EngineTimes, suffix: str) -> str:
    """SynchronizedWallClockTimer.log through print_dist(ranks=[0]): `[Rank 0] time (ms) | fwd...: 1.23 |
    ...`, suffix "_microstep" for the micro-step timers, "" for the global ones."""
    parts = (
        ("fwd", t.fwd),
        ("bwd", t.bwd),
        ("bwd_inner", t.bwd_inner),
        ("bwd_allreduce", t.bwd_allreduce),
        ("step", t.step),
    )
    return "[Rank 0] time (ms)" + "".join(f" | {name}{suffix}: {ms:.2f}" for name, ms in parts)


def config_rows(ds: DsConfig, job: JobSpec) -> list[tuple[str, str]]:
    """The attributes DeepSpeedConfig.print dumps (sorted by name), with this job's values."""
    fp16 = ds.precision == "fp16"
    rows = {
        "activation_checkpointing_config": '{\n    "partition_activations": false, \n    "contiguous_memory_'
        'optimization": false, \n    "cpu_checkpointing": false, \n    "number_checkpoints": null, \n    '
        '"synchronize_checkpoint_boundary": false, \n    "profile": false\n}',
        "amp_enabled": "False",
        "amp_params": "False",
        "bfloat16_config": (
            f"enabled={ds.precision == 'bf16'} immediate_grad_update=True check_grad_overflow=False"
        ),
        "checkpoint_parallel_write_pipeline": "False",
        "checkpoint_tag_validation_enabled": "True",
        "checkpoint_tag_validation_fail": "False",
        "communication_data_type": "None",
        "curriculum_enabled_legacy": "False",
        "curriculum_params_legacy": "False",
        "dataloader_drop_last": "False",
        "disable_allgather": "False",
        "dump_state": "False",
        "elasticity_enabled": "False",
        "float16_config": (
            f"enabled={fp16} auto_cast=False loss_scale=0.0 initial_scale_power={ds.initial_scale_power} "
            f"loss_scale_window={ds.loss_scale_window} hysteresis={ds.hysteresis} "
            "consecutive_hysteresis=False "
            f"min_loss_scale={int(ds.min_loss_scale)} fp16_master_weights_and_grads=False"
        ),
        "global_rank": "0",
        "grad_accum_dtype": "None",
        "gradient_accumulation_steps": str(job.grad_accum),
        "gradient_clipping": repr(ds.gradient_clipping),
        "gradient_predivide_factor": "1.0",
        "graph_harvesting": "False",
        "load_universal_checkpoint": "False",
        "log_level": ds.log_level,
        "memory_breakdown": str(ds.memory_breakdown),
        "mics_hierarchial_params_gather": "False",
        "mics_shard_size": "-1",
        "optimizer_legacy_fusion": "False",
        "optimizer_name": ds.optimizer.lower() if ds.optimizer else "None",
        "prescale_gradients": "False",
        "scheduler_name": ds.scheduler or "None",
        "seq_parallel_communication_data_type": "torch.float32",
        "sparse_attention": "None",
        "sparse_gradients_enabled": "False",
        "steps_per_print": str(ds.steps_per_print),
        "train_batch_size": str(job.global_batch),
        "train_micro_batch_size_per_gpu": str(job.micro_batch),
        "use_data_before_expert_parallel_": "False",
        "use_node_local_storage": "False",
        "wall_clock_breakdown": str(ds.wall_clock_breakdown),
        "world_size": str(job.dp),
        "zero_allow_untested_optimizer": "False",
        "zero_config": " ".join(
            (
                f"stage={ds.zero_stage} contiguous_gradients=True reduce_scatter=True",
                f"reduce_bucket_size={ds.reduce_bucket_size} use_multi_rank_bucket_allreduce=True",
                f"allgather_partitions=True allgather_bucket_size={ds.allgather_bucket_size}",
                "overlap_comm=False load_from_fp32_weights=True elastic_checkpoint=False offload_param=None",
                f"offload_optimizer={_OFFLOAD if ds.cpu_offload else None}",
                "sub_group_size=1000000000 cpu_offload_param=None cpu_offload_use_pin_memory=None",
                "cpu_offload=None prefetch_bucket_size=50000000 param_persistence_threshold=100000",
                "model_persistence_threshold=9223372036854775807 max_live_parameters=1000000000",
                "max_reuse_distance=1000000000 gather_16bit_weights_on_model_save=False",
                "module_granularity_threshold=0 use_all_reduce_for_fetch_params=False",
                "stage3_gather_fp16_weights_on_model_save=False ignore_unused_parameters=True",
                f"legacy_stage1=False round_robin_gradients={ds.round_robin_gradients}",
                "zero_hpz_partition_size=1",
                "zero_quantized_weights=False zero_quantized_nontrainable_weights=False",
                "zero_quantized_gradients=False zeropp_loco_param=None mics_shard_size=-1",
                "mics_hierarchical_params_gather=False memory_efficient_linear=True",
                "pipeline_loading_checkpoint=False override_module_apply=True log_trace_cache_warnings=False",
            )
        ),
        "zero_enabled": str(ds.zero_stage > 0),
        "zero_force_ds_cpu_optimizer": "True",
        "zero_optimization_stage": str(ds.zero_stage),
    }
    return sorted(rows.items())


class DeepSpeedDialect:
    """DeepSpeed's engine lines (rank 0, at the config's log_level); no structlog, bar or grid."""

    name: ClassVar[str] = "deepspeed"
    hints: ClassVar[HintRule] = HINTS
    grid: ClassVar[bool] = False  # the grid is fakerun's own: --fake-grid shows it
    # init_distributed's timeout: deepspeed.constants.default_pg_timeout, 10 minutes unless DEEPSPEED_TIMEOUT.
    nccl_timeout_s: ClassVar[float] = 60.0 * 10

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        self.ds = DsConfig()
        self.job: JobSpec | None = None

    def wants(self, kind: type[Event]) -> bool:
        """Rank 0 logs (log_dist ranks=[0]); every rank learns the config from JobStarted."""
        if kind in (JobStarted, ModelBuilt):
            return True  # ModelBuilt: deepspeed.initialize's unfiltered lines on every rank
        if self.seat.rank != 0:
            # Stage 0's fp16 wrappers log their loss scale changes on every rank.
            return kind is StepDone and self.ds.info and self._stage0_fp16()
        # The breakdowns print()s whatever the log level.
        printed = self.ds.wall_clock_breakdown or self.ds.memory_breakdown
        return (kind is StepDone and printed) or (self.ds.info and kind in (StepDone, CheckpointSaving))

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """The engine's lines for the events DeepSpeed logs at; nothing for the others."""
        if isinstance(event, JobStarted):
            # What the config says is known from the start: deepspeed.initialize reads it.
            self.ds = event.run.deepspeed or DsConfig(zero_stage=event.run.job.zero_stage)
            self.job = event.run.job
            return ()
        if isinstance(event, ModelBuilt) and self.seat.rank != 0:
            return [Line(text) for text in self.other_rank_init(at)]
        if isinstance(event, ModelBuilt) and self.job is not None:
            # memory_breakdown's first two calls come before the engine configures the model.
            init = (
                "DeepSpeed Engine: After args sanity test",
                "DeepSpeed Engine: Before configure distributed model",
            )
            out = [
                t for message, m in zip(init, event.ds_memory, strict=False) for t in memory_lines(message, m)
            ]
            if not self.ds.info:
                return [Line(text) for text in out + self.init_timer(self.job) + self.scheduler_warning(at)]
            return [Line(text) for text in out + self.engine_init(self.job, at)]
        if isinstance(event, StepDone) and self.seat.rank != 0:
            return [Line(text) for text in self.scaler_lines(event.ds_scale, at)]
        if self.seat.rank != 0:
            return ()
        if isinstance(event, StepDone):
            return [Line(text) for text in self.step(event, at)]
        if not self.ds.info:
            return ()
        if isinstance(event, CheckpointSaving):
            tag = f"global_step{event.step}"
            p = prefix(at, _LOG_DIST)
            return [
                Line(f"{p}[Rank 0] [Torch] Checkpoint {tag} is about to be saved!"),
                Line(f"{p}[Rank 0] Saving model checkpoint: checkpoints/{tag}/mp_rank_00_model_states.pt"),
            ]
        return ()

    def _stage0_fp16(self) -> bool:
        """Whether stage 0's 16-bit wrapper scales the loss (fp16; bf16 has no scaler)."""
        return self.ds.stage0_wrapper is not None and self.ds.precision == "fp16"

    def init_timer(self, job: JobSpec) -> list[str]:
        """ZeRO-3's initialize_optimizer_states logs its timer (print_dist, with wall_clock_breakdown)."""
        if self.ds.zero_stage != 3 or not self.ds.wall_clock_breakdown or self.seat.rank != 0:
            return []
        return [f"[Rank 0] time (ms) | init_optimizer_state: {init_optimizer_ms(job, self.seat.rank):.2f}"]

    def mom(self) -> str:
        """get_mom(): the optimizer's betas per param group, a list as configured, FusedAdam's tuple else."""
        betas = self.ds.betas
        if betas is not None:
            return "[[" + ", ".join(py_float(b) for b in betas) + "]]"
        return "[(0.9, 0.999)]"

    def scheduler_repr(self, job: JobSpec) -> str:
        """The configured scheduler object's default repr: its class and a heap address of this process."""
        if self.ds.scheduler is None:
            return "None"
        # CPython's heap on x86-64 Linux: 0x7f plus ten hex digits, 16-byte aligned.
        u = rand.uniform(job.seed, "ds-lr-scheduler-address", self.seat.rank)
        address = 0x7F0000000000 + (int(u * 0xFFFFFFFFFF) & ~0xF)
        return f"<deepspeed.runtime.lr_schedules.{self.ds.scheduler} object at {address:#x}>"

    def scheduler_warning(self, at: float) -> list[str]:
        """WarmupLR.__init__ asks get_lr() for the lr before the first step, which warns (every rank)."""
        if self.ds.scheduler not in ("WarmupLR", "WarmupDecayLR"):
            return []
        where = "lr_schedules.py:734:get_lr"
        return [
            prefix(at, where, "WARNING")
            + "Attempting to get learning rate from scheduler before it has started"
        ]

    def pinned(self, at: float, tag: str) -> list[str]:
        """pin_memory_tracker's summary (every rank): nothing pinned without offload_optimizer.pin_memory."""
        return [
            prefix(at, "pin_memory_tracker.py:56:log_summary")
            + f"[pinned-memory {tag}] 0 B pinned across 0 allocations"
        ]

    def flattening(self, at: float) -> list[str]:
        """ZeRO 1/2 flatten the (single) param group on the GPU (every rank)."""
        return [prefix(at, _ZERO.format(438)) + "Flattening param group 0 on cuda (sufficient memory)"]

    def other_rank_init(self, at: float) -> list[str]:
        """Other ranks' lines in deepspeed.initialize: DeepSpeed's logger itself filters no rank."""
        out = self.scheduler_warning(at)
        if self.ds.info and self.ds.zero_stage in (1, 2):
            out += self.flattening(at)
        if self.ds.info and self.ds.zero_stage == 3:
            out += [
                *self.pinned(at, "ZeRO-3 parameter offload init"),
                *self.pinned(at, "ZeRO-3 optimizer init"),
            ]
        return out

    def engine_init(self, job: JobSpec, at: float) -> list[str]:
        """DeepSpeedEngine.__init__ on rank 0: groups summary, optimizer, ZeRO, scheduler, config dump."""
        ds = self.ds
        job_dp = job.dp
        p = prefix(at, _LOG_DIST)
        out = [
            prefix(at, _GROUPS) + "********** distributed groups summary **********",
            f"\t self.dp_world_size={job_dp}",
            "\t self.mp_world_size=1",
            f"\t self.seq_dp_world_size={job_dp}",
            "\t self.sequence_parallel_size=1",
            "***********************************************",
            f"{p}[Rank 0] DeepSpeed Flops Profiler Enabled: False",
        ]
        if ds.optimizer:
            out.append(
                f"{p}[Rank 0] Using DeepSpeed Optimizer param name {ds.optimizer.lower()} as basic optimizer"
            )
        else:
            out.append(f"{p}[Rank 0] Using client Optimizer as basic optimizer")
        out.append(f"{p}[Rank 0] Removing param_group that has no 'params' in the basic Optimizer")
        basic = _OPTIMIZERS.get((ds.optimizer or "adamw").lower(), "FusedAdam") if ds.optimizer else "AdamW"
        out.append(f"{p}[Rank 0] DeepSpeed Basic Optimizer = {basic}")
        dtype = _DTYPES[ds.precision]
        if ds.zero_stage in (1, 2):
            out.append(f"{p}[Rank 0] Creating {dtype} ZeRO stage {ds.zero_stage} optimizer")
            out += [
                prefix(at, _ZERO.format(197)) + f"Reduce bucket size {ds.reduce_bucket_size}",
                prefix(at, _ZERO.format(198)) + f"Allgather bucket size {ds.allgather_bucket_size}",
                prefix(at, _ZERO.format(199)) + f"CPU Offload: {ds.cpu_offload}",
                prefix(at, _ZERO.format(200))
                + f"Round robin gradient partitioning: {ds.round_robin_gradients}",
                *self.flattening(at),
                prefix(at, _ZERO.format(664)) + "optimizer state initialized",
            ]
            final = "DeepSpeedZeroOptimizer"
        elif ds.zero_stage == 3:
            # The MiCS line's "fp16" is literal in engine._configure_zero_optimizer, whatever the dtype.
            out.append(
                f"{p}[Rank 0] Creating fp16 ZeRO stage 3 optimizer, MiCS is enabled False, "
                "Hierarchical params gather False"
            )
            out.append(f"{p}[Rank 0] Creating {dtype} ZeRO stage 3 optimizer")
            out += [
                prefix(at, _STAGE3.format(216, "__init__")) + f"Reduce bucket size {ds.reduce_bucket_size}",
                prefix(at, _STAGE3.format(217, "__init__"))
                + f"Prefetch bucket size {ds.prefetch_bucket_size}",
                *self.pinned(at, "ZeRO-3 parameter offload init"),
                *self.init_timer(job),
                prefix(at, _STAGE3.format(728, "_setup_for_real_optimizer")) + "optimizer state initialized",
                *self.pinned(at, "ZeRO-3 optimizer init"),
            ]
            final = "DeepSpeedZeroOptimizer_Stage3"
        elif ds.stage0_wrapper is not None:
            # bf16 takes this path too (DDP_BFLOAT16): its LossScaleConfig keeps the static scale 1.0.
            final = ds.stage0_wrapper
            kind = "fp16" if final == "FP16_Optimizer" else "fp16 unfused"
            scale = "dynamic loss scale" if ds.precision == "fp16" else "static loss scale: 1.0"
            out.append(f"{p}[Rank 0] Creating {kind} optimizer with {scale}")
            if final == "FP16_UnfusedOptimizer":
                lamb = (ds.optimizer or "").lower() == "lamb"
                out.append(prefix(at, _UNFUSED.format(48, "__init__")) + f"Fused Lamb Legacy : {lamb} ")
        else:
            final = basic
        out.append(f"{p}[Rank 0] DeepSpeed Final Optimizer = {final}")
        out += self.scheduler_warning(at)
        out.append(f"{p}[Rank 0] DeepSpeed using configured LR scheduler = {ds.scheduler}")
        out.append(f"{p}[Rank 0] DeepSpeed LR Scheduler = {self.scheduler_repr(job)}")
        # _report_progress(0): WarmupLR's warmup_min_lr as the JSON gave it (0 stays an int), else the
        # optimizer's lr.
        start = scheduler_lr(ds, job, 0)
        shown = None if start is None else _json_number(ds, "warmup_min_lr", start)
        out.append(p + progress_line(0, 0, job.lr if start is None else start, self.mom(), shown))
        out.append(prefix(at, _CONFIG.format(1009)) + "DeepSpeedEngine configuration:")
        c = prefix(at, _CONFIG.format(1013))
        for name, value in config_rows(ds, job):
            # A multi-line value (a JSON repr) continues on unprefixed lines, as logging writes it.
            first, *rest = f"  {name} {'.' * (29 - len(name))} {value}".split("\n")
            out.append(c + first)
            out.extend(rest)
        user = encode(ds.user_config())
        lines = f"  json = {user}".split("\n")
        out.append(prefix(at, _USER_CONFIG) + lines[0])
        out.extend(lines[1:])
        return out

    def step(self, event: StepDone, at: float) -> list[str]:
        """The step's micro-steps as engine.forward/backward/step print them: memory_breakdown's calls at
        each phase; on the boundary, the optimizer's lines; the micro-step timers after every step() and the
        global ones on the boundary (wall_clock_breakdown); and the step's last memory call."""
        ga = max(event.run.job.grad_accum, 1)
        timers = event.ds_timers
        out: list[str] = []
        for i in range(ga):
            memory = event.ds_memory[i] if i < len(event.ds_memory) else ()
            for message, m in zip(ENGINE_PHASES[:-1], memory, strict=False):
                out += memory_lines(message, m)
            if i == ga - 1:
                out += self.boundary(event, at)
            if timers is not None:
                out.append(timers_line(timers.micro[i], "_microstep"))
            if timers is not None and i == ga - 1:
                out.append(timers_line(total_times(timers.micro), ""))
            if len(memory) == len(ENGINE_PHASES):
                out += memory_lines(ENGINE_PHASES[-1], memory[-1])
        return out

    def optimizer_timers(self, event: StepDone) -> list[str]:
        """The optimizer's timers.log at the end of its step(): ZeRO-1/2's and ZeRO-3's (none after an
        overflow, which returns first), FP16_Optimizer's (its overflow path logs the overflow timers)."""
        t = event.ds_timers
        if t is None:
            return []
        o = t.optimizer
        s = event.ds_scale
        overflow = s is not None and s.overflow
        if self.ds.stage0_wrapper == "FP16_Optimizer":
            if overflow and s is not None:
                # OVERFLOW_TIMERS: compute_norm exists (reset to 0) only once a step has computed a norm.
                updated = s.state.iteration - s.state.skipped > 0
                norm = "compute_norm: 0.00 | " if updated else ""
                return [f"[Rank 0] time (ms) | {norm}overflow_check: {o.overflow_check:.2f}"]
            return [
                f"[Rank 0] time (ms) | compute_norm: {o.compute_norm:.2f} | overflow_check: "
                f"{o.overflow_check:.2f} | unscale_and_clip: {o.unscale:.2f} | basic_step: {o.adam:.2f} | "
                f"update_fp16: {o.copy_back:.2f}"
            ]
        if overflow:
            return []
        if self.ds.zero_stage in (1, 2):
            return [
                f"[Rank 0] time (ms) | optimizer_allgather: {o.allgather:.2f} | optimizer_gradients: "
                f"{o.gradients:.2f} | optimizer_step: {o.step:.2f}"
            ]
        if self.ds.zero_stage == 3:
            return [f"[Rank 0] time (ms) | optimizer_step: {o.zero3_step:.2f}"]
        return []

    def scale_text(self, value: float, pristine: bool) -> str:
        """A loss scale as the stage-0 wrappers format it: the initial 2**power is an int until the first
        change, every later scale a float (halved by / 2.0, doubled by *= 2.0)."""
        return str(int(value)) if pristine else py_float(value)

    def scaler_lines(self, s: ScaleStep | None, at: float) -> list[str]:
        """The fp16 scaler's INFO lines in the optimizer's step(): ZeRO's DynamicLossScaler on an overflow
        (rank 0); stage 0's _update_scale on an overflow or an increase (every rank), and its step()'s
        overflow message (FP16_Optimizer: log_dist on rank 0; FP16_UnfusedOptimizer: every rank)."""
        if s is None or not self.ds.info:
            return []
        rank0 = self.seat.rank == 0
        if self.ds.stage0_wrapper is None:
            if not s.overflow or not rank0:
                return []
            if s.hysteresis_before > 1:
                return [
                    prefix(at, _SCALER.format(284))
                    + f"[deepspeed] OVERFLOW! Rank 0 Skipping step. Attempted "
                    f"loss scale: {int(s.attempted)}, but hysteresis is {s.hysteresis_before}. Reducing "
                    f"hysteresis to {s.hysteresis_before - 1}"
                ]
            return [
                prefix(at, _SCALER.format(277)) + f"[deepspeed] OVERFLOW! Rank 0 Skipping step. Attempted "
                f"loss scale: {int(s.attempted)}, reducing to {int(s.state.scale)}"
            ]
        fused = self.ds.stage0_wrapper == "FP16_Optimizer"
        skipped_before = s.state.skipped - (1 if s.overflow else 0)
        pristine = skipped_before == 0 and s.attempted == 2**self.ds.initial_scale_power
        prev, cur = self.scale_text(s.attempted, pristine), self.scale_text(s.state.scale, False)
        iteration = s.state.iteration - 1  # cur_iter before _update_scale's increment
        if not s.overflow:
            if s.state.scale <= s.attempted:
                return []
            lines = (414, 415) if fused else (289, 290)
            at_line = [_FUSED.format(i) if fused else _UNFUSED.format(i, "_update_scale") for i in lines]
            return [
                prefix(at, at_line[0]) + f"No Grad overflow for {self.ds.loss_scale_window} iterations",
                prefix(at, at_line[1]) + f"Increasing dynamic loss scale from {prev} to {cur}",
            ]
        if fused:
            out = [
                # The message starts with a newline: the prefix ends its own line.
                prefix(at, _FUSED.format(406)),
                f"Grad overflow on iteration {iteration}",
                prefix(at, _FUSED.format(407)) + f"Reducing dynamic loss scale from {prev} to {cur}",
            ]
            if rank0:
                out.append(
                    prefix(at, _LOG_DIST) + f"[Rank 0] Overflow detected. Skipping step. Attempted loss "
                    f"scale: {prev}, reducing to {cur}"
                )
            return out
        lamb = (self.ds.optimizer or "").lower() == "lamb"
        where = _UNFUSED.format(155, "step_fused_lamb") if lamb else _UNFUSED.format(203, "step")
        return [
            prefix(at, _UNFUSED.format(281, "_update_scale")) + f"Grad overflow on iteration: {iteration}",
            prefix(at, _UNFUSED.format(282, "_update_scale"))
            + f"Reducing dynamic loss scale from {prev} to {cur}",
            prefix(at, where) + "[deepspeed] fp16 dynamic loss scale overflow! Skipping step. Attempted loss "
            f"scale: {prev}, reducing to {cur}",
        ]

    def boundary(self, event: StepDone, at: float) -> list[str]:
        """_take_model_step's lines: the optimizer's loss scale messages (INFO), then its timers (printed
        with wall_clock_breakdown); step= and the throughput timer every steps_per_print (INFO)."""
        n = event.numbers
        s = event.ds_scale
        out = self.scaler_lines(s, at) + self.optimizer_timers(event)
        if not self.ds.info:
            return out
        spp = self.ds.steps_per_print
        if n.step % spp == 0:
            skipped = s.state.skipped if s is not None else 0
            out.append(prefix(at, _LOG_DIST) + progress_line(n.step, skipped, n.lr, self.mom()))
            job = event.run.job
            running = (
                job.global_batch / (event.timed_s / event.timed_steps) if event.timed_steps else float("-inf")
            )
            current = job.global_batch / n.step_time_s
            # memory_breakdown resets the peak at every call: the timer's maximum is the optimizer step's.
            peak = (
                event.ds_memory[-1][-1].max_allocated if event.ds_memory else n.mem_max_allocated_gib * _GIB
            )
            out.append(
                prefix(at, _TIMER)
                + throughput_line(
                    n.step * job.grad_accum,
                    n.step,
                    running,
                    current,
                    n.mem_allocated_gib * _GIB,
                    peak,
                )
            )
        return out
