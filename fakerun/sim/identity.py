"""Process identities of each simulated host: the launcher's pid, its workers' pids, NCCL's thread ids.

A real host's pids come from one kernel counter that every process and thread on it advances, so they are
not a visible function of anything: a busy node has handed out thousands to millions of them by the time a
job starts (pid_max is 4194304 on 64-bit kernels), the launcher forks its workers one after another with a
few other processes (and the launcher's own helpers) slipping in between, and the thread NCCL initialises
on is created seconds later, after every worker has imported torch and started dozens of threads of its
own. Each host draws from its own seeded stream, so node B's pids never continue node A's.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass

from fakerun.sim import rand

PID_MAX = 4_194_304  # /proc/sys/kernel/pid_max on 64-bit kernels since systemd 243
# Where a busy node's counter is when a job starts: log-uniform from a few thousand (a node rebooted for
# the job) to a few million (weeks of uptime, containers, data-loader workers of earlier jobs).
LAUNCHER_PID_RANGE = (2_500, 3_600_000)
# The launcher's own start (its store thread, its log tailers, a `nvidia-smi` of a health check) takes a
# few numbers before the first worker: torchrun 2.13 recorded 11926 -> 11951 (reference 04_failure).
FIRST_FORK_GAP = (4, 40)
# A restarted group is forked after the old one's threads and the new rendezvous: 11952 -> 11983 there.
RESTART_GAP = (15, 120)
# NCCL's init thread is created after every worker imported torch (each starts tens of threads): real
# logs put it ~50-900 above the host's last worker pid, in no particular order across ranks.
TID_OFFSET = (50, 900)


@dataclass(frozen=True)
class HostIdentity:
    """The pids and thread ids one host shows for one attempt of the job."""

    launcher_pid: int
    worker_pids: tuple[int, ...]  # by local rank
    nccl_tids: tuple[int, ...]  # by local rank: the thread NCCL's communicator set-up runs on


def _between(seed: int, stream: str, lo: int, hi: int, *keys: int) -> int:
    return lo + int(rand.uniform(seed, stream, *keys) * (hi - lo + 1))


def _block(nproc: int) -> int:
    """Numbers a host's launcher, workers and a few restarts span: no other node's launcher draws in it."""
    return FIRST_FORK_GAP[1] + 4 * RESTART_GAP[1] + 5 * 17 * nproc


@functools.lru_cache(maxsize=64)
def _launcher_pids(seed: int, nnodes: int, nproc: int) -> tuple[int, ...]:
    """Every node's launcher pid, drawn in node order; a draw landing on an earlier node's span is redrawn.

    Two real hosts may share pids, but a job log where node 3's rank shows node 5's pid reads as a bug.
    """
    lo, hi = LAUNCHER_PID_RANGE
    span = _block(nproc)
    taken: list[int] = []
    out: list[int] = []
    for node in range(nnodes):
        k = 0
        while True:
            pid = int(lo * (hi / lo) ** rand.uniform(seed, "id-launcher", node, k))
            i = bisect.bisect_left(taken, pid)
            if (i == 0 or pid - taken[i - 1] >= span) and (i == len(taken) or taken[i] - pid >= span):
                break
            k += 1
        bisect.insort(taken, pid)
        out.append(pid)
    return tuple(out)


def launcher_pid(seed: int, node: int, nnodes: int = 0, nproc: int = 8) -> int:
    """The pid of the agent of simulated node `node` of `nnodes`: log-uniform over what a busy host shows."""
    return _launcher_pids(seed, max(nnodes, node + 1), nproc)[node]


def _fork_gap(seed: int, node: int, attempt: int, local_rank: int) -> int:
    """Numbers taken between two consecutive forks: usually none, sometimes a few (cron, sshd, a probe)."""
    u = rand.uniform(seed, "id-fork-gap", node, attempt, local_rank)
    if u < 0.7:
        return 0
    if u < 0.95:
        return 1 + int((u - 0.7) / 0.25 * 3)
    return 4 + int((u - 0.95) / 0.05 * 12)


def worker_pids(seed: int, node: int, nproc: int, attempt: int = 0, nnodes: int = 0) -> tuple[int, ...]:
    """The pids of a simulated node's workers in attempt `attempt`, by local rank."""
    pid = launcher_pid(seed, node, nnodes, nproc)
    pids: list[int] = []
    for a in range(attempt + 1):
        gap = FIRST_FORK_GAP if a == 0 else RESTART_GAP
        pid += _between(seed, "id-first-fork", gap[0], gap[1], node, a)
        pids = []
        for lr in range(nproc):
            if lr:
                pid += 1 + _fork_gap(seed, node, a, lr)
            pids.append(pid)
    return tuple(_wrap(p) for p in pids)


def nccl_tids(seed: int, node: int, last_worker_pid: int, nproc: int, attempt: int = 0) -> tuple[int, ...]:
    """Thread ids of NCCL's init threads on a host whose last worker has `last_worker_pid`, by local rank."""
    lo, hi = TID_OFFSET
    tids: list[int] = []
    taken: set[int] = set()
    for lr in range(nproc):
        k = 0
        while True:
            tid = last_worker_pid + _between(seed, "id-tid", lo, hi, node, attempt, lr, k)
            if tid not in taken:
                break
            k += 1
        taken.add(tid)
        tids.append(_wrap(tid))
    return tuple(tids)


def host_identity(
    seed: int,
    node: int,
    nproc: int,
    attempt: int = 0,
    *,
    nnodes: int = 0,
    real_pids: tuple[int, ...] | None = None,
) -> HostIdentity:
    """Everything a host shows; `real_pids` (the host this launcher really is) replaces the drawn pids."""
    pids = real_pids if real_pids is not None else worker_pids(seed, node, nproc, attempt, nnodes)
    return HostIdentity(
        launcher_pid=launcher_pid(seed, node, nnodes, nproc),
        worker_pids=pids,
        nccl_tids=nccl_tids(seed, node, max(pids), nproc, attempt),
    )


def _wrap(pid: int) -> int:
    # The counter wraps past pid_max to the first free number above 300 (kernel/pid.c RESERVED_PIDS).
    return pid if pid < PID_MAX else 300 + (pid - PID_MAX)
