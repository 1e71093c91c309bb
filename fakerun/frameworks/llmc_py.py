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


class ScriptExit(Exception):
    """train_gpt2.py dies: what it writes on stderr and its exit code."""

    def __init__(self, text: str, code: int) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class _Parser(argparse.ArgumentParser):
    """The script's parser: its errors as ScriptExit (argparse's usage and message, exit 2), not an exit."""

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise ScriptExit(message or "", status)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ScriptExit(f"{self.format_usage()}{self.prog}: error: {message}\n", 2)


def _parser(prog: str) -> argparse.ArgumentParser:
    """main()'s add_argument calls (types and defaults; help text does not reach the log)."""
    p = _Parser(prog=prog, add_help=True)
    for name, value in Args().__dict__.items():
        p.add_argument(f"--{name}", type=type(value), default=value)
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
