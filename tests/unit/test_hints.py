"""Hints from training-script arguments: HF Trainer, Megatron-LM and torchtitan spellings, one-line errors."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakerun import presets
from fakerun.cli import parse_command_line
from fakerun.dialects import DEFAULT
from fakerun.hints import HintError, Hints, apply_arch, parse_hints
from fakerun.jobconfig import JobConfigError, build_run
from fakerun.sim.job import make_job
from fakerun.sim.run import RunPlan
from fakerun.sim.schedule import SCHEDULES


def hint(h: Hints, where: str, key: str) -> object:
    """One hint: a job or arch override, or a top-level field of Hints."""
    if where == "job":
        return h.job.get(key)
    if where == "arch":
        return h.arch.get(key)
    return getattr(h, key)


def other_spelling(option: str) -> str:
    """The option as the other framework would spell it: dashes for underscores or the reverse."""
    name = option[2:]
    return "--" + (name.replace("_", "-") if "_" in name else name.replace("-", "_"))


# (option as its framework spells it, value, where the hint lands, its key, expected value)
SIMPLE = [
    # Hugging Face Trainer
    ("--per_device_train_batch_size", "4", "job", "micro_batch", 4),
    ("--gradient_accumulation_steps", "8", "job", "grad_accum", 8),
    ("--learning_rate", "2e-5", "job", "lr", 2e-5),
    ("--max_steps", "500", "job", "total_steps", 500),
    ("--num_train_epochs", "2.5", "top", "epochs", 2.5),
    ("--seq_length", "2048", "job", "seq_len", 2048),
    ("--max_seq_length", "2048", "job", "seq_len", 2048),
    ("--model_max_length", "4096", "job", "seq_len", 4096),
    ("--block_size", "1024", "arch", "seq_len", 1024),
    ("--warmup_steps", "100", "job", "warmup_steps", 100),
    ("--warmup_ratio", "0.05", "top", "warmup_ratio", 0.05),
    ("--lr_scheduler_type", "cosine", "job", "lr_schedule", "cosine"),
    ("--lr_scheduler_type", "constant_with_warmup", "job", "lr_schedule", "constant"),
    ("--seed", "7", "top", "seed", 7),
    ("--model_name_or_path", "Qwen/Qwen2.5-7B", "top", "model_name", "Qwen/Qwen2.5-7B"),
    ("--fsdp", "full_shard auto_wrap", "job", "zero_stage", 3),
    ("--fsdp", "shard_grad_op", "job", "zero_stage", 2),
    # Megatron-LM
    ("--num-layers", "24", "arch", "layers", 24),
    ("--hidden-size", "2048", "arch", "hidden", 2048),
    ("--ffn-hidden-size", "5632", "arch", "ffn_hidden", 5632),
    ("--num-attention-heads", "16", "arch", "heads", 16),
    ("--max-position-embeddings", "4096", "arch", "max_position", 4096),
    ("--seq-length", "4096", "job", "seq_len", 4096),
    ("--vocab-size", "32000", "arch", "vocab", 32000),
    ("--padded-vocab-size", "32768", "arch", "vocab", 32768),
    ("--num-experts", "8", "arch", "experts", 8),
    ("--moe-router-topk", "2", "arch", "top_k", 2),
    ("--micro-batch-size", "2", "job", "micro_batch", 2),
    ("--global-batch-size", "1024", "job", "global_batch", 1024),
    ("--lr", "3e-4", "job", "lr", 3e-4),
    ("--min-lr", "3e-5", "job", "min_lr", 3e-5),
    ("--lr-warmup-iters", "2000", "job", "warmup_steps", 2000),
    ("--lr-warmup-fraction", "0.01", "top", "warmup_ratio", 0.01),
    ("--lr-decay-style", "linear", "job", "lr_schedule", "linear"),
    ("--lr-decay-style", "WSD", "job", "lr_schedule", "wsd"),
    ("--train-iters", "5000", "job", "total_steps", 5000),
    ("--tensor-model-parallel-size", "4", "job", "tp", 4),
    ("--pipeline-model-parallel-size", "2", "job", "pp", 2),
    ("--expert-model-parallel-size", "8", "job", "ep", 8),
    ("--recompute-granularity", "full", "job", "recompute", "full"),
    ("--recompute-granularity", "selective", "job", "recompute", "selective"),
    # torchtitan (dotted), current and older names
    ("--training.steps", "100", "job", "total_steps", 100),
    ("--training.local_batch_size", "4", "job", "micro_batch", 4),
    ("--training.batch_size", "4", "job", "micro_batch", 4),
    ("--training.global_batch_size", "256", "job", "global_batch", 256),
    ("--training.seq_len", "8192", "job", "seq_len", 8192),
    ("--training.seed", "3", "top", "seed", 3),
    ("--optimizer.lr", "1e-4", "job", "lr", 1e-4),
    ("--lr_scheduler.warmup_steps", "50", "job", "warmup_steps", 50),
    ("--lr_scheduler.decay_type", "cosine", "job", "wsd_style", "cosine"),
    ("--parallelism.tensor_parallel_degree", "2", "job", "tp", 2),
    ("--parallelism.pipeline_parallel_degree", "2", "job", "pp", 2),
    ("--parallelism.expert_parallel_degree", "4", "job", "ep", 4),
    ("--parallelism.data_parallel_shard_degree", "-1", "job", "zero_stage", 3),
    ("--parallelism.data_parallel_shard_degree", "1", "job", "zero_stage", 0),
    ("--activation_checkpoint.mode", "full", "job", "recompute", "full"),
    ("--activation_checkpoint.mode", "none", "job", "recompute", "none"),
]
SOURCE_KEY = {"model_name": "model"}
NUMERIC = [case for case in SIMPLE if isinstance(case[4], (int, float)) and case[3] != "zero_stage"]


class TestEachHint:
    """Each known option in its framework's spelling and the other one, spaced or with "="."""

    @pytest.mark.parametrize("equals", [False, True], ids=["space", "equals"])
    @pytest.mark.parametrize("respell", [False, True], ids=["own", "other"])
    @pytest.mark.parametrize(("option", "value", "where", "key", "expected"), SIMPLE)
    def test_option_sets_its_hint(
        self, option: str, value: str, where: str, key: str, expected: object, respell: bool, equals: bool
    ) -> None:
        """The hint gets the value, typed, and records the option as its source."""
        spelled = other_spelling(option) if respell else option
        args = [f"{spelled}={value}"] if equals else [spelled, value]
        h = parse_hints("train.py", args)
        assert hint(h, where, key) == expected
        assert h.sources[SOURCE_KEY.get(key, key)] == spelled

    @pytest.mark.parametrize(("option", "value", "where", "key", "expected"), NUMERIC)
    def test_last_occurrence_wins(
        self, option: str, value: str, where: str, key: str, expected: object
    ) -> None:
        """As with argparse, a repeated option takes its last value."""
        h = parse_hints("train.py", [option, "1" if value != "1" else "2", option, value])
        assert hint(h, where, key) == expected

    def test_every_schedule_maps_into_the_simulator(self) -> None:
        """Every framework schedule name becomes one of sim/schedule.py's SCHEDULES."""
        names = {
            "--lr_scheduler_type": "linear cosine cosine_with_restarts cosine_with_min_lr polynomial"
            " constant constant_with_warmup inverse_sqrt reduce_lr_on_plateau warmup_stable_decay",
            "--lr-decay-style": "cosine linear constant inverse-square-root WSD",
            "--lr_scheduler.decay_type": "linear sqrt cosine",
        }
        for option, values in names.items():
            for value in values.split():
                assert parse_hints("train.py", [option, value]).job["lr_schedule"] in SCHEDULES


class TestBooleans:
    """HF booleans take a bare flag or a boolean word; Megatron's store_true flags take nothing."""

    @pytest.mark.parametrize(
        ("args", "recompute"),
        [
            (["--gradient_checkpointing"], "full"),
            (["--gradient_checkpointing", "--seed", "1"], "full"),
            (["--gradient-checkpointing"], "full"),
            (["--gradient_checkpointing", "True"], "full"),
            (["--gradient_checkpointing", "true"], "full"),
            (["--gradient_checkpointing", "1"], "full"),
            (["--gradient_checkpointing", "yes"], "full"),
            (["--gradient_checkpointing=True"], "full"),
            (["--gradient_checkpointing", "False"], "none"),
            (["--gradient_checkpointing", "false"], "none"),
            (["--gradient_checkpointing", "0"], "none"),
            (["--gradient_checkpointing=no"], "none"),
        ],
    )
    def test_gradient_checkpointing(self, args: list[str], recompute: str) -> None:
        """--gradient_checkpointing means full recompute; explicitly off means none."""
        assert parse_hints("run_clm.py", args).job["recompute"] == recompute

    @pytest.mark.parametrize("args", [["--bf16"], ["--bf16", "True"], ["--bf16=false"], ["--bf16", "0"]])
    def test_bf16_is_checked_but_changes_nothing(self, args: list[str]) -> None:
        """The simulation always trains in BF16: a valid --bf16 leaves no hint."""
        h = parse_hints("run_clm.py", args)
        assert (h.job, h.arch, h.sources) == ({}, {}, {})

    def test_a_boolean_word_after_a_flag_is_its_value(self) -> None:
        """`--bf16 True --seed 3`: True belongs to --bf16 and --seed is still read."""
        assert parse_hints("pretrain_gpt.py", ["--bf16", "True", "--seed", "3"]).seed == 3

    def test_outside_hf_a_flag_leaves_the_next_word_alone(self) -> None:
        """Megatron's --bf16 takes no value: a following non-boolean word is a stray argument, no error."""
        h = parse_hints("pretrain_gpt.py", ["--bf16", "maybe", "--num-layers", "2"])
        assert h.arch["layers"] == 2

    @pytest.mark.parametrize(
        ("args", "key", "value"),
        [
            (["--use-distributed-optimizer"], "zero_stage", 1),
            (["--use_distributed_optimizer"], "zero_stage", 1),
            (["--recompute-activations"], "recompute", "selective"),
        ],
    )
    def test_megatron_flags(self, args: list[str], key: str, value: object) -> None:
        """Megatron's store_true flags set their hint when present."""
        assert parse_hints("pretrain_gpt.py", args).job[key] == value

    def test_a_flag_set_false_sets_nothing(self) -> None:
        """--use-distributed-optimizer=false (lenient spelling) leaves the ZeRO stage to the preset."""
        assert "zero_stage" not in parse_hints("pretrain_gpt.py", ["--use-distributed-optimizer=false"]).job


KNOWN_ARGS = ["--learning_rate", "1e-4", "--num-layers", "4", "--training.steps=9", "--bf16", "--seed", "5"]
UNKNOWN_NAME = st.from_regex(r"zz[a-z_\-]{0,12}", fullmatch=True)
UNKNOWN_VALUE = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="-"), max_size=12)


class TestUnknownArguments:
    """Arguments fakerun does not know are the script's business: they never change or break the hints."""

    def test_common_unknown_arguments(self) -> None:
        """Output dirs, data paths and positional words are ignored."""
        args = [
            "--output_dir",
            "out",
            "--data-path",
            "/data/x",
            "positional",
            "--report_to=none",
            *KNOWN_ARGS,
        ]
        # Only the textual settings a framework echoes (HF's output_dir) differ: no figure of the job does.
        got = dataclasses.replace(parse_hints("train.py", args), settings={})
        assert got == dataclasses.replace(parse_hints("train.py", KNOWN_ARGS), settings={})

    def test_after_double_dash_nothing_is_read(self) -> None:
        """argparse treats everything after "--" as positional."""
        assert parse_hints("train.py", ["--", "--learning_rate", "abc"]).job == {}

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(UNKNOWN_NAME, st.booleans(), UNKNOWN_VALUE), max_size=6), st.randoms())
    def test_unknown_options_interleaved(
        self, unknown: list[tuple[str, bool, str]], rnd: random.Random
    ) -> None:
        """Unknown options, with or without values, anywhere between known ones, leave the hints unchanged."""
        pairs = [["--learning_rate", "1e-4"], ["--num-layers", "4"], ["--training.steps=9"], ["--seed", "5"]]
        for name, equals, value in unknown:
            pairs.append([f"--{name}={value}"] if equals else [f"--{name}", value])
        rnd.shuffle(pairs)
        args = [tok for pair in pairs for tok in pair]
        h = parse_hints("train.py", args)
        assert h.job == {"lr": 1e-4, "total_steps": 9} and h.arch["layers"] == 4 and h.seed == 5


BAD = [
    (["--learning_rate", "abc"], "--learning_rate", "'abc'"),
    (["--learning-rate=abc"], "--learning-rate", "'abc'"),
    (["--learning_rate=nan"], "--learning_rate", "'nan'"),
    (["--learning_rate", "0"], "--learning_rate", "'0'"),
    (["--lr", "-3e-4"], "--lr", "'-3e-4'"),
    (["--min-lr", "-1"], "--min-lr", "'-1'"),
    (["--num-layers", "0"], "--num-layers", "'0'"),
    (["--num-layers", "2.5"], "--num-layers", "'2.5'"),
    (["--micro-batch-size", "-1"], "--micro-batch-size", "'-1'"),
    (["--per_device_train_batch_size", "four"], "--per_device_train_batch_size", "'four'"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps", "'0'"),
    (["--max_steps", "ten"], "--max_steps", "'ten'"),
    (["--num_train_epochs", "0"], "--num_train_epochs", "'0'"),
    (["--warmup_ratio", "1.5"], "--warmup_ratio", "'1.5'"),
    (["--warmup_steps", "-10"], "--warmup_steps", "'-10'"),
    (["--seed", "-1"], "--seed", "'-1'"),
    (["--bf16=maybe"], "--bf16", "'maybe'"),
    (["--lr_scheduler_type", "exponential"], "--lr_scheduler_type", "'exponential'"),
    (["--lr-decay-style", "exponential"], "--lr-decay-style", "'exponential'"),
    (["--recompute-granularity", "some"], "--recompute-granularity", "'some'"),
    (["--tensor-model-parallel-size", "0"], "--tensor-model-parallel-size", "'0'"),
    (["--fsdp", "shard_everything"], "--fsdp", "'shard_everything'"),
    (["--training.steps", "0"], "--training.steps", "'0'"),
    (["--training.seq_len=long"], "--training.seq_len", "'long'"),
    (["--activation_checkpoint.mode", "half"], "--activation_checkpoint.mode", "'half'"),
    (["--model_name_or_path", ""], "--model_name_or_path", "''"),
    (["--learning_rate"], "--learning_rate", "expected a value"),
    (["--learning_rate", "--bf16"], "--learning_rate", "expected a value"),
    (["--training.steps"], "--training.steps", "expected a value"),
]


class TestErrors:
    """A known hint with a value the real script would refuse raises a one-line HintError naming both."""

    @pytest.mark.parametrize(("args", "option", "shown"), BAD)
    def test_bad_value(self, args: list[str], option: str, shown: str) -> None:
        """The message is one line, starts with the argument and quotes the value."""
        with pytest.raises(HintError) as info:
            parse_hints("train.py", ["--output_dir", "out", *args])
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"script argument {option}: ")
        assert shown in message

    def test_exact_wording(self) -> None:
        """The wording follows argparse's."""
        with pytest.raises(HintError, match=r"^script argument --learning_rate: invalid float value 'abc'$"):
            parse_hints("run_clm.py", ["--learning_rate", "abc"])

    def test_is_a_value_error(self) -> None:
        """Callers that catch ValueError catch hint errors too."""
        assert issubclass(HintError, ValueError)

    def test_hf_boolean_takes_any_word_in_hf_style(self) -> None:
        """In an HF script `--gradient_checkpointing maybe` is a bad value, as HfArgumentParser would say."""
        with pytest.raises(HintError, match="--gradient_checkpointing: invalid boolean value 'maybe'"):
            parse_hints("run_clm.py", ["--gradient_checkpointing", "maybe"])

    def test_newlines_in_values_stay_on_one_line(self) -> None:
        """A value with a newline is quoted with an escape, never printed raw."""
        with pytest.raises(HintError) as info:
            parse_hints("train.py", ["--learning_rate", "1e-4\nrm -rf"])
        assert "\n" not in str(info.value)

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.sampled_from([o for o, *_ in SIMPLE if o != "--model_name_or_path"]),
                st.sampled_from(["--bf16", "--gradient_checkpointing", "--use-distributed-optimizer", "--"]),
                st.text(max_size=8),
                st.integers(-3, 10).map(str),
            ),
            max_size=10,
        )
    )
    def test_any_command_line_gives_hints_or_a_one_line_hint_error(self, args: list[str]) -> None:
        """Whatever the arguments, parse_hints returns or raises HintError, one line, naming an argument."""
        try:
            h = parse_hints("train.py", args)
        except HintError as exc:
            assert "\n" not in str(exc) and str(exc).startswith("script argument --")
        else:
            assert set(h.job) | set(h.arch) <= set(h.sources)


class TestHfRules:
    """HF Trainer's own precedence rules between related arguments."""

    def test_max_steps_minus_one_leaves_the_epochs(self) -> None:
        """--max_steps -1 is HF's 'unset': the epoch count stays for the caller to turn into steps."""
        h = parse_hints("run_clm.py", ["--max_steps", "-1", "--num_train_epochs", "3"])
        assert "total_steps" not in h.job and h.epochs == 3.0

    @pytest.mark.parametrize("order", [0, 1])
    def test_max_steps_beats_epochs(self, order: int) -> None:
        """A positive --max_steps overrides --num_train_epochs, wherever each appears."""
        pairs = [["--max_steps", "100"], ["--num_train_epochs", "3"]]
        h = parse_hints("run_clm.py", pairs[order] + pairs[1 - order])
        assert h.job["total_steps"] == 100 and h.epochs is None

    def test_positive_warmup_steps_beat_the_ratio(self) -> None:
        """warmup_steps > 0 wins over warmup_ratio, as in TrainingArguments.get_warmup_steps."""
        h = parse_hints("run_clm.py", ["--warmup_ratio", "0.1", "--warmup_steps", "10"])
        assert h.job["warmup_steps"] == 10 and h.warmup_ratio is None

    def test_zero_warmup_steps_leave_the_ratio(self) -> None:
        """warmup_steps 0 (HF's default) leaves the ratio in charge."""
        h = parse_hints("run_clm.py", ["--warmup_steps", "0", "--warmup_ratio", "0.1"])
        assert "warmup_steps" not in h.job and h.warmup_ratio == 0.1

    def test_fractional_warmup_steps_are_a_ratio(self) -> None:
        """Newer transformers read --warmup_steps below 1 as a ratio."""
        h = parse_hints("run_clm.py", ["--warmup_steps", "0.03"])
        assert h.warmup_ratio == 0.03 and "warmup_steps" not in h.job

    @pytest.mark.parametrize("kind", ["linear", "cosine", "cosine_with_restarts", "polynomial"])
    def test_decaying_schedules_end_at_zero(self, kind: str) -> None:
        """HF's linear and cosine schedules decay to 0, not to the preset's minimum."""
        assert parse_hints("run_clm.py", ["--lr_scheduler_type", kind]).job["min_lr"] == 0.0

    def test_constant_schedule_has_no_warmup(self) -> None:
        """HF's plain constant schedule ignores any warmup."""
        args = ["--warmup_steps", "100", "--warmup_ratio", "0.1", "--lr_scheduler_type=constant"]
        h = parse_hints("run_clm.py", args)
        assert h.job["warmup_steps"] == 0 and h.warmup_ratio is None and h.job["lr_schedule"] == "constant"

    def test_seq_length_is_also_the_context_apply_arch_allows(self) -> None:
        """The training sequence length is both a make_job override and an arch hint."""
        h = parse_hints("run_clm.py", ["--model_max_length", "16384"])
        assert h.job["seq_len"] == h.arch["seq_len"] == 16384


class TestDeepSpeed:
    """HF's --deepspeed names a JSON config (its zero_optimization.stage becomes the ZeRO stage); DeepSpeed's
    and Megatron-DeepSpeed's is a switch."""

    @pytest.mark.parametrize("stage", [0, 1, 2, 3])
    def test_stage_from_the_file(self, tmp_path: Path, stage: int) -> None:
        """The stage in the file, whatever else the file holds."""
        path = tmp_path / "ds.json"
        path.write_text(json.dumps({"train_batch_size": "auto", "zero_optimization": {"stage": stage}}))
        h = parse_hints("run_clm.py", ["--deepspeed", str(path)])
        assert h.job["zero_stage"] == stage and h.sources["zero_stage"] == "--deepspeed"

    def test_no_zero_section_is_stage_0(self, tmp_path: Path) -> None:
        """DeepSpeed's default when the config has no zero_optimization is ZeRO off."""
        path = tmp_path / "ds.json"
        path.write_text('{"bf16": {"enabled": true}}')
        assert parse_hints("run_clm.py", [f"--deepspeed={path}"]).job["zero_stage"] == 0

    def test_inline_json(self) -> None:
        """An inline JSON object works like a file."""
        h = parse_hints("run_clm.py", ["--deepspeed", '{"zero_optimization": {"stage": 2}}'])
        assert h.job["zero_stage"] == 2

    @pytest.mark.parametrize("content", [None, "{not json", "[1, 2]", ""])
    def test_unreadable_configs_are_ignored(self, tmp_path: Path, content: str | None) -> None:
        """A missing or unparsable file leaves the ZeRO stage to the preset."""
        path = tmp_path / "ds.json"
        if content is not None:
            path.write_text(content)
        assert "zero_stage" not in parse_hints("run_clm.py", ["--deepspeed", str(path)]).job

    @pytest.mark.parametrize("stage", [4, -1, "auto", True])
    def test_bad_stage_raises(self, tmp_path: Path, stage: object) -> None:
        """A config DeepSpeed would refuse is a one-line HintError naming --deepspeed."""
        path = tmp_path / "ds.json"
        path.write_text(json.dumps({"zero_optimization": {"stage": stage}}))
        with pytest.raises(HintError, match=r"^script argument --deepspeed: invalid zero_optimization.stage"):
            parse_hints("run_clm.py", ["--deepspeed", str(path)])

    @pytest.mark.parametrize(
        "args",
        [
            ["--deepspeed", "--num-layers", "4"],  # before an option
            ["--num-layers", "4", "--deepspeed"],  # last
            ["--num-layers", "4", "--deepspeed", "--micro-batch-size", "2"],  # between options
        ],
    )
    def test_megatron_deepspeeds_switch_anywhere(self, args: list[str]) -> None:
        """Megatron-DeepSpeed's parser gets --deepspeed from deepspeed.add_config_arguments, a store_true:
        bare wherever it stands, the option after it keeps its own value."""
        h = parse_hints("Megatron-DeepSpeed/pretrain_gpt.py", args)
        assert h.style == "megatron-deepspeed" and h.arch["layers"] == 4 and h.deepspeed is None
        assert h.sources["layers"] == "--num-layers"

    def test_megatron_deepspeeds_switch_alone(self) -> None:
        """The switch alone on a Megatron-DeepSpeed script: that framework, nothing read as a config."""
        h = parse_hints("Megatron-DeepSpeed/pretrain_gpt.py", ["--deepspeed"])
        assert h.style == "megatron-deepspeed" and h.deepspeed is None and "zero_stage" not in h.job

    @pytest.mark.parametrize(
        "args", [["--deepspeed"], ["--local_rank=0", "--deepspeed"], ["--deepspeed", "-v"]]
    )
    def test_a_bare_switch_of_an_unknown_script_is_deepspeeds(self, args: list[str]) -> None:
        """No value after it: only a DeepSpeed script's parser (store_true) accepts it, so it is that."""
        h = parse_hints("train.py", args)
        assert h.style == DEFAULT and h.deepspeed is None

    def test_hf_still_takes_the_config_after_it(self, tmp_path: Path) -> None:
        """HF Trainer's --deepspeed takes a value: the JSON config after it, even among Megatron's options;
        bare, its parser refuses it."""
        path = tmp_path / "ds_config.json"
        path.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
        h = parse_hints("run_clm.py", ["--deepspeed", str(path), "--num-layers", "4"])
        assert h.style == "hf" and h.job["zero_stage"] == 3 and h.deepspeed is not None
        with pytest.raises(HintError, match=r"^script argument --deepspeed: expected a value$"):
            parse_hints("run_clm.py", ["--deepspeed"])


TITAN_TOML = """
[job]
dump_folder = "./outputs"
description = "Llama 3 70B training"

[model]
name = "llama3"
flavor = "70B"
tokenizer_path = "./assets/tokenizer/original/tokenizer.model"

[optimizer]
name = "AdamW"
lr = 1.5e-4

[lr_scheduler]
warmup_steps = 200
decay_type = "cosine"
lr_min = 0.1

[training]
local_batch_size = 2
seq_len = 8192
steps = 1000
compile = true

[parallelism]
data_parallel_shard_degree = -1
tensor_parallel_degree = 8

[activation_checkpoint]
mode = "full"
"""


class TestTorchtitan:
    """torchtitan's --job.config_file TOML, with dotted command-line overrides winning over the file."""

    @pytest.fixture
    def config(self, tmp_path: Path) -> Path:
        """A torchtitan-style config for Llama 3 70B."""
        path = tmp_path / "llama3_70b.toml"
        path.write_text(TITAN_TOML)
        return path

    def test_file(self, config: Path) -> None:
        """Every hint of the file, the model from name and flavor, min_lr from lr * lr_min."""
        h = parse_hints("torchtitan/train.py", ["--job.config_file", str(config)])
        assert h.style == "titan" and h.model_name == "llama3-70B"
        assert h.model is not None and h.model.name == "torchtitan-llama3-70B"
        assert h.model.params == presets.load_model("llama3-70b").params  # the preset's architecture
        assert h.job == {
            "lr": 1.5e-4,
            "warmup_steps": 200,
            # linear_warmup_stable_decay: cosine over the 800 steps after the warmup, to a virtual step 1001.
            "lr_schedule": "wsd",
            "decay_steps": 1001,
            "wsd_decay_steps": 800,
            "wsd_style": "cosine",
            "micro_batch": 2,
            "seq_len": 8192,
            "total_steps": 1000,
            "zero_stage": 3,
            "tp": 8,
            "recompute": "full",
            "min_lr": pytest.approx(1.5e-5),
            "grad_accum": 1,
            "state_layout": "fp32",
            "fp32_grad_buffer": True,
            "device_first": True,
        }
        assert h.sources["total_steps"] == f"training.steps in {config}"

    def test_global_batch_defaults_to_local_times_data_parallel(self, tmp_path: Path) -> None:
        """training.global_batch_size -1 (the default): local batch x DP, one micro batch per step."""
        cmd = parse_command_line(
            ["--nproc-per-node", "8", "train.py", "--training.local_batch_size", "2"], {}
        )
        bundle = presets.resolve("llama3-8b")
        run, _ = build_run(cmd, bundle, nnodes=1, nproc_per_node=8, model_given=True)
        assert (run.job.micro_batch, run.job.grad_accum, run.job.global_batch) == (2, 1, 16)
        explicit = parse_hints(
            "train.py", ["--training.local_batch_size", "2", "--training.global_batch_size", "64"]
        )
        assert explicit.job["global_batch"] == 64 and "grad_accum" not in explicit.job

    @pytest.mark.parametrize("before", [False, True])
    @pytest.mark.parametrize("option", ["--training.steps", "--training-steps".replace("-steps", ".steps")])
    def test_command_line_beats_the_file(self, config: Path, option: str, before: bool) -> None:
        """A dotted override wins over the file whether it comes before or after --job.config_file."""
        override = [option, "50"]
        cfg = [f"--job.config_file={config}"]
        h = parse_hints("-m torchtitan.train", override + cfg if before else cfg + override)
        assert h.job["total_steps"] == 50 and h.sources["total_steps"] == option

    def test_old_name_on_the_command_line_beats_the_new_name_in_the_file(self, config: Path) -> None:
        """--training.batch_size (older torchtitan) overrides the file's local_batch_size."""
        h = parse_hints("train.py", ["--job.config_file", str(config), "--training.batch_size", "4"])
        assert h.job["micro_batch"] == 4

    def test_flavor_override_changes_the_model(self, config: Path) -> None:
        """--model.flavor 8B on the command line picks Llama 3 8B."""
        h = parse_hints("train.py", ["--job.config_file", str(config), "--model.flavor", "8B"])
        assert h.model is not None and h.model.params == presets.load_model("llama3-8b").params

    def test_debug_flavor_is_torchtitans_own(self) -> None:
        """torchtitan's debugmodel is no preset: its flavor table's model."""
        h = parse_hints("train.py", ["--model.name", "llama3"])
        assert h.model_name == "llama3-debugmodel" and h.model is not None
        assert h.model.name == "torchtitan-llama3-debugmodel"

    def test_pipeline_micro_batches(self) -> None:
        """With pipeline stages the local batch runs as micro batches of pipeline_parallel_microbatch_size."""
        args = ["--parallelism.pipeline_parallel_degree", "4", "--training.local_batch_size", "8"]
        h = parse_hints("train.py", [*args, "--parallelism.pipeline_parallel_microbatch_size", "2"])
        assert (h.job["micro_batch"], h.job["grad_accum"], h.job["pp"]) == (2, 4, 4)
        h = parse_hints("train.py", [*args, "--training.global_batch_size", "512"])
        assert (h.job["micro_batch"], h.job["global_batch"]) == (1, 512) and "grad_accum" not in h.job

    def test_bad_value_in_the_file_names_the_file_and_key(self, tmp_path: Path) -> None:
        """A value torchtitan would refuse raises one line naming the file and the key."""
        path = tmp_path / "bad.toml"
        path.write_text('[training]\nsteps = "many"\n')
        with pytest.raises(HintError, match=r"bad\.toml.*training\.steps: invalid int value 'many'"):
            parse_hints("train.py", ["--job.config_file", str(path)])

    @pytest.mark.parametrize(("content", "match"), [("[training\n", "invalid TOML")])
    def test_unreadable_file(self, tmp_path: Path, content: str, match: str) -> None:
        """A config torchtitan cannot parse: a one-line HintError naming --job.config_file (a missing one is
        the ranks' FileNotFoundError: tests/unit/test_corpus_torchtitan.py)."""
        path = tmp_path / "cfg.toml"
        path.write_text(content)
        with pytest.raises(HintError, match=f"^script argument --job.config_file: {match}") as info:
            parse_hints("train.py", ["--job.config_file", str(path)])
        assert "\n" not in str(info.value)


class TestMegatronRules:
    """Megatron's own derived values: GQA, default FFN width, top-k and samples to iterations."""

    def test_query_groups_need_group_query_attention(self) -> None:
        """--num-query-groups counts only with --group-query-attention; without it attention is multi-head."""
        base = ["--num-attention-heads", "32", "--num-query-groups", "8"]
        assert parse_hints("pretrain_gpt.py", [*base, "--group-query-attention"]).arch["kv_heads"] == 8
        assert parse_hints("pretrain_gpt.py", base).arch["kv_heads"] == 32

    @pytest.mark.parametrize(("swiglu", "ffn"), [(False, 16384), (True, 10880)])
    def test_default_ffn_width(self, swiglu: bool, ffn: int) -> None:
        """Without --ffn-hidden-size: 4h, or with --swiglu 2/3 of that rounded down to a multiple of 64."""
        args = ["--hidden-size", "4096", "--num-attention-heads", "32"] + (["--swiglu"] if swiglu else [])
        assert parse_hints("pretrain_gpt.py", args).arch["ffn_hidden"] == ffn

    def test_experts_route_to_two_by_default(self) -> None:
        """--num-experts without --moe-router-topk routes each token to 2 experts."""
        assert parse_hints("pretrain_gpt.py", ["--num-experts", "8"]).arch["top_k"] == 2

    def test_samples_become_iterations(self) -> None:
        """--train-samples and --lr-warmup-samples divide by the global batch."""
        args = ["--train-samples", "1024000", "--lr-warmup-samples", "51200", "--global-batch-size", "512"]
        h = parse_hints("pretrain_gpt.py", args)
        assert (h.job["total_steps"], h.job["warmup_steps"]) == (2000, 100)


class TestModelNames:
    """--model_name_or_path selects the matching preset; unknown names keep the name and no preset."""

    @pytest.mark.parametrize(
        ("name", "preset"),
        [
            ("meta-llama/Meta-Llama-3-70B", "llama3-70b"),
            ("meta-llama/Meta-Llama-3-8B", "llama3-8b"),
            ("meta-llama/Llama-3.1-405B", "llama3-405b"),
            ("Qwen/Qwen2.5-7B", "qwen2.5-7b"),
            ("Qwen/Qwen2-72B-Instruct", "qwen2.5-72b"),
            ("mistralai/Mistral-7B-v0.1", "mistral-7b"),
            ("mistralai/Mixtral-8x7B-v0.1", "mixtral-8x7b"),
            ("openai-community/gpt2", "gpt2-124m"),
            ("/checkpoints/Llama-3.2-1B/", "llama3.2-1b"),
        ],
    )
    def test_hf_name_selects_the_preset(self, name: str, preset: str) -> None:
        """Repo ids and local checkpoint paths map to the preset of the same model."""
        h = parse_hints("run_clm.py", ["--model_name_or_path", name])
        assert h.model_name == name and h.model is not None and h.model.name == preset

    def test_unknown_model(self) -> None:
        """An unknown model keeps its name for the logs; the caller falls back to --fake-model."""
        h = parse_hints("run_clm.py", ["--model_name_or_path", "my-org/secret-model"])
        assert h.model_name == "my-org/secret-model" and h.model is None

    def test_no_model(self) -> None:
        """Without a model argument there is neither a name nor a preset."""
        h = parse_hints("train.py", [])
        assert h == Hints()


class TestStyle:
    """Which framework the arguments look like; the script name breaks ties, or decides alone."""

    @pytest.mark.parametrize(
        ("script", "args", "style"),
        [
            ("run_clm.py", [], "hf"),
            ("examples/pytorch/language-modeling/run_clm.py", ["--output_dir", "x"], "hf"),
            ("train.py", ["--model_name_or_path", "gpt2", "--per_device_train_batch_size", "4"], "hf"),
            ("pretrain_gpt.py", [], "megatron"),
            ("/opt/Megatron-LM/pretrain_gpt.py", ["--num-layers", "2"], "megatron"),
            ("train.py", ["--num-layers", "2", "--micro-batch-size", "1"], "megatron"),
            ("torchtitan/train.py", [], "titan"),
            ("torchtitan.train", [], "titan"),
            ("train.py", ["--training.steps", "10"], "titan"),
            ("train.py", [], DEFAULT),
            ("train.py", ["--lr", "1e-3", "--batch_size", "8", "--num_layers", "2"], DEFAULT),
            ("run_clm.py", ["--num-layers", "2", "--output_dir", "x"], "hf"),
            ("train.py", ["--num-layers", "2", "--output_dir", "x"], DEFAULT),
            ("pretrain_gpt.py", ["--model_name_or_path", "x", "--per_device_train_batch_size", "1"], "hf"),
        ],
    )
    def test_style(self, script: str, args: list[str], style: str) -> None:
        """Framework-specific option names vote; the script name breaks ties and decides when none vote."""
        assert parse_hints(script, args).style == style


def dense_swiglu_params(layers: int, hidden: int, ffn: int, heads: int, kv_heads: int, vocab: int) -> int:
    """Parameters of a Llama-style model: GQA attention, SwiGLU MLP, RMSNorm, untied embeddings, no biases."""
    head_dim = hidden // heads
    attention = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim  # q and o, then k and v
    mlp = 3 * hidden * ffn  # gate, up, down
    norms = 2 * hidden
    return layers * (attention + mlp + norms) + 2 * vocab * hidden + hidden


class TestApplyArch:
    """apply_arch: the preset with the script's shape, parameters recomputed, inconsistencies refused."""

    def test_llama3_70b_shape_on_the_8b_preset_gives_70b(self) -> None:
        """Llama 3 8B reshaped to 70B's published dimensions counts 70.6B parameters."""
        m = apply_arch(
            presets.load_model("llama3-8b"),
            {"layers": 80, "hidden": 8192, "ffn_hidden": 28672, "heads": 64, "kv_heads": 8},
        )
        assert m.params == pytest.approx(70.6e9, rel=0.01)
        assert m.params == dense_swiglu_params(80, 8192, 28672, 64, 8, 128256)

    @settings(max_examples=50, deadline=None)
    @given(
        layers=st.integers(1, 96),
        heads=st.sampled_from([8, 16, 32, 64]),
        head_dim=st.sampled_from([64, 128]),
        kv_divisor=st.sampled_from([1, 2, 4, 8]),
        ffn=st.integers(1, 512).map(lambda n: n * 64),
        vocab=st.integers(1000, 200_000),
    )
    def test_params_follow_the_formula(
        self, layers: int, heads: int, head_dim: int, kv_divisor: int, ffn: int, vocab: int
    ) -> None:
        """Any consistent dense SwiGLU shape counts what the textbook formula says."""
        hidden, kv = heads * head_dim, heads // kv_divisor
        arch = {"layers": layers, "hidden": hidden, "ffn_hidden": ffn, "heads": heads, "kv_heads": kv}
        m = apply_arch(presets.load_model("llama3-8b"), {**arch, "vocab": vocab})
        assert m.params == m.active_params == dense_swiglu_params(layers, hidden, ffn, heads, kv, vocab)

    def test_names_the_custom_model(self) -> None:
        """A changed shape is named by family and size, and no longer claims a published name or size."""
        m = apply_arch(presets.load_model("llama3-8b"), {"layers": 16})
        size = m.params / 1e9
        assert (m.name, m.display_name) == (f"llama-{size:.1f}b-custom", f"custom llama {size:.1f}B")
        assert m.published_params == 0.0 and m.hf_name == ""
        assert apply_arch(m, {"layers": 8}).name.endswith("-custom")

    def test_a_published_shape_gets_its_preset(self) -> None:
        """Megatron arguments spelling out Llama 3 70B's shape select the llama3-70b preset."""
        arch = {
            "layers": 80,
            "hidden": 8192,
            "ffn_hidden": 28672,
            "heads": 64,
            "kv_heads": 8,
            "tied_embeddings": 0,
        }
        assert apply_arch(presets.load_model("llama3.2-3b"), arch) == presets.load_model("llama3-70b")

    def test_no_change_returns_the_preset(self) -> None:
        """Values equal to the preset's change nothing: the very same spec comes back."""
        m = presets.load_model("llama3-8b")
        assert apply_arch(m, {}) is m
        assert apply_arch(m, {"layers": 32, "hidden": 4096, "kv_heads": 8}) is m

    def test_multi_head_attention_stays_multi_head(self) -> None:
        """GPT-2 (12 heads, 12 KV heads) with 16 heads has 16 KV heads."""
        m = apply_arch(presets.load_model("gpt2-124m"), {"heads": 16, "hidden": 1024})
        assert (m.heads, m.kv_heads) == (16, 16)

    def test_longer_context_on_rotary_positions(self) -> None:
        """A longer training context extends a RoPE model's limit without renaming it."""
        m = apply_arch(presets.load_model("llama3-8b"), {"seq_len": 32768})
        assert (m.name, m.seq_len, m.max_position) == ("llama3-8b", 32768, 32768)
        assert m.params == presets.load_model("llama3-8b").params

    @pytest.mark.parametrize(
        ("model", "arch", "match"),
        [
            ("llama3-8b", {"hidden": 4100}, "hidden size 4100 is not divisible by 32 heads"),
            ("llama3-8b", {"heads": 12, "hidden": 3072}, "12 heads are not divisible by 8 KV heads"),
            ("llama3-8b", {"kv_heads": 64}, "32 heads are not divisible by 64 KV heads"),
            ("mixtral-8x7b", {"top_k": 9}, "top_k 9 exceeds 8 experts"),
            ("gpt2-124m", {"seq_len": 2048}, "seq_len 2048 exceeds max_position 1024"),
            (
                "llama3-8b",
                {"seq_len": 16384, "max_position": 8192},
                "seq_len 16384 exceeds max_position 8192",
            ),
            ("llama3-8b", {"layers": 0}, "layers=0 must be a positive integer"),
            ("llama3-8b", {"depth": 3}, "unknown architecture hint 'depth'"),
        ],
    )
    def test_inconsistent(self, model: str, arch: dict[str, int], match: str) -> None:
        """An impossible shape is a one-line HintError naming the model and the hints."""
        with pytest.raises(HintError, match=match) as info:
            apply_arch(presets.load_model(model), arch)
        assert "\n" not in str(info.value)

    def test_megatron_command_line_to_a_job(self) -> None:
        """A Megatron GPT command line becomes a model and a job make_job accepts as given."""
        args = [
            *("--num-layers", "16", "--hidden-size", "2048", "--ffn-hidden-size", "8192"),
            *("--num-attention-heads", "32", "--group-query-attention", "--num-query-groups", "8"),
            *("--swiglu", "--untie-embeddings-and-output-weights"),
            *("--seq-length", "4096", "--max-position-embeddings", "4096", "--bf16"),
            *("--micro-batch-size", "2", "--global-batch-size", "256", "--train-iters", "1000"),
            *("--lr", "3e-4", "--min-lr", "3e-5", "--lr-warmup-iters", "100", "--lr-decay-style", "cosine"),
            *("--tensor-model-parallel-size", "2", "--use-distributed-optimizer"),
            *("--recompute-granularity", "selective", "--data-path", "/data/x"),
            # Llama's choices over Megatron's GPT defaults (LayerNorm, linear biases, learned positions)
            *("--normalization", "RMSNorm", "--disable-bias-linear", "--position-embedding-type", "rope"),
            *("--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", "meta-llama/Meta-Llama-3-8B"),
        ]
        h = parse_hints("pretrain_gpt.py", args)
        b = presets.resolve("llama3-8b")
        assert h.model is not None
        model = apply_arch(h.model, h.arch)
        assert model.params == dense_swiglu_params(16, 2048, 8192, 32, 8, 128256)
        job = make_job(model, b.cluster, b.storage, nnodes=1, **h.job)  # type: ignore[arg-type]
        assert (job.tp, job.micro_batch, job.global_batch, job.seq_len) == (2, 2, 256, 4096)
        assert (job.total_steps, job.warmup_steps, job.lr_schedule) == (1000, 100, "cosine")
        assert (job.zero_stage, job.recompute, job.min_lr) == (1, "selective", 3e-5)


class TestCadence:
    """Logging, evaluation and checkpoint intervals in each framework's spelling."""

    @pytest.mark.parametrize(
        "script,args,want",
        [
            (
                "run_clm.py",
                ["--logging_steps", "10", "--eval_steps=500", "--save_steps", "1000"],
                {"log_interval": 10, "eval_interval": 500, "save_interval": 1000},
            ),
            (
                "pretrain_gpt.py",
                [
                    "--log-interval",
                    "1",
                    "--eval-interval",
                    "100",
                    "--save-interval",
                    "0",
                    "--eval-iters",
                    "20",
                ],
                {"log_interval": 1, "eval_interval": 100, "save_interval": 0, "eval_iters": 20},
            ),
            (
                "train.py",
                [
                    "--metrics.log_freq",
                    "5",
                    "--checkpoint.interval",
                    "250",
                    "--validation.enable",
                    "--validation.freq",
                    "50",
                    "--validation.steps",
                    "8",
                ],
                {"log_interval": 5, "save_interval": 250, "eval_interval": 50, "eval_iters": 8},
            ),
        ],
    )
    def test_intervals(self, script: str, args: list[str], want: dict[str, int]) -> None:
        """Each framework's interval options land in the cadence."""
        assert parse_hints(script, args).cadence == want

    def test_hf_fraction_is_a_ratio(self) -> None:
        """HF's fractional steps (a share of the run) wait for its length; a later count replaces them."""
        h = parse_hints("run_clm.py", ["--logging_steps", "0.1"])
        assert (h.cadence, h.cadence_ratio) == ({}, {"log_interval": 0.1})
        h = parse_hints("run_clm.py", ["--logging_steps", "0.1", "--logging_steps", "7"])
        assert (h.cadence, h.cadence_ratio) == ({"log_interval": 7}, {})

    @pytest.mark.parametrize("args", [["--log-interval", "0"], ["--eval-iters", "x"], ["--save_steps", "-3"]])
    def test_bad_values(self, args: list[str]) -> None:
        """A log interval of 0, or a non-number, is one-line error naming the option."""
        with pytest.raises(HintError, match=args[0]):
            parse_hints("pretrain_gpt.py", args)


# --- hardening: numeric hints past any real job ----------------------------------------------------

HUGE = str(10**30)


class TestHintRanges:
    """Every numeric hint is bounded: a value no real job uses is one short line naming the argument."""

    @pytest.mark.parametrize(
        ("script", "args"),
        [
            ("pretrain_gpt.py", ["--global-batch-size", "1e25"]),
            ("pretrain_gpt.py", ["--global-batch-size", HUGE]),
            ("run_clm.py", ["--num_train_epochs", "1e308"]),
            ("run_clm.py", ["--num_train_epochs", "inf"]),
            ("pretrain_gpt.py", ["--hidden-size", "1e200"]),
            ("pretrain_gpt.py", ["--hidden-size", HUGE]),
            ("pretrain_gpt.py", ["--num-layers", HUGE]),
            ("pretrain_gpt.py", ["--num-attention-heads", HUGE]),
            ("pretrain_gpt.py", ["--ffn-hidden-size", HUGE]),
            ("pretrain_gpt.py", ["--vocab-size", HUGE]),
            ("pretrain_gpt.py", ["--num-experts", HUGE]),
            ("pretrain_gpt.py", ["--seq-length", HUGE]),
            ("pretrain_gpt.py", ["--max-position-embeddings", HUGE]),
            ("pretrain_gpt.py", ["--micro-batch-size", HUGE]),
            ("pretrain_gpt.py", ["--train-iters", HUGE]),
            ("pretrain_gpt.py", ["--lr-warmup-iters", HUGE]),
            ("pretrain_gpt.py", ["--tensor-model-parallel-size", HUGE]),
            ("pretrain_gpt.py", ["--pipeline-model-parallel-size", HUGE]),
            ("pretrain_gpt.py", ["--log-interval", HUGE]),
            ("pretrain_gpt.py", ["--eval-iters", HUGE]),
            ("pretrain_gpt.py", ["--lr", "1e300"]),
            ("pretrain_gpt.py", ["--min-lr", "1e300"]),
            ("pretrain_gpt.py", ["--global-batch-size", "8", "--train-samples", HUGE]),
            ("pretrain_gpt.py", ["--group-query-attention", "--num-query-groups", HUGE]),
            ("run_clm.py", ["--gradient_accumulation_steps", HUGE]),
            ("run_clm.py", ["--per_device_train_batch_size", HUGE]),
            ("run_clm.py", ["--max_steps", HUGE]),
            ("run_clm.py", ["--warmup_steps", "1e300"]),
            ("run_clm.py", ["--warmup_steps", HUGE]),
            ("run_clm.py", ["--learning_rate", "inf"]),
            ("run_clm.py", ["--seed", str(2**64)]),
            ("run_clm.py", ["--logging_steps", "1e300"]),
            ("run_clm.py", ["--block_size", HUGE]),
            ("train.py", ["--training.steps", HUGE]),
            ("train.py", ["--training.global_batch_size", HUGE]),
            ("train.py", ["--parallelism.data_parallel_shard_degree", HUGE]),
            ("train.py", ["--training.seed", "9" * 5000]),
        ],
    )
    def test_out_of_range(self, script: str, args: list[str]) -> None:
        """One line, naming the script argument, short whatever the value's length."""
        with pytest.raises(HintError) as info:
            parse_hints(script, args)
        message = str(info.value)
        assert message.startswith(f"script argument {args[-2]}: ")
        assert "\n" not in message and len(message) < 200

    def test_torchtitan_file_value(self, tmp_path: Path) -> None:
        """A number past the range inside a torchtitan config file names the file and the key."""
        path = tmp_path / "job.toml"
        path.write_text(f"[training]\nsteps = {HUGE}\n")
        with pytest.raises(HintError, match=r"job\.toml.*training\.steps: invalid value"):
            parse_hints("train.py", ["--job.config_file", str(path)])

    @pytest.mark.parametrize(
        "text",
        ["[training]\nsteps = " + "[" * 5000 + "]" * 5000, "[" + ".".join(["a"] * 5000) + "]"],
    )
    def test_torchtitan_file_nested_too_deep(self, tmp_path: Path, text: str) -> None:
        """A torchtitan file nested thousands deep is one line, not a RecursionError."""
        path = tmp_path / "deep.toml"
        path.write_text(text)
        with pytest.raises(HintError, match="nested") as info:
            parse_hints("train.py", ["--job.config_file", str(path)])
        assert "\n" not in str(info.value)

    def test_special_files_are_not_read(self) -> None:
        """/dev/zero as a config file is refused (torchtitan) or ignored (DeepSpeed), never read forever."""
        with pytest.raises(HintError, match="not a regular file"):
            parse_hints("train.py", ["--job.config_file", "/dev/zero"])
        assert "zero_stage" not in parse_hints("run_clm.py", ["--deepspeed", "/dev/zero"]).job

    @pytest.mark.parametrize(
        ("arch", "match"),
        [
            ({"hidden": 10**30}, "hidden=1000000000000000000000000000000 exceeds"),
            ({"layers": 10**7}, "exceeds"),
        ],
    )
    def test_apply_arch_bounds(self, arch: dict[str, int], match: str) -> None:
        """apply_arch refuses architecture values past the presets' ranges too."""
        with pytest.raises(HintError, match=match):
            apply_arch(presets.load_model("llama3-8b"), arch)

    def test_largest_values_accepted(self) -> None:
        """Large but real values still work: a 10M-token context, a 16M-sequence batch, 1T steps."""
        h = parse_hints(
            "pretrain_gpt.py",
            ["--seq-length", "10000000", "--global-batch-size", "16000000", "--train-iters", "1000000000000"],
        )
        assert (h.job["seq_len"], h.job["global_batch"], h.job["total_steps"]) == (10**7, 16 * 10**6, 10**12)


def run_of(argv: list[str], nproc: int = 1) -> None:
    """build_run for a one-node command line, as main does before anything starts."""
    cmd = parse_command_line([*argv], {})
    bundle = presets.resolve(cmd.fake.model or "llama3-8b", cmd.fake.gpu, cmd.fake.cluster)
    build_run(cmd, bundle, nnodes=1, nproc_per_node=nproc, model_given=cmd.fake.model is not None)


class TestJobLimits:
    """Hints and presets each in range whose job would still never move: one JobConfigError line."""

    def test_epochs_beyond_the_step_cap(self) -> None:
        """A million epochs of Llama 3 8B's 1.2M-step preset run are more steps than the cap (Lightning's
        epochs; an HF script's are over its data: frameworks/hf_datasets.py)."""
        with pytest.raises(JobConfigError, match=r"--max_epochs: 1e\+06 epochs") as info:
            argv = ["train.py", "--max_epochs", "1000000", "--accelerator", "gpu"]
            run_of(["--fake-model", "llama3-8b", *argv], nproc=8)
        assert "\n" not in str(info.value)

    def test_step_longer_than_a_day(self, tmp_path: Path) -> None:
        """A GPU of 0.01 TFLOP/s (in range) paced in real time would spend days on one step."""
        gpu = tmp_path / "slow.toml"
        gpu.write_text('display_name = "slow"\npeak_bf16_tflops = 0.01\nmemory_mib = 81920\ntdp_w = 300\n')
        with pytest.raises(
            JobConfigError, match=r"one step of gpt2-124m on 1 GPU would take .* use a higher"
        ):
            run_of(["--fake-model", "gpt2-124m", "--fake-gpu", str(gpu), "train.py"])

    def test_speed_lifts_the_limit(self, tmp_path: Path) -> None:
        """The same job at a higher speed paces within the limit."""
        gpu = tmp_path / "slow.toml"
        gpu.write_text('display_name = "slow"\npeak_bf16_tflops = 0.01\nmemory_mib = 81920\ntdp_w = 300\n')
        run_of(["--fake-model", "gpt2-124m", "--fake-gpu", str(gpu), "--fake-speed", "1000000", "train.py"])


def planned(argv: list[str], nproc: int = 2) -> RunPlan:
    """The run build_run makes of a one-node command line."""
    cmd = parse_command_line([*argv], {})
    bundle = presets.resolve(cmd.fake.model or "llama3-8b", cmd.fake.gpu, cmd.fake.cluster)
    run, _ = build_run(cmd, bundle, nnodes=1, nproc_per_node=nproc, model_given=cmd.fake.model is not None)
    return run


TITAN = ["-m", "torchtitan.train", "--training.steps", "20"]


class TestCollectiveTimeout:
    """The process groups' collective timeout each framework sets, the script's arguments' and fakerun's."""

    @pytest.mark.parametrize(
        ("argv", "seconds"),
        [
            # torch's NCCL default (nanoGPT's init_process_group without a timeout), Megatron's
            # --distributed-timeout-minutes default 10, DeepSpeed's default_pg_timeout of 10 minutes
            (["train.py"], 600.0),
            (["pretrain_gpt.py", "--tensor-model-parallel-size", "1"], 600.0),
            (["pretrain_gpt.py", "--distributed-timeout-minutes", "3"], 180.0),
            (["run_clm.py", "--model_name_or_path", "gpt2"], 1800.0),  # ddp_timeout: 1800
            (["run_clm.py", "--model_name_or_path", "gpt2", "--ddp_timeout", "120"], 120.0),
            (["--fake-trainer", "lightning", "train.py"], 1800.0),  # torch's default_pg_timeout, 30 min
            (["--fake-trainer", "nemo", "train.py"], 1800.0),  # megatron-core's model-parallel groups
            (["--fake-trainer", "deepspeed", "train.py"], 600.0),
        ],
    )
    def test_framework_and_script(self, argv: list[str], seconds: float) -> None:
        """The framework's default, or the script's own argument, on every step."""
        run = planned(["--fake-max-steps", "5", *argv])
        assert [run.collective_timeout_s(s) for s in (1, 2, 5)] == [seconds] * 3

    def test_torchtitan_lowers_it_after_step_one(self) -> None:
        """torchtitan: comm.init_timeout_seconds (300) to step 1, comm.train_timeout_seconds (100) after."""
        run = planned(["--fake-max-steps", "5", *TITAN])
        assert [run.collective_timeout_s(s) for s in (1, 2, 5)] == [300.0, 100.0, 100.0]
        given = [*TITAN, "--comm.init_timeout_seconds", "40", "--comm.train_timeout_seconds=7"]
        run = planned(["--fake-max-steps", "5", *given])
        assert [run.collective_timeout_s(s) for s in (1, 2)] == [40.0, 7.0]

    def test_torchtitan_resumed_keeps_the_init_timeout(self) -> None:
        """train.py lowers the timeout only when self.step == 1: a run resumed later never does."""
        run = planned(["--fake-max-steps", "5", "--fake-start-step", "4", *TITAN])
        assert run.collective_timeout_s(6) == 300.0

    def test_torchtitan_config_file(self, tmp_path: Path) -> None:
        """The [comm] table of a --job.config_file."""
        config = tmp_path / "c.toml"
        config.write_text("[training]\nsteps = 20\n[comm]\ntrain_timeout_seconds = 15\n")
        run = planned(["--fake-max-steps", "5", "-m", "torchtitan.train", "--job.config_file", str(config)])
        assert run.collective_timeout_s(3) == 15.0

    @pytest.mark.parametrize("argv", [TITAN, ["pretrain_gpt.py", "--distributed-timeout-minutes", "3"]])
    def test_fakerun_option_overrides(self, argv: list[str]) -> None:
        """--fake-nccl-timeout sets every step's, whatever the framework or the script says."""
        run = planned(["--fake-max-steps", "5", "--fake-nccl-timeout", "1m30s", *argv])
        assert [run.collective_timeout_s(s) for s in (1, 2)] == [90.0, 90.0]

    @pytest.mark.parametrize(
        "argv",
        [
            ["pretrain_gpt.py", "--distributed-timeout-minutes", "0"],
            ["run_clm.py", "--ddp_timeout", "ten"],
            [*TITAN, "--comm.train_timeout_seconds", "-5"],
        ],
    )
    def test_bad_values(self, argv: list[str]) -> None:
        """A timeout that is no positive integer is the script's argument error, one line."""
        with pytest.raises(JobConfigError, match=r"timeout"):
            planned(argv)
