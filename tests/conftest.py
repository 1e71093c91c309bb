"""Shared fixtures: the installed `fakerun` command, the torchrun reference, and the no-orphan check."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "integration" / "scripts"


# The simulation: packages and modules a --fake-exec launcher never loads ("x." covers x's modules only)...
_SIMULATION = (
    "structlog",
    "tqdm",
    "fakerun.dialects",
    "fakerun.worker",
    "fakerun.frameworks",
    "fakerun.hints",
    "fakerun.jobconfig",
    "fakerun.coordinator",
    "fakerun.dsconfig",
    "fakerun.launcher.control",
    "fakerun.launcher.cluster",
    "fakerun.sim.",
    "fakerun.render.",
)
# ... but for these pure modules of its packages: the job clock, the simulated hosts' names and pids, the
# software stack --fake-version names, and the progress-bar geometry of the launcher's console.
_LAUNCHER_SIDE = frozenset(
    {
        "fakerun.sim.clock",
        "fakerun.sim.identity",
        "fakerun.sim.rand",
        "fakerun.sim.stack",
        "fakerun.render.bar",
    }
)


def _within(name: str, entry: str) -> bool:
    """Whether module `name` is the _SIMULATION entry `entry` or one of its modules."""
    return name.startswith(entry) if entry.endswith(".") else name == entry or name.startswith(entry + ".")


def simulation_modules(modules: Iterable[str]) -> list[str]:
    """The modules among `modules` that belong to the simulation, which a --fake-exec launcher never loads."""
    return sorted(
        name
        for name in modules
        if name not in _LAUNCHER_SIDE and any(_within(name, entry) for entry in _SIMULATION)
    )


def reference_dir() -> Path:
    """Where the recorded torchrun behaviour lives (FAKERUN_REFERENCE_DIR overrides)."""
    return Path(os.environ.get("FAKERUN_REFERENCE_DIR", REPO.parent / "shared" / "reference" / "torchrun"))


@pytest.fixture
def reference() -> Path:
    """The torchrun reference recordings; the test is skipped when they are not on this machine."""
    ref = reference_dir()
    if not ref.is_dir():
        pytest.skip(f"torchrun reference recordings not found at {ref} (set FAKERUN_REFERENCE_DIR)")
    return ref


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time = UTC, the recording machine's zone."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def fakerun_exe() -> str:
    """The `fakerun` console script installed next to the interpreter running the tests."""
    exe = Path(sys.executable).parent / "fakerun"
    if not exe.exists():
        pytest.fail(f"fakerun is not installed next to {sys.executable}; run pip install -e '.[test]'")
    return str(exe)


@dataclass
class Result:
    """A finished fakerun run."""

    code: int
    stdout: str
    stderr: str
    elapsed: float


@dataclass
class Runner:
    """Runs fakerun with a clean, marked environment so that leftover processes can be found."""

    mark: str
    tmp: Path

    def env(self, **extra: str) -> dict[str, str]:
        """A minimal environment like the reference harness's `env -i`, plus the test's marker."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "FAKERUN_TEST_MARK": self.mark,
            "DUMP_DIR": str(self.tmp),
            # Job state and rank copies inside the test's directory: a SIGKILLed launcher leaves them behind.
            "FAKERUN_STATE_DIR": str(self.tmp / "state"),
        }
        # A worktree's code over the installed package's (the console script imports whichever comes first).
        if "PYTHONPATH" in os.environ:
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        env.update(extra)
        return env

    def run(self, args: list[str], timeout: float = 60, **extra: str) -> Result:
        """Runs `fakerun args...` to completion in the test's temporary directory."""
        t0 = time.monotonic()
        proc = subprocess.run(
            [fakerun_exe(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(**extra),
            cwd=self.tmp,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)

    def start(self, args: list[str], **extra: str) -> subprocess.Popen[str]:
        """Starts fakerun in the background."""
        return subprocess.Popen(
            [fakerun_exe(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(**extra),
            cwd=self.tmp,
        )


# Test directory of each marker: workers run there, and their environment is hidden from /proc once
# setproctitle has rewritten it (the title takes the environ block), so their cwd identifies them too.
_DIRS: dict[str, str] = {}


def marked_processes(mark: str) -> list[psutil.Process]:
    """Live processes whose environment carries the marker, or that run in the marker's test directory."""
    found = []
    where = _DIRS.get(mark)
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid():
                continue
            mine = proc.environ().get("FAKERUN_TEST_MARK") == mark
            if not mine and where is not None:
                cwd = proc.cwd()
                mine = cwd == where or cwd.startswith(where + os.sep)
            if mine and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    """A runner whose processes must all be gone when the test ends."""
    r = Runner(uuid.uuid4().hex, tmp_path)
    _DIRS[r.mark] = str(tmp_path)
    yield r
    deadline = time.monotonic() + 2.0
    left = marked_processes(r.mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = marked_processes(r.mark)
    for p in left:
        p.kill()
    assert not left, f"processes left behind: {[(p.pid, p.cmdline()) for p in left]}"
