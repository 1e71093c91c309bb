"""nvidia-smi's text: the table in both driver layouts, -L lines, UUIDs and the --query CSV."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakerun.render.smi import (
    APP_FIELDS,
    CsvFormat,
    SmiError,
    SmiGpu,
    SmiProcess,
    gpu_serial,
    gpu_uuid,
    header_date,
    parse_format,
    parse_query,
    render_apps_csv,
    render_gpu_csv,
    render_list,
    render_table,
    table_width,
)

NOW = datetime(2026, 11, 22, 8, 41, 58, 123456)
H100 = "NVIDIA H100 80GB HBM3"

# Lines of real tables (excerpts 41 and 40): their frames, and the block of a GPU with these values.
REAL_550 = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.90.07              Driver Version: 550.90.07      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |
|                                         |                        |               MIG M. |
|=========================================+========================+======================|
|   0  NVIDIA H100 80GB HBM3          On  |   00000000:19:00.0 Off |                    0 |
| N/A   39C    P0            145W /  700W |   72790MiB /  81559MiB |      0%      Default |
|                                         |                        |             Disabled |
+-----------------------------------------+------------------------+----------------------+
|   1  NVIDIA H100 80GB HBM3          On  |   00000000:2A:00.0 Off |                    0 |
| N/A   27C    P0             71W /  700W |     112MiB /  81559MiB |      4%      Default |
|                                         |                        |             Disabled |
+-----------------------------------------+------------------------+----------------------+
""".splitlines()
REAL_535 = """\
+---------------------------------------------------------------------------------------+
| NVIDIA-SMI 535.129.03             Driver Version: 535.129.03   CUDA Version: 12.2     |
|-----------------------------------------+----------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id        Disp.A | Volatile Uncorr. ECC |
| Fan  Temp   Perf          Pwr:Usage/Cap |         Memory-Usage | GPU-Util  Compute M. |
|                                         |                      |               MIG M. |
|=========================================+======================+======================|
|   0  NVIDIA H100 80GB HBM3          On  | 00000000:1B:00.0 Off |                    0 |
| N/A   36C    P0             259W / 700W |  18449MiB / 81559MiB |     25%      Default |
|                                         |                      |             Disabled |
+-----------------------------------------+----------------------+----------------------+
""".splitlines()
# Driver 580 (580.95.05, 2 x H100 during a DDP run, public capture): the rule under the version line starts
# with '+', and the Processes section of drivers 570 and later has a wider PID column.
REAL_580 = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 580.95.05              Driver Version: 580.95.05      CUDA Version: 13.0     |
+-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |
|                                         |                        |               MIG M. |
|=========================================+========================+======================|
|   0  NVIDIA H100 80GB HBM3          On  |   00000000:04:00.0 Off |                    0 |
| N/A   38C    P0            193W /  700W |   18903MiB /  81559MiB |     25%      Default |
|                                         |                        |             Disabled |
+-----------------------------------------+------------------------+----------------------+
|   1  NVIDIA H100 80GB HBM3          On  |   00000000:05:00.0 Off |                    0 |
| N/A   37C    P0            199W /  700W |   18905MiB /  81559MiB |     28%      Default |
|                                         |                        |             Disabled |
+-----------------------------------------+------------------------+----------------------+
""".splitlines()
REAL_PROCESSES_580 = """\
+-----------------------------------------------------------------------------------------+
| Processes:                                                                              |
|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |
|        ID   ID                                                               Usage      |
|=========================================================================================|
|    0   N/A  N/A            4935      C   ...und/unsloth/.venv/bin/python3      18256MiB |
|    1   N/A  N/A            4936      C   ...und/unsloth/.venv/bin/python3      18258MiB |
+-----------------------------------------------------------------------------------------+
""".splitlines()
# Driver 570 (570.133.20, public capture): the 550 frames with 570's Processes columns.
REAL_570_HEAD = [
    "| NVIDIA-SMI 570.133.20             Driver Version: 570.133.20     CUDA Version: 12.8     |",
    "|-----------------------------------------+------------------------+----------------------+",
]
REAL_PROCESSES_535 = """\
+---------------------------------------------------------------------------------------+
| Processes:                                                                            |
|  GPU   GI   CI        PID   Type   Process name                            GPU Memory |
|        ID   ID                                                             Usage      |
|=======================================================================================|
|    0   N/A  N/A   3375095      C   /usr/bin/python                           18430MiB |
+---------------------------------------------------------------------------------------+
""".splitlines()
REAL_NO_PROCESSES_550 = """\
+-----------------------------------------------------------------------------------------+
| Processes:                                                                              |
|  GPU   GI   CI        PID   Type   Process name                              GPU Memory |
|        ID   ID                                                               Usage      |
|=========================================================================================|
|  No running processes found                                                             |
+-----------------------------------------------------------------------------------------+
""".splitlines()

# The second line of a GPU block, read back: temperature, power, cap, used, total, utilisation.
STATUS = re.compile(
    r"^\| (?:N/A|\d+%) +(?P<temp>\d+)C +(?P<pstate>P\d+) +(?P<power>\d+)W / +(?P<cap>\d+)W "
    r"\| +(?P<used>\d+)MiB / +(?P<total>\d+)MiB \| +(?P<util>\d+)% +(?P<mode>\S+) \|$"
)
PROCESS = re.compile(
    r"^\| +(?P<gpu>\d+) +N/A +N/A +(?P<pid>\d+) +(?P<type>C|G|C\+G) +(?P<name>\S.*?) +(?P<used>\d+)MiB \|$"
)
UUID = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def gpu(index: int = 0, **kw: Any) -> SmiGpu:
    """A busy H100; keyword arguments override fields."""
    base = SmiGpu(
        index=index,
        name=H100,
        uuid=gpu_uuid("dgx-h100", "gpu-node-001", index),
        bus_id=f"00000000:{0x18 + index:02X}:00.0",
        temp_c=64,
        power_w=612.0,
        power_cap_w=700,
        mem_used_mib=43_321,
        mem_total_mib=81_559,
        util_pct=98,
        mem_util_pct=41,
        sm_clock_mhz=1980,
        mem_clock_mhz=2619,
        sm_clock_max_mhz=1980,
        mem_clock_max_mhz=2619,
        serial=gpu_serial("dgx-h100", "gpu-node-001", index, H100),
        compute_cap="9.0",
    )
    return dataclasses.replace(base, **kw)


def table(gpus: list[SmiGpu], procs: Sequence[SmiProcess] = (), driver: str = "550.90.07") -> list[str]:
    """The default table with a fixed date."""
    return render_table(gpus, list(procs), now=NOW, driver_version=driver, cuda_version="12.4")


def statuses(lines: list[str]) -> list[dict[str, int]]:
    """Every GPU's status line parsed back."""
    out = []
    for line in lines:
        m = STATUS.match(line)
        if m:
            out.append({k: int(v) for k, v in m.groupdict().items() if v.isdigit()})
    return out


class TestTableLayout:
    """The default table is the real driver's layout to the column."""

    def test_550_layout_matches_the_real_table(self) -> None:
        """Frames, headers and a GPU block equal excerpt 41's lines for the same values."""
        gpus = [
            gpu(0, bus_id="00000000:19:00.0", temp_c=39, power_w=145.2, mem_used_mib=72_790, util_pct=0),
            gpu(1, bus_id="00000000:2A:00.0", temp_c=27, power_w=70.6, mem_used_mib=112, util_pct=4),
        ]
        lines = table(gpus)
        assert lines[1 : 1 + len(REAL_550)] == REAL_550

    def test_535_layout_matches_the_real_table(self) -> None:
        """Drivers before 550 draw the narrower table of excerpt 40."""
        g = gpu(0, bus_id="00000000:1B:00.0", temp_c=36, power_w=259.0, mem_used_mib=18_449, util_pct=25)
        lines = render_table(
            [g],
            [SmiProcess(0, 3375095, "/usr/bin/python", 18_430)],
            now=NOW,
            driver_version="535.129.03",
            cuda_version="12.2",
        )
        assert lines[1 : 1 + len(REAL_535)] == REAL_535
        assert lines[-len(REAL_PROCESSES_535) :] == REAL_PROCESSES_535

    def test_580_layout_matches_the_real_table(self) -> None:
        """Driver 580 (the cu130 stack's): frames, blocks and the Processes section of a real 580 table."""
        gpus = [
            gpu(0, bus_id="00000000:04:00.0", temp_c=38, power_w=193.4, mem_used_mib=18_903, util_pct=25),
            gpu(1, bus_id="00000000:05:00.0", temp_c=37, power_w=198.8, mem_used_mib=18_905, util_pct=28),
        ]
        python = "/home/user/playground/unsloth/.venv/bin/python3"
        procs = [SmiProcess(0, 4935, python, 18_256), SmiProcess(1, 4936, python, 18_258)]
        lines = render_table(gpus, procs, now=NOW, driver_version="580.95.05", cuda_version="13.0")
        assert lines[1 : 1 + len(REAL_580)] == REAL_580
        assert lines[-len(REAL_PROCESSES_580) :] == REAL_PROCESSES_580
        assert lines[1 + len(REAL_580)] == " " * 89

    def test_570_layout_keeps_the_bar_under_the_version(self) -> None:
        """570 and 575 draw 550's frame with 580's Processes columns."""
        procs = [SmiProcess(0, 4935, "/home/user/playground/unsloth/.venv/bin/python3", 18_256)]
        lines = render_table([gpu(0)], procs, now=NOW, driver_version="570.133.20", cuda_version="12.8")
        assert lines[2:4] == REAL_570_HEAD
        assert lines[-7:] == [*REAL_PROCESSES_580[:6], REAL_PROCESSES_580[-1]]

    @pytest.mark.parametrize(
        ("driver", "width"), [("535.183.01", 89), ("550.90.07", 91), ("570.124.06", 91), ("580.126.09", 91)]
    )
    def test_every_line_has_the_layouts_width(self, driver: str, width: int) -> None:
        """All lines but the date are exactly as wide as the real table, bars in the real columns."""
        lines = table(
            [gpu(i) for i in range(8)], [SmiProcess(i, 1000 + i, "python", 4000) for i in range(8)], driver
        )
        assert table_width(driver) == width
        spacer = lines.index(" " * (width - 2))
        assert {len(line) for i, line in enumerate(lines) if i not in (0, spacer)} == {width}
        bars = {tuple(i for i, c in enumerate(line) if c in "|+") for line in lines[3:spacer]}
        middle = 67 if width == 91 else 65
        assert bars == {(0, 42, middle, width - 1)}

    def test_date_line_is_ctime_with_trailing_blanks(self) -> None:
        """The day of the month is space-padded and the line ends in seven blanks, as nvidia-smi prints it."""
        assert header_date(datetime(2025, 10, 6, 3, 29, 21)) == "Mon Oct  6 03:29:21 2025       "
        assert table([gpu()])[0] == "Sun Nov 22 08:41:58 2026       "

    def test_sections_are_separated_by_a_line_of_blanks(self) -> None:
        """Between the GPU table and the Processes box comes a line of spaces two shorter than the table."""
        lines = table([gpu()])
        i = lines.index(REAL_NO_PROCESSES_550[0], 2)
        assert lines[i - 1] == " " * 89
        assert lines[i:] == REAL_NO_PROCESSES_550

    def test_long_names_are_cut_to_the_column(self) -> None:
        """A GPU name longer than its column ends in '...' and leaves the borders in place."""
        lines = table([gpu(name="NVIDIA Extremely Long Accelerator Name 96GB")])
        assert "NVIDIA Extremely Long Accel..." in lines[8]
        assert len(lines[8]) == 91


class TestTableRoundTrip:
    """What the table shows is what it was given."""

    @given(
        st.lists(
            st.tuples(
                st.integers(0, 120),
                st.integers(0, 1500),
                st.integers(300, 1500),
                st.integers(0, 200_000),
                st.integers(0, 100),
            ),
            min_size=1,
            max_size=16,
        )
    )
    def test_status_lines_parse_back(self, values: list[tuple[int, int, int, int, int]]) -> None:
        """Temperature, power, cap, memory and utilisation of every GPU read back equal to the input."""
        gpus = [
            gpu(
                i,
                temp_c=t,
                power_w=float(p),
                power_cap_w=cap,
                mem_used_mib=used,
                mem_total_mib=200_000,
                util_pct=u,
            )
            for i, (t, p, cap, used, u) in enumerate(values)
        ]
        got = statuses(table(gpus))
        want = [
            {"temp": t, "power": p, "cap": cap, "used": used, "total": 200_000, "util": u}
            for t, p, cap, used, u in values
        ]
        assert [{k: g[k] for k in want[0]} for g in got] == want

    def test_fractional_power_is_rounded(self) -> None:
        """The table shows whole watts."""
        assert statuses(table([gpu(power_w=611.5)]))[0]["power"] == 612
        assert statuses(table([gpu(power_w=611.49)]))[0]["power"] == 611

    def test_gpu_indexes_and_bus_ids_in_order(self) -> None:
        """Each block starts with the GPU's index, name and bus id."""
        lines = table([gpu(i) for i in range(4)])
        heads = [line for line in lines if re.match(r"^\| +\d+  NVIDIA", line)]
        assert [int(h.split()[1]) for h in heads] == [0, 1, 2, 3]
        assert all(f"00000000:{0x18 + i:02X}:00.0 Off" in h for i, h in enumerate(heads))

    def test_processes_parse_back(self) -> None:
        """Each process row carries its GPU, pid, type, name and memory; none reads as nvidia-smi says."""
        procs = [SmiProcess(i, 41_000 + i, "/usr/bin/python3", 40_000 + i) for i in range(8)]
        lines = table([gpu(i) for i in range(8)], procs)
        rows = [m.groupdict() for m in map(PROCESS.match, lines) if m]
        assert rows == [
            {"gpu": str(p.gpu_index), "pid": str(p.pid), "type": "C", "name": p.name, "used": str(p.used_mib)}
            for p in procs
        ]
        assert "|  No running processes found" + " " * 61 + "|" in table([gpu()])

    def test_long_process_names_keep_their_end(self) -> None:
        """A long process path is cut at the front with '...' so the executable's name stays visible."""
        name = "/opt/some/very/deep/virtualenv/path/for/training/bin/python3.11"
        lines = table([gpu()], [SmiProcess(0, 7, name, 100)])
        row = next(line for line in lines if PROCESS.match(line))
        assert len(row) == 91
        assert "..." in row and "python3.11" in row


class TestList:
    """`-L` lines and the made-up UUIDs."""

    def test_list_lines(self) -> None:
        """One `GPU i: name (UUID: GPU-...)` line per GPU."""
        lines = render_list([gpu(i) for i in range(8)])
        assert len(lines) == 8
        for i, line in enumerate(lines):
            m = re.fullmatch(rf"GPU {i}: {H100} \(UUID: (GPU-[0-9a-f-]+)\)", line)
            assert m and UUID.match(m.group(1))

    def test_uuids_are_stable_and_distinct(self) -> None:
        """The same cluster, host and index give the same UUID; other clusters, hosts or indexes others."""
        assert gpu_uuid("dgx-h100", "gpu-node-001", 3) == gpu_uuid("dgx-h100", "gpu-node-001", 3)
        uuids = {gpu_uuid("dgx-h100", f"gpu-node-{n:03d}", i) for n in range(1, 17) for i in range(8)}
        uuids |= {gpu_uuid("hgx-h200", f"gpu-node-{n:03d}", i) for n in range(1, 17) for i in range(8)}
        assert len(uuids) == 256
        assert all(UUID.match(u) for u in uuids)

    def test_serials_have_the_real_shape(self) -> None:
        """H100 serials: 1654, a digit 1-5, a 2, a digit 1-3, six digits (public nvidia-smi -q captures)."""
        serials = {
            gpu_serial("dgx-h100", f"gpu-node-{n:03d}", i, H100) for n in range(1, 17) for i in range(8)
        }
        assert len(serials) == 128
        assert all(re.fullmatch(r"1654[1-5]2[1-3]\d{6}", s) for s in serials)
        assert gpu_serial("dgx-h100", "gpu-node-001", 0, H100) != gpu_serial(
            "hgx-h200", "gpu-node-001", 0, H100
        )
        assert all(
            len(gpu_serial("c", "h", 0, name)) == 13 for name in ("NVIDIA B200", "NVIDIA A100-SXM4-80GB")
        )


class TestCsv:
    """`--query-gpu` and `--query-compute-apps` CSV with nvidia-smi's names, units and errors."""

    FIELDS = (
        "index,name,uuid,pci.bus_id,driver_version,pstate,temperature.gpu,utilization.gpu,utilization.memory,"
        "memory.used,memory.total,memory.free,power.draw,power.limit,clocks.sm,clocks.mem,fan.speed"
    )

    def csv(self, fields: str, fmt: str = "csv", gpus: list[SmiGpu] | None = None) -> list[str]:
        """The query's output lines."""
        return render_gpu_csv(
            gpus or [gpu(0), gpu(1, temp_c=61)],
            parse_query(fields),
            parse_format(fmt),
            now=NOW,
            driver_version="550.90.07",
        )

    def test_header_names_and_units(self) -> None:
        """The header names every field as nvidia-smi does, aliases by their full name, units in brackets."""
        assert self.csv(self.FIELDS)[0] == (
            "index, name, uuid, pci.bus_id, driver_version, pstate, temperature.gpu, utilization.gpu [%], "
            "utilization.memory [%], memory.used [MiB], memory.total [MiB], memory.free [MiB], "
            "power.draw [W], power.limit [W], clocks.current.sm [MHz], clocks.current.memory [MHz], "
            "fan.speed [%]"
        )

    def test_values_with_units(self) -> None:
        """Values carry their units after a blank; power has two decimals; no fan on SXM reads [N/A]."""
        row = self.csv(self.FIELDS)[1]
        assert row == (
            f"0, {H100}, {gpu_uuid('dgx-h100', 'gpu-node-001', 0)}, 00000000:18:00.0, 550.90.07, P0, 64, "
            "98 %, 41 %, "
            "43321 MiB, 81559 MiB, 38238 MiB, 612.00 W, 700.00 W, 1980 MHz, 2619 MHz, [N/A]"
        )

    def test_noheader_nounits(self) -> None:
        """noheader drops the title line, nounits the units; [N/A] stays."""
        lines = self.csv(
            "index,temperature.gpu,utilization.gpu,memory.used,power.draw,fan.speed", "csv,noheader,nounits"
        )
        assert lines == ["0, 64, 98, 43321, 612.00, [N/A]", "1, 61, 98, 43321, 612.00, [N/A]"]

    def test_nounits_keeps_the_header_units(self) -> None:
        """With nounits the header still names the units."""
        assert self.csv("memory.used", "csv,nounits") == ["memory.used [MiB]", "43321", "43321"]

    def test_timestamp_and_count(self) -> None:
        """timestamp is `YYYY/MM/DD HH:MM:SS.mmm`; count is the number of GPUs."""
        assert self.csv("timestamp,count", "csv,noheader")[0] == "2026/11/22 08:41:58.123, 2"

    @pytest.mark.parametrize("field", ["foo", "cuda_version", "utilization", ""])
    def test_unknown_field(self, field: str) -> None:
        """An unknown field is nvidia-smi's one-line error with exit status 2."""
        with pytest.raises(SmiError) as err:
            parse_query(f"index,{field}")
        assert str(err.value) == f'Field "{field}" is not a valid field to query.'
        assert err.value.code == 2

    @pytest.mark.parametrize("fmt", ["json", "csv,bogus", "noheader"])
    def test_bad_format(self, fmt: str) -> None:
        """Anything but csv with noheader and nounits is refused in one line."""
        with pytest.raises(SmiError) as err:
            parse_format(fmt)
        assert "\n" not in str(err.value)

    def test_format_options(self) -> None:
        """The options combine in any order."""
        assert parse_format("csv") == CsvFormat(header=True, units=True)
        assert parse_format("csv,nounits,noheader") == CsvFormat(header=False, units=False)

    def test_compute_apps(self) -> None:
        """One line per process with its GPU's identity; the header alone when nothing runs."""
        fields = parse_query("pid,process_name,used_memory,gpu_bus_id", APP_FIELDS)
        procs = [SmiProcess(1, 4242, "/usr/bin/python3", 40_000)]
        lines = render_apps_csv(
            [gpu(0), gpu(1)], procs, fields, CsvFormat(), now=NOW, driver_version="550.90.07"
        )
        assert lines == [
            "pid, process_name, used_gpu_memory [MiB], gpu_bus_id",
            "4242, /usr/bin/python3, 40000 MiB, 00000000:19:00.0",
        ]
        assert render_apps_csv([gpu()], [], fields, CsvFormat(), now=NOW, driver_version="x") == [lines[0]]
