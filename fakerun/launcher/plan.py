"""Resolves torchrun's options into a launch plan: topology, rendezvous form, streams, signals."""

from __future__ import annotations

import math
import os
import re
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

from fakerun.launcher.report import TracebackKind
from fakerun.limits import MAX_SECONDS_OPTION
from fakerun.options import TorchrunArgs

RdzvForm: TypeAlias = Literal["standalone", "c10d", "static"]
StdMap: TypeAlias = dict[int, int]  # local rank -> Std bits (1 = stdout, 2 = stderr)

DEFAULT_MASTER_PORT = 29500
DEFAULT_GPUS_PER_NODE = 8
DEFAULT_SHUTDOWN_TIMEOUT = 30
SHUTDOWN_TIMEOUT_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
# torch's rendezvous handler registry (torch/distributed/elastic/rendezvous/registry.py) and the default
# port each backend's handler gives an endpoint without one (static has none: -1, as _get_addr_and_port).
RDZV_BACKENDS = {"static": -1, "c10d": 29400, "etcd": 2379, "etcd-v2": 2379}
_STD_VALUE = r"^[0-3]$"
_STD_MAPPING = r"^(\d:[0-3],)*(\d:[0-3])$"


class LaunchError(Exception):
    """A bad value found after parsing: torchrun raises, prints the exception line and exits 1.

    `traceback` names the frames torch raised it from when fakerun shows them (report.exception_text), and
    `cause` the exception it was raised `from`, with its own frames.
    """

    def __init__(
        self,
        exc_line: str,
        exit_code: int = 1,
        *,
        traceback: TracebackKind | None = None,
        cause: tuple[TracebackKind, str] | None = None,
    ) -> None:
        super().__init__(exc_line)
        self.exc_line = exc_line
        self.exit_code = exit_code
        self.traceback = traceback
        self.cause = cause


@dataclass(frozen=True)
class Rendezvous:
    """What the rendezvous hands every worker group: run id, master address, group numbering."""

    form: RdzvForm
    backend: str
    endpoint: str
    run_id: str
    master_addr: str
    master_port: int
    conf: dict[str, str]


@dataclass(frozen=True)
class NodePlan:
    """One (simulated) node of the job as this launcher plays it."""

    group_rank: int
    host: str


@dataclass(frozen=True)
class LaunchPlan:
    """Everything the agent needs to start, watch, restart and report the worker groups."""

    args: TorchrunArgs
    rdzv: Rendezvous
    min_nodes: int
    max_nodes: int
    nproc_per_node: int
    nodes: tuple[NodePlan, ...]
    group_world_size: int
    redirects: StdMap
    tee: StdMap
    local_ranks_filter: frozenset[int] | None
    signals_to_handle: tuple[signal.Signals, ...]
    unknown_signals: tuple[str, ...]
    shutdown_timeout: float
    set_omp_threads: bool
    multi_node: bool = False  # one node of several, meeting the others over TCP (see is_multi_node)

    @property
    def world_size(self) -> int:
        """Number of ranks in the whole job."""
        return self.group_world_size * self.nproc_per_node

    @property
    def entrypoint(self) -> str:
        """The script, module or binary the workers run, as torchrun names it in its report."""
        return self.args.training_script


def _int_or_raise(text: str, kind: TracebackKind) -> int:
    """int(text), or torch's ValueError from that int() raised from the frames `kind` names."""
    try:
        return int(text)
    except ValueError as exc:
        raise LaunchError(f"ValueError: {exc}", traceback=kind) from None


def parse_min_max_nnodes(nnodes: str) -> tuple[int, int]:
    """Parses `N` or `MIN:MAX` and checks 0 < MIN <= MAX, raising torchrun's exceptions."""
    parts = nnodes.split(":")
    if len(parts) == 1:
        lo = hi = _int_or_raise(parts[0], "nnodes_int")
    elif len(parts) == 2:
        lo = _int_or_raise(parts[0], "nnodes_min_int")
        hi = _int_or_raise(parts[1], "nnodes_max_int")
    else:
        raise LaunchError(
            f'RuntimeError: nnodes={nnodes} is not in "MIN:MAX" format', traceback="nnodes_format"
        )
    if not 0 < lo <= hi:
        raise LaunchError(
            f"AssertionError: min_nodes must be > 0 and <= max_nodes, got min_nodes={lo}, max_nodes={hi}",
            traceback="nnodes_range",
        )
    return lo, hi


def determine_nproc(value: str, gpus_per_node: int, cpu_count: int) -> int:
    """Maps --nproc-per-node to a worker count as torch's determine_local_world_size.

    `gpus_per_node` is what CUDA would count: the simulated GPUs of the preset, or the host's own (0 on a
    machine without any) when the real scripts run.
    """
    try:
        n = int(value)
    except ValueError as exc:
        # torch raises its own ValueErrors `from` this one, so its traceback prints first.
        cause: tuple[TracebackKind, str] = ("nproc_int", f"ValueError: {exc}")
        if value == "cpu":
            return cpu_count
        if value == "gpu":
            if gpus_per_node < 1:
                raise LaunchError(
                    "ValueError: Cuda is not available.", traceback="nproc_no_cuda", cause=cause
                ) from None
            return gpus_per_node
        if value == "xpu":
            raise LaunchError(
                "ValueError: Xpu is not available.", traceback="nproc_no_xpu", cause=cause
            ) from None
        if value == "auto":
            return gpus_per_node if gpus_per_node > 0 else cpu_count
        unsupported = f"ValueError: Unsupported nproc_per_node value: {value}"
        raise LaunchError(unsupported, traceback="nproc_unsupported", cause=cause) from None
    if n < 1:
        raise LaunchError(f"ValueError: Unsupported nproc_per_node value: {value}")
    return n


def parse_std(value: str, nproc: int) -> StdMap:
    """Parses --redirects/--tee (`3` or `0:1,1:2`) into a per-local-rank map, as torch's Std.from_str."""
    if re.match(_STD_VALUE, value):
        return dict.fromkeys(range(nproc), int(value))
    if re.match(_STD_MAPPING, value):
        mapping = {lr: 0 for lr in range(nproc)}
        for item in value.split(","):
            lr, std = item.split(":")
            mapping[int(lr)] = int(std)
        return mapping
    raise LaunchError(f"ValueError: {value} does not match: <{_STD_VALUE}> or <{_STD_MAPPING}>")


def parse_rdzv_conf(conf: str) -> dict[str, str]:
    """Parses `k=v,k=v` as torch's _parse_rendezvous_config."""
    result: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in conf.split(","))):
        key, sep, val = item.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise LaunchError(
                "ValueError: The rendezvous configuration string must be in format "
                "<key1>=<value1>,...,<keyN>=<valueN>."
            )
        result[key.strip()] = val.strip()
    return result


def parse_local_ranks_filter(value: str) -> frozenset[int] | None:
    """Parses --local-ranks-filter; torch raises ValueError on anything but comma-separated ints."""
    if not value:
        return None
    try:
        return frozenset(int(x) for x in value.split(","))
    except ValueError:
        raise LaunchError(
            f"ValueError: --local_ranks_filter must be a comma-separated list of integers e.g. "
            f"--local_ranks_filter=0,1,2 ({value!r} given)"
        ) from None


def parse_signals(value: str) -> tuple[tuple[signal.Signals, ...], tuple[str, ...]]:
    """Parses --signals-to-handle into signals we can catch and names we cannot."""
    good: list[signal.Signals] = []
    bad: list[str] = []
    for name in filter(None, (s.strip() for s in value.split(","))):
        sig = getattr(signal.Signals, name, None)
        if sig is None or sig in (signal.SIGKILL, signal.SIGSTOP):
            bad.append(name)
        elif sig not in good:
            good.append(sig)
    return tuple(good), tuple(bad)


def select_rendezvous(
    args: TorchrunArgs, max_nodes: int, fqdn: str, free_port: int, run_uuid: str
) -> Rendezvous:
    """Applies torchrun's rendezvous selection rules (standalone, automatic c10d, static)."""
    conf = parse_rdzv_conf(args.rdzv_conf)
    c10d_addr = args.local_addr or fqdn
    if args.standalone:
        return Rendezvous("standalone", "c10d", "localhost:0", run_uuid, c10d_addr, free_port, conf)
    if (
        args.rdzv_backend == "static"
        and not args.rdzv_endpoint
        and args.master_port is None
        and max_nodes == 1
    ):
        return Rendezvous("c10d", "c10d", "localhost:0", run_uuid, c10d_addr, free_port, conf)
    if args.rdzv_backend == "static":
        port = args.master_port if args.master_port is not None else DEFAULT_MASTER_PORT
        endpoint = f"{args.master_addr}:{port}"
        return Rendezvous("static", "static", endpoint, args.rdzv_id, args.master_addr, port, conf)
    return Rendezvous("c10d", args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id, c10d_addr, free_port, conf)


def host_names(nnodes: int, real_host: str, node_host: Callable[[int], str]) -> tuple[str, ...]:
    """Host names of the simulated nodes: the real one for a single node, the cluster's pattern otherwise."""
    if nnodes == 1:
        return (real_host,)
    return tuple(node_host(i) for i in range(nnodes))


def _default_node_host(index: int) -> str:
    return f"gpu-node-{index + 1:03d}"


def random_uuid() -> str:
    """A random (version 4) UUID, as torchrun's str(uuid.uuid4()) names a standalone run; made here because
    the uuid module's import (platform's) is 2 ms of every launcher's start-up."""
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40  # version 4
    b[8] = b[8] & 0x3F | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def make_plan(
    args: TorchrunArgs,
    environ: dict[str, str] | os._Environ[str],
    *,
    fqdn: str,
    free_port: int,
    cpu_count: int,
    run_uuid: str | None = None,
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE,
    node_host: Callable[[int], str] = _default_node_host,
) -> LaunchPlan:
    """Builds the launch plan for one fakerun that plays every node of the job on this host."""
    # In torch's order (config_from_args): the nodes, the restarts, then the workers per node.
    min_nodes, max_nodes = parse_min_max_nnodes(args.nnodes)
    if args.max_restarts < 0:
        raise LaunchError("AssertionError: max_restarts must be >= 0", traceback="max_restarts")
    nproc = determine_nproc(args.nproc_per_node, gpus_per_node, cpu_count)
    if args.module and args.no_python:
        raise LaunchError(
            "ValueError: Don't use both the '--no-python' flag and the '--module' flag at the same time."
        )
    rdzv = select_rendezvous(args, max_nodes, fqdn, free_port, run_uuid or random_uuid())
    signals, unknown = parse_signals(args.signals_to_handle)
    try:
        shutdown_timeout = float(min(_shutdown_timeout(args, environ), MAX_SECONDS_OPTION))
    except ValueError:
        shutdown_timeout = float(DEFAULT_SHUTDOWN_TIMEOUT)  # check_launch reports it before anything starts
    multi = is_multi_node(args, rdzv, max_nodes)
    if multi:
        # This host is one node of the job: it starts only its own ranks and meets the other nodes' agents
        # over TCP (c10d numbers nodes by join order: the group rank is known after the rendezvous).
        if args.node_rank >= max_nodes:
            raise LaunchError(f"AssertionError: node_rank {args.node_rank} must be < nnodes {max_nodes}")
        if args.node_rank < 0:
            # torch waits for a node 0 that a negative rank can never be matched with, until the timeout.
            raise LaunchError(f"AssertionError: node_rank {args.node_rank} must be >= 0")
        group_rank = args.node_rank if rdzv.form == "static" else 0
        nodes: tuple[NodePlan, ...] = (NodePlan(group_rank, fqdn),)
    else:
        # A standalone job has one agent, whose round completes with MIN nodes after torch's last call
        # (torchrun's `--standalone --nnodes 1:2` runs one node): this launcher plays MIN of them. Static
        # waits for MAX (torch's static rendezvous is as large as max_nodes).
        played = min_nodes if rdzv.form == "standalone" else max_nodes
        nodes = tuple(NodePlan(i, h) for i, h in enumerate(host_names(played, fqdn, node_host)))
    return LaunchPlan(
        args=args,
        rdzv=rdzv,
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        nproc_per_node=nproc,
        nodes=nodes,
        group_world_size=max_nodes if multi else len(nodes),  # a multi-node job's size follows its rendezvous
        redirects=parse_std(args.redirects, nproc),
        tee=parse_std(args.tee, nproc),
        local_ranks_filter=parse_local_ranks_filter(args.local_ranks_filter),
        signals_to_handle=signals,
        unknown_signals=unknown,
        shutdown_timeout=shutdown_timeout,
        set_omp_threads=nproc > 1 and "OMP_NUM_THREADS" not in environ,
        multi_node=multi,
    )


def is_multi_node(args: TorchrunArgs, rdzv: Rendezvous, max_nodes: int) -> bool:
    """Whether this fakerun is one node among several (else it plays every node of the job itself).

    As torchrun: a c10d endpoint with several nodes, or a static job told its node rank, waits for the
    other nodes' agents. fakerun's addition: a bare `--nnodes N` (static, default node rank) plays all N.
    """
    if max_nodes <= 1 or rdzv.form == "standalone":
        return False
    if rdzv.form == "c10d":
        return True
    return args.node_rank > 0 or "node_rank" in args.explicit


def _shutdown_timeout(args: TorchrunArgs, environ: Mapping[str, str]) -> int:
    """--shutdown-timeout, else int(TORCH_ELASTIC_SHUTDOWN_TIMEOUT or 30), as torch's LaunchConfig."""
    if args.shutdown_timeout is not None:
        if args.shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be non-negative, got {args.shutdown_timeout}")
        return args.shutdown_timeout
    # torch reads the variable with int(): "30.5", "nan" and "" are ValueErrors there too.
    return int(environ.get(SHUTDOWN_TIMEOUT_ENV, str(DEFAULT_SHUTDOWN_TIMEOUT)))


def _port_text(text: str) -> int | None:
    """torch's _try_parse_port: one to five ASCII digits, else None."""
    return int(text) if re.fullmatch(r"[0-9]{1,5}", text) else None


def parse_rendezvous_endpoint(endpoint: str, default_port: int) -> tuple[str, int]:
    """(host, port) of `host[:port]` with torch's checks and ValueError messages (rendezvous/utils.py)."""
    endpoint = endpoint.strip()
    if not endpoint:
        return ("localhost", default_port)
    if endpoint[0] == "[" and endpoint[-1] == "]":
        host, rest = endpoint, []
    else:
        host, *rest = endpoint.rsplit(":", 1)
    if len(host) > 1 and host[0] == "[" and host[-1] == "]":
        host = host[1:-1]
    if len(rest) == 1:
        port = _port_text(rest[0])
        if port is None or port >= 2**16:
            raise ValueError(
                f"The port number of the rendezvous endpoint '{endpoint}' must be an integer "
                "between 0 and 65536."
            )
    else:
        port = default_port
    if not re.match(r"^[\w\.:-]+$", host):
        raise ValueError(
            f"The hostname of the rendezvous endpoint '{endpoint}' must be a dot-separated list of "
            "labels, an IPv4 address, or an IPv6 address."
        )
    return host, port


def check_launch(plan: LaunchPlan, environ: Mapping[str, str], prog: str = "fakerun") -> None:
    """What torchrun raises after its start-up lines and before or soon after its workers start: LaunchError.

    In torch's order: the shutdown timeout (LaunchConfig), the static endpoint (launch_agent), the rendezvous
    backend (the handler registry) and its endpoint, and the monitor interval (time.sleep in the agent's
    loop, which torch reaches only after starting the workers; fakerun refuses it before).
    """
    try:
        timeout = _shutdown_timeout(plan.args, environ)
    except ValueError as exc:
        raise LaunchError(f"ValueError: {exc}") from None
    if timeout > MAX_SECONDS_OPTION:  # an explicit --shutdown-timeout that long is a usage error already
        raw = environ.get(SHUTDOWN_TIMEOUT_ENV, "")
        shown = raw if len(raw) <= 40 else raw[:37] + "..."
        raise LaunchError(
            f"{prog}: error: {SHUTDOWN_TIMEOUT_ENV}={shown} is longer than fakerun allows "
            f"(at most {MAX_SECONDS_OPTION:g} seconds)"
        )
    try:
        rdzv = plan.rdzv
        # One node of several: the rendezvous (meet) checks the endpoint it dials, in its own words.
        if rdzv.form == "static" and not plan.multi_node:
            parse_rendezvous_endpoint(rdzv.endpoint, RDZV_BACKENDS["static"])
        if rdzv.backend not in RDZV_BACKENDS:
            raise ValueError(
                f"The rendezvous backend '{rdzv.backend}' is not registered. "
                "Did you forget to call `register`?"
            )
        if rdzv.form != "static" and not plan.multi_node:
            parse_rendezvous_endpoint(rdzv.endpoint, RDZV_BACKENDS[rdzv.backend])
        interval = plan.args.monitor_interval
        if math.isnan(interval):
            raise ValueError("Invalid value NaN (not a number)")
        if interval < 0:
            raise ValueError("sleep length must be non-negative")
    except ValueError as exc:
        raise LaunchError(f"ValueError: {exc}") from None
