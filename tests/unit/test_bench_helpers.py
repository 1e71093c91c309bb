"""The benchmark's pure helpers (scripts/bench.py): reading a preflight refusal, exit statuses, verdicts."""

from __future__ import annotations

import importlib.util
import signal
import sys
from types import ModuleType

import pytest

from fakerun.launcher import preflight
from tests.conftest import REPO


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fakerun_bench", REPO / "scripts" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def test_refusal_line_finds_the_preflight_memory_refusal_among_other_stderr(bench: ModuleType) -> None:
    line = preflight.memory_error(4096, 2**30, "fakerun")
    assert line is not None
    stderr = f"W1205 a warning first\n{line}\n".encode()
    assert bench.refusal_line(stderr) == line


def test_refusal_line_finds_the_open_files_refusal(bench: ModuleType) -> None:
    limit = preflight.FdLimit(original=100, soft=100, hard=100)
    line = preflight.FdBudget(ranks=4096, need=12000, limit=limit, fit=20, spare=0).error("fakerun")
    assert bench.refusal_line(f"{line}\n".encode()) == line


def test_refusal_line_ignores_a_crash(bench: ModuleType) -> None:
    stderr = b'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: cannot start\n'
    assert bench.refusal_line(stderr) is None


def test_exit_status_reads_a_signal_as_a_shell_does(bench: ModuleType) -> None:
    assert bench.exit_status(0) == 0
    assert bench.exit_status(1) == 1
    # Popen reports death by signal N as -N; a shell as 128 + N, which never passes an `exits 0` target.
    assert bench.exit_status(-signal.SIGKILL) == 128 + signal.SIGKILL


def test_row_verdicts_compare_the_median_with_the_target_in_its_direction(bench: ModuleType) -> None:
    at_most = bench.Row("f", [1.0, 3.0, 2.5], "s", 2.0, "≤ 2 s")
    at_least = bench.Row("f", [0.4, 0.6, 0.7], "ratio", 0.5, "≥ 0.5×", at_least=True)
    assert at_most.cells()[-1] == "**not met**"  # median 2.5 > 2
    assert at_least.cells()[-1] == "met"  # median 0.6 >= 0.5
    assert bench.Row("f", [], "", 1.0, "≤ 1 s", note="n/a").cells()[-1] == ""
