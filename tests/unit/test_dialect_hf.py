"""HF Trainer dialect: golden lines parsed back with patterns from real Trainer logs; the fine-tune regime."""

from __future__ import annotations

import ast
import dataclasses
import itertools
import math
import re

import pytest

from fakerun import presets
from fakerun.cli import parse_command_line
from fakerun.dialects.base import BarClose, BarDraw, Line, Output, Seat
from fakerun.dialects.events import (
    CheckpointSaved,
    CheckpointSaving,
    DatasetReady,
    EvalDone,
    EvalProgress,
    EvalStarted,
    Event,
    JobStarted,
    ModelConfigured,
    ParallelismDecided,
    StepDone,
    TrainingFinished,
    TrainingStarted,
    TrainingStopped,
)
from fakerun.dialects.hf import HfDialect
from fakerun.frameworks.hf_results import float32
from fakerun.hints import HintError, parse_hints
from fakerun.jobconfig import build_run
from fakerun.sim import collectives, compute, loss, memory
from fakerun.sim.job import make_job
from fakerun.sim.run import ENDING_HF, RunPlan, make_run
from fakerun.sim.step import step_numbers

AT = 1_764_000_000.25
# `[INFO|trainer.py:2409] 2025-03-06 12:04:09,913 >> ***** Running training *****` (transformers' explicit
# format, as run_clm.py and LLaMA-Factory logs show it).
EXPLICIT = re.compile(
    r"^\[INFO\|(?P<file>[a-z_]+\.py):(?P<line>\d+)\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} >> (?P<msg>.*)$",
    re.S,
)
# Reallog 61: `  4%|▎         | 1317/36234 [11:37<5:10:26,  1.87it/s]` (no description, no postfix).
BAR = re.compile(r"^\s*\d+%\|.{10}\| (?P<n>\d+)/(?P<total>\d+) \[[\d:]+<[\d:?]+, +[\d.?]+(s/it|it/s)\]$")
# Reallogs 60/61: the dict repr keys, in order.
LOG_KEYS = ["loss", "grad_norm", "learning_rate", "epoch"]
EVAL_KEYS = ["eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch"]
TRAIN_KEYS = ["train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "epoch"]


def seat(rank: int, local_rank: int | None = None, world: int = 8) -> Seat:
    """A seat of an 8-GPU job on 2 nodes of 4."""
    return Seat(
        rank=rank,
        local_rank=rank % 4 if local_rank is None else local_rank,
        world_size=world,
        nproc_per_node=4,
        hosts=("node-a", "node-b"),
    )


def hf_run() -> RunPlan:
    """A fine-tune of Llama 3 8B on 8 GPUs, logging every 5 steps."""
    bundle = presets.resolve("llama3-8b", None, None)
    job = make_job(
        bundle.model,
        bundle.cluster,
        bundle.storage,
        nnodes=2,
        nproc_per_node=4,
        tp=1,
        pp=1,
        micro_batch=2,
        grad_accum=4,
        total_steps=300,
        warmup_steps=0,
        lr=5e-5,
        min_lr=0.0,
        lr_schedule="linear",
        regime="finetune",
        seed=7,
        allow_oom=True,
    )
    return make_run(job, log_interval=5, epochs=3)


def feed(
    dialect: HfDialect, run: RunPlan, *, steps: int = 10, settings: tuple[tuple[str, str], ...] = ()
) -> list[Output]:
    """The start-up events, `steps` steps, the last one's evaluation and save inside the loop, the stop, the
    script's save_model() and its final evaluation (run_clm.py with --do_eval)."""
    job = run.job
    out: list[Output] = []
    events: list[Event] = [
        JobStarted(run=run, first=True, resume=False, settings=(("output_dir", "out/sft/"), *settings)),
        ModelConfigured(model=job.model, seq_len=job.seq_len),
        ParallelismDecided(
            tp=job.tp,
            pp=job.pp,
            dp=job.dp,
            sharding=job.sharding,
            micro_batch=job.micro_batch,
            grad_accum=job.grad_accum,
            global_batch=job.global_batch,
            tokens_per_step=job.tokens_per_step,
        ),
        DatasetReady(tokens=10**8, samples=12_345, epochs=run.epochs, steps_per_epoch=run.steps_per_epoch),
        TrainingStarted(
            first_step=1,
            last_step=steps,
            total_steps=job.total_steps,
            warmup_steps=0,
            lr=job.lr,
            schedule="linear",
        ),
    ]
    for event in events:
        out += dialect.render(event, AT)
    for s in range(1, steps + 1):
        n = step_numbers(job, 0, s)
        out += dialect.render(
            StepDone(
                run=run,
                numbers=n,
                elapsed_s=4.0 * s,
                recent_s=(4.0,) * s,
                interval_s=4.0,
                epoch=s / run.steps_per_epoch,
                rank_tflops=n.tflops_per_gpu,
                rank_mfu=n.mfu,
                logged=True,
            ),
            AT + s,
        )
    ev = loss.eval_loss(job, steps)
    eval_event = EvalDone(
        step=steps,
        loss=ev,
        ppl=math.exp(ev),
        seconds=12.5,
        samples=320,
        iters=10,
        epoch=steps / run.steps_per_epoch,
    )
    out += evaluate(dialect, eval_event, AT + 50)
    out += save(dialect, steps, AT + 60)
    out += dialect.render(
        TrainingStopped(
            step=steps,
            reason="reached max steps",
            runtime_s=61.5,
            steps=steps,
            samples=steps * 64,
            mean_loss=1.8,
            total_flos=3.2e17,
        ),
        AT + 70,
    )
    out += save(dialect, steps, AT + 80)
    out += evaluate(dialect, eval_event, AT + 95)
    out += dialect.render(TrainingFinished(step=steps), AT + 100)
    return out


def save(dialect: HfDialect, step: int, at: float) -> list[Output]:
    """A save as the phase loop emits it: its start, then its end 5 s later."""
    out = list(dialect.render(CheckpointSaving(step=step, path="iter", format="torch_dist"), at))
    done = CheckpointSaved(step=step, path="iter", nbytes=16 * 10**9, seconds=5.0, bandwidth_gbs=3.2)
    return out + list(dialect.render(done, at + 5))


def evaluate(dialect: HfDialect, done: EvalDone, at: float) -> list[Output]:
    """An evaluation as the phase loop emits it: its start, a progress event per batch, its end."""
    out = list(dialect.render(EvalStarted(step=done.step, iters=done.iters), at - done.seconds))
    for batch in range(1, done.iters + 1):
        elapsed = done.seconds * batch / done.iters
        progress = EvalProgress(step=done.step, batch=batch, batches=done.iters, elapsed_s=elapsed)
        out += dialect.render(progress, at - done.seconds + elapsed)
    return out + list(dialect.render(done, at))


def dicts(out: list[Output]) -> list[dict[str, object]]:
    """The dicts tqdm.write printed: on stdout, each right after the bar was blanked (reallog 61)."""
    found = []
    for before, item in itertools.pairwise(out):
        if isinstance(item, Line) and item.text.startswith("{"):
            assert item.stream == "stdout", item
            assert isinstance(before, BarDraw) and re.fullmatch(r" +\r", before.text), before
            value = ast.literal_eval(item.text.replace("nan", "None"))
            assert isinstance(value, dict)
            found.append(value)
    return found


def block_fields(out: list[Output], header: str = "***** Running Evaluation *****") -> dict[str, str]:
    """The `key = value` lines of the first logged block under `header` (its explicit-format messages)."""
    texts = [o.text for o in out if isinstance(o, Line) and o.stream == "stderr"]
    start = next(i for i, t in enumerate(texts) if t.endswith(header))
    fields = {}
    for text in texts[start + 1 :]:
        m = EXPLICIT.match(text)
        if m is None or not m.group("msg").startswith("  "):
            break
        key, _, value = m.group("msg").strip().partition(" = ")
        fields[key] = value
    return fields


def index_of(texts: list[str], part: str, start: int = 0) -> int:
    """Where the first text from `start` containing `part` is."""
    return next(i for i in range(start, len(texts)) if part in texts[i])


class TestRankZero:
    """Rank 0 prints the block, the bar, the dicts and the final metrics."""

    def test_running_training_block(self) -> None:
        """The block's lines in the explicit format, with the job's figures and thousands separators."""
        run = hf_run()
        out = feed(HfDialect(seat(0)), run)
        lines = [o.text for o in out if isinstance(o, Line) and "Running training" in o.text]
        assert len(lines) == 1
        # The block is all that precedes the training bar's first draw.
        start = out[: next(i for i, o in enumerate(out) if isinstance(o, BarDraw))]
        block = [EXPLICIT.match(o.text) for o in start if isinstance(o, Line) and "  " in o.text]
        fields = {}
        for m in block:
            assert m is not None and m.group("file") == "trainer.py"
            key, _, value = m.group("msg").strip().partition(" = ")
            fields[key] = value
        job = run.job
        assert fields["Num examples"] == "12,345"
        assert fields["Num Epochs"] == str(run.epochs)
        assert fields["Instantaneous batch size per device"] == str(job.micro_batch)
        total = int(
            fields["Total train batch size (w. parallel, distributed & accumulation)"].replace(",", "")
        )
        assert total == job.micro_batch * job.grad_accum * job.world_size
        assert fields["Gradient Accumulation steps"] == str(job.grad_accum)
        assert int(fields["Total optimization steps"].replace(",", "")) == job.total_steps
        assert int(fields["Number of trainable parameters"].replace(",", "")) == job.model.params

    def test_bar_and_log_dicts(self) -> None:
        """Bar refreshes match tqdm's meter; a dict every logging_steps with the step's own figures."""
        run = hf_run()
        out = feed(HfDialect(seat(0)), run)
        # tqdm.write blanks the bar before each dict: those draws are spaces and a carriage return.
        bars = [o.text for o in out if isinstance(o, BarDraw) and o.text.strip()]
        assert bars and all(BAR.match(b) for b in bars), bars[:3]
        training = [m for b in bars if (m := BAR.match(b)) and int(m.group("total")) == run.job.total_steps]
        assert {int(m.group("n")) for m in training} == set(range(11))
        logs = [d for d in dicts(out) if "loss" in d]
        assert [list(d) for d in logs] == [LOG_KEYS, LOG_KEYS]
        for d, step in zip(logs, (5, 10), strict=True):
            n = step_numbers(run.job, 0, step)
            assert d["loss"] == round(n.loss, 4)
            assert isinstance(d["grad_norm"], float) and math.isclose(
                d["grad_norm"], n.grad_norm, rel_tol=1e-6
            )
            assert d["learning_rate"] == n.lr
            assert d["epoch"] == round(step / run.steps_per_epoch, 2)
        # The training bar's close, then the final evaluation's bar (its own line, left on screen).
        assert [o.position for o in out if isinstance(o, BarClose) and o.position == 0] == [0, 0]

    def test_evaluation_bar_during_training(self) -> None:
        """Below the training bar, 0 to N batches over the evaluation's time, blanked before the dict."""
        out = feed(HfDialect(seat(0)), hf_run())
        first = next(i for i, o in enumerate(out) if isinstance(o, BarDraw) and o.position == 1)
        nested = out[first : first + 11]
        assert all(isinstance(o, BarDraw) and o.position == 1 for o in nested)
        counts = [BAR.match(o.text) for o in nested if isinstance(o, BarDraw)]
        assert [(int(m.group("n")), int(m.group("total"))) for m in counts if m] == [
            (i, 10) for i in range(11)
        ]
        # 10 batches in 12.5 s: 1.25 s each, nothing left.
        assert nested[-1].text.endswith("| 10/10 [00:12<00:00,  1.25s/it]")  # type: ignore[union-attr]
        assert out[first + 11] == BarClose(position=1)
        assert isinstance(out[first + 13], Line) and "eval_loss" in out[first + 13].text  # type: ignore[union-attr]

    def test_evaluation_bar_after_training(self) -> None:
        """The script's final evaluate(): the bar alone on its line and left at 100%, no dict."""
        out = feed(HfDialect(seat(0)), hf_run())
        stop = next(i for i, o in enumerate(out) if isinstance(o, Line) and "{'train_runtime'" in o.text)
        after = out[stop:]
        assert not any(isinstance(o, BarDraw) and o.position for o in after)
        draws = [o.text for o in after if isinstance(o, BarDraw) and "/10 [" in o.text]
        assert len(draws) == 11 and draws[-1].startswith("100%|██████████| 10/10")
        assert BarClose() in after
        assert not [o for o in after if isinstance(o, Line) and "eval_loss" in o.text and "{" in o.text]

    def test_eval_train_dicts_and_metrics(self) -> None:
        """The eval dict during training; the train dict at the end; log_metrics blocks printed last."""
        out = feed(HfDialect(seat(0)), hf_run())
        found = dicts(out)
        evals = [d for d in found if "eval_loss" in d]
        trains = [d for d in found if "train_runtime" in d]
        assert [list(d) for d in evals] == [EVAL_KEYS] and [list(d) for d in trains] == [TRAIN_KEYS]
        # evaluate()'s speed_metrics: the evaluation set over the runtime; its steps are the batches of 8
        # (the default per-device eval batch) on each of the 8 ranks that cover it.
        examples = int(block_fields(out)["Num examples"])
        assert evals[0]["eval_runtime"] == 12.5
        assert evals[0]["eval_samples_per_second"] == round(examples / 12.5, 3)
        assert evals[0]["eval_steps_per_second"] == round(math.ceil(examples / (8 * 8)) / 12.5, 3)
        assert trains[0]["train_steps_per_second"] == round(10 / 61.5, 3) and trains[0]["train_loss"] == 1.8
        texts = [o.text for o in out if isinstance(o, Line)]
        saving = [t for t in texts if "Saving model checkpoint to" in t]
        assert [EXPLICIT.match(t).group("msg") for t in saving] == [  # type: ignore[union-attr]
            "Saving model checkpoint to out/sft/checkpoint-10",
            "Saving model checkpoint to out/sft",
        ]
        stdout = [o.text for o in out if isinstance(o, Line) and o.stream == "stdout" and o.text[:1] != "{"]
        assert stdout[0] == "***** train metrics *****" and "***** eval metrics *****" in stdout
        # log_metrics: `  key = value` with the keys padded to one width, the values right-aligned.
        rows = [t for t in stdout if t.startswith("  ")]
        assert all(re.fullmatch(r"  [a-z_]+ +=  *\S+", t) for t in rows), rows
        assert any(re.fullmatch(r"  train_runtime += +0:01:01\.50", t) for t in rows)
        completed = [t for t in texts if "Training completed." in t]
        assert len(completed) == 1 and completed[0].endswith("huggingface.co/models =)\n\n")


class TestEvaluationAndEnd:
    """evaluation_loop's block before each evaluation; run_clm.py's end: save_model, metrics, evaluate."""

    def test_evaluation_block(self) -> None:
        """Before each evaluation (in training and after): the block in transformers 4.50.0's lines (its
        trainer.py: 4289, 4291, 4294), the header after a newline, then the prediction bar."""
        out = feed(HfDialect(seat(0)), hf_run())
        texts = [o.text if isinstance(o, Line) else "" for o in out]
        headers = [i for i, t in enumerate(texts) if t.endswith("***** Running Evaluation *****")]
        assert len(headers) == 2
        for i in headers:
            found = [EXPLICIT.match(t) for t in texts[i : i + 3]]
            assert [(m.group("file"), int(m.group("line"))) for m in found if m] == [
                ("trainer.py", 4289),
                ("trainer.py", 4291),
                ("trainer.py", 4294),
            ]
            assert found[0] is not None and found[0].group("msg") == "\n***** Running Evaluation *****"
            assert all(isinstance(out[j], Line) and out[j].stream == "stderr" for j in range(i, i + 3))  # type: ignore[union-attr]
            assert isinstance(out[i + 3], BarDraw) and "0/10 [" in out[i + 3].text  # type: ignore[union-attr]
        fields = block_fields(out)
        # evaluation_loop prints len(dataset) without a separator; the default eval batch is 8 per device,
        # and the 8 ranks' bars each count the 10 batches that cover it: ceil(N / (8 x 8)).
        assert fields["Batch size"] == "8" and fields["Num examples"].isdigit()
        assert math.ceil(int(fields["Num examples"]) / (8 * 8)) == 10

    def test_per_device_eval_batch_size(self) -> None:
        """--per_device_eval_batch_size is the block's batch size and sizes the set the 10 batches cover."""
        out = feed(HfDialect(seat(0)), hf_run(), settings=(("per_device_eval_batch_size", "4"),))
        fields = block_fields(out)
        assert fields["Batch size"] == "4"
        assert math.ceil(int(fields["Num examples"]) / (4 * 8)) == 10
        metrics = [o.text for o in out if isinstance(o, Line) and o.text.startswith("  eval_samples ")]
        assert [m.split("=")[1].strip() for m in metrics] == [fields["Num examples"]]

    def test_end_of_run_order(self) -> None:
        """run_clm.py: the loop's last save, `Training completed`, save_model() to output_dir, the train
        metrics once it is saved, then `*** Evaluate ***`, the evaluation and its metrics."""
        out = feed(HfDialect(seat(0)), hf_run())
        texts = [o.text for o in out if isinstance(o, Line)]
        order = [
            "Saving model checkpoint to out/sft/checkpoint-10",
            "Training completed.",
            "Saving model checkpoint to out/sft",
            "Configuration saved in out/sft/generation_config.json",
            "***** train metrics *****",
            " - INFO - __main__ - *** Evaluate ***",
            "***** Running Evaluation *****",
            "***** eval metrics *****",
        ]
        at = [index_of(texts, order[0])]
        for part in order[1:]:
            at.append(index_of(texts, part, at[-1] + 1))
        # log_metrics prints right after the save's last line; the script's line is its logging format.
        assert at[4] == at[3] + 1
        script_line = r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d - INFO - __main__ - \*\*\* Evaluate \*\*\*"
        assert re.fullmatch(script_line, texts[at[5]])


class TestOtherRanks:
    """A node's other ranks print nothing of the Trainer; each node's main process prints its INFO lines."""

    def test_rank_nonzero_silent(self) -> None:
        """Rank 1: no bar, no dict, no block."""
        assert feed(HfDialect(seat(1)), hf_run()) == []

    def test_second_node_main_process(self) -> None:
        """Rank 4 (local rank 0 of node 1): its INFO lines (the blocks, `Training completed`, the script's
        `*** Evaluate ***`), no bar, no dict, no save and no metrics (world process zero's)."""
        out = feed(HfDialect(seat(4)), hf_run())
        assert not any(isinstance(o, (BarDraw, BarClose)) for o in out)
        texts = [o.text for o in out if isinstance(o, Line)]
        assert any("***** Running training *****" in t for t in texts)
        assert sum(t.endswith("***** Running Evaluation *****") for t in texts) == 2
        assert sum(t.endswith(" - INFO - __main__ - *** Evaluate ***") for t in texts) == 1
        assert not any("Saving model checkpoint" in t for t in texts)
        assert not dicts(out) and not any(t.startswith("*****") for t in texts)


def run_of(argv: list[str], nproc: int = 8) -> RunPlan:
    """build_run for a one-node command line."""
    cmd = parse_command_line(argv, {})
    bundle = presets.resolve(cmd.fake.model or "llama3-8b", cmd.fake.gpu, cmd.fake.cluster)
    run, _ = build_run(cmd, bundle, nnodes=1, nproc_per_node=nproc, model_given=cmd.fake.model is not None)
    return run


class TestFinetuneRegime:
    """A pretrained checkpoint in the arguments selects the fine-tune physics; none keeps pre-training."""

    def test_selection(self) -> None:
        """Each way of naming a pretrained checkpoint selects it; resuming one's own --save does not."""
        assert (
            parse_hints("run_clm.py", ["--model_name_or_path", "meta-llama/Meta-Llama-3-8B"]).regime
            == "finetune"
        )
        assert (
            parse_hints("pretrain_gpt.py", ["--load", "/ckpt/base", "--save", "/ckpt/sft"]).regime
            == "finetune"
        )
        assert (
            parse_hints("pretrain_gpt.py", ["--load", "/ckpt/run", "--save", "/ckpt/run"]).regime
            == "pretrain"
        )
        assert parse_hints("train.py", ["--lora_r", "16"]).regime == "finetune"
        assert parse_hints("train.py", ["--use_peft", "false"]).regime == "pretrain"
        assert parse_hints("recipes/lora_finetune_distributed.py", []).regime == "finetune"
        assert parse_hints("run_clm.py", ["--config_name", "gpt2"]).regime == "pretrain"

    def test_hf_finetune_of_8b_starts_near_2(self) -> None:
        """The HF fine-tune of Llama 3 8B: first loss in 1-3, HF's schedule, data parallel only."""
        for seed in range(6):
            run = run_of(
                ["--fake-seed", str(seed), "run_clm.py", "--model_name_or_path", "meta-llama/Meta-Llama-3-8B"]
            )
            job = run.job
            assert job.regime == "finetune" and job.model.name == "llama3-8b"
            assert 1.0 <= loss.train_loss(job, 1) <= 3.0
            assert (job.tp, job.pp) == (1, 1)
            assert (job.lr, job.lr_schedule, job.min_lr, job.warmup_steps) == (5e-5, "linear", 0.0, 0)
            # 3 epochs (HF's default) over an instruction set of 5k-100k examples, not a pre-training corpus.
            assert run.epochs == 3
            assert 3 * 5_000 <= job.total_steps * job.global_batch <= 3 * 100_000 + 3 * job.global_batch

    def test_pretraining_from_scratch_starts_near_ln_v(self) -> None:
        """No pretrained checkpoint: the first loss is within half a nat above ln(V)."""
        run = run_of(["--fake-seed", "1", "pretrain_gpt.py", "--num-layers", "16"])
        job = run.job
        assert job.regime == "pretrain"
        ln_v = math.log(job.model.vocab)
        assert ln_v - 0.3 <= loss.train_loss(job, 1) <= ln_v + 0.6


class TestTrainingArgumentsCadence:
    """TrainingArguments' logging, evaluation and save strategies and their defaults."""

    BASE = ("run_clm.py", "--model_name_or_path", "meta-llama/Meta-Llama-3-8B", "--max_steps", "2000")

    def cadence(self, *args: str) -> tuple[int, int, int]:
        """(log, eval, save) intervals of the 2000-step run with these extra arguments."""
        run = run_of(["--fake-seed", "3", *self.BASE, *args])
        return run.log_interval, run.eval_interval, run.save_interval

    def test_defaults(self) -> None:
        """logging_steps 500, no evaluation, a save every 500 steps."""
        assert self.cadence() == (500, 0, 500)

    def test_eval_steps_alone_does_not_evaluate(self) -> None:
        """eval_strategy "no" (the default) ignores --eval_steps."""
        assert self.cadence("--eval_steps", "20")[1] == 0

    def test_steps_strategy_falls_back_to_logging_steps(self) -> None:
        """eval_strategy "steps" without --eval_steps evaluates every logging_steps; either spelling."""
        for name in ("--eval_strategy", "--evaluation_strategy"):
            assert self.cadence(name, "steps", "--logging_steps", "10") == (10, 10, 500)
        assert self.cadence("--eval_strategy", "steps", "--eval_steps", "40") == (500, 40, 500)

    def test_fractions_of_the_run(self) -> None:
        """A step count below 1 is that share of max_steps, rounded up."""
        got = self.cadence("--logging_steps", "0.01", "--eval_strategy", "steps", "--save_steps", "0.25")
        assert got == (20, 20, 500)

    def test_epoch_strategies(self) -> None:
        """Epoch strategies act at each epoch's end: here 3 epochs of equal length."""
        run = run_of(
            [
                *("--fake-seed", "3", "run_clm.py", "--model_name_or_path", "meta-llama/Meta-Llama-3-8B"),
                *("--num_train_epochs", "3", "--eval_strategy", "epoch", "--save_strategy", "epoch"),
                *("--logging_strategy", "epoch"),
            ]
        )
        per_epoch = run.job.total_steps // 3
        assert run.job.total_steps == 3 * per_epoch  # the assertion below needs whole epochs
        assert (run.log_interval, run.eval_interval, run.save_interval) == (per_epoch,) * 3
        assert run.evaluates_after(per_epoch) and not run.evaluates_after(per_epoch - 1)

    def test_no_strategies(self) -> None:
        """ "no": no step is logged, evaluated or saved (the end of the run still is)."""
        log, evaluate, save = self.cadence("--logging_strategy", "no", "--save_strategy", "no")
        assert log > 2000 and (evaluate, save) == (0, 0)

    def test_best_saves_with_each_evaluation(self) -> None:
        """save_strategy "best" saves when an evaluation improves: at the evaluation steps."""
        got = self.cadence("--eval_strategy", "steps", "--eval_steps", "50", "--save_strategy", "best")
        assert got[2] == 50

    def test_end_of_training(self) -> None:
        """The last step's own evaluation and save (save_strategy "steps" saves at max_steps whatever
        save_steps divides); then save_model() and, with --do_eval or any eval_strategy, evaluate()."""
        run = run_of(["--fake-seed", "3", *self.BASE, "--save_steps", "300"])
        assert [p for p, _ in run.loop_pauses(2000, final=True)] == ["checkpoint"] and not run.periodic_save(
            2000
        )
        assert [p for p, _ in run.end_pauses(2000)] == ["checkpoint"]
        assert [p for p, _ in run.pauses_after(2000, final=True)] == ["checkpoint", "checkpoint"]
        run = run_of(["--fake-seed", "3", *self.BASE, "--do_eval", "--save_strategy", "no"])
        assert run.loop_pauses(2000, final=True) == () and [p for p, _ in run.end_pauses(2000)] == [
            "checkpoint",
            "eval",
        ]
        run = run_of(["--fake-seed", "3", *self.BASE, "--do_eval", "false", "--eval_strategy", "steps"])
        assert [p for p, _ in run.loop_pauses(2000, final=True)] == ["eval", "checkpoint"]
        assert [p for p, _ in run.end_pauses(2000)] == ["checkpoint", "eval"]

    def test_other_trainers_end_as_before(self) -> None:
        """Outside HF, nothing runs in the loop at the stop; the end evaluates, then saves."""
        run = hf_run()
        assert run.ending != ENDING_HF and run.loop_pauses(run.last_step, final=True) == ()
        assert [p for p, _ in run.pauses_after(run.last_step, final=True)] == ["eval", "checkpoint"]

    def test_eval_arguments(self) -> None:
        """--do_eval is one of HF's bools (bare or a word); a per-device eval batch must be an int >= 1."""
        assert parse_hints("run_clm.py", ["--do_eval"]).do_eval
        assert not parse_hints("run_clm.py", ["--do_eval", "False"]).do_eval
        assert (
            parse_hints("run_clm.py", ["--per_device_eval_batch_size=4"]).settings[
                "per_device_eval_batch_size"
            ]
            == "4"
        )
        for bad in ("0", "two"):
            with pytest.raises(HintError, match="--per_device_eval_batch_size"):
                parse_hints("run_clm.py", ["--per_device_eval_batch_size", bad])

    def test_bad_strategy(self) -> None:
        """A value HF's enum refuses is an error naming the option."""
        with pytest.raises(HintError, match="--save_strategy"):
            parse_hints("run_clm.py", ["--save_strategy", "sometimes"])


class TestLora:
    """--use_peft / --lora_r: PEFT's adapters are what trains, in the log and in the physics."""

    ARGS = ("run_clm.py", "--model_name_or_path", "meta-llama/Meta-Llama-3-8B", "--max_steps", "100")

    def test_arguments(self) -> None:
        """TRL's spelling (a list of targets, rank 16 by default); --use_peft false turns LoRA off."""
        job = run_of(
            [*self.ARGS, "--use_peft", "--lora_r", "8", "--lora_target_modules", "q_proj", "v_proj"]
        ).job
        assert (job.lora_rank, job.lora_targets) == (8, ("q_proj", "v_proj"))
        assert run_of([*self.ARGS, "--use_peft", "true"]).job.lora_rank == 16
        assert run_of([*self.ARGS, "--lora_r", "8", "--use_peft", "false"]).job.lora_rank == 0

    def test_adapter_count(self) -> None:
        """Llama 3 8B, r=8 on PEFT's default q_proj and v_proj: r x (in + out) per projection, 32 layers."""
        job = run_of([*self.ARGS, "--lora_r", "8"]).job
        assert job.adapter_params == 32 * 8 * ((4096 + 4096) + (4096 + 1024)) == job.trainable_params
        every = run_of([*self.ARGS, "--lora_r", "8", "--lora_target_modules", "all-linear"]).job
        per_layer = (4096 + 4096) + 2 * (4096 + 1024) + (4096 + 4096) + 3 * (4096 + 14336)
        assert every.adapter_params == 32 * 8 * per_layer

    def test_physics(self) -> None:
        """Adam state and gradients only for the adapters; the step's compute stays the base model's."""
        full = run_of(list(self.ARGS)).job
        lora = run_of([*self.ARGS, "--use_peft"]).job
        full_mem, lora_mem = memory.memory_breakdown(full, 0), memory.memory_breakdown(lora, 0)
        assert lora_mem.optimizer < full_mem.optimizer / 100 and lora_mem.grads < full_mem.grads / 100
        assert full.zero_stage == lora.zero_stage and lora_mem.weights > full_mem.weights  # base + adapters
        assert sum(collectives.grad_buckets(lora)) < sum(collectives.grad_buckets(full)) / 100
        # (The step time may differ: under DDP, HF's default, LoRA all-reduces only the adapters' gradients.)
        assert compute.flops_per_step(lora) == compute.flops_per_step(full)

    def test_peft_line_and_block(self) -> None:
        """Every rank prints PEFT's line; the block counts the adapters as its trainable parameters."""
        model = presets.resolve("llama3-8b", None, None).model
        for rank in (0, 5):
            out = HfDialect(seat(rank)).render(
                ModelConfigured(model=model, seq_len=8192, adapter_params=3_407_872), AT
            )
            assert [o.text for o in out if isinstance(o, Line)] == [
                "trainable params: 3,407,872 || all params: 8,033,669,120 || trainable%: 0.0424"
            ]
        dialect = HfDialect(seat(0))
        dialect.render(ModelConfigured(model=model, seq_len=8192, adapter_params=3_407_872), AT)
        block = dialect.render(
            TrainingStarted(
                first_step=1, last_step=5, total_steps=5, warmup_steps=0, lr=1e-4, schedule="linear"
            ),
            AT,
        )
        assert any(
            isinstance(o, Line) and o.text.endswith("Number of trainable parameters = 3,407,872")
            for o in block
        )


class TestNanLoss:
    """logging_nan_inf_filter (TrainingArguments' default): a NaN step's micro-batches each add tr_loss / (1 +
    global_step - _globalstep_last_logged) to tr_loss instead of their loss; the log is tr_loss over the
    window's steps, the grad norm is the step's own (nan)."""

    def test_window_with_nan_steps(self) -> None:
        """Steps 8 and 9 of the window 6-10 are NaN (4 micro-batches each): its log is the filter's."""
        run = hf_run()
        job = dataclasses.replace(run.job, nan_steps=(8, 9))
        run = dataclasses.replace(run, job=job)
        logged = dicts(feed(HfDialect(seat(0)), run, steps=10))
        assert [d["loss"] for d in logged[:1]] == [round(step_numbers(job, 0, 5).loss, 4)]
        tr = step_numbers(job, 0, 6).loss + step_numbers(job, 0, 7).loss
        tr *= (1 + 1 / 3) ** 4  # step 8: two steps of the window done before it
        tr *= (1 + 1 / 4) ** 4  # step 9: three
        tr += step_numbers(job, 0, 10).loss
        assert logged[1]["loss"] == round(tr / 5, 4)

    def test_every_step_logged(self) -> None:
        """--logging_steps 1: the NaN step's window holds nothing else, so its loss logs as 0.0."""
        run = dataclasses.replace(hf_run(), log_interval=1)
        job = dataclasses.replace(run.job, nan_steps=(3,))
        logged = dicts(feed(HfDialect(seat(0)), dataclasses.replace(run, job=job), steps=4))
        assert [(d["loss"], d["grad_norm"]) for d in logged[2:4]] == [
            (0.0, None),  # dicts() reads nan as None
            (round(step_numbers(job, 0, 4).loss, 4), float32(step_numbers(job, 0, 4).grad_norm)),
        ]
