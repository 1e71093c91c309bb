"""llm.c's command line (train_gpt2.cu main()'s argument loop and error_usage), the model its -e names and the
tokens of the data its -i/-j patterns name."""

from __future__ import annotations

import dataclasses
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "USAGE",
    "Args",
    "ProgramExit",
    "Shape",
    "UsageError",
    "assertion",
    "c_float",
    "data_files",
    "data_tokens",
    "from_settings",
    "model_shape",
    "parse_args",
    "to_settings",
]

# error_usage()'s fprintf(stderr, ...) lines, verbatim (its -pm/-pp lines name flags the loop spells -pi/-pf).
USAGE = """\
Usage:   ./train_gpt2cu [options]
Options:
  -i <string> train data filename pattern (default = dev/data/tinyshakespeare/tiny_shakespeare_train.bin)
  -j <string> val data filename pattern (default = dev/data/tinyshakespeare/tiny_shakespeare_val.bin)
  -e <string> input .bin filename or descriptor, see code comments as docs. (default = gpt2_124M_bf16.bin)
  -o <string> output log dir (default = NULL, no logging)
  -lg <int>   log gpu info every x steps (default = -1; disabled)
  -n <int>    write optimization checkpoints every how many steps? (default 0, don't)
  -nk <int>   max number of checkpoints to keep in the directory, removing old ones (0 = disable, default)
  -nm <int>   every how many step checkpoints are considered major? major checkpoints never get deleted.
  -y <int>    resume optimization found inside output log dir? (0=restart/overwrite, 1=resume/append)
  -b <int>    (per-GPU, micro) batch size B (default = 4)
  -t <int>    sequence length T (default = 1024)
  -d <int>    total desired batch size (default = B * T * num_processes, i.e. no grad accumulation
  -x <int>    max_steps of optimization to run (-1 (default) = disable, run 1 epoch)
  -k <string> learning rate scheduler (default = cosine)
  -l <float>  learning rate (default = 3e-4f)
  -u <int>    learning rate warmup iterations (default = 0, no warmup)
  -q <float>  learning rate decay: final fraction, at end of training (default = 1.0 (no decay))
  -c <float>  weight decay (default = 0.0f)
  -sl <float> outlier stability: skip update if loss goes above this in zscore (0.0f=off)
  -sg <float> outlier stability: skip update if grad_norm goes above this in zscore (0.0f=off)
  -v <int>    val_loss_every, how often we evaluate val loss (default = 20)
  -m <int>    val_max_steps, up to how many val batches to estimate val loss? (default = 20)
  -s <int>    sample_every, how often we inference the model (default = 20)
  -g <int>    genT, how many steps of inference we do (default = 64)
  -h <int>    hellaswag eval run? (default = 0)
  -a <int>    overfit a single batch? 0/1. useful for debugging
  -f <int>    enable_tf32 override (default: 1, set to 0 to disable tf32)
  -w <int>    keep f32 copy of weights for the optimizer? (default: 1)
  -ge <int>   gelu fusion: 0=none, 1=forward, 2=forward+backward (default: 2 for >=SM90, 0 for older GPUs)
  -z <int>    zero_stage, Zero Optimization Stage, 0,1,2,3 (default = 0)
  -r <int>    recompute: less memory but less speed. (default = 1), 0|1|2 = none,gelu,gelu+ln
  -pn <int>    num_processes (default = 1)
  -pr <int>    process_rank (default = 0)
  -pg <int>    gpus_per_node (default = 8)
  -pm <string> nccl_init_method: tcp,fs,mpi (default = mpi)
  -ps <string> server_ip - used only when nccl_init_method is tcp (default = -1)
  -pp <string> fs_path - used only when nccl_init_method is fs (default = /tmp)
"""


class UsageError(ValueError):
    """A command line train_gpt2.cu's loop refuses: it calls error_usage(), which prints USAGE and exits 1."""


class ProgramExit(ValueError):
    """train_gpt2cu dies at start: its message (with its newlines) on stderr, then exit(1), or abort() after a
    failed assert (`signal`)."""

    def __init__(self, text: str, *, signal: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.signal = signal


@dataclass(frozen=True)
class Args:
    """main()'s variables after its argument loop, with its defaults (floats as C's float holds them)."""

    train_data_pattern: str = "dev/data/tinyshakespeare/tiny_shakespeare_train.bin"
    val_data_pattern: str = "dev/data/tinyshakespeare/tiny_shakespeare_val.bin"
    load_filename: str = "gpt2_124M_bf16.bin"
    lr_scheduler_type: str = "cosine"
    output_log_dir: str = ""  # "" is main()'s NULL: no -o
    checkpoint_every: int = 0
    checkpoints_keep: int = 0
    major_checkpoint_every: int = 0
    resume: int = 0
    micro_batch: int = 4  # B
    seq_len: int = 1024  # T
    total_batch_size: int = -1  # -1: B * T * num_processes
    learning_rate: float = 3e-4
    log_gpu_every: int = -1
    warmup_iterations: int = 0
    final_learning_rate_frac: float = 1.0
    weight_decay: float = 0.0
    skip_update_lossz: float = 0.0
    skip_update_gradz: float = 0.0
    val_loss_every: int = 20
    val_max_steps: int = 20
    sample_every: int = 20
    gen_t: int = 64
    overfit_single_batch: int = 0
    max_steps: int = -1
    override_enable_tf32: int = 1
    use_master_weights: int = 1
    gelu_fusion: int = -1  # -1: main() sets 0
    recompute: int = 1
    zero_stage: int = 0
    hellaswag_eval: int = 0
    num_processes: int = 1
    process_rank: int = 0
    gpus_per_node: int = 8
    nccl_init_method: str = "mpi"
    server_ip: str = ""
    fs_path: str = ""

    @property
    def train_pattern(self) -> str:
        """The split it trains on: -a 1 trains on the val split (main() swaps the patterns)."""
        return self.val_data_pattern if self.overfit_single_batch == 1 else self.train_data_pattern

    def __post_init__(self) -> None:
        # C stores -l, -q, -c, -sl, -sg in floats: the table prints the float32 value (0.1 -> 1.000000e-01).
        for f in ("learning_rate", "final_learning_rate_frac", "weight_decay"):
            object.__setattr__(self, f, _f32(getattr(self, f)))
        for f in ("skip_update_lossz", "skip_update_gradz"):
            object.__setattr__(self, f, _f32(getattr(self, f)))


_INT_RE = re.compile(r"[ \t\n\v\f\r]*([+-]?\d+)")
_FLOAT_RE = re.compile(
    r"[ \t\n\v\f\r]*([+-]?(?:0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?\d+)?"
    r"|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan))",
    re.IGNORECASE,
)
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


def atoi(text: str) -> int:
    """glibc's atoi: (int) strtol(text, NULL, 10): leading digits, 0 if none; strtol saturates at the long
    range and the cast to int keeps the low 32 bits."""
    m = _INT_RE.match(text)
    if m is None:
        return 0
    n = max(-(2**63), min(2**63 - 1, int(m[1])))
    n &= 0xFFFFFFFF
    return n - 2**32 if n > _INT_MAX else n


def atof(text: str) -> float:
    """glibc's atof: strtod's longest leading number (decimal, hex, inf, nan), 0.0 if none."""
    m = _FLOAT_RE.match(text)
    if m is None:
        return 0.0
    s = m[1]
    if s.lstrip("+-")[:2].lower() == "0x":
        return float.fromhex(s if "p" in s.lower() else s + "p0")
    return float(s)


def _f32(x: float) -> float:
    """x as a C float holds it (overflow to infinity, as the conversion does)."""
    if math.isfinite(x) and abs(x) >= 3.4028235677973366e38:
        return math.copysign(math.inf, x)
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def c_float(x: float, spec: str) -> str:
    """C printf of a float: nan and inf as glibc prints them (`nan`, `-nan`, `inf`)."""
    if math.isnan(x):
        return ("+nan" if "+" in spec else "nan") if math.copysign(1.0, x) > 0 else "-nan"
    if math.isinf(x):
        text = ("+inf" if "+" in spec else "inf") if x > 0 else "-inf"
        width = re.match(r"[-+]?(\d*)", spec.lstrip("<>"))
        return text.rjust(int(width[1])) if width and width[1] else text
    return format(x, spec)


# (first letter, second letter or "" for none, field, kind); the loop's if/else chain in its order: the first
# row whose letters match the flag wins ("" as second letter: the flag is those letters alone; None: any).
_FLAGS: tuple[tuple[str, str | None, str, str], ...] = (
    ("i", None, "train_data_pattern", "str"),
    ("j", None, "val_data_pattern", "str"),
    ("e", None, "load_filename", "str"),
    ("o", None, "output_log_dir", "str"),
    ("n", "", "checkpoint_every", "int"),
    ("y", None, "resume", "int"),
    ("b", None, "micro_batch", "int"),
    ("t", None, "seq_len", "int"),
    ("d", None, "total_batch_size", "int"),
    ("l", "", "learning_rate", "float"),
    ("l", "g", "log_gpu_every", "int"),
    ("u", None, "warmup_iterations", "int"),
    ("q", None, "final_learning_rate_frac", "float"),
    ("c", None, "weight_decay", "float"),
    ("x", None, "max_steps", "int"),
    ("v", None, "val_loss_every", "int"),
    ("m", None, "val_max_steps", "int"),
    ("s", "", "sample_every", "int"),
    ("g", "e", "gelu_fusion", "int"),
    ("g", None, "gen_t", "int"),
    ("a", None, "overfit_single_batch", "int"),
    ("f", None, "override_enable_tf32", "int"),
    ("w", None, "use_master_weights", "int"),
    ("z", None, "zero_stage", "int"),
    ("r", None, "recompute", "int"),
    ("h", None, "hellaswag_eval", "int"),
    ("k", None, "lr_scheduler_type", "str"),
    ("p", "i", "nccl_init_method", "str"),
    ("p", "f", "fs_path", "str"),
    ("p", "s", "server_ip", "str"),
    ("p", "n", "num_processes", "int"),
    ("p", "r", "process_rank", "int"),
    ("p", "g", "gpus_per_node", "int"),
    ("s", "l", "skip_update_lossz", "float"),
    ("s", "g", "skip_update_gradz", "float"),
    ("n", "k", "checkpoints_keep", "int"),
    ("n", "m", "major_checkpoint_every", "int"),
)


def parse_args(argv: Sequence[str]) -> Args:
    """The loop over argv[1:] in pairs; UsageError where it calls error_usage()."""
    values: dict[str, object] = {}
    i = 0
    while i < len(argv):
        flag = argv[i]
        if i + 1 >= len(argv):
            raise UsageError(f"{flag!r} has no value after it")
        # The C string ends at a NUL: argv[i][2] of a two-letter flag is '\0'.
        if not flag.startswith("-"):
            raise UsageError(f"{flag!r} does not start with a dash")
        if len(flag.encode()) not in (2, 3):
            raise UsageError(f"{flag!r} is not a dash and one or two letters")
        first, second = flag[1:2], flag[2:3]
        row = next((r for r in _FLAGS if r[0] == first and (r[1] is None or r[1] == second)), None)
        if row is None:
            raise UsageError(f"{flag!r} is no option of train_gpt2.cu")
        _, _, name, kind = row
        text = argv[i + 1]
        values[name] = atoi(text) if kind == "int" else atof(text) if kind == "float" else text
        i += 2
    return Args(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Shape:
    """The GPT-2 (or GPT-3) shape train_gpt2.cu builds: GPT2Config's fields."""

    layers: int
    heads: int
    channels: int
    max_seq_len: int
    vocab: int = 50257
    padded_vocab: int = 50304  # gpt_build_from_descriptor: 50257 padded to a multiple of 128

    def num_parameters(self) -> int:
        """fill_in_parameter_sizes summed: wte, wpe, the L blocks' 12 tensors, the final LayerNorm."""
        c, vp, t, L = self.channels, self.padded_vocab, self.max_seq_len, self.layers
        return vp * c + t * c + L * (12 * c * c + 13 * c) + 2 * c


# gpt2_set_hyperparameters: depth -> (channels, heads); max_seq_len 1024.
GPT2_DEPTHS = {
    6: (384, 6),
    12: (768, 12),
    24: (1024, 16),
    36: (1280, 20),
    48: (1600, 25),
    60: (1920, 30),
    72: (2880, 30),
    84: (3456, 36),
}
# gpt3_set_hyperparameters: channels -> (depth, head size); max_seq_len 2048.
GPT3_CHANNELS = {
    384: (6, 64),
    768: (12, 64),
    1024: (24, 64),
    1536: (24, 96),
    2048: (24, 128),
    2560: (32, 80),
    4096: (32, 128),
    5140: (40, 128),
    12288: (96, 128),
}
# The GPT-2 checkpoints train_gpt2.py writes (gpt2_124M_bf16.bin ...): the size in the name -> depth.
_GPT2_FILES = {"124M": 12, "350M": 24, "774M": 36, "1558M": 48}
_GPT2_FILE = re.compile(r"gpt2_(\d+M)(_bf16)?\.bin$")


def model_shape(load_filename: str) -> Shape:
    """The model -e names: a checkpoint file (.bin) or a descriptor (d12, gpt2:d48, gpt3:c768); ProgramExit
    with the program's message where it refuses one."""
    if load_filename.endswith(".bin") and len(load_filename) >= 4:
        m = _GPT2_FILE.search(load_filename)
        if m is not None and m[2] is None:
            # version 3 (fp32) weights in a BF16 build: gpt2_build_from_checkpoint's check.
            raise ProgramExit(
                f"Precision is configured as BF16 but model at {load_filename} is not.\n"
                "---> HINT: are you sure you're loading a _bf16.bin file?\n"
            )
        # Another .bin (an llm.c model_*.bin checkpoint): its header is not at hand; GPT-2 124M's shape.
        depth = _GPT2_FILES.get(m[1], 12) if m is not None else 12
        channels, heads = GPT2_DEPTHS[depth]
        return Shape(depth, heads, channels, 1024)
    if len(load_filename) > 1 and load_filename.startswith("d"):
        return _gpt2(load_filename[1:])
    if len(load_filename) > 6 and load_filename.startswith("gpt2:d"):
        return _gpt2(load_filename[6:])
    if len(load_filename) > 6 and load_filename.startswith("gpt3:c"):
        channels = atoi(load_filename[6:])
        if channels <= 0:
            raise assertion("channels > 0", 543, "void gpt3_set_hyperparameters(GPT2Config*, const char*)")
        if channels not in GPT3_CHANNELS:
            raise ProgramExit(f"Unsupported GPT-3 channels: {channels}\n")
        depth, head_size = GPT3_CHANNELS[channels]
        return Shape(depth, channels // head_size, channels, 2048)
    raise ProgramExit(f"Unsupported model descriptor: {load_filename}\n")


def _gpt2(depth_text: str) -> Shape:
    """gpt2_set_hyperparameters of the depth text after the prefix."""
    depth = atoi(depth_text)
    if depth <= 0:
        raise assertion("depth > 0", 521, "void gpt2_set_hyperparameters(GPT2Config*, const char*)")
    if depth not in GPT2_DEPTHS:
        raise ProgramExit(f"Unsupported GPT-2 depth: {depth}\n")
    channels, heads = GPT2_DEPTHS[depth]
    return Shape(depth, heads, channels, 1024)


def assertion(expr: str, line: int, function: str) -> ProgramExit:
    """A failed assert() of train_gpt2.cu (its line in karpathy/llm.c f1e2ace): glibc's message, SIGABRT."""
    text = f"train_gpt2cu: train_gpt2.cu:{line}: {function}: Assertion `{expr}' failed.\n"
    return ProgramExit(text, signal=True)


# (train, val) GPT-2 tokens of the data sets llm.c's dev/data scripts write, by the folder a pattern names
# (longest names first: edu_fineweb10B before fineweb10B). tinyshakespeare and tinystories: the counts their
# scripts print; FineWeb: 1e8-token shards, the first one val; the 10B train count lies where
# scripts/run_gpt2_124M.sh's 18,865 steps of 524,288 tokens (one epoch, no -x) put it; the other FineWeb
# samples' train counts are their nominal sizes less the val shard (estimates).
_DATA: tuple[tuple[str, int, int], ...] = (
    ("edu_fineweb100B", 99_900_000_000, 100_000_000),
    ("edu_fineweb10B", 9_891_000_000, 100_000_000),
    ("fineweb100B", 99_900_000_000, 100_000_000),
    ("fineweb10B", 9_891_000_000, 100_000_000),
    ("tinystories", 925_653_391, 19_043_638),
    ("TinyStories", 925_653_391, 19_043_638),
    ("tinyshakespeare", 305_260, 32_768),
    ("tiny_shakespeare", 305_260, 32_768),
)


def data_tokens(pattern: str, *, val: bool) -> int | None:
    """Tokens in the split the pattern names (DataLoader's num_tokens), None for data llm.c does not write."""
    for folder, train_tokens, val_tokens in _DATA:
        if folder in pattern:
            return val_tokens if val else train_tokens
    return None


# dev/data/fineweb.py's --shard_size default: 1e8 tokens a file, the last one the remainder.
FINEWEB_SHARD_TOKENS = 10**8


def data_files(pattern: str, *, val: bool) -> int:
    """Files the pattern's glob matches (DataLoader's len(self.files)): a FineWeb split's 1e8-token shards
    when the pattern is a glob, else the one file it names."""
    tokens = data_tokens(pattern, val=val)
    if tokens is None or "fineweb" not in pattern.lower() or not any(c in pattern for c in "*?["):
        return 1
    return math.ceil(tokens / FINEWEB_SHARD_TOKENS)


# main()'s HellaSwag eval file (run only with -h 1 and when it exists).
HELLASWAG = "dev/data/hellaswag/hellaswag_val.bin"
_PREFIX = "llmc."


def to_settings(args: Args) -> dict[str, str]:
    """The arguments as Hints.settings (text), for the dialect to print."""
    # Floats by repr (it round-trips), the rest as they are.
    return {f"{_PREFIX}{f.name}": _text(getattr(args, f.name)) for f in dataclasses.fields(Args)}


def _text(value: object) -> str:
    """A field's value as settings text."""
    return repr(value) if isinstance(value, float) else str(value)


def from_settings(settings: Mapping[str, str]) -> Args | None:
    """The arguments to_settings wrote, None when the job's settings hold none (another script's)."""
    values: dict[str, object] = {}
    for f in dataclasses.fields(Args):
        text = settings.get(f"{_PREFIX}{f.name}")
        if text is None:
            return None
        default = getattr(Args(), f.name)
        if isinstance(default, str):
            values[f.name] = text
        elif isinstance(default, int):
            values[f.name] = int(text)
        else:
            values[f.name] = float(text)
    return Args(**values)  # type: ignore[arg-type]
