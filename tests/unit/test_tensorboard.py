"""TensorBoard event files: which rank writes where, and the tags and steps read back with TensorBoard's own
event reader (those tests skip without the tensorboard extra)."""

from __future__ import annotations

import functools
import math
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fakerun import hints, presets
from fakerun.dialects import events as ev
from fakerun.dialects.base import Seat
from fakerun.dialects.titan import TitanDialect
from fakerun.sim.job import make_job
from fakerun.sim.run import RunPlan, make_run
from fakerun.sim.step import step_numbers
from fakerun.worker.tensorboard import MISSING, TensorBoard

AT = 1_795_000_000.25  # the job's clock at the run's start
STEP_S = 2.0  # each simulated step, on that clock


@functools.cache
def plan(nproc: int = 8, pp: int = 1, precision: str = "bf16") -> RunPlan:
    b = presets.resolve("llama3-8b")
    job = make_job(b.model, b.cluster, b.storage, nnodes=1, nproc_per_node=nproc, pp=pp, precision=precision)
    return make_run(job, max_steps=12, log_interval=5)


def step_event(run: RunPlan, step: int) -> ev.StepDone:
    n = step_numbers(run.job, 0, step)
    return ev.StepDone(
        run=run,
        numbers=n,
        elapsed_s=step * STEP_S,
        recent_s=(STEP_S,),
        interval_s=STEP_S,
        epoch=step / run.steps_per_epoch,
        rank_tflops=400.0,
        rank_mfu=0.4,
        logged=step % run.log_interval == 0 or step == run.first_step,
        loss_scale=2.0**16,
        megatron_tflops=300.0,
        samples_per_s=run.job.global_batch / STEP_S,
    )


def drive(
    board: TensorBoard,
    run: RunPlan,
    settings: dict[str, str],
    steps: int = 12,
    splits: tuple[str, ...] = ("validation",),
) -> None:
    """A run as the trainer emits it: start, model, training, steps with evaluations of `splits` after
    step 10, the end."""
    board.record(ev.JobStarted(run=run, first=True, resume=False, settings=tuple(settings.items())), AT)
    board.record(ev.ModelBuilt(dtype="bf16", params_on_rank=1e9, layers_on_rank=32, pp_rank=0), AT + 1)
    started = ev.TrainingStarted(
        first_step=1, last_step=steps, total_steps=steps, warmup_steps=2, lr=3e-4, schedule="cosine"
    )
    board.record(started, AT + 5)
    for step in range(1, steps + 1):
        board.record(step_event(run, step), AT + 10 + step * STEP_S)
        if step == 10:
            for split in splits:
                done = ev.EvalDone(
                    step=10,
                    loss=2.5,
                    ppl=math.exp(2.5),
                    seconds=4.0,
                    samples=64,
                    iters=4,
                    epoch=0.5,
                    split=split,
                )
                board.record(done, AT + 40)
    stopped = ev.TrainingStopped(
        step=steps, reason="reached max steps", runtime_s=30.0, steps=steps, samples=96
    )
    board.record(stopped, AT + 50)
    board.record(ev.TrainingFinished(step=steps), AT + 60)


def scalars(folder: Path) -> dict[str, list[Any]]:
    """Every scalar series of the event files in `folder`, through TensorBoard's EventAccumulator."""
    pytest.importorskip("tensorboardX")
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    reader = accumulator.EventAccumulator(str(folder))
    reader.Reload()
    return {tag: reader.Scalars(tag) for tag in reader.Tags()["scalars"]}


def only_dir(root: Path) -> Path:
    """The one folder under `root` that holds an event file."""
    found = {p.parent for p in root.rglob("events.out.tfevents.*")}
    assert len(found) == 1, found
    return found.pop()


def test_hf_tags_where_report_to_asks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HF: rank 0 writes under {output_dir}/runs/{%b%d_%H-%M-%S}_{host}, TensorBoardCallback's tags at the
    logging steps (the loss rounded to 4), the evaluation's under eval/, train()'s final metrics."""
    pytest.importorskip("tensorboardX")
    monkeypatch.chdir(tmp_path)
    run = plan()
    settings = {"output_dir": "out", "report_to": "tensorboard"}
    drive(TensorBoard("hf", 1, "node0", None, files=True), run, settings)
    assert not (tmp_path / "out").exists()  # not world process zero
    drive(TensorBoard("hf", 0, "node0", None, files=True), run, settings)
    folder = only_dir(tmp_path / "out")
    assert folder == tmp_path / "out" / "runs" / (
        time.strftime("%b%d_%H-%M-%S", time.localtime(AT)) + "_node0"
    )
    got = scalars(folder)
    assert {"train/loss", "train/grad_norm", "train/learning_rate", "train/epoch"} <= set(got)
    assert {"eval/loss", "eval/runtime", "eval/samples_per_second", "eval/steps_per_second"} <= set(got)
    assert {"train/train_runtime", "train/train_loss", "train/total_flos"} <= set(got)
    assert [e.step for e in got["train/loss"]] == [5, 10]
    for e in got["train/loss"]:
        assert e.value == pytest.approx(round(step_numbers(run.job, 0, e.step).loss, 4), rel=1e-6)
        assert e.wall_time == pytest.approx(AT + 10 + e.step * STEP_S)
    assert [e.step for e in got["train/learning_rate"]] == [5, 10]
    assert got["train/learning_rate"][1].value == pytest.approx(step_numbers(run.job, 0, 10).lr, rel=1e-6)
    assert [(e.step, e.value) for e in got["eval/loss"]] == [(10, 2.5)]
    assert got["eval/runtime"][0].value == pytest.approx(4.0)
    assert [e.step for e in got["train/train_runtime"]] == [12]


def test_hf_writes_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No --report_to (transformers 4.x would take every installed integration: fakerun takes none), or
    --fake-no-files: no folder; --logging_dir is used as given."""
    pytest.importorskip("tensorboardX")
    monkeypatch.chdir(tmp_path)
    drive(TensorBoard("hf", 0, "h", None, files=True), plan(), {"output_dir": "a"})
    drive(TensorBoard("hf", 0, "h", None, files=False), plan(), {"output_dir": "b", "report_to": "all"})
    assert not list(tmp_path.iterdir())
    settings = {"output_dir": "c", "report_to": "wandb,tensorboard", "logging_dir": "logs/x"}
    drive(TensorBoard("hf", 0, "h", None, files=True), plan(), settings)
    assert only_dir(tmp_path) == tmp_path / "logs" / "x"


def test_megatron_tags_from_the_last_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Megatron: the last rank writes into --tensorboard-dir every iteration, each scalar also against the
    consumed samples; the interval timer's iteration-time from the second log line on; the validation loss."""
    monkeypatch.chdir(tmp_path)
    run = plan()
    settings = {"tensorboard_dir": "tb", "log_timers_to_tensorboard": "true", "log_throughput": "true"}
    drive(TensorBoard("megatron", 0, "h", None, files=True), run, settings)
    assert not (tmp_path / "tb").exists()
    drive(TensorBoard("megatron", 7, "h", None, files=True), run, settings)
    got = scalars(tmp_path / "tb")
    every = list(range(1, 13))
    for tag in ("lm loss", "learning-rate", "batch-size", "loss-scale", "grad-norm"):
        assert [e.step for e in got[tag]] == every, tag
        assert [e.step for e in got[f"{tag} vs samples"]] == [s * run.job.global_batch for s in every]
    assert [e.value for e in got["batch-size"]] == [run.job.global_batch] * 12
    assert got["lm loss"][2].value == pytest.approx(step_numbers(run.job, 0, 3).loss, rel=1e-6)
    assert [e.step for e in got["iteration-time"]] == [5, 10]  # not the first iteration's
    assert [e.step for e in got["throughput"]] == [5, 10]
    assert [(e.step, e.value) for e in got["lm loss validation"]] == [(10, 2.5)]
    assert [e.step for e in got["lm loss validation vs samples"]] == [10 * run.job.global_batch]
    assert "lm loss validation ppl" not in got and "mem-reserved-bytes" not in got


# Megatron-DeepSpeed's megatron/training.py: what training_log writes every --tensorboard-log-interval without
# any switch (lm-loss-training has the gigaflos axis too), evaluate_and_print_results' validation group, and
# initialize.log_restart_to_tensorboard's world-size blip.
VS = ("", " vs samples", " vs tokens")
DS_DEFAULT = {
    "steps-vs-samples/y=steps,x=samples",
    "steps-vs-samples/y=samples,x=steps",
    "steps-vs-tokens/y=steps,x=tokens",
    "steps-vs-tokens/y=tokens,x=steps",
    *(f"learning-rate/learning-rate{vs}" for vs in VS),
    *(f"lm-loss-training/lm loss{vs}" for vs in (*VS, " vs gigaflos (without embeddings)")),
    *(f"grad-norm/grad-norm{vs}" for vs in VS),
    *(f"num-zeros/num-zeros{vs}" for vs in VS),
    "iteration-time/world_size",
    *(
        f"lm-loss-validation/valid/lm loss validation{vs}"
        for vs in (*VS, " vs gigaflos (without embeddings)")
    ),
}


def test_megatron_deepspeed_default_tags_from_the_last_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Megatron-DeepSpeed: the last rank writes its grouped tags every iteration against the iteration,
    the consumed samples and tokens (the losses also against the gigaflos); no switch, no bf16 loss scale."""
    monkeypatch.chdir(tmp_path)
    run = plan()
    job = run.job
    drive(TensorBoard("megatron-deepspeed", 6, "h", None, files=True), run, {"tensorboard_dir": "tb"})
    assert not (tmp_path / "tb").exists()
    drive(TensorBoard("megatron-deepspeed", 7, "h", None, files=True), run, {"tensorboard_dir": "tb"})
    got = scalars(tmp_path / "tb")
    assert set(got) == DS_DEFAULT
    every = range(1, 13)
    samples = [s * job.global_batch for s in every]  # consumed_train_samples
    tokens = [x * job.seq_len for x in samples]  # consumed_train_tokens: samples x seq_length
    loss = "lm-loss-training/lm loss"
    assert [e.step for e in got[loss]] == list(every)
    assert [e.step for e in got[loss + " vs samples"]] == samples
    assert [e.step for e in got[loss + " vs tokens"]] == tokens
    # gigaflos_no_embeds: 6 x samples x seq_length x the parameters without embeddings, in billions.
    billions = (job.model.params - job.model.embedding_params()) / 1e9
    assert [e.step for e in got[loss + " vs gigaflos (without embeddings)"]] == [
        int(6 * x * job.seq_len * billions) for x in samples
    ]
    assert got[loss][2].value == pytest.approx(step_numbers(job, 0, 3).loss, rel=1e-6)
    assert [e.value for e in got["learning-rate/learning-rate vs tokens"]] == pytest.approx(
        [step_numbers(job, 0, s).lr for s in every], rel=1e-6
    )
    assert [(e.step, e.value) for e in got["steps-vs-tokens/y=tokens,x=steps"]][:2] == [
        (1, tokens[0]),
        (2, tokens[1]),
    ]
    assert {e.value for e in got["num-zeros/num-zeros"]} == {0.0}
    assert [(e.step, e.value) for e in got["iteration-time/world_size"]] == [(0, 8), (1, 0)]
    validation = "lm-loss-validation/valid/lm loss validation"
    assert [(e.step, e.value) for e in got[validation]] == [(10, 2.5)]
    assert [e.step for e in got[validation + " vs tokens"]] == [tokens[9]]


def test_megatron_deepspeed_switches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--tensorboard-log-interval 2, the timers (per-timer time/ tags at that interval, the iteration-time
    group at the log interval), the batch size, the validation perplexity, fp16's loss scale, no learning
    rate; the test evaluation under its own group at iteration 0."""
    monkeypatch.chdir(tmp_path)
    run = plan(precision="fp16")
    job = run.job
    settings = {
        "tensorboard_dir": "tb",
        "tensorboard_log_interval": "2",
        "log_timers_to_tensorboard": "true",
        "log_batch_size_to_tensorboard": "true",
        "log_validation_ppl_to_tensorboard": "true",
        "no_log_learnig_rate_to_tensorboard": "true",
    }
    drive(
        TensorBoard("megatron-deepspeed", 7, "h", None, files=True),
        run,
        settings,
        splits=("validation", "test"),
    )
    got = scalars(tmp_path / "tb")
    assert not {t for t in got if t.startswith("learning-rate/")}
    even = [2, 4, 6, 8, 10, 12]
    for tag in (
        "lm-loss-training/lm loss",
        "batch-size/batch-size",
        "loss-scale/loss-scale",
        "time/forward-compute-time",
    ):
        assert [e.step for e in got[tag]] == even, tag
    assert "batch-size/batch-size vs samples" in got and "batch-size/batch-size vs tokens" not in got
    assert [e.value for e in got["loss-scale/loss-scale vs tokens"]] == [2.0**16] * 6
    assert {"time/backward-compute-time", "time/optimizer-time", "time/batch-generator-time"} <= set(got)
    for name in (
        "iteration-time",
        "samples per second",
        "tokens per second per replica",
        "TFLOPs per gpu (estimated)",
    ):
        assert [e.step for e in got[f"iteration-time/{name}"]] == [5, 10], name
    assert [e.step for e in got["iteration-time/iteration-time vs samples"]] == [
        5 * job.global_batch,
        10 * job.global_batch,
    ]
    assert got["iteration-time/iteration-time"][0].value == pytest.approx(STEP_S)
    # samples_per_sec = batch_size / time; tokens: x seq_length; per replica: / data-parallel size.
    per_replica = job.global_batch / STEP_S * job.seq_len / job.dp
    assert got["iteration-time/tokens per second per replica"][1].value == pytest.approx(
        per_replica, rel=1e-6
    )
    assert got["iteration-time/TFLOPs per gpu (estimated)"][0].value == pytest.approx(300.0)
    ppl = "lm-loss-validation/valid/lm loss validation ppl"
    assert [(e.step, e.value) for e in got[ppl]] == [(10, pytest.approx(math.exp(2.5), rel=1e-6))]
    test = "lm-loss-validation/test/lm loss validation"
    assert [(e.step, e.value) for e in got[test]] == [(0, 2.5)]
    assert [e.step for e in got[test + " vs samples"]] == [10 * job.global_batch]


def test_megatron_deepspeed_switches_reach_the_writer() -> None:
    """The fork's own switches (the learning-rate one misspelt as its parser spells it) are kept from the
    script's arguments for the writer."""
    args = [
        "--tensorboard-dir",
        "tb",
        "--log-batch-size-to-tensorboard",
        "--no-log-learnig-rate-to-tensorboard",
    ]
    settings = hints.parse_hints(
        "Megatron-DeepSpeed/pretrain_gpt.py", ["--deepspeed", "--deepspeed_config", "ds.json", *args]
    ).settings
    assert (
        settings["log_batch_size_to_tensorboard"] == settings["no_log_learnig_rate_to_tensorboard"] == "true"
    )


def test_titan_tags_in_the_dated_folder_its_line_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchtitan: the metrics rank writes at its log steps into the folder its start-up line names, with
    MetricsProcessor's tags as spelled (`mfu(%)`, `memory/max_reserved(GiB)`)."""
    monkeypatch.chdir(tmp_path)
    run = plan()
    settings = {"metrics.enable_tensorboard": "true", "job.dump_folder": "./dump"}
    drive(TensorBoard("titan", 0, "h", None, files=True), run, settings)
    d = TitanDialect(Seat(rank=0, local_rank=0, world_size=8, nproc_per_node=8, hosts=("h",)))
    d.render(ev.JobStarted(run=run, first=True, resume=False, settings=tuple(settings.items())), AT)
    line = d.render(ev.ModelBuilt(dtype="bf16", params_on_rank=1e9, layers_on_rank=32, pp_rank=0), AT + 1)
    named = next(str(o.text).rsplit(" ", 1)[1] for o in line if "TensorBoard" in str(getattr(o, "text", "")))
    folder = only_dir(tmp_path / "dump")
    assert folder == (tmp_path / named).resolve()
    got = scalars(folder)
    assert {"loss_metrics/global_avg_loss", "grad_norm", "throughput(tps)", "tflops", "mfu(%)", "lr"} <= set(
        got
    )
    assert {"memory/max_reserved(GiB)", "memory/max_reserved(%)", "memory/max_active(GiB)"} <= set(got)
    assert [e.step for e in got["loss_metrics/global_avg_loss"]] == [1, 5, 10]
    n = step_numbers(run.job, 0, 5)
    assert got["memory/max_reserved(GiB)"][1].value == pytest.approx(n.mem_gib, rel=1e-6)
    assert got["tflops"][1].value == pytest.approx(400.0)


def test_titan_metrics_rank_with_pipeline_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With two pipeline stages the last stage's first rank (4 of 8) writes, not rank 0."""
    pytest.importorskip("tensorboardX")
    monkeypatch.chdir(tmp_path)
    run = plan(pp=2)
    settings = {"metrics.enable_tensorboard": "true", "job.dump_folder": "d0"}
    drive(TensorBoard("titan", 0, "h", None, files=True), run, settings)
    assert not (tmp_path / "d0").exists()
    drive(TensorBoard("titan", 4, "h", None, files=True), run, settings)
    assert only_dir(tmp_path / "d0").is_dir()


def test_fake_tensorboard_for_any_dialect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--fake-tensorboard DIR: rank 0 of a framework without TensorBoard of its own writes fakerun's curves
    into DIR at its log steps; a framework that has some writes its own tags there instead."""
    monkeypatch.chdir(tmp_path)
    drive(TensorBoard("nanogpt", 0, "h", "fake", files=False), plan(), {})
    got = scalars(tmp_path / "fake")
    assert [e.step for e in got["train/loss"]] == [1, 5, 10]
    assert {"train/lr", "train/tokens_per_s", "train/mfu", "eval/loss"} <= set(got)
    drive(TensorBoard("megatron", 7, "h", "fake2", files=True), plan(), {})
    assert "lm loss" in scalars(tmp_path / "fake2")


def test_missing_extra_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without tensorboardX the run goes on: one warning line saying how to get it, no files."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # importing it raises ImportError
    board = TensorBoard("hf", 0, "h", None, files=True)
    drive(board, plan(), {"report_to": "tensorboard"})
    err = capsys.readouterr().err
    # One line in the launcher's glog notice format, not a `fakerun:` prefix no real job prints.
    assert err.count("\n") == 1 and err.startswith("W") and err.rstrip("\n").endswith("] " + MISSING)
    assert "pip install" in MISSING and not list(tmp_path.iterdir())


def test_recorded_names_every_event_a_writer_reads() -> None:
    """A rank that writes TensorBoard files builds the events its writer reads (Printer.wants): RECORDED
    must hold every event class the module tests for."""
    import ast
    import inspect

    from fakerun.dialects import events
    from fakerun.worker import tensorboard

    tree = ast.parse(inspect.getsource(tensorboard))
    read: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
            read |= {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
        if isinstance(node, ast.MatchClass) and isinstance(node.cls, ast.Name):
            read.add(node.cls.id)
    read &= {name for name, _ in inspect.getmembers(events, inspect.isclass)}
    assert read and read <= {kind.__name__ for kind in tensorboard.RECORDED}
