"""The parsed command line: torchrun's options as typed, and fakerun's own --fake-* options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TorchrunArgs:
    """torchrun 2.13's options after argparse and PET_* defaults, values exactly as typed."""

    training_script: str
    training_script_args: list[str] = field(default_factory=list)
    nnodes: str = "1:1"
    nproc_per_node: str = "1"
    rdzv_backend: str = "static"
    rdzv_endpoint: str = ""
    rdzv_id: str = "none"
    rdzv_conf: str = ""
    standalone: bool = False
    max_restarts: int = 0
    monitor_interval: float = 0.1
    start_method: str = "spawn"
    event_log_handler: str = "null"
    role: str = "default"
    module: bool = False
    no_python: bool = False
    run_path: bool = False
    log_dir: str | None = None
    redirects: str = "0"
    tee: str = "0"
    local_ranks_filter: str = ""
    duplicate_stdout_filters: list[str] = field(default_factory=list)
    duplicate_stderr_filters: list[str] = field(default_factory=list)
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None
    local_addr: str | None = None
    logs_specs: str | None = None
    numa_binding: str | None = None
    signals_to_handle: str = "SIGTERM,SIGINT,SIGHUP,SIGQUIT"
    shutdown_timeout: int | None = None
    virtual_local_rank: bool = False
    # torch.distributed.launch's --use-env; torchrun has no such option and behaves as if it were set.
    use_env: bool = True
    # Options the user set (on the command line or through PET_<DEST>), as opposed to defaults: a default
    # --node-rank 0 and an explicit one mean different topologies (fakerun plays every node vs one node).
    explicit: frozenset[str] = field(default=frozenset(), compare=False)


@dataclass(frozen=True)
class FakeOptions:
    """fakerun's own options (--fake-<name>, FAKERUN_<NAME>, or the --fake-config TOML file)."""

    config: str | None = None
    exec: bool = False
    seed: int = 0  # used as given only when set (sources); otherwise the launcher draws a fresh one
    speed: float = 1.0
    max_steps: int | None = None
    max_time: float | None = None  # seconds
    nccl_timeout: float | None = None  # seconds; None: the framework's, or the script's arguments'
    start_step: int = 0
    model: str | None = None
    gpu: str | None = None
    cluster: str | None = None
    storage: str | None = None  # None: the cluster preset's
    log_format: str = "console"
    log_level: str = "info"  # the lowest level of fakerun's own events shown (debug, info, warning)
    trainer: str | None = None  # a dialect's name (fakerun/dialects); None: the script's arguments decide
    grid: bool = False  # show the GPU grid in any dialect's output
    no_files: bool = False  # do not create the files the job reports writing
    metrics: str | None = None
    tensorboard: str | None = None  # write TensorBoard event files into this folder
    loop: bool = False
    early_stopping: int | None = None  # validations without improvement before the run stops
    skip_memory_check: bool = False
    check: bool = False  # print the GPU-memory feasibility verdict and exit (0 fits, 1 does not)
    fail: tuple[str, ...] = ()  # --fake-fail scenarios, SCENARIO[@STEP][:RANK]
    list_presets: bool = False
    list_failures: bool = False
    version: bool = False
    install_shims: str | None = None
    # Where each option that was set came from: "command line", "FAKERUN_<NAME>" or "config file <path>".
    # Options absent here kept their default, so presets may still fill them in.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class CommandLine:
    """Everything the launcher was asked to do."""

    torchrun: TorchrunArgs
    fake: FakeOptions
    prog: str = "fakerun"
