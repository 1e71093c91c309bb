"""torchrun 2.13's launcher log lines: the glog-style prefix, the source table and every message's text."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

# Sources ("path relative to site-packages:line") of every message the launcher logs (torch 2.13).
_AGENT = "torch/distributed/elastic/agent/server/api.py"
_LOCAL_AGENT = "torch/distributed/elastic/agent/server/local_elastic_agent.py"
_MP_API = "torch/distributed/elastic/multiprocessing/api.py"

RUN_PY_OMP = "torch/distributed/run.py:874"
RUN_PY_RDZV_INFO = "torch/distributed/run.py:992"
RUN_PY_USING_NPROC = "torch/distributed/run.py:747"
LAUNCHER_API_CONFIG = "torch/distributed/launcher/api.py:254"
AGENT_RDZV_COMPLETE = f"{_AGENT}:553"
AGENT_RENDEZVOUSING = f"{_AGENT}:707"
AGENT_STARTING_GROUP = f"{_AGENT}:715"
AGENT_STOPPING_GROUP = f"{_AGENT}:733"
AGENT_DEATH_SIGNAL = f"{_AGENT}:753"
AGENT_STARTING_WORKERS = f"{_AGENT}:912"
AGENT_GROUP_SUCCEEDED = f"{_AGENT}:932"
AGENT_GROUP_FAILED = f"{_AGENT}:942"
AGENT_NEW_NODES = f"{_AGENT}:962"  # _invoke_run's HEALTHY branch, ten lines after the FAILED one's call
AGENT_LOCAL_GROUP_FINISHED = f"{_AGENT}:985"
AGENT_DONE_WAITING = f"{_AGENT}:1000"
LOCAL_AGENT_FILE_TIMER = f"{_LOCAL_AGENT}:265"
LOCAL_AGENT_HEALTH_CHECK = f"{_LOCAL_AGENT}:345"
LOCAL_AGENT_STORE = f"{_LOCAL_AGENT}:406"
API_FAILED = f"{_MP_API}:1002"
API_SENDING = f"{_MP_API}:1028"
API_UNABLE = f"{_MP_API}:1047"
ERRORS_NO_ERROR_FILE = "torch/distributed/elastic/multiprocessing/errors/__init__.py:380"
ERROR_HANDLER_NO_PARENT_FILE = "torch/distributed/elastic/multiprocessing/errors/error_handler.py:145"

RUN_PY_PATH = "torch/distributed/run.py"

_LEVEL_NUMBERS = {"D": 10, "I": 20, "W": 30, "E": 40, "C": 50, "F": 50}
_STARS_41 = "*" * 41
_STARS_38 = "*" * 38
_ERRORS_URL = "https://pytorch.org/docs/stable/elastic/errors.html"


def level_letter(level: str) -> str:
    """The glog letter of a level given as a letter or a name ("W", "WARNING", "warning" -> "W")."""
    return level.strip()[:1].upper()


def glog_prefix(level: str, when: float, pid: int, source: str) -> str:
    """`W1122 05:02:49.064000 5700 torch/distributed/run.py:874]`: local time, milliseconds times 1000."""
    # Python's logging keeps whole milliseconds (LogRecord.msecs), so the last three digits are always 000;
    # rounding to microseconds first keeps a float like 1795323910.064 from truncating to .063.
    micros = round(when * 1_000_000)
    seconds, fraction = divmod(micros, 1_000_000)
    millis = fraction // 1000
    stamp = time.strftime("%m%d %H:%M:%S", time.localtime(seconds))
    return f"{level_letter(level)}{stamp}.{millis * 1000:06d} {pid} {source}]"


def format_glog(level: str, when: float, pid: int, source: str, message: str) -> str:
    """One prefixed line per line of the message, each ending in a newline; an empty line keeps `] `."""
    prefix = glog_prefix(level, when, pid, source)
    return "".join(f"{prefix} {line}\n" for line in message.split("\n"))


def format_plain(level: str, message: str) -> str:
    """A message of run.py under `python -m torch.distributed.run`: bare text, or nothing below WARNING."""
    # The logger is then `__main__`, which has no handler: Python's last-resort handler prints
    # "%(message)s" for WARNING and above and drops the rest.
    if _LEVEL_NUMBERS.get(level_letter(level), 0) < _LEVEL_NUMBERS["W"]:
        return ""
    return message + "\n"


def format_log(
    level: str,
    when: float,
    pid: int,
    source: str,
    message: str,
    *,
    python_m: bool,
    where: Callable[[str], str] | None = None,
) -> str:
    """Either form: under `python -m` only run.py's own messages lose the prefix, torch modules keep it;
    `where` maps a source (site-packages-relative) to the path shown."""
    if python_m and source.startswith(RUN_PY_PATH + ":"):
        return format_plain(level, message)
    return format_glog(level, when, pid, source if where is None else where(source), message)


# run.py


def omp_banner() -> list[str]:
    """The four W lines shown when nproc-per-node > 1 and OMP_NUM_THREADS is unset."""
    return [
        "",
        _STARS_41,
        "Setting OMP_NUM_THREADS environment variable for each process to be 1 in default, to avoid your "
        "system being overloaded, please further tune the variable for optimal performance in your "
        "application as needed. ",
        _STARS_41,
    ]


def rendezvous_info_block(backend: str, endpoint: str, rdzv_id: str) -> list[str]:
    """The lines of run.py's `--standalone` INFO message (one message, blank first and last lines)."""
    return [
        "",
        _STARS_38,
        "Rendezvous info:",
        f"--rdzv-backend={backend} --rdzv-endpoint={endpoint} --rdzv-id={rdzv_id}",
        _STARS_38,
        "",
    ]


def using_nproc(n: int | str) -> str:
    """`Using nproc_per_node=2.` (the value as typed, so `cpu` stays `cpu`)."""
    return f"Using nproc_per_node={n}."


# launcher/api.py


@dataclass(frozen=True)
class LaunchConfigView:
    """The values of launcher/api.py's `Starting elastic_operator with launch configs` block."""

    entrypoint: str
    min_nodes: int
    max_nodes: int
    nproc_per_node: int
    run_id: str
    rdzv_backend: str
    rdzv_endpoint: str
    rdzv_configs: Mapping[str, object]
    max_restarts: int
    monitor_interval: float
    log_dir: str
    metrics_cfg: Mapping[str, str] = field(default_factory=dict)
    event_log_handler: str = "null"
    numa_options: str | None = None
    signals_to_handle: str = "SIGTERM,SIGINT,SIGHUP,SIGQUIT"
    duplicate_stdout_filters: Sequence[str] = ()
    duplicate_stderr_filters: Sequence[str] = ()


def launch_config_block(cfg: LaunchConfigView) -> list[str]:
    """The lines of the launch-config INFO message, keys aligned, ending with an empty line."""
    rows: list[tuple[str, object]] = [
        ("entrypoint", cfg.entrypoint),
        ("min_nodes", cfg.min_nodes),
        ("max_nodes", cfg.max_nodes),
        ("nproc_per_node", cfg.nproc_per_node),
        ("run_id", cfg.run_id),
        ("rdzv_backend", cfg.rdzv_backend),
        ("rdzv_endpoint", cfg.rdzv_endpoint),
        ("rdzv_configs", dict(cfg.rdzv_configs)),
        ("max_restarts", cfg.max_restarts),
        ("monitor_interval", float(cfg.monitor_interval)),
        ("log_dir", cfg.log_dir),
        ("metrics_cfg", dict(cfg.metrics_cfg)),
        ("event_log_handler", cfg.event_log_handler),
        ("numa_options", cfg.numa_options),
        ("signals_to_handle", cfg.signals_to_handle),
        ("duplicate_stdout_filters", list(cfg.duplicate_stdout_filters)),
        ("duplicate_stderr_filters", list(cfg.duplicate_stderr_filters)),
    ]
    # torch's format string pads by hand to the longest key, `duplicate_stdout_filters`.
    width = len("duplicate_stdout_filters")
    lines = ["Starting elastic_operator with launch configs:"]
    lines += [f"  {key:<{width}} : {value}" for key, value in rows]
    lines.append("")
    return lines


# agent/server/api.py


def starting_workers(role: str, entrypoint: str) -> str:
    """`[default] starting workers for entrypoint: python3` (entrypoint = the binary's basename)."""
    return f"[{role}] starting workers for entrypoint: {entrypoint}"


def rendezvousing(role: str) -> str:
    """`[default] Rendezvous'ing worker group`."""
    return f"[{role}] Rendezvous'ing worker group"


def rendezvous_complete_block(
    role: str,
    restart_count: int,
    master_addr: str,
    master_port: int,
    group_rank: int,
    group_world_size: int,
    local_ranks: Sequence[int],
    role_ranks: Sequence[int],
    global_ranks: Sequence[int],
    role_world_sizes: Sequence[int],
    global_world_sizes: Sequence[int],
    event_log_handler: str = "null",
) -> list[str]:
    """The lines of the `Rendezvous complete for workers. Result:` INFO message, ending with an empty line."""
    return [
        f"[{role}] Rendezvous complete for workers. Result:",
        f"  restart_count={restart_count}",
        f"  master_addr={master_addr}",
        f"  master_port={master_port}",
        f"  group_rank={group_rank}",
        f"  group_world_size={group_world_size}",
        f"  local_ranks={list(local_ranks)}",
        f"  role_ranks={list(role_ranks)}",
        f"  global_ranks={list(global_ranks)}",
        f"  role_world_sizes={list(role_world_sizes)}",
        f"  global_world_sizes={list(global_world_sizes)}",
        f"  event_log_handler={event_log_handler}",
        "",
    ]


def starting_worker_group(role: str) -> str:
    """`[default] Starting worker group`."""
    return f"[{role}] Starting worker group"


def stopping_worker_group(role: str) -> str:
    """`[default] Stopping worker group` (INFO, before a restart)."""
    return f"[{role}] Stopping worker group"


def new_nodes_detected(role: str, waiting: int, group_rank: int) -> str:
    """`[default] Detected 1 new nodes from group_rank=0; will restart worker group` (INFO)."""
    return f"[{role}] Detected {waiting} new nodes from group_rank={group_rank}; will restart worker group"


def worker_group_failed_will_restart(
    role: str, attempts_left: int, max_restarts: int, state: str = "FAILED"
) -> str:
    """`[default] Worker group FAILED. 1/1 attempts left; will restart worker group`."""
    return (
        f"[{role}] Worker group {state}. {attempts_left}/{max_restarts} attempts left; "
        "will restart worker group"
    )


def received_death_signal(signum: int) -> str:
    """`Received 15 death signal, shutting down workers` (W)."""
    return f"Received {int(signum)} death signal, shutting down workers"


def worker_group_succeeded(role: str, exit_barrier_timeout: float = 300) -> str:
    """`[default] worker group successfully finished. Waiting 300 seconds for other agents to finish.`"""
    return (
        f"[{role}] worker group successfully finished. "
        f"Waiting {exit_barrier_timeout} seconds for other agents to finish."
    )


def local_group_finished(state: str = "SUCCEEDED", exit_barrier_timeout: float = 300) -> str:
    """`Local worker group finished (WorkerState.SUCCEEDED). Waiting 300 seconds for other agents ...`."""
    return (
        f"Local worker group finished (WorkerState.{state}). "
        f"Waiting {exit_barrier_timeout} seconds for other agents to finish"
    )


def done_waiting(elapsed: float) -> str:
    """`Done waiting for other agents. Elapsed: 0.00024271011352539062 seconds` (the float's repr)."""
    return f"Done waiting for other agents. Elapsed: {float(elapsed)!r} seconds"


def success_lines(role: str, elapsed: float, exit_barrier_timeout: float = 300) -> list[tuple[str, str]]:
    """The three INFO (source, message) pairs of a successful run, in order."""
    return [
        (AGENT_GROUP_SUCCEEDED, worker_group_succeeded(role, exit_barrier_timeout)),
        (AGENT_LOCAL_GROUP_FINISHED, local_group_finished("SUCCEEDED", exit_barrier_timeout)),
        (AGENT_DONE_WAITING, done_waiting(elapsed)),
    ]


# agent/server/local_elastic_agent.py


def use_agent_store(value: bool = True) -> str:
    """`use_agent_store: True`."""
    return f"use_agent_store: {value}"


def no_file_timer() -> str:
    """The INFO line saying the FileTimerServer is not started."""
    return "Environment variable 'TORCHELASTIC_ENABLE_FILE_TIMER' not found. Do not start FileTimerServer."


def no_health_check() -> str:
    """The INFO line saying the health check server is not started."""
    return "Environment variable 'TORCHELASTIC_HEALTH_CHECK_PORT' not found. Do not start health check."


# multiprocessing/api.py


def sending_closing_signal(pid: int, signame: str) -> str:
    """`Sending process 10624 closing signal SIGTERM` (W)."""
    return f"Sending process {pid} closing signal {signame}"


def failed_line(exitcode: int, local_rank: int, pid: int, binary: str) -> str:
    """`failed (exitcode: 3) local_rank: 1 (pid: 10625) of binary: /opt/venv/bin/python3` (E)."""
    return f"failed (exitcode: {exitcode}) local_rank: {local_rank} (pid: {pid}) of binary: {binary}"


def unable_to_shutdown(pid: int, sig: int, kill_sig: int) -> str:
    """`Unable to shutdown process 19571 via 15, forcefully exiting via 9` (W, signals as numbers)."""
    return f"Unable to shutdown process {pid} via {int(sig)}, forcefully exiting via {int(kill_sig)}"


# multiprocessing/errors


def no_error_file_for_local_rank(local_rank: int) -> str:
    """The INFO line torch logs as a tuple's repr when the root cause left no error file."""
    # torch passes (format, rank) as one tuple to logger.info, so the tuple itself is the message;
    # the number is the root cause's global rank despite the wording.
    template = (
        "local_rank %s FAILED with no error file. "
        "Decorate your entrypoint fn with @record for traceback info. "
        f"See: {_ERRORS_URL}"
    )
    return str((template, local_rank))


def no_error_file_for_parent(path: str) -> str:
    """`no error file defined for parent, to copy child error file (<path>)` (E)."""
    return f"no error file defined for parent, to copy child error file ({path})"
