"""SLURM for torchrun users: hostlist expansion, the job step's environment, and the options it fills in.

Pure: an environment mapping in, values out; nothing here reads the process environment or runs scontrol.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from fakerun.options import TorchrunArgs

if TYPE_CHECKING:
    from fakerun.presets import ClusterSpec

__all__ = [
    "SlurmJob",
    "apply_slurm",
    "compress_hostlist",
    "expand_nodelist",
    "main",
    "preset_nodelist",
    "simulated_hosts",
    "slurm_job",
]

# SLURM's hostlist.c refuses a single range of more than 64K hosts ("Too many hosts in range").
MAX_RANGE = 64 * 1024
# Our own cap on a whole expansion, so that a hostile `a[0-65535]b[0-65535]` fails instead of eating memory
# (hostlist.c caps the product of a prefix's ranges the same way).
MAX_HOSTS = 1 << 20
# hostlist.c tokenises a list on commas, spaces and tabs, except inside brackets.
_SEPARATORS = frozenset(", \t")
# One element of a bracket: `7` or `001-016`; ASCII digits only (str.isdigit would take other scripts).
_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?")
# fakerun.main's default model, whose cluster names the nodes of fake_srun.sh's jobs (not imported from
# there: the launcher's whole import would double the helper's start-up; a unit test keeps them equal).
DEFAULT_MODEL = "llama3-8b"
# A host name split before its trailing number: `gpu-node-` and `001`.
_NUMBERED = re.compile(r"(.*?)([0-9]+)")
# SLURM_TASKS_PER_NODE and friends: `2(x3),1` means 2 tasks on each of 3 nodes, then 1 on the next.
_TASKS = re.compile(r"([0-9]+)(?:\(x([0-9]+)\))?")
_UINT = re.compile(r"[0-9]+")


def _show(text: str) -> str:
    """`text` quoted for a one-line error message, cut if long (repr escapes newlines)."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _tokens(text: str) -> list[str]:
    """Splits a hostlist on separators outside brackets, checking that brackets pair up and do not nest."""
    tokens: list[str] = []
    current: list[str] = []
    inside = False
    for ch in text:
        if ch == "[":
            if inside:
                raise ValueError(f"bad SLURM hostlist {_show(text)}: nested '['")
            inside = True
        elif ch == "]":
            if not inside:
                raise ValueError(f"bad SLURM hostlist {_show(text)}: ']' without '['")
            inside = False
        elif ch in _SEPARATORS and not inside:
            # Runs of separators (and leading or trailing ones) make no empty host, as in hostlist.c.
            if current:
                tokens.append("".join(current))
                current = []
            continue
        elif ch.isspace() or not ch.isprintable():
            # Not a separator for SLURM, and no host name has one: a newline here is a garbled variable.
            raise ValueError(f"bad SLURM hostlist {_show(text)}: unexpected {ch!r}")
        current.append(ch)
    if inside:
        raise ValueError(f"bad SLURM hostlist {_show(text)}: '[' without ']'")
    if current:
        tokens.append("".join(current))
    return tokens


def _numbers(text: str, body: str) -> list[str]:
    """The numbers of one bracket body (`1,3,5-7`), zero-padded to the width of each range's low end."""
    numbers: list[str] = []
    if not body:
        raise ValueError(f"bad SLURM hostlist {_show(text)}: empty brackets")
    for item in body.split(","):
        m = _RANGE.fullmatch(item)
        if m is None:
            raise ValueError(f"bad SLURM hostlist {_show(text)}: {item!r} is not a number or a range lo-hi")
        lo_text, hi_text = m.group(1), m.group(2)
        lo = int(lo_text)
        hi = lo if hi_text is None else int(hi_text)
        if lo > hi:
            raise ValueError(f"bad SLURM hostlist {_show(text)}: range {item!r} runs backwards")
        if hi - lo + 1 > MAX_RANGE:
            raise ValueError(
                f"bad SLURM hostlist {_show(text)}: range {item!r} has more than {MAX_RANGE} hosts"
            )
        # hostlist.c pads to the low end's width only: `[8-10]` gives 8 9 10, `[08-10]` gives 08 09 10.
        width = len(lo_text)
        numbers.extend(f"{n:0{width}d}" for n in range(lo, hi + 1))
        if len(numbers) > MAX_HOSTS:
            raise ValueError(
                f"bad SLURM hostlist {_show(text)}: [{body[:20]}...] has more than {MAX_HOSTS} hosts"
            )
    return numbers


def _expand_token(text: str, token: str) -> list[str]:
    """The hosts of one token: a plain name, or literals and bracket groups ending with a bracket."""
    if "[" not in token:
        return [token]
    if not token.endswith("]"):
        # hostlist.c refuses anything after a token's last bracket (`node[1-2]-ib` is an error for scontrol).
        raise ValueError(f"bad SLURM hostlist {_show(text)}: nothing may follow the last ']' of {token!r}")
    literals: list[str] = []
    groups: list[list[str]] = []
    rest = token
    while "[" in rest:
        head, _, tail = rest.partition("[")
        body, _, rest = tail.partition("]")
        literals.append(head)
        groups.append(_numbers(text, body))
    if math.prod(len(g) for g in groups) > MAX_HOSTS:
        raise ValueError(
            f"bad SLURM hostlist {_show(text)}: {token!r} expands to more than {MAX_HOSTS} hosts"
        )

    # hostlist.c's _push_range_list: the rightmost bracket before the last one is the outermost loop, the
    # brackets to its left run (recursively) inside it, and the token's last bracket is the innermost loop:
    # `r[1-2]c[1-2]n[1-2]` gives r1c1n1 r1c1n2 r2c1n1 r2c1n2 r1c2n1 r1c2n2 r2c2n1 r2c2n2.
    names = [literals[0]]
    for k in range(1, len(groups)):
        names = [name + v + literals[k] for v in groups[k - 1] for name in names]
    return [name + v for name in names for v in groups[-1]]


def expand_nodelist(text: str) -> list[str]:
    """The hosts of a SLURM hostlist (`gpu-[001-004],login1`), in SLURM's order; ValueError if malformed."""
    hosts: list[str] = []
    for token in _tokens(text):
        hosts.extend(_expand_token(text, token))
        if len(hosts) > MAX_HOSTS:
            raise ValueError(f"bad SLURM hostlist {_show(text)}: more than {MAX_HOSTS} hosts")
    return hosts


@dataclass(frozen=True)
class SlurmJob:
    """One task of a SLURM job step, as its environment describes it."""

    job_id: str  # SLURM_JOB_ID
    nnodes: int  # nodes of the step (SLURM_STEP_NUM_NODES, SLURM_NNODES, SLURM_JOB_NUM_NODES)
    node_id: int  # SLURM_NODEID: this node's index in the step, 0-based
    proc_id: int  # SLURM_PROCID: this task's rank in the step
    ntasks: int  # tasks of the step (SLURM_STEP_NUM_TASKS, SLURM_NTASKS), else one per node
    nodelist: tuple[str, ...]  # the step's hosts, expanded, in SLURM's order
    ntasks_per_node: int | None = None  # tasks of the step on this node, when SLURM says
    gpus_on_node: int | None = None  # SLURM_GPUS_ON_NODE: GPUs allocated on this node
    local_id: int = 0  # SLURM_LOCALID: this task's index on its node
    job_name: str | None = None  # SLURM_JOB_NAME
    node_name: str | None = None  # SLURMD_NODENAME: this node's name
    cpus_per_task: int | None = None  # SLURM_CPUS_PER_TASK

    @property
    def head_node(self) -> str:
        """The step's first host: where torchrun users put the master / rendezvous endpoint."""
        return self.nodelist[0]


def _first(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first of `names` set to a non-blank value in `environ`, with that value."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _uint(name: str, value: str) -> int:
    """A SLURM variable's non-negative integer value; ValueError naming the variable otherwise."""
    if not _UINT.fullmatch(value):
        raise ValueError(f"{name}={value!r} is not a non-negative integer")
    return int(value)


def _optional_uint(environ: Mapping[str, str], *names: str) -> int | None:
    """The first of `names` that is set, as a non-negative integer, or None."""
    found = _first(environ, *names)
    return None if found is None else _uint(*found)


def _tasks_per_node(name: str, value: str) -> list[int]:
    """Expands SLURM_TASKS_PER_NODE's compressed form (`2(x3),1` -> [2, 2, 2, 1])."""
    counts: list[int] = []
    for item in value.split(","):
        m = _TASKS.fullmatch(item.strip())
        if m is None:
            raise ValueError(f"{name}={value!r} is not a list like 2(x3),1")
        repeat = int(m.group(2) or "1")
        if repeat > MAX_HOSTS or len(counts) + repeat > MAX_HOSTS:
            raise ValueError(f"{name}={value!r} names more than {MAX_HOSTS} nodes")
        counts.extend([int(m.group(1))] * repeat)
    return counts


def slurm_job(environ: Mapping[str, str]) -> SlurmJob | None:
    """This process's SLURM task; None outside a job step (e.g. an salloc shell), ValueError if garbled."""
    job_id = _first(environ, "SLURM_JOB_ID", "SLURM_JOBID")  # SLURM_JOBID: the pre-2.x spelling, still set
    # srun overwrites the job-level counts with the step's (`srun -N1` inside a 4-node job is a 1-node step),
    # so the step's variables come first. SLURM_NODEID and SLURM_PROCID exist only in a task (srun's, or the
    # batch script itself on the first node): an salloc shell has the job's nodes but is no node of them.
    nnodes = _first(environ, "SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
    hostlist = _first(environ, "SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST")
    node_id = _first(environ, "SLURM_NODEID")
    proc_id = _first(environ, "SLURM_PROCID")
    if job_id is None or nnodes is None or hostlist is None or node_id is None or proc_id is None:
        return None
    count, node, nodes = _uint(*nnodes), _uint(*node_id), tuple(expand_nodelist(hostlist[1]))
    if count < 1:
        raise ValueError(f"{nnodes[0]}={nnodes[1]!r}: a job has at least one node")
    if len(nodes) != count:
        raise ValueError(f"{hostlist[0]}={hostlist[1]!r} names {len(nodes)} hosts, {nnodes[0]} is {count}")
    if node >= count:
        raise ValueError(f"SLURM_NODEID={node} is not below {nnodes[0]}={count}")
    per_node = _first(environ, "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    counts: list[int] | None = None
    if per_node is not None:
        counts = _tasks_per_node(*per_node)
        if len(counts) != count:
            raise ValueError(f"{per_node[0]}={per_node[1]!r} describes {len(counts)} nodes, not {count}")
        here: int | None = counts[node]
    else:
        here = _optional_uint(environ, "SLURM_NTASKS_PER_NODE")  # set only with an explicit --ntasks-per-node
    ntasks = _optional_uint(environ, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
    if ntasks is None:
        # Without -n, srun starts one task per node (or --ntasks-per-node of them).
        ntasks = sum(counts) if counts is not None else count * (here or 1)
    rank = _uint(*proc_id)
    if rank >= ntasks:
        raise ValueError(f"SLURM_PROCID={rank} is not below the step's {ntasks} tasks")
    return SlurmJob(
        job_id=job_id[1],
        nnodes=count,
        node_id=node,
        proc_id=rank,
        ntasks=ntasks,
        nodelist=nodes,
        ntasks_per_node=here,
        gpus_on_node=_optional_uint(environ, "SLURM_GPUS_ON_NODE"),
        local_id=_optional_uint(environ, "SLURM_LOCALID") or 0,
        job_name=environ.get("SLURM_JOB_NAME") or None,
        node_name=environ.get("SLURMD_NODENAME") or None,
        cpus_per_task=_optional_uint(environ, "SLURM_CPUS_PER_TASK"),
    )


def apply_slurm(args: TorchrunArgs, job: SlurmJob, explicit: frozenset[str]) -> TorchrunArgs:
    """`args` with SLURM's values in the options the user left out (`explicit` names those the user set)."""
    if args.standalone:
        # --standalone is a single-node job (torchrun ignores every rendezvous option with it): SLURM's node
        # count would only make it wait for nodes that never come.
        return args
    new = args
    filled: set[str] = set()
    static = args.rdzv_backend == "static"
    if "nnodes" not in explicit:
        # sbatch scripts write `torchrun --nnodes $SLURM_NNODES ...` (or $SLURM_JOB_NUM_NODES): one torchrun
        # per node, started by `srun` with --ntasks-per-node=1, so the job's nodes are torchrun's nodes.
        new = replace(new, nnodes=str(job.nnodes))
        filled.add("nnodes")
    if static and "node_rank" not in explicit:
        # Static rendezvous scripts write `--node_rank $SLURM_NODEID` (torchrun reads --node-rank only for
        # the static backend; c10d numbers nodes by join order). SLURM_NODEID is a node rank only with one
        # task per node: several fakeruns on a node would all claim the same rank and hang, so say so.
        if job.ntasks_per_node is not None and job.ntasks_per_node > 1:
            host = job.node_name or job.nodelist[job.node_id]
            raise ValueError(
                f"SLURM runs {job.ntasks_per_node} tasks on {host}, so SLURM_NODEID is no node rank: "
                "start one fakerun per node (srun --ntasks-per-node=1) or pass --node-rank"
            )
        new = replace(new, node_rank=job.node_id)
        filled.add("node_rank")
    if static and not args.rdzv_endpoint and "master_addr" not in explicit:
        # Static scripts write `--master_addr $(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)`:
        # the first node hosts rank 0. An --rdzv-endpoint, when given, is the master under torchrun instead.
        new = replace(new, master_addr=job.head_node)
        filled.add("master_addr")
    if not static and "rdzv_id" not in explicit:
        # c10d scripts write `--rdzv_id $SLURM_JOB_ID`: one id per job, shared by every node, unique per job
        # so that a requeued or concurrent job never joins another's rendezvous.
        new = replace(new, rdzv_id=job.job_id)
        filled.add("rdzv_id")
    if not filled:
        return args
    # The filled options count as given from now on: SLURM's node rank 0 means "node 0 of N", not the bare
    # `--nnodes N` that makes one fakerun play every node (see plan.is_multi_node).
    return replace(new, explicit=args.explicit | filled)


def simulated_hosts(job: SlurmJob) -> list[str]:
    """The host names of the job's nodes, in node-id order: the names its simulated nodes go by."""
    return list(job.nodelist)


def _ranges(numbers: Sequence[str]) -> str:
    """`001,002,003,005` -> `001-003,005`: runs of consecutive numbers of one width as lo-hi."""
    items: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and int(n) == int(prev) + 1 and len(n) == len(prev):
            prev = n
            continue
        items.append(start if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ",".join(items)


def compress_hostlist(hosts: Sequence[str]) -> str:
    """SLURM's ranged form of a host list, in its order: `gpu-node-[001-004]`, `dgx[01-02,07],login`.

    Neighbouring hosts that share a prefix and a number's width go into one bracket (a lone host keeps its
    plain name), as `scontrol show hostlist` writes them; expand_nodelist gives `hosts` back.
    """
    groups: list[tuple[str, int, list[str]]] = []  # (prefix, width or -1 for a plain name, numbers)
    for host in hosts:
        m = _NUMBERED.fullmatch(host)
        if m is None:
            groups.append((host, -1, []))
            continue
        prefix, number = m.group(1), m.group(2)
        if groups and groups[-1][0] == prefix and groups[-1][1] == len(number):
            groups[-1][2].append(number)
        else:
            groups.append((prefix, len(number), [number]))
    parts: list[str] = []
    for prefix, width, numbers in groups:
        if width < 0:
            parts.append(prefix)
        elif len(numbers) == 1:
            parts.append(prefix + numbers[0])
        else:
            parts.append(f"{prefix}[{_ranges(numbers)}]")
    return ",".join(parts)


def preset_nodelist(cluster: ClusterSpec, nnodes: int) -> str:
    """The node list SLURM would give a job of `nnodes` nodes on `cluster`, named as the preset names them."""
    from fakerun.presets import host_name  # the launcher imports this module; only the helper needs presets

    if nnodes < 1:
        raise ValueError(f"a job has at least one node, not {nnodes}")
    return compress_hostlist([host_name(cluster, i) for i in range(nnodes)])


_USAGE = "usage: python -m fakerun.launcher.slurm NODES [CLUSTER] | hostnames LIST"


def _hostnames(text: str) -> int:
    """`hostnames LIST`: the hosts one a line, as `scontrol show hostnames LIST` prints them."""
    try:
        hosts = expand_nodelist(text)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write("".join(f"{host}\n" for host in hosts))
    return 0


def main(argv: Sequence[str]) -> int:
    """`python -m fakerun.launcher.slurm NODES [CLUSTER]`: the node list of a NODES-node job on a cluster
    preset (by default the default model's), as sbatch sets SLURM_JOB_NODELIST; `hostnames LIST`: the hosts
    of a hostlist, one a line. For scripts/slurm/fake_srun.sh, whose hostlists are all expanded here."""
    from fakerun import presets

    if len(argv) == 2 and argv[0] == "hostnames":
        return _hostnames(argv[1])
    if len(argv) not in (1, 2) or not _UINT.fullmatch(argv[0]) or int(argv[0]) < 1:
        print(_USAGE, file=sys.stderr)
        return 2
    try:
        if len(argv) == 2 and argv[1]:
            cluster = presets.load_cluster(argv[1])
        else:
            cluster = presets.resolve(DEFAULT_MODEL).cluster
    except presets.PresetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(preset_nodelist(cluster, int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
