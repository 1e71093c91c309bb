"""nvidia-smi's text: the default table, `-L` lines and `--query-gpu` / `--query-compute-apps` CSV.

Pure: the caller passes GPU samples, processes, the driver and CUDA versions and the time. The default
table's layout follows the driver's branch, as public captures show it:
- 535 (excerpt 40): 89 columns.
- 550-565 (excerpt 41; 550.90.07, 550.107.02, 560.35.03, 565.57.01 captures): 91 columns, Bus-Id and
  Memory-Usage two columns wider, the power cap in 4 digits.
- 570-575 (570.124.06, 570.133.20, 575.51.03, 575.64.05 captures): the Processes section's PID column is
  six columns wider (16) and the process name six narrower (32).
- 580 and later (580.95.05 on H100 during training, 580.126.09 on A100): as 570, and the rule under the
  version line is drawn `+---+` instead of `|---+`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "APP_FIELDS",
    "GPU_FIELDS",
    "CsvFormat",
    "Field",
    "SmiError",
    "SmiGpu",
    "SmiProcess",
    "driver_branch",
    "gpu_serial",
    "gpu_uuid",
    "header_date",
    "parse_format",
    "parse_query",
    "render_apps_csv",
    "render_gpu_csv",
    "render_list",
    "render_table",
    "serial_prefix",
    "table_width",
]

NA = "N/A"
CSV_NA = "[N/A]"  # how a field without a value reads in CSV, with or without units


class SmiError(Exception):
    """An nvidia-smi error: its one-line message and the exit code nvidia-smi returns with it."""

    def __init__(self, message: str, code: int = 2) -> None:
        """Keeps the message and nvidia-smi's exit status."""
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SmiGpu:
    """One GPU as nvidia-smi reports it."""

    index: int
    name: str
    uuid: str
    bus_id: str  # 00000000:18:00.0
    temp_c: int
    power_w: float
    power_cap_w: int
    mem_used_mib: int
    mem_total_mib: int
    util_pct: int
    mem_util_pct: int = 0
    sm_clock_mhz: int = 0
    mem_clock_mhz: int = 0
    sm_clock_max_mhz: int = 0
    mem_clock_max_mhz: int = 0
    pstate: str = "P0"
    fan_pct: int | None = None  # None: N/A, as on passively cooled SXM boards
    persistence: bool = True
    compute_mode: str = "Default"
    mig_mode: str = "Disabled"
    ecc_errors: int = 0  # volatile uncorrected
    serial: str = ""
    compute_cap: str = ""


@dataclass(frozen=True)
class SmiProcess:
    """A process holding GPU memory, as the Processes section lists it."""

    gpu_index: int
    pid: int
    name: str
    used_mib: int
    type: str = "C"


@dataclass(frozen=True)
class _Layout:
    """Column widths of one driver generation's default table."""

    width: int  # whole lines, borders included
    bus_cell: int  # the middle column's width between the bars
    used_w: int  # Memory-Usage: used MiB digits
    total_w: int  # Memory-Usage: total MiB digits
    cap_w: int  # Pwr:Usage/Cap: cap digits
    driver_w: int  # the field after "Driver Version: "
    name_w: int  # the Processes section's process-name column
    pid_w: int = 10  # the Processes section's PID column
    head_rule_left: str = "|"  # the first character of the rule under the version line


_LAYOUT_535 = _Layout(width=89, bus_cell=22, used_w=7, total_w=5, cap_w=3, driver_w=13, name_w=36)
_LAYOUT_550 = _Layout(width=91, bus_cell=24, used_w=8, total_w=6, cap_w=4, driver_w=15, name_w=38)
_LAYOUT_570 = dataclasses.replace(_LAYOUT_550, name_w=32, pid_w=16)
_LAYOUT_580 = dataclasses.replace(_LAYOUT_570, head_rule_left="+")
_GPU_CELL = 41  # "GPU  Name ... Persistence-M" column: the same in both layouts
_UTIL_CELL = 22  # "Volatile Uncorr. ECC" column
_NAME_W = 31  # the GPU name inside its cell
_CONTEXT_COLUMNS = 17  # "|  GPU   GI   CI  " before the PID column in the Processes section


def driver_branch(driver_version: str) -> int:
    """The branch of a driver version (580.126.09 -> 580); an unreadable version counts as the newest."""
    head = driver_version.split(".", 1)[0]
    return int(head) if head.isdigit() and len(head) <= 4 else 9999


def _layout(driver_version: str) -> _Layout:
    """The table layout of a driver version's branch (see the module's docstring)."""
    branch = driver_branch(driver_version)
    if branch >= 580:
        return _LAYOUT_580
    if branch >= 570:
        return _LAYOUT_570
    return _LAYOUT_550 if branch >= 550 else _LAYOUT_535


def table_width(driver_version: str) -> int:
    """How wide the default table's lines are with this driver."""
    return _layout(driver_version).width


def _hex(cluster: str, host: str, index: int, salt: str) -> str:
    """A hex digest of (salt, cluster, host, index): the source of the made-up identifiers."""
    return hashlib.sha256(f"{salt}\0{cluster}\0{host}\0{index}".encode()).hexdigest()


def gpu_uuid(cluster: str, host: str, index: int) -> str:
    """The UUID of GPU `index` of `host` in a cluster of that preset (`GPU-8-4-4-4-12` hex digits)."""
    h = _hex(cluster, host, index, "uuid")
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


# The first four digits of a board serial by product. H100 SXM5: 1654, then one digit 1-5, a 2, one digit
# 1-3 and a 6-digit sequence number (1654423001593, 1654123038646, 1654523007052, 1654321021062 in public
# `nvidia-smi -q` captures). The other products keep that shape under their own prefix [unverified: no
# capture of their serials was found].
_SERIAL_PREFIX = {"H100": "1654", "H200": "1655", "A100": "1323", "B200": "1792"}


def serial_prefix(gpu_name: str) -> str:
    """The serial's product prefix for a GPU's name (`NVIDIA H100 80GB HBM3` -> 1654)."""
    for model, prefix in _SERIAL_PREFIX.items():
        if model in gpu_name:
            return prefix
    return "1652"


def gpu_serial(cluster: str, host: str, index: int, gpu_name: str = "") -> str:
    """The 13-digit board serial of GPU `index` of `host` in a cluster of that preset."""
    n = int(_hex(cluster, host, index, "serial"), 16)
    lot, year, seq = 1 + n % 5, 1 + (n >> 8) % 3, (n >> 16) % 60_000
    return f"{serial_prefix(gpu_name)}{lot}2{year}{seq:06d}"


def header_date(now: datetime) -> str:
    """The first line of the table: `Sun Nov 22 08:41:58 2026` and the trailing blanks nvidia-smi leaves."""
    # ctime-style: the day of the month is space-padded ("Mon Oct  6").
    return f"{now:%a %b} {now.day:2d} {now:%H:%M:%S %Y}       "


def _truncate(text: str, width: int, *, keep_end: bool = False) -> str:
    """`text` cut to `width` with '...' at the end (or, keeping its end, at the front)."""
    if len(text) <= width:
        return text
    return "..." + text[-(width - 3) :] if keep_end else text[: width - 3] + "..."


def _row(*cells: str) -> str:
    """Cells joined into one bordered table line."""
    return "|" + "|".join(cells) + "|"


def _gpu_rows(g: SmiGpu, lay: _Layout) -> list[str]:
    """The three lines of one GPU's block."""
    name = _truncate(g.name, _NAME_W - 1)  # a blank always separates the name from Persistence-M
    persistence = "On" if g.persistence else "Off"
    fan = NA if g.fan_pct is None else f"{g.fan_pct}%"
    power = f"{round(g.power_w)}W"
    draw_w = _GPU_CELL - 16 - 3 - (lay.cap_w + 1) - 1
    return [
        _row(
            f"{g.index:>4}  {name:<{_NAME_W}}{persistence:<3} ",
            f"{' ' * (lay.bus_cell - 21)}{g.bus_id}{'Off':>4} ",
            f"{g.ecc_errors:>{_UTIL_CELL - 1}} ",
        ),
        _row(
            f" {fan:>3}  {g.temp_c:>3}C    {g.pstate:<2}{power:>{draw_w}} / {g.power_cap_w:>{lay.cap_w}}W ",
            f"{g.mem_used_mib:>{lay.used_w}}MiB / {g.mem_total_mib:>{lay.total_w}}MiB ",
            f"{g.util_pct:>7}%{g.compute_mode:>13} ",
        ),
        _row(" " * _GPU_CELL, " " * lay.bus_cell, f"{g.mig_mode:>{_UTIL_CELL - 1}} "),
    ]


def _rule(lay: _Layout, fill: str, left: str, right: str) -> str:
    """A horizontal rule across the three columns of the GPU table."""
    return left + "+".join(fill * w for w in (_GPU_CELL, lay.bus_cell, _UTIL_CELL)) + right


def _boxed(text: str, lay: _Layout) -> str:
    """A line of the full-width boxes (header, Processes), padded to the border."""
    return "|" + text.ljust(lay.width - 2) + "|"


def _process_rows(processes: Sequence[SmiProcess], lay: _Layout) -> list[str]:
    """The Processes box: header, one row per process (or the 'none' line), bottom border."""
    inner = lay.width - 2
    mem_w = inner - 27 - lay.pid_w - lay.name_w  # memory right-aligned up to the " |" closing the line
    header = "  GPU   GI   CI" + "PID".rjust(lay.pid_w + 1) + "   Type   Process name"
    usage = "        ID   ID"
    rows = [
        "+" + "-" * inner + "+",
        _boxed(" Processes:", lay),
        _boxed(header.ljust(inner - 11) + "GPU Memory ", lay),
        _boxed(usage.ljust(inner - 11) + "Usage      ", lay),
        "|" + "=" * inner + "|",
    ]
    if not processes:
        rows.append(_boxed("  No running processes found", lay))
    for p in processes:
        name = _truncate(p.name, lay.name_w, keep_end=True)
        used = f"{p.used_mib}MiB"
        rows.append(
            _boxed(
                f"{p.gpu_index:>5}   {NA:<3}  {NA:<3}{p.pid:>{lay.pid_w}}{p.type:>7}   "
                f"{name:<{lay.name_w}}{used:>{mem_w}} ",
                lay,
            )
        )
    rows.append("+" + "-" * inner + "+")
    return rows


def render_table(
    gpus: Sequence[SmiGpu],
    processes: Sequence[SmiProcess],
    *,
    now: datetime,
    driver_version: str,
    cuda_version: str,
) -> list[str]:
    """nvidia-smi's default output: the date, the GPU table, a blank line and the Processes section."""
    lay = _layout(driver_version)
    inner = lay.width - 2
    version = f" NVIDIA-SMI {driver_version:<23}Driver Version: {driver_version:<{lay.driver_w}}"
    lines = [
        header_date(now),
        "+" + "-" * inner + "+",
        _boxed(f"{version}CUDA Version: {cuda_version:<9}", lay),
        _rule(lay, "-", lay.head_rule_left, "+"),
        _row(
            " GPU  Name                 Persistence-M ",
            " Bus-Id".ljust(lay.bus_cell - 7) + "Disp.A ",
            " Volatile Uncorr. ECC ",
        ),
        _row(
            " Fan  Temp   Perf          Pwr:Usage/Cap ",
            "Memory-Usage ".rjust(lay.bus_cell),
            " GPU-Util  Compute M. ",
        ),
        _row(" " * _GPU_CELL, " " * lay.bus_cell, "MIG M. ".rjust(_UTIL_CELL)),
        _rule(lay, "=", "|", "|"),
    ]
    for g in gpus:
        lines += _gpu_rows(g, lay)
        lines.append(_rule(lay, "-", "+", "+"))
    # The line between the two tables is blank but not empty: nvidia-smi pads it with spaces.
    lines.append(" " * inner)
    lines += _process_rows(processes, lay)
    return lines


def render_list(gpus: Sequence[SmiGpu]) -> list[str]:
    """`nvidia-smi -L`: `GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)` per GPU."""
    return [f"GPU {g.index}: {g.name} (UUID: {g.uuid})" for g in gpus]


# ----------------------------------------------------------------------------------------------------
# --query-gpu / --query-compute-apps


@dataclass(frozen=True)
class CsvFormat:
    """The options of `--format=csv[,noheader][,nounits]`."""

    header: bool = True
    units: bool = True


@dataclass(frozen=True)
class _Ctx:
    """What a query row can read besides its GPU: the time, the driver, the GPU count, the process."""

    now: datetime
    driver_version: str
    count: int
    process: SmiProcess | None = None


@dataclass(frozen=True)
class Field:
    """A queryable property: its name in the header, its unit and how to read it."""

    name: str
    unit: str
    read: Callable[[SmiGpu, _Ctx], str | int | float | None]
    aliases: tuple[str, ...] = ()

    def header(self) -> str:
        """The column title: the canonical name, then the unit in brackets."""
        return f"{self.name} [{self.unit}]" if self.unit else self.name

    def value(self, gpu: SmiGpu, ctx: _Ctx, units: bool) -> str:
        """The cell: `[N/A]` when there is no value, the unit after a blank unless `nounits`."""
        raw = self.read(gpu, ctx)
        if raw is None:
            return CSV_NA
        text = f"{raw:.2f}" if isinstance(raw, float) else str(raw)
        return f"{text} {self.unit}" if units and self.unit else text


def _timestamp(ctx: _Ctx) -> str:
    """The timestamp field: `2026/11/22 08:41:58.123`."""
    return f"{ctx.now:%Y/%m/%d %H:%M:%S}.{ctx.now.microsecond // 1000:03d}"


def _bus_part(g: SmiGpu, part: int, digits: int) -> str:
    """One part of the PCI address as hex: domain, bus or device."""
    fields = g.bus_id.replace(".", ":").split(":")
    return f"0x{int(fields[part], 16):0{digits}X}"


def _mode(on: bool) -> str:
    """Enabled or Disabled."""
    return "Enabled" if on else "Disabled"


_G = Callable[[SmiGpu, _Ctx], str | int | float | None]


def _f(name: str, read: _G, unit: str = "", *aliases: str) -> Field:
    """A Field from its name, reader, unit and aliases."""
    return Field(name, unit, read, aliases)


GPU_FIELDS: tuple[Field, ...] = (
    _f("timestamp", lambda g, c: _timestamp(c)),
    _f("driver_version", lambda g, c: c.driver_version),
    _f("count", lambda g, c: c.count),
    _f("name", lambda g, c: g.name, "", "gpu_name"),
    _f("serial", lambda g, c: g.serial or None, "", "gpu_serial"),
    _f("uuid", lambda g, c: g.uuid, "", "gpu_uuid"),
    _f("pci.bus_id", lambda g, c: g.bus_id, "", "gpu_bus_id"),
    _f("pci.domain", lambda g, c: _bus_part(g, 0, 4)),
    _f("pci.bus", lambda g, c: _bus_part(g, 1, 2)),
    _f("pci.device", lambda g, c: _bus_part(g, 2, 2)),
    _f("index", lambda g, c: g.index),
    _f("display_mode", lambda g, c: "Disabled"),
    _f("display_active", lambda g, c: "Disabled"),
    _f("persistence_mode", lambda g, c: _mode(g.persistence)),
    _f("fan.speed", lambda g, c: g.fan_pct, "%"),
    _f("pstate", lambda g, c: g.pstate),
    _f("memory.total", lambda g, c: g.mem_total_mib, "MiB"),
    _f("memory.used", lambda g, c: g.mem_used_mib, "MiB"),
    _f("memory.free", lambda g, c: max(0, g.mem_total_mib - g.mem_used_mib), "MiB"),
    _f("compute_mode", lambda g, c: g.compute_mode),
    _f("compute_cap", lambda g, c: g.compute_cap or None),
    _f("utilization.gpu", lambda g, c: g.util_pct, "%"),
    _f("utilization.memory", lambda g, c: g.mem_util_pct, "%"),
    _f("ecc.mode.current", lambda g, c: "Enabled"),
    _f("temperature.gpu", lambda g, c: g.temp_c),
    _f("power.draw", lambda g, c: float(g.power_w), "W"),
    _f("power.draw.average", lambda g, c: float(g.power_w), "W"),
    _f("power.draw.instant", lambda g, c: float(g.power_w), "W"),
    _f("power.limit", lambda g, c: float(g.power_cap_w), "W"),
    _f("enforced.power.limit", lambda g, c: float(g.power_cap_w), "W"),
    _f("power.default_limit", lambda g, c: float(g.power_cap_w), "W"),
    _f("power.max_limit", lambda g, c: float(g.power_cap_w), "W"),
    _f("clocks.current.graphics", lambda g, c: g.sm_clock_mhz, "MHz", "clocks.gr"),
    _f("clocks.current.sm", lambda g, c: g.sm_clock_mhz, "MHz", "clocks.sm"),
    _f("clocks.current.memory", lambda g, c: g.mem_clock_mhz, "MHz", "clocks.mem"),
    _f("clocks.max.graphics", lambda g, c: g.sm_clock_max_mhz, "MHz", "clocks.max.gr"),
    _f("clocks.max.sm", lambda g, c: g.sm_clock_max_mhz, "MHz"),
    _f("clocks.max.memory", lambda g, c: g.mem_clock_max_mhz, "MHz", "clocks.max.mem"),
    _f("mig.mode.current", lambda g, c: g.mig_mode),
)


def _proc(read: Callable[[SmiProcess], str | int]) -> _G:
    """A reader of the query's process (APP_FIELDS rows)."""
    return lambda g, c: read(c.process) if c.process is not None else None


APP_FIELDS: tuple[Field, ...] = (
    _f("timestamp", lambda g, c: _timestamp(c)),
    _f("gpu_name", lambda g, c: g.name),
    _f("gpu_bus_id", lambda g, c: g.bus_id),
    _f("gpu_serial", lambda g, c: g.serial or None),
    _f("gpu_uuid", lambda g, c: g.uuid),
    _f("pid", _proc(lambda p: p.pid)),
    _f("process_name", _proc(lambda p: p.name), "", "name"),
    _f("used_gpu_memory", _proc(lambda p: p.used_mib), "MiB", "used_memory"),
)


def parse_query(spec: str, fields: Sequence[Field] = GPU_FIELDS) -> list[Field]:
    """The fields of `--query-gpu=a,b,c` (or of `--query-compute-apps` with APP_FIELDS), in order."""
    index = {alias: f for f in fields for alias in (f.name, *f.aliases)}
    out = []
    for raw in spec.split(","):
        name = raw.strip()
        field = index.get(name.lower())
        if field is None:
            raise SmiError(f'Field "{name}" is not a valid field to query.')
        out.append(field)
    return out


def parse_format(spec: str) -> CsvFormat:
    """`--format=csv[,noheader][,nounits]`; anything else is an error."""
    options = [part.strip().lower() for part in spec.split(",")]
    if "csv" not in options:
        raise SmiError(f'"{spec}" is not a valid format: use --format=csv[,noheader][,nounits].')
    unknown = [o for o in options if o not in ("csv", "noheader", "nounits")]
    if unknown:
        raise SmiError(f'"{unknown[0]}" is not a valid format option: use csv, noheader and nounits.')
    return CsvFormat(header="noheader" not in options, units="nounits" not in options)


def _csv(header: Sequence[Field], rows: list[str], fmt: CsvFormat) -> list[str]:
    """The header line (unless noheader) and the rows."""
    head = [", ".join(f.header() for f in header)] if fmt.header else []
    return head + rows


def render_gpu_csv(
    gpus: Sequence[SmiGpu],
    fields: Sequence[Field],
    fmt: CsvFormat,
    *,
    now: datetime,
    driver_version: str,
    count: int | None = None,
) -> list[str]:
    """`--query-gpu` output: the header line (unless noheader), then one line per GPU."""
    ctx = _Ctx(now, driver_version, len(gpus) if count is None else count)
    rows = [", ".join(f.value(g, ctx, fmt.units) for f in fields) for g in gpus]
    return _csv(fields, rows, fmt)


def render_apps_csv(
    gpus: Sequence[SmiGpu],
    processes: Sequence[SmiProcess],
    fields: Sequence[Field],
    fmt: CsvFormat,
    *,
    now: datetime,
    driver_version: str,
) -> list[str]:
    """`--query-compute-apps` output: the header line (unless noheader), then one line per process."""
    by_index = {g.index: g for g in gpus}
    rows = []
    for p in processes:
        gpu = by_index.get(p.gpu_index)
        if gpu is None:
            continue
        ctx = _Ctx(now, driver_version, len(gpus), p)
        rows.append(", ".join(f.value(gpu, ctx, fmt.units) for f in fields))
    return _csv(fields, rows, fmt)
