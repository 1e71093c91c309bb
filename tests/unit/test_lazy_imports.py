"""Regression guard for the --fake-exec launcher's start: `import fakerun.main` loads no simulation module.

A --fake-exec job runs real scripts, so its launcher needs only the launcher; the simulation (dialects,
structlog, hints, the coordinator, the worker's trainer) once made up most of its start-up. No timing is
asserted here: the bench measures speed (scripts/bench.py --only first-line).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fakerun import dialects, names
from fakerun.dialects import fakerun as fakerun_dialect
from tests.conftest import REPO, simulation_modules

# Prints the modules loaded by importing the launcher, then by its preload of a simulated job.
PROBE = """
import json, sys
import fakerun.main
before = sorted(sys.modules)
fakerun.main.preload_simulation()
print(json.dumps({"before": before, "after": sorted(sys.modules)}))
"""


@pytest.fixture(scope="module")
def loaded() -> dict[str, list[str]]:
    """The modules a fresh interpreter has after `import fakerun.main`, and after preload_simulation()."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, env=env, check=True
    )
    got: dict[str, list[str]] = json.loads(proc.stdout)
    return got


def test_launcher_import_loads_no_simulation_module(loaded: dict[str, list[str]]) -> None:
    """The launcher module alone (all that --fake-exec, --help and usage errors need) leaves it out."""
    assert simulation_modules(loaded["before"]) == []


# What only some jobs need, which a single-node --fake-exec launcher leaves out too (each was 2-13 ms of the
# first line): the presets (simulated node names), the multi-node rendezvous and its protocol, --fake-config's
# TOML, and the uuid module (platform's import).
ONLY_SOME_JOBS = (
    "fakerun.presets",
    "fakerun.launcher.meet",
    "fakerun.launcher.rendezvous",
    "fakerun.launcher.wire",
    "tomllib",
    "uuid",
    "hashlib",
)


def test_launcher_import_leaves_out_what_only_some_jobs_need(loaded: dict[str, list[str]]) -> None:
    """None of ONLY_SOME_JOBS is loaded by the launcher's import; the simulated job's preload brings the
    presets (so the guard is not vacuous)."""
    assert [name for name in ONLY_SOME_JOBS if name in loaded["before"]] == []
    assert "fakerun.presets" in loaded["after"]


def test_preload_loads_the_simulation(loaded: dict[str, list[str]]) -> None:
    """A simulated job's preload brings what its workers run (so the guard above is not vacuous)."""
    after = set(simulation_modules(loaded["after"]))
    for module in (
        "structlog",
        "fakerun.dialects.events",
        "fakerun.hints",
        "fakerun.jobconfig",
        "fakerun.coordinator",
        "fakerun.worker.main",
        "fakerun.worker.trainer",
        "fakerun.sim.job",
    ):
        assert module in after


def test_command_line_names_are_the_simulations() -> None:
    """The light names the command line checks equal what the dialects and fakerun's logger implement."""
    assert dialects.names() == names.TRAINERS
    assert tuple(fakerun_dialect.LEVELS) == names.LOG_LEVELS
    assert list(fakerun_dialect.LEVELS.values()) == [10, 20, 30]  # logging's DEBUG, INFO, WARNING
