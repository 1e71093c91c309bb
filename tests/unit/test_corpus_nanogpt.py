"""nanoGPT and llm.c's train_gpt2.py launch commands (tests/corpus/): the job each framework would run."""

from __future__ import annotations

import dataclasses
import io
import math
import pickle
import shlex
import shutil
import struct
import sys
import zipfile
from pathlib import Path

import pytest

from fakerun import presets
from fakerun.cli import parse_command_line
from fakerun.dialects import events as ev
from fakerun.dialects.base import Line, Seat
from fakerun.dialects.files import SaveRequest
from fakerun.dialects.llmc_py import LlmcPyDialect
from fakerun.dialects.nanogpt import NanoGptDialect, pads_vocab
from fakerun.frameworks import pytrace
from fakerun.hints import parse_hints
from fakerun.jobconfig import build_run
from fakerun.sim import estimates, loss
from fakerun.sim.run import RunPlan, make_run
from fakerun.sim.step import step_numbers
from fakerun.worker import artifacts
from fakerun.worker.main import die_at_start
from fakerun.worker.printer import Printer

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def commands(framework: str) -> list[tuple[int, list[str]]]:
    """The corpus's `<nproc> <script> <args...>` lines."""
    text = (CORPUS / framework / "commands.txt").read_text()
    rows = [shlex.split(line) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [(int(row[0]), row[1:]) for row in rows]


def build(nproc: int, argv: list[str]) -> RunPlan:
    """build_run on a torchrun command line of one node (no processes)."""
    cmd = parse_command_line(["--nproc-per-node", str(nproc), *argv], {})
    bundle = presets.resolve("llama3-8b")
    run, _ = build_run(cmd, bundle, nnodes=1, nproc_per_node=nproc, model_given=False)
    return run


def gpt_params(layers: int, c: int, vocab: int, block: int, *, bias: bool) -> int:
    """model.py's GPT counted module by module (tied head): embeddings, blocks, final LayerNorm."""
    b = int(bias)
    ln = c + b * c
    block_params = (
        2 * ln + (3 * c * c + b * 3 * c) + (c * c + b * c) + (4 * c * c + b * 4 * c) + (4 * c * c + b * c)
    )
    return vocab * c + block * c + layers * block_params + ln


@pytest.fixture
def corpus_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the corpus at its relative paths and shakespeare_char's meta.pkl."""
    shutil.copytree(CORPUS, tmp_path / "tests" / "corpus")
    meta = tmp_path / "data" / "shakespeare_char"
    meta.mkdir(parents=True)
    (meta / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 65, "itos": {}, "stoi": {}}))
    monkeypatch.chdir(tmp_path)
    return tmp_path


class TestNanoGptCorpus:
    def test_every_command_builds(self, corpus_cwd: Path) -> None:
        for nproc, argv in commands("nanogpt"):
            run = build(nproc, argv)
            assert run.job.world_size == nproc

    def test_small_char(self, corpus_cwd: Path) -> None:
        """meta.pkl's vocabulary, no bias; batch_size x gradient_accumulation_steps over the whole job."""
        run = build(4, ["train.py", "tests/corpus/nanogpt/small_char.py"])
        job = run.job
        m = job.model
        assert (m.layers, m.hidden, m.heads, m.vocab) == (4, 256, 4, 65)
        # get_num_params(non_embedding=True) leaves the 128-row position table out.
        n = gpt_params(4, 256, 65, 128, bias=False) - 128 * 256
        assert m.params == gpt_params(4, 256, 65, 128, bias=False)
        assert estimates.nanogpt_num_params(m, padded=pads_vocab(job)) == n
        assert f"{n / 1e6:.2f}M" == "3.16M"
        # gradient_accumulation_steps 4 over 4 ranks: one micro batch of 32 each.
        assert (job.micro_batch, job.grad_accum, job.global_batch) == (32, 1, 128)
        h = parse_hints("train.py", ["tests/corpus/nanogpt/small_char.py"])
        assert h.world_exit is not None
        refused = h.world_exit(3)  # 4 % 3 != 0: train.py's assertion on every rank
        assert refused is not None and refused[1] == 1
        assert "[rank\x00]:     assert gradient_accumulation_steps % ddp_world_size == 0\n" in refused[0]
        assert h.world_exit(2) is None and h.world_exit(1) is None
        assert h.job["micro_batch"] == 32 and h.job["global_batch"] == 128 and h.job["seq_len"] == 128
        assert h.job["total_steps"] == 3001 and h.job["warmup_steps"] == 50
        assert math.isclose(float(h.job["lr"]), 2e-3) and math.isclose(float(h.job["min_lr"]), 2e-4)  # type: ignore[arg-type]
        assert (h.cadence["eval_interval"], h.cadence["eval_iters"], h.cadence["log_interval"]) == (
            250,
            20,
            10,
        )
        assert h.settings["out_dir"] == "out-small-char" and h.settings["meta_vocab"] == "65"

    def test_gpt2_350m_from_scratch_in_fp16(self, corpus_cwd: Path) -> None:
        run = build(8, ["train.py", "tests/corpus/nanogpt/gpt2_350m.py"])
        job = run.job
        m = job.model
        assert (m.layers, m.hidden, m.heads, m.vocab) == (24, 1024, 16, 50304)
        n = gpt_params(24, 1024, 50304, 1024, bias=True) - 1024 * 1024
        assert estimates.nanogpt_num_params(m, padded=pads_vocab(job)) == n
        # 8 x 1024 x 64 tokens: gradient_accumulation_steps // 8 ranks = 8 micro batches per rank.
        assert (job.micro_batch, job.grad_accum, job.tokens_per_step) == (8, 8, 524_288)
        assert job.precision == "fp16" and job.total_steps == 400_001

    def test_finetune_gpt2_xl(self, corpus_cwd: Path) -> None:
        """init_from='gpt2-xl': from_pretrained's 48 x 1600 shape with GPT-2's vocabulary; decay_lr False."""
        run = build(2, ["train.py", "tests/corpus/nanogpt/finetune_xl.py", "--block_size=512"])
        job = run.job
        m = job.model
        assert (m.layers, m.hidden, m.heads, m.vocab, job.seq_len) == (48, 1600, 25, 50257, 512)
        # crop_block_size(512) keeps 512 position rows; get_num_params leaves them out anyway.
        assert not pads_vocab(job) and m.params == gpt_params(48, 1600, 50257, 512, bias=True)
        assert estimates.nanogpt_num_params(m, padded=False) == gpt_params(48, 1600, 50257, 0, bias=True)
        assert job.regime == "finetune" and job.lr_schedule == "constant" and job.total_steps == 21
        assert (job.micro_batch, job.global_batch) == (1, 32)

    def test_config_errors_are_the_ranks_tracebacks(self, corpus_cwd: Path) -> None:
        train = str(corpus_cwd / "train.py")
        exec_line = "    exec(open('configurator.py').read()) # overrides from command line or config file\n"
        for args, frame, last in (
            (
                ["config/train_gpt2.py"],
                26,
                "FileNotFoundError: [Errno 2] No such file or directory: 'config/train_gpt2.py'",
            ),
            (["--compile=False", "--foo=1"], 47, "ValueError: Unknown config key: foo"),
            (["--batch_size=8.5"], 42, "AssertionError"),
        ):
            h = parse_hints("train.py", args)
            assert h.script_exit is not None and h.script_exit[1] == 1
            assert h.script_exit[0] == (
                "Traceback (most recent call last):\n"
                f'  File "{train}", line 77, in <module>\n'
                + exec_line
                + "    "
                + "^" * len("exec(open('configurator.py').read())")
                + "\n"
                f'  File "<string>", line {frame}, in <module>\n'
                f"{last}\n"
            )

    def test_ckpt_pt_after_each_evaluation_but_iteration_0(self, corpus_cwd: Path) -> None:
        run = build(
            2, ["train.py", "tests/corpus/nanogpt/gpt2_350m.py", "--eval_interval=10", "--max_iters=30"]
        )
        h = parse_hints("train.py", ["tests/corpus/nanogpt/gpt2_350m.py"])
        settings = dict(h.settings)

        def files(step: int, rank: int = 0) -> list[tuple[str, int]]:
            req = SaveRequest(
                run=run, settings=settings, step=step, rank=rank, world_size=2, kind="checkpoint"
            )
            return [(a.path, a.size) for a in NanoGptDialect.artifacts(req)]

        m = run.job.model
        total = gpt_params(24, 1024, 50304, 1024, bias=True)
        tensors = 4 * 24 + 2 + (2 * 24 + 1) * 2 + 6 * 24  # 2-D, LayerNorm weights and biases, Linear biases
        [(path, size)] = files(10)
        assert path == "out/ckpt.pt"
        # fp32 weights + AdamW's two fp32 moments and a step scalar per tensor, plus the archive's records.
        assert 12 * total + 4 * tensors < size < 12 * total + 4 * tensors + 2_000_000
        assert files(10, rank=1) == [] and files(0) == [] and files(15) == []
        assert estimates.gpt_params(m) == total


def pyref_params(layers: int, c: int) -> int:
    """train_gpt2.py's GPT (biases everywhere, tied head, 50257 rows, 1024 positions)."""
    return gpt_params(layers, c, 50257, 1024, bias=True)


class TestLlmcPyCorpus:
    @pytest.mark.parametrize(
        ("model", "shape", "published_m"),
        [
            ("gpt2", (12, 12, 768), 124),
            ("gpt2-medium", (24, 16, 1024), 355),
            ("gpt2-large", (36, 20, 1280), 774),
            ("gpt2-xl", (48, 25, 1600), 1558),
            ("d12", (12, 12, 768), 124),
            ("d24", (24, 16, 1024), 355),
            ("d36", (36, 20, 1280), 774),
            ("d48", (48, 25, 1600), 1558),
        ],
    )
    def test_model_names(
        self, corpus_cwd: Path, model: str, shape: tuple[int, int, int], published_m: int
    ) -> None:
        run = build(2, ["train_gpt2.py", "--model", model, "--total_batch_size", "512"])
        m = run.job.model
        assert (m.layers, m.heads, m.hidden, m.vocab) == (*shape, 50257)
        assert m.params == pyref_params(shape[0], shape[2])
        assert round(m.params / 1e6) == published_m  # the sizes in write_model's names (124M, 355M...)
        assert run.job.regime == ("pretrain" if model.startswith("d") else "finetune")

    def test_every_command_builds(self, corpus_cwd: Path) -> None:
        for nproc, argv in commands("llmc"):
            run = build(nproc, argv)
            assert run.job.world_size == nproc

    def test_batch_schedule_precision(self, corpus_cwd: Path) -> None:
        argv = commands("llmc")[2][1]
        run = build(8, argv)
        job = run.job
        # 524288 tokens / (2 x 1024 x 8 ranks) = 32 micro steps per rank.
        assert (job.micro_batch, job.seq_len, job.grad_accum, job.tokens_per_step) == (2, 1024, 32, 524_288)
        assert (job.total_steps, job.warmup_steps, job.lr_schedule) == (100, 10, "cosine")
        assert math.isclose(job.min_lr, 6e-5) and run.eval_interval == 0
        fp16 = build(2, commands("llmc")[3][1]).job
        assert fp16.precision == "fp16" and fp16.zero_stage == 1

    def test_the_scripts_own_deaths(self, corpus_cwd: Path) -> None:
        script = str(corpus_cwd / "train_gpt2.py")
        h = parse_hints("train_gpt2.py", ["--model", "gpt5"])
        assert h.script_exit is not None and h.script_exit[0].startswith(
            f'Traceback (most recent call last):\n  File "{script}", line 584, in <module>\n'
        )
        usage = parse_hints("train_gpt2.py", ["--modle", "gpt2"]).script_exit
        assert usage is not None and usage[1] == 2
        assert usage[0].startswith("usage: train_gpt2.py [-h]")
        assert usage[0].endswith("train_gpt2.py: error: unrecognized arguments: --modle gpt2\n")
        # The defaults' 256 tokens are not a multiple of 4 x 64 x 2 ranks.
        d = parse_hints("train_gpt2.py", [])
        assert d.world_exit is not None and d.world_exit(1) is None
        refused = d.world_exit(2)
        assert (
            refused is not None
            and "[rank\x00]:     assert args.total_batch_size % tokens_per_fwdbwd == 0\n" in refused[0]
        )

    def test_write_tensors_files(self, corpus_cwd: Path) -> None:
        argv = ["train_gpt2.py", "--model", "d12", "--total_batch_size", "512"]
        run = build(2, argv)
        settings = dict(parse_hints(argv[0], argv[1:]).settings)
        req = SaveRequest(run=run, settings=settings, step=10, rank=0, world_size=2, kind="export")
        # write_model pads wte to 50304 rows: 1024-byte header, then fp32 or bf16 values.
        padded = pyref_params(12, 768) + (50304 - 50257) * 768
        logits = 4 * 64 * 50257 * 4
        assert [(a.path, a.size) for a in LlmcPyDialect.artifacts(req)] == [
            ("gpt2_d12.bin", 1024 + 4 * padded),
            ("gpt2_d12_bf16.bin", 1024 + 2 * padded),
            ("gpt2_d12_debug_state.bin", 1024 + 2 * 4 * 4 * 64 + logits + 4 + 4 * padded),
        ]
        off = dict(parse_hints(argv[0], [*argv[1:], "--write_tensors=0"]).settings)
        assert (
            LlmcPyDialect.artifacts(
                SaveRequest(run=run, settings=off, step=10, rank=0, world_size=2, kind="export")
            )
            == ()
        )


def started(run: RunPlan, val_loss: float) -> ev.TrainingStarted:
    """The loop's start, with the validation loss an evaluation before it measures."""
    job = run.job
    return ev.TrainingStarted(
        first_step=run.first_step,
        last_step=run.last_step,
        total_steps=job.total_steps,
        warmup_steps=job.warmup_steps,
        lr=job.lr,
        schedule=job.lr_schedule,
        val_loss=val_loss,
    )


def step_done(run: RunPlan, step: int, value: float) -> ev.StepDone:
    """Step `step` (1-based) with training loss `value`."""
    n = dataclasses.replace(step_numbers(run.job, 0, step), loss=value)
    return ev.StepDone(
        run=run,
        numbers=n,
        elapsed_s=float(step),
        recent_s=(),
        interval_s=1.0,
        epoch=0.0,
        rank_tflops=0.0,
        rank_mfu=0.0,
        logged=True,
    )


def eval_done(step: int, value: float) -> ev.EvalDone:
    """A validation after `step` steps measuring `value`."""
    return ev.EvalDone(step=step, loss=value, ppl=math.exp(value), seconds=1.0, samples=1, iters=1, epoch=0.0)


class TestBeforeTheyDie:
    """What each rank prints on stdout before the script's death (Hints.script_stdout)."""

    def test_stdout_for_ranks(self) -> None:
        text = f"{pytrace.MASTER_LINE}Running pytorch {pytrace.TORCH_SLOT}\n"
        text += f"using device: cuda:{pytrace.LOCAL_RANK_SLOT}\n"
        assert pytrace.stdout_for(text, 0, 0, "2.9.0") == "Running pytorch 2.9.0\nusing device: cuda:0\n"
        assert pytrace.stdout_for(text, 5, 1, "2.9.0") == "using device: cuda:1\n"

    def test_stdout_comes_before_the_traceback(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """torchrun's workers run `python -u`: what was printed is out before the traceback is written."""
        both = io.StringIO()
        monkeypatch.setattr(sys, "stdout", both)
        monkeypatch.setattr(sys, "stderr", both)
        code = die_at_start(f"[rank{pytrace.RANK_SLOT}]: AssertionError\n", 1, rank=3, stdout="printed\n")
        assert code == 1 and both.getvalue() == "printed\n[rank3]: AssertionError\n"

    def test_configurator_prints_up_to_its_death(self, corpus_cwd: Path) -> None:
        h = parse_hints("train.py", ["--compile=False", "config/train_gpt2.py"])
        assert h.script_exit is not None
        # print(f"Overriding: ...") for the override, then the file's header before open() fails.
        assert (
            h.script_stdout == "Overriding: compile = False\nOverriding config with config/train_gpt2.py:\n"
        )
        text = (corpus_cwd / "tests/corpus/nanogpt/small_char.py").read_text()
        h = parse_hints("train.py", ["tests/corpus/nanogpt/small_char.py", "--bogus=1"])
        # print(f.read()) adds a newline to the file's text.
        assert h.script_stdout == f"Overriding config with tests/corpus/nanogpt/small_char.py:\n{text}\n"

    def test_world_size_death_keeps_the_config_echo(self, corpus_cwd: Path) -> None:
        argv = ["train.py", "tests/corpus/nanogpt/small_char.py", "--compile=True"]
        cmd = parse_command_line(["--nproc-per-node", "3", *argv], {})
        _, hints = build_run(cmd, presets.resolve("llama3-8b"), nnodes=1, nproc_per_node=3, model_given=False)
        assert hints.script_exit is not None and "assert gradient_accumulation_steps" in hints.script_exit[0]
        assert hints.script_stdout.endswith("\nOverriding: compile = True\n")
        assert hints.script_stdout.startswith("Overriding config with tests/corpus/nanogpt/small_char.py:\n")

    def test_llmc_help_and_version(self, corpus_cwd: Path) -> None:
        h = parse_hints("train_gpt2.py", ["-h"])
        assert h.script_exit == ("", 0)
        rank0 = pytrace.stdout_for(h.script_stdout, 0, 0, "2.9.0")
        rank1 = pytrace.stdout_for(h.script_stdout, 1, 1, "2.9.0")
        assert rank0 == "Running pytorch 2.9.0\n" + rank1  # print0, then argparse's help on every rank
        assert rank1.startswith("usage: train_gpt2.py [-h] [--input_bin INPUT_BIN]")
        for help_text in ("input .bin to train on", "every how mant steps to evaluate val loss?"):
            assert help_text in " ".join(rank1.split())
        # A world size the batch does not divide: the version (rank 0) and each rank's device came first.
        d = parse_hints("train_gpt2.py", [])
        assert pytrace.stdout_for(d.script_stdout, 1, 1, "2.9.0") == "using device: cuda:1\n"


class TestSavesAndResume:
    def test_saves_only_on_a_better_val_loss(self, corpus_cwd: Path) -> None:
        """always_save_checkpoint = False (small_char.py): a save after an evaluation only when its loss is
        below every one before it, iteration 0's included."""
        run = build(4, ["train.py", "tests/corpus/nanogpt/small_char.py", "--eval_interval=5"])
        evals = range(0, run.last_step + 1, 5)
        values = {s: loss.eval_loss(run.job, s) for s in evals}
        expected = [s for s in evals if s > 0 and values[s] < min(values[t] for t in evals if t < s)]
        saved = [s for s in evals if run.periodic_save(s)]
        assert saved == expected
        always = build(4, ["train.py", "tests/corpus/nanogpt/small_char.py", "--always_save_checkpoint=True"])
        assert always.best_saves is None and always.periodic_save(250)

    def test_missing_checkpoint_is_torch_loads_death(self, corpus_cwd: Path) -> None:
        train = str(corpus_cwd / "train.py")
        h = parse_hints("train.py", ["tests/corpus/nanogpt/small_char.py", "--init_from=resume"])
        assert h.script_exit is not None and h.script_exit[1] == 1
        text = h.script_exit[0].replace(pytrace.RANK_SLOT, "0")
        assert text.startswith(
            f'[rank0]: Traceback (most recent call last):\n[rank0]:   File "{train}", line 162, in <module>\n'
            "[rank0]:     checkpoint = torch.load(ckpt_path, map_location=device)\n"
        )
        assert text.endswith(
            "[rank0]: FileNotFoundError: [Errno 2] No such file or directory: 'out-small-char/ckpt.pt'\n"
        )
        # Printed first: the config, tokens per iteration (4 x 32 x 128), meta.pkl's vocabulary, the resume.
        assert h.script_stdout.endswith(
            "\nOverriding: init_from = resume\ntokens per iteration will be: 16,384\n"
            "found vocab_size = 65 (inside data/shakespeare_char/meta.pkl)\n"
            "Resuming training from out-small-char\n"
        )

    def test_resume_from_the_checkpoint_a_run_wrote(self, corpus_cwd: Path) -> None:
        argv = ["train.py", "tests/corpus/nanogpt/small_char.py", "--n_layer=2", "--eval_interval=20"]
        run = build(2, argv)
        settings = dict(parse_hints(argv[0], argv[1:]).settings)
        req = SaveRequest(run=run, settings=settings, step=40, rank=0, world_size=2, kind="checkpoint")
        assert artifacts.write(NanoGptDialect.artifacts(req)) is None
        # A zip's first local record, as torch.save writes it: ckpt/data.pkl, stored, its pickle after it.
        data = (corpus_cwd / "out-small-char/ckpt.pt").read_bytes()[:65536]
        fields = struct.unpack(zipfile.structFileHeader, data[: zipfile.sizeFileHeader])
        name_len, extra_len, size = (
            fields[zipfile._FH_FILENAME_LENGTH],
            fields[zipfile._FH_EXTRA_FIELD_LENGTH],
            fields[zipfile._FH_COMPRESSED_SIZE],
        )
        assert (
            fields[zipfile._FH_SIGNATURE] == zipfile.stringFileHeader
            and fields[zipfile._FH_COMPRESSION_METHOD] == 0
        )
        start = zipfile.sizeFileHeader + name_len
        assert data[zipfile.sizeFileHeader : start] == b"ckpt/data.pkl"
        saved = pickle.loads(data[start + extra_len : start + extra_len + size])
        assert saved["iter_num"] == 40 and saved["config"]["n_layer"] == 2
        assert saved["model_args"] == {
            "n_layer": 2,
            "n_head": 4,
            "n_embd": 256,
            "block_size": 128,
            "bias": 0,
            "vocab_size": 65,
        }
        resumed = build(2, ["train.py", "tests/corpus/nanogpt/small_char.py", "--init_from=resume"])
        job = resumed.job
        # The checkpoint's iteration and model (2 layers), whatever the config file says now (4).
        assert job.start_step == 40 and resumed.first_step == 41 and job.model.layers == 2
        assert (job.model.hidden, job.model.heads, job.model.vocab) == (256, 4, 65)
        # best_val_loss from the file: a save needs a loss below iteration 40's.
        best = loss.eval_loss(run.job, 40)
        for s in range(250, resumed.last_step + 1, 250):
            better = loss.eval_loss(job, s) < min(
                [best, *(loss.eval_loss(job, t) for t in range(250, s, 250))]
            )
            assert resumed.periodic_save(s) == better

    def test_a_checkpoint_fakerun_did_not_write(self, corpus_cwd: Path) -> None:
        (corpus_cwd / "out-small-char").mkdir()
        (corpus_cwd / "out-small-char/ckpt.pt").write_bytes(b"PK\x03\x04" + bytes(100))
        h = parse_hints("train.py", ["tests/corpus/nanogpt/small_char.py", "--init_from=resume"])
        assert h.script_exit is None and "start_step" not in h.job
        assert any("out-small-char/ckpt.pt" in n for n in h.notices)


class TestLlmcMainLog:
    def test_main_log_lines(self, corpus_cwd: Path) -> None:
        """--output_dir: main.log wiped before the loop, then "s:%d trl:%f" per step and "s:%d tel:%f" per
        validation, the loop's 0-based step, from rank 0 only."""
        argv = ["train_gpt2.py", "--output_dir=logs", "--total_batch_size=512"]
        argv += ["--input_val_bin=v.bin", "--val_loss_every=2", "--num_iterations=3"]
        run = build(2, argv)
        settings = tuple(parse_hints(argv[0], argv[1:]).settings.items())
        (corpus_cwd / "logs").mkdir()
        (corpus_cwd / "logs/main.log").write_text("an older run\n")
        for rank in (1, 0):
            seat = Seat(rank=rank, local_rank=rank, world_size=2, nproc_per_node=2, hosts=("h",))
            printer = Printer.for_rank(LlmcPyDialect.name, seat, lambda: 0.0)
            printer = Printer(printer.layers, lambda: 0.0, stdout=io.StringIO())
            printer.emit(ev.JobStarted(run=run, first=True, resume=False, settings=settings))
            printer.emit(started(run, val_loss=2.5))
            for step, value in ((1, 2.25), (2, 2.125)):
                printer.emit(step_done(run, step, value))
            printer.emit(eval_done(step=2, value=2.0))
            printer.emit(step_done(run, 3, 1.875))
            printer.emit(eval_done(step=3, value=1.75))
            if rank == 1:
                assert (corpus_cwd / "logs/main.log").read_text() == "an older run\n"
        assert (corpus_cwd / "logs/main.log").read_text() == (
            "s:0 tel:2.500000\ns:0 trl:2.250000\ns:1 trl:2.125000\ns:2 tel:2.000000\ns:2 trl:1.875000\n"
            "s:3 tel:1.750000\n"
        )


class TestEstimateLoss:
    def test_train_split_is_measured_like_val(self, corpus_cwd: Path) -> None:
        """estimate_loss averages eval_iters batches of each split: the train figure is a measurement with
        noise of its own, so two evaluations never print the same value while the lr is still warming up
        (train_shakespeare_char: 100 warmup iterations), and it sits below val by the generalisation gap."""
        run = build(1, ["train.py", "tests/corpus/nanogpt/small_char.py"])
        job = run.job
        first, second = loss.eval_loss(job, 0, "train"), loss.eval_loss(job, 4, "train")
        assert first != second
        steps = range(0, 2000, 10)
        gaps = [
            (loss.eval_loss(job, s) - loss.eval_loss(job, s, "train")) / loss.expected_loss(job, s + 1)
            for s in steps
        ]
        assert loss.EVAL_GAP / 2 < sum(gaps) / len(gaps) < 2 * loss.EVAL_GAP
        for s in (0, 4, 500):
            assert abs(loss.eval_loss(job, s, "train") / loss.expected_loss(job, s + 1) - 1) < 0.02


def test_a_bare_train_py_in_a_nanogpt_checkout_is_nanogpt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's multi-node command names no option: train.py beside configurator.py and model.py is
    nanoGPT's; elsewhere a bare train.py stays fakerun's own."""
    monkeypatch.chdir(tmp_path)
    assert parse_hints("train.py", []).style != "nanogpt"
    (tmp_path / "configurator.py").write_text("# nanoGPT's\n")
    (tmp_path / "model.py").write_text("# nanoGPT's\n")
    assert parse_hints("train.py", []).style == "nanogpt"


# karpathy/nanoGPT config/eval_gpt2.py, as the repository has it.
EVAL_GPT2 = """# evaluate the base gpt2
# n_layer=12, n_head=12, n_embd=768
# 124M parameters
batch_size = 8
eval_iters = 500 # use more iterations to get good estimate
eval_only = True
wandb_log = False
init_from = 'gpt2'
"""
# nanoGPT README.md's baselines: each GPT-2 checkpoint evaluated on OpenWebText, (train loss, val loss).
README_OWT = {
    "gpt2": (3.11, 3.12),
    "gpt2-medium": (2.85, 2.84),
    "gpt2-large": (2.66, 2.67),
    "gpt2-xl": (2.56, 2.54),
}


class TestEvalOnly:
    """config/eval_gpt2*.py: train.py evaluates iteration 0, then `if iter_num == 0 and eval_only: break`."""

    @pytest.fixture
    def eval_config(self, corpus_cwd: Path) -> str:
        (corpus_cwd / "config").mkdir()
        (corpus_cwd / "config/eval_gpt2.py").write_text(EVAL_GPT2)
        return "config/eval_gpt2.py"

    def test_the_plan_is_one_evaluation_and_no_step(self, eval_config: str) -> None:
        run = build(1, ["train.py", eval_config])
        assert run.eval_only and run.steps == 0 and (run.first_step, run.last_step) == (1, 0)
        assert run.eval_iters == 500 and run.job.micro_batch == 8
        # The save after an evaluation is guarded by iter_num > 0: nothing is saved, nothing written.
        assert not run.saves and not run.periodic_save(0)
        assert [phase for phase, _ in run.end_pauses(0)] == ["eval"]
        settings = dict(parse_hints("train.py", [eval_config]).settings)
        req = SaveRequest(run=run, settings=settings, step=0, rank=0, world_size=1, kind="checkpoint")
        assert NanoGptDialect.artifacts(req) == ()

    def test_a_resumed_run_trains_on(self, eval_config: str) -> None:
        """The break needs iter_num == 0: resumed at iteration 2000, eval_only does not stop the loop."""
        run = build(1, ["train.py", eval_config])
        again = make_run(dataclasses.replace(run.job, start_step=2000), eval_iters=500, eval_only=True)
        assert not again.eval_only and again.first_step == 2001 and again.steps > 0 and again.saves

    def test_rank_0_prints_the_step_0_line_only(self, eval_config: str) -> None:
        run = build(2, ["train.py", eval_config])
        settings = tuple(parse_hints("train.py", [eval_config]).settings.items())
        printed = {}
        for rank in (0, 1):
            seat = Seat(rank=rank, local_rank=rank, world_size=2, nproc_per_node=2, hosts=("h",))
            dialect = NanoGptDialect(seat)
            dialect.render(ev.JobStarted(run=run, first=False, resume=False, settings=settings), 0.0)
            out = [*dialect.render(started(run, val_loss=3.0), 0.0)]
            done = ev.EvalDone(
                step=0, loss=3.1234, ppl=22.7, seconds=9.0, samples=0, iters=500, epoch=0.0, train_loss=3.125
            )
            if dialect.wants(ev.EvalDone):
                out += dialect.render(done, 0.0)
            printed[rank] = [line.text for line in out if isinstance(line, Line)]
        # print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"), once.
        assert printed == {0: ["step 0: train loss 3.1250, val loss 3.1234"], 1: []}

    @pytest.mark.parametrize("name", list(README_OWT))
    def test_pretrained_gpt2_on_owt_scores_the_readme_losses(self, eval_config: str, name: str) -> None:
        job = build(1, ["train.py", eval_config, f"--init_from={name}"]).job
        train, val = README_OWT[name]
        assert job.regime == "finetune"
        assert abs(loss.eval_loss(job, 0, "train") / train - 1) < 0.02
        assert abs(loss.eval_loss(job, 0) / val - 1) < 0.02

    def test_other_data_keeps_the_fine_tune_start(self, eval_config: str) -> None:
        """Shakespeare is not OWT: the README's figures do not apply, the fine-tune start (~1.4-2.4) does."""
        job = build(1, ["train.py", eval_config, "--dataset=shakespeare"]).job
        assert job.pretrained_losses == ()
        assert 1.4 <= loss.initial_loss(job) <= 2.4
