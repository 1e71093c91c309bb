"""HF Trainer's figures that its log and its files both show: log_history records, train and eval metrics."""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING

from fakerun.sim import lossscale
from fakerun.sim.job import JobSpec
from fakerun.sim.loss import eval_loss
from fakerun.sim.run import RunPlan, eval_seconds
from fakerun.sim.step import StepNumbers, step_numbers

if TYPE_CHECKING:
    from fakerun.dialects.events import TrainingStopped

__all__ = [
    "DEFAULT_EVAL_BATCH",
    "eval_accuracy",
    "eval_batch",
    "eval_metrics",
    "eval_results",
    "eval_samples",
    "float32",
    "log_history",
    "logged_numbers",
    "step_record",
    "total_flos",
    "train_metrics",
    "train_record",
    "train_results",
]

# TrainingArguments.per_device_eval_batch_size's default.
DEFAULT_EVAL_BATCH = 8

Record = dict[str, float | int]


def float32(x: float) -> float:
    """A value as a float32 tensor's .item() gives it back (fp32 losses and grad norms: 37.657958984375)."""
    if not math.isfinite(x) or abs(x) > 3.4e38:
        return x
    value: float = struct.unpack("f", struct.pack("f", x))[0]
    return value


def total_flos(job: JobSpec, steps: int) -> float:
    """TrainerState.total_flos after `steps` optimizer steps: transformers' floating_point_ops, 6 x the
    non-embedding parameters x the tokens trained."""
    return 6.0 * (job.model.params - job.model.embedding_params()) * steps * job.tokens_per_step


def logged_numbers(job: JobSpec, step: int) -> StepNumbers:
    """A step's figures as the Trainer logs them (rank 0's; under --fp16, what the GradScaler's skipped
    steps leave of the lr and the loss)."""
    return lossscale.with_skips(job, step_numbers(job, 0, step))


def step_record(loss: float, grad_norm: float, lr: float, epoch: float) -> Record:
    """_maybe_log_save_evaluate's logs at a logging step (loss rounded to 4, an fp32 grad norm), then the
    epoch Trainer.log adds."""
    return {"loss": round(loss, 4), "grad_norm": float32(grad_norm), "learning_rate": lr, "epoch": epoch}


def _speed(split: str, runtime_s: float, samples: int, steps: int) -> Record:
    """trainer_utils.speed_metrics: the runtime to 4 decimals, the rates to 3."""
    return {
        f"{split}_runtime": round(runtime_s, 4),
        f"{split}_samples_per_second": round(samples / runtime_s, 3),
        f"{split}_steps_per_second": round(steps / runtime_s, 3),
    }


# The fraction of tokens each accuracy-computing example script scores (run_clm.py: every position but the
# last, against the next token; run_mlm.py: the masked ones, mlm_probability 0.15 by default).
_ACCURACY_SCRIPTS = {"run_clm.py": None, "run_mlm.py": 0.15}
# Token accuracy against the loss: exp(-k x loss). Published run_clm.py evaluations on WikiText-2 give
# k = -ln(accuracy) / loss = 0.2664 (loss 2.3305, accuracy 0.5375) and 0.2644 (2.4644, 0.5212): one constant
# fits both; it tends to 1 as the loss goes to 0 and gives GPT-2's ~0.42 at its fine-tuned loss of ~3.3.
_ACCURACY_K = 0.265


def eval_accuracy(settings: Mapping[str, str], loss: float, samples: int, seq_len: int) -> float | None:
    """compute_metrics' `accuracy` (evaluate's: correct / scored tokens) when the script computes one
    (run_clm.py, run_mlm.py), else None."""
    script = settings.get("hf.script", "")
    if script not in _ACCURACY_SCRIPTS or not math.isfinite(loss):
        return None
    share = _ACCURACY_SCRIPTS[script]
    scored = samples * (seq_len - 1) if share is None else max(1, round(samples * seq_len * share))
    return round(math.exp(-_ACCURACY_K * loss) * scored) / scored


def eval_metrics(
    loss: float, runtime_s: float, samples: int, steps: int, epoch: float, accuracy: float | None = None
) -> Record:
    """evaluate()'s metrics as Trainer.log records them: the fp32 loss, compute_metrics' accuracy (prefixed
    after the loss), speed_metrics, the epoch."""
    scored: Record = {} if accuracy is None else {"eval_accuracy": accuracy}
    return {"eval_loss": float32(loss), **scored, **_speed("eval", runtime_s, samples, steps), "epoch": epoch}


def train_metrics(
    runtime_s: float, samples: int, steps: int, loss: float, flos: float, epoch: float
) -> Record:
    """train()'s final metrics as Trainer.log records them (the progress bar's dict drops total_flos)."""
    return {
        **_speed("train", runtime_s, samples, steps),
        "total_flos": flos,
        "train_loss": loss,
        "epoch": epoch,
    }


def train_record(stopped: TrainingStopped, epoch: float) -> Record:
    """train()'s final metrics of a step loop that ended so (its runtime on the job's clock)."""
    runtime = max(stopped.runtime_s, 1e-3)
    return train_metrics(
        runtime, stopped.samples, stopped.steps, stopped.mean_loss, stopped.total_flos, epoch
    )


def train_results(metrics: Mapping[str, float | int], train_samples: int) -> Record:
    """train_results.json: run_clm.py's train metrics with its train_samples."""
    return {**metrics, "train_samples": train_samples}


def eval_results(metrics: Mapping[str, float | int], samples: int) -> Record:
    """eval_results.json: run_clm.py's evaluate() metrics with eval_samples and the perplexity of the loss."""
    try:
        perplexity = math.exp(metrics["eval_loss"])
    except OverflowError:
        perplexity = math.inf
    return {**metrics, "eval_samples": samples, "perplexity": perplexity}


def eval_samples(iters: int, eval_batch: int, world_size: int) -> int:
    """The evaluation set's examples: `iters` batches of the per-device eval batch on every rank."""
    return iters * eval_batch * world_size


def eval_batch(settings: Mapping[str, str]) -> int:
    """--per_device_eval_batch_size, or its default."""
    return int(settings.get("per_device_eval_batch_size", DEFAULT_EVAL_BATCH))


def periodic_eval(run: RunPlan, settings: Mapping[str, str], step: int) -> Record:
    """The metrics of the evaluation the eval strategy runs after `step` (the same loss and time the
    simulated job has there)."""
    job = run.job
    samples = eval_samples(run.eval_iters, eval_batch(settings), job.world_size)
    seconds = eval_seconds(job, run.eval_iters, step)
    value = eval_loss(job, step)
    accuracy = eval_accuracy(settings, value, samples, job.seq_len)
    return eval_metrics(value, seconds, samples, run.eval_iters, step / run.steps_per_epoch, accuracy)


def final_eval(run: RunPlan, settings: Mapping[str, str], step: int) -> Record:
    """eval_results.json of the script's evaluate() after training ended on `step` (the second pause
    there: sim/run.end_pauses)."""
    job = run.job
    samples = eval_samples(run.eval_iters, eval_batch(settings), job.world_size)
    seconds = eval_seconds(job, run.eval_iters, step, again=1)
    value = eval_loss(job, step)
    accuracy = eval_accuracy(settings, value, samples, job.seq_len)
    metrics = eval_metrics(value, seconds, samples, run.eval_iters, step / run.steps_per_epoch, accuracy)
    return eval_results(metrics, samples)


def log_history(run: RunPlan, settings: Mapping[str, str], step: int) -> list[Record]:
    """TrainerState.log_history up to `step`: each logging step's record, then that step's evaluation's,
    as Trainer.log appends them (with the global step)."""
    job = run.job
    logs = set(range(run.log_interval, step + 1, run.log_interval))
    evals = set(range(run.eval_interval, step + 1, run.eval_interval)) if run.eval_interval > 0 else set()
    out: list[Record] = []
    for s in sorted(logs | evals):
        if s in logs:
            n = logged_numbers(job, s)
            out.append({**step_record(n.loss, n.grad_norm, n.lr, s / run.steps_per_epoch), "step": s})
        if s in evals:
            out.append({**periodic_eval(run, settings, s), "step": s})
    return out
