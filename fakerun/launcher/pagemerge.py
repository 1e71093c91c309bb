"""Lets the kernel's same-page merging (KSM) share a simulated job's memory pages again after the fork.

A forked worker copies each launcher page whose objects it touches: CPython 3.11 writes a reference count
into every object it reads, so a simulated rank ends up with about 5 MB of pages of its own
(docs/PERFORMANCE.md). Most of those copies differ from the launcher's page, and from each other, only while
an object is in use: between two steps the ranks' copies are byte for byte alike, and KSM, where the machine
runs it (/sys/kernel/mm/ksm/run is 1, which only root can set), merges them back into one page. It merges
only memory marked mergeable: the launcher marks its private writable mappings before it forks simulated
workers, which inherit the mark. Where KSM does not run, nothing is marked.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

KSM_RUN = "/sys/kernel/mm/ksm/run"
MADV_MERGEABLE = 12  # <asm-generic/mman-common.h>

# A /proc/PID/maps line: start-end perms offset dev inode [path].
_MAPS_LINE = re.compile(r"([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \d+\s*(.*)")
# Writable private mappings KSM cannot take or that are not worth it: the kernel's own and the stack.
_SKIPPED = ("[stack]", "[vvar]", "[vdso]", "[vsyscall]")


def ksm_running(path: str | None = None) -> bool:
    """Whether the kernel's same-page merging runs on this machine (`path`: KSM_RUN's stand-in)."""
    try:
        with open(path or KSM_RUN, encoding="ascii") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def mergeable_regions(maps: str) -> list[tuple[int, int]]:
    """(start, end) of the private writable mappings of a /proc/PID/maps text: the memory a fork shares
    copy-on-write, whose copies KSM can merge (anonymous memory and the copied pages of private files)."""
    regions = []
    for line in maps.splitlines():
        m = _MAPS_LINE.match(line)
        if m is None:
            continue
        perms, name = m.group(3), m.group(4)
        if perms[1] != "w" or perms[3] != "p" or name in _SKIPPED:
            continue
        regions.append((int(m.group(1), 16), int(m.group(2), 16)))
    return regions


def mark_mergeable(
    madvise: Callable[[int, int, int], int], maps_path: str = "/proc/self/maps", run_path: str | None = None
) -> int:
    """Marks this process's private writable memory mergeable (through libc's `madvise`) if KSM runs; the
    bytes marked (0 if it does not run, or off Linux). A region the kernel refuses is left as it is."""
    if not sys.platform.startswith("linux") or not ksm_running(run_path):
        return 0
    try:
        with open(maps_path, encoding="ascii", errors="replace") as f:
            regions = mergeable_regions(f.read())
    except OSError:
        return 0
    marked = 0
    for start, end in regions:
        if madvise(start, end - start, MADV_MERGEABLE) == 0:
            marked += end - start
    return marked
