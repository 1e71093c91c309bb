"""torchrun 2.13's failure output: the launcher traceback, the ChildFailedError block, exception lines."""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass
from typing import Literal

NOT_AVAILABLE = "<N/A>"
CHILD_FAILED_ERROR = "torch.distributed.elastic.multiprocessing.errors.ChildFailedError"
SIGNAL_EXCEPTION = "torch.distributed.elastic.multiprocessing.api.SignalException"
RENDEZVOUS_TIMEOUT_ERROR = "torch.distributed.elastic.rendezvous.api.RendezvousTimeoutError"
DIST_STORE_ERROR = "torch.distributed.DistStoreError"
NO_TRACEBACK_HINT = "To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html"
MAX_WIDTH = 60

TracebackKind = Literal[
    "child_failed",
    "signal",
    "c10d_join_timeout",
    "c10d_rejoin_timeout",
    "static_store_timeout",
    "nnodes_int",
    "nnodes_min_int",
    "nnodes_max_int",
    "nnodes_format",
    "nnodes_range",
    "max_restarts",
    "nproc_int",
    "nproc_unsupported",
    "nproc_no_cuda",
    "nproc_no_xpu",
    "launch_no_python",
    "c10d_store_connect",
    "c10d_tcp_store",
]
CHAINED = "\nThe above exception was the direct cause of the following exception:\n\n"


@dataclass(frozen=True)
class FailureRecord:
    """One failed worker as the report shows it; a negative exitcode means killed by signal -exitcode."""

    rank: int
    local_rank: int
    pid: int
    exitcode: int
    time: float
    host: str
    error_file: str | None = None
    error_payload: dict[str, object] | None = None


def signal_name(exitcode: int) -> str | None:
    """`SIGTERM` for exitcode -15; None when not a signal or not a known one (torch then shows `<N/A>`)."""
    if exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return None


def _as_timestamp(value: object) -> int | None:
    """torch's int(...) of an error file timestamp (a string of seconds), None when that would raise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _shown_error_file(rec: FailureRecord) -> str | None:
    """The error file path, kept only when its contents were read (torch shows `<N/A>` for a missing file)."""
    return rec.error_file if rec.error_payload is not None else None


def _message_and_timestamp(rec: FailureRecord) -> tuple[str, int]:
    """The traceback text and the timestamp of one failure, following torch's ProcessFailure."""
    timestamp = int(rec.time)
    message = ""
    payload = rec.error_payload if _shown_error_file(rec) is not None else None
    if payload is not None:
        body = payload.get("message")
        if isinstance(body, str):
            message = body
            # torch: int(error_file_data.get("timestamp", 0)), so a bare message dates from 1970.
            ts = _as_timestamp(payload.get("timestamp", 0))
            timestamp = ts if ts is not None else timestamp
        elif isinstance(body, dict):
            extra = body.get("extraInfo")
            extra = extra if isinstance(extra, dict) else {}
            ts = _as_timestamp(extra.get("timestamp"))
            timestamp = ts if ts is not None else timestamp
            text = extra.get("py_callstack", body.get("message", NOT_AVAILABLE))
            message = str(text).replace("\n", "\n  ")
            # A dict message is never replaced by the default text below, even when it renders empty.
            return message, timestamp
    if not message:
        if rec.exitcode < 0:
            name = signal_name(rec.exitcode) or NOT_AVAILABLE
            message = f"Signal {-rec.exitcode} ({name}) received by PID {rec.pid}"
        else:
            message = NO_TRACEBACK_HINT
    return message, timestamp


def _format_failure(idx: int, rec: FailureRecord) -> str:
    """One `[idx]:` entry of the block, without a trailing newline."""
    message, timestamp = _message_and_timestamp(rec)
    stamp = time.strftime("%Y-%m-%d_%H:%M:%S", time.localtime(timestamp))
    name = signal_name(rec.exitcode)
    suffix = f" ({name})" if name is not None else ""
    error_file = _shown_error_file(rec) or NOT_AVAILABLE
    return (
        f"[{idx}]:\n"
        f"  time      : {stamp}\n"
        f"  host      : {rec.host}\n"
        f"  rank      : {rec.rank} (local_rank: {rec.local_rank})\n"
        f"  exitcode  : {rec.exitcode} (pid: {rec.pid}) {suffix}\n"
        f"  error_file: {error_file}\n"
        f"  traceback : {message}"
    )


def format_child_failed_error(name: str, root: FailureRecord, others: list[FailureRecord]) -> str:
    """The `ChildFailedError: ` line and the report block, every line ending in a newline."""
    title = f"{name} FAILED"
    root_fmt = _format_failure(0, root)
    other_fmts = [_format_failure(i, rec) for i, rec in enumerate(others, start=1)]
    width = len(title)
    for fmt in [root_fmt, *other_fmts]:
        width = max(width, *(len(line) for line in fmt.split("\n")))
    width = min(width, MAX_WIDTH)
    border, section = "=" * width, "-" * width
    parts = [
        f"{CHILD_FAILED_ERROR}: ",
        border,
        title,
        section,
        "Failures:",
        "\n".join(other_fmts or ["  <NO_OTHER_FAILURES>"]),
        section,
        "Root Cause (first observed failure):",
        root_fmt,
        border,
    ]
    return "\n".join(parts) + "\n"


def read_error_file(path: str) -> dict[str, object] | None:
    """The JSON object a worker's @record wrote, or None when the file is missing, unreadable or not one."""
    try:
        with open(path, encoding="utf-8") as fp:
            data = json.load(fp)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def signal_exception_line(pid: int, signum: int) -> str:
    """`...SignalException: Process <pid> got signal: <n>` with its newline."""
    return f"{SIGNAL_EXCEPTION}: Process {pid} got signal: {int(signum)}\n"


def rendezvous_timeout_line() -> str:
    """The last line of a c10d rendezvous that timed out waiting for nodes (the exception has no message)."""
    return f"{RENDEZVOUS_TIMEOUT_ERROR}\n"


def dist_store_timeout_line(seconds: int, joined: int, world_size: int) -> str:
    """The last line of a static rendezvous whose TCPStore timed out (torch showed 6 s for timeout=5)."""
    return (
        f"{DIST_STORE_ERROR}: Timed out after {seconds} seconds waiting for clients. "
        f"{joined}/{world_size} clients joined.\n"
    )


_ARGV0 = "\x00argv0\x00"
_SITE = "\x00site\x00"
_TORCH = _SITE + "/torch/distributed/"
_ELASTIC = _TORCH + "elastic/"

# One frame: file, line, function, source line, and where Python 3.11 put carets under it (column, count).
_Frame = tuple[str, int, str, str, tuple[int, int] | None]

_MAIN: list[_Frame] = [
    (_ARGV0, 8, "<module>", "sys.exit(main())", (9, 6)),
    (
        _ELASTIC + "multiprocessing/errors/__init__.py",
        367,
        "wrapper",
        "return f(*args, **kwargs)",
        (7, 18),
    ),
    (_TORCH + "run.py", 1028, "main", "run(args)", None),
]
# Under `python -m torch.distributed.run|launch` the launcher's traceback starts in runpy (no source lines
# for frozen modules), then in the module run as __main__.
_RUNPY: list[_Frame] = [
    ("<frozen runpy>", 198, "_run_module_as_main", "", None),
    ("<frozen runpy>", 88, "_run_code", "", None),
]
_RUN_PY_MAIN: list[_Frame] = [*_RUNPY, (_TORCH + "run.py", 1032, "<module>", "main()", None), *_MAIN[1:]]
# torch 2.13's launch.py: main() is wrapped by typing_extensions' deprecated() (4.16's wrapper line), and
# calls launch(args), which calls run.py's run(args) instead of its main().
_LAUNCH_MAIN: list[_Frame] = [
    *_RUNPY,
    (_TORCH + "launch.py", 207, "<module>", "main()", None),
    (_SITE + "/typing_extensions.py", 3140, "wrapper", "return arg(*args, **kwargs)", (7, 20)),
    (_TORCH + "launch.py", 203, "main", "launch(args)", None),
]
_LAUNCH_RUN: list[_Frame] = [*_LAUNCH_MAIN, (_TORCH + "launch.py", 188, "launch", "run(args)", None)]
_HEAD: list[_Frame] = [
    *_MAIN,
    (_TORCH + "run.py", 1019, "run", "elastic_launch(", None),
    (_TORCH + "launcher/api.py", 194, "__call__", "return launch_agent(", (7, 13)),
]
_CHILD_FAILED: list[_Frame] = [
    (_TORCH + "launcher/api.py", 383, "launch_agent", "raise ChildFailedError(", None),
]
_METRICS_WRAPPER: _Frame = (
    _ELASTIC + "metrics/api.py",
    134,
    "wrapper",
    "result = f(*args, **kwargs)",
    (9, 18),
)
_AGENT_RUN: list[_Frame] = [
    (_TORCH + "launcher/api.py", 374, "launch_agent", "result = agent.run()", (9, 11)),
    _METRICS_WRAPPER,
    (_ELASTIC + "agent/server/api.py", 745, "run", "result = self._invoke_run(role)", (9, 22)),
]
_SIGNAL: list[_Frame] = [
    (_ELASTIC + "agent/server/api.py", 923, "_invoke_run", "time.sleep(monitor_interval)", None),
    (
        _ELASTIC + "multiprocessing/api.py",
        86,
        "_terminate_process_handler",
        'raise SignalException(f"Process {os.getpid()} got signal: {sigval}", sigval=sigval)',
        None,
    ),
]
_RENDEZVOUS: list[_Frame] = [
    (
        _ELASTIC + "agent/server/api.py",
        916,
        "_invoke_run",
        "self._initialize_workers(self._worker_group)",
        None,
    ),
    _METRICS_WRAPPER,
    (_ELASTIC + "agent/server/api.py", 713, "_initialize_workers", "self._rendezvous(worker_group)", None),
    _METRICS_WRAPPER,
    (
        _ELASTIC + "agent/server/api.py",
        528,
        "_rendezvous",
        "rdzv_info = spec.rdzv_handler.next_rendezvous()",
        (12, 35),
    ),
]
# A restart's round: _invoke_run's restart branch and _restart_workers (torch 2.13's lines placed from the
# source layout around the recorded _initialize_workers and _rendezvous frames).
_RESTART: list[_Frame] = [
    (
        _ELASTIC + "agent/server/api.py",
        952,
        "_invoke_run",
        "self._restart_workers(self._worker_group)",
        None,
    ),
    _METRICS_WRAPPER,
    (
        _ELASTIC + "agent/server/api.py",
        731,
        "_restart_workers",
        "self._initialize_workers(worker_group)",
        None,
    ),
    _METRICS_WRAPPER,
    *_RENDEZVOUS[2:],
]
_C10D_TIMEOUT: list[_Frame] = [
    (
        _ELASTIC + "rendezvous/dynamic_rendezvous.py",
        1171,
        "next_rendezvous",
        "self._op_executor.run(join_op, deadline, self._get_deadline)",
        None,
    ),
    (_ELASTIC + "rendezvous/dynamic_rendezvous.py", 680, "run", "raise RendezvousTimeoutError", None),
]
# The c10d handler is created in launch_agent, before the agent runs: its TCPStore client's failure is
# re-raised as RendezvousConnectionError (c10d_rendezvous_backend._create_tcp_store). Line numbers placed
# from torch 2.9's (TCPStore( at 156) and the source layout; 2.13's were not available to check.
_C10D_BACKEND = _ELASTIC + "rendezvous/c10d_rendezvous_backend.py"
_C10D_STORE: list[_Frame] = [
    (
        _TORCH + "launcher/api.py",
        353,
        "launch_agent",
        "rdzv_handler=rdzv_registry.get_rendezvous_handler(rdzv_parameters),",
        (13, 53),
    ),
    (
        _ELASTIC + "rendezvous/registry.py",
        99,
        "get_rendezvous_handler",
        "return handler_registry.create_handler(params)",
        (7, 39),
    ),
    (_ELASTIC + "rendezvous/api.py", 367, "create_handler", "handler = creator(params)", (10, 15)),
    (
        _ELASTIC + "rendezvous/registry.py",
        41,
        "_create_c10d_handler",
        "backend, store = create_backend(params)",
        (17, 22),
    ),
    (_C10D_BACKEND, 261, "create_backend", "store = _create_tcp_store(params)", (8, 25)),
    (_C10D_BACKEND, 172, "_create_tcp_store", "raise RendezvousConnectionError(", None),
]
_STATIC_TIMEOUT: list[_Frame] = [
    (
        _ELASTIC + "rendezvous/static_tcp_rendezvous.py",
        67,
        "next_rendezvous",
        "self._store = TCPStore(  # type: ignore[call-arg]",
        (14, 35),
    ),
]

# torch 2.13's config_from_args (run.py), which checks the options before anything is printed at WARNING.
# Its line numbers are placed from the recorded ones (the OMP_NUM_THREADS warning at 874, `Using
# nproc_per_node=` at 747, config_from_args(args) just above elastic_launch( at 1019) and the source layout.


def _run_py(lineno: int, func: str, code: str, carets: tuple[int, int] | None = None) -> _Frame:
    """One frame in torch's run.py."""
    return (_TORCH + "run.py", lineno, func, code, carets)


_CONFIG: list[_Frame] = [
    *_MAIN,
    _run_py(1018, "run", "config, cmd, cmd_args = config_from_args(args)", (24, 22)),
]
_PARSE_NNODES = _run_py(
    853, "config_from_args", "min_nodes, max_nodes = parse_min_max_nnodes(args.nnodes)", (23, 33)
)
_NNODES = [*_CONFIG, _PARSE_NNODES]
_NPROC = [
    *_CONFIG,
    _run_py(
        871, "config_from_args", "nproc_per_node = determine_local_world_size(args.nproc_per_node)", (17, 47)
    ),
]
_NNODES_FORMAT_RAISE = """raise RuntimeError(f'nnodes={nnodes} is not in "MIN:MAX" format')"""
_DLWS = "determine_local_world_size"

_TRACEBACKS: dict[str, list[_Frame]] = {
    "child_failed": _HEAD + _CHILD_FAILED,
    "signal": _HEAD + _AGENT_RUN + _SIGNAL,
    "c10d_join_timeout": _HEAD + _AGENT_RUN + _RENDEZVOUS + _C10D_TIMEOUT,
    "c10d_rejoin_timeout": _HEAD + _AGENT_RUN + _RESTART + _C10D_TIMEOUT,
    "static_store_timeout": _HEAD + _AGENT_RUN + _RENDEZVOUS + _STATIC_TIMEOUT,
    "nnodes_int": [
        *_NNODES,
        _run_py(735, "parse_min_max_nnodes", "min_nodes = max_nodes = int(arr[0])", (24, 11)),
    ],
    "nnodes_min_int": [*_NNODES, _run_py(737, "parse_min_max_nnodes", "min_nodes = int(arr[0])", (12, 11))],
    "nnodes_max_int": [*_NNODES, _run_py(738, "parse_min_max_nnodes", "max_nodes = int(arr[1])", (12, 11))],
    # The line ends in a noqa comment: the statement does not span the line, so Python marks it.
    "nnodes_format": [
        *_NNODES,
        _run_py(
            740,
            "parse_min_max_nnodes",
            _NNODES_FORMAT_RAISE + "  # noqa" + ": E231",
            (0, len(_NNODES_FORMAT_RAISE)),
        ),
    ],
    "nnodes_range": [*_CONFIG, _run_py(855, "config_from_args", "raise AssertionError(")],
    "max_restarts": [
        *_CONFIG,
        _run_py(859, "config_from_args", 'raise AssertionError("max_restarts must be >= 0")'),
    ],
    # The int() that fails first: the cause the ValueErrors below are raised `from`.
    "nproc_int": [_run_py(748, _DLWS, "return int(nproc_per_node)", (7, 19))],
    "nproc_unsupported": [*_NPROC, _run_py(776, _DLWS, "raise ValueError(")],
    "nproc_no_cuda": [*_NPROC, _run_py(755, _DLWS, 'raise ValueError("Cuda is not available.") from e')],
    "nproc_no_xpu": [*_NPROC, _run_py(760, _DLWS, 'raise ValueError("Xpu is not available.") from e')],
    "c10d_store_connect": _HEAD + _C10D_STORE,
    "c10d_tcp_store": [(_C10D_BACKEND, 156, "_create_tcp_store", "store = TCPStore(", (8, 9))],
    "launch_no_python": [*_LAUNCH_MAIN, (_TORCH + "launch.py", 184, "launch", "raise ValueError(", None)],
}


def _frames(kind: TracebackKind, launcher_argv0: str) -> list[_Frame]:
    """The traceback's frames for the way the launcher was started: torchrun's console script, or
    `python -m torch.distributed.run|launch` (told apart by the module path given as argv[0])."""
    frames = _TRACEBACKS[kind]
    if frames[: len(_MAIN)] != _MAIN:
        return frames
    if launcher_argv0.endswith("/torch/distributed/run.py"):
        return _RUN_PY_MAIN + frames[len(_MAIN) :]
    if launcher_argv0.endswith("/torch/distributed/launch.py"):
        return _LAUNCH_RUN + frames[len(_MAIN) :]
    return frames


def launcher_traceback(kind: TracebackKind, launcher_argv0: str, site_packages: str) -> str:
    """The launcher's Python traceback up to (not including) the exception line, as torchrun prints it."""
    site = site_packages.rstrip("/")
    # Run as `fakerun`, the frame shows torch's console script beside it: a real job's traceback names
    # torchrun, never the simulator.
    head, sep, name = launcher_argv0.rpartition("/")
    argv0 = f"{head}{sep}torchrun" if name == "fakerun" else launcher_argv0
    lines = ["Traceback (most recent call last):"]
    for path, lineno, func, code, carets in _frames(kind, launcher_argv0):
        shown = argv0 if path == _ARGV0 else path.replace(_SITE, site)
        lines.append(f'  File "{shown}", line {lineno}, in {func}')
        if code:  # frozen modules show no source line
            lines.append(f"    {code}")
        if carets is not None:
            column, count = carets
            lines.append("    " + " " * column + "^" * count)
    return "\n".join(lines) + "\n"


def exception_text(
    exc_line: str,
    kind: TracebackKind,
    launcher_argv0: str,
    site_packages: str,
    cause: tuple[TracebackKind, str] | None = None,
) -> str:
    """An uncaught exception as Python prints it: the cause's traceback and line first when it was raised
    `from` one, then the traceback and the exception line."""
    text = ""
    if cause is not None:
        cause_kind, cause_line = cause
        text = launcher_traceback(cause_kind, launcher_argv0, site_packages) + cause_line + "\n" + CHAINED
    return text + launcher_traceback(kind, launcher_argv0, site_packages) + exc_line + "\n"
