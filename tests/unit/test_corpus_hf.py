"""HF example launch commands (tests/corpus/hf): the model, batch, schedule and precision they describe."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest

from fakerun import presets
from fakerun.cli import parse_command_line
from fakerun.dialects.files import SaveRequest
from fakerun.frameworks import hf_args, hf_files, hf_models
from fakerun.hints import Hints
from fakerun.jobconfig import build_run
from fakerun.sim import checkpoint, safetensors
from fakerun.sim.run import RunPlan

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
    nproc, script, args = command(name)
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
