"""Hugging Face Trainer: its logging dicts and evaluation dicts from rank 0."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from fakerun.dialects.base import HintRule, Line, Output, words
from fakerun.dialects.events import EvalDone, Event, StepDone
from fakerun.dialects.fakerun import FakerunDialect

# Options only HF Trainer scripts spell so (either spelling: HfArgumentParser accepts both).
HINTS = HintRule(
    script=re.compile(
        r"run_(clm|mlm|plm|fim|glue|qa|seq2seq|summarization|translation|ner|swag)|transformers"
    ),
    options=words(
        "model_name_or_path per_device_train_batch_size per_gpu_train_batch_size per_device_eval_batch_size "
        "gradient_accumulation_steps num_train_epochs lr_scheduler_type warmup_ratio deepspeed fsdp "
        "output_dir overwrite_output_dir do_train do_eval logging_steps save_steps save_strategy "
        "eval_strategy evaluation_strategy report_to model_max_length max_seq_length block_size "
        "dataset_name train_file save_total_limit logging_dir run_name gradient_checkpointing"
    ),
    exact=frozenset({"seq_length"}),  # Megatron's is seq-length
    bool_words=True,
)


def log_dict(loss: float, grad_norm: float, lr: float, epoch: float) -> str:
    """HF Trainer's logging_steps line: a Python dict repr (loss rounded to 4, epoch to 2 decimals)."""
    record = {"loss": round(loss, 4), "grad_norm": grad_norm, "learning_rate": lr, "epoch": round(epoch, 2)}
    return repr(record)


def eval_dict(loss: float, runtime_s: float, samples: int, steps: int, epoch: float) -> str:
    """HF Trainer's evaluation line."""
    record = {
        "eval_loss": loss,
        "eval_runtime": round(runtime_s, 4),
        "eval_samples_per_second": round(samples / runtime_s, 3),
        "eval_steps_per_second": round(steps / runtime_s, 3),
        "epoch": round(epoch, 2),
    }
    return repr(record)


class HfDialect(FakerunDialect):
    """HF Trainer's dicts on rank 0; the rest of the run still in fakerun's events (until it has its own)."""

    name: ClassVar[str] = "hf"
    hints: ClassVar[HintRule] = HINTS
    grid: ClassVar[bool] = False  # the grid is fakerun's own: --fake-grid shows it

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """HF's form of the step and evaluation events (rank 0); fakerun's for the others."""
        if isinstance(event, StepDone):
            if self.seat.rank != 0:
                return ()
            n = event.numbers
            out: list[Output] = [self.step_bar(event)]
            if event.logged:
                out.append(Line(log_dict(n.loss, n.grad_norm, n.lr, event.epoch)))
            return out
        if isinstance(event, EvalDone):
            if self.seat.rank != 0:
                return ()
            return [Line(eval_dict(event.loss, event.seconds, event.samples, event.iters, event.epoch))]
        return super().render(event, at)
