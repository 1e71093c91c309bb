"""The GPU status grid rank 0 prints: every GPU of the job as one cell, grouped by node, coloured by health.

Layout: line 0 is the header (step, GPU count, job-wide figures); then the body, one node per line with a
summary for small jobs (<= 16 nodes), several nodes per line for large ones (or, given `detail_gpus`, the
first nodes up to that many GPUs and one line of ranges for the rest); then, when any GPU needs
attention, an ``unhealthy:`` line; the last line is the legend. A cell's glyph encodes utilisation
(``▁`` to ``█``); a dead GPU is ``x``; without colour, warn and crit cells show ``!`` and ``X`` instead.
"""

from __future__ import annotations

import re
import statistics
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "DEAD_GLYPH",
    "HEALTH_LEVELS",
    "MARKERS",
    "UTIL_GLYPHS",
    "GridGpu",
    "grid_records",
    "health",
    "render_grid",
    "severity",
    "visible_len",
]

HEALTH_LEVELS: tuple[str, ...] = ("ok", "busy", "warn", "crit", "dead")  # least to most severe
UTIL_GLYPHS = "▁▂▃▄▅▆▇█"
DEAD_GLYPH = "x"
# Without colour the cell itself must say what is wrong: a marker replaces the utilisation glyph.
MARKERS: dict[str, str] = {"warn": "!", "crit": "X", "dead": DEAD_GLYPH}

_SGR: dict[str, str] = {
    "ok": "\x1b[32m",
    "busy": "\x1b[36m",
    "warn": "\x1b[33m",
    "crit": "\x1b[1;31m",
    "dead": "\x1b[2;37m",
}
_RESET = "\x1b[0m"
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")

_BUSY_PHASES = frozenset({"eval", "checkpoint", "init"})
_MIN_WIDTH = 20
_ONE_NODE_PER_LINE_MAX = 16
_MAX_ROWS_WITH_UTIL = 32  # a screenful: beyond it, per-node utilisation gives way to more nodes per line
_SEP = "  "
_MIB = 1024 * 1024
_DOT = " · "


@dataclass(frozen=True)
class GridGpu:
    """One GPU as the grid shows it: identity, telemetry, phase and the compute time of its last step."""

    rank: int
    node: int
    local_rank: int
    host: str
    util_pct: int
    temp_c: int
    power_w: int
    power_cap_w: int
    mem_used_mib: int
    mem_total_mib: int
    phase: str  # "train" | "eval" | "checkpoint" | "stall" | "init" | "idle" | "dead"
    step_ms: float  # this rank's compute time of the last step (ms); 0 if unknown


def severity(level: str) -> int:
    """Position of a health level in HEALTH_LEVELS: 0 for ok up to 4 for dead."""
    return HEALTH_LEVELS.index(level)


def health(
    gpu: GridGpu,
    *,
    temp_warn: int = 83,
    temp_crit: int = 90,
    util_floor: int = 30,
    straggler: bool = False,
) -> str:
    """The GPU's health: ok, busy (expected dip), warn (hot, low util in training, straggler), crit, dead."""
    if gpu.phase == "dead":
        return "dead"
    if gpu.phase == "stall" or gpu.temp_c >= temp_crit:
        return "crit"
    if gpu.temp_c >= temp_warn or straggler or (gpu.phase == "train" and gpu.util_pct < util_floor):
        return "warn"
    if gpu.phase in _BUSY_PHASES:
        return "busy"
    return "ok"


def visible_len(s: str) -> int:
    """Terminal columns a string takes: ANSI escapes count 0, East Asian wide characters 2, combining 0."""
    plain = _ANSI.sub("", s)
    if plain.isascii():
        return len(plain)
    width = 0
    for ch in plain:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def _clip(s: str, width: int) -> str:
    """A plain (escape-free) string cut to `width` columns, ending in an ellipsis when cut."""
    if visible_len(s) <= width:
        return s
    out = ""
    for ch in s:
        if visible_len(out + ch) > width - 1:
            break
        out += ch
    return out + "…"


def _power(watts: float) -> str:
    return f"{watts:.0f} W" if watts < 1000 else f"{watts / 1000:.1f} kW"


def _gib(mib: int) -> str:
    return f"{mib / 1024:.1f}"


def _fit_fields(fields: Sequence[str], width: int, sep: str = _DOT) -> str:
    """Fields joined in order while they fit in `width` columns; the first is clipped if too wide."""
    line = _clip(fields[0], width) if fields else ""
    for f in fields[1:]:
        if visible_len(line + sep + f) > width:
            break
        line += sep + f
    return line


@dataclass(frozen=True)
class _Cell:
    """A GPU with its health, as placed in the grid."""

    gpu: GridGpu
    level: str

    def char(self, color: bool) -> str:
        if self.level == "dead":
            return DEAD_GLYPH
        if not color and self.level in MARKERS:
            return MARKERS[self.level]
        util = self.gpu.util_pct
        return UTIL_GLYPHS[min(len(UTIL_GLYPHS) - 1, max(0, util * len(UTIL_GLYPHS) // 100))]


def _cells(cells: Sequence[_Cell], color: bool) -> str:
    """Consecutive cells; with colour, one SGR sequence per run of equal health."""
    if not color:
        return "".join(c.char(False) for c in cells)
    out: list[str] = []
    run = ""
    for c in cells:
        if c.level != run:
            out.append((_RESET if run else "") + _SGR[c.level])
            run = c.level
        out.append(c.char(True))
    if run:
        out.append(_RESET)
    return "".join(out)


@dataclass(frozen=True)
class _Node:
    """One node's cells in local-rank order."""

    host: str
    cells: tuple[_Cell, ...]

    def _alive(self) -> list[GridGpu]:
        return [c.gpu for c in self.cells if c.level != "dead"]

    def util(self) -> int:
        alive = self._alive()
        return round(statistics.fmean(g.util_pct for g in alive)) if alive else 0

    def max_temp(self) -> int:
        return max((g.temp_c for g in self._alive()), default=0)

    def power(self) -> int:
        return sum(c.gpu.power_w for c in self.cells)

    def busiest(self) -> GridGpu:
        return max((c.gpu for c in self.cells), key=lambda g: (g.mem_used_mib, -g.local_rank))


def _common_prefix(names: Sequence[str]) -> str:
    first, last = min(names), max(names)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    # Keep whole digit runs in the label: gpu-node-001..gpu-node-009 would otherwise become 1..9.
    while n > 0 and first[n - 1].isdigit():
        n -= 1
    return first[:n]


def _short_labels(hosts: Sequence[str]) -> list[str]:
    """Short node labels: host names minus their common prefix when that leaves short unique names."""
    if len(hosts) == 1:
        return [_clip(hosts[0], 12)]
    cut = len(_common_prefix(hosts))
    labels = [h[cut:] for h in hosts]
    if all(0 < len(lb) <= 6 for lb in labels) and len(set(labels)) == len(labels):
        return labels
    digits = len(str(max(len(hosts) - 1, 0)))
    return [f"n{i:0{digits}d}" for i in range(len(hosts))]


def _one_node_per_line(nodes: Sequence[_Node], width: int, color: bool) -> list[str] | None:
    """One line per node: host, cells, then util, max temp, power and busiest memory as far as they fit."""
    cells_w = max(len(n.cells) for n in nodes)
    longest = max(len(n.host) for n in nodes)
    host_w = min(longest, 24, width - 1 - cells_w)
    if host_w < min(longest, 6):
        return None
    lines = []
    for n in nodes:
        busy = n.busiest()
        fields = [
            f"{n.util():>3}%",
            f"{n.max_temp():>3}°C",
            f"{_power(n.power()):>7}",
            f"mem {_gib(busy.mem_used_mib):>5}/{_gib(busy.mem_total_mib)} GiB",
        ]
        line = f"{_clip(n.host, host_w):<{host_w}} {_cells(n.cells, color)}"
        pad = " " * (cells_w - len(n.cells))
        for f in fields:
            candidate = f"{line}{pad}{_SEP}{f}"
            if visible_len(candidate) > width:
                break
            line, pad = candidate, ""
        lines.append(line)
    return lines


def _wrapped_nodes(nodes: Sequence[_Node], labels: Sequence[str], width: int, color: bool) -> list[str]:
    """Nodes wider than a line: each node's cells over as many lines as they need, label on the first."""
    label_w = max(len(lb) for lb in labels)
    per_line = width - label_w - 1
    lines = []
    for n, label in zip(nodes, labels, strict=True):
        for i in range(0, len(n.cells), per_line):
            head = label.rjust(label_w) if i == 0 else " " * label_w
            lines.append(f"{head} {_cells(n.cells[i : i + per_line], color)}")
    return lines


def _many_per_line(nodes: Sequence[_Node], width: int, color: bool) -> list[str]:
    """Several nodes per line, each as `label cells [util%]`."""
    labels = _short_labels([n.host for n in nodes])
    label_w = max(len(lb) for lb in labels)
    cells_w = max(len(n.cells) for n in nodes)
    if label_w + 1 + cells_w > width:
        return _wrapped_nodes(nodes, labels, width, color)
    block_w = label_w + 1 + cells_w + 5
    per_line = max(1, (width + len(_SEP)) // (block_w + len(_SEP)))
    with_util = block_w <= width and -(-len(nodes) // per_line) <= _MAX_ROWS_WITH_UTIL
    if not with_util:
        block_w -= 5
        per_line = max(1, (width + len(_SEP)) // (block_w + len(_SEP)))
    lines = []
    for start in range(0, len(nodes), per_line):
        blocks = []
        for n, label in zip(nodes[start : start + per_line], labels[start : start + per_line], strict=True):
            block = f"{label:>{label_w}} {_cells(n.cells, color)}{' ' * (cells_w - len(n.cells))}"
            blocks.append(block + (f" {n.util():>3}%" if with_util else ""))
        lines.append(_SEP.join(blocks).rstrip())
    return lines


def _span(values: Sequence[float], fmt: str) -> str:
    """`lo-hi` (or one value when they agree) in `fmt`."""
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def _rest_line(cells: Sequence[_Cell], width: int) -> str:
    """`... and 48 more GPUs: util 97-99%, 61-68°C, 690-700 W, mem 61.2-63.0 GiB` (the live ones' ranges)."""
    head = f"... and {len(cells)} more GPU{'s' if len(cells) != 1 else ''}"
    alive = [c.gpu for c in cells if c.level != "dead"]
    if not alive:
        return _clip(head, width)
    fields = [
        f"{head}: util {_span([g.util_pct for g in alive], '{:.0f}')}%",
        f"{_span([g.temp_c for g in alive], '{:.0f}')}°C",
        f"{_span([g.power_w for g in alive], '{:.0f}')} W",
        f"mem {_span([g.mem_used_mib / 1024 for g in alive], '{:.1f}')} GiB",
    ]
    return _fit_fields(fields, width, ", ")


def _header(cells: Sequence[_Cell], nnodes: int, step: int, width: int) -> str:
    alive = [c.gpu for c in cells if c.level != "dead"]
    util = round(statistics.fmean(g.util_pct for g in alive)) if alive else 0
    n = len(cells)
    fields = [
        f"GPUs @ step {step}",
        f"{n} GPU{'s' if n != 1 else ''} on {nnodes} node{'s' if nnodes != 1 else ''}",
        f"util {util}%",
        f"max {max((g.temp_c for g in alive), default=0)}°C",
        f"{sum(c.gpu.power_w for c in cells) / 1000:.1f} kW",
    ]
    timed = [g for g in alive if g.step_ms > 0]
    if timed:
        slowest = max(timed, key=lambda g: (g.step_ms, -g.rank))
        fields.append(f"slowest r{slowest.rank} {slowest.step_ms:.0f} ms")
    return _fit_fields(fields, width)


def _reason(cell: _Cell, straggler: bool, temp_warn: int) -> str:
    g = cell.gpu
    if cell.level == "dead":
        return "dead"
    if g.phase == "stall":
        return "stall"
    if g.temp_c >= temp_warn:
        return f"{g.temp_c}°C"
    if straggler:
        return f"slow {g.step_ms:.0f} ms" if g.step_ms > 0 else "slow"
    return f"util {g.util_pct}%"


def _unhealthy_line(
    cells: Sequence[_Cell], stragglers: frozenset[int], temp_warn: int, width: int
) -> str | None:
    """`unhealthy: r9 stall · r3 91°C · +5 more`: worst first, as many as the width allows."""
    bad = sorted(
        (c for c in cells if severity(c.level) >= severity("warn")),
        key=lambda c: (-severity(c.level), c.gpu.rank),
    )
    if not bad:
        return None
    entries = [f"r{c.gpu.rank} {_reason(c, c.gpu.rank in stragglers, temp_warn)}" for c in bad]
    line = "unhealthy:"
    for i, entry in enumerate(entries):
        sep = " " if i == 0 else _DOT
        left = len(entries) - i - 1
        if visible_len(f"{line}{sep}{entry}{f'{_DOT}+{left} more' if left else ''}") > width:
            # The previous entry was admitted with room for exactly this count after it.
            return _clip(f"{line}{sep}+{len(entries) - i} more", width)
        line += sep + entry
    return line


def _legend(cells: Sequence[_Cell], color: bool, width: int) -> str:
    counts = dict.fromkeys(HEALTH_LEVELS, 0)
    for c in cells:
        counts[c.level] += 1
    util = f"util {UTIL_GLYPHS[0]}…{UTIL_GLYPHS[-1]}"
    if color:
        fields = [f"{_SGR[lv]}■{_RESET} {lv} {counts[lv]}" for lv in HEALTH_LEVELS]
    else:
        fields = [f"{MARKERS[lv]} {lv} {counts[lv]}" for lv in ("warn", "crit", "dead")]
        fields += [f"{lv} {counts[lv]}" for lv in ("ok", "busy")]
    return _fit_fields([util, *fields], width, _SEP)


def _judged(
    gpus: Sequence[GridGpu], stragglers: frozenset[int], temp_warn: int, temp_crit: int
) -> list[_Cell]:
    """Every GPU with its health, in node then local-rank order."""
    ordered = sorted(gpus, key=lambda g: (g.node, g.local_rank, g.rank))
    # Low utilisation is judged against the job's own training level: a small model at TP=8 runs at ~25%.
    train_utils = [g.util_pct for g in ordered if g.phase == "train"]
    util_floor = round(0.5 * statistics.median(train_utils)) if train_utils else 0
    return [
        _Cell(
            g,
            health(
                g,
                temp_warn=temp_warn,
                temp_crit=temp_crit,
                util_floor=util_floor,
                straggler=g.rank in stragglers,
            ),
        )
        for g in ordered
    ]


def _nodes(cells: Sequence[_Cell]) -> list[_Node]:
    """The cells grouped by node, in order."""
    by_node: dict[int, list[_Cell]] = {}
    for c in cells:
        by_node.setdefault(c.gpu.node, []).append(c)
    return [_Node(group[0].gpu.host, tuple(group)) for group in by_node.values()]


def grid_records(
    gpus: Sequence[GridGpu],
    *,
    step: int,
    stragglers: frozenset[int] = frozenset(),
    temp_warn: int = 83,
    temp_crit: int = 90,
) -> list[tuple[str, dict[str, object]]]:
    """The grid as events for machines (json, logfmt): `gpu grid` with the job's figures, then each node's
    `gpu node` aggregates followed by its GPUs' `gpu` figures, numbers as numbers, memory in bytes."""
    cells = _judged(gpus, stragglers, temp_warn, temp_crit)
    nodes = _nodes(cells)
    alive = [c.gpu for c in cells if c.level != "dead"]
    timed = [g for g in alive if g.step_ms > 0]
    slowest = max(timed, key=lambda g: (g.step_ms, -g.rank)) if timed else None
    counts = dict.fromkeys(HEALTH_LEVELS, 0)
    for c in cells:
        counts[c.level] += 1
    records: list[tuple[str, dict[str, object]]] = [
        (
            "gpu grid",
            {
                "step": step,
                "gpus": len(cells),
                "nodes": len(nodes),
                "util_pct": round(statistics.fmean(g.util_pct for g in alive)) if alive else 0,
                "max_temp_c": max((g.temp_c for g in alive), default=0),
                "power_w": sum(c.gpu.power_w for c in cells),
                "slowest_rank": None if slowest is None else slowest.rank,
                "slowest_step_ms": None if slowest is None else round(slowest.step_ms, 1),
                **counts,
            },
        )
    ]
    for n in nodes:
        busy = n.busiest()
        records.append(
            (
                "gpu node",
                {
                    "step": step,
                    "node": busy.node,
                    "host": n.host,
                    "gpus": len(n.cells),
                    "util_pct": n.util(),
                    "max_temp_c": n.max_temp(),
                    "power_w": n.power(),
                    "max_mem_used_bytes": busy.mem_used_mib * _MIB,
                    "mem_total_bytes": busy.mem_total_mib * _MIB,
                    "health": max((c.level for c in n.cells), key=severity),
                },
            )
        )
        records += [("gpu", _gpu_fields(c, step, stragglers)) for c in n.cells]
    return records


def _gpu_fields(cell: _Cell, step: int, stragglers: frozenset[int]) -> dict[str, object]:
    """One GPU's figures (its rank as `gpu_rank`: `rank` is the printing rank's, bound to every event)."""
    g = cell.gpu
    return {
        "step": step,
        "gpu_rank": g.rank,
        "node": g.node,
        "host": g.host,
        "local_rank": g.local_rank,
        "util_pct": g.util_pct,
        "temp_c": g.temp_c,
        "power_w": g.power_w,
        "power_cap_w": g.power_cap_w,
        "mem_used_bytes": g.mem_used_mib * _MIB,
        "mem_total_bytes": g.mem_total_mib * _MIB,
        "phase": g.phase,
        "step_ms": round(g.step_ms, 1) if g.step_ms > 0 else None,
        "straggler": g.rank in stragglers,
        "health": cell.level,
    }


def render_grid(
    gpus: Sequence[GridGpu],
    *,
    step: int,
    width: int = 100,
    color: bool = False,
    stragglers: frozenset[int] = frozenset(),
    temp_warn: int = 83,
    temp_crit: int = 90,
    detail_gpus: int | None = None,
) -> list[str]:
    """The grid's lines (no newlines), each at most `width` columns wide, for any number of GPUs; with
    `detail_gpus`, a job of more GPUs shows its first nodes up to that many and sums up the others."""
    if width < _MIN_WIDTH:
        raise ValueError(f"width must be at least {_MIN_WIDTH}, got {width}")
    cells = _judged(gpus, stragglers, temp_warn, temp_crit)
    nodes = _nodes(cells)
    lines = [_header(cells, len(nodes), step, width)]
    hidden: list[_Cell] = []
    if detail_gpus is not None and len(cells) > detail_gpus:
        shown = 1  # the first node always, whatever its size
        while shown < len(nodes) and sum(len(n.cells) for n in nodes[: shown + 1]) <= detail_gpus:
            shown += 1
        hidden = [c for n in nodes[shown:] for c in n.cells]
        nodes = nodes[:shown]
    if nodes:
        body = _one_node_per_line(nodes, width, color) if len(nodes) <= _ONE_NODE_PER_LINE_MAX else None
        lines += body if body is not None else _many_per_line(nodes, width, color)
    if hidden:
        lines.append(_rest_line(hidden, width))
    unhealthy = _unhealthy_line(cells, stragglers, temp_warn, width)
    if unhealthy:
        lines.append(unhealthy)
    lines.append(_legend(cells, color, width))
    return lines
