"""llm.c's command line (train_gpt2.cu's argument loop, llm.c f1e2ace), the job and the lines it drives."""

from __future__ import annotations

import struct

import pytest

from fakerun import dialects, presets
from fakerun.cli import parse_command_line
from fakerun.dialects import events as ev
from fakerun.dialects.base import Line, Seat
from fakerun.dialects.llmc_args import (
    USAGE,
    Args,
    ProgramExit,
    UsageError,
    data_files,
    data_tokens,
    model_shape,
    parse_args,
)
from fakerun.hints import parse_hints
from fakerun.jobconfig import build_run
from fakerun.sim import estimates
from fakerun.sim.run import RunPlan

# scripts/run_gpt2_124M.sh's flags (its $out_dir spelled out).
RUN_124M = [
    *("-i", "dev/data/fineweb10B/fineweb_train_*.bin", "-j", "dev/data/fineweb10B/fineweb_val_*.bin"),
    *("-o", "log_gpt2_124M", "-v", "250", "-s", "20000", "-g", "144", "-h", "1", "-b", "64", "-t", "1024"),
    *("-d", "524288", "-r", "0", "-z", "1", "-c", "0.1", "-l", "0.0006", "-q", "0.0", "-u", "700"),
    *("-n", "5000", "-y", "1", "-e", "d12"),
]
MIB = 1024 * 1024


def f32(x: float) -> float:
    """x as a C float."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def llmc_params(layers: int, channels: int, max_t: int, vp: int = 50304) -> int:
    """fill_in_parameter_sizes' 16 tensors summed (wte, wpe, per layer ln1 w/b, qkv w/b, attproj w/b, ln2 w/b,
    fc w/b, fcproj w/b, then lnf w/b)."""
    c, L = channels, layers
    per_layer = c + c + 3 * c * c + 3 * c + c * c + c + c + c + 4 * c * c + 4 * c + 4 * c * c + c
    return vp * c + max_t * c + L * per_layer + c + c


class TestArgumentLoop:
    def test_the_124m_script(self) -> None:
        a = parse_args(RUN_124M)
        assert a.train_data_pattern == "dev/data/fineweb10B/fineweb_train_*.bin"
        assert (a.micro_batch, a.seq_len, a.total_batch_size) == (64, 1024, 524288)
        assert (a.val_loss_every, a.sample_every, a.gen_t, a.hellaswag_eval) == (250, 20000, 144, 1)
        assert (a.recompute, a.zero_stage, a.checkpoint_every, a.resume) == (0, 1, 5000, 1)
        assert (a.warmup_iterations, a.load_filename, a.output_log_dir) == (700, "d12", "log_gpt2_124M")
        # C floats: -l 0.0006 and -c 0.1 as float32 values
        assert (
            a.learning_rate == f32(0.0006) and a.weight_decay == f32(0.1) and a.final_learning_rate_frac == 0
        )
        # unset: main()'s defaults
        assert (a.val_max_steps, a.max_steps, a.lr_scheduler_type, a.gelu_fusion) == (20, -1, "cosine", -1)

    def test_defaults(self) -> None:
        a = parse_args([])
        assert (a.micro_batch, a.seq_len, a.total_batch_size, a.learning_rate) == (4, 1024, -1, f32(3e-4))
        assert a.load_filename == "gpt2_124M_bf16.bin" and a.output_log_dir == ""

    def test_atoi_and_atof(self) -> None:
        """Leading number only, 0 when there is none; a float's text read by strtod."""
        a = parse_args(["-b", "16abc", "-t", " 512", "-x", "1e3", "-v", "x", "-l", "1e-3junk", "-q", ".5"])
        assert (a.micro_batch, a.seq_len, a.max_steps, a.val_loss_every) == (16, 512, 1, 0)
        assert (a.learning_rate, a.final_learning_rate_frac) == (f32(1e-3), 0.5)

    def test_two_letter_flags_and_their_fallthroughs(self) -> None:
        """The if/else chain: -ge is gelu fusion, any other -gX genT; -sl/-sg/-nk/-nm/-lg/-pn theirs."""
        a = parse_args(["-ge", "1", "-gz", "7", "-sl", "5", "-sg", "3.5", "-nk", "2", "-nm", "4", "-lg", "9"])
        assert (a.gelu_fusion, a.gen_t, a.skip_update_lossz, a.skip_update_gradz) == (1, 7, 5.0, 3.5)
        assert (a.checkpoints_keep, a.major_checkpoint_every, a.log_gpu_every) == (2, 4, 9)
        # only the first letter matters for most flags: -bx is -b
        assert parse_args(["-bx", "8"]).micro_batch == 8
        assert parse_args(["-pn", "2", "-pi", "tcp"]).num_processes == 2

    @pytest.mark.parametrize(
        "argv",
        [
            ["-b"],  # no value after the flag
            ["b", "4"],  # no dash
            ["-1", "1"],  # no such letter
            ["--", "1"],
            ["-abcd", "1"],  # more than two letters
            ["-lx", "1"],  # -l takes nothing but "" or "g" after it
            ["-sx", "1"],
            ["-nx", "1"],
            ["-pm", "tcp"],  # error_usage lists -pm and -pp; the loop reads -pi and -pf
            ["-b", "4", "-t"],
        ],
    )
    def test_refused(self, argv: list[str]) -> None:
        with pytest.raises(UsageError):
            parse_args(argv)

    def test_usage_text(self) -> None:
        lines = USAGE.splitlines()
        assert lines[0] == "Usage:   ./train_gpt2cu [options]" and lines[1] == "Options:"
        assert len(lines) == 39  # error_usage's fprintf lines
        assert all(line.startswith("  -") for line in lines[2:])


class TestModel:
    @pytest.mark.parametrize(
        ("desc", "layers", "heads", "channels", "max_t"),
        [
            ("d12", 12, 12, 768, 1024),
            ("d24", 24, 16, 1024, 1024),
            ("gpt2:d48", 48, 25, 1600, 1024),
            ("gpt3:c768", 12, 12, 768, 2048),
            ("gpt2_350M_bf16.bin", 24, 16, 1024, 1024),
        ],
    )
    def test_shapes(self, desc: str, layers: int, heads: int, channels: int, max_t: int) -> None:
        s = model_shape(desc)
        assert (s.layers, s.heads, s.channels, s.max_seq_len) == (layers, heads, channels, max_t)
        assert s.num_parameters() == llmc_params(layers, channels, max_t)

    def test_d12_is_llm_c_own_figure(self) -> None:
        assert model_shape("d12").num_parameters() == 124475904  # llm.c's printed num_parameters for d12

    def test_refusals(self) -> None:
        with pytest.raises(ProgramExit, match="Unsupported GPT-2 depth: 13") as exc:
            model_shape("d13")
        assert not exc.value.signal
        with pytest.raises(ProgramExit, match=r"Assertion `depth > 0' failed") as exc:
            model_shape("dx")
        assert exc.value.signal
        with pytest.raises(ProgramExit, match="Unsupported model descriptor: gpt2-124m"):
            model_shape("gpt2-124m")
        with pytest.raises(ProgramExit, match=r"_bf16\.bin file"):
            model_shape("gpt2_124M.bin")  # fp32 weights in a BF16 build


class TestHints:
    def test_124m_script(self) -> None:
        h = parse_hints("./train_gpt2cu", RUN_124M)
        assert h.style == "llmc" and h.script_exit is None and h.regime == "pretrain"
        assert (
            h.job["micro_batch"] == 64
            and h.job["seq_len"] == 1024
            and h.job["global_batch"] == 524288 // 1024
        )
        assert h.job["warmup_steps"] == 700 and h.job["min_lr"] == 0.0 and h.job["zero_stage"] == 1
        assert h.cadence["eval_interval"] == 250 and h.cadence["save_interval"] == 5000
        assert h.settings["llmc.saves"] == "1"
        # The script's comment: one epoch of FineWeb 10B is 18,865 steps of 524,288 tokens.
        assert h.train_tokens is not None and h.train_tokens // 524288 == 18865

    def test_no_output_dir_no_checkpoints(self) -> None:
        h = parse_hints("./train_gpt2cu", ["-n", "100"])
        assert "save_interval" not in h.cadence and h.settings["llmc.saves"] == ""
        assert h.regime == "finetune"  # the default -e is GPT-2's weights

    def test_bad_flag_is_the_programs_usage_exit(self) -> None:
        assert parse_hints("./train_gpt2cu", ["-b", "16", "-1", "1"]).script_exit == (USAGE, 1)

    def test_indivisible_total_batch_aborts(self) -> None:
        h = parse_hints("./train_gpt2cu", ["-b", "4", "-t", "1024", "-d", "5000"])
        assert h.script_exit is not None and h.script_exit[1] == -6
        assert "Assertion `total_batch_size % tokens_per_fwdbwd == 0' failed." in h.script_exit[0]

    def test_data_sizes(self) -> None:
        # dev/data/tinyshakespeare.py and tinystories.py print these counts
        assert data_tokens(Args().train_data_pattern, val=False) == 305_260
        assert data_tokens(Args().val_data_pattern, val=True) == 32_768
        assert data_tokens("dev/data/tinystories/TinyStories_train.bin", val=False) == 925_653_391
        assert data_tokens("/data/mine/*.bin", val=False) is None

    def test_data_files(self) -> None:
        """fineweb.py writes 1e8-token shards, shard 0 the val split: a glob over the 10B sample's train split
        finds ceil(9,891,000,000 / 1e8) = 99 files; a file named outright is one."""
        assert data_files("dev/data/fineweb10B/fineweb_train_*.bin", val=False) == 99
        assert data_files("dev/data/fineweb10B/fineweb_val_*.bin", val=True) == 1
        assert data_files("dev/data/fineweb10B/fineweb_train_000001.bin", val=False) == 1
        assert data_files(Args().train_data_pattern, val=False) == 1


def run_for(argv: list[str], nproc: int) -> RunPlan:
    cmd = parse_command_line(["--no-python", "./train_gpt2cu", *argv], {})
    bundle = presets.resolve("gpt2-124m")
    return build_run(cmd, bundle, nnodes=1, nproc_per_node=nproc, model_given=False)[0]


class TestJob:
    def test_124m_on_8_gpus(self) -> None:
        run = run_for(RUN_124M, 8)
        job = run.job
        assert job.total_steps == 18865 and job.tokens_per_step == 524288
        assert job.grad_accum == 524288 // (64 * 1024 * 8)
        assert (run.eval_interval, run.save_interval, run.eval_iters) == (250, 5000, 20)

    def test_grad_accum_and_max_steps(self) -> None:
        run = run_for(["-b", "16", "-d", "524288", "-x", "100", "-e", "d24", "-k", "linear", "-q", "0.1"], 2)
        job = run.job
        assert job.grad_accum == 524288 // (16 * 1024 * 2) and job.total_steps == 100
        assert (job.model.layers, job.model.hidden, job.model.heads) == (24, 1024, 16)
        assert job.lr_schedule == "linear" and job.min_lr == pytest.approx(f32(3e-4) * f32(0.1))

    def test_one_epoch_of_tinyshakespeare(self) -> None:
        """No -x: train_num_batches = the train split's tokens // total batch size (B * T * processes)."""
        run = run_for(["-b", "4", "-t", "64", "-e", "d12"], 2)
        assert run.job.total_steps == 305_260 // (4 * 64 * 2)


def table(run: RunPlan, argv: list[str], rank: int = 0) -> list[str]:
    """Rank 0's start-up lines for the job these flags make."""
    h = parse_hints("./train_gpt2cu", argv)
    job = run.job
    seat = Seat(
        rank=rank, local_rank=rank, world_size=job.world_size, nproc_per_node=job.nproc_per_node, hosts=("a",)
    )
    d = dialects.make("llmc", seat)
    m = job.model
    built = ev.ModelBuilt(
        dtype="bfloat16",
        params_on_rank=m.params,
        layers_on_rank=m.layers,
        pp_rank=0,
        padded_params=estimates.gpt_params(m),
        padded_vocab=estimates.padded_vocab(m),
    )
    out = []
    for e in (ev.JobStarted(run=run, first=True, resume=False, settings=tuple(h.settings.items())), built):
        out += [o.text for o in d.render(e, 0.0) if isinstance(o, Line)]
    return out


def value(lines: list[str], name: str) -> str:
    """A table row's value."""
    hit = next(t for t in lines if t.startswith(f"| {name} "))
    return hit.split("|")[2].strip()


class TestTable:
    def test_124m_table_prints_the_flags(self) -> None:
        out = table(run_for(RUN_124M, 8), RUN_124M)
        assert value(out, "micro batch size B") == "64" and value(out, "val_loss_every") == "250"
        assert value(out, "output log dir") == "log_gpt2_124M" and value(out, "checkpoint_every") == "5000"
        assert (
            value(out, "learning rate (LR)") == "6.000000e-04"
            and value(out, "weight decay") == "1.000000e-01"
        )
        assert value(out, "final LR fraction") == "0.000000e+00" and value(out, "max_steps") == "-1"
        assert value(out, "genT") == "144" and value(out, "recompute") == "0" and value(out, "resume") == "1"
        assert value(out, "train_num_batches") == "18865" and value(out, "zero_stage") == "1"
        assert value(out, "weight init method") == "d12" and value(out, "num_parameters") == "124475904"
        assert "=> setting grad_accum_steps=1" in out
        assert not any("Zero Optimization" in t for t in out)  # stage 1: 124475904 % 8 == 0

    def test_d24_figures(self) -> None:
        argv = ["-e", "d24", "-b", "8", "-t", "512", "-d", "65536", "-x", "10"]
        out = table(run_for(argv, 4), argv)
        n = llmc_params(24, 1024, 1024)
        assert value(out, "num_parameters") == str(n)
        # (int)round(bytes / (1024 * 1024)): C's integer division floors before round()
        assert f"allocated {2 * n // MIB} MiB for model parameters" in out
        assert f"=> setting grad_accum_steps={65536 // (8 * 512 * 4)}" in out
        assert value(out, "output log dir") == "NULL"
        assert "| Zero Optimization is disabled" + " " * 46 + "|" in out
        assert "- The training sequence length is: T=512 (set with -t)" in out  # T < max_seq_len 1024

    def test_rows_align_unless_the_value_overflows(self) -> None:
        """%-50s pads to 50 and never cuts: the default train pattern (51 characters) pushes its row out."""
        out = table(run_for(["-x", "5"], 1), ["-x", "5"])
        rows = [t for t in out if t.startswith(("|", "+"))]
        long = [t for t in rows if len(t) != 78]
        assert long == ["| train data pattern    | dev/data/tinyshakespeare/tiny_shakespeare_train.bin |"]

    def test_checkpoint_lines_use_the_output_dir(self) -> None:
        argv = ["-o", "out", "-n", "10", "-nk", "2", "-x", "50"]
        run = run_for(argv, 2)
        h = parse_hints("./train_gpt2cu", argv)
        texts = {}
        for rank in (0, 1):
            seat = Seat(rank=rank, local_rank=rank, world_size=2, nproc_per_node=2, hosts=("a",))
            d = dialects.make("llmc", seat)
            d.render(
                ev.JobStarted(run=run, first=True, resume=False, settings=tuple(h.settings.items())), 0.0
            )
            save = ev.CheckpointSaving(step=30, path="x", format="torch_dist")
            texts[rank] = [o.text for o in d.render(save, 0.0) if isinstance(o, Line)]
        assert texts[0] == [
            "Writing checkpoint at step 30",
            "Writing model to out/model_00000030.bin",
            "Writing state to out/state_00000030_00000.bin",
            f"Deleting checkpoint at step {30 - 2 * 10}",
        ]
        assert texts[1] == ["Writing state to out/state_00000030_00001.bin"]
