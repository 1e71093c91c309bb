"""What NCCL prints per rank during communicator init with NCCL_DEBUG=INFO: bootstrap to `Init COMPLETE`.

Lines are `{host}:{pid}:{tid} [{cudaDev}] NCCL INFO {message}`; the network probe lines use the main
thread (tid == pid), the rest the init thread. Rings chain the nodes with each node's ranks contiguous;
trees are NCCL's double binary tree over the nodes with a chain inside each node. Output per rank is
bounded at any scale: ring lines on rank 0 only, at most the first 20 ranks of a ring (as NCCL's own line
buffer does), and connection lines for at most the first two channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fakerun.sim import rand

if TYPE_CHECKING:
    from fakerun.presets import ClusterSpec

__all__ = [
    "NcclTopo",
    "bus_id",
    "nccl_init_lines",
    "nccl_topo_for",
    "pci_bus_id",
    "ring_order",
    "tree_line",
    "tree_links",
]

# PCI bus numbers of the eight GPUs of a DGX H100, in CUDA device order.
DGX_H100_BUS_IDS: tuple[str, ...] = ("18", "2A", "3A", "5D", "9A", "AB", "BA", "DB")
RING_LINE_MAX_RANKS = 20  # NCCL's ring dump stops after 20 ranks (the 32-rank sample shows 0..19)
PRINTED_CHANNELS = 2  # connection and ring lines are printed for this many channels at most
_TREE_ARITY = 3
_GPUS_PER_SOCKET = 4  # DGX/HGX: GPUs 0-3 hang off CPU socket 0, GPUs 4-7 off socket 1


@dataclass(frozen=True)
class NcclTopo:
    """The job as NCCL sees it: nodes, GPUs per node, host names, NICs, library versions, channels."""

    nnodes: int
    nproc_per_node: int
    hosts: tuple[str, ...]  # one per node
    nics_per_node: int
    nic_prefix: str  # "mlx5_" gives mlx5_0, mlx5_1, ...
    gpu_vendor: str  # "nvidia" | "amd" (RCCL prints the same "NCCL INFO" lines)
    nccl_version: str = "2.21.5"
    cuda_version: str = "12.4"  # the HIP version for AMD
    channels: int = 2
    link_layer: str = "IB"  # "IB" | "RoCE"
    oob_if: str = "ib0"  # the bootstrap (out-of-band) interface
    cpu_cores: int = 112  # physical cores per node over both sockets; SMT siblings follow them
    bus_ids: tuple[str, ...] = ()  # PCI bus number per local GPU ("18", "2A", ...); () for a DGX H100's

    def __post_init__(self) -> None:
        if self.nnodes < 1 or self.nproc_per_node < 1:
            raise ValueError(f"need at least one node and one GPU, got {self.nnodes} x {self.nproc_per_node}")
        if len(self.hosts) != self.nnodes:
            raise ValueError(f"need one host name per node: {len(self.hosts)} for {self.nnodes} nodes")
        if self.nics_per_node < 1 or self.channels < 1 or self.cpu_cores < 2:
            raise ValueError("nics_per_node and channels must be positive and cpu_cores at least 2")
        if self.gpu_vendor not in ("nvidia", "amd"):
            raise ValueError(f"gpu_vendor must be nvidia or amd, got {self.gpu_vendor!r}")

    @property
    def world(self) -> int:
        """Number of ranks."""
        return self.nnodes * self.nproc_per_node


def _bus_number(local_rank: int, bus_ids: Sequence[str]) -> tuple[int, int]:
    """(PCI domain, bus) of a local GPU; GPUs beyond the table go to the next PCI domain."""
    table = tuple(bus_ids) or DGX_H100_BUS_IDS
    domain, slot = divmod(local_rank, len(table))
    return domain, int(table[slot], 16)


def bus_id(local_rank: int, bus_ids: Sequence[str] = ()) -> str:
    """The bus id as NCCL prints it in brackets and in `busId`: `18000` for 0000:18:00.0."""
    domain, bus = _bus_number(local_rank, bus_ids)
    return f"{(domain << 20) | (bus << 12):x}"


def pci_bus_id(local_rank: int, bus_ids: Sequence[str] = ()) -> str:
    """The full PCI address as nvidia-smi prints it: `00000000:18:00.0`."""
    domain, bus = _bus_number(local_rank, bus_ids)
    return f"{domain:08X}:{bus:02X}:00.0"


def ring_order(topo: NcclTopo, channel: int) -> list[int]:
    """Channel `channel`'s ring from rank 0: nodes in order, each node's ranks contiguous."""
    p = topo.nproc_per_node
    # Odd channels run each node's chain the other way round, as NCCL alternates directions over NVLink.
    local = list(range(p)) if channel % 2 == 0 else [0, *range(p - 1, 0, -1)]
    return [node * p + lr for node in range(topo.nnodes) for lr in local]


def _btree(n: int, r: int) -> tuple[int, int, int]:
    """NCCL's binary tree over n members rooted at 0: (parent, child0, child1), -1 for none."""
    if n == 1:
        return -1, -1, -1
    bit = 1
    while bit < n and not bit & r:
        bit <<= 1
    if r == 0:
        return -1, -1, bit >> 1
    parent = (r ^ bit) | (bit << 1)
    if parent >= n:
        parent = r ^ bit
    low = bit >> 1
    down0 = r - low if low else -1
    down1 = r + low if low else -1
    while down1 >= n:
        low >>= 1
        down1 = r + low if low else -1
    return parent, down0, down1


def _dtree(n: int, r: int, tree: int) -> tuple[int, list[int]]:
    """Member r's (parent, children) in tree 0 or 1 of NCCL's double binary tree (mirrored or shifted)."""
    if tree == 0:
        parent, d0, d1 = _btree(n, r)
        return parent, [d for d in (d0, d1) if d >= 0]
    if n % 2:
        parent, d0, d1 = _btree(n, (r - 1) % n)
        return ((parent + 1) % n if parent >= 0 else -1), [(d + 1) % n for d in (d0, d1) if d >= 0]
    parent, d0, d1 = _btree(n, n - 1 - r)
    return (n - 1 - parent if parent >= 0 else -1), [n - 1 - d for d in (d0, d1) if d >= 0]


def tree_links(topo: NcclTopo, rank: int, channel: int) -> tuple[tuple[int, int, int], int]:
    """Rank's (three children padded with -1, parent) in channel's tree: node heads in the tree, chains."""
    p = topo.nproc_per_node
    node, local = divmod(rank, p)
    chain_child = [rank + 1] if local < p - 1 else []
    if local > 0:
        children, parent = chain_child, rank - 1
    else:
        node_parent, node_children = _dtree(topo.nnodes, node, channel % 2)
        children = chain_child + [c * p for c in node_children]
        parent = node_parent * p if node_parent >= 0 else -1
    padded = (*children, *([-1] * (_TREE_ARITY - len(children))))
    return (padded[0], padded[1], padded[2]), parent


def tree_line(topo: NcclTopo, rank: int) -> str:
    """`Trees [0] c/c/c->r->p [1] ...`: rank's children and parent in every channel's tree."""
    parts = []
    for c in range(topo.channels):
        (d0, d1, d2), parent = tree_links(topo, rank, c)
        parts.append(f"[{c}] {d0}/{d1}/{d2}->{rank}->{parent}")
    return "Trees " + " ".join(parts)


def _node_ip(seed: int, node: int) -> str:
    """A private 10.x.y.z address per node: one subnet per job (seed), hosts numbered up from a base."""
    h = rand.hash64(seed, "nccl-subnet")
    index = node + h % 40
    return f"10.{1 + (h >> 8) % 250}.{(h >> 16) % 200 + index // 250}.{index % 250 + 2}"


def _cpuset(cpus: Sequence[int]) -> str:
    """A CPU set as NCCL prints it: hex bytes from the highest non-zero one, a comma every 32 bits."""
    mask = 0
    for c in cpus:
        mask |= 1 << c
    nbytes = max(1, (mask.bit_length() + 7) // 8)
    out = []
    for o in range(nbytes - 1, -1, -1):
        out.append(f"{(mask >> (8 * o)) & 0xFF:02x}")
        if o and o % 4 == 0:
            out.append(",")
    return "".join(out)


def _affinity(topo: NcclTopo, local_rank: int) -> str:
    """The CPUs of the socket the GPU hangs off: its physical cores and their SMT siblings."""
    half = topo.cpu_cores // 2
    socket = min(1, (local_rank % (2 * _GPUS_PER_SOCKET)) // _GPUS_PER_SOCKET)
    cores = range(socket * half, (socket + 1) * half)
    return _cpuset([*cores, *(topo.cpu_cores + c for c in cores)])


def _nic(topo: NcclTopo, local_rank: int) -> int:
    """The NIC closest to a GPU: one per GPU on 8-NIC nodes, shared by neighbours on nodes with fewer."""
    return (
        local_rank * topo.nics_per_node // max(topo.nproc_per_node, topo.nics_per_node) % topo.nics_per_node
    )


def _comm_ptr(seed: int, rank: int) -> str:
    """The ncclComm address: a heap address per process, the same offset inside the arena for the job."""
    job = rand.hash64(seed, "nccl-comm")
    h = rand.hash64(seed, "nccl-comm", rank)
    hi = 0x7F0000 | (h & 0xFFFF) if job & 1 else 0x140000 + h % 0x20000
    lo = ((job >> 8) % 0x1000) << 4
    return f"0x{hi:06x}{lo:06x}"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _thread_thresholds(topo: NcclTopo) -> str:
    ring_ll = 8 * topo.world  # NCCL scales the ring LL threshold with the rank count
    if _version_tuple(topo.nccl_version) < (2, 12):
        return f"threadThresholds 8/8/64 | {ring_ll}/8/64 | 8/8/512"
    return f"threadThresholds 8/8/64 | {ring_ll}/8/64 | 512 | 512"


def nccl_init_lines(topo: NcclTopo, rank: int, *, pid: int, tid: int, seed: int) -> list[str]:
    """One rank's NCCL_DEBUG=INFO init lines in order, from `Bootstrap` to `Init COMPLETE`."""
    if not 0 <= rank < topo.world:
        raise ValueError(f"rank {rank} outside 0..{topo.world - 1}")
    p = topo.nproc_per_node
    node, local = divmod(rank, p)
    host = topo.hosts[node]
    lib = "rccl" if topo.gpu_vendor == "amd" else "nccl"
    ip = _node_ip(seed, node)

    def bus(r: int) -> str:
        return bus_id(r % p, topo.bus_ids)

    def peer(a: int, b: int) -> str:
        return f"{a}[{bus(a)}] -> {b}[{bus(b)}]"

    main = f"{host}:{pid}:{pid} [{local}] NCCL INFO "
    init = f"{host}:{pid}:{tid} [{local}] NCCL INFO "
    nics = " ".join(f"[{i}]{topo.nic_prefix}{i}:1/{topo.link_layer}" for i in range(topo.nics_per_node))
    lines = [
        f"{main}Bootstrap : Using {topo.oob_if}:{ip}<0>",
        f"{main}NET/Plugin : No plugin found (lib{lib}-net.so), using internal implementation",
        f"{main}NET/IB : Using {nics} ; OOB {topo.oob_if}:{ip}<0>",
        f"{main}Using network IB",
    ]
    if rank == 0:
        runtime = f"hip{topo.cuda_version}" if topo.gpu_vendor == "amd" else f"cuda{topo.cuda_version}"
        lines.append(f"{lib.upper()} version {topo.nccl_version}+{runtime}")

    shown = range(min(topo.channels, PRINTED_CHANNELS))
    rings = {c: ring_order(topo, c) for c in shown}
    if rank == 0:
        for c, order in rings.items():
            ranks = "".join(f" {r:3d}" for r in order[:RING_LINE_MAX_RANKS])
            lines.append(f"{init}Channel {c:02d}/{topo.channels:02d} : {ranks}")
    lines.append(init + tree_line(topo, rank))
    lines.append(f"{init}Setting affinity for GPU {local} to {_affinity(topo, local)}")

    nic = _nic(topo, local)
    if topo.world > 1:
        for c, order in rings.items():
            pos = order.index(rank)
            prev, nxt = order[pos - 1], order[(pos + 1) % len(order)]
            if prev // p != node:
                lines.append(f"{init}Channel {c:02d} : {peer(prev, rank)} [receive] via NET/IB/{nic}")
            if nxt // p == node:
                lines.append(f"{init}Channel {c:02d} : {peer(rank, nxt)} via P2P/IPC/read")
            else:
                lines.append(f"{init}Channel {c:02d} : {peer(rank, nxt)} [send] via NET/IB/{nic}")
    lines.append(f"{init}Connected all rings")
    for c in shown:
        children, parent = tree_links(topo, rank, c)
        for child in children:
            if child >= 0 and child // p != node:
                lines.append(f"{init}Channel {c:02d} : {peer(child, rank)} [receive] via NET/IB/{nic}")
        if parent >= 0 and parent // p != node:
            lines.append(f"{init}Channel {c:02d} : {peer(rank, parent)} [send] via NET/IB/{nic}")
    lines += [
        f"{init}Connected all trees",
        init + _thread_thresholds(topo),
        f"{init}{topo.channels} coll channels, {topo.channels} p2p channels, 1 p2p channels per peer",
        f"{init}comm {_comm_ptr(seed, rank)} rank {rank} nranks {topo.world} cudaDev {local} "
        f"busId {bus(rank)} - Init COMPLETE",
    ]
    return lines


def nccl_topo_for(cluster: ClusterSpec, nnodes: int, nproc_per_node: int, hosts: Sequence[str]) -> NcclTopo:
    """The NcclTopo of a job on `nnodes` nodes of a cluster preset, `nproc_per_node` ranks each."""
    roce = "roce" in cluster.fabric.lower()
    name = cluster.nic_name
    # Device names: mlx5_0, mlx5_1 ... but bnxt_re0, bnxt_re1 ...: a separator only after a digit.
    prefix = name + "_" if name[-1:].isdigit() else name
    version = cluster.gpu.cuda_version.removeprefix("ROCm ").strip()
    return NcclTopo(
        nnodes=nnodes,
        nproc_per_node=nproc_per_node,
        hosts=tuple(hosts),
        nics_per_node=cluster.nics_per_node,
        nic_prefix=prefix,
        gpu_vendor=cluster.gpu.vendor,
        cuda_version=version,
        link_layer="RoCE" if roce else "IB",
        oob_if="bond0" if roce else "ib0",
        cpu_cores=cluster.cpu_cores,
        bus_ids=cluster.bus_ids,
    )
