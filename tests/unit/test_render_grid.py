"""The GPU status grid: every GPU once in node order, width limits at any scale, health and colours."""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakerun.render.grid import (
    DEAD_GLYPH,
    HEALTH_LEVELS,
    MARKERS,
    UTIL_GLYPHS,
    GridGpu,
    health,
    render_grid,
    severity,
    visible_len,
)

CELL_CHARS = set(UTIL_GLYPHS) | set(MARKERS.values()) | {DEAD_GLYPH}
SGR = re.compile(r"\x1b\[([0-9;]*)m")
ANY_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def gpu(rank: int = 0, node: int = 0, local: int = 0, **kw: Any) -> GridGpu:
    """A healthy training GPU; keyword arguments override fields."""
    base = GridGpu(
        rank=rank,
        node=node,
        local_rank=local,
        host=f"gpu-node-{node + 1:03d}",
        util_pct=97,
        temp_c=65,
        power_w=640,
        power_cap_w=700,
        mem_used_mib=70_000,
        mem_total_mib=81_559,
        phase="train",
        step_ms=1200.0,
    )
    return dataclasses.replace(base, **kw)


def job(nnodes: int, nproc: int, *, host: str = "gpu-node-", seed: int = 0) -> list[GridGpu]:
    """Every GPU of an nnodes x nproc job with varied but healthy training telemetry."""
    rng = random.Random(seed)
    return [
        gpu(
            n * nproc + lr,
            n,
            lr,
            host=f"{host}{n + 1:03d}",
            util_pct=rng.randint(85, 100),
            temp_c=rng.randint(55, 80),
            power_w=rng.randint(500, 700),
            mem_used_mib=rng.randint(60_000, 80_000),
            step_ms=rng.uniform(900, 1100),
        )
        for n in range(nnodes)
        for lr in range(nproc)
    ]


def plain(line: str) -> str:
    """A rendered line without its escape sequences."""
    return ANY_ESCAPE.sub("", line)


def body(lines: list[str]) -> list[str]:
    """The node lines: everything between the header and the legend except the `unhealthy:` line."""
    return [ln for ln in lines[1:-1] if not plain(ln).startswith("unhealthy:")]


def cells_in_order(lines: list[str]) -> str:
    """The cell characters of the body in reading order."""
    return "".join(ch for ln in body(lines) for ch in plain(ln) if ch in CELL_CHARS)


class TestHealth:
    @pytest.mark.parametrize(
        ("changes", "expected"),
        [
            ({}, "ok"),
            ({"phase": "idle", "util_pct": 0}, "ok"),
            ({"phase": "eval", "util_pct": 80}, "busy"),
            ({"phase": "checkpoint", "util_pct": 4}, "busy"),
            ({"phase": "init", "util_pct": 0}, "busy"),
            ({"temp_c": 85}, "warn"),
            ({"phase": "eval", "temp_c": 86}, "warn"),
            ({"util_pct": 10}, "warn"),
            ({"temp_c": 92}, "crit"),
            ({"phase": "stall", "util_pct": 2}, "crit"),
            ({"phase": "dead", "util_pct": 0, "temp_c": 95}, "dead"),
        ],
    )
    def test_levels(self, changes: dict[str, Any], expected: str) -> None:
        """Each phase and temperature maps to the level the grid's legend promises."""
        assert health(gpu(**changes), temp_warn=83, temp_crit=90, util_floor=30) == expected

    def test_straggler_is_warn(self) -> None:
        """A straggler flagged by the caller is at least warn even when its telemetry looks fine."""
        assert health(gpu(), straggler=True) == "warn"
        assert health(gpu(phase="stall"), straggler=True) == "crit"

    def test_level_order(self) -> None:
        """Levels are ordered ok < busy < warn < crit < dead."""
        assert [severity(lv) for lv in ("ok", "busy", "warn", "crit", "dead")] == [0, 1, 2, 3, 4]
        assert set(HEALTH_LEVELS) == {"ok", "busy", "warn", "crit", "dead"}

    @settings(max_examples=300, deadline=None)
    @given(
        st.sampled_from(["train", "eval", "checkpoint", "stall", "init", "idle", "dead"]),
        st.integers(0, 100),
        st.integers(20, 100),
        st.integers(0, 30),
        st.booleans(),
    )
    def test_hotter_is_never_healthier(self, phase: str, util: int, temp: int, rise: int, slow: bool) -> None:
        """Raising the temperature never lowers the severity; being flagged slow never lowers it either."""
        cool = gpu(phase=phase, util_pct=util, temp_c=temp)
        hot = dataclasses.replace(cool, temp_c=temp + rise)
        assert severity(health(hot, straggler=slow)) >= severity(health(cool, straggler=slow))
        assert severity(health(cool, straggler=True)) >= severity(health(cool))
        if phase == "dead":
            assert health(hot, straggler=slow) == "dead"


class TestEveryGpuOnce:
    @pytest.mark.parametrize("width", [80, 100, 200])
    @pytest.mark.parametrize(
        ("nnodes", "nproc"), [(1, 1), (1, 8), (2, 8), (16, 8), (17, 8), (128, 8), (3, 5)]
    )
    def test_cell_count_and_order(self, nnodes: int, nproc: int, width: int) -> None:
        """Each GPU is one cell, in node order then local-rank order, whatever order the input came in."""
        gpus = job(nnodes, nproc)
        # One marked GPU per node at a node-dependent position, so the order is visible in the cells.
        marked = {n * nproc + (n % nproc) for n in range(nnodes)}
        gpus = [dataclasses.replace(g, phase="dead", util_pct=0) if g.rank in marked else g for g in gpus]
        gpus = [dataclasses.replace(g, util_pct=100) if g.rank not in marked else g for g in gpus]
        shuffled = gpus[:]
        random.Random(nnodes * 1000 + width).shuffle(shuffled)
        lines = render_grid(shuffled, step=10, width=width)
        expected = "".join(DEAD_GLYPH if g.rank in marked else UTIL_GLYPHS[-1] for g in gpus)
        assert cells_in_order(lines) == expected

    @pytest.mark.parametrize("color", [False, True])
    def test_1024_gpus(self, color: bool) -> None:
        """128 nodes x 8 GPUs: 1024 cells, and few enough lines to read at a glance."""
        lines = render_grid(job(128, 8), step=5, width=100, color=color)
        assert len(cells_in_order(lines)) == 1024
        assert len(lines) <= 40

    @pytest.mark.parametrize("nnodes", [1, 2, 9, 16])
    def test_one_node_per_line_when_few(self, nnodes: int) -> None:
        """Up to 16 nodes: one body line per node, starting with its host name, with its summary."""
        gpus = job(nnodes, 8)
        lines = body(render_grid(gpus, step=1, width=100))
        assert len(lines) == nnodes
        for n, line in enumerate(lines):
            assert line.startswith(f"gpu-node-{n + 1:03d} ")
            assert "%" in line and "°C" in line and "GiB" in line

    def test_gpus_wider_than_a_line_wrap(self) -> None:
        """A node with more GPUs than a line has columns wraps its cells instead of dropping any."""
        lines = render_grid(job(1, 300), step=1, width=80)
        assert len(cells_in_order(lines)) == 300
        assert all(visible_len(ln) <= 80 for ln in lines)


class TestWidth:
    @settings(max_examples=150, deadline=None)
    @given(
        st.integers(1, 128),
        st.sampled_from([1, 2, 4, 8, 16]),
        st.integers(80, 200),
        st.booleans(),
        st.integers(1, 40),
        st.integers(0, 2**32),
    )
    def test_lines_fit(
        self, nnodes: int, nproc: int, width: int, color: bool, host_len: int, seed: int
    ) -> None:
        """No line is wider than `width` visible columns, for 1..2048 GPUs and long host names."""
        rng = random.Random(seed)
        gpus = job(nnodes, nproc, host="h" * host_len, seed=seed)
        gpus = [
            dataclasses.replace(g, phase=rng.choice(["train", "train", "eval", "stall", "dead"]))
            if rng.random() < 0.1
            else g
            for g in gpus
        ]
        lines = render_grid(gpus, step=rng.randint(0, 10**7), width=width, color=color)
        assert all(visible_len(ln) <= width for ln in lines), max(lines, key=visible_len)
        assert all("\n" not in ln for ln in lines)

    @pytest.mark.parametrize("width", [80, 100, 200])
    def test_many_unhealthy_fit(self, width: int) -> None:
        """A thousand unhealthy GPUs still leave the footer within the width, with a `+N more` count."""
        gpus = [dataclasses.replace(g, phase="stall") for g in job(128, 8)]
        lines = render_grid(gpus, step=1, width=width)
        unhealthy = [ln for ln in lines if ln.startswith("unhealthy:")]
        assert len(unhealthy) == 1 and "more" in unhealthy[0]
        assert all(visible_len(ln) <= width for ln in lines)

    def test_too_narrow_is_refused(self) -> None:
        """A width no grid can use is an error rather than overlong lines."""
        with pytest.raises(ValueError):
            render_grid(job(1, 8), step=1, width=10)


class TestVisibleLen:
    @pytest.mark.parametrize(
        ("text", "columns"),
        [
            ("", 0),
            ("abc", 3),
            ("\x1b[1;31mX\x1b[0m", 1),
            ("\x1b[32m▇▇\x1b[0m 97%", 6),
            ("78°C", 4),
            ("日本", 4),
        ],
    )
    def test_columns(self, text: str, columns: int) -> None:
        """Escapes take no columns, block glyphs and ° one, East Asian wide characters two."""
        assert visible_len(text) == columns


class TestColour:
    def test_no_escape_without_colour(self) -> None:
        """color=False never emits an escape byte, whatever the health of the GPUs."""
        gpus = job(20, 8)
        gpus[3] = dataclasses.replace(gpus[3], phase="dead")
        gpus[9] = dataclasses.replace(gpus[9], temp_c=95)
        for g in (gpus, gpus[:8]):
            assert not any("\x1b" in ln for ln in render_grid(g, step=1, width=100, color=False))

    @pytest.mark.parametrize("nnodes", [2, 40])
    def test_health_colours(self, nnodes: int) -> None:
        """Cells are painted green ok, cyan or blue busy, yellow warn, red crit and dim or grey dead."""
        gpus = job(nnodes, 8)
        changes: dict[int, dict[str, Any]] = {
            1: {"phase": "eval"},
            2: {"temp_c": 86},
            3: {"phase": "stall"},
            4: {"phase": "dead"},
        }
        gpus = [dataclasses.replace(g, **changes.get(g.rank, {})) for g in gpus]
        lines = render_grid(gpus, step=1, width=120, color=True)
        first_line = body(lines)[0]
        # The SGR parameters in force at each cell of the first node, in order.
        params: list[set[str]] = []
        current: set[str] = set()
        for token in re.split(r"(\x1b\[[0-9;]*m)", first_line):
            m = SGR.fullmatch(token)
            if m:
                current = set(m.group(1).split(";")) - {"0", ""}
                continue
            params += [current] * sum(ch in CELL_CHARS for ch in token)
        wanted = {0: {"32"}, 1: {"36", "34"}, 2: {"33"}, 3: {"31"}, 4: {"2", "90"}}
        for local, codes in wanted.items():
            assert params[local] & codes, (local, params[local])

    def test_colour_changes_only_escapes(self) -> None:
        """With escapes removed, the coloured grid has the same cells and widths as the plain one."""
        gpus = job(3, 8)
        coloured = render_grid(gpus, step=1, width=100, color=True)
        assert len(cells_in_order(coloured)) == 24
        assert all(visible_len(ln) == len(plain(ln)) for ln in coloured)


class TestReadableWithoutColour:
    def test_markers_and_footer(self) -> None:
        """Warn, crit and dead GPUs get their own cell markers and are named in the `unhealthy:` line."""
        gpus = job(2, 8)
        gpus[2] = dataclasses.replace(gpus[2], temp_c=86)
        gpus[11] = dataclasses.replace(gpus[11], phase="stall", util_pct=1)
        gpus[14] = dataclasses.replace(gpus[14], phase="dead", util_pct=0)
        lines = render_grid(gpus, step=1, width=100, stragglers=frozenset({5}))
        cells = cells_in_order(lines)
        assert cells[2] == cells[5] == MARKERS["warn"]
        assert cells[11] == MARKERS["crit"] and cells[14] == MARKERS["dead"]
        assert len({MARKERS["warn"], MARKERS["crit"], MARKERS["dead"]}) == 3
        assert not set(cells[:2] + cells[3:5]) & set(MARKERS.values())
        unhealthy = next(ln for ln in lines if ln.startswith("unhealthy:"))
        for rank in (2, 5, 11, 14):
            assert re.search(rf"\br{rank}\b", unhealthy)
        # Worst first: the dead GPU is named before the stalled one, which comes before the warnings.
        assert unhealthy.index("r14") < unhealthy.index("r11") < unhealthy.index("r2 ")

    def test_healthy_job_has_no_unhealthy_line(self) -> None:
        """A healthy job prints no `unhealthy:` line."""
        assert not any(ln.startswith("unhealthy:") for ln in render_grid(job(4, 8), step=1))

    def test_low_util_is_relative_to_the_job(self) -> None:
        """A small model's uniform 25% utilisation is normal; one GPU far below its peers is flagged."""
        gpus = [dataclasses.replace(g, util_pct=25) for g in job(1, 8)]
        assert not any(ln.startswith("unhealthy:") for ln in render_grid(gpus, step=1))
        gpus[6] = dataclasses.replace(gpus[6], util_pct=3)
        assert cells_in_order(render_grid(gpus, step=1))[6] == MARKERS["warn"]


class TestHeaderAndDeterminism:
    def test_header_figures(self) -> None:
        """The header names the step, the GPU count and the job's total power in kW."""
        gpus = job(2, 8)
        header = render_grid(gpus, step=4321, width=200)[0]
        assert "4321" in header and "16 GPUs" in header
        assert f"{sum(g.power_w for g in gpus) / 1000:.1f} kW" in header

    @settings(max_examples=30, deadline=None)
    @given(st.integers(1, 64), st.sampled_from([80, 100, 200]), st.booleans(), st.integers(0, 2**32))
    def test_same_input_same_output(self, nnodes: int, width: int, color: bool, seed: int) -> None:
        """Rendering is a pure function of its input, independent of the input order."""
        gpus = job(nnodes, 8, seed=seed)
        shuffled = gpus[:]
        random.Random(seed).shuffle(shuffled)
        first = render_grid(gpus, step=7, width=width, color=color)
        assert first == render_grid(gpus, step=7, width=width, color=color)
        assert first == render_grid(shuffled, step=7, width=width, color=color)


REST = re.compile(
    r"^\.\.\. and (\d+) more GPUs: util (\d+)(?:-(\d+))?%, (\d+)(?:-(\d+))?°C, (\d+)(?:-(\d+))? W, "
    r"mem ([\d.]+)(?:-([\d.]+))? GiB$"
)


class TestSummarisedRest:
    """With detail_gpus, a large job shows its first nodes and one line of ranges for the other GPUs."""

    @pytest.mark.parametrize(
        ("nnodes", "nproc", "shown_nodes"), [(8, 8, 2), (4, 8, 2), (3, 6, 2), (2, 16, 1)]
    )
    def test_first_nodes_then_ranges(self, nnodes: int, nproc: int, shown_nodes: int) -> None:
        """Whole nodes up to 16 GPUs (at least one), then `... and N more GPUs` with the rest's ranges."""
        gpus = job(nnodes, nproc, seed=nnodes)
        lines = render_grid(gpus, step=3, width=120, detail_gpus=16)
        hosts = [ln.split()[0] for ln in lines[1:] if ln.startswith("gpu-node-")]
        assert hosts == [f"gpu-node-{n + 1:03d}" for n in range(shown_nodes)]
        rest = [m for ln in lines if (m := REST.match(ln))]
        assert len(rest) == 1
        hidden = [g for g in gpus if g.node >= shown_nodes]
        count, *spans = rest[0].groups()
        assert int(count) == len(hidden)

        def span(lo: str | None, hi: str | None) -> tuple[float, float]:
            assert lo is not None
            return float(lo), float(hi if hi is not None else lo)

        assert span(spans[0], spans[1]) == (min(g.util_pct for g in hidden), max(g.util_pct for g in hidden))
        assert span(spans[2], spans[3]) == (min(g.temp_c for g in hidden), max(g.temp_c for g in hidden))
        assert span(spans[4], spans[5]) == (min(g.power_w for g in hidden), max(g.power_w for g in hidden))
        lo, hi = span(spans[6], spans[7])
        assert lo == pytest.approx(min(g.mem_used_mib for g in hidden) / 1024, abs=0.05)
        assert hi == pytest.approx(max(g.mem_used_mib for g in hidden) / 1024, abs=0.05)
        # The header still counts every GPU, and the grid stays a few lines long.
        assert f"{len(gpus)} GPUs" in lines[0]
        assert len(lines) <= shown_nodes + 3

    def test_small_jobs_and_default_unchanged(self) -> None:
        """16 GPUs or fewer are drawn in full; without detail_gpus nothing is summarised."""
        assert render_grid(job(2, 8), step=1, detail_gpus=16) == render_grid(job(2, 8), step=1)
        assert not any(REST.match(ln) for ln in render_grid(job(8, 8), step=1))

    def test_trouble_in_the_rest_is_still_named(self) -> None:
        """A GPU among the summarised ones that needs attention is still on the unhealthy line."""
        gpus = job(8, 8)
        gpus[60] = dataclasses.replace(gpus[60], temp_c=91)
        lines = render_grid(gpus, step=1, width=120, detail_gpus=16)
        unhealthy = [ln for ln in lines if ln.startswith("unhealthy:")]
        assert unhealthy and "r60 91°C" in unhealthy[0]

    @pytest.mark.parametrize("width", [40, 80, 200])
    def test_rest_line_fits(self, width: int) -> None:
        """The summary line keeps to the width, dropping ranges from the end."""
        lines = render_grid(job(8, 8), step=1, width=width, detail_gpus=16)
        assert all(visible_len(ln) <= width for ln in lines)
        assert any(ln.startswith("... and 48 more GPUs") for ln in lines)
