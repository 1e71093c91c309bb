"""nvidia-smi's other reports: `--version`, `dmon`, `topo -m` and `-q`.

Pure: the caller passes GPU samples, the node's topology, the driver and CUDA versions and the time.
Formats from public captures:
- `--version`: four `Name  : value` lines (550.54.15, 570.86.15, 580.95.05, 590.48.01 captures); the NVML
  version is the driver's first two fields.
- `dmon`: `# gpu` and `# Idx` header lines, then one row per GPU per sample; 7-wide columns and a blank at
  the end of every line, `-` where a reading is not supported (driver 535-580 captures).
- `topo -m`: tab-separated cells, ` X ` on the diagonal, `NV#` for # bonded NVLinks, the CPU and NUMA
  affinity of each GPU's socket, `GPU NUMA ID` N/A on x86 hosts; NIC rows end in four tabs; the legend and
  the NIC legend (H100 DGX/HGX captures with drivers 535-580).
- `-q`: the NVSMI LOG of an H100 (driver 545.23.08 capture): keys padded to column 42 at every depth,
  sections indented by four.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from fakerun.render.smi import NA, SmiGpu, SmiProcess

__all__ = [
    "DMON_COLUMNS",
    "TopoNode",
    "dmon_header",
    "dmon_row",
    "memory_temp",
    "render_query",
    "render_topo",
    "render_version",
]


def render_version(driver_version: str, cuda_version: str) -> list[str]:
    """`nvidia-smi --version`: the versions of nvidia-smi, NVML, the driver and the CUDA it supports."""
    nvml = ".".join(driver_version.split(".")[:2])
    return [
        f"NVIDIA-SMI version  : {driver_version}",
        f"NVML version        : {nvml}",
        f"DRIVER version      : {driver_version}",
        f"CUDA Version        : {cuda_version}",
    ]


# ----------------------------------------------------------------------------------------------------
# dmon

# (name, unit) of the default `-s pucvmet` ... columns drivers from 535 on print: power/temperature (p),
# utilisation (u: sm mem enc dec jpg ofa) and clocks (c: mclk pclk).
DMON_COLUMNS: tuple[tuple[str, str], ...] = (
    ("pwr", "W"),
    ("gtemp", "C"),
    ("mtemp", "C"),
    ("sm", "%"),
    ("mem", "%"),
    ("enc", "%"),
    ("dec", "%"),
    ("jpg", "%"),
    ("ofa", "%"),
    ("mclk", "MHz"),
    ("pclk", "MHz"),
)
_DMON_W = 7


def dmon_header() -> list[str]:
    """The two header lines dmon prints before its first sample."""
    names = "".join(f"{n:>{_DMON_W}}" for n, _ in DMON_COLUMNS)
    units = "".join(f"{u:>{_DMON_W}}" for _, u in DMON_COLUMNS)
    return [f"# gpu{names} ", f"# Idx{units} "]


def memory_temp(g: SmiGpu) -> int | None:
    """HBM temperature: SXM boards report it; it runs above the die's (41 C beside 33 C on an idle H100)."""
    # [unverified] one idle H100 capture (excerpt of an `-q` report): 8 C above the GPU; kept as an offset.
    return g.temp_c + 8 if "HBM" in g.name or "SXM" in g.name or g.name.startswith("NVIDIA B") else None


def dmon_row(g: SmiGpu) -> str:
    """One sample of one GPU: power, temperatures, utilisations and clocks."""
    mtemp = memory_temp(g)
    cells: list[int | str] = [
        round(g.power_w),
        g.temp_c,
        "-" if mtemp is None else mtemp,
        g.util_pct,
        g.mem_util_pct,
        0,
        0,
        0,
        0,
        g.mem_clock_mhz,
        g.sm_clock_mhz,
    ]
    return f"{g.index:>5}" + "".join(f"{c:>{_DMON_W}}" for c in cells) + " "


# ----------------------------------------------------------------------------------------------------
# topo -m

_LEGEND = [
    "Legend:",
    "",
    "  X    = Self",
    "  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)",
    "  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges"
    " within a NUMA node",
    "  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)",
    "  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)",
    "  PIX  = Connection traversing at most a single PCIe bridge",
    "  NV#  = Connection traversing a bonded set of # NVLinks",
]


@dataclass(frozen=True)
class TopoNode:
    """One node as `topo -m` draws it: each GPU's socket and CPUs, each NIC's name, socket and GPU."""

    gpu_sockets: tuple[int, ...]
    gpu_cpus: tuple[str, ...]  # CPU affinity of each GPU: `0-55,112-167`
    nvlinks: int  # bonded NVLinks between every pair of GPUs (NVSwitch); 0: PCIe only
    nic_names: tuple[str, ...]
    nic_sockets: tuple[int, ...]
    nic_gpus: tuple[int, ...]  # the GPU each NIC shares a PCIe switch with


def _gpu_gpu(node: TopoNode, a: int, b: int) -> str:
    """The link between two GPUs."""
    if a == b:
        return " X "
    if node.nvlinks:
        return f"NV{node.nvlinks}"
    return "NODE" if node.gpu_sockets[a] == node.gpu_sockets[b] else "SYS"


def _pcie(same_switch: bool, same_socket: bool) -> str:
    """The PCIe path between two devices: one switch, one NUMA node, or across the sockets."""
    return "PIX" if same_switch else "NODE" if same_socket else "SYS"


def render_topo(node: TopoNode) -> list[str]:
    """`nvidia-smi topo -m`: the matrix, its legend and the NIC legend."""
    gpus, nics = len(node.gpu_sockets), len(node.nic_names)
    labels = [f"GPU{i}" for i in range(gpus)] + [f"NIC{j}" for j in range(nics)]
    lines = ["\t" + "\t".join([*labels, "CPU Affinity", "NUMA Affinity", "GPU NUMA ID"])]
    for a in range(gpus):
        cells = [_gpu_gpu(node, a, b) for b in range(gpus)]
        cells += [
            _pcie(node.nic_gpus[j] == a, node.nic_sockets[j] == node.gpu_sockets[a]) for j in range(nics)
        ]
        lines.append("\t".join([f"GPU{a}", *cells, node.gpu_cpus[a], str(node.gpu_sockets[a]), "", NA]))
    for j in range(nics):
        sock = node.nic_sockets[j]
        cells = [_pcie(node.nic_gpus[j] == b, sock == node.gpu_sockets[b]) for b in range(gpus)]
        cells += [
            " X " if k == j else _pcie(node.nic_gpus[k] == node.nic_gpus[j], node.nic_sockets[k] == sock)
            for k in range(nics)
        ]
        lines.append("\t".join([f"NIC{j}", *cells]) + "\t" * 4)
    lines += ["", *_LEGEND]
    if nics:
        lines += ["", "NIC Legend:", "", *(f"  NIC{j}: {name}" for j, name in enumerate(node.nic_names))]
    return [*lines, ""]


# ----------------------------------------------------------------------------------------------------
# -q

_KEY_END = 42  # the colon's column at every depth


@dataclass(frozen=True)
class _Board:
    """What -q shows of a board besides its sample: limits and the temperatures the driver enforces."""

    power_min_w: int
    mem_reserved_mib: int
    bar1_mib: int


def _kv(depth: int, key: str, value: object) -> str:
    """`    Key                               : value` at a nesting depth."""
    indent = "    " * depth
    return f"{indent}{key:<{_KEY_END - len(indent)}}: {value}"


def _section(depth: int, title: str, items: Sequence[tuple[str, object]]) -> list[str]:
    """A titled block of key/value lines one level deeper."""
    return ["    " * depth + title, *(_kv(depth + 1, k, v) for k, v in items)]


def _clocks(depth: int, title: str, sm: int, mem: int) -> list[str]:
    """A clocks block: Graphics, SM and Memory."""
    return _section(depth, title, [("Graphics", f"{sm} MHz"), ("SM", f"{sm} MHz"), ("Memory", f"{mem} MHz")])


def _board(g: SmiGpu) -> _Board:
    """The board's fixed figures: H100 SXM values (545.23.08 capture) scaled by its power cap and memory."""
    return _Board(
        power_min_w=round(g.power_cap_w * 2 / 7),  # 200 W of 700
        mem_reserved_mib=round(g.mem_total_mib * 328 / 81559),
        bar1_mib=131072 if g.mem_total_mib > 65536 else 65536,
    )


def _gpu_block(g: SmiGpu, processes: Sequence[SmiProcess], architecture: str) -> list[str]:
    """One GPU's part of the -q report."""
    b = _board(g)
    reserved = min(b.mem_reserved_mib, max(0, g.mem_total_mib - g.mem_used_mib))
    free = max(0, g.mem_total_mib - reserved - g.mem_used_mib)
    bus = g.bus_id.replace(".", ":").split(":")
    mtemp = memory_temp(g)
    idle = g.util_pct == 0
    power = f"{g.power_w:.2f} W"
    cap = f"{g.power_cap_w:.2f} W"
    lines = [
        f"GPU {g.bus_id}",
        _kv(1, "Product Name", g.name),
        _kv(1, "Product Brand", "NVIDIA"),
        _kv(1, "Product Architecture", architecture or NA),
        _kv(1, "Display Mode", "Disabled"),
        _kv(1, "Display Active", "Disabled"),
        _kv(1, "Persistence Mode", "Enabled" if g.persistence else "Disabled"),
        *_section(1, "MIG Mode", [("Current", g.mig_mode), ("Pending", g.mig_mode)]),
        _kv(1, "Accounting Mode", "Disabled"),
        _kv(1, "Accounting Mode Buffer Size", 4000),
        _kv(1, "Serial Number", g.serial or NA),
        _kv(1, "GPU UUID", g.uuid),
        _kv(1, "Minor Number", g.index),
        _kv(1, "MultiGPU Board", "No"),
        _kv(1, "Module ID", g.index + 1),
        *_section(
            1,
            "PCI",
            [
                ("Bus", f"0x{int(bus[1], 16):02X}"),
                ("Device", f"0x{int(bus[2], 16):02X}"),
                ("Domain", f"0x{int(bus[0], 16):04X}"),
                ("Bus Id", g.bus_id),
            ],
        ),
        _kv(1, "Fan Speed", NA if g.fan_pct is None else f"{g.fan_pct} %"),
        _kv(1, "Performance State", g.pstate),
        *_section(
            1,
            "Clocks Event Reasons",
            [("Idle", "Active" if idle else "Not Active"), ("SW Power Cap", "Not Active")],
        ),
        *_section(
            1,
            "FB Memory Usage",
            [
                ("Total", f"{g.mem_total_mib} MiB"),
                ("Reserved", f"{reserved} MiB"),
                ("Used", f"{g.mem_used_mib} MiB"),
                ("Free", f"{free} MiB"),
            ],
        ),
        *_section(
            1,
            "BAR1 Memory Usage",
            [("Total", f"{b.bar1_mib} MiB"), ("Used", "1 MiB"), ("Free", f"{b.bar1_mib - 1} MiB")],
        ),
        _kv(1, "Compute Mode", g.compute_mode),
        *_section(
            1,
            "Utilization",
            [
                ("Gpu", f"{g.util_pct} %"),
                ("Memory", f"{g.mem_util_pct} %"),
                ("Encoder", "0 %"),
                ("Decoder", "0 %"),
                ("JPEG", "0 %"),
                ("OFA", "0 %"),
            ],
        ),
        *_section(1, "ECC Mode", [("Current", "Enabled"), ("Pending", "Enabled")]),
        "    ECC Errors",
        *_section(
            2,
            "Volatile",
            [
                ("SRAM Correctable", 0),
                ("SRAM Uncorrectable", g.ecc_errors),
                ("DRAM Correctable", 0),
                ("DRAM Uncorrectable", 0),
            ],
        ),
        *_section(
            1,
            "Temperature",
            [
                ("GPU Current Temp", f"{g.temp_c} C"),
                ("GPU Target Temperature", NA),
                ("Memory Current Temp", NA if mtemp is None else f"{mtemp} C"),
            ],
        ),
        *_section(
            1,
            "GPU Power Readings",
            [
                ("Power Draw", power),
                ("Current Power Limit", cap),
                ("Requested Power Limit", cap),
                ("Default Power Limit", cap),
                ("Min Power Limit", f"{b.power_min_w:.2f} W"),
                ("Max Power Limit", cap),
            ],
        ),
        *_clocks(1, "Clocks", g.sm_clock_mhz, g.mem_clock_mhz),
        *_clocks(1, "Max Clocks", g.sm_clock_max_mhz, g.mem_clock_max_mhz),
    ]
    mine = [p for p in processes if p.gpu_index == g.index]
    if not mine:
        return [*lines, _kv(1, "Processes", "None")]
    lines.append("    Processes")
    for p in mine:
        lines += [
            _kv(2, "GPU instance ID", NA),
            _kv(2, "Compute instance ID", NA),
            _kv(2, "Process ID", p.pid),
            _kv(3, "Type", p.type),
            _kv(3, "Name", p.name),
            _kv(3, "Used GPU Memory", f"{p.used_mib} MiB"),
        ]
    return lines


def render_query(
    gpus: Sequence[SmiGpu],
    processes: Sequence[SmiProcess],
    *,
    now: datetime,
    driver_version: str,
    cuda_version: str,
    attached: int,
    architecture: str = "",
) -> list[str]:
    """`nvidia-smi -q`: the NVSMI LOG header, then a block per GPU (`attached` counts all the node's)."""
    lines = [
        "",
        "==============NVSMI LOG==============",
        "",
        _kv(0, "Timestamp", f"{now:%a %b} {now.day:2d} {now:%H:%M:%S %Y}"),
        _kv(0, "Driver Version", driver_version),
        _kv(0, "CUDA Version", cuda_version),
        "",
        _kv(0, "Attached GPUs", attached),
    ]
    for g in gpus:
        lines += _gpu_block(g, processes, architecture)
        lines.append("")
    return lines
