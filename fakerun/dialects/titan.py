"""torchtitan (0.2.1, the last release read from a TOML --job.config_file): its start-up, step, GC,
checkpoint and shutdown lines, on every rank, as torchtitan/train.py and its components log them."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import ClassVar

from fakerun.dialects import files
from fakerun.dialects.base import HintRule, Line, Output, Seat, log_time, words
from fakerun.dialects.events import (
    CheckpointLoaded,
    CheckpointLoading,
    CheckpointSaved,
    CheckpointSaving,
    DatasetReady,
    EvalDone,
    Event,
    JobStarted,
    ModelBuilt,
    ProcessGroupReady,
    StepDone,
    TokenizerLoaded,
    TrainingFinished,
    TrainingStarted,
    WorkerStarted,
)
from fakerun.frameworks import titan_flavors
from fakerun.sim.job import JobSpec
from fakerun.sim.run import ENDING_TITAN, RunPlan

# torchtitan's options are `--section.key` of its TOML config's sections.
HINTS = HintRule(
    script=re.compile(r"titan"),
    sections=words(
        "job profiling metrics model optimizer lr_scheduler training parallelism checkpoint "
        "activation_checkpoint float8 mx comm memory_estimation fault_tolerance experimental validation "
        "debug compile"
    ),
    save_option="titan.saves",  # checkpoint.enable: hints.py sets it from the config and the command line
)

VERSION = "0.2.1"
_GIB = 1024.0**3
# torchtitan/tools/utils.py's Color (and NoColor: every code empty).
_COLORS = {
    "red": "\033[31m",
    "green": "\033[32m",
    "yellow": "\033[33m",
    "blue": "\033[34m",
    "magenta": "\033[35m",
    "cyan": "\033[36m",
    "reset": "\033[39m",
    "orange": "\033[38;2;180;60;0m",
    "turquoise": "\033[38;2;54;234;195m",
}
_NO_COLORS = dict.fromkeys(_COLORS, "")
# checkpoint.export_dtype -> bytes per weight of the final model-only save, and the dtype's name as logged.
_EXPORT_DTYPES = {
    "float32": (4, "torch.float32"),
    "bfloat16": (2, "torch.bfloat16"),
    "float16": (2, "torch.float16"),
}
_TRUE = ("true", "1", "yes")
# Where torchtitan's hf_datasets/text_datasets.py finds a dataset by name.
_DATASET_PATHS = {"c4": "allenai/c4", "c4_validation": "allenai/c4", "c4_test": "tests/assets/c4_test"}
_SLEEP_S = 2.0  # train(): rank 0 sleeps 2 seconds before "Training completed"
# tools/utils.get_peak_flops: bf16 dense FLOPS by a substring of the device's name, first match wins; other
# devices fall back to A100's with a warning. Its MFU divides by these, not the datasheet's exact value.
_PEAK_FLOPS = (
    ("A100", 312e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("B200", 2.25e15),
    ("MI355X", 2500e12),
    ("MI300X", 1300e12),
    ("MI325X", 1300e12),
    ("MI250X", 191.5e12),
    ("l40s", 362e12),
)
_FALLBACK_FLOPS = 312e12
# The registry form's ActivationCheckpointing subclasses by activation_checkpoint.mode: apply() logs the class
# name (activation_checkpoint.py at the mirror's HEAD).
_AC_CLASSES = {"selective": "SelectiveAC", "full": "FullAC"}


def prefix(at: float, level: str = "INFO") -> str:
    """torchtitan's logging format: `[titan] %(asctime)s - %(name)s - %(levelname)s - `, the root logger."""
    return f"[titan] {log_time(at)} - root - {level} - "


def step_line(
    *,
    timestamp: str,
    step: int,
    loss: float,
    grad_norm: float,
    memory_gib: float,
    memory_pct: float,
    tps: float,
    tflops: float,
    mfu_pct: float,
    color: bool = False,
) -> str:
    """components/metrics.py's step line (every rank logs it; tps and tflops differ in the last digits)."""
    c = _COLORS if color else _NO_COLORS
    return (
        f"[titan] {timestamp} - root - INFO - {c['red']}step: {step:2}  "
        f"{c['green']}loss: {loss:8.5f}  "
        f"{c['orange']}grad_norm: {grad_norm:7.4f}  "
        f"{c['turquoise']}memory: {memory_gib:5.2f}GiB({memory_pct:.2f}%)  "
        f"{c['blue']}tps: {round(tps):,}  "
        f"{c['cyan']}tflops: {tflops:,.2f}  "
        f"{c['magenta']}mfu: {mfu_pct:.2f}%{c['reset']}"
    )


def peak_flops(device_name: str) -> float | None:
    """The peak torchtitan computes MFU against for this device, None when it falls back to A100's."""
    return next((flops for key, flops in _PEAK_FLOPS if key in device_name), None)


def mesh_dims(job: JobSpec, dp_replicate: int) -> list[str]:
    """ParallelDims.build_mesh's one-dimensional meshes larger than 1, in its dictionary's order (the job's
    data-parallel degree is torchtitan's batch degree, dp_replicate x dp_shard)."""
    cp = job.cp
    dp_shard = max(job.dp // dp_replicate, 1)
    batch = dp_replicate * dp_shard
    fsdp = dp_shard * cp
    efsdp = fsdp * job.tp // max(job.ep, 1)  # etp = 1
    sizes = {
        "pp": job.pp,
        "batch": batch,
        "loss": batch * cp,
        "dp_replicate": dp_replicate,
        "fsdp": fsdp,
        "cp": cp,
        "tp": job.tp,
        "ep": job.ep,
        "efsdp": efsdp,
    }
    return [name for name, size in sizes.items() if size > 1]


def registry_mesh_dims(job: JobSpec, dp_replicate: int, spmd_backend: str = "spmd_types") -> list[str]:
    """The registry form's get_all_one_dimensional_meshes: _single_axis_meshes' names larger than 1, in its
    order, efsdp only with EP above 1 (_mesh_exist), then spmd_types' dp and dp_shard or partial_dtensor's
    fsdp (parallel_dims.py at the mirror's HEAD)."""
    cp, tp, ep = job.cp, job.tp, max(job.ep, 1)
    dp_shard = max(job.dp // dp_replicate, 1)
    batch = dp_replicate * dp_shard
    sizes = {
        "pp": job.pp,
        "batch": batch,
        "loss": batch * cp,
        "dp_replicate": dp_replicate,
        "cp": cp,
        "tp": tp,
        "ep": ep,
        "efsdp": dp_shard * cp * tp // ep if ep > 1 else 1,
    }
    if spmd_backend == "spmd_types":
        sizes |= {"dp": batch, "dp_shard": dp_shard}
    else:
        sizes["fsdp"] = dp_shard * cp
    return [name for name, size in sizes.items() if size > 1]


class TitanDialect:
    """torchtitan's root-logger lines on every rank (torchrun's --local-ranks-filter chooses which show)."""

    name: ClassVar[str] = "titan"
    hints: ClassVar[HintRule] = HINTS
    grid: ClassVar[bool] = False  # the grid is fakerun's own: --fake-grid shows it
    # JobConfig's comm.train_timeout_seconds and comm.init_timeout_seconds (torchtitan 0.2.1's job_config.py):
    # train.py sets the former after step 1.
    nccl_timeout_s: ClassVar[float] = 100.0
    nccl_init_timeout_s: ClassVar[float | None] = 300.0

    @classmethod
    def ending(cls, settings: Mapping[str, str]) -> tuple[str, bool]:
        """train()'s loop saves and validates at its intervals; nothing follows it (sim/run.ENDING_TITAN)."""
        return ENDING_TITAN, False

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        self.settings: dict[str, str] = {}
        self.job: JobSpec | None = None
        self.run: RunPlan | None = None

    @staticmethod
    def artifacts(request: files.SaveRequest) -> Sequence[files.Artifact | files.Removal]:
        """CheckpointManager's DCP save: `{dump_folder}/{checkpoint.folder}/step-N/`, each rank's
        `__R_0.distcp` and rank 0's `.metadata`; the last step's model-only save in its export_dtype; then
        rank 0's purge of the step folders keep_latest_k rotates out. torchtitan exports nothing else."""
        s = request.settings
        if s.get("titan.saves") != "1" or request.kind != "checkpoint":
            return ()
        folder = checkpoint_folder(s)
        saved: list[files.Artifact | files.Removal] = [
            *files.distcp(f"{folder}/step-{request.step}", request)
        ]
        if _model_only_last(s, request.step, request.run.job.total_steps):
            width = _EXPORT_DTYPES.get(s.get("checkpoint.export_dtype", "float32"), _EXPORT_DTYPES["float32"])
            share = request.run.job.model.params * width[0] // request.world_size
            saved[0] = files.Artifact(f"{folder}/step-{request.step}/__{request.rank}_0.distcp", share)
        stale = rotated_out(s, request.run, request.step)
        if stale is not None and request.rank == 0:
            saved.append(files.Removal(f"{folder}/step-{stale}"))
        return saved

    def _set(self, key: str, default: str) -> str:
        return self.settings.get(key, default)

    def _on(self, key: str, default: bool = False) -> bool:
        return self._set(key, "true" if default else "false").lower() in ("true", "1", "yes")

    @property
    def _colors(self) -> dict[str, str]:
        return _COLORS if self.seat.color and not self._on("metrics.disable_color_printing") else _NO_COLORS

    def _names(self) -> tuple[str, str]:
        """torchtitan's model name and flavor (`llama3`, `8B`), as configured or from the preset's name."""
        assert self.job is not None
        flavor = self.job.model.name.rsplit("-", 1)[-1].upper()
        name = self._set("titan.model.name", self._set("model.name", "llama3"))
        return name, self._set("titan.model.flavor", self._set("model.flavor", flavor))

    def _dump_folder(self) -> str:
        return self._set("job.dump_folder", "./outputs").rstrip("/")

    def wants(self, kind: type[Event]) -> bool:
        """The events torchtitan logs something for."""
        return kind in _WANTED

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """torchtitan's lines for `event` on this rank."""
        if isinstance(event, JobStarted):
            self.settings = dict(event.settings)
            self.job = event.run.job
            self.run = event.run
            return () if event.first else self._start(at)
        if self.job is None:
            return ()
        texts = self._texts(event, at)
        return [Line(t) for t in texts]

    def _start(self, at: float) -> list[Line]:
        p = prefix(at)
        version = Line(
            f"{p}torchtitan version: {VERSION} (0.0.0 means __version__ is not defined correctly)."
        )
        if self._registry:  # the registry form's train.py main() logs the version only
            return [version]
        return [version, Line(f"{p}Starting job: {self._set('job.description', 'default job')}")]

    def _texts(self, event: Event, at: float) -> list[str]:
        job = self.job
        assert job is not None
        p = prefix(at)
        if isinstance(event, WorkerStarted):
            return [line.text for line in self._start(at)]
        if isinstance(event, ProcessGroupReady):
            rep = self._dp_replicate
            degrees = f"pp={job.pp}, dp_replicate={rep}, dp_shard={job.dp // rep}, cp={job.cp}, tp={job.tp}"
            if self._registry:  # the registry form's ParallelDims has no etp
                degrees += f", ep={job.ep}"
                meshes = registry_mesh_dims(job, rep, self._set("parallelism.spmd_backend", "spmd_types"))
            else:
                degrees += f", ep={job.ep}, etp=1"
                meshes = mesh_dims(job, rep)
            return [
                f"{p}Building device mesh with parallelism: {degrees}",
                f"{p}Successfully created meshes with active dimensions: {meshes}",
                f"{p}[GC] Initial GC collection took 0.00 seconds",
            ]
        if isinstance(event, TokenizerLoaded):
            return [f"{p}Loading tokenizer from tokenizer.json"]
        if isinstance(event, DatasetReady) and not self._registry:  # the registry's dataloader logs nothing
            name = self._set("training.dataset", "c4_test")
            return [f"{p}Preparing {name} dataset from {_DATASET_PATHS.get(name, name)}"]
        if isinstance(event, ModelBuilt):
            return self._built(event, at)
        if isinstance(event, CheckpointLoading):
            return [f"{p}Loading the checkpoint from {self._checkpoint_dir(event.step)}."]
        if isinstance(event, CheckpointLoaded):
            return [
                f"{p}[GC] GC collection for checkpoint loading. took 0.01 seconds",
                f"{p}Finished loading the checkpoint in {event.seconds:.2f} seconds.",
            ]
        if isinstance(event, TrainingStarted):
            out = [f"{p}Training starts at step {event.first_step}"]
            if self._on("profiling.enable_profiling"):
                traces = self._set("profiling.save_traces_folder", "profile_traces")
                out.append(f"{p}Profiling active. Traces will be saved at {self._dump_folder()}/{traces}")
            return out
        if isinstance(event, StepDone):
            return self._step(event, at)
        if isinstance(event, EvalDone) and self._on("validation.enable"):
            c = self._colors
            return [
                f"{p}{c['yellow']}validate step: {event.step:2}  "
                f"{c['green']}loss: {event.loss:7.4f}{c['reset']}"
            ]
        if isinstance(event, CheckpointSaving) and self._checkpointing():
            out = []
            if _model_only_last(self.settings, event.step, job.total_steps):
                dtype = _EXPORT_DTYPES.get(
                    self._set("checkpoint.export_dtype", "float32"), _EXPORT_DTYPES["float32"]
                )
                out.append(
                    f"{p}Saving a model only checkpoint in {dtype[1]} at last step, step {event.step}."
                )
            elif event.step >= job.total_steps:
                out.append(f"{p}Saving a full checkpoint at last step, step {event.step}.")
            return [f"{p}Saving the checkpoint (or staging if async is enabled).", *out]
        if isinstance(event, CheckpointSaved) and self._checkpointing():
            gc = f"{p}[GC] GC collection invoked by checkpointer. took 0.01 seconds"
            if event.step >= job.total_steps:
                return [gc]  # save() returns right after _save_last_step: no "Finished" line, no purge
            return [
                gc,
                # torchtitan's two f-strings join without a space before "in".
                f"{p}Finished saving the checkpoint (or staging if async is enabled)"
                f"in {event.seconds:.2f} seconds.",
                *self._purged(event.step, at),
            ]
        if isinstance(event, TrainingFinished):
            # Rank 0 sleeps before "Training completed"; every rank logs it, then close() stops the purge
            # thread (keep_latest_k > 0) and main() destroys the process group.
            done = prefix(at + _SLEEP_S) if self.seat.rank == 0 else p
            out = [f"{p}Sleeping 2 seconds for other ranks to complete"] if self.seat.rank == 0 else []
            out.append(f"{done}Training completed")
            if self._checkpointing() and keep_latest_k(self.settings) > 0:
                out.append(f"{done}Destroying the purge thread.")
            return [*out, f"{done}Process group destroyed"]
        return []

    def _purged(self, step: int, at: float) -> list[str]:
        """Rank 0's purge thread deleting the folder keep_latest_k rotates out after the save of `step`."""
        stale = rotated_out(self.settings, self.run, step) if self.run is not None else None
        if stale is None or self.seat.rank != 0:
            return []
        path = f"{checkpoint_folder(self.settings)}/step-{stale}"
        p = prefix(at)
        # shutil.rmtree of world_size + 1 files: milliseconds.
        seconds = 0.001 * (self.job.world_size + 1) if self.job is not None else 0.0
        return [
            f"{p}Checkpointer is deleting {path}.",
            f"{p}Checkpointer deleted {path} in {seconds:.2f} seconds.",
        ]

    def _checkpointing(self) -> bool:
        return self._on("checkpoint.enable")

    @property
    def _registry(self) -> bool:
        """Whether the job is the --module/--config registry form (the sources after 0.2.x)."""
        return bool(self._set("titan.registry", ""))

    @property
    def _dp_replicate(self) -> int:
        """data_parallel_replicate_degree as configured when it divides the job's batch degree, else 1."""
        assert self.job is not None
        rep = int(self._set("parallelism.data_parallel_replicate_degree", "1") or 1)
        return rep if rep > 0 and self.job.dp % rep == 0 else 1

    def _checkpoint_dir(self, step: int) -> str:
        return f"{checkpoint_folder(self.settings)}/step-{step}"

    def _built(self, event: ModelBuilt, at: float) -> list[str]:
        job = self.job
        assert job is not None
        p = prefix(at)
        c = self._colors
        name, flavor = self._names()
        m = job.model
        try:
            args = titan_flavors.flavor_args(name, flavor)
        except titan_flavors.TitanError:  # a model the flavor tables lack: Llama 3's arguments of its shape
            args = {
                **titan_flavors.flavor_args("llama3", "8B"),
                "dim": m.hidden,
                "n_layers": m.layers,
                "n_heads": m.heads,
                "n_kv_heads": m.kv_heads,
                "vocab_size": m.vocab,
            }
        # update_from_config: the model's context is the training sequence length
        args["max_seq_len"] = job.seq_len
        # 0.2.x's f-string has no space between the flavor and "with"; the registry's trainer.py names the
        # model only.
        dump = (
            [f"{p}Building {name} {flavor}"]
            if self._registry
            else f"{p}Building {name} {flavor}with {json.dumps(args, indent=2, ensure_ascii=False)}".split(
                "\n"
            )
        )
        gpu = job.gpu.display_name
        capacity = event.capacity_bytes or job.gpu.memory_mib * 1024.0**2
        out = [
            *dump,
            *self._tensorboard(at),
            f"{p}CUDA capacity: {gpu} with {capacity / _GIB:.2f}GiB memory",
            f"{p}{c['blue']}Model {name} {flavor} {c['red']}size: {m.params:,} total parameters{c['reset']}",
        ]
        if job.tp > 1:
            out.append(f"{p}Applied Tensor Parallelism to the model")
        ac = self._set("activation_checkpoint.mode", job.recompute if job.recompute != "none" else "none")
        if ac != "none":
            named = _AC_CLASSES.get(ac, ac) if self._registry else ac
            out.append(f"{p}Applied {named} activation checkpointing to the model")
        rep = self._dp_replicate
        # parallel_dims.fsdp_enabled: dp_shard or cp above 1 (the fsdp mesh is dp_shard x cp).
        sharded = job.dp // rep > 1 or job.cp > 1
        if sharded:
            out.append(f"{p}Applied {'HSDP' if rep > 1 else 'FSDP'} to the model")
            if job.cp > 1:
                out.append(f"{p}Applied Context Parallel to the model")
        elif job.dp > 1:
            out.append(f"{p}Applied DDP to the model")
        peak = peak_flops(gpu)
        if peak is None:
            out.append(f"{prefix(at, 'WARNING')}Peak flops undefined for: {gpu}, fallback to A100")
        out.append(f"{p}Peak FLOPS used for computing MFU: {peak or _FALLBACK_FLOPS:.3e}")
        out.append(
            f"{p}CUDA memory usage for model: {event.weights_bytes / _GIB:.2f}GiB"
            f"({100.0 * event.weights_bytes / capacity:.2f}%)"
        )
        if self._checkpointing():
            folder = checkpoint_folder(self.settings)
            out.append(f"{p}Checkpointing active. Checkpoints will be loaded from and saved to {folder}")
        if self._registry:
            pass  # the registry form's trainer.py logs no mixed precision line
        elif sharded:
            out.append(f"{p}Mixed precision training is handled by fully_shard")
        elif job.tp > 1 or job.pp > 1:
            out.append(
                f"{prefix(at, 'WARNING')}Mixed precision training with TP or PP is only supported when "
                "FSDP/HSDP/CP is enabled."
            )
            out.append(f"{p}Mixed precision training is disabled")
        else:
            out.append(f"{p}Mixed precision training is handled by AMP")
        # With pipeline stages a local batch runs as micro batches inside the schedule, not as accumulation.
        pipelined = job.pp > 1
        local = job.micro_batch * job.grad_accum if pipelined else job.micro_batch
        accum = 1 if pipelined else job.grad_accum
        if self._registry:  # trainer.py counts tokens: a DP rank's per micro step, and the step's
            sizes = (
                f"{local * job.seq_len} tokens per DP rank, {job.tokens_per_step} tokens per train step, "
                f"gradient accumulation steps {accum}, maximum context length {job.seq_len}"
            )
        else:
            sizes = (
                f"local batch size {local}, global batch size {job.global_batch}, "
                f"gradient accumulation steps {accum}, sequence length {job.seq_len}"
            )
        steps = f"total steps {job.total_steps} (warmup {job.warmup_steps})"
        out.append(f"{p}Trainer is initialized with {sizes}, {steps}")
        return out

    def _tensorboard(self, at: float) -> list[str]:
        """MetricsProcessor's TensorBoardLogger line, on the rank _get_metrics_rank picks: rank 0, or with
        pipeline stages (but the ZBVZeroBubble schedule) the last stage's first rank; datetime.now() dates
        its folder (0.2.x metrics.py and the registry form's alike)."""
        job = self.job
        assert job is not None
        if not self._on("metrics.enable_tensorboard") or self.seat.rank != metrics_rank(self.settings, job):
            return []
        return [
            f"{prefix(at)}TensorBoard logging enabled. Logs will be saved at {tb_folder(self.settings, at)}"
        ]

    def _step(self, event: StepDone, at: float) -> list[str]:
        n = event.numbers
        out: list[str] = []
        gc_freq = int(self._set("training.gc_freq", "50") or 50)
        if gc_freq > 0 and n.step > 1 and n.step % gc_freq == 0:
            # GarbageCollection.run runs at the start of the step, before its metrics are logged.
            out.append(f"{prefix(at)}[GC] Performing periodic GC collection took {event.gc_s:.2f} seconds")
        if event.logged:
            # get_num_flop_per_token counts attention over the whole sequence, as the job's figures do.
            tflops = event.rank_tflops
            out.append(
                step_line(
                    timestamp=log_time(at),
                    step=n.step,
                    loss=n.loss,
                    grad_norm=n.grad_norm,
                    memory_gib=n.mem_gib,
                    memory_pct=n.mem_pct,
                    tps=n.rank_tokens_per_s,
                    tflops=tflops,
                    mfu_pct=mfu_pct(event.run.job, tflops),
                    color=bool(self._colors["red"]),
                )
            )
        return out


def metrics_rank(settings: Mapping[str, str], job: JobSpec) -> int:
    """_get_metrics_rank: rank 0, or with pipeline stages (but the ZBVZeroBubble schedule) the last stage's
    first rank."""
    schedule = settings.get("parallelism.pipeline_parallel_schedule", "1F1B")
    last_stage = job.world_size // job.pp * (job.pp - 1)
    return last_stage if job.pp > 1 and schedule != "ZBVZeroBubble" else 0


def tb_folder(settings: Mapping[str, str], at: float) -> str:
    """MetricsProcessor's TensorBoard folder: {dump_folder}/{save_tb_folder}/ dated by datetime.now() at
    `at`."""
    dump = settings.get("job.dump_folder", "./outputs").rstrip("/")
    tb = settings.get("metrics.save_tb_folder", "tb")
    return f"{dump}/{tb}/{time.strftime('%Y%m%d-%H%M', time.localtime(at))}"


def mfu_pct(job: JobSpec, tflops: float) -> float:
    """The MFU (%) torchtitan logs for `tflops` per GPU, against its own table's peak for the device."""
    return 100.0 * tflops * 1e12 / (peak_flops(job.gpu.display_name) or _FALLBACK_FLOPS)


def checkpoint_folder(settings: Mapping[str, str]) -> str:
    """CheckpointManager.folder: os.path.join(job.dump_folder, checkpoint.folder)."""
    dump = settings.get("job.dump_folder", "./outputs").rstrip("/")
    return f"{dump}/{settings.get('checkpoint.folder', 'checkpoint')}"


def keep_latest_k(settings: Mapping[str, str]) -> int:
    """checkpoint.keep_latest_k (JobConfig's default 10; 0 or below keeps every checkpoint)."""
    try:
        return int(settings.get("checkpoint.keep_latest_k", "10"))
    except ValueError:
        return 10


def rotated_out(settings: Mapping[str, str], run: RunPlan, step: int) -> int | None:
    """The step folder _purge_stale_checkpoints deletes after the save of `step`: the newest beyond the
    keep_latest_k newest of the interval's saves (the older ones went at earlier saves), None when none is
    due. The last step's save (training.steps) returns before it purges."""
    k = keep_latest_k(settings)
    if k <= 0 or step >= run.job.total_steps or run.save_interval <= 0:
        return None
    stale = step - k * run.save_interval
    return stale if stale > 0 else None


def _model_only_last(settings: Mapping[str, str], step: int, total_steps: int) -> bool:
    """Whether this save is the last step's and checkpoint.last_save_model_only (default true) holds."""
    only = settings.get("checkpoint.last_save_model_only", "true").lower() in _TRUE
    return only and step >= total_steps


_WANTED: frozenset[type[Event]] = frozenset(
    {
        JobStarted,
        WorkerStarted,
        ProcessGroupReady,
        TokenizerLoaded,
        DatasetReady,
        ModelBuilt,
        CheckpointLoading,
        CheckpointLoaded,
        TrainingStarted,
        StepDone,
        EvalDone,
        CheckpointSaving,
        CheckpointSaved,
        TrainingFinished,
    }
)

__all__ = ["HINTS", "TitanDialect", "mesh_dims", "peak_flops", "prefix", "registry_mesh_dims", "step_line"]
