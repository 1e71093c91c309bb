"""fakerun-smi's other reports against the driver's own output: --version, dmon, topo -m and -q."""

from __future__ import annotations

from datetime import datetime

from fakerun.presets import load_cluster
from fakerun.render.smi import SmiGpu, SmiProcess
from fakerun.render.smi_reports import (
    TopoNode,
    dmon_header,
    dmon_row,
    render_query,
    render_topo,
    render_version,
)
from fakerun.tools.smi import topo_node

H100 = "NVIDIA H100 80GB HBM3"


def gpu(**over: object) -> SmiGpu:
    """An idle H100 with the figures of a public `nvidia-smi -q` capture (driver 545.23.08)."""
    base: dict[str, object] = dict(
        index=0,
        name=H100,
        uuid="GPU-00000000-1111-2222-3333-444444444444",
        bus_id="00000000:19:00.0",
        temp_c=33,
        power_w=72.02,
        power_cap_w=700,
        mem_used_mib=2,
        mem_total_mib=81559,
        util_pct=0,
        sm_clock_mhz=345,
        mem_clock_mhz=2619,
        sm_clock_max_mhz=1980,
        mem_clock_max_mhz=2619,
        serial="1654123038646",
        compute_cap="9.0",
    )
    base.update(over)
    return SmiGpu(**base)  # type: ignore[arg-type]


def test_version_block_as_driver_580_prints_it() -> None:
    # `nvidia-smi --version` with driver 580.95.05 (public capture): NVML's version is the driver's x.y.
    assert render_version("580.95.05", "13.0") == [
        "NVIDIA-SMI version  : 580.95.05",
        "NVML version        : 580.95",
        "DRIVER version      : 580.95.05",
        "CUDA Version        : 13.0",
    ]


def test_dmon_matches_a_capture() -> None:
    # A driver 550 capture (one RTX card under load, no HBM: mtemp is `-`); every line ends in a blank.
    expected = [
        "# gpu    pwr  gtemp  mtemp     sm    mem    enc    dec    jpg    ofa   mclk   pclk ",
        "# Idx      W      C      C      %      %      %      %      %      %    MHz    MHz ",
        "    0    164     87      -    100     85      0      0      0      0   7501   1777 ",
    ]
    card = gpu(
        name="NVIDIA GeForce RTX 4090",
        power_w=164.3,
        temp_c=87,
        util_pct=100,
        mem_util_pct=85,
        mem_clock_mhz=7501,
        sm_clock_mhz=1777,
    )
    assert [*dmon_header(), dmon_row(card)] == expected


def test_dmon_shows_hbm_temperature_on_sxm_boards() -> None:
    cells = dmon_row(gpu(index=3)).split()
    assert cells[0] == "3" and cells[3] != "-" and int(cells[3]) > 33


TOPO_2GPU_2NIC = (
    # A public capture (driver 570, 2 GPUs on socket 1 of a 2 x 56-core host, two NICs on one switch).
    "\tGPU0\tGPU1\tNIC0\tNIC1\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\n"
    "GPU0\t X \tNODE\tNODE\tNODE\t56-111,168-223\t1\t\tN/A\n"
    "GPU1\tNODE\t X \tNODE\tNODE\t56-111,168-223\t1\t\tN/A\n"
    "NIC0\tNODE\tNODE\t X \tPIX\t\t\t\t\n"
    "NIC1\tNODE\tNODE\tPIX\t X \t\t\t\t\n"
    "\n"
    "Legend:\n"
    "\n"
    "  X    = Self\n"
    "  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)\n"
    "  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA"
    " node\n"
    "  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)\n"
    "  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)\n"
    "  PIX  = Connection traversing at most a single PCIe bridge\n"
    "  NV#  = Connection traversing a bonded set of # NVLinks\n"
    "\n"
    "NIC Legend:\n"
    "\n"
    "  NIC0: mlx5_0\n"
    "  NIC1: mlx5_1\n"
)


def test_topo_matches_a_capture() -> None:
    node = TopoNode(
        gpu_sockets=(1, 1),
        gpu_cpus=("56-111,168-223",) * 2,
        nvlinks=0,
        nic_names=("mlx5_0", "mlx5_1"),
        nic_sockets=(1, 1),
        nic_gpus=(-1, -1),  # on a switch of their own, beside no GPU
    )
    assert "\n".join(render_topo(node)) == TOPO_2GPU_2NIC


def test_topo_of_a_dgx_h100() -> None:
    # DGX/HGX H100 captures: NV18 between every pair, sockets 0-55,112-167 and 56-111,168-223 (2 x 56 cores
    # with SMT), GPUs 0-3 on NUMA node 0, each GPU beside one NIC of its own.
    lines = render_topo(topo_node(load_cluster("dgx-h100")))
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[1:17]}
    for i in range(8):
        row = rows[f"GPU{i}"]
        assert row[1 : 1 + 8] == [" X " if j == i else "NV18" for j in range(8)]
        assert row[9 : 9 + 8].count("PIX") == 1
        assert row[17:] == (["0-55,112-167", "0", "", "N/A"] if i < 4 else ["56-111,168-223", "1", "", "N/A"])
        assert rows[f"NIC{i}"][-4:] == ["", "", "", ""]
    assert lines[-3:] == ["  NIC6: mlx5_6", "  NIC7: mlx5_7", ""]


# Lines of the capture the -q report must reproduce for the same figures.
QUERY_LINES = """\
==============NVSMI LOG==============
Driver Version                            : 545.23.08
CUDA Version                              : 12.3
Attached GPUs                             : 1
GPU 00000000:19:00.0
    Product Name                          : NVIDIA H100 80GB HBM3
    Product Brand                         : NVIDIA
    Product Architecture                  : Hopper
    Persistence Mode                      : Enabled
    MIG Mode
        Current                           : Disabled
    Accounting Mode Buffer Size           : 4000
    Serial Number                         : 1654123038646
    Minor Number                          : 0
    PCI
        Bus                               : 0x19
        Device                            : 0x00
        Domain                            : 0x0000
        Bus Id                            : 00000000:19:00.0
    Fan Speed                             : N/A
    Performance State                     : P0
    FB Memory Usage
        Total                             : 81559 MiB
        Reserved                          : 328 MiB
        Used                              : 2 MiB
    BAR1 Memory Usage
        Total                             : 131072 MiB
    Compute Mode                          : Default
    Utilization
        Gpu                               : 0 %
        JPEG                              : 0 %
    ECC Errors
        Volatile
            SRAM Correctable              : 0
    Temperature
        GPU Current Temp                  : 33 C
    GPU Power Readings
        Power Draw                        : 72.02 W
        Current Power Limit               : 700.00 W
        Min Power Limit                   : 200.00 W
        Max Power Limit                   : 700.00 W
    Clocks
        Graphics                          : 345 MHz
        SM                                : 345 MHz
        Memory                            : 2619 MHz
    Max Clocks
        Graphics                          : 1980 MHz
        SM                                : 1980 MHz
        Memory                            : 2619 MHz
    Processes                             : None""".splitlines()


def test_query_report_lines_match_a_capture() -> None:
    now = datetime(2024, 2, 23, 11, 51, 29)
    lines = render_query(
        [gpu()],
        [],
        now=now,
        driver_version="545.23.08",
        cuda_version="12.3",
        attached=1,
        architecture="Hopper",
    )
    assert lines[:4] == [
        "",
        "==============NVSMI LOG==============",
        "",
        f"{'Timestamp':<42}: Fri Feb 23 11:51:29 2024",
    ]
    # The capture's lines, in its order (a subsequence: the report leaves out what fakerun cannot know).
    rest = iter(lines)
    missing = [line for line in QUERY_LINES if line not in rest]
    assert not missing


def test_query_lists_the_gpus_processes() -> None:
    now = datetime(2026, 1, 1)
    procs = [SmiProcess(1, 4242, "/usr/bin/python3", 61234), SmiProcess(0, 4241, "/usr/bin/python3", 100)]
    lines = render_query(
        [gpu(index=1)], procs, now=now, driver_version="580.126.09", cuda_version="13.0", attached=8
    )
    start = lines.index("    Processes")
    assert lines[start + 3].split(":")[1].strip() == "4242"
    assert lines[start + 6].endswith(": 61234 MiB")
    assert "4241" not in "\n".join(lines)  # GPU 0's process is not GPU 1's
    assert lines[-1] == ""


# Lines of a public 8 x H100 SXM5 HGX capture (driver 565.57.01, GPU 0 idle) that do not depend on the board's
# serial, UUID or sample: firmware and part numbers, the PCI link, the modes, the remap histogram, the fabric.
QUERY_565_H100 = """\
    Display Mode                          : Enabled
    Addressing Mode                       : None
    Driver Model
        Current                           : N/A
    VBIOS Version                         : 96.00.74.00.01
    MultiGPU Board                        : No
    Board ID                              : 0x1900
    Board Part Number                     : 692-2G520-0200-000
    GPU Part Number                       : 2330-885-A1
    FRU Part Number                       : N/A
    Platform Info
        RACK Serial Number                : N/A
        Chassis Physical Slot Number      : N/A
        Compute Slot Index                : N/A
        Node Index                        : N/A
        Peer Type                         : N/A
        Module Id                         : 1
    Inforom Version
        Image Version                     : G520.0200.00.05
        OEM Object                        : 2.1
        ECC Object                        : 7.16
        Power Management Object           : N/A
    GPU Operation Mode
        Current                           : N/A
        Pending                           : N/A
    GPU C2C Mode                          : Disabled
    GPU Virtualization Mode
        Virtualization Mode               : None
        Host VGPU Mode                    : N/A
        vGPU Heterogeneous Mode           : N/A
    GPU Reset Status
        Reset Required                    : No
        Drain and Reset Recommended       : No
    GPU Recovery Action                   : None
    GSP Firmware Version                  : 565.57.01
    IBMNPU
        Relaxed Ordering Mode             : N/A
    PCI
        Bus                               : 0x19
        Domain                            : 0x0000
        Base Classcode                    : 0x3
        Sub Classcode                     : 0x2
        Device Id                         : 0x233010DE
        Bus Id                            : 00000000:19:00.0
        Sub System Id                     : 0x16C110DE
        GPU Link Info
            PCIe Generation
                Max                       : 5
                Current                   : 5
                Device Current            : 5
                Device Max                : 5
                Host Max                  : 5
            Link Width
                Max                       : 16x
                Current                   : 16x
        Bridge Chip
            Type                          : N/A
            Firmware                      : N/A
        Replay Number Rollovers           : 0
        Atomic Caps Outbound              : FETCHADD_32 FETCHADD_64 SWAP_32 SWAP_64 CAS_32 CAS_64|
        Atomic Caps Inbound               : FETCHADD_32 FETCHADD_64 SWAP_32 SWAP_64 CAS_32 CAS_64|
    Fan Speed                             : N/A
    Clocks Event Reasons
        Idle                              : Active
        Applications Clocks Setting       : Not Active
        SW Power Cap                      : Not Active
        HW Slowdown                       : Not Active
            HW Thermal Slowdown           : Not Active
            HW Power Brake Slowdown       : Not Active
        Sync Boost                        : Not Active
        SW Thermal Slowdown               : Not Active
        Display Clock Setting             : Not Active
    Sparse Operation Mode                 : Disabled
    FB Memory Usage
    Retired Pages
        Single Bit ECC                    : N/A
        Double Bit ECC                    : N/A
        Pending Page Blacklist            : N/A
    Remapped Rows
        Correctable Error                 : 0
        Uncorrectable Error               : 0
        Pending                           : No
        Remapping Failure Occurred        : No
        Bank Remap Availability Histogram
            Max                           : 2560 bank(s)
            High                          : 0 bank(s)
            Partial                       : 0 bank(s)
            Low                           : 0 bank(s)
            None                          : 0 bank(s)
    Temperature
    GPU Power Readings
        Power Draw                        : 72.02 W
    Clocks
        Graphics                          : 345 MHz
        SM                                : 345 MHz
        Memory                            : 2619 MHz
        Video                             : 765 MHz
    Applications Clocks
        Graphics                          : 1980 MHz
        Memory                            : 2619 MHz
    Default Applications Clocks
        Graphics                          : 1980 MHz
        Memory                            : 2619 MHz
    Deferred Clocks
        Memory                            : N/A
    Max Clocks
        Graphics                          : 1980 MHz
        SM                                : 1980 MHz
        Memory                            : 2619 MHz
        Video                             : 1545 MHz
    Max Customer Boost Clocks
        Graphics                          : 1980 MHz
    Clock Policy
        Auto Boost                        : N/A
        Auto Boost Default                : N/A
    Fabric
        State                             : Completed
        Status                            : Success
        CliqueId                          : 0
        ClusterUUID                       : 00000000-0000-0000-0000-000000000000
        Health
            Bandwidth                     : N/A
    Processes                             : None
    Capabilities
        EGM                               : disabled""".replace(
    "|", " "
).splitlines()  # `|`: the caps' last blank


def _query(
    g: SmiGpu, driver: str, architecture: str = "Hopper", procs: list[SmiProcess] | None = None
) -> list[str]:
    """The -q report of one GPU with a driver version."""
    now = datetime(2024, 11, 14, 7, 0, 14)
    return render_query(
        [g],
        procs or [],
        now=now,
        driver_version=driver,
        cuda_version="12.7",
        attached=1,
        architecture=architecture,
    )


def _in_order(expected: list[str], lines: list[str]) -> list[str]:
    """The expected lines the report lacks or prints out of order (a subsequence check)."""
    rest = iter(lines)
    return [line for line in expected if line not in rest]


def test_query_565_h100_sections_match_a_capture() -> None:
    assert not _in_order(QUERY_565_H100, _query(gpu(), "565.57.01"))


def test_query_pcie_counters_have_the_capture_formats_and_follow_the_load() -> None:
    # The capture's idle board: `Replays Since Reset : 7`, `Tx Throughput : 567 KB/s`, `Rx ... : 559 KB/s`.
    def counters(g: SmiGpu) -> dict[str, str]:
        keys = ("Replays Since Reset", "Tx Throughput", "Rx Throughput")
        return {
            k: line.split(": ")[1]
            for line in _query(g, "565.57.01")
            for k in keys
            if line.strip().startswith(k)
        }

    idle, busy = counters(gpu()), counters(gpu(util_pct=95, power_w=610.3, sm_clock_mhz=1980))
    assert idle["Replays Since Reset"].isdigit()
    for key in ("Tx Throughput", "Rx Throughput"):
        number, unit = idle[key].split(" ")
        assert unit == "KB/s" and 500 <= int(number) < 1000  # the captures' idle boards: 559-3875 KB/s
        assert int(busy[key].split(" ")[0]) > 10 * int(number)


def test_query_575_and_later_lines() -> None:
    # 575.57.08 captures: the display mode and reset status queries are deprecated, `GPU` utilisation, an
    # average power reading beside the instantaneous one, the fabric's health in four lines.
    lines = _query(gpu(), "580.126.09")
    expected = [
        "    Display Mode                          : Requested functionality has been deprecated",
        "    Display Attached                      : No",
        "    Platform Info",
        "        Chassis Serial Number             : N/A",
        "        Module Id                         : 1",
        "        GPU Fabric GUID                   : N/A",
        "        Reset Required                    : Requested functionality has been deprecated",
        "        Drain and Reset Recommended       : Requested functionality has been deprecated",
        "    GPU Recovery Action                   : None",
        "    GSP Firmware Version                  : 580.126.09",
        "        GPU                               : 0 %",
        "        Instantaneous Power Draw          : 72.02 W",
        "            Bandwidth                     : N/A",
        "            Route Recovery in progress    : N/A",
        "            Route Unhealthy               : N/A",
        "            Access Timeout Recovery       : N/A",
    ]
    assert not _in_order(expected, lines)
    average = next(line for line in lines if "Average Power Draw" in line)
    assert abs(float(average.split(": ")[1].split()[0]) - 72.02) <= 1.0
    assert not any(line.startswith("    Module ID") for line in lines)


def test_query_a100_sxm4_80gb_matches_a_capture() -> None:
    # A public 8 x A100-SXM4-80GB capture (driver 555.42.02): PCIe Gen4, no atomics, C2C and fabric N/A.
    a100 = gpu(
        name="NVIDIA A100-SXM4-80GB",
        bus_id="00000000:68:00.0",
        power_cap_w=500,
        mem_total_mib=81920,
        sm_clock_mhz=210,
        mem_clock_mhz=1593,
        sm_clock_max_mhz=1410,
        mem_clock_max_mhz=1593,
    )
    expected = """\
    VBIOS Version                         : 92.00.9E.00.02
    Board ID                              : 0x6800
    Board Part Number                     : 692-2G506-0212-005
    GPU Part Number                       : 20B2-896-A1
    Module ID                             : 1
        Image Version                     : G506.0212.00.01
        OEM Object                        : 2.0
        ECC Object                        : 6.16
    GPU C2C Mode                          : N/A
    GSP Firmware Version                  : 555.42.02
        Device Id                         : 0x20B210DE
        Sub System Id                     : 0x147F10DE
                Max                       : 4
                Device Max                : 4
        Replays Since Reset               : 0
        Atomic Caps Inbound               : N/A
        Atomic Caps Outbound              : N/A
    Sparse Operation Mode                 : N/A
            Max                           : 640 bank(s)
        Video                             : 585 MHz
    Applications Clocks
        Graphics                          : 1140 MHz
        Memory                            : 1593 MHz
        Video                             : 1290 MHz
    Max Customer Boost Clocks
        Graphics                          : 1410 MHz
    Fabric
        State                             : N/A
        Status                            : N/A
        CliqueId                          : N/A
        ClusterUUID                       : N/A
    Processes                             : None
    Capabilities""".splitlines()
    assert not _in_order(expected, _query(a100, "555.42.02", "Ampere"))


def test_query_capabilities_follow_the_processes() -> None:
    procs = [SmiProcess(0, 4242, "/usr/bin/python3", 61234)]
    lines = _query(gpu(), "580.126.09", procs=procs)
    assert lines[-4:] == [
        f"{'            Used GPU Memory':<42}: 61234 MiB",
        "    Capabilities",
        f"{'        EGM':<42}: disabled",
        "",
    ]
