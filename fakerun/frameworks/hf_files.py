"""What HF Trainer (transformers 4.50) writes: checkpoint-N/ directories and the script's final save_model."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from fakerun.dialects.files import Artifact, SaveRequest, hf_model_files
from fakerun.sim import checkpoint
from fakerun.sim.step import step_numbers

__all__ = [
    "TRANSFORMERS_VERSION",
    "artifacts",
    "checkpoint_files",
    "config_json",
    "export_files",
    "float32",
    "trainer_state",
]

TRANSFORMERS_VERSION = "4.50.0"
DEFAULT_OUTPUT_DIR = "trainer_output"
_DEFAULT_SAVE_STEPS = 500  # TrainingArguments.save_steps (kept in the state under save_strategy "no" too)
# torch.save's files of a checkpoint, by what they hold [mem: sizes of transformers 4.4x checkpoints]: the
# pickled TrainingArguments, LambdaLR's state, and one process's Python/NumPy/CPU/CUDA generator states.
_TRAINING_ARGS_BYTES = 5_496
_SCHEDULER_BYTES = 1_064
_RNG_BYTES = 14_960
_ZIP = b"PK\x03\x04"  # torch.save's zip container
# Adam's exp_avg and exp_avg_sq in fp32 for every trained parameter, plus the pickled param groups.
_ADAM_BYTES = 8
_OPTIMIZER_OVERHEAD = 1_500
_ZERO_TO_FP32_BYTES = 33_226  # DeepSpeed 0.16's utils/zero_to_fp32.py, copied beside each checkpoint
# GPT-2's tokenizer special token; most Llama-shaped repos name theirs in their config.json.
_GPT2_EOS = "<|endoftext|>"


def float32(x: float) -> float:
    """A value as a float32 tensor's .item() gives it back (fp32 losses and grad norms: 37.657958984375)."""
    if not math.isfinite(x) or abs(x) > 3.4e38:
        return x
    value: float = struct.unpack("f", struct.pack("f", x))[0]
    return value


def _json(value: object) -> str:
    """JSON as transformers writes its config and state files: indent 2, sorted keys, a final newline."""
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def _dtype(request: SaveRequest) -> tuple[str, str]:
    """(config.json's torch_dtype, safetensors' dtype) of the saved weights: the dtype the model trains in
    (fp32 under the Trainer's AMP, unless --torch_dtype loaded it in 16 bits)."""
    if request.run.job.state_layout == "bf16":
        return "bfloat16", "BF16"
    return "float32", "F32"


def config_json(request: SaveRequest) -> str:
    """config.json as save_pretrained writes it: the model's config with its architectures, dtype and the
    transformers version that wrote it."""
    model = request.run.job.model
    cfg: dict[str, Any] = json.loads(model.hf_config) if model.hf_config else checkpoint.preset_config(model)
    cfg.setdefault(
        "architectures", ["GPT2LMHeadModel" if cfg["model_type"] == "gpt2" else "LlamaForCausalLM"]
    )
    cfg["torch_dtype"] = _dtype(request)[0]
    cfg["transformers_version"] = TRANSFORMERS_VERSION
    cfg.setdefault("use_cache", True)
    return _json(cfg)


def _generation_config(request: SaveRequest) -> str:
    """generation_config.json from the model config's token ids."""
    cfg = json.loads(config_json(request))
    doc: dict[str, Any] = {"_from_model_config": True, "transformers_version": TRANSFORMERS_VERSION}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        if cfg.get(key) is not None:
            doc[key] = cfg[key]
    return _json(doc)


def _tokenizer_files(directory: str, request: SaveRequest) -> list[Artifact]:
    """tokenizer_config.json and special_tokens_map.json written whole; tokenizer.json at its size, sparse."""
    job = request.run.job
    special = {"bos_token": _GPT2_EOS, "eos_token": _GPT2_EOS, "unk_token": _GPT2_EOS}
    config = {
        **special,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "extra_special_tokens": {},
        "model_max_length": job.seq_len,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    return [
        Artifact.text(f"{directory}/special_tokens_map.json", _json(special)),
        Artifact(f"{directory}/tokenizer.json", 71 * job.model.vocab, b'{\n  "version": "1.0",\n'),
        Artifact.text(f"{directory}/tokenizer_config.json", _json(config)),
    ]


def _model_dir(directory: str, request: SaveRequest) -> list[Artifact]:
    """save_pretrained's files (rank 0): weights, config.json, generation_config.json, the tokenizer's."""
    if request.rank != 0:
        return []
    weights = [
        f
        for f in hf_model_files(directory, request, dtype=_dtype(request)[1])
        if f.path.endswith((".safetensors", ".index.json"))
    ]
    return [
        Artifact.text(f"{directory}/config.json", config_json(request)),
        Artifact.text(f"{directory}/generation_config.json", _generation_config(request)),
        *weights,
        *_tokenizer_files(directory, request),
        Artifact(f"{directory}/training_args.bin", _TRAINING_ARGS_BYTES, _ZIP),
    ]


def trainer_state(request: SaveRequest) -> str:
    """trainer_state.json at this save: TrainerState's fields and the log history of its logging steps
    (the losses, grad norms and learning rates the run printed), as TrainerState.save_to_json writes it."""
    run, job, step = request.run, request.run.job, request.step
    history = []
    for logged in range(run.log_interval, step + 1, run.log_interval):
        n = step_numbers(job, 0, logged)
        history.append(
            {
                "epoch": logged / run.steps_per_epoch,
                "grad_norm": float32(n.grad_norm),
                "learning_rate": n.lr,
                "loss": round(n.loss, 4),
                "step": logged,
            }
        )
    tokens = job.tokens_per_step * (step - job.start_step)
    state = {
        "best_metric": None,
        "best_model_checkpoint": None,
        "epoch": step / run.steps_per_epoch,
        "eval_steps": run.eval_interval or run.log_interval,
        "global_step": step,
        "is_hyper_param_search": False,
        "is_local_process_zero": True,
        "is_world_process_zero": True,
        "log_history": history,
        "logging_steps": run.log_interval,
        "max_steps": job.total_steps,
        "num_input_tokens_seen": 0,
        "num_train_epochs": run.epochs,
        "save_steps": run.save_interval or _DEFAULT_SAVE_STEPS,
        "stateful_callbacks": {
            "TrainerControl": {
                "args": {
                    "should_epoch_stop": False,
                    "should_evaluate": False,
                    "should_log": False,
                    "should_save": True,
                    "should_training_stop": step >= run.last_step,
                },
                "attributes": {},
            }
        },
        # transformers' floating_point_ops: 6 x non-embedding parameters x tokens.
        "total_flos": 6.0 * (job.model.params - job.model.embedding_params()) * tokens,
        "train_batch_size": job.micro_batch,
        "trial_name": None,
        "trial_params": None,
    }
    return _json(state)


def _deepspeed_files(directory: str, request: SaveRequest) -> list[Artifact]:
    """DeepSpeed's engine.save_checkpoint under the Trainer: global_stepN/ with each rank's ZeRO optimizer
    partition, rank 0's model states, the `latest` tag and zero_to_fp32.py."""
    job, rank, step = request.run.job, request.rank, request.step
    tag = f"{directory}/global_step{step}"
    optim = checkpoint.OPTIMIZER_BYTES * job.trainable_params // job.world_size
    files = [Artifact(f"{tag}/bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", optim, _ZIP)]
    if rank == 0:
        weights = checkpoint.WEIGHT_BYTES * job.model.params if job.zero_stage < 3 else 0
        files += [
            Artifact(f"{tag}/mp_rank_00_model_states.pt", weights + _OPTIMIZER_OVERHEAD, _ZIP),
            Artifact.text(f"{directory}/latest", f"global_step{step}"),
            Artifact(f"{directory}/zero_to_fp32.py", _ZERO_TO_FP32_BYTES, b"#!/usr/bin/env python\n"),
        ]
    return files


def checkpoint_files(directory: str, request: SaveRequest) -> list[Artifact]:
    """Trainer._save_checkpoint's files in `directory` (checkpoint-N): the model (rank 0), the optimizer
    (rank 0 under DDP, every rank's partition under DeepSpeed), the scheduler, trainer_state.json, and each
    rank's RNG state (rng_state_R.pth; rng_state.pth for a single process)."""
    job, rank = request.run.job, request.rank
    files = _model_dir(directory, request)
    if request.run.deepspeed is not None:
        files += _deepspeed_files(directory, request)
    elif rank == 0:
        files.append(
            Artifact(
                f"{directory}/optimizer.pt", _ADAM_BYTES * job.trainable_params + _OPTIMIZER_OVERHEAD, _ZIP
            )
        )
    if rank == 0:
        files += [
            Artifact(f"{directory}/scheduler.pt", _SCHEDULER_BYTES, _ZIP),
            Artifact.text(f"{directory}/trainer_state.json", trainer_state(request)),
        ]
    name = f"rng_state_{rank}.pth" if request.world_size > 1 else "rng_state.pth"
    files.append(Artifact(f"{directory}/{name}", _RNG_BYTES, _ZIP))
    return files


def export_files(directory: str, request: SaveRequest) -> list[Artifact]:
    """The script's trainer.save_model() (the model, its config and tokenizer, training_args.bin) and
    trainer.save_state() (trainer_state.json), in --output_dir, from rank 0."""
    if request.rank != 0:
        return []
    return [
        *_model_dir(directory, request),
        Artifact.text(f"{directory}/trainer_state.json", trainer_state(request)),
    ]


def output_dir(settings: Mapping[str, str]) -> str:
    """--output_dir as given (TrainingArguments' default when absent), without a trailing slash."""
    return str(settings.get("output_dir", DEFAULT_OUTPUT_DIR)).rstrip("/") or "/"


def artifacts(request: SaveRequest) -> Sequence[Artifact]:
    """This rank's files of an HF Trainer save: checkpoint-N/ for a periodic save, --output_dir at the end."""
    root = output_dir(request.settings)
    if request.kind == "checkpoint":
        return checkpoint_files(f"{root}/checkpoint-{request.step}", request)
    return export_files(root, request)
