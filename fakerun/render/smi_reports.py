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
- `-q`: the NVSMI LOG (H100 545.23.08 and 565.57.01, A100 535.129.03 and 555.42.02, 575.57.08 captures):
  keys padded to column 42 at every depth, sections indented by four; the lines each branch adds or renames
  (C2C mode from 550, Platform Info and the recovery action from 565, deprecated reset status from 575).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from fakerun.render.smi import NA, SmiGpu, SmiProcess, driver_branch

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
_DEPRECATED = "Requested functionality has been deprecated"
_ATOMICS = "FETCHADD_32 FETCHADD_64 SWAP_32 SWAP_64 CAS_32 CAS_64 "  # 565 prints a blank after the list


@dataclass(frozen=True)
class _Board:
    """What -q shows of a board besides its sample: limits and the temperatures the driver enforces."""

    power_min_w: int
    mem_reserved_mib: int
    bar1_mib: int


@dataclass(frozen=True)
class _Product:
    """A product's fixed -q figures: firmware, part numbers, PCI ids and link, what its board supports."""

    vbios: str
    board_part: str
    gpu_part: str
    inforom: tuple[str, str, str]  # image, OEM object, ECC object
    device_id: str  # 0xDDDDVVVV: device, then NVIDIA's vendor id
    subsystem_id: str
    pcie_gen: int
    banks: int  # row-remap banks: the histogram's Max on a healthy board
    video_mhz: tuple[int, int]  # video clock idle, max
    app_clock_mhz: int  # applications (default) graphics clock
    hopper: bool  # Hopper boards: C2C mode, sparse mode, atomics, the NVLink fabric's state


# Public captures: an 8 x H100 SXM5 HGX (driver 565.57.01), A100-SXM4-80GB (555.42.02) and A100-SXM4-40GB
# (535.129.03) nodes. A board of one product carries the same firmware, so each product keeps one set.
_PRODUCTS = {
    "NVIDIA H100 80GB HBM3": _Product(
        vbios="96.00.74.00.01",
        board_part="692-2G520-0200-000",
        gpu_part="2330-885-A1",
        inforom=("G520.0200.00.05", "2.1", "7.16"),
        device_id="0x233010DE",
        subsystem_id="0x16C110DE",
        pcie_gen=5,
        banks=2560,
        video_mhz=(765, 1545),
        app_clock_mhz=1980,
        hopper=True,
    ),
    "NVIDIA A100-SXM4-80GB": _Product(
        vbios="92.00.9E.00.02",
        board_part="692-2G506-0212-005",
        gpu_part="20B2-896-A1",
        inforom=("G506.0212.00.01", "2.0", "6.16"),
        device_id="0x20B210DE",
        subsystem_id="0x147F10DE",
        pcie_gen=4,
        banks=640,
        video_mhz=(585, 1290),
        app_clock_mhz=1140,
        hopper=False,
    ),
    "NVIDIA A100-SXM4-40GB": _Product(
        vbios="92.00.36.00.04",
        board_part="692-2G506-0200-002",
        gpu_part="20B0-884-A1",
        inforom=("G506.0200.00.04", "2.0", "6.16"),
        device_id="0x20B010DE",
        subsystem_id="0x134F10DE",
        pcie_gen=4,
        banks=640,
        video_mhz=(585, 1290),
        app_clock_mhz=1095,
        hopper=False,
    ),
}


def _product(g: SmiGpu, architecture: str) -> _Product | None:
    """The product's figures; another board of a known architecture borrows its sibling's [unverified]."""
    if g.name in _PRODUCTS:
        return _PRODUCTS[g.name]
    sibling = {"Hopper": "NVIDIA H100 80GB HBM3", "Ampere": "NVIDIA A100-SXM4-80GB"}.get(architecture)
    return _PRODUCTS[sibling] if sibling else None


def _kv(depth: int, key: str, value: object) -> str:
    """`    Key                               : value` at a nesting depth."""
    indent = "    " * depth
    return f"{indent}{key:<{_KEY_END - len(indent)}}: {value}"


def _section(depth: int, title: str, items: Sequence[tuple[str, object]]) -> list[str]:
    """A titled block of key/value lines one level deeper."""
    return ["    " * depth + title, *(_kv(depth + 1, k, v) for k, v in items)]


def _clocks(depth: int, title: str, sm: int, mem: int, video: int | None) -> list[str]:
    """A clocks block: Graphics, SM, Memory and (when the board reports it) Video."""
    items = [("Graphics", f"{sm} MHz"), ("SM", f"{sm} MHz"), ("Memory", f"{mem} MHz")]
    return _section(depth, title, items if video is None else [*items, ("Video", f"{video} MHz")])


def _board(g: SmiGpu) -> _Board:
    """The board's fixed figures: H100 SXM values (545.23.08 capture) scaled by its power cap and memory."""
    return _Board(
        power_min_w=round(g.power_cap_w * 2 / 7),  # 200 W of 700
        mem_reserved_mib=round(g.mem_total_mib * 328 / 81559),
        bar1_mib=131072 if g.mem_total_mib > 65536 else 65536,
    )


def _draw(g: SmiGpu, salt: str, spread: int) -> int:
    """A reading that changes from sample to sample: a hash of the GPU and its (jittered) power draw."""
    return zlib.crc32(f"{salt}/{g.uuid}/{g.power_w:.2f}".encode()) % spread


def _pcie_kbs(g: SmiGpu, salt: str) -> int:
    """PCIe Tx or Rx throughput in KB/s: an idle board's housekeeping plus a busy one's input batches."""
    # Idle H100s read 559-621 KB/s (565 and 535 captures); a training step moves its batch and the driver's
    # work submissions over PCIe, tens of MB/s at full utilisation [unverified: no capture under load].
    return 540 + _draw(g, salt, 90) + g.util_pct * (300 + _draw(g, salt + "+", 200))


def _identity(g: SmiGpu, p: _Product | None, driver_version: str) -> list[str]:
    """From VBIOS Version to GSP Firmware Version: firmware, part numbers, modes and reset status."""
    branch = driver_branch(driver_version)
    bus = int(g.bus_id.replace(".", ":").split(":")[1], 16)
    lines = [
        _kv(1, "VBIOS Version", p.vbios if p else NA),
        _kv(1, "MultiGPU Board", "No"),
        _kv(1, "Board ID", f"0x{bus:x}00"),
        _kv(1, "Board Part Number", p.board_part if p else NA),
        _kv(1, "GPU Part Number", p.gpu_part if p else NA),
        _kv(1, "FRU Part Number", NA),
    ]
    module = g.index + 1
    if branch >= 575:  # 575.57.08 captures: the platform block names the slot as the chassis sees it
        keys = ["Chassis Serial Number", "Slot Number", "Tray Index", "Host ID", "Peer Type"]
        lines += _section(1, "Platform Info", [*((k, NA) for k in keys), ("Module Id", module)])
        lines.append(_kv(2, "GPU Fabric GUID", NA))
    elif branch >= 565:  # 565.57.01 capture: Module ID moved into Platform Info
        keys = ["RACK Serial Number", "Chassis Physical Slot Number", "Compute Slot Index", "Node Index"]
        lines += _section(
            1, "Platform Info", [*((k, NA) for k in keys), ("Peer Type", NA), ("Module Id", module)]
        )
    else:
        lines.append(_kv(1, "Module ID", module))
    image, oem, ecc = p.inforom if p else (NA, NA, NA)
    lines += _section(
        1,
        "Inforom Version",
        [("Image Version", image), ("OEM Object", oem), ("ECC Object", ecc), ("Power Management Object", NA)],
    )
    lines += _section(1, "GPU Operation Mode", [("Current", NA), ("Pending", NA)])
    virt = [("Virtualization Mode", "None"), ("Host VGPU Mode", NA)]
    if branch >= 550:  # 555.42.02 capture; 535 has neither line
        lines.append(_kv(1, "GPU C2C Mode", "Disabled" if p and p.hopper else NA))
        virt.append(("vGPU Heterogeneous Mode", NA))
    lines += _section(1, "GPU Virtualization Mode", virt)
    reset = _DEPRECATED if branch >= 575 else "No"
    lines += _section(
        1, "GPU Reset Status", [("Reset Required", reset), ("Drain and Reset Recommended", reset)]
    )
    if branch >= 565:  # NVML's recovery action came with 565
        lines.append(_kv(1, "GPU Recovery Action", "None"))
    return [
        *lines,
        _kv(1, "GSP Firmware Version", driver_version),
        *_section(1, "IBMNPU", [("Relaxed Ordering Mode", NA)]),
    ]


def _pci(g: SmiGpu, p: _Product | None, branch: int) -> list[str]:
    """The PCI block: ids, the link's generation and width, replays, throughput and atomics."""
    bus = g.bus_id.replace(".", ":").split(":")
    gen = p.pcie_gen if p else NA
    items: list[tuple[str, object]] = [
        ("Bus", f"0x{int(bus[1], 16):02X}"),
        ("Device", f"0x{int(bus[2], 16):02X}"),
        ("Domain", f"0x{int(bus[0], 16):04X}"),
    ]
    if branch >= 555:  # a 3D controller: class 0x03, subclass 0x02 (555.42.02 and 565.57.01 captures)
        items += [("Base Classcode", "0x3"), ("Sub Classcode", "0x2")]
    items += [("Device Id", p.device_id if p else NA), ("Bus Id", g.bus_id)]
    items += [("Sub System Id", p.subsystem_id if p else NA)]
    lines = _section(1, "PCI", items)
    # SXM boards keep their link at full speed when idle (every H100 and A100 capture reads Current = Max).
    lines += [
        "        GPU Link Info",
        *_section(
            3,
            "PCIe Generation",
            [("Max", gen), ("Current", gen), ("Device Current", gen), ("Device Max", gen), ("Host Max", gen)],
        ),
        *_section(3, "Link Width", [("Max", "16x"), ("Current", "16x")]),
        *_section(2, "Bridge Chip", [("Type", NA), ("Firmware", NA)]),
    ]
    hopper = bool(p and p.hopper)
    # Link-level replays since boot: a few dozen on the H100 captures, none on the A100s.
    replays = zlib.crc32(f"replays/{g.uuid}".encode()) % 70 if hopper else 0
    atomics = _ATOMICS if hopper else NA
    caps = [("Atomic Caps Outbound", atomics), ("Atomic Caps Inbound", atomics)]
    if branch < 565:  # 535 and 555 print Inbound first (and 535 no inbound caps)
        caps = [("Atomic Caps Inbound", NA), ("Atomic Caps Outbound", _ATOMICS.rstrip() if hopper else NA)]
    lines += [
        _kv(2, "Replays Since Reset", replays),
        _kv(2, "Replay Number Rollovers", 0),
        _kv(2, "Tx Throughput", f"{_pcie_kbs(g, 'tx')} KB/s"),
        _kv(2, "Rx Throughput", f"{_pcie_kbs(g, 'rx')} KB/s"),
        *(_kv(2, k, v) for k, v in caps),
    ]
    return lines


def _event_reasons(g: SmiGpu) -> list[str]:
    """Why the clocks are where they are: idle, or (busy at a full power budget) none of the limits."""
    idle = g.util_pct == 0
    return [
        "    Clocks Event Reasons",
        _kv(2, "Idle", "Active" if idle else "Not Active"),
        _kv(2, "Applications Clocks Setting", "Not Active"),
        _kv(2, "SW Power Cap", "Not Active"),
        _kv(2, "HW Slowdown", "Not Active"),
        _kv(3, "HW Thermal Slowdown", "Not Active"),
        _kv(3, "HW Power Brake Slowdown", "Not Active"),
        _kv(2, "Sync Boost", "Not Active"),
        _kv(2, "SW Thermal Slowdown", "Not Active"),
        _kv(2, "Display Clock Setting", "Not Active"),
    ]


def _pages_and_rows(p: _Product | None) -> list[str]:
    """Retired Pages (pre-Ampere only: N/A) and Remapped Rows with a healthy bank histogram."""
    banks = f"{p.banks} bank(s)" if p else NA
    return [
        *_section(
            1,
            "Retired Pages",
            [("Single Bit ECC", NA), ("Double Bit ECC", NA), ("Pending Page Blacklist", NA)],
        ),
        *_section(
            1,
            "Remapped Rows",
            [
                ("Correctable Error", 0),
                ("Uncorrectable Error", 0),
                ("Pending", "No"),
                ("Remapping Failure Occurred", "No"),
            ],
        ),
        *_section(
            2,
            "Bank Remap Availability Histogram",
            [("Max", banks), *((k, "0 bank(s)") for k in ("High", "Partial", "Low", "None"))],
        ),
    ]


def _fabric(p: _Product | None, branch: int) -> list[str]:
    """The NVLink fabric: an HGX H100 joins its NVSwitches' fabric (clique 0); A100s report none."""
    joined = bool(p and p.hopper)
    items: list[tuple[str, object]] = [
        ("State", "Completed" if joined else NA),
        ("Status", "Success" if joined else NA),
        ("CliqueId", 0 if joined else NA),
        ("ClusterUUID", "00000000-0000-0000-0000-000000000000" if joined else NA),
    ]
    health = [("Bandwidth", NA)]
    if branch >= 575:  # 575.57.08 capture
        health += [
            ("Route Recovery in progress", NA),
            ("Route Unhealthy", NA),
            ("Access Timeout Recovery", NA),
        ]
    return [*_section(1, "Fabric", items), *_section(2, "Health", health)]


def _gpu_block(
    g: SmiGpu, processes: Sequence[SmiProcess], architecture: str, driver_version: str
) -> list[str]:
    """One GPU's part of the -q report, in the order and with the lines of the driver's branch."""
    branch = driver_branch(driver_version)
    p = _product(g, architecture)
    b = _board(g)
    reserved = min(b.mem_reserved_mib, max(0, g.mem_total_mib - g.mem_used_mib))
    free = max(0, g.mem_total_mib - reserved - g.mem_used_mib)
    mtemp = memory_temp(g)
    power = f"{g.power_w:.2f} W"
    cap = f"{g.power_cap_w:.2f} W"
    video = None if p is None else p.video_mhz[0] if g.util_pct == 0 else p.video_mhz[1]
    display = (
        [("Display Mode", _DEPRECATED), ("Display Attached", "No")]
        if branch >= 575
        else [("Display Mode", "Enabled")]
    )
    # 575 and later read a one-second average beside the instantaneous sample (575.57.08, 580.65.06 captures).
    average = f"{g.power_w + (_draw(g, 'avg', 201) - 100) / 100:.2f} W"
    draw = [("Average Power Draw", average), ("Instantaneous Power Draw", power)]
    if branch < 575:
        draw = [("Power Draw", power)]
    lines = [
        f"GPU {g.bus_id}",
        _kv(1, "Product Name", g.name),
        _kv(1, "Product Brand", "NVIDIA"),
        _kv(1, "Product Architecture", architecture or NA),
        *(_kv(1, k, v) for k, v in display),
        _kv(1, "Display Active", "Disabled"),
        _kv(1, "Persistence Mode", "Enabled" if g.persistence else "Disabled"),
        _kv(1, "Addressing Mode", "None"),
        *_section(1, "MIG Mode", [("Current", g.mig_mode), ("Pending", g.mig_mode)]),
        _kv(1, "Accounting Mode", "Disabled"),
        _kv(1, "Accounting Mode Buffer Size", 4000),
        *_section(1, "Driver Model", [("Current", NA), ("Pending", NA)]),
        _kv(1, "Serial Number", g.serial or NA),
        _kv(1, "GPU UUID", g.uuid),
        _kv(1, "Minor Number", g.index),
        *_identity(g, p, driver_version),
        *_pci(g, p, branch),
        _kv(1, "Fan Speed", NA if g.fan_pct is None else f"{g.fan_pct} %"),
        _kv(1, "Performance State", g.pstate),
        *_event_reasons(g),
        _kv(1, "Sparse Operation Mode", "Disabled" if p and p.hopper else NA),
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
                ("GPU" if branch >= 575 else "Gpu", f"{g.util_pct} %"),
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
        *_pages_and_rows(p),
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
                *draw,
                ("Current Power Limit", cap),
                ("Requested Power Limit", cap),
                ("Default Power Limit", cap),
                ("Min Power Limit", f"{b.power_min_w:.2f} W"),
                ("Max Power Limit", cap),
            ],
        ),
        *_clocks(1, "Clocks", g.sm_clock_mhz, g.mem_clock_mhz, video),
    ]
    if p is not None:
        apps = [("Graphics", f"{p.app_clock_mhz} MHz"), ("Memory", f"{g.mem_clock_max_mhz} MHz")]
        lines += [
            *_section(1, "Applications Clocks", apps),
            *_section(1, "Default Applications Clocks", apps),
            *_section(1, "Deferred Clocks", [("Memory", NA)]),
        ]
    lines += [
        *_clocks(1, "Max Clocks", g.sm_clock_max_mhz, g.mem_clock_max_mhz, p.video_mhz[1] if p else None),
        *_section(1, "Max Customer Boost Clocks", [("Graphics", f"{g.sm_clock_max_mhz} MHz")]),
        *_section(1, "Clock Policy", [("Auto Boost", NA), ("Auto Boost Default", NA)]),
        *_fabric(p, branch),
    ]
    # 555 and later end each GPU with its capabilities (Extended GPU Memory: Grace-Hopper only).
    egm = _section(1, "Capabilities", [("EGM", "disabled")]) if branch >= 555 else []
    mine = [p_ for p_ in processes if p_.gpu_index == g.index]
    if not mine:
        return [*lines, _kv(1, "Processes", "None"), *egm]
    lines.append("    Processes")
    for proc in mine:
        lines += [
            _kv(2, "GPU instance ID", NA),
            _kv(2, "Compute instance ID", NA),
            _kv(2, "Process ID", proc.pid),
            _kv(3, "Type", proc.type),
            _kv(3, "Name", proc.name),
            _kv(3, "Used GPU Memory", f"{proc.used_mib} MiB"),
        ]
    return [*lines, *egm]


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
        lines += _gpu_block(g, processes, architecture, driver_version)
        lines.append("")
    return lines
