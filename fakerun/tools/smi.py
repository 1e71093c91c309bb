"""fakerun-smi: a fake `nvidia-smi` that shows the GPUs of the fakerun job running on this machine.

Running jobs publish their state in `fakerun.paths.state_dir()` (one `job-<pid>.json` per
launcher, rewritten about once a second). fakerun-smi shows one node of a live job: the job `--run-id`
names, else the one whose launcher started last (said on stderr when several run); the node whose
simulated host name is this machine's, else node 0 (`--node N` picks another). With no job, the eight
idle H100s of the default cluster preset. Besides the default table: `-L`, `--query-gpu`, `-q`,
`--version`, `topo -m`, `dmon`, and `--serve` (dcgm-exporter's metrics, fakerun/tools/dcgm.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import signal
import socket
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import FrameType
from typing import Any, NoReturn

import psutil

from fakerun.paths import state_dir
from fakerun.presets import ClusterSpec, GpuSpec, PresetError, check_bus_ids, load_cluster, load_gpu
from fakerun.render import smi, smi_reports
from fakerun.render.nccl import cpu_affinity, gpu_socket, nccl_topo_for, nic_index, pci_bus_id
from fakerun.sim.stack import stack_for
from fakerun.sim.telemetry import GpuTelemetry, board, idle_telemetry, settle

__all__ = ["Snapshot", "choose_job", "choose_node", "main", "node_snapshots", "running_jobs", "snapshot"]

STALE_S = 10.0  # a state file not rewritten for this long belongs to no running job
IDLE_CLUSTER = "dgx-h100"
DEFAULT_PROCESS = "/usr/bin/python3"
# Excerpt 40: a process's memory is its GPU's used memory less the 19 MiB the driver keeps for itself.
DRIVER_RESERVED_MIB = 19
# A worker that has not reported telemetry yet already holds its CUDA context (~0.5 GiB on an H100).
CUDA_CONTEXT_MIB = 518
NO_DEVICES = "No devices were found"
NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)
BAD_COMBINATION = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help."
_COMPUTE_CAP = {"Volta": "7.0", "Ampere": "8.0", "Ada": "8.9", "Hopper": "9.0", "Blackwell": "10.0"}
_NVIDIA_SMI_EXIT_DRIVER = 9
DCGM_PORT = 9400  # dcgm-exporter's default port


class UsageError(Exception):
    """A bad command line: one line on stderr, exit status 2."""


class _Stop(Exception):
    """SIGINT or SIGTERM while looping: leave quietly."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing the usage block and exiting."""

    def error(self, message: str) -> NoReturn:
        """Turns argparse's complaint into a UsageError."""
        raise UsageError(message)


def _seconds(text: str) -> float:
    """argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"the interval must be a positive number of seconds, not {text!r}")
    return value


def _millis(text: str) -> float:
    """argparse type: a positive number of milliseconds, as seconds."""
    return _seconds(text) / 1000.0


def _node(text: str) -> int:
    """argparse type: a node index (0-based)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a node index: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"node indexes start at 0, not {value}")
    return value


def build_parser(prog: str) -> argparse.ArgumentParser:
    """nvidia-smi's options that fakerun-smi understands, plus --node."""
    p = _Parser(
        prog=prog,
        allow_abbrev=False,  # nvidia-smi takes no abbreviations
        description="Shows the simulated GPUs of the fakerun job on this machine as nvidia-smi would.",
    )
    p.add_argument("-L", "--list-gpus", action="store_true", help="list each GPU with its UUID")
    p.add_argument(
        "-i", "--id", metavar="IDS", help="only these GPUs: indexes, UUIDs or PCI bus ids, comma-separated"
    )
    p.add_argument(
        "-l",
        "--loop",
        metavar="SEC",
        nargs="?",
        const=5.0,
        type=_seconds,
        help="print again every SEC seconds (default 5) until Ctrl-C",
    )
    p.add_argument("-lms", "--loop-ms", metavar="MS", type=_millis, help="print again every MS milliseconds")
    p.add_argument(
        "--query-gpu",
        metavar="FIELDS",
        help="GPU properties to print as CSV, e.g. index,name,utilization.gpu",
    )
    p.add_argument(
        "--query-compute-apps", metavar="FIELDS", help="process properties, e.g. pid,process_name,used_memory"
    )
    p.add_argument("--format", metavar="FMT", help="with a query: csv[,noheader][,nounits]")
    p.add_argument("-q", "--query", action="store_true", help="the long report of each GPU (or those of -i)")
    p.add_argument("--version", action="store_true", help="nvidia-smi, NVML, driver and CUDA versions")
    p.add_argument(
        "--run-id",
        metavar="ID",
        help="fakerun: the job to show (run id or launcher pid); default: the one started last",
    )
    p.add_argument(
        "--serve",
        metavar="[HOST:]PORT",
        nargs="?",
        const=str(DCGM_PORT),
        help=f"fakerun: serve the job's GPUs as dcgm-exporter does (default port {DCGM_PORT}, loopback)",
    )
    p.add_argument(
        "--node",
        metavar="N",
        type=_node,
        help="fakerun: show node N of a multi-node job (default: the node named like this host, else 0)",
    )
    return p


# ----------------------------------------------------------------------------------------------------
# Reading the running jobs


def _alive(pid: int) -> bool:
    """Whether a process exists (one we may not signal still exists)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _num(d: dict[str, Any], key: str, default: float = 0) -> float:
    """A numeric field of a state document; anything else reads as the default."""
    value = d.get(key, default)
    # JSON also carries booleans, NaN and infinities: none of them is a usable figure.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return default
    return value


def _int(d: dict[str, Any], key: str, default: int = 0) -> int:
    """An integer field of a state document (see _num)."""
    return int(_num(d, key, default))


def _gpus(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The GPU entries of a state document that are objects."""
    return [g for g in job.get("gpus", []) if isinstance(g, dict)]


def _started(job: dict[str, Any]) -> float:
    """When the job's launcher process started (0 when it cannot be read)."""
    try:
        return float(psutil.Process(_int(job, "launcher_pid")).create_time())
    except (psutil.Error, OSError, ValueError):
        return 0.0


def running_jobs(directory: str, wall: float) -> list[dict[str, Any]]:
    """The state documents of live jobs, the last started first; unreadable, stale, orphaned files skipped."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    jobs = []
    for name in names:
        if not (name.startswith("job-") and name.endswith(".json")):
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                state = json.load(f)
        except (OSError, ValueError):  # gone meanwhile, not JSON, not UTF-8
            continue
        if not isinstance(state, dict) or not isinstance(state.get("gpus"), list):
            continue
        if wall - _num(state, "updated", -1e18) > STALE_S or not _alive(_int(state, "launcher_pid")):
            continue
        jobs.append(state)
    # By launch, not by the last rewrite: every launcher rewrites its file each second, so ordering by
    # `updated` showed whichever job wrote last (two calls a second apart showed two different jobs).
    jobs.sort(key=lambda s: (_started(s), _int(s, "launcher_pid")), reverse=True)
    return jobs


def _label(job: dict[str, Any]) -> str:
    """How a job is named in messages: its run id and launcher pid."""
    return f"{str(job.get('run_id', ''))[:100]} (pid {_int(job, 'launcher_pid')})"


def choose_job(jobs: Sequence[dict[str, Any]], run_id: str | None) -> tuple[list[dict[str, Any]], str]:
    """The jobs `--run-id` names (run id or launcher pid), else the last started; and a note naming it.

    The note is empty unless a choice was made between several jobs. Several launchers of one job (one
    per node, on the same host) share its run id: all of them are kept, and `--node` picks among them.
    """
    if run_id is not None:
        chosen = [j for j in jobs if run_id in (str(j.get("run_id", "")), str(_int(j, "launcher_pid")))]
        if not chosen:
            running = ", ".join(map(_label, jobs)) or "none"
            raise UsageError(f"no running fakerun job has run id {run_id} (running: {running})")
        return chosen, ""
    if not jobs:
        return [], ""
    first = str(jobs[0].get("run_id", ""))
    chosen = [j for j in jobs if str(j.get("run_id", "")) == first]
    if len(chosen) == len(jobs):
        return chosen, ""
    others = len({str(j.get("run_id", "")) for j in jobs}) - 1
    note = (
        f"{others + 1} fakerun jobs are running; showing {_label(jobs[0])}, the last started "
        "(pick another with --run-id)"
    )
    return chosen, note


def _short(host: str) -> str:
    """A host name without its domain, lower-cased."""
    return host.split(".", 1)[0].lower()


def choose_node(
    jobs: Sequence[dict[str, Any]], hostname: str, node: int | None = None
) -> tuple[dict[str, Any], int] | None:
    """(job, node) to show: node `node` if given, else the node named like this host, else the first node."""
    views: list[tuple[dict[str, Any], int, str]] = []
    for job in jobs:
        nodes: dict[int, str] = {}
        for g in _gpus(job):
            nodes.setdefault(_int(g, "node"), str(g.get("host", "")))
        views += [(job, n, host) for n, host in sorted(nodes.items())]
    if not views:
        return None
    if node is not None:
        for job, n, _ in views:
            if n == node:
                return job, n
        known = sorted({n for _, n, _ in views})
        raise UsageError(f"the running job has no node {node} (its nodes here: {', '.join(map(str, known))})")
    # Comparing short names also matches a fully qualified name on either side, without a DNS lookup.
    for job, n, host in views:
        if host and _short(host) == _short(hostname):
            return job, n
    job, n, _ = views[0]
    return job, n


# ----------------------------------------------------------------------------------------------------
# Building the GPU samples


@dataclass(frozen=True)
class Snapshot:
    """What one refresh shows: the node's GPUs and processes, and the driver they run on."""

    gpus: list[smi.SmiGpu]
    processes: list[smi.SmiProcess]
    driver_version: str
    cuda_version: str


def _jitter(key: str, sample: int) -> float:
    """A stable fraction of a watt in [-0.45, 0.45]: nvidia-smi reads power to the centiwatt."""
    return (zlib.crc32(f"{key}/{sample}".encode()) % 91 - 45) / 100.0


def _gpu_spec(job: dict[str, Any]) -> GpuSpec:
    """The job's GPU preset; a GPU from a TOML file rebuilt from what the state says about it."""
    name = str(job.get("gpu", ""))
    try:
        return load_gpu(name)
    except PresetError:
        gpus = _gpus(job)
        first = gpus[0] if gpus else {}
        return GpuSpec(
            name=name or "gpu",
            display_name=str(job.get("gpu_display_name") or name or "NVIDIA GPU"),
            peak_bf16_tflops=0.0,
            memory_mib=_int(first, "mem_total_mib", 81559),
            tdp_w=_int(first, "power_cap", 700),
        )


def _sample(
    spec: GpuSpec, cluster: str, index: int, host: str, bus: str, tel: GpuTelemetry, sample: int
) -> smi.SmiGpu:
    """An SmiGpu from a telemetry sample of GPU `index` of `host` in a cluster of preset `cluster`."""
    uuid = smi.gpu_uuid(cluster, host, index)
    return smi.SmiGpu(
        index=index,
        name=spec.display_name,
        uuid=uuid,
        bus_id=bus,
        temp_c=tel.temp_c,
        power_w=tel.power_w + _jitter(uuid, sample),
        power_cap_w=tel.power_cap_w,
        mem_used_mib=tel.mem_used_mib,
        mem_total_mib=tel.mem_total_mib,
        util_pct=tel.util_pct,
        mem_util_pct=tel.mem_util_pct,
        sm_clock_mhz=tel.sm_clock_mhz,
        mem_clock_mhz=tel.mem_clock_mhz,
        sm_clock_max_mhz=spec.sm_clock_max_mhz,
        mem_clock_max_mhz=spec.mem_clock_max_mhz,
        pstate=tel.pstate,
        serial=smi.gpu_serial(cluster, host, index, spec.display_name),
        compute_cap=_COMPUTE_CAP.get(spec.architecture, ""),
    )


def process_name(pid: int) -> str:
    """The executable a worker runs as its command line shows it (torchrun starts sys.executable)."""
    try:
        cmdline = psutil.Process(pid).cmdline()
    except (psutil.Error, OSError):
        return DEFAULT_PROCESS
    first = str(cmdline[0]) if cmdline else ""
    # A retitled process (setproctitle) shows its whole command line as one argument.
    return first.split(" ", 1)[0] or DEFAULT_PROCESS


def _temp_now(g: dict[str, Any], job: dict[str, Any], wall: float) -> int:
    """A GPU's temperature now: its last sample's, carried on towards its target over the time since."""
    temp = _int(g, "temp")
    die, target, sampled = _num(g, "die_temp", math.nan), _num(g, "temp_target", math.nan), _num(g, "sampled")
    speed = _num(job, "speed", 1.0)
    if not (math.isfinite(die) and math.isfinite(target)) or sampled <= 0 or not 0 < speed <= 1e6:
        return temp
    # The sample's sensor noise stays: the reading moves from where the sample left it.
    moved = settle(die, target, max(0.0, wall - sampled) * speed) - die
    return round(temp + moved)


def _versions(job: dict[str, Any], spec: GpuSpec) -> tuple[str, str]:
    """(driver, CUDA version) of the job's nodes: the state's, else its cluster's stack, else the GPU's."""
    driver, cuda = job.get("driver_version"), job.get("cuda_version")
    if isinstance(driver, str) and isinstance(cuda, str) and driver and cuda and len(driver + cuda) < 40:
        return driver, cuda
    try:
        stack = stack_for(load_cluster(str(job.get("cluster", ""))))
    except (PresetError, ValueError, KeyError):
        return spec.driver_version, spec.cuda_version
    return stack.driver, stack.driver_cuda


def _idle_mib(driver: str) -> int:
    """What an idle GPU's memory reads: 0MiB from the 580 branch (H100 capture), 4MiB before (excerpt 41)."""
    return 0 if smi.driver_branch(driver) >= 580 else 4


def _job_snapshot(job: dict[str, Any], node: int, sample: int, wall: float) -> Snapshot:
    """Node `node` of a running job: its GPUs from the state, its live workers as processes."""
    # The cluster's PCI layout, as the workers' NCCL lines show it (older state files have none). A state
    # file is only data: bus ids the cluster check would refuse fall back to the default layout.
    listed = job.get("bus_ids")
    try:
        bus_ids = check_bus_ids(listed) if isinstance(listed, list) else ()
    except ValueError:
        bus_ids = ()
    spec = _gpu_spec(job)
    if spec.vendor != "nvidia":
        raise smi.SmiError(NO_DRIVER, _NVIDIA_SMI_EXIT_DRIVER)
    seed = zlib.crc32(str(job.get("run_id", "")).encode())
    cluster = str(job.get("cluster", ""))[:200]
    driver, cuda = _versions(job, spec)
    rows = sorted((g for g in _gpus(job) if _int(g, "node") == node), key=lambda g: _int(g, "local_rank"))
    gpus, processes = [], []
    for g in rows:
        index = _int(g, "local_rank")
        pid = _int(g, "pid")
        running = pid > 0 and g.get("phase") != "dead" and _alive(pid)
        reported = any(_num(g, k) for k in ("util", "temp", "power", "mem_used_mib"))
        if reported and running:
            tel = GpuTelemetry(
                util_pct=_int(g, "util"),
                mem_util_pct=_int(g, "mem_util"),
                temp_c=_temp_now(g, job, wall),
                power_w=_int(g, "power"),
                power_cap_w=_int(g, "power_cap", spec.tdp_w),
                sm_clock_mhz=_int(g, "sm_clock", spec.sm_clock_max_mhz),
                mem_clock_mhz=spec.mem_clock_max_mhz,
                mem_used_mib=_int(g, "mem_used_mib"),
                mem_total_mib=_int(g, "mem_total_mib", spec.memory_mib),
                pstate="P0",
                throttle="",
            )
        host = str(g.get("host", "")) or socket.gethostname()
        if not (reported and running):
            # Not started yet, or its process is gone: the GPU idles (a new worker holds only its context).
            tel = idle_telemetry(spec, board(cluster, host, index), seed + index, sample)
            tel = dataclasses.replace(tel, mem_used_mib=_idle_mib(driver))
        if running:
            used = max(tel.mem_used_mib, CUDA_CONTEXT_MIB + DRIVER_RESERVED_MIB)
            tel = dataclasses.replace(tel, mem_used_mib=used)
            processes.append(smi.SmiProcess(index, pid, process_name(pid), used - DRIVER_RESERVED_MIB))
        gpus.append(_sample(spec, cluster, index, host, pci_bus_id(index, bus_ids), tel, sample))
    return Snapshot(gpus, processes, driver, cuda)


def _idle_snapshot(hostname: str, sample: int) -> Snapshot:
    """The idle GPUs of the default cluster preset's node, stable for this host."""
    cluster = load_cluster(IDLE_CLUSTER)
    spec = cluster.gpu
    stack = stack_for(cluster)
    seed = zlib.crc32(hostname.encode())
    gpus = []
    for i in range(cluster.gpus_per_node):
        tel = idle_telemetry(spec, board(cluster.name, hostname, i, cluster.gpus_per_node), seed + i, sample)
        tel = dataclasses.replace(tel, mem_used_mib=_idle_mib(stack.driver))
        gpus.append(_sample(spec, cluster.name, i, hostname, pci_bus_id(i, cluster.bus_ids), tel, sample))
    return Snapshot(gpus, [], stack.driver, stack.driver_cuda)


def snapshot(
    node: int | None,
    wall: float,
    hostname: str,
    directory: str | None = None,
    run_id: str | None = None,
    notes: list[str] | None = None,
) -> Snapshot:
    """This machine's GPUs now: the chosen node of the chosen running job, or idle GPUs.

    A note about the choice (several jobs running) is appended to `notes` when given.
    """
    jobs, note = choose_job(running_jobs(state_dir() if directory is None else directory, wall), run_id)
    if note and notes is not None:
        notes.append(note)
    chosen = choose_node(jobs, hostname, node)
    if chosen is None:
        return _idle_snapshot(hostname, int(wall))
    job, n = chosen
    return _job_snapshot(job, n, int(wall), wall)


def node_snapshots(
    wall: float,
    hostname: str,
    directory: str | None = None,
    run_id: str | None = None,
    node: int | None = None,
) -> list[tuple[str, Snapshot]]:
    """(host, GPUs) of every node of the chosen job (or of node `node` only); this host idle without one."""
    jobs, _ = choose_job(running_jobs(state_dir() if directory is None else directory, wall), run_id)
    views: dict[int, tuple[dict[str, Any], str]] = {}
    for job in jobs:
        for g in _gpus(job):
            views.setdefault(_int(g, "node"), (job, str(g.get("host", "")) or hostname))
    if node is not None:
        if node not in views:
            known = ", ".join(map(str, sorted(views))) or "none"
            raise UsageError(f"the running job has no node {node} (its nodes here: {known})")
        views = {node: views[node]}
    if not views:
        return [(hostname, _idle_snapshot(hostname, int(wall)))]
    return [(host, _job_snapshot(job, n, int(wall), wall)) for n, (job, host) in sorted(views.items())]


def _job_cluster(node: int | None, wall: float, hostname: str, run_id: str | None) -> ClusterSpec:
    """The cluster preset of the job fakerun-smi shows (the default preset without one)."""
    jobs, _ = choose_job(running_jobs(state_dir(), wall), run_id)
    chosen = choose_node(jobs, hostname, node)
    name = str(chosen[0].get("cluster", "")) if chosen else IDLE_CLUSTER
    try:
        return load_cluster(name)
    except PresetError:
        return load_cluster(IDLE_CLUSTER)


def topo_node(cluster: ClusterSpec) -> smi_reports.TopoNode:
    """A node of a cluster preset as `topo -m` draws it, from the topology NCCL's lines describe."""
    gpus = cluster.gpus_per_node
    topo = nccl_topo_for(cluster, 1, gpus, [""])
    nics = cluster.nics_per_node
    sockets = tuple(gpu_socket(topo, g) for g in range(gpus))
    # Each NIC sits by the first GPU that uses it; nodes with more NICs than GPUs (p5) spread them evenly.
    nic_gpus = tuple(
        next((g for g in range(gpus) if nic_index(topo, g) == j), j * gpus // max(nics, 1))
        for j in range(nics)
    )
    return smi_reports.TopoNode(
        gpu_sockets=sockets,
        gpu_cpus=tuple(cpu_affinity(topo, g) for g in range(gpus)),
        nvlinks=cluster.gpu.nvlinks if cluster.gpu.link.startswith("NVLink") else 0,
        nic_names=tuple(f"{topo.nic_prefix}{j}" for j in range(nics)),
        nic_sockets=tuple(sockets[g] for g in nic_gpus),
        nic_gpus=nic_gpus,
    )


def select(snap: Snapshot, ids: str | None) -> Snapshot:
    """The GPUs named by `-i` (indexes, UUIDs or PCI bus ids) and their processes."""
    if ids is None:
        return snap
    wanted: set[int] = set()
    for token in (t.strip().lower() for t in ids.split(",")):
        match = [
            g.index
            for g in snap.gpus
            if token in (str(g.index), g.uuid.lower(), g.bus_id.lower(), g.bus_id[4:].lower())
        ]
        if not match:
            raise smi.SmiError(NO_DEVICES, 6)
        wanted.update(match)
    gpus = [g for g in snap.gpus if g.index in wanted]
    procs = [p for p in snap.processes if p.gpu_index in wanted]
    return Snapshot(gpus, procs, snap.driver_version, snap.cuda_version)


# ----------------------------------------------------------------------------------------------------
# The command


@dataclass(frozen=True)
class _Request:
    """What to print each refresh."""

    kind: str  # table | list | gpu | apps | query | version | dmon | topo
    fields: tuple[smi.Field, ...] = ()
    fmt: smi.CsvFormat = dataclasses.field(default_factory=smi.CsvFormat)


def _request(args: argparse.Namespace) -> _Request:
    """What the options ask for; bad combinations are errors."""
    queries = [q for q in (args.query_gpu, args.query_compute_apps) if q is not None]
    modes = len(queries) + args.list_gpus + args.query + args.version + (args.serve is not None)
    if modes > 1:
        raise smi.SmiError(BAD_COMBINATION)
    if args.format is not None and not queries:
        raise UsageError("--format only applies to --query-gpu and --query-compute-apps")
    for flag, kind in ((args.list_gpus, "list"), (args.query, "query"), (args.version, "version")):
        if flag:
            return _Request(kind)
    if not queries:
        return _Request("table")
    if args.format is None:
        raise UsageError("a query needs --format=csv[,noheader][,nounits]")
    fmt = smi.parse_format(args.format)
    if args.query_gpu is not None:
        return _Request("gpu", tuple(smi.parse_query(args.query_gpu)), fmt)
    return _Request("apps", tuple(smi.parse_query(args.query_compute_apps, smi.APP_FIELDS)), fmt)


def _architecture(snap: Snapshot) -> str:
    """The GPUs' architecture (-q's Product Architecture), from their compute capability."""
    cap = snap.gpus[0].compute_cap if snap.gpus else ""
    return next((arch for arch, c in _COMPUTE_CAP.items() if c == cap), "")


def _render(req: _Request, snap: Snapshot, now: datetime, first: bool, attached: int) -> list[str]:
    """The lines one refresh prints (`attached`: the node's GPU count, before -i)."""
    # Looping queries print their header once, as nvidia-smi does; the table is printed whole each time.
    fmt = smi.CsvFormat(header=req.fmt.header and first, units=req.fmt.units)
    if req.kind == "list":
        return smi.render_list(snap.gpus)
    if req.kind == "version":
        return smi_reports.render_version(snap.driver_version, snap.cuda_version)
    if req.kind == "dmon":
        rows = [smi_reports.dmon_row(g) for g in snap.gpus]
        return [*smi_reports.dmon_header(), *rows] if first else rows
    if req.kind == "query":
        return smi_reports.render_query(
            snap.gpus,
            snap.processes,
            now=now,
            driver_version=snap.driver_version,
            cuda_version=snap.cuda_version,
            attached=attached,
            architecture=_architecture(snap),
        )
    if req.kind == "gpu":
        return smi.render_gpu_csv(snap.gpus, req.fields, fmt, now=now, driver_version=snap.driver_version)
    if req.kind == "apps":
        return smi.render_apps_csv(
            snap.gpus, snap.processes, req.fields, fmt, now=now, driver_version=snap.driver_version
        )
    return smi.render_table(
        snap.gpus, snap.processes, now=now, driver_version=snap.driver_version, cuda_version=snap.cuda_version
    )


def _stop(signum: int, frame: FrameType | None) -> None:
    """Signal handler: ends the loop."""
    raise _Stop


def _run(args: argparse.Namespace, req: _Request, prog: str) -> int:
    """Prints once, or every interval until a signal (dmon: `count` times); returns the exit status."""
    interval = args.loop_ms if args.loop_ms is not None else args.loop
    count = getattr(args, "count", None)
    hostname = socket.gethostname()
    first = True
    while True:
        wall = time.time()
        notes: list[str] = []
        try:
            whole = snapshot(args.node, wall, hostname, run_id=args.run_id, notes=notes)
            snap = select(whole, args.id)
        except smi.SmiError as exc:
            print(exc, flush=True)  # nvidia-smi prints its own errors on stdout
            return exc.code
        if first:
            for note in notes:
                print(f"{prog}: {note}", file=sys.stderr, flush=True)
        lines = _render(req, snap, datetime.fromtimestamp(wall), first, len(whole.gpus))
        if lines:
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()
        if count is not None:
            count -= 1
        if interval is None or count == 0:
            return 0
        first = False
        time.sleep(interval)


# ----------------------------------------------------------------------------------------------------
# Subcommands: topo -m, dmon


def _common(p: argparse.ArgumentParser) -> None:
    """The fakerun options every subcommand takes: --run-id and --node."""
    p.add_argument("--run-id", metavar="ID", help="fakerun: the job to show (run id or launcher pid)")
    p.add_argument("--node", metavar="N", type=_node, help="fakerun: show node N of a multi-node job")


def _count(text: str) -> int:
    """argparse type: a positive sample count."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"the count must be a positive integer, not {text!r}")
    return int(text)


def _dmon_parser(prog: str) -> argparse.ArgumentParser:
    """`dmon`: the rolling per-GPU table."""
    p = _Parser(prog=f"{prog} dmon", allow_abbrev=False, description="Prints a line per GPU every interval.")
    p.add_argument("-i", "--id", metavar="IDS", help="only these GPUs: indexes, UUIDs or PCI bus ids")
    p.add_argument(
        "-c", "--count", metavar="N", type=_count, help="stop after N samples (default: until Ctrl-C)"
    )
    p.add_argument(
        "-d", "--delay", metavar="SEC", type=_seconds, default=1.0, help="seconds between samples (1)"
    )
    _common(p)
    return p


def _topo_parser(prog: str) -> argparse.ArgumentParser:
    """`topo -m`: the node's connection matrix."""
    p = _Parser(prog=f"{prog} topo", allow_abbrev=False, description="Shows the node's GPU and NIC topology.")
    p.add_argument("-m", "--matrix", action="store_true", help="the GPU/NIC connection matrix")
    _common(p)
    return p


def _dmon(argv: Sequence[str], prog: str) -> int:
    """`fakerun-smi dmon ...`."""
    args = _dmon_parser(prog).parse_args(argv)
    args.loop, args.loop_ms = args.delay, None
    return _run(args, _Request("dmon"), prog)


def _topo(argv: Sequence[str], prog: str) -> int:
    """`fakerun-smi topo -m`."""
    args = _topo_parser(prog).parse_args(argv)
    if not args.matrix:
        raise UsageError("topo: only -m (the connection matrix) is supported")
    cluster = _job_cluster(args.node, time.time(), socket.gethostname(), args.run_id)
    if cluster.gpu.vendor != "nvidia":
        raise smi.SmiError(NO_DRIVER, _NVIDIA_SMI_EXIT_DRIVER)
    sys.stdout.write("\n".join(smi_reports.render_topo(topo_node(cluster))) + "\n")
    return 0


def _serve(args: argparse.Namespace, prog: str) -> int:
    """`--serve [HOST:]PORT`: dcgm-exporter's /metrics until Ctrl-C or SIGTERM."""
    try:
        from fakerun.tools import dcgm
    except ImportError:
        raise UsageError("--serve needs prometheus_client: pip install 'fakerun[serve]'") from None
    try:
        host, port = dcgm.parse_address(args.serve)
    except ValueError as exc:
        raise UsageError(f"--serve: {exc}") from None
    hostname = socket.gethostname()

    def nodes() -> list[tuple[str, Snapshot]]:
        return node_snapshots(time.time(), hostname, run_id=args.run_id, node=args.node)

    server = dcgm.start(host, port, nodes)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"{prog}: serving dcgm-exporter metrics on http://{shown}:{server.server_port}/metrics",
        file=sys.stderr,
    )
    try:
        while True:
            time.sleep(3600)
    finally:
        server.shutdown()
        server.server_close()


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Entry point of `fakerun-smi` (and of the `nvidia-smi` shim)."""
    prog = prog or os.path.basename(sys.argv[0]) or "fakerun-smi"
    argv = list(sys.argv[1:] if argv is None else argv)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    try:
        if argv[:1] == ["dmon"]:
            return _dmon(argv[1:], prog)
        if argv[:1] == ["topo"]:
            return _topo(argv[1:], prog)
        args = build_parser(prog).parse_args(argv)
        req = _request(args)
        if args.serve is not None:
            return _serve(args, prog)
        return _run(args, req, prog)
    except _Stop:
        return 0
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except smi.SmiError as exc:
        print(exc)
        return exc.code
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more to say, and nothing to flush at exit either.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    # The nvidia-smi shim runs this module: it answers as nvidia-smi.
    sys.exit(main(prog="nvidia-smi"))
