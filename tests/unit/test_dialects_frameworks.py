"""nanoGPT, llm.c, NeMo 2 and Lightning dialects: events in, lines parsed back with the real logs' formats."""

from __future__ import annotations

import dataclasses
import functools
import math
import re

from fakerun import dialects, presets
from fakerun.dialects import events as ev
from fakerun.dialects import lightning, nemo
from fakerun.dialects.base import BarClose, BarDraw, Line, Output, Seat
from fakerun.hints import apply_arch, parse_hints
from fakerun.sim import estimates, loss
from fakerun.sim.job import make_job
from fakerun.sim.run import RunPlan, make_run
from fakerun.sim.step import step_numbers

AT = 1_795_000_000.25


@functools.cache
def gpt2_run() -> RunPlan:
    b = presets.resolve("gpt2-124m")
    job = make_job(b.model, b.cluster, b.storage, nnodes=1, nproc_per_node=4)
    return make_run(job, max_steps=40)


def seat(rank: int) -> Seat:
    job = gpt2_run().job
    return Seat(
        rank=rank,
        local_rank=rank % job.nproc_per_node,
        world_size=job.world_size,
        nproc_per_node=job.nproc_per_node,
        hosts=("node-a",),
    )


def built() -> ev.ModelBuilt:
    m = gpt2_run().job.model
    return ev.ModelBuilt(
        dtype="bfloat16",
        params_on_rank=m.params,
        layers_on_rank=m.layers,
        pp_rank=0,
        groups=estimates.param_groups(m),
        reported_params=estimates.nanogpt_num_params(m),
        padded_params=estimates.gpt_params(m),
        padded_vocab=estimates.padded_vocab(m),
    )


def step_done(step: int, **kw: float) -> ev.StepDone:
    run = gpt2_run()
    n = step_numbers(run.job, 0, step)
    return ev.StepDone(
        run=run,
        numbers=n,
        elapsed_s=step * n.step_time_s,
        recent_s=(n.step_time_s,) * min(step, 50),
        interval_s=n.step_time_s,
        epoch=step / run.steps_per_epoch,
        rank_tflops=n.tflops_per_gpu,
        rank_mfu=n.mfu,
        logged=True,
        **kw,  # type: ignore[arg-type]
    )


def eval_done(step: int) -> ev.EvalDone:
    job = gpt2_run().job
    value = loss.eval_loss(job, step)
    return ev.EvalDone(
        step=step,
        loss=value,
        ppl=loss.perplexity(value),
        seconds=4.0,
        samples=640,
        iters=5,
        epoch=0.1,
        train_loss=loss.expected_loss(job, step),
    )


def lines(
    name: str, rank: int, events: list[ev.Event], settings: tuple[tuple[str, str], ...] = ()
) -> list[str]:
    """Every stdout/stderr line and bar text the dialect prints on `rank` for `events`, in order."""
    d = dialects.make(name, seat(rank))
    out: list[Output] = []
    for e in [ev.JobStarted(run=gpt2_run(), first=True, resume=False, settings=settings), *events]:
        out.extend(d.render(e, AT))
    return [o.text for o in out if isinstance(o, (Line, BarDraw, BarClose)) and o.text is not None]


def started() -> ev.TrainingStarted:
    job = gpt2_run().job
    return ev.TrainingStarted(
        first_step=1,
        last_step=40,
        total_steps=job.total_steps,
        warmup_steps=job.warmup_steps,
        lr=job.lr,
        schedule="cosine",
        train_loss=loss.expected_loss(job, 0),
        val_loss=loss.eval_loss(job, 0),
    )


# -- nanoGPT (excerpt 71, karpathy/nanoGPT train.py and model.py) ----------------------------------------

ITER = re.compile(r"^iter (\d+): loss (\d+\.\d{4}), time (\d+\.\d{2})ms, mfu (-?\d+\.\d{2})%$")
EVAL = re.compile(r"^step (\d+): train loss (\d+\.\d{4}), val loss (\d+\.\d{4})$")


class TestNanoGpt:
    def test_gpt2_start_up_matches_the_real_script(self) -> None:
        """GPT-2 124M: the counts nanoGPT really prints for it (50 / 124,354,560; 98 / 121,344; 123.69M)."""
        out = lines("nanogpt", 2, [built()])
        assert "number of parameters: 123.69M" in out
        assert "num decayed parameter tensors: 50, with 124,354,560 parameters" in out
        assert "num non-decayed parameter tensors: 98, with 121,344 parameters" in out
        assert out[0] == "Initializing a new model from scratch"
        assert out[-1] == "compiling the model... (takes a ~minute)"

    def test_tokens_per_iteration_on_every_rank(self) -> None:
        job = gpt2_run().job
        event = ev.ParallelismDecided(
            tp=1,
            pp=1,
            dp=4,
            sharding="DDP",
            micro_batch=12,
            grad_accum=10,
            global_batch=480,
            tokens_per_step=job.tokens_per_step,
        )
        for rank in range(4):
            (text,) = lines("nanogpt", rank, [event])
            figure = re.fullmatch(r"tokens per iteration will be: ([\d,]+)", text)
            assert figure is not None and int(figure.group(1).replace(",", "")) == job.tokens_per_step

    def test_iter_and_eval_lines_on_master_only(self) -> None:
        k = gpt2_run().eval_interval
        events: list[ev.Event] = [started(), step_done(1), eval_done(k), step_done(k + 1, nanogpt_mfu=0.4321)]
        assert lines("nanogpt", 1, events) == []
        out = lines("nanogpt", 0, events)
        first = EVAL.match(out[0])
        assert first is not None and first.group(1) == "0"
        it0 = ITER.match(out[1])
        assert it0 is not None and it0.group(1) == "0" and it0.group(4) == "-100.00"
        n1 = step_numbers(gpt2_run().job, 0, 1)
        assert float(it0.group(3)) == round(n1.step_time_s * 1000, 2)
        ev20 = EVAL.match(out[2])
        assert ev20 is not None and ev20.group(1) == str(k)
        it20 = ITER.match(out[3])
        assert it20 is not None and it20.group(1) == str(k) and it20.group(4) == "43.21"

    def test_no_eval_or_save_off_the_eval_interval(self) -> None:
        """train.py evaluates and saves only at iter_num % eval_interval == 0: a run's end is not one."""
        k = gpt2_run().eval_interval
        off = ev.CheckpointSaving(step=k + 3, path="out", format="torch_dist")
        assert lines("nanogpt", 0, [eval_done(k + 3), off]) == []
        on = ev.CheckpointSaving(step=k, path="out", format="torch_dist")
        assert lines("nanogpt", 0, [on], settings=(("out_dir", "out-x"),)) == ["saving checkpoint to out-x"]

    def test_mfu_is_against_the_a100_promise(self) -> None:
        """estimate_mfu: (6N + 12 L H Q T) T B / dt / 312e12, whatever the GPU."""
        job = gpt2_run().job
        n = 123_689_472  # nanoGPT's get_num_params() for GPT-2 124M with the padded vocabulary
        per_token = 6 * n + 12 * 12 * 12 * 64 * 1024
        expected = per_token * 1024 * (job.global_batch / job.world_size) / 0.5 / 312e12
        assert math.isclose(estimates.nanogpt_mfu(job, 0.5), expected, rel_tol=1e-9)
        assert estimates.nanogpt_running_mfu(-1.0, 0.3) == 0.3
        assert math.isclose(estimates.nanogpt_running_mfu(0.3, 0.4), 0.31)

    def test_hints_take_configurator_overrides(self) -> None:
        h = parse_hints("nanoGPT/train.py", ["--batch_size=8", "--gradient_accumulation_steps=40"])
        assert h.style == "nanogpt" and h.model_name == "gpt2"
        assert h.job["micro_batch"] == 8 and h.job["global_batch"] == 320


def nanogpt_module_params(layers: int, c: int, vocab: int, bias: bool) -> int:
    """model.py's GPT counted module by module, position table left out (get_num_params)."""
    b = int(bias)
    block = 2 * (c + b * c) + (3 * c * c + b * 3 * c) + (c * c + b * c) + (4 * c * c + b * 4 * c)
    block += 4 * c * c + b * c
    return vocab * c + layers * block + (c + b * c)


CONFIG = "# small\nbatch_size = 4\ngradient_accumulation_steps = 2 * 4\nmax_iters = 300\neval_interval = 50\n"


class TestNanoGptConfigurator:
    def test_echo_and_overrides_as_configurator_prints_them(self) -> None:
        from fakerun.dialects.nanogpt import configure

        conf = configure(["c.py", "--learning_rate=1e-3", "--compile=False"], {"c.py": CONFIG}.get)
        # print(f.read()) of a file ending in a newline: its lines, then one empty line.
        assert conf.echo == (
            "Overriding config with c.py:",
            *CONFIG.split("\n"),
            "Overriding: learning_rate = 0.001",
            "Overriding: compile = False",
        )
        assert conf.echo[-3] == ""
        assert conf.values["gradient_accumulation_steps"] == 8 and conf.values["compile"] is False

    def test_configurator_errors(self) -> None:
        """configurator.py's own exceptions, at its own lines (karpathy/nanoGPT 3adf61e configurator.py)."""
        from fakerun.dialects.nanogpt import ConfigError, configure

        for args, said, line in (
            (["--foo=1"], "ValueError: Unknown config key: foo", 47),
            (["--batch_size=8.0"], "AssertionError", 42),  # a float where train.py has an int
            (["--os=1"], "AssertionError", 42),  # in globals(), not a config value
            (["--a=b=c"], "ValueError: too many values to unpack (expected 2)", 32),
            (["missing.py"], "FileNotFoundError: [Errno 2] No such file or directory: 'missing.py'", 26),
        ):
            try:
                configure(args, {}.get)
            except ConfigError as exc:
                assert (exc.exception, exc.line) == (said, line), exc
            else:
                raise AssertionError(f"{args} accepted")

    def test_config_file_and_arguments_drive_the_job(self, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
        monkeypatch.chdir(tmp_path)
        (tmp_path / "c.py").write_text(CONFIG)
        h = parse_hints("train.py", ["c.py", "--batch_size=6", "--n_layer=6", "--compile=False"])
        assert h.style == "nanogpt" and h.notices == ()
        # batch_size x gradient_accumulation_steps (whole job) sequences; iterations 0..max_iters.
        assert h.job["micro_batch"] == 6 and h.job["global_batch"] == 6 * 8 and h.job["total_steps"] == 301
        assert (
            h.cadence["eval_interval"] == 50 == h.cadence["save_interval"] and h.cadence["log_interval"] == 1
        )
        assert h.arch["bias"] == 0 and h.arch["vocab"] == 50304 and h.arch["layers"] == 6
        assert dict(h.settings)["compile"] == "False"
        model = apply_arch(presets.load_model(h.model_name or ""), h.arch)
        assert estimates.nanogpt_num_params(model) == nanogpt_module_params(6, 768, 50304, False)
        gone = parse_hints("train.py", ["gone.py"]).script_exit  # configurator.py dies opening it
        assert gone is not None and gone[0].endswith("No such file or directory: 'gone.py'\n")

    def test_gpt2_124m_without_bias_as_the_readme_prints_it(self, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
        monkeypatch.chdir(tmp_path)
        h = parse_hints("train.py", ["--compile=False"])
        model = apply_arch(presets.load_model("gpt2"), h.arch)
        assert f"{estimates.nanogpt_num_params(model) / 1e6:.2f}M" == "123.59M"
        g = estimates.param_groups(model)
        # 2-D tensors: wte, wpe and 4 matrices per block; LayerNorm weights only (bias=False).
        assert (g.decay_tensors, g.nodecay_tensors, g.nodecay_params) == (50, 25, 25 * 768)
        assert g.decay_params + g.nodecay_params == nanogpt_module_params(12, 768, 50304, False) + 1024 * 768

    def test_init_from_gpt2_xl(self, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
        monkeypatch.chdir(tmp_path)
        h = parse_hints("train.py", ["--init_from=gpt2-xl", "--block_size=512", "--dropout=0.1"])
        assert h.regime == "finetune" and h.job["seq_len"] == 512
        model = apply_arch(presets.load_model("gpt2"), h.arch)
        n = estimates.nanogpt_num_params(model, padded=False)
        assert n == nanogpt_module_params(48, 1600, 50257, True)
        settings = dict(h.settings)
        b = dataclasses.replace(built(), reported_params=n, groups=None)
        d = dialects.make("nanogpt", seat(0))
        d.render(
            ev.JobStarted(run=gpt2_run(), first=False, resume=False, settings=tuple(settings.items())), AT
        )
        out = [o.text for o in d.render(b, AT) if isinstance(o, Line)]
        assert out[:4] == [
            "Initializing from OpenAI GPT-2 weights: gpt2-xl",
            "loading weights from pretrained gpt: gpt2-xl",
            "forcing vocab_size=50257, block_size=1024, bias=True",
            "overriding dropout rate to 0.1",
        ]
        assert out[4] == f"number of parameters: {n / 1e6:.2f}M"

    def test_echo_on_every_rank_once_per_process(self) -> None:
        echo = (("echo", "Overriding: batch_size = 8"), ("compile", "False"))
        for rank in (0, 3):
            assert lines("nanogpt", rank, [built()], settings=echo)[0] == "Overriding: batch_size = 8"
        assert "compiling the model... (takes a ~minute)" not in lines("nanogpt", 0, [built()], settings=echo)


# -- llm.c (train_gpt2.cu printf0) -------------------------------------------------------------------

LLMC_STEP = re.compile(
    r"^step +(\d+)/(\d+) \| loss (\d+\.\d{6}) \(([+-](?:nan|\d+\.\d{2}))z\)\| norm (\d+\.\d{4}) "
    r"\(([+-](?:nan|\d+\.\d{2}))z\)\| lr (\d\.\d{2}e[+-]\d{2}) \| (\d+\.\d{2}) ms \| (\d+\.\d)% bf16 MFU "
    r"\| (\d+) tok/s$"
)


class TestLlmc:
    def test_table_is_aligned_and_counts_d12(self) -> None:
        out = lines("llmc", 0, [built()])
        rule = out[0]
        table = [t for t in out if t.startswith(("|", "+"))]
        # %-50s pads, never cuts: only a value longer than 50 (the default train pattern) pushes its row out.
        assert all(len(t) == len(rule) or len(t.split(" | ")[1]) > 50 for t in table)
        assert "num_parameters: 124475904 => bytes: 248951808" in out  # llm.c's own figure for d12
        assert any(re.fullmatch(r"\| padded_vocab_size Vp  \| 50304 +\|", t) for t in out)
        assert lines("llmc", 1, [built()]) == []

    def test_step_line(self) -> None:
        s = step_done(3, llmc_mfu=0.423, llmc_tokens_per_s=171562.4)
        (text,) = lines("llmc", 0, [s])
        m = LLMC_STEP.match(text)
        assert m is not None, text
        assert m.group(1) == "3" and m.group(4) == "+nan" and m.group(9) == "42.3" and m.group(10) == "171562"
        z = step_done(200, loss_z=-0.5, norm_z=1.25)
        m2 = LLMC_STEP.match(lines("llmc", 0, [z])[0])
        assert m2 is not None and m2.group(4) == "-0.50" and m2.group(6) == "+1.25"

    def test_zscore_waits_for_its_window(self) -> None:
        window = [1.0, 2.0] * (estimates.LLMC_WINDOW // 2)
        assert math.isnan(estimates.zscore(window[:-1], 1.0))
        recent = [*window[1:], 5.0]
        mean = sum(recent) / len(recent)
        std = math.sqrt(sum((v - mean) ** 2 for v in recent) / len(recent))
        assert math.isclose(estimates.zscore(window, 5.0), (5.0 - mean) / std)

    def test_selected_by_the_binary(self) -> None:
        assert parse_hints("./train_gpt2cu", ["-b", "16"]).style == "llmc"


# -- NeMo 2 (excerpt 28, nemo/lightning/pytorch/callbacks/progress_printer.py) ----------------------------

NEMO = re.compile(r"^Training epoch (\d+), iteration (\d+)/(\d+)((?: \| [a-z_ ]+: [\d.e+-]+)+)$")
# progress_bar_metrics in the order the keys are first logged in a step: lr (OptimizerModule's
# on_train_batch_start), global_batch_size (MegatronDataSampler.on_megatron_step_end), global_step and
# reduced_train_loss (MegatronStrategy.training_step), train_step_timing in s (TimingCallback's batch end).
NEMO_KEYS = ["lr", "global_batch_size", "global_step", "reduced_train_loss", "train_step_timing in s"]
NEMO_INFO = re.compile(r"^\[NeMo I \d{4}-\d\d-\d\d \d\d:\d\d:\d\d ([a-z_]+):(\d+)\] (.*)$")
NEMO_LINE = re.compile(r"^\[NeMo ([IW]) \d{4}-\d\d-\d\d \d\d:\d\d:\d\d ([a-z_]+):(\d+)\] (.*)$")


def nemo_metrics(line: str) -> tuple[int, int, int, list[tuple[str, str]]]:
    """(epoch, iteration, total - 1, [(key, value), ...]) of a ProgressPrinter line."""
    m = NEMO.match(line)
    assert m is not None, line
    pairs = [tuple(p.split(": ")) for p in m.group(4).split(" | ")[1:]]
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), [(k, v) for k, v in pairs]


def saved(step: int) -> ev.CheckpointSaved:
    return ev.CheckpointSaved(step=step, path="iter", nbytes=1, seconds=8.0, bandwidth_gbs=1.0)


class TestNemo:
    def test_progress_lines_on_rank0(self) -> None:
        """A fresh run: consumed_samples is logged only once global_step is non-zero, so its key comes after
        the timing; val_loss joins after the first validation (NeMo 24.12's lines show this order)."""
        job = gpt2_run().job
        out = lines("nemo", 0, [step_done(1), step_done(2), eval_done(2), step_done(3)])
        epoch, iteration, last, first = nemo_metrics(out[0])
        assert (epoch, iteration, last) == (0, 0, job.total_steps - 1)
        assert [k for k, _ in first] == NEMO_KEYS
        assert dict(first)["global_batch_size"] == str(job.global_batch) and dict(first)["global_step"] == "0"
        _, _, _, second = nemo_metrics(out[1])
        assert [k for k, _ in second] == [*NEMO_KEYS, "consumed_samples"]
        assert dict(second)["consumed_samples"] == str(2 * job.global_batch)  # (global_step + 1) x gbs
        assert out[2:7] == [f"Validation: iteration {i}/5" for i in range(1, 6)]
        _, _, _, third = nemo_metrics(out[7])
        assert [k for k, _ in third] == [*NEMO_KEYS, "consumed_samples", "val_loss"]
        assert lines("nemo", 2, [step_done(1)]) == []

    def test_resumed_run_logs_consumed_samples_after_lr(self) -> None:
        """Resumed at a non-zero global_step, the sampler logs consumed_samples in the first step, before
        global_batch_size (the order of bionemo-recipes#740's resumed run in excerpt 28)."""
        d = dialects.make("nemo", seat(0))
        d.render(ev.JobStarted(run=gpt2_run(), first=True, resume=True), AT)
        out = d.render(step_done(11), AT)
        _, iteration, _, metrics = nemo_metrics(out[0].text if isinstance(out[0], Line) else "")
        assert iteration == 10
        assert [k for k, _ in metrics] == ["lr", "consumed_samples", *NEMO_KEYS[1:]]

    def test_async_checkpoint_after_validation(self) -> None:
        """ModelCheckpoint after validation: the top-k and -last saves scheduled (MegatronCheckpointIO's
        timing line first), finalized at the next batch end after its progress line."""
        job = gpt2_run().job
        out = lines("nemo", 0, [step_done(20), eval_done(20), saved(20), step_done(21)])
        info = [m.groups() for t in out if (m := NEMO_INFO.match(t))]
        val = f"{loss.eval_loss(job, 20):.2f}"
        name = f"model_name=0--val_loss={val}-step=19-consumed_samples={20 * job.global_batch}.0"
        paths = [f"nemo_experiments/default/checkpoints/{name}{tail}.ckpt" for tail in ("", "-last")]
        timing = re.compile(
            r"Global Checkpoint Save : Rank: 0 : Iteration: 20 : Start time: \d+\.\d{3}s"
            r" : Save duration: \d+\.\d{3}s"
        )
        assert [(mod, msg.split(" for ")[-1]) for mod, _, msg in info[:4] if mod == "model_checkpoint"] == [
            ("model_checkpoint", p) for p in paths
        ]
        assert [mod for mod, _, _ in info[:4]] == ["pl", "model_checkpoint"] * 2
        assert all(timing.fullmatch(msg) for mod, _, msg in info[:4] if mod == "pl")
        after = out.index(next(t for t in out if t.startswith("Training epoch 0, iteration 20/")))
        assert [NEMO_INFO.match(t).group(3) for t in out[after + 1 : after + 5]] == [  # type: ignore[union-attr]
            f"Successfully saved checkpoint from iteration      20 to {paths[0]}",
            f"Async checkpoint save for step 20 ({paths[0]}) finalized successfully.",
            f"Successfully saved checkpoint from iteration      20 to {paths[1]}",
            f"Async checkpoint save for step 20 ({paths[1]}) finalized successfully.",
        ]

    def test_checkpoint_between_validations(self) -> None:
        """A save on the time interval (at a batch end, before the batch counts as completed): the iteration
        is one less, val_loss 0.00 until a validation has run (as NeMo 24.12 names it)."""
        out = lines("nemo", 0, [step_done(19), saved(19), ev.TrainingFinished(step=19)])
        assert any("Iteration: 18 :" in t for t in out)
        assert any(
            t.endswith(
                "model_name=0--val_loss=0.00-step=18-consumed_samples="
                + f"{19 * gpt2_run().job.global_batch}.0.ckpt"
            )
            for t in out
        )
        # Still pending at the end: AsyncFinalizerCallback.on_train_end finalizes it, blocking.
        assert any(
            t.endswith("Pending async checkpoint saves. Finalizing them synchronously now") for t in out
        )
        assert out[-1].endswith("Async finalization time took 0.001 s")

    def test_start_up(self) -> None:
        """Rank 0 in the order llm.train runs: the Trainer's device lines, NeMoLogger.setup and AutoResume's
        warnings, strategy.connect's fix, megatron_init's groups before init_process_group, the banner, then
        configure_model, Lightning's CUDA line and MegatronStrategy.setup's lines before the summary."""
        job = gpt2_run().job
        events: list[ev.Event] = [
            ev.WorkerStarted(host="node-a", local_rank=0, world_size=4, pid=1),
            ev.ProcessGroupInitializing(backend="nccl", world_size=4),
            ev.ProcessGroupReady(tp_rank=0, dp_rank=0, pp_rank=0),
            built(),
        ]
        d = dialects.make("nemo", dataclasses.replace(seat(0), cwd="/w/run"))
        out: list[Output] = []
        for e in [ev.JobStarted(run=gpt2_run(), first=True, resume=False), *events]:
            out.extend(d.render(e, AT))
        text = [o.text for o in out if isinstance(o, Line)]
        tags = [
            (m.group(1), m.group(2), int(m.group(3)), o.stream) for o in out if (m := NEMO_LINE.match(o.text))
        ]
        assert text[:3] == lightning.accelerator_lines(hpu=True)
        # nemo_logger.py / resume.py: warnings to stderr, info to stdout, tagged with the call's first line.
        assert tags[:6] == [
            ("W", "nemo_logger", 139, "stderr"),
            ("I", "nemo_logger", 162, "stdout"),
            ("W", "nemo_logger", 190, "stderr"),
            ("W", "nemo_logger", 209, "stderr"),
            ("W", "nemo_logger", 239, "stderr"),
            ("W", "resume", 239, "stderr"),
        ]
        messages = [m.group(4) for t in text if (m := NEMO_LINE.match(t))]
        assert messages[1] == "Experiments will be logged at /w/run/nemo_experiments/default"
        assert messages[2].endswith(
            'Overwriting tensorboard logger "save_dir" to /w/run/nemo_experiments/tb_logs'
        )
        assert f"trainer's max_steps was set to {job.total_steps}. Please ensure" in messages[4]
        assert messages[5].endswith(":/w/run/nemo_experiments/default/checkpoints. Training from scratch.")
        assert tags[6][1:3] == ("megatron_strategy", 473) and tags[7][1:3] == ("megatron_init", 449)
        # init_process_group's `Initializing distributed` goes to a logger with no handler: never shown.
        assert not any(t.startswith("Initializing distributed") for t in text)
        banner = text.index("distributed_backend=nccl")
        assert text.index(next(t for t in text if "megatron_init:553]" in t)) < banner
        after = text[banner:]
        # base.py's padding to a multiple of 128 x TP (GPT-2's 50257 -> 50304) comes with configure_model.
        order = [
            "Padded vocab_size: 50304, original vocab_size: 50257, dummy tokens: 47.",
            "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0,1,2,3]",
            f"Copying Trainer's 'max_steps' ({job.total_steps}) to LR scheduler's 'max_steps'.",
            f"setting number of microbatches to constant {job.global_batch // (job.micro_batch * job.dp)}",
            f" > number of parameters on (tensor, pipeline) model parallel rank (0 ,0): {job.model.params}",
        ]
        found = [next(i for i, t in enumerate(after) if t.endswith(want)) for want in order]
        assert found == sorted(found)
        assert after[found[-1] + 1] == "" and after[found[-1] + 2].startswith("  | Name")
        # The summary sees the module MegatronParallel wrapped in DDP (a NeMo 2 run's `module | DDP` row).
        assert re.fullmatch(r"0 \| module \| DDP +\| 124 M +\| train", after[found[-1] + 4])
        assert lines("nemo", 3, events) == ["LOCAL_RANK: 3 - CUDA_VISIBLE_DEVICES: [0,1,2,3]"]

    def test_resumed_run_finds_its_checkpoint(self) -> None:
        """AutoResume warns only when there is no checkpoint to resume from."""
        d = dialects.make("nemo", seat(0))
        d.render(ev.JobStarted(run=gpt2_run(), first=True, resume=True), AT)
        out = d.render(ev.WorkerStarted(host="node-a", local_rank=0, world_size=4, pid=1), AT)
        assert not any(isinstance(o, Line) and "resume:" in o.text for o in out)
        assert any(isinstance(o, Line) and "nemo_logger:162]" in o.text for o in out)

    def test_parallel_groups_of_a_two_gpu_run(self) -> None:
        """megatron_init's lines for data parallelism over two GPUs, as a real NeMo 2 run printed them."""
        b = presets.resolve("gpt2-124m")
        job = make_job(b.model, b.cluster, b.storage, nnodes=1, nproc_per_node=2)
        assert [text for _, text in nemo.parallel_group_lines(job, 0)] == [
            "Rank 0 has data parallel group : [0, 1]",
            "Rank 0 has combined group of data parallel and context parallel : [0, 1]",
            "All data parallel group ranks with context parallel combined: [[0, 1]]",
            "Ranks 0 has data parallel rank: 0",
            "Rank 0 has context parallel group: [0]",
            "All context parallel group ranks: [[0], [1]]",
            "Ranks 0 has context parallel rank: 0",
            "Rank 0 has model parallel group: [0]",
            "All model parallel group ranks: [[0], [1]]",
            "Rank 0 has tensor model parallel group: [0]",
            "All tensor model parallel group ranks: [[0], [1]]",
            "Rank 0 has tensor model parallel rank: 0",
            "Rank 0 has pipeline model parallel group: [0]",
            "Rank 0 has embedding group: [0]",
            "All pipeline model parallel group ranks: [[0], [1]]",
            "Rank 0 has pipeline model parallel rank 0",
            "All embedding group ranks: [[0], [1]]",
            "Rank 0 has embedding rank: 0",
        ]

    def test_rank_groups_as_megatron_documents_them(self) -> None:
        """The examples of fake_initialize_model_parallel's and generate_masked_orthogonal_rank_groups'
        docstrings: 16 GPUs with TP 2 and PP 4; TP 2, DP 3, PP 4 in that order."""
        dims = [("tp", 2), ("cp", 1), ("ep", 1), ("dp", 2), ("pp", 4)]
        assert nemo.rank_groups(dims, "dp") == [[g, g + 2] for g in (0, 1, 4, 5, 8, 9, 12, 13)]
        assert nemo.rank_groups(dims, "tp") == [[g, g + 1] for g in range(0, 16, 2)]
        assert nemo.rank_groups(dims, "pp") == [[g, g + 4, g + 8, g + 12] for g in range(4)]
        dp = nemo.rank_groups([("tp", 2), ("dp", 3), ("pp", 4)], "dp")
        assert (dp[0], dp[1], dp[7]) == ([0, 2, 4], [1, 3, 5], [19, 21, 23])
        assert nemo.rank_groups([("tp", 2), ("pp", 2), ("dp", 2)], "dp") == [[0, 4], [1, 5], [2, 6], [3, 7]]

    def test_model_parallel_groups_of_rank_zero(self) -> None:
        """TP 2 x PP 2 x DP 2: rank = tp + 2 dp + 4 pp. The experts' TP defaults to the model's, so its lines
        show; `All embedding group ranks` prints the pipeline groups (megatron_init's own quirk)."""
        b = presets.resolve("gpt2-124m")
        job = make_job(b.model, b.cluster, b.storage, nnodes=1, nproc_per_node=8, tp=2, pp=2)
        out = dict((text.split(":")[0], (line, text)) for line, text in nemo.parallel_group_lines(job, 0))
        assert out["Rank 0 has data parallel group "][1].endswith(": [0, 2]")
        assert out["Rank 0 has model parallel group"][1].endswith(": [0, 1, 4, 5]")
        assert out["Rank 0 has tensor model parallel group"][1].endswith(": [0, 1]")
        assert out["Rank 0 has pipeline model parallel group"][1].endswith(": [0, 4]")
        assert out["Rank 0 has embedding group"][1].endswith(": [0, 4]")
        assert out["All embedding group ranks"][1].endswith(": [[0, 4], [1, 5], [2, 6], [3, 7]]")
        assert out["All expert tensor parallel group ranks"] == (
            518,
            "All expert tensor parallel group ranks: [[0, 1], [2, 3], [4, 5], [6, 7]]",
        )
        assert "All expert model parallel group ranks" not in out  # EP 1

    def test_validation_total_sticks_at_the_sanity_check(self) -> None:
        """ProgressPrinter sets its validation total at the first validation batch and never again: after
        the sanity check's 2 batches every validation counts against 2; without one, against its own."""
        start = dataclasses.replace(started(), sanity_batches=2, sanity_s=0.6)
        out = lines("nemo", 0, [start, step_done(2), eval_done(2)])
        assert out[:2] == [f"Sanity checking Validation: iteration {i}/2" for i in (1, 2)]
        assert out[3:8] == [f"Validation: iteration {i}/2" for i in range(1, 6)]
        plain = lines("nemo", 0, [started(), step_done(2), eval_done(2)])
        assert plain[1:6] == [f"Validation: iteration {i}/5" for i in range(1, 6)]

    def test_selected_by_recipes(self) -> None:
        assert (
            parse_hints("/opt/NeMo/examples/nlp/language_modeling/megatron_gpt_pretraining.py", []).style
            == "nemo"
        )


# -- Lightning (excerpt 72, src/lightning) -----------------------------------------------------------------


class TestLightning:
    def test_summary_table(self) -> None:
        out = lines("lightning", 0, [built()])
        header = next(t for t in out if t.startswith("  | Name"))
        assert re.fullmatch(r"  \| Name +\| Type +\| Params +\| Mode +\| FLOPs", header)
        assert out[out.index(header) - 1] == ""  # ModelSummary logs "\n" + the table
        row = next(t for t in out if t.startswith("0 | "))
        params = re.fullmatch(r"0 \| model +\| GPT +\| (\d+) M +\| train +\| 0 +", row)
        assert params is not None and int(params.group(1)) == int(gpt2_run().job.model.params / 1e6)
        size = next(t for t in out if t.endswith("Total estimated model params size (MB)"))
        assert math.isclose(
            float(size[:10].replace(",", "")), gpt2_run().job.model.params * 4 / 1e6, abs_tol=1e-3
        )

    def test_summary_as_excerpt_72(self) -> None:
        """Lightning 2.4's table (NeMo's pin) for the excerpt's 31-parameter Sequential, line for line."""
        table = lightning.summary_lines("model", "Sequential", 31, trainable_modules=3, flops=False)
        assert table[:8] == [
            "  | Name  | Type       | Params | Mode ",
            "-" * 45,
            "0 | model | Sequential | 31     | train",
            "-" * 45,
            "31        Trainable params",
            "0         Non-trainable params",
            "31        Total params",
            "0.000     Total estimated model params size (MB)",
        ]
        assert table[8:] == ["3         Modules in train mode", "0         Modules in eval mode"]

    def test_summary_sizes_weights_by_precision(self) -> None:
        """model_summary's precision_to_bits: bf16-true is 2 bytes a parameter; bf16-mixed falls back to 4."""
        size = {
            p: lightning.summary_lines("m", "T", 1e6, trainable_modules=1, precision=p, flops=True)[7]
            for p in ("bf16-true", "bf16-mixed")
        }
        assert size["bf16-true"].startswith("2.000 ") and size["bf16-mixed"].startswith("4.000 ")
        # Trainer(precision="bf16") is "bf16-mixed" by the time the summary looks; "64" is "64-true".
        legacy = {
            p: lightning.summary_lines("m", "T", 1e6, trainable_modules=1, precision=p, flops=True)[7]
            for p in ("bf16", "64")
        }
        assert legacy["bf16"].startswith("4.000 ") and legacy["64"].startswith("8.000 ")

    def test_streams(self) -> None:
        """Lightning's info lines go through its loggers' StreamHandler (stderr); its bars are
        Tqdm(file=sys.stdout). NeMo's ProgressPrinter print()s to stdout, its INFO logging too."""
        d = dialects.make("lightning", seat(0))
        d.render(ev.JobStarted(run=gpt2_run(), first=True, resume=False), AT)
        events: list[ev.Event] = [
            ev.WorkerStarted(host="node-a", local_rank=0, world_size=4, pid=1),
            built(),
            step_done(1),
            ev.TrainingStopped(step=40, reason="reached max steps"),
        ]
        out = [o for e in events for o in d.render(e, AT)]
        assert {o.stream for o in out if isinstance(o, Line)} == {"stderr"}
        assert {o.stream for o in out if isinstance(o, (BarDraw, BarClose))} == {"stdout"}
        assert dialects.bar_stream("lightning") == "stdout" and dialects.bar_stream("hf") == "stderr"
        n = dialects.make("nemo", seat(0))
        n.render(ev.JobStarted(run=gpt2_run(), first=True, resume=False), AT)
        progress = n.render(step_done(1), AT)
        assert [o.stream for o in progress if isinstance(o, Line)] == ["stdout"]

    def test_sanity_check_bar(self) -> None:
        """The sanity check's bar before the first step, as tqdm writes it (a real log's sequence): bare
        description with no total, reset to 2 batches, under the dataloader's name, then blanked."""
        start = dataclasses.replace(started(), sanity_batches=2, sanity_s=0.6)
        out = lines("lightning", 0, [start])
        assert out[:3] == [
            "Sanity Checking: |          | 0/? [00:00<?, ?it/s]",
            "Sanity Checking:   0%|          | 0/2 [00:00<?, ?it/s]",
            "Sanity Checking DataLoader 0:   0%|          | 0/2 [00:00<?, ?it/s]",
        ]
        assert out[3].startswith(
            "Sanity Checking DataLoader 0:  50%|█████     | 1/2 [00:00<00:00,  3.33it/s]"
        )
        assert out[4].startswith(
            "Sanity Checking DataLoader 0: 100%|██████████| 2/2 [00:00<00:00,  3.33it/s]"
        )
        assert out[5] == " " * len(out[4]) + "\r"  # leave=False at position 0
        assert lines("lightning", 0, [started()]) == []  # no validation: no sanity check

    def test_bar_numbers_are_padded(self) -> None:
        """Lightning's Tqdm.format_num pads floats to 5 characters (to stop the bar flickering)."""
        assert [lightning.bar_num(x) for x in (2.31, 12.0, 10.5, 1e-05, 0.123456, math.nan)] == [
            "2.310",
            "12.00",
            "10.50",
            "1e-5",
            "0.123",
            "nan.0",
        ]

    def test_bar_rate_is_iterations_per_second_with_logger_version(self) -> None:
        """BAR_FORMAT's rate_noinv_fmt: 16 batches in 160 s show 0.10it/s, never tqdm's 10.00s/it."""
        first = step_done(1)
        first = dataclasses.replace(first, elapsed_s=first.numbers.step_time_s)  # the epoch's clock from 0
        slow = dataclasses.replace(step_done(2), elapsed_s=160.0)
        assert gpt2_run().job.grad_accum == 8  # the bar counts micro batches: 2 steps are 16 of them
        out = lines("lightning", 0, [first, slow], settings=(("v_num", "7"),))
        meter = r"\| 16/\d+ \[02:40<[\d:]+,  0\.10it/s, v_num=7, train_loss=\d+\.\d+\]$"
        assert re.search(meter, out[-1]), out[-1]

    def test_stop_by_epochs(self) -> None:
        stop = ev.TrainingStopped(step=40, reason="reached total steps")
        out = lines("lightning", 0, [stop], (("max_epochs", "3"),))
        assert out[-1] == "`Trainer.fit` stopped: `max_epochs=3` reached."

    def test_device_lines_of_the_pinned_versions(self) -> None:
        """Lightning 2.6 dropped the HPU line (#21327); NeMo's Lightning (<=2.4) still prints it."""
        started = ev.WorkerStarted(host="node-a", local_rank=0, world_size=4, pid=1)
        assert lines("lightning", 0, [started]) == [
            "GPU available: True (cuda), used: True",
            "TPU available: False, using: 0 TPU cores",
        ]
        assert lines("nemo", 0, [started])[2] == "HPU available: False, using: 0 HPUs"

    def test_bar_and_stop(self) -> None:
        out = lines("lightning", 0, [step_done(5), ev.TrainingStopped(step=40, reason="reached max steps")])
        # 5 steps of 8 accumulated micro batches: the bar counts the dataloader's batches
        meter = r"^Epoch 0: +\d+%\|.*\| 40/\d+ \[.*it/s, v_num=0, train_loss=\d+\.\d+\]"
        assert re.match(meter, out[0]), out[0]
        assert out[-1] == "`Trainer.fit` stopped: `max_steps=40` reached."
        assert lines("lightning", 1, [step_done(5)]) == []

    def test_init_lines_every_rank_banner_on_rank0(self) -> None:
        init = ev.ProcessGroupInitializing(backend="nccl", world_size=4)
        ready = ev.ProcessGroupReady(tp_rank=0, dp_rank=0, pp_rank=0)
        assert lines("lightning", 2, [init, ready]) == [
            "Initializing distributed: GLOBAL_RANK: 2, MEMBER: 3/4"
        ]
        out = lines("lightning", 0, [init, ready])
        assert out[1] == "-" * 100 and out[2] == "distributed_backend=nccl"
        assert out[3] == "All distributed processes registered. Starting with 4 processes"

    def test_selected_by_cli_options(self) -> None:
        assert parse_hints(
            "main.py", ["fit", "--trainer.max_steps", "100", "--trainer.devices", "8"]
        ).style == ("lightning")

    def test_cli_and_argparse_options_are_honoured(self) -> None:
        cli = parse_hints(
            "main.py",
            [
                *("fit", "--trainer.max_steps", "100"),
                *("--trainer.accumulate_grad_batches", "4", "--data.batch_size", "8"),
            ],
        )
        assert cli.job == {"total_steps": 100, "grad_accum": 4, "micro_batch": 8}
        plain = parse_hints(
            "train.py",
            [
                *("--accelerator", "gpu", "--devices", "8", "--strategy", "ddp", "--max_epochs", "3"),
                *("--gradient_clip_val", "0.5", "--precision", "16-mixed", "--val_check_interval", "0.25"),
            ],
        )
        assert plain.style == "lightning" and plain.epochs == 3.0 and plain.cadence == {}
        assert plain.job == {"grad_clip": 0.5, "precision": "fp16"}
        assert plain.settings == {"precision": "16-mixed", "max_epochs": "3"}


class TestNemoArguments:
    def test_hydra_overrides(self) -> None:
        h = parse_hints(
            "megatron_gpt_pretraining.py",
            [
                *("trainer.devices=8", "trainer.num_nodes=2", "trainer.max_steps=500"),
                *("trainer.val_check_interval=50", "trainer.log_every_n_steps=10"),
                *("model.micro_batch_size=1", "model.global_batch_size=128"),
                *("model.tensor_model_parallel_size=2", "++model.optim.lr=3e-4"),
                "model.encoder_seq_length=4096",
                "exp_manager.checkpoint_callback_params.every_n_train_steps=100",
            ],
        )
        assert h.job == {"total_steps": 500, "micro_batch": 1, "global_batch": 128, "tp": 2, "lr": 3e-4} | {
            "seq_len": 4096
        }
        assert h.arch == {"seq_len": 4096}
        assert h.cadence == {"eval_interval": 50, "log_interval": 10, "save_interval": 100}

    def test_hydra_overrides_select_nemo(self) -> None:
        h = parse_hints("pretrain.py", ["trainer.max_steps=100", "model.micro_batch_size=2"])
        assert h.style == "nemo"

    def test_recipes_name_models(self) -> None:
        h = parse_hints("/usr/local/bin/nemo", ["llm", "pretrain", "--factory", "llama31_70b"])
        assert h.style == "nemo" and h.model is not None and h.model.name == "llama3-70b"
        nemotron = parse_hints("/usr/local/bin/nemo", ["llm", "pretrain", "--factory", "nemotron4_15b"])
        assert nemotron.arch["hidden"] == 6144 and nemotron.arch["vocab"] == 256000


def test_printed_mfu_is_the_events() -> None:
    """The nanoGPT dialect prints the event's running MFU, it does not compute one."""
    a = lines("nanogpt", 0, [step_done(21, nanogpt_mfu=0.2)])
    b = lines("nanogpt", 0, [dataclasses.replace(step_done(21), nanogpt_mfu=0.3)])
    assert a != b and a[0].endswith("mfu 20.00%") and b[0].endswith("mfu 30.00%")
