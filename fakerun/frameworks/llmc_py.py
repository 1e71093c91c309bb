"""llm.c's PyTorch reference, train_gpt2.py (karpathy/llm.c f1e2ace): its argparse, models and checks."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from fakerun.frameworks import pytrace

# (n_layer, n_head, n_embd) of --model: from_pretrained's GPT-2 checkpoints and main()'s scratch configs.
PRETRAINED = {
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
}
SCRATCH = {"d12": (12, 12, 768), "d24": (24, 16, 1024), "d36": (36, 20, 1280), "d48": (48, 25, 1600)}
VOCAB = 50257  # GPTConfig's vocab_size for every --model
BLOCK = 1024
# write_model's file names: model_to_size.
SIZE_NAMES = {"gpt2": "124M", "gpt2-medium": "355M", "gpt2-large": "774M", "gpt2-xl": "1558M"} | {
    d: d for d in SCRATCH
}


@dataclass(frozen=True)
class Args:
    """main()'s argparse namespace (the options the simulation and the log use)."""

    input_bin: str = "dev/data/tinyshakespeare/tiny_shakespeare_val.bin"
    input_val_bin: str = ""
    output_dir: str = ""
    model: str = "gpt2"
    batch_size: int = 4
    sequence_length: int = 64
    total_batch_size: int = 256
    num_iterations: int = 10
    inference_only: int = 0
    learning_rate: float = 1e-4
    warmup_iters: int = 0
    learning_rate_decay_frac: float = 1.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    val_loss_every: int = 0
    val_max_steps: int = 20
    sample_every: int = 0
    overfit_single_batch: int = 1
    tensorcores: int = 0
    device: str = ""
    compile: int = 0
    flash: int = 0
    dtype: str = "float32"
    zero_stage: int = 0
    write_tensors: int = 1


# main()'s help= texts, as -h prints them (typos included).
HELP = {
    "input_bin": "input .bin to train on",
    "input_val_bin": "input .bin to eval validation loss on",
    "output_dir": "output directory to which to write logs and checkpoints",
    "model": "gpt2|gpt2-medium|gpt2-large|gpt2-xl|d12|d24|d36|d48",
    "batch_size": "batch size, in units of #batch dimensions",
    "sequence_length": "sequence length",
    "total_batch_size": "total desired batch size, in units of #tokens",
    "num_iterations": "number of iterations to run",
    "inference_only": "only run inference",
    "learning_rate": "learning rate warmup iterations",
    "warmup_iters": "learning rate warmup iterations",
    "learning_rate_decay_frac": "learning rate warmup iterations",
    "weight_decay": "weight decay",
    "grad_clip": "maximum gradient magnitude",
    "val_loss_every": "every how mant steps to evaluate val loss?",
    "val_max_steps": "how many batches of val to average?",
    "sample_every": "how often to sample from the model?",
    "overfit_single_batch": "overfit just one batch of data",
    "tensorcores": "use tensorcores",
    "device": "by default we autodetect, or set it here",
    "compile": "torch.compile the model",
    "flash": "use flash attention",
    "dtype": "float32|float16|bfloat16",
    "zero_stage": "zero redundancy optimizer stage (0/1/2/3)",
    "write_tensors": "write tensors to disk",
}


class ScriptExit(Exception):
    """train_gpt2.py ends before its loop: what it writes on stderr, its exit code, and what it printed on
    stdout before (argparse's -h help)."""

    def __init__(self, text: str, code: int, stdout: str = "") -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.stdout = stdout


class _Parser(argparse.ArgumentParser):
    """The script's parser: its errors as ScriptExit (argparse's usage and message, exit 2), its help (-h)
    as ScriptExit's stdout with exit 0, not printed nor exited here."""

    printed = ""

    def _print_message(self, message: str, file: object = None) -> None:
        self.printed += message  # print_help()'s text, for stdout

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise ScriptExit(message or "", status, self.printed)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ScriptExit(f"{self.format_usage()}{self.prog}: error: {message}\n", 2)


def _parser(prog: str) -> argparse.ArgumentParser:
    """main()'s add_argument calls: types, defaults and help texts."""
    p = _Parser(prog=prog, add_help=True)
    for name, value in Args().__dict__.items():
        p.add_argument(f"--{name}", type=type(value), default=value, help=HELP[name])
    return p


def _assert(script: str, line: int, test: str, *, after_init: bool = False) -> ScriptExit:
    """A failed `assert` of main() (indented once, under `if __name__ == "__main__":`)."""
    frame = pytrace.Frame(script, line, source=f"    assert {test}", marked=test)
    return ScriptExit(pytrace.traceback_text([frame], "AssertionError", after_init=after_init), 1)


def parse(script: str, argv: list[str]) -> Args:
    """The parsed arguments, checked as main() checks them before init_process_group; ScriptExit if not."""
    path = os.path.abspath(script)
    ns = _parser(os.path.basename(script)).parse_args(argv)
    a = Args(**vars(ns))
    if not 1 <= a.sequence_length <= BLOCK:
        raise _assert(path, 582, "1 <= T <= 1024")
    if a.dtype not in ("float32", "float16", "bfloat16"):
        raise _assert(path, 583, 'args.dtype in {"float32", "float16", "bfloat16"}')
    if a.model not in PRETRAINED and a.model not in SCRATCH:
        models = '{"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "d12", "d24", "d36", "d48"}'
        raise _assert(path, 584, f"args.model in {models}")
    return a


def world_exit(script: str, a: Args, world_size: int) -> str | None:
    """`assert args.total_batch_size % tokens_per_fwdbwd == 0` (B * T * world size), after DDP's init."""
    if a.total_batch_size % (a.batch_size * a.sequence_length * world_size) == 0:
        return None
    return _assert(
        os.path.abspath(script), 623, "args.total_batch_size % tokens_per_fwdbwd == 0", after_init=True
    ).text


def shape(a: Args) -> tuple[int, int, int]:
    """(n_layer, n_head, n_embd) of the model --model names."""
    return PRETRAINED.get(a.model) or SCRATCH[a.model]
