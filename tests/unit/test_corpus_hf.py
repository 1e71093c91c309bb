"""HF example launch commands (tests/corpus/hf): the model, batch, schedule and precision they describe."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from fakerun import presets
from fakerun.cli import parse_command_line
from fakerun.dialects.base import Line
from fakerun.dialects.events import CheckpointSaved, JobStarted, TrainingStopped, WorkerStarted
from fakerun.dialects.files import Artifact, Removal, SaveRequest
from fakerun.dialects.hf import HfDialect
from fakerun.frameworks import hf_args, hf_files, hf_models, hf_results, hf_script, pytrace
from fakerun.frameworks.hf_results import float32, logged_numbers
from fakerun.frameworks.pytrace import RANK_SLOT
from fakerun.hints import Hints
from fakerun.jobconfig import build_run
from fakerun.sim import checkpoint, loss, lossscale, safetensors
from fakerun.sim.run import RunPlan
from tests.unit.test_dialect_hf import seat as dialect_seat

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "hf"

# Published parameter counts (model cards, model.num_parameters() of the released checkpoints).
PUBLISHED = {
    "openai-community/gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "distilgpt2": 81_912_576,
    "EleutherAI/pythia-70m": 70_426_624,
    "EleutherAI/pythia-160m": 162_322_944,
    "EleutherAI/pythia-410m": 405_334_016,
    "EleutherAI/pythia-1.4b": 1_414_647_808,
    "EleutherAI/pythia-12b": 11_846_072_320,
    "EleutherAI/gpt-neo-125m": 125_198_592,
    "EleutherAI/gpt-j-6b": 6_050_882_784,
    "facebook/opt-125m": 125_239_296,
    "facebook/opt-350m": 331_196_416,
    "facebook/opt-1.3b": 1_315_758_080,
    "bigscience/bloom-560m": 559_214_592,
    "Qwen/Qwen2.5-0.5B": 494_032_768,
    "Qwen/Qwen2.5-7B": 7_615_616_512,
    "Qwen/Qwen3-0.6B": 596_049_920,
    "meta-llama/Llama-2-7b-hf": 6_738_415_616,
    "meta-llama/Meta-Llama-3-8B": 8_030_261_248,
    "meta-llama/Llama-3.2-1B": 1_235_814_400,
    "mistralai/Mistral-7B-v0.1": 7_241_732_096,
    "mistralai/Mixtral-8x7B-v0.1": 46_702_792_704,
    "google/gemma-2b": 2_506_172_416,
    "google/gemma-2-2b": 2_614_341_888,
    "microsoft/phi-2": 2_779_683_840,
    "microsoft/Phi-3-mini-4k-instruct": 3_821_079_552,
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": 1_100_048_384,
    "HuggingFaceTB/SmolLM-135M": 134_515_008,
    "allenai/OLMo-1B-hf": 1_176_764_416,
    "google-t5/t5-small": 60_506_624,
    "google/flan-t5-base": 247_577_856,
}


def gpt2_params(layers: int, hidden: int, vocab: int, positions: int) -> int:
    """GPT-2's count: per block two LayerNorms, c_attn, c_proj, c_fc, c_proj (with biases); wte, wpe, ln_f."""
    block = 2 * 2 * hidden + (3 * hidden * hidden + 3 * hidden) + (hidden * hidden + hidden)
    block += (4 * hidden * hidden + 4 * hidden) + (4 * hidden * hidden + hidden)
    return layers * block + vocab * hidden + positions * hidden + 2 * hidden


def command(name: str) -> tuple[int, str, list[str]]:
    """(nproc per node, script, its arguments) of the torchrun command in a corpus file."""
    text = (CORPUS / name).read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("torchrun"))
    words = shlex.split(line)
    at = next(i for i, w in enumerate(words) if w.endswith(".py"))
    nproc = int(words[words.index(next(w for w in words if w.startswith("--nproc"))) + 1])
    return nproc, words[at], words[at + 1 :]


def plan(name: str) -> tuple[RunPlan, Hints]:
    """build_run on a corpus command, as the launcher runs it (one node)."""
    return plan_of(*command(name))


def plan_of(nproc: int, script: str, args: list[str]) -> tuple[RunPlan, Hints]:
    """build_run on a script and its arguments, `nproc` ranks on one node."""
    cmd = parse_command_line(["--nproc-per-node", str(nproc), script, *args], {})
    bundle = presets.resolve("llama3-8b", None, None)
    return build_run(cmd, bundle, nnodes=1, nproc_per_node=nproc, model_given=False)


@pytest.fixture(autouse=True)
def _in_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CORPUS)  # the commands name their files relative to where they are launched


@pytest.mark.parametrize(("name", "count"), PUBLISHED.items())
def test_published_counts(name: str, count: int) -> None:
    """Every known checkpoint simulates its published parameter count, and its run_clm.py block size."""
    resolved = hf_models.resolve(name)
    assert resolved.model is not None and resolved.model.params == count
    assert resolved.model.seq_len <= 1024


def test_gpt2_formula() -> None:
    """gpt2 and distilgpt2 against GPT-2's own count, from its blocks (and the published figures)."""
    assert PUBLISHED["openai-community/gpt2"] == gpt2_params(12, 768, 50257, 1024)
    assert PUBLISHED["distilgpt2"] == gpt2_params(6, 768, 50257, 1024)


def test_pythia_clm() -> None:
    """Per-device 4 x 2 GPUs x accumulation 2; 10% warm-up of 200 steps; linear to 0; 1024-token blocks."""
    run, hints = plan("clm_pythia.sh")
    job = run.job
    assert job.model.params == 162_322_944 and hints.notices == ()
    assert (job.micro_batch, job.grad_accum, job.global_batch) == (4, 2, 4 * 2 * 2)
    assert (job.total_steps, job.warmup_steps, job.lr, job.lr_schedule) == (200, 20, 3e-4, "linear")
    assert job.min_lr == 0.0 and job.seq_len == 1024 and job.zero_stage == 0
    assert run.save_interval == 500 and not run.end_eval  # no --do_eval: no evaluation


def test_json_arguments_file() -> None:
    """TrainingArguments from the sole JSON argument: the Trainer's defaults fill the rest."""
    run, hints = plan("clm_qwen.sh")
    job = run.job
    assert job.model.params == 494_032_768
    assert (job.micro_batch, job.grad_accum, job.global_batch, job.seq_len) == (2, 1, 2 * 4, 512)
    assert (job.total_steps, job.warmup_steps, job.lr_schedule, job.lr) == (100, 0, "cosine", 2e-5)
    assert run.save_interval == 0 and not run.save_at_stop  # save_strategy "no"
    assert hints.settings["report_to"] == "none" and job.state_layout == "bf16"


def test_t5_translation() -> None:
    """An encoder-decoder: its exact count as one stack, said in one launcher notice; --fp16."""
    run, hints = plan("translation_t5.sh")
    assert run.job.model.params == 60_506_624 and run.job.precision == "fp16"
    assert run.job.global_batch == 16 * 2 and run.job.seq_len == 512
    (notice,) = hints.notices
    assert "encoder-decoder" in notice and "60,506,624" in notice


def test_trl_yaml_recipe() -> None:
    """TRL's --config YAML, the command line's learning rate over the file's; LoRA from the recipe."""
    run, _ = plan("sft_trl.sh")
    job = run.job
    assert job.model.params == 134_515_008 and job.lr == 1e-5
    assert (job.micro_batch, job.grad_accum, job.global_batch) == (8, 4, 8 * 2 * 4)
    assert (job.lora_rank, job.lora_targets, job.total_steps) == (8, ("q_proj", "v_proj"), 50)
    assert run.log_interval == 5


def test_local_checkpoint() -> None:
    """A directory's config.json is read as from_pretrained reads it; --block_size sets the context."""
    run, hints = plan("clm_local.sh")
    assert run.job.model.params == gpt2_params(2, 128, 1000, 256)
    assert run.job.seq_len == 128 and hints.notices == ()


def test_deepspeed_auto() -> None:
    """A DeepSpeed config of "auto" values: ZeRO-2 from it, the batch from the Trainer's arguments."""
    run, _ = plan("clm_deepspeed.sh")
    job = run.job
    assert job.model.params == PUBLISHED["openai-community/gpt2"] and job.zero_stage == 2
    assert (job.micro_batch, job.grad_accum, job.global_batch) == (4, 2, 4 * 2 * 2)
    assert run.deepspeed is not None


def test_model_type_from_scratch() -> None:
    """--model_type gpt2 without a checkpoint: GPT2Config()'s model, pre-training."""
    run, hints = plan("clm_scratch.sh")
    assert run.job.model.params == PUBLISHED["openai-community/gpt2"] and hints.regime == "pretrain"
    assert hints.notices == ()


def test_unknown_name_with_size() -> None:
    """An unknown repo with a size suffix: a Llama-shaped model of about that size, said once."""
    run, hints = plan("clm_unknown.sh")
    assert abs(math.log(run.job.model.params / 3e9)) < 0.25
    (notice,) = hints.notices
    assert "my-lab/domain-llm-3b" in notice and f"{run.job.model.params:,}" in notice


def test_unknown_size_in_family() -> None:
    """A family member of a size never published: the family's shape (Pythia: MHA, untied, biases)."""
    model = hf_models.resolve("EleutherAI/pythia-5b").model
    assert model is not None and model.family == "gpt_neox" and model.bias == "all"
    assert not model.tied_embeddings and abs(math.log(model.params / 5e9)) < 0.15


def test_no_model_named() -> None:
    """Nothing to go on: the default model, named in one notice."""
    cmd = parse_command_line(["--nproc-per-node", "2", "run_clm.py", "--output_dir", "x"], {})
    bundle = presets.resolve("llama3-8b", None, None)
    run, hints = build_run(cmd, bundle, nnodes=1, nproc_per_node=2, model_given=False)
    notice, data = hints.notices  # and no data named either: its size is assumed, and said
    assert run.job.model.display_name in notice and "--model_name_or_path" in notice
    assert "training data's size is unknown" in data and f"{run.job.total_steps:,} steps" in data


def test_yaml_reader() -> None:
    """Flat YAML as yaml.safe_load reads TrainingArguments files: numbers, booleans, lists, comments."""
    values = hf_args.read_yaml((CORPUS / "sft_trl.yaml").read_text())
    assert values["learning_rate"] == 2.0e-4 and values["use_peft"] is True
    assert values["lora_target_modules"] == ["q_proj", "v_proj"] and values["report_to"] == "none"


def test_checkpoint_files() -> None:
    """checkpoint-N/: rank 0 the model (fp32 under AMP), optimizer, state; every rank its RNG state."""
    run, hints = plan("clm_pythia.sh")
    request = SaveRequest(run, hints.settings, 100, 0, 2, "checkpoint")
    files = {f.path: f for f in hf_files.artifacts(request)}
    root = "runs/pythia-160m-wikitext/checkpoint-100"
    weights = files[f"{root}/model.safetensors"]
    tensors = list(checkpoint.hf_tensor_shapes(run.job.model))
    assert weights.size == len(safetensors.header(tensors, "F32")) + 4 * 162_322_944
    assert weights.head[8:].startswith(b'{"__metadata__"')
    config = json.loads(files[f"{root}/config.json"].head)
    assert config["model_type"] == "gpt_neox" and config["torch_dtype"] == "float32"
    state = json.loads(files[f"{root}/trainer_state.json"].head)
    assert state["global_step"] == 100 and state["max_steps"] == 200
    assert [e["step"] for e in state["log_history"]] == list(range(run.log_interval, 101, run.log_interval))
    assert f"{root}/rng_state_0.pth" in files and f"{root}/optimizer.pt" in files
    other = [f.path for f in hf_files.artifacts(SaveRequest(run, hints.settings, 100, 1, 2, "checkpoint"))]
    assert other == [f"{root}/rng_state_1.pth"]
    export = {f.path for f in hf_files.artifacts(SaveRequest(run, hints.settings, 200, 0, 2, "export"))}
    assert "runs/pythia-160m-wikitext/trainer_state.json" in export
    assert "runs/pythia-160m-wikitext/model.safetensors" in export


def request(run: RunPlan, settings: dict[str, str], step: int, rank: int = 0, **kw: Any) -> SaveRequest:
    """One rank's save request of a 2-rank job."""
    return SaveRequest(run, settings, step, rank, 2, kw.pop("kind", "checkpoint"), **kw)


def rotation_run(save: int = 3, evals: int = 3) -> RunPlan:
    """The Pythia command, 12 steps, saving every `save` and evaluating every `evals`."""
    run, _ = plan("clm_pythia.sh")
    return dataclasses.replace(run, save_interval=save, eval_interval=evals, last_step=12, log_interval=3)


class TestRotation:
    """--save_total_limit: Trainer._rotate_checkpoints after each save (transformers 4.50's trainer.py)."""

    def test_the_newest_n_stay(self) -> None:
        """Limit 2, a save every 3 steps: each save past the second deletes the one two saves back, from
        rank 0 (the process that saves), after writing its own checkpoint."""
        run, settings = rotation_run(), {"output_dir": "./out/", "save_total_limit": "2"}
        for step in (3, 6):
            assert not [f for f in hf_files.artifacts(request(run, settings, step)) if isinstance(f, Removal)]
        for step in (9, 12):
            files = hf_files.artifacts(request(run, settings, step))
            assert files[-1] == Removal(f"out/checkpoint-{step - 6}")  # pathlib's spelling: no ./
            assert all(isinstance(f, Artifact) for f in files[:-1])
            assert not [
                f for f in hf_files.artifacts(request(run, settings, step, 1)) if isinstance(f, Removal)
            ]

    def test_the_best_checkpoint_is_kept(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """load_best_model_at_end (metric: the eval loss): the best checkpoint survives besides the newest;
        with a limit of 1 the newest stays too, and train()'s end deletes all but the best."""
        losses = {3: 2.5, 6: 2.0, 9: 2.2, 12: 2.1}  # the best at step 6
        monkeypatch.setattr(hf_results, "eval_loss", lambda job, step: losses[step])
        run = rotation_run()
        settings = {"output_dir": "out", "save_total_limit": "1", "load_best_model_at_end": "true"}
        assert hf_files.rotated(run, settings, 6) == ["out/checkpoint-3"]
        assert hf_files.rotated(run, settings, 9) == []  # limit 1 held at 2: checkpoint-6 and -9
        assert hf_files.rotated(run, settings, 12) == ["out/checkpoint-9"]
        assert hf_files.ended_rotation(run, settings, 12) == ["out/checkpoint-12"]
        state = json.loads(hf_files.trainer_state(request(run, settings, 12)))
        assert (state["best_global_step"], state["best_metric"]) == (6, 2.0)
        assert state["best_model_checkpoint"] == "out/checkpoint-6"
        text = "Deleting older checkpoint [out/checkpoint-9] due to args.save_total_limit"
        dialect = HfDialect(dialect_seat(0))
        dialect.render(JobStarted(run=run, first=True, resume=False, settings=tuple(settings.items())), 0.0)
        (line,) = dialect.render(
            CheckpointSaved(step=12, path="", nbytes=1, seconds=1.0, bandwidth_gbs=1.0), 0.0
        )
        assert isinstance(line, Line) and line.text.endswith(text) and "[INFO|trainer.py:4065]" in line.text
        # train()'s end loads it back (trainer.py:2903 in 4.50.0), right after `Training completed.`
        stopped = TrainingStopped(12, "reached max steps", 80.0, 12, 96, 2.25, 4.0e13)
        lines = [o.text for o in dialect.render(stopped, 0.0) if isinstance(o, Line) and o.stream == "stderr"]
        assert "Training completed." in lines[0]
        assert lines[1].endswith(" >> Loading best model from out/checkpoint-6 (score: 2.0).")
        assert "[INFO|trainer.py:2903]" in lines[1]

    def test_best_accuracy(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """metric_for_best_model accuracy (run_clm.py reports one): greater is better, so the best is the
        evaluation with the lowest loss, and best_metric its accuracy."""
        losses = {3: 2.5, 6: 2.0, 9: 2.2, 12: 2.1}
        monkeypatch.setattr(hf_results, "eval_loss", lambda job, step: losses[step])
        run = rotation_run()
        settings = {"output_dir": "out", "metric_for_best_model": "accuracy", "hf.script": "run_clm.py"}
        accuracy = hf_results.periodic_eval(run, settings, 6)["eval_accuracy"]
        assert hf_files.best_step(run, settings, 12) == (accuracy, 6)
        assert hf_files.best_checkpoint(run, settings, 12) == ("out/checkpoint-6", accuracy)
        assert hf_files.best_step(run, {**settings, "hf.script": "sft.py"}, 12) == (None, None)


class TestEndFiles:
    """run_clm.py's end: save_model, save_metrics("train"), save_state, then with --do_eval
    save_metrics("eval"): the figures the log printed."""

    def test_results_and_state(self) -> None:
        """train_results.json from the step loop's end (speed_metrics' rounding), eval_results.json with the
        perplexity of its loss, all_results.json both, trainer_state.json's evaluations and final record."""
        run = dataclasses.replace(rotation_run(), end_eval=True)
        settings = {"output_dir": "out"}
        stopped = TrainingStopped(12, "reached max steps", 80.0, 12, 96, 2.25, 4.0e13)
        files = {
            f.path: json.loads(f.head)
            for f in hf_files.artifacts(request(run, settings, 12, kind="export", stopped=stopped))
            if isinstance(f, Artifact) and f.path.endswith(("results.json", "trainer_state.json"))
        }
        train = files["out/train_results.json"]
        assert train["train_samples_per_second"] == round(96 / 80.0, 3)
        assert train["train_steps_per_second"] == round(12 / 80.0, 3)
        assert (train["train_runtime"], train["train_loss"], train["total_flos"]) == (80.0, 2.25, 4.0e13)
        assert train["epoch"] == 12 / run.steps_per_epoch
        assert train["train_samples"] == 2318  # len(train_dataset): WikiText-2's blocks, whatever max_steps
        evaluation = files["out/eval_results.json"]
        final_loss = float32(loss.eval_loss(run.job, 12))
        assert evaluation["eval_loss"] == final_loss and evaluation["perplexity"] == math.exp(final_loss)
        assert evaluation["eval_samples"] == run.eval_iters * 8 * 2  # the default eval batch on 2 ranks
        assert files["out/all_results.json"] == {**train, **evaluation}
        history = files["out/trainer_state.json"]["log_history"]
        evals = [e for e in history if "eval_loss" in e]
        assert [e["step"] for e in evals] == [3, 6, 9, 12]
        assert [e["eval_loss"] for e in evals] == [float32(loss.eval_loss(run.job, s)) for s in (3, 6, 9, 12)]
        assert history[-1] == {**{k: v for k, v in train.items() if k != "train_samples"}, "step": 12}

    def test_save_model_writes_no_checkpoint(self) -> None:
        """The export is --output_dir's files only (save_model writes no checkpoint-N/)."""
        run, hints = plan("clm_pythia.sh")
        paths = [f.path for f in hf_files.artifacts(SaveRequest(run, hints.settings, 200, 0, 2, "export"))]
        assert paths and not [p for p in paths if "checkpoint-" in p]


def test_sixteen_bits_line() -> None:
    """run_clm.py's `16-bits training: {training_args.fp16}`: True with --fp16, False with --bf16."""
    for name, expected in (("translation_t5.sh", "True"), ("clm_pythia.sh", "False")):
        run, hints = plan(name)
        dialect = HfDialect(dialect_seat(1))
        dialect.render(
            JobStarted(run=run, first=True, resume=False, settings=tuple(hints.settings.items())), 0.0
        )
        (line,) = dialect.render(WorkerStarted(host="h", local_rank=1, world_size=2, pid=1), 0.0)
        assert isinstance(line, Line) and line.text.endswith(f"16-bits training: {expected}")


def test_epochs_over_wikitext() -> None:
    """No --max_steps: TrainingArguments' 3 epochs over WikiText-2's 2,318 blocks of 1,024 tokens (the
    `Num examples` of published run_clm.py runs): 1,159 per rank in batches of 8, 145 steps an epoch."""
    run, hints = plan("clm_scratch.sh")
    per_epoch = math.ceil(math.ceil(2318 / 2) / 8)
    assert run.job.total_steps == 3 * per_epoch and run.epochs == 3 and run.steps_per_epoch == per_epoch
    assert hints.notices == ()


def test_max_steps_epochs_over_wikitext() -> None:
    """--max_steps 200 over WikiText-2's 2,318 blocks, 4 a rank on 2 ranks, accumulating 2: 290 batches a
    rank, 145 updates an epoch (set_initial_training_values), so num_train_epochs = ceil(200 / 145) = 2 and
    the logged epoch is the step over 145."""
    run, _ = plan("clm_pythia.sh")
    per_epoch = math.ceil(math.ceil(2318 / 2) / 4) // 2
    assert (run.job.total_steps, run.steps_per_epoch, run.epochs) == (200, per_epoch, 2)
    assert run.dataset_tokens // run.job.seq_len == 2318  # the block's Num examples


def test_deepspeed_auto_filled() -> None:
    """The config deepspeed.initialize gets: its "auto" values from the Trainer's arguments (--bf16, the
    batch, max_grad_norm's 1.0)."""
    run, _ = plan("clm_deepspeed.sh")
    assert run.deepspeed is not None and run.deepspeed.precision == "bf16"
    config = run.deepspeed.user_config()
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (4, 2)
    assert config["train_batch_size"] == 4 * 2 * 2 and config["gradient_clipping"] == 1.0
    assert config["bf16"] == {"enabled": True}


FP16_CLM = [
    *("--model_name_or_path", "EleutherAI/pythia-160m", "--per_device_train_batch_size", "4"),
    *("--max_steps", "12", "--do_train", "--fp16", "--output_dir", "out"),
]


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_fp16_grad_scaler(seed: int) -> None:
    """--fp16 without DeepSpeed: accelerate's torch.amp.GradScaler (init_scale 2**16, backoff 0.5 at every
    overflow, growth after 2000 clean steps). Its early overflows halve the scale one each and keep the linear
    schedule where it was (optimizer_step_was_skipped: no lr_scheduler.step), so the logged lr is the
    schedule's at the updates done: its peak while none is, never 0 before the last step."""
    run, _ = plan_of(2, "run_clm.py", [*FP16_CLM, "--seed", str(seed)])
    job = run.job
    assert (job.initial_loss_scale, job.hysteresis, job.loss_scale_window) == (2.0**16, 1, 2000)
    peak = job.lr
    for step in range(1, 13):
        skipped = lossscale.loss_scale(job, job.seed, step).skipped
        assert lossscale.loss_scale(job, job.seed, step).scale == 2.0**16 / 2**skipped
        done = step - skipped
        expected = peak * (1 - done / 12) if done else peak  # get_linear_schedule_with_warmup, no warmup
        assert logged_numbers(job, step).lr == pytest.approx(expected, rel=1e-12)
        assert logged_numbers(job, step).lr > 0 or step == 12


DS_FIXED = {
    "train_micro_batch_size_per_gpu": 8,
    "train_batch_size": 32,
    "gradient_accumulation_steps": 2,
    "gradient_clipping": 1.0,
    "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95], "weight_decay": 0.1}},
    "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_max_lr": "auto", "total_num_steps": 1000}},
    "bf16": {"enabled": True},
}
DS_ARGS = [
    *("--model_name_or_path", "gpt2", "--deepspeed", "ds_fixed.json", "--per_device_train_batch_size", "4"),
    *("--gradient_accumulation_steps", "2", "--max_steps", "30", "--bf16", "--learning_rate", "3e-4"),
]


class TestDeepSpeedMismatch:
    """A config value that is neither "auto" nor the arguments' own: trainer_config_finalize's ValueError on
    every rank, listing each as fill_match found it, in trainer_config_process's then finalize's order."""

    @pytest.fixture(autouse=True)
    def _config(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        (tmp_path / "ds_fixed.json").write_text(json.dumps(DS_FIXED))
        monkeypatch.chdir(tmp_path)

    def test_message(self) -> None:
        _, hints = plan_of(2, "run_clm.py", DS_ARGS)
        assert hints.script_exit is not None
        text, code = hints.script_exit
        lines = [line.removeprefix(f"[rank{RANK_SLOT}]: ") for line in text.splitlines()]
        assert code == 1 and all(line.startswith(f"[rank{RANK_SLOT}]: ") for line in text.splitlines())
        at = lines.index(
            "ValueError: Please correct the following DeepSpeed config values that mismatch "
            "TrainingArguments values:"
        )
        # world 2 x micro 4 x accumulation 2 = 16; betas and weight decay are TrainingArguments' defaults,
        # 30 steps and no warmup the run's; the lr, clipping and accumulation agree and are not listed.
        assert lines[at + 1 :] == [
            "- ds train_micro_batch_size_per_gpu=8 vs hf per_device_train_batch_size=4",
            "- ds train_batch_size=32 vs hf train_batch_size (calculated)=16",
            "- ds optimizer.params.betas=[0.9, 0.95] vs hf adam_beta1+adam_beta2=[0.9, 0.999]",
            "- ds optimizer.params.weight_decay=0.1 vs hf weight_decay=0.0",
            "- ds scheduler.params.total_num_steps=1000 vs hf num_training_steps (calculated)=30",
            "The easiest method is to set these DeepSpeed config values to 'auto'.",
        ]
        # transformers 4.50.0's frames below the script's call, innermost last.
        places = re.findall(r'File "[^"]*/(transformers/[\w/.]+)", line (\d+), in (\w+)', text)
        assert places == [
            ("transformers/trainer.py", "2245", "train"),
            ("transformers/trainer.py", "2322", "_inner_training_loop"),
            ("transformers/integrations/deepspeed.py", "450", "deepspeed_init"),
            ("transformers/integrations/deepspeed.py", "271", "trainer_config_finalize"),
        ]

    def test_world_size_decides_the_batch(self) -> None:
        """At 4 ranks the calculated batch is 4 x 4 x 2 = 32, the config's: that line goes."""
        _, hints = plan_of(4, "run_clm.py", DS_ARGS)
        assert hints.script_exit is not None
        assert "train_batch_size (calculated)" not in hints.script_exit[0]
        assert "train_micro_batch_size_per_gpu=8" in hints.script_exit[0]

    def test_arguments_that_agree(self) -> None:
        """The same values given as arguments: nothing to refuse, and the config keeps them."""
        args = [
            *DS_ARGS,
            *("--adam_beta2", "0.95", "--weight_decay", "0.1", "--max_steps", "1000"),
            *("--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2"),
        ]
        run, hints = plan_of(2, "run_clm.py", args)
        assert hints.script_exit is None and run.deepspeed is not None
        assert run.deepspeed.user_config()["train_batch_size"] == 32


def test_script_frames_read_from_the_script(tmp_path: Path) -> None:
    """The script's own frames come from its file: the line numbers and source where its main() calls
    trainer.train() and where the module calls main(), as Python prints them."""
    body = ["import sys", "", "", "def main():", "    trainer = make()", "    result = trainer.train()  # go"]
    script = tmp_path / "train_lm.py"
    script.write_text("\n".join([*body, "", "", 'if __name__ == "__main__":', "    main()", ""]))
    top, call = hf_script.main_frames(str(script))
    assert (top.path, top.line, top.function, top.source) == (str(script), 10, "<module>", "main()")
    assert (call.line, call.function, call.marked) == (6, "main", "trainer.train()")
    text = pytrace.traceback_text([top, call], "ValueError: x")
    assert "    result = trainer.train()  # go\n             ^^^^^^^^^^^^^^^\n" in text


class TestEvalAccuracy:
    """run_clm.py's compute_metrics (evaluate's accuracy over next-token predictions): eval_accuracy right
    after eval_loss in every evaluation's metrics; scripts without compute_metrics have none."""

    def test_next_token_accuracy(self) -> None:
        run, hints = plan("clm_pythia.sh")
        settings = {**hints.settings, "output_dir": "out"}
        metrics = hf_results.final_eval(run, settings, 12)
        assert list(metrics)[:2] == ["eval_loss", "eval_accuracy"]
        # correct predictions over the scored tokens: every block's positions but its last
        scored = metrics["eval_samples"] * (run.job.seq_len - 1)
        correct = metrics["eval_accuracy"] * scored
        assert abs(correct - round(correct)) < 1e-6 and 0 < correct < scored
        periodic = hf_results.periodic_eval(run, settings, 6)
        assert "eval_accuracy" in periodic

    def test_published_points(self) -> None:
        """The two published run_clm.py evaluations (loss 2.3305: accuracy 0.5375; 2.4644: 0.5212) within a
        percent; lower losses score higher."""
        settings = {"hf.script": "run_clm.py"}
        for loss_value, published in ((2.330519199371338, 0.5374923472925482), (2.464402675628662, 0.5212)):
            accuracy = hf_results.eval_accuracy(settings, loss_value, 280, 1024)
            assert accuracy == pytest.approx(published, rel=0.01)
        values = [hf_results.eval_accuracy(settings, x / 2, 16, 1024) or 0.0 for x in range(1, 24)]
        assert values == sorted(values, reverse=True)

    def test_which_scripts(self) -> None:
        for script, scored in (("run_clm.py", True), ("run_mlm.py", True), ("sft.py", False)):
            accuracy = hf_results.eval_accuracy({"hf.script": script}, 2.0, 16, 512)
            assert (accuracy is not None) == scored, script
