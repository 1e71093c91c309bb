"""Same-page merging: which mappings the launcher marks mergeable, and that simulated workers inherit it."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakerun.launcher import pagemerge, procs
from fakerun.launcher.pagemerge import MADV_MERGEABLE, ksm_running, mark_mergeable, mergeable_regions
from fakerun.launcher.procs import ForkProcessTable, ForkRequest

# A /proc/PID/maps excerpt in the kernel's format: a binary's text and data, the heap, an anonymous
# arena, a shared mapping, a read-only file, and the kernel's own.
MAPS = """\
55d0c0a00000-55d0c0a2a000 r-xp 00000000 fd:01 1234                       /usr/bin/python3.11
55d0c0c29000-55d0c0c2b000 rw-p 00029000 fd:01 1234                       /usr/bin/python3.11
55d0c1e00000-55d0c2300000 rw-p 00000000 00:00 0                          [heap]
7f3a10000000-7f3a10100000 rw-p 00000000 00:00 0
7f3a20000000-7f3a20001000 rw-s 00000000 00:05 99                         /dev/shm/x
7f3a30000000-7f3a30010000 r--p 00000000 fd:01 55                         /usr/lib/locale/C.utf8/LC_CTYPE
7ffd5a000000-7ffd5a021000 rw-p 00000000 00:00 0                          [stack]
7ffd5a1fe000-7ffd5a202000 r--p 00000000 00:00 0                          [vvar]
"""


@pytest.fixture
def ksm_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """KSM_RUN pointed at a file that says the kernel merges pages."""
    run = tmp_path / "run"
    run.write_text("1\n")
    monkeypatch.setattr(pagemerge, "KSM_RUN", str(run))
    yield run


def vm_flags(maps_name: str, smaps: str) -> set[str]:
    """The VmFlags of the mapping named `maps_name` in a /proc/PID/smaps text."""
    blocks = re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", smaps)
    for block in blocks:
        if block.splitlines()[0].rstrip().endswith(maps_name):
            m = re.search(r"^VmFlags:(.*)$", block, re.M)
            assert m is not None
            return set(m.group(1).split())
    raise AssertionError(f"no {maps_name} mapping")


def test_private_writable_mappings_only() -> None:
    """The data, heap and anonymous regions; never shared, read-only, executable, stack or kernel pages."""
    assert mergeable_regions(MAPS) == [
        (0x55D0C0C29000, 0x55D0C0C2B000),
        (0x55D0C1E00000, 0x55D0C2300000),
        (0x7F3A10000000, 0x7F3A10100000),
    ]


def test_ksm_running_reads_the_kernel_switch(tmp_path: Path) -> None:
    """1 runs; 0 (stopped) and 2 (unmerging) do not, nor a kernel without KSM."""
    switch = tmp_path / "run"
    for text, running in (("1\n", True), ("0\n", False), ("2\n", False)):
        switch.write_text(text)
        assert ksm_running(str(switch)) is running
    assert ksm_running(str(tmp_path / "missing")) is False


def test_nothing_marked_where_ksm_does_not_run(tmp_path: Path) -> None:
    """A stopped KSM: madvise is never called, and nothing is reported marked."""
    switch = tmp_path / "run"
    switch.write_text("0\n")
    calls: list[tuple[int, int, int]] = []

    def madvise(start: int, length: int, advice: int) -> int:
        calls.append((start, length, advice))
        return 0

    assert mark_mergeable(madvise, run_path=str(switch)) == 0
    assert calls == []


def test_every_region_advised_and_refusals_left_out(tmp_path: Path, ksm_on: Path) -> None:
    """Each private writable region is advised MADV_MERGEABLE; the bytes of those the kernel refused do not
    count as marked."""
    maps = tmp_path / "maps"
    maps.write_text(MAPS)
    calls: list[tuple[int, int, int]] = []
    refused = 0x7F3A10000000

    def madvise(start: int, length: int, advice: int) -> int:
        calls.append((start, length, advice))
        return -1 if start == refused else 0

    marked = mark_mergeable(madvise, maps_path=str(maps))
    regions = mergeable_regions(MAPS)
    assert calls == [(start, end - start, MADV_MERGEABLE) for start, end in regions]
    assert marked == sum(end - start for start, end in regions if start != refused)


MADV_UNMERGEABLE = 13  # <asm-generic/mman-common.h>


def heap_flags() -> set[str]:
    with open("/proc/self/smaps") as f:
        return vm_flags("[heap]", f.read())


def fork_and_wait(table: ForkProcessTable, request: ForkRequest) -> int:
    """Forks one worker for `request` and returns its exit code."""
    [(pid, pipes)] = table.spawn_all([request], new_session=False)
    _, status = os.waitpid(pid, 0)
    for fd in (pipes.stdout, pipes.stderr):
        if fd is not None:
            os.close(fd)
    if pipes.control is not None:
        pipes.control.close()
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux /proc needed")
def test_simulated_workers_inherit_the_mark(ksm_on: Path) -> None:
    """Forking a --fake-exec worker (pipes, no control socket) marks nothing; forking a simulated one
    marks the launcher's heap mergeable (the kernel's `mg` flag), and the worker's heap carries the mark."""
    table = ForkProcessTable()
    madvise = procs._madvise
    assert madvise is not None
    with open("/proc/self/maps") as f:
        regions = mergeable_regions(f.read())
    for start, end in regions:
        madvise(start, end - start, MADV_UNMERGEABLE)  # as this test process was before any test marked it
    assert "mg" not in heap_flags()
    assert fork_and_wait(table, ForkRequest(lambda: 0)) == 0
    assert "mg" not in heap_flags()
    assert fork_and_wait(table, ForkRequest(lambda: 0 if "mg" in heap_flags() else 1, control=True)) == 0
    assert "mg" in heap_flags()
