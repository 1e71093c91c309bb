"""Preflight checks of the host's limits (open files, memory) before any worker is forked."""

from __future__ import annotations

import contextlib
import math
import os
import resource
from dataclasses import dataclass

from fakerun.launcher.plan import LaunchPlan

# What one rank costs the launcher in descriptors: a --fake-exec rank's stdout and stderr pipes (or
# pseudo-terminal masters); a simulated rank's control socket, which carries its output too. Its output copy
# for fakerun-tail shares a pool sized from what is left.
PIPES_PER_RANK = 2
CONTROL_PER_RANK = 1
# The launcher's own descriptors opened after the check: selector, signal pipe, metrics and filter files,
# the state file being replaced, a fork's transient pipe ends, meta.json... with room to spare.
LAUNCHER_FDS = 32
# The fewest output copies kept open at once; more are reopened in turn (see ranklogs.RankLogs).
MIN_RANK_FILES = 16

# Memory per rank, measured (1024 simulated ranks training, 2026-12-05): the host's available memory dropped
# by 4.28 MB per rank (PSS 4.6 MB per rank; page tables 117 kB and kernel stacks 16 kB per rank included);
# with 10% to spare. The same figure stands in for --fake-exec, whose real script costs at least that.
RANK_BYTES = 9 * 2**19
LAUNCHER_BYTES = 64 * 2**20
# A job may take this share of the memory available now: the rest is for everything else on the host.
MEMORY_SHARE = 0.9
_UNLIMITED = 2**60
GIB = 2**30


@dataclass(frozen=True)
class FdLimit:
    """RLIMIT_NOFILE: as the launcher was started (workers get it back) and as raised."""

    original: int
    soft: int
    hard: int


def raise_fd_limit() -> FdLimit:
    """Raises the soft limit on open files to the hard limit (or to the kernel's nr_open if unlimited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        # Linux refuses an infinite RLIMIT_NOFILE: the ceiling is fs.nr_open.
        target = _nr_open()
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return FdLimit(soft, target, hard)
    return FdLimit(soft, soft, hard)


def _nr_open() -> int:
    """The kernel's ceiling on a process's open files."""
    try:
        with open("/proc/sys/fs/nr_open", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def open_fds() -> int:
    """How many descriptors this process holds now."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor
    except OSError:
        return 3


def local_ranks(plan: LaunchPlan) -> int:
    """How many workers this launcher forks (every simulated node it plays)."""
    return len(plan.nodes) * plan.nproc_per_node


def fds_per_rank(plan: LaunchPlan, *, simulated: bool) -> float:
    """Descriptors the launcher holds per local rank: pipes, control socket, --redirects/--tee log files."""
    files = 0
    for local_rank in range(plan.nproc_per_node):
        bits = plan.redirects.get(local_rank, 0) | plan.tee.get(local_rank, 0)
        files += (bits & 1) + (bits >> 1 & 1)
    return (CONTROL_PER_RANK if simulated else PIPES_PER_RANK) + files / plan.nproc_per_node


@dataclass(frozen=True)
class FdBudget:
    """The launcher's descriptors for a job: whether its ranks fit, and how many copies may stay open."""

    ranks: int
    need: int  # descriptors the job needs with the fewest output copies open
    limit: FdLimit
    fit: int  # ranks that would fit under the limit
    spare: int  # descriptors left for the ranks' output copies (>= MIN_RANK_FILES when the job fits)

    @property
    def ok(self) -> bool:
        """Whether the job fits under the soft limit."""
        return self.need <= self.limit.soft

    def error(self, prog: str) -> str:
        """The one-line refusal."""
        limit = self.limit
        hard = "unlimited" if limit.hard == resource.RLIM_INFINITY else str(limit.hard)
        return (
            f"{prog}: error: cannot start {self.ranks} ranks: they need {self.need} open files but the limit "
            f"is {limit.soft} (ulimit -n; hard limit {hard}); at most {self.fit} ranks fit"
        )


def fd_budget(plan: LaunchPlan, limit: FdLimit, *, simulated: bool, held: int) -> FdBudget:
    """The descriptors a job needs from a launcher holding `held` now, against `limit`."""
    ranks = local_ranks(plan)
    per_rank = fds_per_rank(plan, simulated=simulated)
    # Node 0 of a multi-node job holds a connection to every other agent.
    base = held + LAUNCHER_FDS + MIN_RANK_FILES + (plan.max_nodes if plan.multi_node else 0)
    need = base + math.ceil(per_rank * ranks)
    fit = max(0, int((limit.soft - base) / per_rank))
    return FdBudget(ranks, need, limit, fit, max(0, limit.soft - need) + MIN_RANK_FILES)


def available_memory() -> int | None:
    """Bytes of memory the host (or this process's cgroup, if less) can still give, or None if unknown."""
    available = _meminfo_available()
    room = _cgroup_room()
    if room is not None:
        available = room if available is None else min(available, room)
    return available


def _meminfo_available() -> int | None:
    """MemAvailable of /proc/meminfo (what psutil.virtual_memory().available reads on Linux)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # not on Linux: psutil knows the platform's figure

        return int(psutil.virtual_memory().available)
    except (ImportError, OSError, AttributeError, ValueError):
        return None


def _cgroup_room() -> int | None:
    """A memory-limited cgroup's limit minus its usage (v2 memory.max, v1 memory.limit_in_bytes)."""
    try:
        with open("/proc/self/cgroup", encoding="ascii") as f:
            entries = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return None
    for entry in entries:
        if len(entry) != 3:
            continue
        _, controllers, path = entry
        if controllers == "":
            files = ("/sys/fs/cgroup", "memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            files = ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        root, limit_name, usage_name = files
        directory = root + path.rstrip("/")
        try:
            with open(os.path.join(directory, limit_name), encoding="ascii") as f:
                text = f.read().strip()
            if text == "max" or int(text) >= _UNLIMITED:
                continue
            with open(os.path.join(directory, usage_name), encoding="ascii") as f:
                return max(0, int(text) - int(f.read().strip()))
        except (OSError, ValueError):
            continue  # a namespaced cgroup whose files are not mounted where /proc says
    return None


def memory_error(ranks: int, available: int | None, prog: str) -> str | None:
    """The one-line refusal of a job whose ranks cannot fit in the memory available, else None."""
    if available is None:
        return None
    need = LAUNCHER_BYTES + ranks * RANK_BYTES
    usable = int(available * MEMORY_SHARE)
    if need <= usable:
        return None
    fit = max(0, (usable - LAUNCHER_BYTES) // RANK_BYTES)
    return (
        f"{prog}: error: cannot start {ranks} ranks: they need about {need / GIB:.1f} GiB of memory "
        f"({RANK_BYTES / 2**20:g} MiB each) and {available / GIB:.1f} GiB is available "
        f"({MEMORY_SHARE:.0%} of it for the job); at most {fit} ranks fit "
        "(--fake-skip-memory-check starts them anyway)"
    )


class Refused(Exception):
    """The job cannot fit on this host: the one line that says why, and how many ranks would."""


def check(plan: LaunchPlan, limit: FdLimit, *, simulated: bool, memory: bool, prog: str) -> FdBudget:
    """Checks the job against the host's memory (unless `memory` is False) and open-file limit."""
    ranks = local_ranks(plan)
    if memory:
        line = memory_error(ranks, available_memory(), prog)
        if line is not None:
            raise Refused(line)
    budget = fd_budget(plan, limit, simulated=simulated, held=open_fds())
    if not budget.ok:
        raise Refused(budget.error(prog))
    return budget
