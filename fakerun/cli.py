"""The command line: torchrun 2.13's parser, PET_* defaults, and fakerun's --fake-* options."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NoReturn

from fakerun import limits
from fakerun.names import FAILURE_KINDS, LOG_LEVELS, MAX_FAILURES, RANDOM_FAILURE, SECRET_VAR, TRAINERS
from fakerun.options import CommandLine, FakeOptions, TorchrunArgs
from fakerun.paths import STATE_DIR_VAR

__all__ = ["UsageError", "build_parser", "misspelled_env", "parse_command_line", "prog_name"]

_FAKE_PREFIX = "--fake-"
_ENV_PREFIX = "FAKERUN_"
_CONFIG_TABLE = "fakerun"
_REQUIRED_MSG = "the following arguments are required"
_DURATION_FORMS = "expected e.g. 90, 90s, 15m, 2h10m"
_BOOL_FORMS = "expected 1/0, true/false, yes/no, on/off"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_LOG_FORMATS = ("console", "json", "logfmt")


class UsageError(Exception):
    """An argparse usage error, raised instead of exiting so the caller can decide how to report it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _PetFlagError(Exception):
    """A PET_* value for a check_env flag that int() rejects (torchrun dies with a ValueError there)."""

    def __init__(self, env_name: str, raw: str) -> None:
        super().__init__(f"invalid literal for int() with base 10: {raw!r} (from {env_name})")


class _BadValue(Exception):
    """A value of a --fake-* option that its converter rejects; the message names the value and the forms."""


class _FakeError(Exception):
    """A one-line error about fakerun's own options or config file (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser that can raise UsageError, and whose --fake-* prefixes never shadow script args."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raise_usage_errors = False
        # Prefixes such as --fake-max that match several --fake-* options, with what they match.
        self.ambiguous_fake: dict[str, list[str]] = {}

    def _get_option_tuples(self, option_string: str) -> list[tuple[argparse.Action, str, str | None]]:
        """argparse's prefix matches, except that a prefix matching only --fake-* options matches nothing."""
        tuples = super()._get_option_tuples(option_string)
        # argparse checks every argv entry for ambiguity, even those bound for the script, so a script
        # argument like --fake-m (unknown to torchrun) would become an error; it stays unknown instead,
        # and parse_command_line reports it as ambiguous only if it ends up before the script.
        if len(tuples) > 1 and all(_is_fake(t[0]) for t in tuples):
            self.ambiguous_fake[option_string] = [t[1] for t in tuples]
            return []
        return tuples

    def error(self, message: str) -> NoReturn:
        """Raise UsageError in raising mode, else behave as argparse does (usage, error line, exit 2)."""
        if self.raise_usage_errors:
            raise UsageError(message)
        super().error(message)


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, with the --fake-* options left out of the usage so it stays torchrun's."""

    def add_usage(
        self,
        usage: str | None,
        actions: Iterable[argparse.Action],
        groups: Iterable[argparse._MutuallyExclusiveGroup],
        prefix: str | None = None,
    ) -> None:
        """Format the usage from torchrun's actions only."""
        super().add_usage(usage, [a for a in actions if not _is_fake(a)], groups, prefix)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        """Repeat the metavar after every spelling, as Python <= 3.12 does (3.13 prints it once)."""
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        args = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(f"{option} {args}" for option in action.option_strings)


def _is_fake(action: argparse.Action) -> bool:
    """Whether the action is one of fakerun's own --fake-* options."""
    return any(s.startswith(_FAKE_PREFIX) for s in action.option_strings)


class _EnvAction(argparse.Action):
    """torch's `env` action: the default comes from PET_<DEST> when that variable is set."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        environ: Mapping[str, str],
        default: Any = None,
        required: bool = False,
        **kwargs: Any,
    ) -> None:
        default = environ.get(f"PET_{dest.upper()}", default)
        if default:
            required = False
        super().__init__(option_strings, dest, default=default, required=required, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        """Store the value as given."""
        setattr(namespace, self.dest, values)


class _CheckEnvAction(argparse.Action):
    """torch's `check_env` flag: the default is int(PET_<DEST>) != 0 when that variable is set."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        environ: Mapping[str, str],
        default: bool = False,
        **kwargs: Any,
    ) -> None:
        env_name = f"PET_{dest.upper()}"
        raw = environ.get(env_name, "1" if default else "0")
        try:
            value = bool(int(raw))
        except ValueError:
            raise _PetFlagError(env_name, raw) from None
        super().__init__(option_strings, dest, const=True, default=value, nargs=0, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        """Turn the flag on."""
        setattr(namespace, self.dest, self.const)


def comma_separated_list(value: str) -> list[str]:
    """Split on commas where a doubled comma stands for a literal comma, as torchrun does."""
    # torch swaps ",," for a placeholder string; NUL can never occur in argv or the environment,
    # so it is a placeholder that gives torch's result for every reachable input.
    return [item.replace("\0", ",") for item in value.replace(",,", "\0").split(",")]


# --- fakerun's own options ------------------------------------------------------------------------


def _number(value: object, from_text: Callable[[str], float]) -> float:
    """A TOML number as it is, or text through from_text; ValueError for anything else, bools included."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        return from_text(value.strip())
    raise ValueError(value)


def _clip(text: str) -> str:
    """Text for an error line, shortened so that a huge value still gives a short line."""
    return text if len(text) <= 60 else f"{text[:40]}...{text[-10:]} ({len(text)} characters)"


def _shown(value: object) -> str:
    """repr() of a value for an error line, shortened; tables and arrays by their kind."""
    if isinstance(value, (dict, list)):
        return "a table" if isinstance(value, dict) else "an array"  # never repr: it may nest deeply
    return _clip(repr(value))


def _parse_int(minimum: int, maximum: int) -> Callable[[object], int]:
    """Converter for an integer option within [minimum, maximum]."""

    def convert(value: object) -> int:
        try:
            number = _number(value, int)
        except ValueError:
            number = math.nan
        if not isinstance(number, int) or not minimum <= number <= maximum:
            raise _BadValue(
                f"invalid value {_shown(value)} (expected an integer from {minimum} to {maximum})"
            )
        return number

    return convert


def _parse_speed(value: object) -> float:
    """Converter for --fake-speed: a finite number within [MIN_SPEED, MAX_SPEED]."""
    try:
        number = float(_number(value, float))
    except (ValueError, OverflowError):
        number = math.nan
    if not (math.isfinite(number) and limits.MIN_SPEED <= number <= limits.MAX_SPEED):
        raise _BadValue(
            f"invalid speed {_shown(value)} "
            f"(expected a number from {limits.MIN_SPEED:g} to {limits.MAX_SPEED:g}, e.g. 10)"
        )
    return number


_FAIL_SYNTAX = "SCENARIO[@STEP][:RANK]"
_FAIL_RE = re.compile(r"(?P<name>[^@:]*)(?:@(?P<step>[^:]*))?(?::(?P<rank>.*))?", re.DOTALL)
_MAX_RANK = limits.MAX_NNODES * limits.MAX_NPROC_PER_NODE - 1


def _parse_one_fail(value: object) -> str:
    """One SCENARIO[@STEP][:RANK]: a known scenario, STEP >= 1 and RANK >= 0."""
    names = (*FAILURE_KINDS, RANDOM_FAILURE)
    match = _FAIL_RE.fullmatch(value.strip().lower()) if isinstance(value, str) else None
    if match is None or match["name"] not in names:
        raise _BadValue(
            f"invalid scenario {_shown(value)} (choose from {', '.join(names)}; as {_FAIL_SYNTAX})"
        )
    for part, low, high in (("step", 1, limits.MAX_STEPS), ("rank", 0, _MAX_RANK)):
        text = match[part]
        if text is not None and not (text.isascii() and text.isdigit() and low <= int(text) <= high):
            expected = f"expected an integer from {low} to {high}; as {_FAIL_SYNTAX}"
            raise _BadValue(f"invalid {part} {_shown(text)} in {_shown(value)} ({expected})")
    return match.group(0)


def _parse_fail(value: object) -> tuple[str, ...]:
    """Converter for --fake-fail (repeatable), FAKERUN_FAIL and the config's `fail`: scenarios given one by
    one, comma-separated, or as a TOML list."""
    if isinstance(value, str):
        items: list[object] = [part for part in value.split(",") if part.strip()]
    elif isinstance(value, list):
        items = [part for item in value for part in (item.split(",") if isinstance(item, str) else [item])]
    else:
        raise _BadValue(f"invalid scenario {_shown(value)} (expected {_FAIL_SYNTAX}, or a list of them)")
    if not items:
        raise _BadValue(f"no scenario given (as {_FAIL_SYNTAX})")
    if len(items) > MAX_FAILURES:
        raise _BadValue(f"{len(items)} scenarios given (at most {MAX_FAILURES})")
    return tuple(_parse_one_fail(item) for item in items)


_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_RE = re.compile(rf"(?:(?P<h>{_NUM})h)?(?:(?P<m>{_NUM})m)?(?:(?P<s>{_NUM})s)?", re.IGNORECASE)
_SECONDS_RE = re.compile(_NUM)


def parse_duration(text: str) -> float:
    """Seconds in `90`, `90s`, `15m`, `2h10m`, `1h30m15s` or `1.5h`; ValueError otherwise."""
    text = text.strip()
    if _SECONDS_RE.fullmatch(text):
        return float(text)
    match = _DURATION_RE.fullmatch(text)
    if not text or match is None:
        raise ValueError(text)
    hours, minutes, seconds = (float(match[unit] or 0) for unit in ("h", "m", "s"))
    return hours * 3600 + minutes * 60 + seconds


def _parse_duration(value: object) -> float:
    """Converter for --fake-max-time and --fake-nccl-timeout: a duration > 0 and <= MAX_SIM_SECONDS, as text
    or TOML seconds."""
    try:
        seconds = float(_number(value, parse_duration))
    except (ValueError, OverflowError):
        raise _BadValue(f"invalid duration {_shown(value)} ({_DURATION_FORMS})") from None
    if not (math.isfinite(seconds) and 0 < seconds <= limits.MAX_SIM_SECONDS):
        raise _BadValue(
            f"invalid duration {_shown(value)} "
            f"(must be > 0 and at most {limits.MAX_SIM_SECONDS:g} s; {_DURATION_FORMS})"
        )
    return seconds


def _parse_flag(value: object) -> bool:
    """Converter for a flag given in the environment or the config file."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise _BadValue(f"invalid boolean {_shown(value)} ({_BOOL_FORMS})")


def _parse_name(what: str) -> Callable[[object], str]:
    """Converter for a non-empty string option (checked against presets elsewhere)."""

    def convert(value: object) -> str:
        if isinstance(value, str) and value.strip():
            return value
        raise _BadValue(f"invalid value {_shown(value)} (expected {what})")

    return convert


def _parse_choice(choices: Sequence[str]) -> Callable[[object], str]:
    """Converter for an option taking one of `choices` (any case)."""

    def convert(value: object) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise _BadValue(f"invalid choice {_shown(value)} (choose from {', '.join(choices)})")

    return convert


def _parse_trainer(value: object) -> str:
    """Converter for --fake-trainer: a dialect's name (fakerun/dialects)."""
    if isinstance(value, str) and value.strip().lower() in TRAINERS:
        return value.strip().lower()
    raise _BadValue(f"invalid choice {_shown(value)} (choose from {', '.join(TRAINERS)})")


@dataclass(frozen=True)
class _FakeSpec:
    """One --fake-<name> option: its FakeOptions field, metavar (None for a flag), help and converter."""

    name: str
    metavar: str | None
    help: str
    convert: Callable[[object], object]

    @property
    def option(self) -> str:
        """The command-line spelling."""
        return _FAKE_PREFIX + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        """The environment variable."""
        return _ENV_PREFIX + self.name.upper()

    @property
    def dest(self) -> str:
        """The argparse dest, kept apart from torchrun's."""
        return "fake_" + self.name


_FAKE_SPECS: tuple[_FakeSpec, ...] = (
    _FakeSpec(
        "config",
        "FILE",
        "TOML file setting any of these options by name (max_steps or max-steps), "
        "optionally in a [fakerun] table.",
        _parse_name("a file name"),
    ),
    _FakeSpec(
        "exec",
        None,
        "Run the real SCRIPT on each rank with torchrun's environment instead of simulating it.",
        _parse_flag,
    ),
    _FakeSpec(
        "seed",
        "INT",
        "Seed of the simulation's random numbers (default: a fresh one per run, kept in the metrics file).",
        _parse_int(0, limits.MAX_SEED),
    ),
    _FakeSpec(
        "speed", "FACTOR", "Speed factor: run N times faster than real time (default: 1).", _parse_speed
    ),
    _FakeSpec("max_steps", "N", "Stop after N training steps.", _parse_int(1, limits.MAX_STEPS)),
    _FakeSpec(
        "max_time",
        "DURATION",
        "Stop after this long, e.g. 90, 90s, 15m, 2h10m, 1h30m15s, 1.5h.",
        _parse_duration,
    ),
    _FakeSpec(
        "nccl_timeout",
        "DURATION",
        "Collective timeout of the job's process groups, e.g. 30m (default: the framework's, or what the "
        "script's arguments set: --distributed-timeout-minutes, --ddp_timeout, comm.train_timeout_seconds).",
        _parse_duration,
    ),
    _FakeSpec("start_step", "S", "Start (resume) at step S (default: 0).", _parse_int(0, limits.MAX_STEPS)),
    _FakeSpec("model", "NAME|FILE", "Model: a preset name or a TOML file.", _parse_name("a name or file")),
    _FakeSpec("gpu", "NAME|FILE", "GPU: a preset name or a TOML file.", _parse_name("a name or file")),
    _FakeSpec(
        "cluster", "NAME|FILE", "Cluster: a preset name or a TOML file.", _parse_name("a name or file")
    ),
    _FakeSpec(
        "storage",
        "NAME|FILE",
        "Storage the checkpoints go to: a preset name or a TOML file (default: the cluster's).",
        _parse_name("a name or file"),
    ),
    _FakeSpec(
        "log_format",
        "{" + ",".join(_LOG_FORMATS) + "}",
        "Format of fakerun's own log lines (default: console); json and logfmt print every line as one "
        "event, the GPU grid and the summary included.",
        _parse_choice(_LOG_FORMATS),
    ),
    _FakeSpec(
        "log_level",
        "{" + ",".join(LOG_LEVELS) + "}",
        "Lowest level of fakerun's own events shown (default: info; debug adds each logged step's gradient "
        "sync).",
        _parse_choice(LOG_LEVELS),
    ),
    _FakeSpec(
        "trainer",
        "{" + ",".join(TRAINERS) + "}",
        "Print the training output as this framework does (default: the one the script's arguments look "
        "like, else fakerun's own events; the json and logfmt log formats always print fakerun's).",
        _parse_trainer,
    ),
    _FakeSpec(
        "grid",
        None,
        "Show fakerun's GPU grid whatever the trainer (by default only fakerun's own output shows it).",
        _parse_flag,
    ),
    _FakeSpec(
        "no_files",
        None,
        "Do not create the checkpoint and export files the job reports writing (sparse files by default).",
        _parse_flag,
    ),
    _FakeSpec("metrics", "FILE", "Also write the training metrics to FILE.", _parse_name("a file name")),
    _FakeSpec(
        "tensorboard",
        "DIR",
        "Write TensorBoard event files of the run's curves into DIR, with the tags of the framework the "
        "output follows (needs tensorboardX: pip install 'fakerun[tensorboard]').",
        _parse_name("a directory"),
    ),
    _FakeSpec("loop", None, "Start the simulated run over each time it ends.", _parse_flag),
    _FakeSpec(
        "early_stopping",
        "N",
        "Stop the run cleanly after N validations in a row without a better validation loss.",
        _parse_int(1, limits.MAX_STEPS),
    ),
    _FakeSpec(
        "skip_memory_check",
        None,
        "Start the job even when its ranks need more memory than the host has available.",
        _parse_flag,
    ),
    _FakeSpec(
        "fail",
        "SCENARIO",
        f"Inject a failure: {_FAIL_SYNTAX}, repeatable; SCENARIO one of {', '.join(FAILURE_KINDS)}, "
        f"{RANDOM_FAILURE} (see --fake-list-failures).",
        _parse_fail,
    ),
    _FakeSpec(
        "check",
        None,
        "Print whether the job fits in GPU memory (need per GPU, capacity, breakdown), then exit 0 or 1.",
        _parse_flag,
    ),
    _FakeSpec("list_presets", None, "List the model, GPU and cluster presets and exit.", _parse_flag),
    _FakeSpec("list_failures", None, "List the failure scenarios of --fake-fail and exit.", _parse_flag),
    _FakeSpec(
        "version",
        None,
        "Print fakerun's version and the torch, CUDA, NCCL and driver versions it simulates, and exit.",
        _parse_flag,
    ),
    _FakeSpec(
        "install_shims",
        "DIR",
        "Write `torchrun`, `nvidia-smi` and `tune` shims running fakerun into DIR and exit "
        "(then PATH=DIR:$PATH runs unmodified job scripts on fakerun).",
        _parse_name("a directory"),
    ),
)
_SPEC_BY_NAME = {spec.name: spec for spec in _FAKE_SPECS}
# The options that do one thing and exit, so need no script.
_SCRIPTLESS = ("list_presets", "list_failures", "version", "install_shims")
_CONFIG_KEYS = tuple(spec.name for spec in _FAKE_SPECS if spec.name != "config")
# Every FAKERUN_* variable fakerun reads: the options' and those the launcher reads itself.
_KNOWN_ENV = (*(spec.env for spec in _FAKE_SPECS), STATE_DIR_VAR, SECRET_VAR)

_FAKE_GROUP_DESCRIPTION = (
    "These simulate the job; each is also read from FAKERUN_<NAME> and from the --fake-config TOML file."
)


# --- the parser -----------------------------------------------------------------------------------


def build_parser(
    prog: str, environ: Mapping[str, str] | None = None, *, positionals: bool = True, launch: bool = False
) -> argparse.ArgumentParser:
    """torchrun 2.13's get_args_parser() with PET_* defaults read from `environ`, plus the --fake-* group;
    `launch`: with the option torch.distributed.launch adds to it."""
    env = {} if environ is None else environ
    parser = _Parser(
        prog=prog,
        description="Torch Distributed Elastic Training Launcher",
        formatter_class=_HelpFormatter,
    )
    add = parser.add_argument

    add(
        "--nnodes",
        action=_EnvAction,
        environ=env,
        type=str,
        default="1:1",
        help="Number of nodes, or the range of nodes in form <minimum_nodes>:<maximum_nodes>.",
    )
    add(
        "--nproc-per-node",
        "--nproc_per_node",
        action=_EnvAction,
        environ=env,
        type=str,
        default="1",
        help="Number of workers per node; supported values: [auto, cpu, gpu, xpu, int].",
    )
    add(
        "--rdzv-backend",
        "--rdzv_backend",
        action=_EnvAction,
        environ=env,
        type=str,
        default="static",
        help="Rendezvous backend.",
    )
    add(
        "--rdzv-endpoint",
        "--rdzv_endpoint",
        action=_EnvAction,
        environ=env,
        type=str,
        default="",
        help="Rendezvous backend endpoint; usually in form <host>:<port>.",
    )
    add(
        "--rdzv-id",
        "--rdzv_id",
        action=_EnvAction,
        environ=env,
        type=str,
        default="none",
        help="User-defined group id.",
    )
    add(
        "--rdzv-conf",
        "--rdzv_conf",
        action=_EnvAction,
        environ=env,
        type=str,
        default="",
        help="Additional rendezvous configuration (<key1>=<value1>,<key2>=<value2>,...).",
    )
    add(
        "--standalone",
        action=_CheckEnvAction,
        environ=env,
        help="Start a local standalone rendezvous backend that is represented by a C10d TCP store "
        "on a free port. Useful when launching single-node, multi-worker job. If specified "
        "--rdzv-backend, --rdzv-endpoint, --rdzv-id are auto-assigned and any explicitly set values "
        "are ignored.",
    )
    add(
        "--max-restarts",
        "--max_restarts",
        action=_EnvAction,
        environ=env,
        type=int,
        default=0,
        help="Maximum number of worker group restarts before failing.",
    )
    add(
        "--monitor-interval",
        "--monitor_interval",
        action=_EnvAction,
        environ=env,
        type=float,
        default=0.1,
        help="Interval, in seconds, to monitor the state of workers.",
    )
    add(
        "--start-method",
        "--start_method",
        action=_EnvAction,
        environ=env,
        type=str,
        default="spawn",
        choices=["spawn", "fork", "forkserver"],
        help="Multiprocessing start method to use when creating workers.",
    )
    add(
        "--event-log-handler",
        "--event_log_handler",
        action=_EnvAction,
        environ=env,
        type=str,
        default="null",
        help="name of a registered event logging handler "
        "(see: https://docs.pytorch.org/docs/stable/elastic/events.html)",
    )
    add(
        "--role",
        action=_EnvAction,
        environ=env,
        type=str,
        default="default",
        help="User-defined role for the workers.",
    )
    add(
        "-m",
        "--module",
        action=_CheckEnvAction,
        environ=env,
        help="Change each process to interpret the launch script as a Python module, executing "
        "with the same behavior as 'python -m'.",
    )
    add(
        "--no-python",
        "--no_python",
        action=_CheckEnvAction,
        environ=env,
        help="Skip prepending the training script with 'python' - just execute it directly. Useful "
        "when the script is not a Python script.",
    )
    add(
        "--run-path",
        "--run_path",
        action=_CheckEnvAction,
        environ=env,
        help="Run the training script with runpy.run_path in the same interpreter."
        " Script must be provided as an abs path (e.g. /abs/path/script.py)."
        " Takes precedence over --no-python.",
    )
    add(
        "--log-dir",
        "--log_dir",
        action=_EnvAction,
        environ=env,
        type=str,
        default=None,
        help="Base directory to use for log files (e.g. /var/log/torch/elastic). The same "
        "directory is reused for multiple runs (a unique job-level sub-directory is created with "
        "rdzv_id as the prefix).",
    )
    add(
        "-r",
        "--redirects",
        action=_EnvAction,
        environ=env,
        type=str,
        default="0",
        help="Redirect std streams into a log file in the log directory (e.g. [-r 3] redirects "
        "both stdout+stderr for all workers, [-r 0:1,1:2] redirects stdout for local rank 0 and "
        "stderr for local rank 1).",
    )
    add(
        "-t",
        "--tee",
        action=_EnvAction,
        environ=env,
        type=str,
        default="0",
        help="Tee std streams into a log file and also to console (see --redirects for format).",
    )
    # "not to" + "log files" without a space is torchrun's own typo, kept so --help matches.
    add(
        "--local-ranks-filter",
        "--local_ranks_filter",
        action=_EnvAction,
        environ=env,
        type=str,
        default="",
        help="Only show logs from specified ranks in console (e.g. [--local_ranks_filter=0,1,2] will "
        "only show logs from rank 0, 1 and 2). This will only apply to stdout and stderr, not to"
        "log files saved via --redirect or --tee",
    )
    # torchrun's stderr help names --duplicate_stdout_filters too; kept so --help matches.
    for stream in ("stdout", "stderr"):
        add(
            f"--duplicate-{stream}-filters",
            f"--duplicate_{stream}_filters",
            action=_EnvAction,
            environ=env,
            type=comma_separated_list,
            default=[],
            help=f"Duplicates logs streamed to {stream} to another specified file with a list of filters "
            "(e.g. [--duplicate_stdout_filters 'apple,orange'] will duplicate log lines matching 'apple' "
            "OR 'orange'. An empty filters list won't duplicate any lines. Use double comma to escape "
            "a comma) ",
        )
    add(
        "--node-rank",
        "--node_rank",
        type=int,
        action=_EnvAction,
        environ=env,
        default=0,
        help="Rank of the node for multi-node distributed training. It is only used for static "
        "rendezvous (i.e., when ``--rdzv-backend=static``).",
    )
    add(
        "--master-addr",
        "--master_addr",
        default="127.0.0.1",
        type=str,
        action=_EnvAction,
        environ=env,
        help="Address of the master node (rank 0) that only used for static rendezvous. It should "
        "be either the IP address or the hostname of rank 0. For single node multi-proc training "
        "the --master-addr can simply be 127.0.0.1; IPv6 should have the pattern "
        "`[0:0:0:0:0:0:0:1]`.",
    )
    add(
        "--master-port",
        "--master_port",
        default=None,
        type=int,
        action=_EnvAction,
        environ=env,
        help="Port on the master node (rank 0) to be used for communication during distributed "
        "training. It is only used for static rendezvous. Defaults to 29500.",
    )
    add(
        "--local-addr",
        "--local_addr",
        default=None,
        type=str,
        action=_EnvAction,
        environ=env,
        help="Address of the local node. If specified, will use the given address for connection. "
        "Else, will look up the local node address instead. Else, it will be default to local "
        "machine's FQDN.",
    )
    add(
        "--logs-specs",
        "--logs_specs",
        default=None,
        type=str,
        help="torchrun.logs_specs group entrypoint name, value must be type of LogsSpecs. "
        "Can be used to override custom logging behavior.",
    )
    add(
        "--numa-binding",
        "--numa_binding",
        type=str,
        choices=["node", "socket", "exclusive", "core-complex"],
        default=None,
        help="Bind worker processes to CPUs near their assigned GPUs for better performance. "
        "See torch/numa/binding.py for available modes and details.",
    )
    add(
        "--signals-to-handle",
        "--signals_to_handle",
        action=_EnvAction,
        environ=env,
        type=str,
        default="SIGTERM,SIGINT,SIGHUP,SIGQUIT",
        help="Comma-separated list of signals to handle and forward to subprocesses. "
        "Default: SIGTERM,SIGINT,SIGHUP,SIGQUIT. "
        "Common additional signals: SIGUSR1,SIGUSR2 (used in SLURM environments).",
    )
    add(
        "--shutdown-timeout",
        "--shutdown_timeout",
        action=_EnvAction,
        environ=env,
        type=int,
        default=None,
        help="Time in seconds to wait for graceful shutdown of worker processes before "
        "sending SIGKILL. If not specified, uses TORCH_ELASTIC_SHUTDOWN_TIMEOUT environment "
        "variable or defaults to 30 seconds.",
    )
    add(
        "--virtual-local-rank",
        "--virtual_local_rank",
        action=_CheckEnvAction,
        environ=env,
        help="Enable virtual local rank mode for workers. When enabled, LOCAL_RANK is set to 0 "
        "for all workers and CUDA_VISIBLE_DEVICES is adjusted so each worker accesses its "
        "assigned GPU at device index 0.",
    )
    if positionals:
        add(
            "training_script",
            type=str,
            help="Full path to the (single GPU) training program/script to be launched in parallel, "
            "followed by all the arguments for the training script.",
        )
        add("training_script_args", nargs=argparse.REMAINDER)
    if launch:
        # launch.py's parse_args() adds it after the positionals (its default: pass --local-rank=N).
        add(
            "--use-env",
            "--use_env",
            default=False,
            action="store_true",
            help="Use environment variable to pass 'local rank'. For legacy reasons, the default value is "
            "False. If set to True, the script will not pass --local-rank as argument, and will instead set "
            "LOCAL_RANK.",
        )

    group = parser.add_argument_group("fakerun options", _FAKE_GROUP_DESCRIPTION)
    for spec in _FAKE_SPECS:
        # Defaults stay None so that a value given on the command line can be told from an absent one.
        if spec.metavar is None:
            group.add_argument(spec.option, dest=spec.dest, action="store_const", const=True, help=spec.help)
        elif spec.name == "fail":  # repeatable: each one more scenario
            group.add_argument(
                spec.option, dest=spec.dest, metavar=spec.metavar, help=spec.help, action="append"
            )
        else:
            group.add_argument(spec.option, dest=spec.dest, metavar=spec.metavar, help=spec.help)
    return parser


# --- resolving fakerun's options --------------------------------------------------------------------


@dataclass(frozen=True)
class _Config:
    """The --fake-config file: its path, where the path came from, and its option values by field name."""

    path: str
    origin: str
    values: Mapping[str, object]


def _from(origin: str) -> str:
    """The ' (from X)' suffix of an error line, empty for the command line."""
    return "" if origin == "command line" else f" (from {origin})"


def _load_config(path: str, origin: str) -> _Config:
    """Read and check the TOML config file; _FakeError on any problem."""
    from fakerun import tomlfile  # tomllib only for a job given a config file: it is 2 ms of every start-up

    where = "argument --fake-config: "
    try:
        data = tomlfile.load(path)
    except tomlfile.FileError as exc:
        raise _FakeError(f"{where}cannot read {path!r}: {exc.reason}{_from(origin)}") from None
    except tomlfile.TomlError as exc:
        raise _FakeError(f"{where}invalid TOML in {path!r}: {exc}{_from(origin)}") from None

    items: list[tuple[str, object]] = []
    for key, value in data.items():
        if key == _CONFIG_TABLE:
            if not isinstance(value, dict):
                raise _FakeError(f"{where}[{_CONFIG_TABLE}] in {path!r} must be a table{_from(origin)}")
            items.extend(value.items())
        else:
            items.append((key, value))

    values: dict[str, object] = {}
    for key, value in items:
        name = key.replace("-", "_")
        if name not in _CONFIG_KEYS:
            known = ", ".join(_CONFIG_KEYS)
            raise _FakeError(f"{where}unknown key {_shown(key)} in {path!r} (known: {known}){_from(origin)}")
        if name in values:
            raise _FakeError(f"{where}key {_shown(key)} is set twice in {path!r}{_from(origin)}")
        values[name] = value
    return _Config(path, f"config file {path}", values)


def _nonempty(environ: Mapping[str, str], name: str) -> str | None:
    """The variable's value, or None when it is unset or empty (an empty variable counts as unset)."""
    return environ.get(name) or None


def _resolve_fake(ns: argparse.Namespace, environ: Mapping[str, str]) -> FakeOptions:
    """FakeOptions from the command line, then FAKERUN_* variables, then the config file."""
    config_spec = _SPEC_BY_NAME["config"]
    config: _Config | None = None
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    path: str | None = getattr(ns, config_spec.dest)
    origin = "command line"
    if path is None:
        path, origin = _nonempty(environ, config_spec.env), config_spec.env
    if path is not None:
        try:
            values["config"] = config_spec.convert(path)
        except _BadValue as exc:
            raise _FakeError(f"argument {config_spec.option}: {exc}{_from(origin)}") from None
        sources["config"] = origin
        config = _load_config(path, origin)
    for spec in _FAKE_SPECS:
        if spec.name == "config":
            continue
        raw: object
        cli_value = getattr(ns, spec.dest)
        env_value = _nonempty(environ, spec.env)
        if cli_value is not None:
            raw, origin = cli_value, "command line"
        elif env_value is not None:
            raw, origin = env_value, spec.env
        elif config is not None and spec.name in config.values:
            raw, origin = config.values[spec.name], config.origin
        else:
            continue
        try:
            values[spec.name] = spec.convert(raw)
        except _BadValue as exc:
            raise _FakeError(f"argument {spec.option}: {exc}{_from(origin)}") from None
        sources[spec.name] = origin
    return FakeOptions(**values, sources=sources)  # type: ignore[arg-type]


def _torchrun_args(ns: argparse.Namespace, training_script: str | None = None) -> TorchrunArgs:
    """TorchrunArgs from the namespace; `training_script` stands in when the parser had no positionals."""
    names = [f.name for f in fields(TorchrunArgs)]
    kwargs = {name: getattr(ns, name) for name in names if hasattr(ns, name)}
    if training_script is not None:
        kwargs["training_script"] = training_script
    kwargs["training_script_args"] = list(kwargs.get("training_script_args") or [])
    kwargs["duplicate_stdout_filters"] = list(kwargs["duplicate_stdout_filters"])
    kwargs["duplicate_stderr_filters"] = list(kwargs["duplicate_stderr_filters"])
    return TorchrunArgs(**kwargs)


def _fail(line: str, code: int) -> NoReturn:
    """Write one error line to stderr and exit."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    raise SystemExit(code)


def _usage_exit(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Report a usage error as argparse does: usage, then `<prog>: error: ...`, exit code 2."""
    parser.print_usage(sys.stderr)
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def _build(prog: str, environ: Mapping[str, str], positionals: bool = True, launch: bool = False) -> _Parser:
    """build_parser in raising mode; a bad PET_* flag value ends the run as torchrun's ValueError would."""
    try:
        parser = build_parser(prog, environ, positionals=positionals, launch=launch)
    except _PetFlagError as exc:
        # torchrun raises ValueError here, so exit 1 like it, but with one line instead of a traceback.
        _fail(f"{prog}: error: {exc}", 1)
    assert isinstance(parser, _Parser)
    parser.raise_usage_errors = True
    return parser


def _parse_args(parser: _Parser, argv: list[str]) -> argparse.Namespace:
    """parser.parse_args(argv), reporting a leftover --fake-* prefix as ambiguous rather than unknown."""
    ns, extras = parser.parse_known_args(argv)
    for extra in extras:
        if extra in parser.ambiguous_fake:
            matches = ", ".join(parser.ambiguous_fake[extra])
            parser.error(f"ambiguous option: {extra} could match {matches}")
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return ns


def _int_or_none(text: str) -> int | None:
    """int(text) as torchrun would convert it, or None when it is not an integer (torchrun reports those)."""
    try:
        return int(text)
    except ValueError:
        return None


def _check_limits(parser: _Parser, ns: argparse.Namespace) -> None:
    """Usage error for counts and times beyond what any real job uses (fakerun's caps, see limits.py)."""
    # Values torchrun itself refuses (nnodes 3:2, a negative shutdown timeout...) are left to the plan,
    # which reports them as torchrun does; these caps only stop values that would exhaust the machine or
    # overflow a number before anything starts.
    nproc = _int_or_none(ns.nproc_per_node)
    timeout = ns.shutdown_timeout
    checks: list[tuple[bool, str, str, str]] = [
        (
            any((n or 0) > limits.MAX_NNODES for n in map(_int_or_none, ns.nnodes.split(":"))),
            "--nnodes",
            _clip(ns.nnodes),
            f"is more nodes than fakerun plays (at most {limits.MAX_NNODES})",
        ),
        (
            nproc is not None and nproc > limits.MAX_NPROC_PER_NODE,
            "--nproc-per-node/--nproc_per_node",
            _clip(ns.nproc_per_node),
            f"is more workers per node than fakerun starts (at most {limits.MAX_NPROC_PER_NODE})",
        ),
        (
            ns.max_restarts > limits.MAX_RESTARTS,
            "--max-restarts/--max_restarts",
            _clip(str(ns.max_restarts)),
            f"is more restarts than fakerun allows (at most {limits.MAX_RESTARTS})",
        ),
        (
            # NaN and negative intervals are the plan's: torch's time.sleep raises ValueError for those.
            ns.monitor_interval > limits.MAX_SECONDS_OPTION,
            "--monitor-interval/--monitor_interval",
            f"{ns.monitor_interval:g}",
            f"seconds is longer than fakerun allows (at most {limits.MAX_SECONDS_OPTION:g})",
        ),
        (
            timeout is not None and timeout > limits.MAX_SECONDS_OPTION,
            "--shutdown-timeout/--shutdown_timeout",
            _clip(str(timeout)),
            f"seconds is longer than fakerun allows (at most {limits.MAX_SECONDS_OPTION:g})",
        ),
    ]
    for bad, option, value, reason in checks:
        if bad:
            parser.error(f"argument {option}: {value} {reason}")


def _list_presets_without_script(
    argv: list[str], environ: Mapping[str, str], prog: str
) -> CommandLine | None:
    """The command line when no script was given but a listing (or the shims) was asked for, else None."""
    parser = _build(prog, environ, positionals=False)
    try:
        ns = _parse_args(parser, argv)
    except UsageError:
        return None
    try:
        fake = _resolve_fake(ns, environ)
    except _FakeError as exc:
        if any(getattr(ns, _SPEC_BY_NAME[name].dest) for name in _SCRIPTLESS):
            _fail(f"{prog}: error: {exc}", 2)
        return None
    if all(getattr(fake, name) in (False, None) for name in _SCRIPTLESS):
        return None
    return CommandLine(torchrun=_torchrun_args(ns, training_script=""), fake=fake, prog=prog)


def parse_command_line(
    argv: list[str], environ: Mapping[str, str], prog: str = "fakerun", *, launch: bool = False
) -> CommandLine:
    """Parse argv (without argv[0]) as torchrun would (`launch`: as torch.distributed.launch would), plus
    fakerun's options; SystemExit on bad input."""
    parser = _build(prog, environ, launch=launch)
    try:
        ns = _parse_args(parser, argv)
        _check_limits(parser, ns)
    except UsageError as exc:
        if exc.message.startswith(_REQUIRED_MSG):
            listing = _list_presets_without_script(argv, environ, prog)
            if listing is not None:
                return listing
        _usage_exit(parser, exc.message)
    try:
        fake = _resolve_fake(ns, environ)
    except _FakeError as exc:
        _fail(f"{prog}: error: {exc}", 2)
    args = dataclasses.replace(_torchrun_args(ns), explicit=_explicit(parser, argv, environ))
    return CommandLine(torchrun=args, fake=fake, prog=prog)


_UNSET = object()


def _explicit(parser: argparse.ArgumentParser, argv: list[str], environ: Mapping[str, str]) -> frozenset[str]:
    """The torchrun options the user set: `argv`, which `parser` parsed, parsed again with every default
    replaced by a marker (the parser is used up: building another is a tenth of the launcher's start-up)."""
    for action in parser._actions:
        if not isinstance(action, argparse._AppendAction):  # appending needs a list (no torchrun option)
            action.default = _UNSET
    ns, _ = parser.parse_known_args(argv)
    # (An appending option keeps its None default: no given value is None.)
    given = {dest for dest, value in vars(ns).items() if value is not _UNSET and value is not None}
    given |= {f.name for f in fields(TorchrunArgs) if f"PET_{f.name.upper()}" in environ}
    return frozenset(given)


def misspelled_env(environ: Mapping[str, str]) -> list[str]:
    """A line for each FAKERUN_* variable fakerun does not read that looks like one it does (a typo that
    would otherwise be ignored without a word); variables like no known one are someone else's."""
    lines = []
    # The names are compared without the shared prefix, which would make any two look alike.
    known = {name.removeprefix(_ENV_PREFIX): name for name in _KNOWN_ENV}
    for name in sorted(environ):
        if not name.startswith(_ENV_PREFIX) or name in _KNOWN_ENV:
            continue
        import difflib  # only for a FAKERUN_* variable fakerun does not read: not on every start

        close = difflib.get_close_matches(name.removeprefix(_ENV_PREFIX), list(known), n=1)
        if close:
            lines.append(f"{name} is set but fakerun reads no such variable: did you mean {known[close[0]]}?")
    return lines


def prog_name(argv0: str) -> str:
    """The program name for messages: argv[0]'s basename, or "fakerun" under `python -m fakerun`."""
    base = os.path.basename(argv0)
    if not base or base.startswith("__main__.") or base == "-c":
        return "fakerun"
    return base
