"""nanoGPT (karpathy/nanoGPT train.py): its start-up prints on every rank, then iter/eval lines on rank 0."""

from __future__ import annotations

import ast
import json
import operator
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from fakerun.dialects.base import HintRule, Line, Output, Seat, words
from fakerun.dialects.events import (
    CheckpointSaving,
    EvalDone,
    Event,
    JobStarted,
    ModelBuilt,
    ParallelismDecided,
    StepDone,
    TrainingStarted,
)
from fakerun.dialects.files import Artifact, SaveRequest
from fakerun.frameworks import nanogpt_ckpt, pytrace
from fakerun.presets import ModelSpec
from fakerun.sim import estimates, loss
from fakerun.sim.job import JobSpec
from fakerun.sim.run import RunPlan


def in_checkout(script: str) -> bool:
    """Whether `script` is a nanoGPT checkout's train.py (beside its configurator.py and model.py): the
    README's bare `torchrun ... train.py` names no option of its own."""
    folder = os.path.dirname(os.path.abspath(script))
    return os.path.basename(script) == "train.py" and all(
        os.path.isfile(os.path.join(folder, name)) for name in ("configurator.py", "model.py")
    )


# train.py's globals that configurator.py lets `--key=value` override (and a config/*.py file argument).
HINTS = HintRule(
    script=re.compile(r"nanogpt"),
    # configurator.py takes `--key=value` only (`--batch_size 8` is an argparse script's spelling).
    exact=frozenset(
        f"{name}="
        for name in words(
            "batch_size block_size max_iters n_layer n_head n_embd warmup_iters lr_decay_iters decay_lr "
            "init_from out_dir eval_only always_save_checkpoint wandb_log wandb_project wandb_run_name "
            "dataset dropout weight_decay beta1 beta2 grad_clip compile backend dtype"
        )
    )
    | {"<config_py>"},
)
# train.py's default out_dir ('out'); the checkpoint is out/ckpt.pt.
OUT_DIR = "out"
# train.py's torch.manual_seed(1337 + seed_offset).
SEED = 1337
# train.py's best_val_loss before any evaluation (a resume takes the checkpoint's).
INITIAL_BEST = 1e9

# train.py's config globals before configurator.py runs (dtype: every simulated GPU supports bfloat16).
TRAIN_DEFAULTS: dict[str, object] = {
    "out_dir": "out",
    "eval_interval": 2000,
    "log_interval": 1,
    "eval_iters": 200,
    "eval_only": False,
    "always_save_checkpoint": True,
    "init_from": "scratch",
    "wandb_log": False,
    "wandb_project": "owt",
    "wandb_run_name": "gpt2",
    "dataset": "openwebtext",
    "gradient_accumulation_steps": 40,
    "batch_size": 12,
    "block_size": 1024,
    "n_layer": 12,
    "n_head": 12,
    "n_embd": 768,
    "dropout": 0.0,
    "bias": False,
    "learning_rate": 6e-4,
    "max_iters": 600000,
    "weight_decay": 1e-1,
    "beta1": 0.9,
    "beta2": 0.95,
    "grad_clip": 1.0,
    "decay_lr": True,
    "warmup_iters": 2000,
    "lr_decay_iters": 600000,
    "min_lr": 6e-5,
    "backend": "nccl",
    "device": "cuda",
    "dtype": "bfloat16",
    "compile": True,
}
# Other names in train.py's globals() when configurator.py runs: `--key=value` passes its `key in globals()`
# test for them, then fails the type assertion.
_MODULE_GLOBALS = words(
    "os time math pickle nullcontext np torch DDP init_process_group destroy_process_group GPTConfig GPT "
    "config_keys"
)
# GPT.from_pretrained's shapes (model.py): (n_layer, n_head, n_embd).
PRETRAINED = {
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
}
# README.md's "baselines" table: each GPT-2 checkpoint evaluated on OpenWebText (config/eval_gpt2*.py),
# (train loss, val loss). WebText is not OWT: fine-tuning GPT-2 (124M) on it brings it to ~2.85.
PRETRAINED_OWT_LOSSES = {
    "gpt2": (3.11, 3.12),
    "gpt2-medium": (2.85, 2.84),
    "gpt2-large": (2.66, 2.67),
    "gpt2-xl": (2.56, 2.54),
}
_BINOPS: dict[type[ast.operator], Callable[[object, object], object]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


# train.py's line that runs configurator.py (karpathy/nanoGPT 3adf61e): every configurator error passes it.
_EXEC_LINE = 77
_EXEC_SOURCE = "exec(open('configurator.py').read()) # overrides from command line or config file"
_EXEC_CALL = "exec(open('configurator.py').read())"
# configurator.py's lines, as the traceback of its exec'd text names them ("<string>", no source shown).
_CONF_NOT_FLAG, _CONF_OPEN, _CONF_EXEC, _CONF_FLAG, _CONF_SPLIT, _CONF_TYPE, _CONF_UNKNOWN = (
    23,
    26,
    28,
    31,
    32,
    42,
    47,
)
# train.py's check once init_process_group has run (torch's excepthook prefixes the traceback).
_ACCUM_LINE = 94
_ACCUM_TEST = "gradient_accumulation_steps % ddp_world_size == 0"


class ConfigError(ValueError):
    """What configurator.py (or the config file it execs) raises: what Python prints after the frames, and
    the configurator.py line its traceback shows."""

    def __init__(self, exception: str, line: int) -> None:
        super().__init__(exception)
        self.exception = exception
        self.line = line
        self.echo: tuple[str, ...] = ()  # what configurator.py printed before it died

    def traceback(self, script: str) -> str:
        """The traceback every rank prints, with train.py at `script` (its absolute path)."""
        frames = [
            pytrace.Frame(script, _EXEC_LINE, source=_EXEC_SOURCE, marked=_EXEC_CALL),
            pytrace.Frame("<string>", self.line),
        ]
        return pytrace.traceback_text(frames, self.exception)


def accumulation_exit(script: str, accumulation: int, world_size: int) -> str | None:
    """train.py's `assert gradient_accumulation_steps % ddp_world_size == 0` failing on each rank, or None."""
    if accumulation % world_size == 0:
        return None
    frame = pytrace.Frame(script, _ACCUM_LINE, source=f"    assert {_ACCUM_TEST}", marked=_ACCUM_TEST)
    return pytrace.traceback_text([frame], "AssertionError", after_init=True)


@dataclass(frozen=True)
class Configured:
    """train.py's config after configurator.py: the values, where each came from, and what it printed."""

    values: dict[str, object]
    sources: dict[str, str]  # key -> the `--key=value` argument or the config file that set it last
    echo: tuple[str, ...]  # configurator.py's prints, in order


def _evaluate(node: ast.expr, names: dict[str, object]) -> object:
    """A config file's right-hand side made of literals, arithmetic and names it assigned before."""
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_evaluate(node.left, names), _evaluate(node.right, names))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _evaluate(node.operand, names)
        if isinstance(value, (int, float)):
            return -value
    return ast.literal_eval(node)


def _exec_config(path: str, text: str, values: dict[str, object], sources: dict[str, str]) -> None:
    """exec() of a config file, for its plain assignments (anything it computes otherwise is left out)."""
    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError as exc:
        # exec() compiles the text as "<string>": SyntaxError shows its line under that name.
        where = f'  File "<string>", line {exc.lineno or 1}'
        shown = f"\n    {exc.text.strip()}" if exc.text and exc.text.strip() else ""
        raise ConfigError(f"{where}{shown}\nSyntaxError: {exc.msg}", _CONF_EXEC) from None
    for stmt in tree.body:
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1):
            continue
        target = stmt.targets[0]
        if not isinstance(target, ast.Name):
            continue
        try:
            values[target.id] = _evaluate(stmt.value, values)
        except (ValueError, TypeError, ArithmeticError, RecursionError, MemoryError):
            continue  # `'ft-' + str(time.time())`: a value no simulated figure depends on
        sources[target.id] = path


def configure(args: Sequence[str], read: Callable[[str], str | None]) -> Configured:
    """configurator.py over train.py's defaults: config files exec'd, then `--key=value` checked and set.

    `read(path)` is the config file's text, or None when it does not exist (open() raises, as here); a
    ConfigError carries what was printed before it (its `echo`)."""
    values = dict(TRAIN_DEFAULTS)
    sources: dict[str, str] = {}
    echo: list[str] = []
    try:
        for arg in args:
            _configure_one(arg, read, values, sources, echo)
    except ConfigError as exc:
        exc.echo = tuple(echo)
        raise
    return Configured(values=values, sources=sources, echo=tuple(echo))


def _configure_one(
    arg: str,
    read: Callable[[str], str | None],
    values: dict[str, object],
    sources: dict[str, str],
    echo: list[str],
) -> None:
    """configurator.py's loop body for one argument: a config file, or a `--key=value` override."""
    if "=" not in arg:
        if arg.startswith("--"):
            raise ConfigError("AssertionError", _CONF_NOT_FLAG)
        echo.append(f"Overriding config with {arg}:")
        text = read(arg)
        if text is None:
            # It printed the header above (on stdout), then dies opening the file.
            raise ConfigError(f"FileNotFoundError: [Errno 2] No such file or directory: {arg!r}", _CONF_OPEN)
        echo.extend(text.split("\n"))  # print(f.read()): the text and one more newline
        _exec_config(arg, text, values, sources)
        return
    if not arg.startswith("--"):
        raise ConfigError("AssertionError", _CONF_FLAG)
    parts = arg.split("=")
    if len(parts) != 2:
        raise ConfigError("ValueError: too many values to unpack (expected 2)", _CONF_SPLIT)
    key, val = parts[0][2:], parts[1]
    if key not in values and key not in _MODULE_GLOBALS:
        raise ConfigError(f"ValueError: Unknown config key: {key}", _CONF_UNKNOWN)
    try:
        attempt: object = ast.literal_eval(val)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        attempt = val
    if key not in values or type(attempt) is not type(values[key]):
        raise ConfigError("AssertionError", _CONF_TYPE)
    echo.append(f"Overriding: {key} = {attempt}")
    values[key] = attempt
    sources[key] = arg


# torch.save's zip archive (PyTorch's default since 1.6): per stored tensor a 64-byte-aligned record with its
# local header and central directory entry ("archive/data/N"); data.pkl pickles each state_dict key and the
# optimizer's per-parameter state; train.py's config dict and model_args are a few kB more.
_ZIP_RECORD_BYTES = 64 + 30 + 46 + 2 * len("archive/data/000") + 20
_PICKLE_KEY_BYTES = 96
_PICKLE_FIXED_BYTES = 4096


def pads_vocab(job: JobSpec) -> bool:
    """Whether nanoGPT's model has more embedding rows than the job's vocabulary: GPT-2's 50257 rounded up to
    50304 from scratch; from_pretrained keeps 50257 and a meta.pkl vocabulary is used as it is."""
    return job.regime != "finetune" and job.model.vocab == estimates.GPT2_VOCAB


def ckpt_bytes(model: ModelSpec, *, padded: bool) -> int:
    """The size of train.py's ckpt.pt: fp32 weights (tied head stored once), AdamW's exp_avg and exp_avg_sq
    (fp32) and its step scalar per parameter tensor, in torch.save's zip format."""
    params = estimates.gpt_params(model, padded=padded)
    groups = estimates.param_groups(model, padded=padded)
    tensors = groups.decay_tensors + groups.nodecay_tensors
    data = 4 * params + 2 * 4 * params + 4 * tensors
    records = tensors + 3 * tensors  # the model's storages; exp_avg, exp_avg_sq, step per parameter
    keys = tensors + int(model.tied_embeddings) + 3 * tensors
    return data + records * _ZIP_RECORD_BYTES + keys * _PICKLE_KEY_BYTES + _PICKLE_FIXED_BYTES


def tokens_line(tokens_per_iter: int) -> str:
    """train.py, every rank: the tokens one iteration consumes over the whole job."""
    return f"tokens per iteration will be: {tokens_per_iter:,}"


def meta_line(vocab: str, dataset: str) -> str:
    """train.py, every rank: the vocabulary of the dataset's meta.pkl."""
    return f"found vocab_size = {vocab} (inside data/{dataset}/meta.pkl)"


def model_lines(
    built: ModelBuilt, *, resume: bool, settings: Mapping[str, str], out_dir: str = OUT_DIR
) -> list[str]:
    """Model init and optimizer set-up as train.py and model.py print them (every rank)."""
    g = built.groups
    init = settings.get("init_from", "scratch")
    meta = settings.get("meta_vocab")
    out: list[str] = []
    if meta is not None:
        out.append(meta_line(meta, settings.get("dataset", "openwebtext")))
    if resume:
        out.append(f"Resuming training from {out_dir}")
    elif init.startswith("gpt2"):
        out.append(f"Initializing from OpenAI GPT-2 weights: {init}")
        out.append(f"loading weights from pretrained gpt: {init}")
        out.append("forcing vocab_size=50257, block_size=1024, bias=True")
        out.append(f"overriding dropout rate to {settings.get('dropout', '0.0')}")
    else:
        out.append("Initializing a new model from scratch")
        if meta is None:
            out.append("defaulting to vocab_size of GPT-2 to 50304 (50257 rounded up for efficiency)")
    out.append(f"number of parameters: {built.reported_params / 1e6:.2f}M")
    if g is not None:
        out.append(f"num decayed parameter tensors: {g.decay_tensors}, with {g.decay_params:,} parameters")
        out.append(
            f"num non-decayed parameter tensors: {g.nodecay_tensors}, with {g.nodecay_params:,} parameters"
        )
    out.append("using fused AdamW: True")
    if settings.get("compile", "True") == "True":
        out.append("compiling the model... (takes a ~minute)")
    return out


def eval_line(iter_num: int, train_loss: float, val_loss: float) -> str:
    """train.py's evaluation at `iter_num % eval_interval == 0` (rank 0)."""
    return f"step {iter_num}: train loss {train_loss:.4f}, val loss {val_loss:.4f}"


def iter_line(iter_num: int, loss: float, dt_s: float, running_mfu: float) -> str:
    """train.py's log line: the last iteration's time and the running MFU (-100.00% before it starts)."""
    return f"iter {iter_num}: loss {loss:.4f}, time {dt_s * 1000:.2f}ms, mfu {running_mfu * 100:.2f}%"


class NanoGptDialect:
    """nanoGPT: unconditional prints on every rank, master_process (rank 0) logs, evaluates and saves."""

    name: ClassVar[str] = "nanogpt"
    hints: ClassVar[HintRule] = HINTS
    grid: ClassVar[bool] = False

    @staticmethod
    def artifacts(request: SaveRequest) -> Sequence[Artifact]:
        """train.py's torch.save of {out_dir}/ckpt.pt: rank 0, after an evaluation at iter_num > 0 (one that
        beats the best so far, without always_save_checkpoint: the run's plan holds only those saves)."""
        run = request.run
        if (
            request.rank != 0
            or request.kind != "checkpoint"
            or not (run.eval_interval > 0 and request.step > 0 and request.step % run.eval_interval == 0)
        ):
            return ()
        job, settings = run.job, request.settings
        model = job.model
        model_args = {
            "n_layer": model.layers,
            "n_head": model.heads,
            "n_embd": model.hidden,
            "block_size": job.seq_len,
            "bias": int(model.bias != "none"),
            "vocab_size": model.vocab,
        }
        config = json.loads(settings["config"]) if "config" in settings else {}
        # best_val_loss is this evaluation's loss: the save follows it because it is the best (or always).
        head = nanogpt_ckpt.head(request.step, loss.eval_loss(job, request.step), model_args, config)
        path = nanogpt_ckpt.ckpt_path(settings.get("out_dir", OUT_DIR))
        return (Artifact(path, max(ckpt_bytes(model, padded=pads_vocab(job)), len(head)), head),)

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        self.resume = False
        self.run: RunPlan | None = None
        self.settings: dict[str, str] = {}

    def _on_eval_step(self, step: int) -> bool:
        """Whether train.py evaluates (and may save) at iter_num `step`; the run's end is no such step."""
        run = self.run
        return run is None or (run.eval_interval > 0 and step % run.eval_interval == 0)

    @property
    def master(self) -> bool:
        """train.py's master_process: ddp_rank == 0."""
        return self.seat.rank == 0

    def wants(self, kind: type[Event]) -> bool:
        """Start-up on every rank; training, evaluation and saving on rank 0."""
        if kind in (JobStarted, ParallelismDecided, ModelBuilt):
            return True
        return self.master and kind in (TrainingStarted, StepDone, EvalDone, CheckpointSaving)

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """nanoGPT's lines for the event on this rank."""
        del at  # nanoGPT's prints carry no time
        if isinstance(event, JobStarted):
            self.resume, self.run, self.settings = event.resume, event.run, dict(event.settings)
            echo = self.settings.get("echo")
            # configurator.py runs once per process, as train.py starts, before init_process_group.
            return [Line(text) for text in echo.split("\n")] if event.first and echo is not None else ()
        if isinstance(event, ParallelismDecided):
            return [Line(tokens_line(event.tokens_per_step))]
        if isinstance(event, ModelBuilt):
            out_dir = self.settings.get("out_dir", OUT_DIR)
            lines = model_lines(event, resume=self.resume, settings=self.settings, out_dir=out_dir)
            return [Line(text) for text in lines]
        if not self.master:
            return ()
        run = self.run
        if isinstance(event, TrainingStarted):
            # The loop evaluates before its first iteration when iter_num is a multiple of eval_interval.
            start = event.first_step - 1
            if run is not None and run.steps == 0:
                return ()  # eval_only: that evaluation is the run's only pause (EvalDone prints it)
            if run is not None and run.eval_interval > 0 and start % run.eval_interval == 0:
                return [Line(eval_line(start, event.train_loss, event.val_loss))]
            return ()
        if isinstance(event, StepDone):
            n = event.numbers
            iter_num = n.step - 1  # iter_num counts iterations done before this one
            interval = run.log_interval if run is not None else 1
            if iter_num % interval:
                return ()
            return [Line(iter_line(iter_num, n.loss, n.step_time_s, event.nanogpt_mfu))]
        if isinstance(event, EvalDone) and self._on_eval_step(event.step):
            return [Line(eval_line(event.step, event.train_loss, event.loss))]
        if isinstance(event, CheckpointSaving) and self._on_eval_step(event.step):
            return [Line(f"saving checkpoint to {self.settings.get('out_dir', OUT_DIR)}")]
        return ()
