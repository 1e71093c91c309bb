"""torchtitan's dialect: its lines parsed back with patterns from reallog 70 and torchtitan 0.2.1's source."""

from __future__ import annotations

import dataclasses
import functools
import re

from fakerun import presets
from fakerun.dialects import events as ev
from fakerun.dialects import files
from fakerun.dialects.base import Line, Seat
from fakerun.dialects.titan import TitanDialect, mesh_dims, peak_flops
from fakerun.sim import compute, memory
from fakerun.sim.job import make_job
from fakerun.sim.run import RunPlan, make_run
from fakerun.sim.step import step_numbers

AT = 1_795_000_000.25
PREFIX = r"^\[titan\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - root - INFO - "
# components/metrics.py's step line, as excerpt 70 shows it (two spaces between fields).
STEP = re.compile(
    PREFIX + r"step: +(\d+)  loss: +([\d.]+)  grad_norm: +([\d.]+)  memory: +([\d.]+)GiB\(([\d.]+)%\)  "
    r"tps: ([\d,]+)  tflops: ([\d,.]+)  mfu: ([\d.]+)%$"
)
SETTINGS = (
    ("job.description", "Llama 3 8B training"),
    ("training.dataset", "c4"),
    ("checkpoint.enable", "true"),
    ("profiling.enable_profiling", "true"),
    ("profiling.save_traces_folder", "profile_trace"),
)


@functools.cache
def plan() -> RunPlan:
    b = presets.resolve("llama3-8b")
    return make_run(make_job(b.model, b.cluster, b.storage, nnodes=1, nproc_per_node=8), max_steps=20)


def dialect(rank: int = 0, *, color: bool = False) -> TitanDialect:
    d = TitanDialect(
        Seat(rank=rank, local_rank=rank, world_size=8, nproc_per_node=8, hosts=("h",), color=color)
    )
    d.render(ev.JobStarted(run=plan(), first=True, resume=False, settings=SETTINGS), AT)
    return d


def texts(d: TitanDialect, event: ev.Event) -> list[str]:
    out = d.render(event, AT)
    assert all(isinstance(o, Line) and o.stream == "stdout" for o in out)
    return [o.text for o in out if isinstance(o, Line)]


def step_event(step: int, seconds: float) -> ev.StepDone:
    job = plan().job
    n = step_numbers(job, 0, step)
    tflops = compute.framework_tflops_per_gpu(job, seconds, "torchtitan")
    return ev.StepDone(
        run=plan(),
        numbers=n,
        elapsed_s=seconds,
        recent_s=(seconds,),
        interval_s=seconds,
        epoch=0.0,
        rank_tflops=tflops,
        rank_mfu=tflops * 1e12 / job.gpu.peak_flops,
        logged=True,
        gc_s=0.0234,
    )


def test_start_up_lines_in_torchtitan_order() -> None:
    """Every rank logs the start-up in train.py's order, each line in torchtitan's logging format."""
    job = plan().job
    d = dialect(rank=5)
    weights = memory.memory_breakdown(job, 5, 0)
    lines = [
        *texts(d, ev.WorkerStarted(host="h", local_rank=5, world_size=8, pid=1)),
        *texts(d, ev.ProcessGroupReady(tp_rank=0, dp_rank=5, pp_rank=0)),
        *texts(d, ev.TokenizerLoaded(vocab_size=job.model.vocab)),
        *texts(d, ev.DatasetReady(tokens=1, samples=1, epochs=1, steps_per_epoch=1)),
        *texts(
            d,
            ev.ModelBuilt(
                dtype="bfloat16",
                params_on_rank=job.model.params,
                layers_on_rank=job.model.layers,
                pp_rank=0,
                weights_bytes=weights.weights,
                capacity_bytes=weights.capacity,
            ),
        ),
        *texts(d, ev.TrainingStarted(1, 20, job.total_steps, job.warmup_steps, job.lr, "cosine")),
    ]
    logged = [line for line in lines if re.match(PREFIX, line)]
    messages = [re.sub(PREFIX, "", line) for line in logged]
    order = [
        r"torchtitan version: [\d.]+ \(0\.0\.0 means __version__ is not defined correctly\)\.",
        r"Starting job: Llama 3 8B training",
        r"Building device mesh with parallelism: pp=1, dp_replicate=1, dp_shard=8, cp=1, tp=1, ep=1, etp=1",
        r"Successfully created meshes with active dimensions: \['batch', 'loss', 'fsdp', 'efsdp'\]",
        r"\[GC\] Initial GC collection took \d\.\d\d seconds",
        r"Loading tokenizer from tokenizer\.json",
        r"Preparing c4 dataset from allenai/c4",
        r"Building llama3 8Bwith \{",
        r"CUDA capacity: .+ with [\d.]+GiB memory",
        r"Model llama3 8B size: [\d,]+ total parameters",
        r"Applied selective activation checkpointing to the model",
        r"Applied FSDP to the model",
        r"Peak FLOPS used for computing MFU: \d\.\d{3}e\+\d\d",
        r"CUDA memory usage for model: [\d.]+GiB\([\d.]+%\)",
        r"Checkpointing active\. Checkpoints will be loaded from and saved to \./outputs/checkpoint",
        r"Mixed precision training is handled by fully_shard",
        r"Trainer is initialized with local batch size \d+, global batch size \d+, gradient accumulation "
        r"steps \d+, sequence length \d+, total steps \d+ \(warmup \d+\)",
        r"Training starts at step 1",
        r"Profiling active\. Traces will be saved at \./outputs/profile_trace",
    ]
    assert len(messages) == len(order), messages
    for pattern, message in zip(order, messages, strict=True):
        assert re.fullmatch(pattern, message), (pattern, message)
    # The figures are the job's: parameters, peak FLOPS, the batch arithmetic.
    size = next(m for m in messages if m.startswith("Model "))
    assert int(re.findall(r"size: ([\d,]+)", size)[0].replace(",", "")) == job.model.params
    peak = next(m for m in messages if m.startswith("Peak FLOPS"))
    # tools/utils.get_peak_flops: H100 SXM is 989e12 in torchtitan's table (the datasheet's 989.4 rounded).
    assert job.gpu.display_name.startswith("NVIDIA H100") and peak.endswith(": 9.890e+14")
    init = next(m for m in messages if m.startswith("Trainer is initialized"))
    nums = [int(x) for x in re.findall(r"\d+", init)]
    assert nums[1] == job.global_batch and nums[3] == job.seq_len and nums[4] == job.total_steps
    assert nums[0] * nums[2] * job.dp == job.global_batch
    # The model arguments are a JSON dump whose continuation lines carry no prefix.
    dump_start = lines.index(next(line for line in lines if "Building llama3" in line))
    assert (
        lines[dump_start + 1] == '  "_enforced": "This field is used to enforce all fields have defaults.",'
    )
    assert f'  "dim": {job.model.hidden},' in lines


def test_step_line_matches_excerpt_format_and_torchtitan_flops() -> None:
    """The step line parses with excerpt 70's pattern; tflops and mfu follow torchtitan's FLOPs per token."""
    job = plan().job
    seconds = step_numbers(job, 0, 10).step_time_s
    (line,) = texts(dialect(), step_event(10, seconds))
    m = STEP.match(line)
    assert m, line
    n = step_numbers(job, 0, 10)
    assert float(m[2]) == round(n.loss, 5) and float(m[3]) == round(n.grad_norm, 4)
    assert int(m[6].replace(",", "")) == round(n.rank_tokens_per_s)
    per_token = compute.torchtitan_flops_per_token(job.model, job.seq_len)
    tflops = per_token * job.tokens_per_step / job.world_size / seconds / 1e12
    assert abs(float(m[7].replace(",", "")) - tflops) < 0.01
    assert abs(float(m[8]) - 100 * tflops * 1e12 / 989e12) < 0.01  # against torchtitan's H100 peak


def test_first_step_with_warm_up_reports_lower_throughput() -> None:
    """Iteration 1's wall time includes its warm-up: its tflops are below a steady step's."""
    job = plan().job
    n = step_numbers(job, 0, 1)
    slow = STEP.match(texts(dialect(), step_event(1, n.step_time_s + compute.first_step_overhead_s(job)))[0])
    fast = STEP.match(texts(dialect(), step_event(1, n.step_time_s))[0])
    assert slow and fast and float(slow[7]) < float(fast[7])


def test_periodic_gc_precedes_the_step_line_and_colour_only_when_asked() -> None:
    """Every gc_freq steps (50) the GC line comes first; colour codes only with seat.color."""
    d = dialect()
    lines = texts(d, step_event(50, 10.0))
    assert re.match(PREFIX + r"\[GC\] Performing periodic GC collection took 0\.02 seconds$", lines[0])
    assert STEP.match(lines[1]) and "\033[" not in lines[1]
    colored = texts(dialect(color=True), step_event(10, 10.0))[0]
    assert colored.count("\033[") == 8 and STEP.match(re.sub(r"\033\[[\d;]*m", "", colored))


def test_checkpoint_and_shutdown_lines() -> None:
    """Save lines with torchtitan's missing space; rank 0 sleeps 2 s; every rank destroys its group."""
    d = dialect()
    saving = texts(d, ev.CheckpointSaving(step=500, path="step-500", format="dcp"))
    saved = texts(
        d, ev.CheckpointSaved(step=500, path="step-500", nbytes=10, seconds=12.345, bandwidth_gbs=1.0)
    )
    assert re.match(PREFIX + r"Saving the checkpoint \(or staging if async is enabled\)\.$", saving[0])
    assert re.match(
        PREFIX + r"\[GC\] GC collection invoked by checkpointer\. took \d\.\d\d seconds$", saved[0]
    )
    assert re.match(
        PREFIX + r"Finished saving the checkpoint \(or staging if async is enabled\)in 12\.35 s", saved[1]
    )
    end0 = texts(d, ev.TrainingFinished(step=20))
    # train() logs "Training completed" on every rank (rank 0 after its sleep); close() stops the purge
    # thread every rank started (keep_latest_k defaults to 10); main() destroys the group.
    assert [re.sub(PREFIX, "", t) for t in end0] == [
        "Sleeping 2 seconds for other ranks to complete",
        "Training completed",
        "Destroying the purge thread.",
        "Process group destroyed",
    ]
    assert [re.sub(PREFIX, "", t) for t in texts(dialect(rank=3), ev.TrainingFinished(step=20))] == [
        "Training completed",
        "Destroying the purge thread.",
        "Process group destroyed",
    ]


def rotating(rank: int, keep: str) -> tuple[TitanDialect, RunPlan]:
    """A dialect of a 100-step run saving every 10 steps under ./out/ckpt with checkpoint.keep_latest_k."""
    b = presets.resolve("llama3.2-1b")
    job = make_job(b.model, b.cluster, b.storage, nnodes=1, nproc_per_node=2, total_steps=100)
    run = make_run(job, save_interval=10)
    settings = (
        ("checkpoint.enable", "true"),
        ("job.dump_folder", "./out/"),
        ("checkpoint.folder", "ckpt"),
        ("checkpoint.keep_latest_k", keep),
        ("titan.saves", "1"),
    )
    d = TitanDialect(Seat(rank=rank, local_rank=rank, world_size=2, nproc_per_node=2, hosts=("h",)))
    d.render(ev.JobStarted(run=run, first=True, resume=False, settings=settings), AT)
    return d, run


def saved_at(d: TitanDialect, step: int) -> list[str]:
    event = ev.CheckpointSaved(step=step, path="", nbytes=10, seconds=1.0, bandwidth_gbs=1.0)
    return [re.sub(PREFIX, "", t) for t in texts(d, event)]


def test_keep_latest_k_purges_on_rank_0_after_each_periodic_save() -> None:
    """_purge_stale_checkpoints after the save of step 40 with k 3 keeps 20, 30, 40: step-10 goes, from rank
    0's purge thread; nothing at 30 (three folders); the last step's save returns before it purges."""
    d0, run = rotating(0, "3")
    assert saved_at(d0, 30)[2:] == []
    assert saved_at(d0, 40)[2:] == [
        "Checkpointer is deleting ./out/ckpt/step-10.",
        "Checkpointer deleted ./out/ckpt/step-10 in 0.00 seconds.",
    ]
    assert saved_at(d0, 100)[2:] == []
    assert saved_at(rotating(1, "3")[0], 40)[2:] == []
    request = files.SaveRequest(
        run=run, settings=dict(d0.settings), step=40, rank=0, world_size=2, kind="checkpoint"
    )
    written = TitanDialect.artifacts(request)
    assert written[-1] == files.Removal("./out/ckpt/step-10")
    assert [f.path for f in written[:-1] if isinstance(f, files.Artifact)] == [
        "./out/ckpt/step-40/__0_0.distcp",
        "./out/ckpt/step-40/.metadata",
    ]
    assert not any(
        isinstance(f, files.Removal) for f in TitanDialect.artifacts(dataclasses.replace(request, rank=1))
    )
    assert TitanDialect.artifacts(dataclasses.replace(request, kind="export")) == ()


def test_keep_latest_k_zero_keeps_everything_and_starts_no_thread() -> None:
    """keep_latest_k = 0: no purge thread, nothing deleted."""
    d0, run = rotating(0, "0")
    assert saved_at(d0, 90)[2:] == []
    assert "Destroying the purge thread." not in "".join(texts(d0, ev.TrainingFinished(step=100)))
    request = files.SaveRequest(
        run=run, settings=dict(d0.settings), step=90, rank=0, world_size=2, kind="checkpoint"
    )
    assert not any(isinstance(f, files.Removal) for f in TitanDialect.artifacts(request))


def test_mesh_dims_follow_parallel_degrees() -> None:
    """Only dimensions larger than one are active; dp_replicate splits the data-parallel ranks."""
    job = plan().job
    assert mesh_dims(job, 2) == ["batch", "loss", "dp_replicate", "fsdp", "efsdp"]


def test_peak_flops_by_device_name_as_torchtitan_matches_them() -> None:
    """get_peak_flops's table: variants of H100 before H100, B200 inside GB200, and no entry for H800."""
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 NVL") == 835e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA GB200") == 2.25e15
    assert peak_flops("AMD Instinct MI300X") == 1300e12
    assert peak_flops("NVIDIA H800") is None


def test_unknown_device_warns_and_computes_mfu_against_a100() -> None:
    """On an H800 torchtitan warns, uses A100's 312 TFLOPS, and its MFU is 989.4/312 times the true one."""
    b = presets.resolve("llama3-8b")
    h800 = presets.load_gpu("h800")
    job = make_job(b.model, b.cluster, b.storage, gpu=h800, nnodes=1, nproc_per_node=8)
    run = make_run(job, max_steps=20)
    d = TitanDialect(Seat(rank=0, local_rank=0, world_size=8, nproc_per_node=8, hosts=("h",)))
    d.render(ev.JobStarted(run=run, first=True, resume=False), AT)
    built = ev.ModelBuilt(dtype="bf16", params_on_rank=1.0, layers_on_rank=32, pp_rank=0, weights_bytes=1e9)
    lines = texts(d, built)
    warn = next(i for i, t in enumerate(lines) if " - WARNING - Peak flops undefined" in t)
    assert lines[warn].endswith("Peak flops undefined for: NVIDIA H800, fallback to A100")
    assert lines[warn + 1].endswith("Peak FLOPS used for computing MFU: 3.120e+14")
    n = step_numbers(job, 0, 10)
    tflops = 400.0
    event = ev.StepDone(
        run=run,
        numbers=n,
        elapsed_s=1.0,
        recent_s=(1.0,),
        interval_s=1.0,
        epoch=0.0,
        rank_tflops=tflops,
        rank_mfu=tflops * 1e12 / job.gpu.peak_flops,
        logged=True,
    )
    m = STEP.match(texts(d, event)[0])
    assert m and m[8] == "128.21"  # 400 / 312, above 100% as torchtitan prints it on this GPU


def test_fsdp_fp32_layout_keeps_four_byte_shards_and_sixteen_bytes_in_all() -> None:
    """torchtitan's fp32 sharded params (4 B) and grads (4 B) with Adam's m and v (8 B), no master."""
    b = presets.resolve("llama3-8b")
    mixed = make_job(b.model, b.cluster, b.storage, nnodes=1, nproc_per_node=8, zero_stage=3)
    fp32 = dataclasses.replace(mixed, state_layout="fp32", fp32_grad_buffer=True)
    shard = mixed.model.params / 8
    after_init = memory.memory_breakdown(fp32, 0, step=0)
    steady = memory.memory_breakdown(fp32, 0, step=5)
    assert abs(after_init.weights - 4 * shard) / shard < 1e-9
    assert abs(steady.grads - 4 * shard) / shard < 1e-9 and abs(steady.optimizer - 8 * shard) / shard < 1e-9
    ref = memory.memory_breakdown(mixed, 0, step=5)
    assert abs(ref.weights - 2 * shard) / shard < 1e-9  # bf16 weights beside an fp32 master in the optimizer
    assert abs((ref.weights + ref.grads + ref.optimizer) - 16 * shard) / shard < 1e-9
