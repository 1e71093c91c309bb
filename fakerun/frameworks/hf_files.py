"""What HF Trainer (transformers 4.50) writes: checkpoint-N/ directories and the script's final save_model."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from fakerun.dialects.files import Artifact, Removal, SaveRequest, safetensors_files
from fakerun.frameworks import hf_results
from fakerun.sim import checkpoint
from fakerun.sim.run import RunPlan

__all__ = [
    "TRANSFORMERS_VERSION",
    "artifacts",
    "best_step",
    "checkpoint_files",
    "config_json",
    "export_files",
    "rotated",
    "save_pretrained",
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
_TRUE = ("true", "1", "yes", "y", "t")


def _json(value: object) -> str:
    """JSON as transformers writes its config and state files: indent 2, sorted keys, a final newline."""
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


# (config.json's torch_dtype, safetensors' dtype) of 16-bit weights (a trainer that exports in bf16).
BF16 = ("bfloat16", "BF16")


def _dtype(request: SaveRequest) -> tuple[str, str]:
    """(config.json's torch_dtype, safetensors' dtype) of the saved weights: the dtype the model trains in
    (fp32 under the Trainer's AMP, unless --torch_dtype loaded it in 16 bits)."""
    if request.run.job.state_layout == "bf16":
        return "bfloat16", "BF16"
    return "float32", "F32"


def config_json(request: SaveRequest, dtype: tuple[str, str] | None = None) -> str:
    """config.json as save_pretrained writes it: the model's config with its architectures, dtype (the
    weights' as trained, or `dtype`) and the transformers version that wrote it."""
    model = request.run.job.model
    cfg: dict[str, Any] = json.loads(model.hf_config) if model.hf_config else checkpoint.preset_config(model)
    cfg.setdefault(
        "architectures", ["GPT2LMHeadModel" if cfg["model_type"] == "gpt2" else "LlamaForCausalLM"]
    )
    cfg["torch_dtype"] = (dtype or _dtype(request))[0]
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


def save_pretrained(
    directory: str, request: SaveRequest, dtype: tuple[str, str] | None = None
) -> list[Artifact]:
    """save_pretrained's files (rank 0): config.json, generation_config.json, the weights in the training
    dtype (or `dtype`, as _dtype gives it), the tokenizer's."""
    if request.rank != 0:
        return []
    chosen = dtype or _dtype(request)
    return [
        Artifact.text(f"{directory}/config.json", config_json(request, chosen)),
        Artifact.text(f"{directory}/generation_config.json", _generation_config(request)),
        *safetensors_files(directory, request, dtype=chosen[1]),
        *_tokenizer_files(directory, request),
    ]


def _model_dir(directory: str, request: SaveRequest) -> list[Artifact]:
    """Trainer.save_model's files (rank 0): save_pretrained's and the pickled TrainingArguments."""
    if request.rank != 0:
        return []
    return [
        *save_pretrained(directory, request),
        Artifact(f"{directory}/training_args.bin", _TRAINING_ARGS_BYTES, _ZIP),
    ]


def _metric(settings: Mapping[str, str]) -> str | None:
    """The metric the Trainer tracks for the best checkpoint, when the simulation knows it:
    metric_for_best_model ("loss" by default under load_best_model_at_end, TrainingArguments.__post_init__),
    the evaluation loss, or the accuracy of a script whose compute_metrics reports one."""
    metric = settings.get("metric_for_best_model")
    if metric is None:
        return "loss" if loads_best(settings) else None
    name = metric.removeprefix("eval_")
    if name == "loss" or (name == "accuracy" and hf_results.eval_accuracy(settings, 1.0, 1, 2) is not None):
        return name
    return None


def _evals(run: RunPlan, step: int) -> range:
    """The steps up to `step` after which the eval strategy evaluates."""
    return range(run.eval_interval, step + 1, run.eval_interval) if run.eval_interval > 0 else range(0)


def best_step(run: RunPlan, settings: Mapping[str, str], step: int) -> tuple[float | None, int | None]:
    """TrainerState's (best_metric, best_global_step) after `step`: the best evaluation figure so far and its
    step (greater_is_better: False for a loss, np.less, True otherwise, np.greater: either keeps the first of
    equal ones); best_global_step only under save_strategy "steps" or "epoch" (_determine_best_metric)."""
    metric = _metric(settings)
    if metric is None:
        return None, None
    best: tuple[float, int] | None = None
    for s in _evals(run, step):
        value = float(hf_results.periodic_eval(run, settings, s)[f"eval_{metric}"])
        if best is None or (value < best[0] if metric == "loss" else value > best[0]):
            best = (value, s)
    if best is None:
        return None, None
    saves = settings.get("save_strategy", "steps") in ("steps", "epoch")
    return best[0], best[1] if saves else None


def loads_best(settings: Mapping[str, str]) -> bool:
    """--load_best_model_at_end: train() loads the best checkpoint back once its loop is over."""
    return settings.get("load_best_model_at_end", "false").lower() in _TRUE


def best_checkpoint(run: RunPlan, settings: Mapping[str, str], step: int) -> tuple[str, float] | None:
    """TrainerState's (best_model_checkpoint, best_metric) after `step`: the best evaluation's checkpoint
    while rotation has kept it (os.path.join of --output_dir as given), None when there is none."""
    metric, best = best_step(run, settings, step)
    if metric is None or best is None or not run.saves or best not in _rotation(run, settings, step)[0]:
        return None
    return f"{output_dir(settings)}/checkpoint-{best}", metric


def _root(settings: Mapping[str, str]) -> str:
    """--output_dir as Trainer's glob of it spells its paths (pathlib: no `./`, no trailing slash)."""
    return str(PurePath(output_dir(settings)))


def _saved(run: RunPlan, step: int) -> list[int]:
    """The steps with a checkpoint-N/ by the save after `step` (that one included), rotation aside."""
    steps = list(range(run.save_interval, step, run.save_interval)) if run.save_interval > 0 else []
    return [*steps, step]


def _rotation(run: RunPlan, settings: Mapping[str, str], step: int) -> tuple[list[int], list[int]]:
    """(the checkpoints on disk after the save at `step`, those its _rotate_checkpoints deleted): every save
    so far replayed through Trainer._sorted_checkpoints and _rotate_checkpoints (save_total_limit; the best
    checkpoint moved up to second newest, and a limit of 1 kept at 2 while the newest is not the best)."""
    limit = int(settings.get("save_total_limit") or 0)
    kept: list[int] = []
    deleted: list[int] = []
    best_dir: int | None = None
    for s in _saved(run, step):
        kept.append(s)
        best = best_step(run, settings, s)[1]
        if best is not None and best in kept:  # _save_checkpoint: only a best checkpoint that exists
            best_dir = best
        if limit <= 0 or len(kept) <= limit:
            deleted = []
            continue
        order = sorted(kept)
        if best_dir is not None and best_dir in order:
            for i in range(order.index(best_dir), len(order) - 2):
                order[i], order[i + 1] = order[i + 1], order[i]
        keep = 2 if best_dir is not None and limit == 1 and order[-1] != best_dir else limit
        deleted = order[: max(0, len(order) - keep)]
        kept = [k for k in kept if k not in deleted]
    return kept, deleted


def rotated(run: RunPlan, settings: Mapping[str, str], step: int) -> list[str]:
    """The checkpoint-N/ directories the Trainer deletes after its save at `step` (save_total_limit), oldest
    first, as its log names them."""
    root = _root(settings)
    return [f"{root}/checkpoint-{s}" for s in _rotation(run, settings, step)[1]]


def ended_rotation(run: RunPlan, settings: Mapping[str, str], step: int) -> list[str]:
    """The checkpoints train() deletes once over when save_total_limit is 1 and a best checkpoint is kept:
    every one but the best (a run that saved at all)."""
    if not run.saves or run.save_interval <= 0 or int(settings.get("save_total_limit") or 0) != 1:
        return []
    kept, _ = _rotation(run, settings, max(s for s in _saved(run, step) if s <= step))
    best = best_step(run, settings, step)[1]
    if best is None or best not in kept:
        return []
    root = _root(settings)
    return [f"{root}/checkpoint-{s}" for s in sorted(kept) if s != best]


def trainer_state(request: SaveRequest) -> str:
    """trainer_state.json at this save: TrainerState's fields and the log history of its logging steps and
    evaluations (the figures the run printed), as TrainerState.save_to_json writes it; the script's
    save_state() after train() adds train()'s own final record."""
    run, job, step, settings = request.run, request.run.job, request.step, request.settings
    history = hf_results.log_history(run, settings, step)
    epoch = step / run.steps_per_epoch
    stopped = request.stopped
    if request.kind == "export" and stopped is not None:
        history.append({**hf_results.train_record(stopped, epoch), "step": step})
    best_metric, best_global = best_step(run, settings, step)
    best_dir = (best_checkpoint(run, settings, step) or (None, None))[0]
    state = {
        "best_global_step": best_global,
        "best_metric": best_metric,
        "best_model_checkpoint": best_dir,
        "epoch": epoch,
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
        "total_flos": hf_results.total_flos(job, step - job.start_step),
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


def _results(path: str, metrics: Mapping[str, float | int]) -> Artifact:
    """A save_metrics file: json.dump with indent 4 and sorted keys (no final newline)."""
    return Artifact.text(path, json.dumps(metrics, indent=4, sort_keys=True))


def export_files(directory: str, request: SaveRequest) -> list[Artifact | Removal]:
    """From rank 0, the script's end: train()'s last rotation, trainer.save_model() (the model, its config and
    tokenizer, training_args.bin), save_metrics("train") (train_results.json, all_results.json) and
    save_state() (trainer_state.json), then with --do_eval save_metrics("eval") (eval_results.json, and
    all_results.json with both)."""
    if request.rank != 0:
        return []
    run, settings, step = request.run, request.settings, request.step
    files: list[Artifact | Removal] = [Removal(p) for p in ended_rotation(run, settings, step)]
    files += _model_dir(directory, request)
    results: dict[str, float | int] = {}
    stopped = request.stopped
    if stopped is not None:
        train = hf_results.train_results(
            hf_results.train_record(stopped, step / run.steps_per_epoch),
            run.dataset_tokens // run.job.seq_len,
        )
        results |= train
        files += [
            _results(f"{directory}/train_results.json", train),
            _results(f"{directory}/all_results.json", results),
        ]
    files.append(Artifact.text(f"{directory}/trainer_state.json", trainer_state(request)))
    if run.end_eval:
        evaluation = hf_results.final_eval(run, settings, step)
        results |= evaluation
        files += [
            _results(f"{directory}/eval_results.json", evaluation),
            _results(f"{directory}/all_results.json", results),
        ]
    return files


def output_dir(settings: Mapping[str, str]) -> str:
    """--output_dir as given (TrainingArguments' default when absent), without a trailing slash."""
    return str(settings.get("output_dir", DEFAULT_OUTPUT_DIR)).rstrip("/") or "/"


def artifacts(request: SaveRequest) -> Sequence[Artifact | Removal]:
    """This rank's files of an HF Trainer save: checkpoint-N/ for a periodic save, then (rank 0, the process
    that saves) the checkpoints save_total_limit rotates out; --output_dir at the end."""
    root = output_dir(request.settings)
    if request.kind == "export":
        return export_files(root, request)
    files: list[Artifact | Removal] = [*checkpoint_files(f"{root}/checkpoint-{request.step}", request)]
    if request.rank == 0:
        files += [Removal(p) for p in rotated(request.run, request.settings, request.step)]
    return files
