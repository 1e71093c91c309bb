"""fakerun's machine log formats: json and logfmt lines of typed fields, the grid and summary as events, and
--fake-log-level's filtering."""

from __future__ import annotations

import json
import math
import re
import typing

from fakerun import dialects
from fakerun.dialects import events as ev
from fakerun.dialects.base import Line
from fakerun.dialects.common import GridLines, TorchLines
from fakerun.dialects.fakerun import StructuredLog, shown
from fakerun.render.grid import GridGpu, grid_records
from tests.unit.test_dialects import AT, run_plan, sample_events, seat

# logfmt: `key=value` pairs separated by one space; a value is bare (no space, quote or `=`) or quoted with
# backslash escapes.
_PAIR = r'[A-Za-z_][A-Za-z0-9_]*=(?:"(?:[^"\\]|\\.)*"|[^\s"=]*)'
_LOGFMT = re.compile(rf"{_PAIR}(?: {_PAIR})*")
_PAIRS = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|[^\s"=]*)')


def logfmt(line: str) -> dict[str, str]:
    """A logfmt line's fields (quoted values unquoted); fails unless the whole line is key=value pairs."""
    assert _LOGFMT.fullmatch(line), line
    return {k: json.loads(v) if v.startswith('"') else v for k, v in _PAIRS.findall(line)}


def strict_json(line: str) -> dict[str, typing.Any]:
    """A JSON line as jq reads it: NaN and Infinity are not JSON."""

    def reject(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    record = json.loads(line, parse_constant=reject)
    assert isinstance(record, dict)
    return record


def lines(log_format: str, level: str = "debug") -> list[str]:
    """Every stdout line rank 0 prints for the sample events (the grid shown) in `log_format`."""
    s = seat(0, log_format=log_format, log_level=level, grid=True)
    layers = (dialects.make("fakerun", s), GridLines(s))
    out = [item for e in sample_events() for layer in layers for item in layer.render(e, AT)]
    return [item.text for item in out if isinstance(item, Line) and item.stream == "stdout"]


def grid_sample() -> list[GridGpu]:
    """Two nodes of two GPUs: one dead, one hot, one straggling."""
    return [
        GridGpu(0, 0, 0, "node-a", 90, 60, 600, 700, 40_000, 81_559, "train", 1200.0),
        GridGpu(1, 0, 1, "node-a", 0, 0, 0, 700, 0, 81_559, "dead", 0.0),
        GridGpu(2, 1, 0, "node-b", 80, 91, 650, 700, 42_000, 81_559, "train", 1500.0),
        GridGpu(3, 1, 1, "node-b", 70, 55, 500, 700, 41_000, 81_559, "train", 1400.0),
    ]


class TestJson:
    """--fake-log-format json: one JSON object per line, numbers as numbers."""

    def test_every_line_is_strict_json(self) -> None:
        """Every event's line parses, NaN included, with the rank, event, level and time."""
        out = lines("json")
        assert len(out) > len(sample_events())
        for line in out:
            record = strict_json(line)
            assert {"rank", "event", "level", "timestamp"} <= record.keys()

    def test_figures_are_typed(self) -> None:
        """mfu a ratio, lr a float, sizes in bytes, counts as integers, x/y counters split in two."""
        records = [strict_json(line) for line in lines("json")]
        by_event = {r["event"]: r for r in records}
        events = {type(e): e for e in sample_events()}
        step = typing.cast(ev.StepDone, events[ev.StepDone]).numbers
        train = by_event["train"]
        assert train["mfu"] == round(step.mfu, 4) and train["lr"] == step.lr
        straggler = typing.cast(ev.Straggler, events[ev.Straggler])
        assert by_event["straggler detected"]["mfu"] == straggler.mfu
        assert by_event["checkpoint saved"]["size_bytes"] == 10**10
        assert by_event["epoch complete"]["tokens"] == 10**8
        assert (by_event["epoch complete"]["epoch"], by_event["epoch complete"]["epochs"]) == (1, 1)
        check = typing.cast(ev.EarlyStoppingCheck, events[ev.EarlyStoppingCheck])
        patience = by_event["early stopping: no improvement"]
        assert (patience["strikes"], patience["patience"]) == (check.strikes, check.patience)
        assert isinstance(by_event["model config"]["params"], int)
        assert not any(
            isinstance(v, str) and v.endswith(("%", " GB", " B")) for r in records for v in r.values()
        )

    def test_nan_is_null(self) -> None:
        """A NaN figure is null in JSON (jq rejects NaN) and `nan` on the console."""
        event = ev.NanLoss(step=7)
        (machine,) = dialects.make("fakerun", seat(0, log_format="json")).render(event, AT)
        assert isinstance(machine, Line) and strict_json(machine.text)["grad_norm"] is None
        (console,) = dialects.make("fakerun", seat(0)).render(event, AT)
        assert isinstance(console, Line) and console.text.endswith("grad_norm=nan")

    def test_summary_is_one_event_of_numbers(self) -> None:
        """The end-of-run table becomes a `training summary` event with the run's figures."""
        summary = next(e for e in sample_events() if isinstance(e, ev.RunSummary))
        (record,) = [r for r in map(strict_json, lines("json")) if r["event"] == "training summary"]
        assert record["gpus"] == summary.world_size and record["params"] == summary.model.params
        assert record["mfu"] == round(summary.median_mfu, 4)
        assert record["tokens"] == summary.tokens and record["last_step"] == summary.last_step
        assert not any(line.startswith("+") for line in lines("json"))


class TestLogfmt:
    """--fake-log-format logfmt: key=value pairs only, the same typed fields."""

    def test_every_line_is_key_value_pairs(self) -> None:
        """Every line parses whole into pairs, starting with the time, level and event."""
        for line in lines("logfmt"):
            fields = logfmt(line)
            assert list(fields)[:4] == ["timestamp", "level", "event", "rank"]

    def test_values_parse_as_numbers(self) -> None:
        """The figures read back as numbers; booleans as true/false, not bare flags."""
        records = [logfmt(line) for line in lines("logfmt")]
        train = next(r for r in records if r["event"] == "train")
        assert 0 < float(train["mfu"]) < 1 and float(train["lr"]) > 0
        gpus = [r for r in records if r["event"] == "gpu"]
        assert gpus and all(r["straggler"] in ("true", "false") for r in gpus)
        assert int(next(r for r in records if r["event"] == "checkpoint saved")["size_bytes"]) == 10**10

    def test_grid_booleans_are_pairs(self) -> None:
        """A straggling GPU's line says `straggler=true` (structlog's default would print a bare flag)."""
        grid = ev.GpuGrid(step=5, gpus=tuple(grid_sample()), stragglers=frozenset({3}))
        out = GridLines(seat(0, log_format="logfmt", grid=True)).render(grid, AT)
        records = [logfmt(item.text) for item in out if isinstance(item, Line)]
        assert [r["straggler"] for r in records if r["event"] == "gpu"] == ["false", "false", "false", "true"]

    def test_nccl_lines_ride_in_events(self) -> None:
        """Under NCCL_DEBUG=INFO, NCCL's own lines are `nccl` events (text intact) in both machine formats."""
        event = ev.NcclInitialized(job=run_plan().job, pid=4242, tid=4242)
        plain = [
            i.text for i in TorchLines(seat(0, nccl_debug=True)).render(event, AT) if isinstance(i, Line)
        ]
        assert plain
        for log_format, parse in (("json", strict_json), ("logfmt", logfmt)):
            out = TorchLines(seat(0, nccl_debug=True, log_format=log_format)).render(event, AT)
            records = [parse(item.text) for item in out if isinstance(item, Line)]
            assert [r["line"] for r in records] == plain
            assert {r["event"] for r in records} == {"nccl"}


class TestConsole:
    """The console format keeps the human forms and the boxed grid and summary."""

    def test_human_text(self) -> None:
        """A shown field prints its text; the grid and the summary stay text."""
        log = StructuredLog("console", 0, color=False)
        line = log.line("info", "train", AT, mfu=shown("42.29%", mfu=0.4229))
        assert line is not None and line.text.endswith("rank=0 mfu=42.29%")
        out = lines("console")
        assert any(line.startswith("GPUs @ step 1") for line in out)
        assert any(line.startswith("| Training summary") for line in out)


class TestLevels:
    """--fake-log-level: debug events only when asked, warnings always."""

    def test_debug_off_by_default(self) -> None:
        """The gradient sync (debug) is neither built nor printed at info, printed at debug."""
        assert not dialects.make("fakerun", seat(0)).wants(ev.GradientSync)
        assert not any("gradient sync" in line for line in lines("console", "info"))
        assert any("gradient sync" in line for line in lines("console", "debug"))

    def test_warning_keeps_warnings_only(self) -> None:
        """At warning, only warning events remain among the structured lines (the grid's are info)."""
        levels = {strict_json(line)["level"] for line in lines("json", "warning")}
        assert levels == {"warning"}

    def test_filtering_is_structlogs(self) -> None:
        """Below the level, a line is None; at it, text."""
        log = StructuredLog("json", 3, color=False, level="warning")
        assert log.line("info", "x", AT) is None
        line = log.line("warning", "x", AT, n=1)
        assert line is not None and strict_json(line.text)["n"] == 1


class TestGridRecords:
    """The grid as events: the job, each node and each GPU, figures that add up."""

    def test_structure_and_aggregates(self) -> None:
        """`gpu grid`, then per node its aggregates and its GPUs; dead GPUs out of util and temperature."""
        gpus = grid_sample()
        records = grid_records(gpus, step=5, stragglers=frozenset({3}))
        assert [name for name, _ in records] == [
            "gpu grid",
            "gpu node",
            "gpu",
            "gpu",
            "gpu node",
            "gpu",
            "gpu",
        ]
        job = records[0][1]
        assert job["gpus"] == 4 and job["nodes"] == 2
        assert job["power_w"] == 600 + 0 + 650 + 500
        assert job["util_pct"] == round((90 + 80 + 70) / 3)
        assert job["max_temp_c"] == 91
        assert (job["slowest_rank"], job["slowest_step_ms"]) == (2, 1500.0)
        assert (job["dead"], job["crit"], job["warn"], job["ok"]) == (1, 1, 1, 1)
        node_a, node_b = records[1][1], records[4][1]
        assert node_a["util_pct"] == 90 and node_a["power_w"] == 600 and node_a["health"] == "dead"
        assert node_b["max_mem_used_bytes"] == 42_000 * 2**20 and node_b["max_temp_c"] == 91
        gpu3 = records[6][1]
        assert gpu3["gpu_rank"] == 3 and gpu3["straggler"] is True and gpu3["health"] == "warn"
        assert gpu3["mem_total_bytes"] == 81_559 * 2**20
        assert records[3][1]["step_ms"] is None  # the dead GPU timed no step

    def test_no_rank_clash(self) -> None:
        """A GPU's rank is `gpu_rank`: `rank` stays the printing rank's."""
        s = seat(0, log_format="json", grid=True)
        grid = ev.GpuGrid(step=5, gpus=tuple(grid_sample()), stragglers=frozenset())
        out = [strict_json(item.text) for item in GridLines(s).render(grid, AT) if isinstance(item, Line)]
        assert {r["rank"] for r in out} == {0}
        assert [r["gpu_rank"] for r in out if r["event"] == "gpu"] == [0, 1, 2, 3]
        assert all(math.isfinite(v) for r in out for v in r.values() if isinstance(v, float))
