"""What NCCL (or RCCL) prints per rank at communicator init with NCCL_DEBUG=INFO, in its version's forms.

Lines are `{host}:{pid}:{tid} [{cudaDev}] NCCL INFO {message}`. torch calls ncclCommInitRankConfig from
the main thread, and NCCL runs the init job on a thread of its own (group.cc): the version and bootstrap
lines carry tid == pid, the init lines the caller's `tid`, and the connections NCCL makes at the first
collective (runtime connect, on by default with cuMem since 2.22) a later thread. Every form below is
the printf of NCCL's source at the stack's release (src/ paths of github.com/NVIDIA/nccl at v2.29.7-1),
checked against real logs of 2.27.7 and 2.29.3; `NCCL_FORMS` names the differences by release.

Topology as NCCL 2.2x builds it on NVSwitch nodes: one NVLink domain (a node, or a GB200 NVL72 rack)
gets 2 channels per NVLink (24 on A100, 32 on H100/B200, 16 on H800) and one ring in rank order; across
nodes, 2 channels per NIC rail, each channel entering a node at one GPU and walking the node's GPUs
downwards (as the 2.29.3 16-rank log shows), trees with that GPU as the node's head and NCCL's double
binary tree between nodes. Output per rank is bounded by the channel count (at most 64), whatever the
scale: ring lines on rank 0 only, cut at 128 characters as dumpLine() does.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fakerun.sim import rand
from fakerun.sim.stack import DEFAULT_STACK, Stack, stack_for

if TYPE_CHECKING:
    from fakerun.presets import ClusterSpec

__all__ = [
    "COLLNET_NODE_THRESHOLD",
    "NCCL_FORMS",
    "NcclTopo",
    "bus_id",
    "coll_channels",
    "collnet_heads",
    "nccl_init_lines",
    "nccl_topo_for",
    "nvls_heads",
    "pci_bus_id",
    "ring_order",
    "tree_line",
    "tree_links",
]

# PCI bus numbers of the eight GPUs of a DGX H100, in CUDA device order.
DGX_H100_BUS_IDS: tuple[str, ...] = ("18", "2A", "3A", "5D", "9A", "AB", "BA", "DB")
RING_LINE_LENGTH = 128  # src/graph/rings.cc dumpLine(): a 128-byte buffer, "..." when cut
MAX_CHANNELS = 64  # src/include/device.h MAXCHANNELS
_TREE_ARITY = 3
_NVLS_CHUNK = 128 * 1024  # src/transport/nvls.cc NCCL_NVLS_CHUNKSIZE default
_NCCL_STEPS = 8
_EC2_HOST = re.compile(r"ip-(\d{1,3})-(\d{1,3})-(\d{1,3})-(\d{1,3})\b")  # ip-10-1-23-45: its private IPv4
_RAS_PORT = 28028  # src/ras/ras_internal.h: the RAS client socket's default port
COLLNET_NODE_THRESHOLD = 2  # init.cc:798 NCCL_COLLNET_NODE_THRESHOLD default
# HPC-X's NCCL plugin (github.com/Mellanox/nccl-rdma-sharp-plugins) where NGC containers and HPC-X put it; its
# net plugin is named after its version until init switches it to its IB transport (p2p_plugin.c pluginSetup).
_SHARP_LIB = "/opt/hpcx/nccl_rdma_sharp_plugin/lib/libnccl-net.so"
_SHARP_NET = "IBext_v11"  # ib_plugin.c ibPlugin_v11
_STRTOL = re.compile(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")

# Per release family (sim.stack.NCCL_FORMATS), the forms that differ: source file:line at the tag for 2.29,
# RCCL 2.27.7 (hipified NCCL 2.27) as its logs show it. Keys are read by nccl_init_lines.
NCCL_FORMS: dict[str, dict[str, str]] = {
    "2.29": {
        "env_plugin": "ENV/Plugin: Could not find: libnccl-env.so",  # plugin/plugin_open.cc:108
        "bootstrap": "Bootstrap: Using {oob}:{ip}<0>",  # bootstrap.cc:137
        "git": "NCCL git version {git}",  # init.cc:657, misc/git_version.cc:11
        "affinity": "ncclTopoGetCpuAffinity: Affinity for GPU {dev} is {gpu}. (GPU affinity = {gpu} ; "
        "CPU affinity = {cpu}).",  # graph/topo.cc:1812-1826
        "p2p_type": "Check P2P Type isAllDirectP2p 1 directMode 0 isAllCudaP2p 1",  # transport.cc:113
        "start": "[Rank {rank}] ncclCommInitRankConfig comm {comm} rank {rank} nranks {n} cudaDev {dev} "
        "nvmlDev {dev} busId {bus} commId {commid} - Init START",  # init.cc:1699
        "complete": "ncclCommInitRankConfig comm {comm} rank {rank} nranks {n} cudaDev {dev} nvmlDev {dev} "
        "busId {bus} commId {commid} - Init COMPLETE",  # init.cc:1727
        "p2p": "P2P/CUMEM",  # transport/p2p.cc:412-414 (MNNVL on a multi-node NVLink domain)
        "tuner": "TUNER/Plugin: Could not find: libnccl-tuner.so",  # plugin/plugin_open.cc:108
        "profiler": "PROFILER/Plugin: Could not find: libnccl-profiler.so",
    },
    "2.27-rccl": {
        "env_plugin": "",
        "bootstrap": "Bootstrap: Using {oob}:{ip}<0>",
        "git": "",
        "affinity": "Setting affinity for GPU {dev} to {gpu}",
        "p2p_type": "Check P2P Type isAllDirectP2p 1 directMode 0",
        "start": "ncclCommInitRankConfig comm {comm} rank {rank} nranks {n} cudaDev {dev} nvmlDev {dev} "
        "busId {bus} commId {commid} - Init START",
        "complete": "ncclCommInitRankConfig comm {comm} rank {rank} nranks {n} cudaDev {dev} nvmlDev {dev} "
        "busId {bus} commId {commid} - Init COMPLETE",
        "p2p": "P2P/IPC",
        # NCCL 2.27's plugin loader still names its fallback (seen in 2.27.7 logs).
        "tuner": "TUNER/Plugin: Could not find: libnccl-tuner.so. Using internal tuner plugin.",
        "profiler": "PROFILER/Plugin: Could not find: libnccl-profiler.so.",
    },
}


@dataclass(frozen=True)
class NcclTopo:
    """The job as NCCL sees it: nodes, GPUs, host names, NICs, NVLink and NVSwitch, CPUs, the stack."""

    nnodes: int
    nproc_per_node: int
    hosts: tuple[str, ...]  # one per node
    nics_per_node: int
    nic_prefix: str  # "mlx5_" gives mlx5_0, mlx5_1, ...
    gpu_vendor: str  # "nvidia" | "amd" (RCCL prints the same "NCCL INFO" lines)
    stack: Stack = DEFAULT_STACK
    channels: int = 0  # coll channels; 0: what NCCL derives from the topology (coll_channels)
    transport: str = "ib"  # ib | roce | efa
    oob_if: str = "ib0"  # the bootstrap (out-of-band) interface
    cpu_cores: int = 112  # physical cores per node over all sockets; SMT siblings follow them
    threads_per_core: int = 2
    cpu_sockets: int = 2
    bus_ids: tuple[str, ...] = ()  # PCI bus per local GPU ("18", "0008:01"); () for a DGX H100's
    nvlinks: int = 18  # NVLink links per GPU (0: PCIe only)
    ampere: bool = False  # sm80 reads over NVLink: P2P connections end in "/read"
    blackwell: bool = False  # sm100: 24 NVLS channels in one NVLink domain, 32 across (nvls.cc:149-151)
    nvls: bool = False  # NVSwitch with NVLink SHARP (Hopper and later)
    sharp: bool = False  # SHARP in the InfiniBand switches, reached through HPC-X's plugin (collnet_plugin)
    collnet_enable: str | None = None  # NCCL_COLLNET_ENABLE as the job's environment spells it; None: unset
    mnnvl_domain: int = 0  # GPUs per multi-node NVLink domain; 0: none
    gid_index: int = 3  # NCCL_IB_GID_INDEX on RoCE

    def __post_init__(self) -> None:
        if self.nnodes < 1 or self.nproc_per_node < 1:
            raise ValueError(f"need at least one node and one GPU, got {self.nnodes} x {self.nproc_per_node}")
        if len(self.hosts) != self.nnodes:
            raise ValueError(f"need one host name per node: {len(self.hosts)} for {self.nnodes} nodes")
        if self.nics_per_node < 1 or self.channels < 0 or self.cpu_cores < 2:
            raise ValueError("nics_per_node must be positive, channels not negative, cpu_cores at least 2")
        if self.gpu_vendor not in ("nvidia", "amd"):
            raise ValueError(f"gpu_vendor must be nvidia or amd, got {self.gpu_vendor!r}")
        if self.transport not in ("ib", "roce", "efa"):
            raise ValueError(f"transport must be ib, roce or efa, got {self.transport!r}")

    @property
    def world(self) -> int:
        """Number of ranks."""
        return self.nnodes * self.nproc_per_node

    @property
    def domain_ranks(self) -> int:
        """Ranks in one NVLink domain: a node, or the MNNVL rack's share of the job."""
        if self.mnnvl_domain > self.nproc_per_node and self.gpu_vendor == "nvidia":
            return min(self.world, self.mnnvl_domain)
        return self.nproc_per_node

    @property
    def single_domain(self) -> bool:
        """Whether every rank shares one NVLink domain (one node, or one NVL72 rack)."""
        return self.domain_ranks >= self.world

    @property
    def mnnvl(self) -> bool:
        """Whether NCCL turns MNNVL on: several nodes in one NVLink fabric (init.cc:988, mnnvl.cc:87)."""
        return self.mnnvl_domain > self.nproc_per_node and self.nnodes > 1 and self.gpu_vendor == "nvidia"

    @property
    def collnet_setting(self) -> int | None:
        """NCCL_COLLNET_ENABLE as NCCL reads it (strtol, base 0: "1", "0x1"; words are 0); None when unset."""
        if self.collnet_enable is None:
            return None
        m = _STRTOL.match(self.collnet_enable)
        if not m:
            return 0
        sign, digits = m.groups()
        base = 16 if digits[:2].lower() == "0x" else 8 if digits.startswith("0") else 10
        value = int(digits, base)
        return -value if sign == "-" else value

    @property
    def collnet_plugin(self) -> bool:
        """Whether NCCL loads HPC-X's SHARP plugin: a job that enables CollNet on a SHARP fabric brings it."""
        fabric = self.sharp and self.transport == "ib" and self.gpu_vendor == "nvidia"
        return fabric and self.collnet_setting == 1

    @property
    def collnet_nodes(self) -> int:
        """comm->nNodes as CollNet counts it: NVLink domains (a GB200 rack is one)."""
        return -(-self.world // self.domain_ranks)

    @property
    def collnet(self) -> bool:
        """Whether NCCL sets CollNet up: the plugin, and at least NCCL_COLLNET_NODE_THRESHOLD nodes."""
        return self.collnet_plugin and self.collnet_nodes >= COLLNET_NODE_THRESHOLD


# ----------------------------------------------------------------------------------------------------
# PCI ids


def _bus_number(local_rank: int, bus_ids: Sequence[str]) -> tuple[int, int]:
    """(PCI domain, bus) of a local GPU; GPUs beyond the table go to the next PCI domain."""
    table = tuple(bus_ids) or DGX_H100_BUS_IDS
    extra, slot = divmod(local_rank, len(table))
    domains = [int(entry.rpartition(":")[0] or "0", 16) for entry in table]
    # Past the table, repeat it in higher domains that no listed GPU uses.
    return domains[slot] + extra * (max(domains) + 1), int(table[slot].rpartition(":")[2], 16)


def bus_id(local_rank: int, bus_ids: Sequence[str] = ()) -> str:
    """The bus id as NCCL prints it in `busId`: `18000` for 0000:18:00.0, `8001000` for 0008:01:00.0."""
    domain, bus = _bus_number(local_rank, bus_ids)
    return f"{(domain << 20) | (bus << 12):x}"


def pci_bus_id(local_rank: int, bus_ids: Sequence[str] = ()) -> str:
    """The full PCI address as nvidia-smi prints it: `00000000:18:00.0`."""
    domain, bus = _bus_number(local_rank, bus_ids)
    return f"{domain:08X}:{bus:02X}:00.0"


# ----------------------------------------------------------------------------------------------------
# Channels, rings and trees


def coll_channels(topo: NcclTopo) -> int:
    """NCCL's coll channel count: 2 per NVLink inside an NVLink domain, 2 per NIC rail across nodes."""
    if topo.channels:
        return topo.channels
    if topo.world == 1:
        return MAX_CHANNELS  # one rank: every channel is a self-loop ("Channel 00/64 : 0")
    if topo.single_domain:
        links = topo.nvlinks or 2  # PCIe-only GPUs get NCCL's minimum of 2
        return max(2, min(32, 2 * links))
    rails = min(topo.nics_per_node, topo.nproc_per_node) if topo.transport != "efa" else topo.nproc_per_node
    return max(2, min(32, 2 * rails))


def _rails(topo: NcclTopo) -> int:
    """Distinct ring entry GPUs per node: each channel pair enters a node at another GPU."""
    return max(1, min(coll_channels(topo) // 2, topo.nproc_per_node))


def _head(topo: NcclTopo, channel: int) -> int:
    """The local GPU where channel's ring enters each node and its tree heads it."""
    k = _rails(topo)
    return (channel % k) * topo.nproc_per_node // k


def ring_order(topo: NcclTopo, channel: int) -> list[int]:
    """Channel `channel`'s ring as rank 0 prints it: from rank 0, each node's GPUs in one run."""
    if topo.single_domain:
        return list(range(topo.world))
    p = topo.nproc_per_node
    s = _head(topo, channel)
    segment = [(s - i) % p for i in range(p)]  # enter at s, walk down, leave at s + 1
    ring = [node * p + local for node in range(topo.nnodes) for local in segment]
    start = ring.index(0)
    return ring[start:] + ring[:start]


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
    if topo.single_domain:
        children = [rank + 1] if rank + 1 < topo.world else []
        parent = rank - 1
    else:
        p = topo.nproc_per_node
        node, local = divmod(rank, p)
        head = _head(topo, channel)
        step = 1 if channel % 2 == 0 else -1  # even channels chain upwards from the head, odd downwards
        pos = (local - head) * step % p
        children = [node * p + (local + step) % p] if pos < p - 1 else []
        if pos:
            parent = node * p + (local - step) % p
        else:
            tree = 0 if channel < coll_channels(topo) // 2 else 1
            node_parent, node_children = _dtree(topo.nnodes, node, tree)
            children += [c * p + head for c in node_children]
            parent = node_parent * p + head if node_parent >= 0 else -1
    padded = (*children, *([-1] * (_TREE_ARITY - len(children))))
    return (padded[0], padded[1], padded[2]), parent


def tree_line(topo: NcclTopo, rank: int) -> str:
    """`Trees [0] c/c/c->r->p [1] ...`: rank's children and parent in every channel's tree (init.cc:1304)."""
    parts = []
    for c in range(coll_channels(topo)):
        (d0, d1, d2), parent = tree_links(topo, rank, c)
        parts.append(f" [{c}] {d0}/{d1}/{d2}->{rank}->{parent}")
    return "Trees" + "".join(parts)


def _ring_line(topo: NcclTopo, channel: int, nch: int) -> str:
    """`Channel 00/16 :  0  7 ...`: dumpLine() (graph/rings.cc:10) with ranks padded to the widest."""
    width = len(str(topo.world - 1))
    line = f"Channel {channel:02d}/{nch:02d} :"
    for r in ring_order(topo, channel):
        line += f" {r:{width}d}"
        if len(line) >= RING_LINE_LENGTH - 1:
            break
    if len(line) >= RING_LINE_LENGTH:
        line = line[: RING_LINE_LENGTH - 4] + "..."
    return line


# ----------------------------------------------------------------------------------------------------
# Identifiers and machine details


def _node_ip(seed: int, node: int, host: str = "") -> str:
    """A node's private 10.x.y.z address: the one an EC2 host name spells, else one subnet per job (seed)."""
    spelled = _EC2_HOST.match(host)
    if spelled:
        return ".".join(spelled.groups())
    h = rand.hash64(seed, "nccl-subnet")
    index = node + h % 40
    return f"10.{1 + (h >> 8) % 250}.{(h >> 16) % 200 + index // 250}.{index % 250 + 2}"


def _ranges(cpus: Sequence[int]) -> str:
    """A CPU set as ncclCpusetToRangeStr prints it: `0-55,112-167`."""
    out: list[str] = []
    ordered = sorted(set(cpus))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(f"{ordered[i]}-{ordered[j]}" if j > i else str(ordered[i]))
        i = j + 1
    return ",".join(out)


def gpu_socket(topo: NcclTopo, local_rank: int) -> int:
    """The CPU socket (NUMA node) a GPU hangs off: the GPUs split evenly over the sockets, in order."""
    gpus_per_socket = max(1, -(-topo.nproc_per_node // topo.cpu_sockets))
    return min(topo.cpu_sockets - 1, local_rank // gpus_per_socket)


def cpu_affinity(topo: NcclTopo, local_rank: int) -> str:
    """The CPUs of a GPU's socket as a range list (`0-55,112-167`), as NCCL and nvidia-smi print them."""
    return _ranges(_socket_cpus(topo, local_rank))


def _socket_cpus(topo: NcclTopo, local_rank: int) -> list[int]:
    """The CPUs of the GPU's socket: its cores and their SMT siblings (numbered after all the cores)."""
    per_socket = topo.cpu_cores // topo.cpu_sockets
    socket = gpu_socket(topo, local_rank)
    cores = range(socket * per_socket, (socket + 1) * per_socket)
    return [t * topo.cpu_cores + c for t in range(topo.threads_per_core) for c in cores]


def nvls_heads(topo: NcclTopo) -> int:
    """NVLS heads per node (nHeads): one per NIC rail across nodes, half the GPUs inside one domain."""
    heads = topo.nics_per_node if not topo.single_domain else max(1, topo.nproc_per_node // 2)
    return min(heads, topo.nproc_per_node)


def collnet_heads(topo: NcclTopo) -> list[int]:
    """The local GPUs that head CollNet, one per rail (coll_net.cc ncclCollNetSetup, in head order).

    With NVLS they are NVLS's heads; without, the CollNet Direct graph's, the first GPU beside each NIC.
    """
    if topo.nvls:
        return list(range(nvls_heads(topo)))
    p = topo.nproc_per_node
    return [g for g in range(p) if g == 0 or _nic(topo, g) != _nic(topo, g - 1)]


def _nic(topo: NcclTopo, local_rank: int) -> int:
    """The NIC closest to a GPU: one per GPU on 8-NIC nodes, shared by neighbours on nodes with fewer."""
    n = topo.nics_per_node
    return local_rank * n // max(topo.nproc_per_node, n) % n


def nic_index(topo: NcclTopo, local_rank: int) -> int:
    """The index of the NIC closest to a GPU (see _nic)."""
    return _nic(topo, local_rank)


def _comm_ptr(seed: int, rank: int, comm: int = 0) -> str:
    """An ncclComm address: calloc'd on the main thread, so in the process's brk heap (0x55.../0x56...)."""
    h = rand.hash64(seed, "nccl-comm-ptr", rank, comm)
    base = 0x550000000000 + (h >> 24) % 0x20000000000  # PIE heap: 0x55xx_xxxx_xxxx .. 0x56xx_xxxx_xxxx
    return f"0x{base & ~0xF:x}"


def _comm_id(seed: int, comm: int = 0) -> str:
    """The commId hash of the communicator's unique id: one random 64-bit value, the same on every rank."""
    return f"0x{rand.hash64(seed, 'nccl-comm-id', comm):x}"


def _seconds(seed: int, stream: str, rank: int, low: float, high: float) -> float:
    return low + (high - low) * rand.uniform(seed, stream, rank)


@dataclass(frozen=True)
class InitTimings:
    """The seconds NCCL's init of one rank's first communicator takes, as its `timings` lines print them."""

    boot: float  # bootstrap: create, send, recv, ring and the rest
    create: float
    send: float
    recv: float
    ring: float
    total: float  # ncclCommInitRankConfig, Init START to Init COMPLETE
    kernels: float
    alloc: float
    topo: float
    connections: float
    graphs: float

    @property
    def rest(self) -> float:
        """The part of `total` the line's other fields do not account for."""
        named = self.kernels + self.alloc + self.boot + self.topo + self.connections + self.graphs
        return max(0.0, self.total - named)


def init_timings(seed: int, rank: int, nnodes: int) -> InitTimings:
    """One rank's NCCL init timings: the printed figures and the pace of the lines that print them."""
    create = _seconds(seed, "nccl-boot-create", rank, 0.000015, 0.00005)
    send = _seconds(seed, "nccl-boot-send", rank, 0.00005, 0.0002)
    recv = _seconds(seed, "nccl-boot-recv", rank, 0.00008, 0.25 if rank else 0.0006)
    ring = _seconds(seed, "nccl-boot-ring", rank, 0.00005, 0.006 * nnodes**0.5)
    boot = create + send + recv + ring + _seconds(seed, "nccl-boot-rest", rank, 0.0001, 0.0006)
    return InitTimings(
        boot=boot,
        create=create,
        send=send,
        recv=recv,
        ring=ring,
        total=boot + _seconds(seed, "nccl-init-total", rank, 0.35, 0.9),
        kernels=_seconds(seed, "nccl-init-kernels", rank, 0.15, 0.3),
        alloc=_seconds(seed, "nccl-init-alloc", rank, 0.02, 0.09),
        topo=_seconds(seed, "nccl-init-topo", rank, 0.01, 0.04),
        connections=_seconds(seed, "nccl-init-conn", rank, 0.01, 0.05),
        graphs=_seconds(seed, "nccl-init-graphs", rank, 0.0, 0.02),
    )


# The parts of one rank's init output, in order, each printed when the rank gets there: the main thread's
# ncclInit (bootstrap interface, versions), the init thread up to its bootstrap ring, the topology search,
# the channels it found, Init COMPLETE with its timings, and the first collective's connections.
INIT_PARTS = ("bootstrap", "init", "topology", "channels", "complete", "connect")


@dataclass(frozen=True)
class InitSchedule:
    """Seconds after the first collective's start at which each part of a rank's init output prints."""

    bootstrap: float
    init: float
    topology: float
    channels: float
    complete: float
    connect: float
    end: float  # the first collective's connections are made: the communicator is ready

    def at(self, part: str) -> float:
        """The offset of one of INIT_PARTS."""
        return float(getattr(self, part))


def init_schedule(seed: int, rank: int, nnodes: int) -> InitSchedule:
    """When each part of a rank's NCCL init prints: the gaps are the printed timings' own."""
    t = init_timings(seed, rank, nnodes)
    bootstrap = _seconds(seed, "nccl-at-bootstrap", rank, 0.02, 0.25)  # ncclInit: env, plugins, interfaces
    init = bootstrap + _seconds(seed, "nccl-at-init", rank, 0.005, 0.05)  # cudaFree, the init thread starts
    complete = init + t.total
    # The search's end: after the topology and graph phases the line's timings name.
    channels = (
        init + t.boot + t.topo + t.graphs + (t.total - t.boot) * _seconds(seed, "nccl-at-ch", rank, 0.2, 0.6)
    )
    # The first collective is launched once init returns; its connections are set up in a few ms per peer.
    connect = complete + _seconds(seed, "nccl-at-connect", rank, 0.002, 0.02)
    end = connect + _seconds(seed, "nccl-at-end", rank, 0.02, 0.15) * nnodes**0.25
    return InitSchedule(
        bootstrap=bootstrap,
        init=init,
        topology=init + t.boot,
        channels=min(channels, complete),
        complete=complete,
        connect=connect,
        end=end,
    )


def _nic_list(topo: NcclTopo, suffix: str = "") -> str:
    """`[0]mlx5_0:1/IB [1]mlx5_1:1/IB ...` (transport/net_ib/init.cc:376); `suffix` after each (`/SHARP`)."""
    layer = "RoCE" if topo.transport == "roce" else "IB"
    return "".join(f" [{i}]{topo.nic_prefix}{i}:1/{layer}{suffix}" for i in range(topo.nics_per_node))


# ----------------------------------------------------------------------------------------------------
# CollNet: SHARP through HPC-X's plugin (nccl-rdma-sharp-plugins, its v11 interface for NCCL 2.28/2.29)


def _collnet_env_lines(topo: NcclTopo) -> list[str]:
    """What parsing NCCL_COLLNET_ENABLE prints on the main thread (init.cc:1885-1935), where it is set.

    torch leaves config.collnetEnable unset, which NCCL's default has made 0 by then: so "reset" too.
    """
    value = topo.collnet_setting
    if value is None or topo.gpu_vendor != "nvidia":
        return []
    out = [
        f"Comm config collnetEnable reset to NCCL_COLLNET_ENABLE={value}",
        f"NCCL_COLLNET_ENABLE set by environment to {value}.",
    ]
    if value not in (0, 1):
        out.append(f"collnetEnable {value} is not a valid value 0/1, set it to 0")
    return out


def _sharp_plugin_lines(topo: NcclTopo, ip: str) -> list[str]:
    """HPC-X's plugin loaded and initialized by NCCL (plugin/net.cc, plugin/gin.cc) in place of its own IB."""
    return [
        "NET/Plugin: Loaded net plugin NCCL RDMA Plugin v11 (v11)",  # plugin/net/net_v11.cc:18
        "NET/Plugin: Loaded collnet plugin SHARP (v11)",  # plugin/net/net_v11.cc:27
        f"Successfully loaded external network plugin {_SHARP_LIB}",  # plugin/net.cc:117
        f"Plugin Path : {_SHARP_LIB}",  # the plugin's p2p_plugin.c pluginSetup
        f"P2P plugin v11 {_SHARP_NET}",  # p2p_plugin.c pluginInit_v11
        # p2p_plugin.c nccl_p2p_ib_init: every InfiniBand port is a SHARP device.
        f"NET/IB : Using{_nic_list(topo, '/SHARP')} [RO]; OOB {topo.oob_if}:{ip}<0>",
        f"Initialized NET plugin {_SHARP_NET}",  # plugin/net.cc:172
        f"Assigned NET plugin {_SHARP_NET} to comm",  # plugin/net.cc:211
        # GIN tries the NET plugin's library too and prints this though it holds no GIN (plugin/gin.cc:84).
        f"Successfully loaded external gin plugin {_SHARP_LIB}",
        "Assigned GIN plugin GIN_IB_GDAKI to comm",
        "Assigned RMA plugin GIN_IB_PROXY to comm",
        f"Using network {_SHARP_NET}",  # init.cc:457
    ]


def _collnet_setup_lines(topo: NcclTopo, rank: int, init: str, proxy: str, nch: int) -> list[str]:
    """A head rank's CollNet connections at init (coll_net.cc:184/208 per channel, the SHARP group once).

    Each head joins, on every channel, the CollNet group of its rail's heads over the nodes: the line names
    the head's index (the CollNet graph channel), 0 for receive and 1 for send, and its NIC. The plugin's
    proxy connects the SHARP group at the first channel (sharp_plugin.c ncclSharpConnect).
    """
    p = topo.nproc_per_node
    local = rank % p
    heads = collnet_heads(topo)
    if local not in heads:
        return []
    h = heads.index(local)
    nic = _nic(topo, local)
    via = f"via COLLNET/SHARP/{nic}/GDRDMA"
    node = rank // topo.domain_ranks
    out: list[str] = []
    for c in range(nch):
        out.append(f"{init}CollNet {h:02d}/0 : {rank} [receive] {via}")
        if c == 0:
            out.append(
                f"{proxy}SHARP rank {node}/{topo.collnet_nodes} initialized on {topo.nic_prefix}{nic}:1"
            )
        out.append(f"{init}CollNet {h:02d}/1 : {rank} [send] {via}")
    return out


# ----------------------------------------------------------------------------------------------------
# aws-ofi-nccl (EFA): its lines at the stack's release (src/ of github.com/aws/aws-ofi-nccl at v1.19.0),
# checked against real logs of 1.18.0 and 1.19.0 on p5/p5en/g7e.

_OFI_LIB = "/opt/amazon/ofi-nccl/lib/libnccl-net.so"  # where the EFA installer puts the plugin
# What the plugin sets for NCCL on p5/p5e (platform-aws.cpp platform_data_map "p5/p5e", FI_EFA_FORK_SAFE, the
# tuner, the topology file it writes), printed in env_manager's (std::map) order as "Adding NAME=VALUE".
_OFI_P5_ENV = (
    ("FI_EFA_FORK_SAFE", "1"),
    ("NCCL_BUFFSIZE", "8388608"),
    ("NCCL_NET_FORCE_FLUSH", "0"),
    ("NCCL_NVLSTREE_MAX_CHUNKSIZE", "524288"),
    ("NCCL_NVLS_CHUNKSIZE", "524288"),
    ("NCCL_P2P_NET_CHUNKSIZE", "524288"),
    ("NCCL_TOPO_FILE", ""),  # the memfd it wrote, as /proc/self/fd/N
    ("NCCL_TUNER_PLUGIN", "libnccl-net.so"),
)
_OFI_NVLS_CHUNK = 524288


def efa_nics(topo: NcclTopo) -> list[list[int]]:
    """Each GPU's EFA devices' PCI buses: on a p5, the four buses below the GPU's (4f-52 for 53)."""
    gpus = [_bus_number(g, topo.bus_ids)[1] for g in range(len(topo.bus_ids) or topo.nproc_per_node)]
    per = max(1, topo.nics_per_node // len(gpus))
    return [[bus - per + i for i in range(per)] for bus in gpus]


def _topo_fd(seed: int, rank: int) -> int:
    """The plugin's memfd: above the descriptors torch, CUDA and the bootstrap sockets hold by then."""
    return 60 + rand.hash64(seed, "ofi-topo-fd", rank) % 90


def _efa_plugin_lines(topo: NcclTopo, seed: int, rank: int, ip: str) -> list[str]:
    """The NET plugin's load and init (plugin/net.cc, aws-ofi-nccl's nccl_ofi_net.cpp, platform-aws.cpp)."""
    stack = topo.stack
    groups = efa_nics(topo)
    node = rank // topo.nproc_per_node
    out = [
        "NET/Plugin: Loaded net plugin Libfabric (v11)",  # plugin/net/net_v11.cc:18
        f"Successfully loaded external network plugin {_OFI_LIB}",  # plugin/net.cc:117
        f"NET/OFI Initializing aws-ofi-nccl {stack.ofi_nccl}",
        f"NET/OFI Using Libfabric version {stack.libfabric}",
        f"NET/OFI Using CUDA driver version {stack.cuda_driver_version} with runtime "
        f"{stack.ofi_cuda_runtime}",
        "NET/OFI Plugin selected platform: AWS",
        "NET/OFI Configuring AWS-specific options",
        "NET/OFI Setting provider_filter to efa",  # no FI_PROVIDER in the job's environment
        "NET/OFI Internode latency set at 75.0 us",  # platform_data_map "p5/p5e"
        "NET/OFI Using transport protocol RDMA (platform set)",
        f"NET/OFI Selected provider is efa, fabric is efa-direct (found {topo.nics_per_node} nics)",
    ]
    # nccl_ofi_topo.cpp: the NICs grouped by the GPU they sit beside, one NCCL device per group.
    out += [
        f"NET/OFI NIC group {g} device #{j} 0000:{bus:02x}:00.0"
        for g, buses in enumerate(groups)
        for j, bus in enumerate(buses)
    ]
    node_id = int(ipaddress.IPv4Address(ip))
    for g, buses in enumerate(groups):
        # platform-aws.cpp: the first rail's node GUID from sysfs (MAC bytes, per-card PCI bus, function), and
        # the device GUID, which on EFA v2 (device id 0xefa1) is the node's IPv4 above the device index.
        mac = rand.hash64(seed, "efa-guid", node, g) & 0xFFFFFFFF
        out.append(f"NET/OFI GUID of rdmap{buses[0]}s0: {mac:08x}0000{0x10 + g:02x}01")
        out.append(f"NET/OFI GUID for dev[{g}]: {node_id << 32 | g:032x}")
        out.append(f"NET/OFI Created device with {len(buses)} rails")  # nccl_ofi_rdma.cpp
    out += [
        "NET/OFI Support for global registrations: true",
        "NET/OFI Support for DMA-BUF registrations: true",
    ]
    fd = f"/proc/self/fd/{_topo_fd(seed, rank)}"
    out += [f"NET/OFI Adding {name}={value or fd} to environment" for name, value in _OFI_P5_ENV]
    out += [
        "Initialized NET plugin Libfabric",  # plugin/net.cc:172
        "Assigned NET plugin Libfabric to comm",  # plugin/net.cc:211
        "Using network Libfabric",  # init.cc:457
    ]
    return out


# ----------------------------------------------------------------------------------------------------
# The lines


def nccl_init_lines(
    topo: NcclTopo, rank: int, *, pid: int, tid: int, seed: int, connect_tid: int | None = None
) -> list[str]:
    """One rank's NCCL_DEBUG=INFO lines of its first communicator: init, then its first collective's."""
    parts = nccl_init_parts(topo, rank, pid=pid, tid=tid, seed=seed, connect_tid=connect_tid)
    return [line for name in INIT_PARTS for line in parts[name]]


def nccl_init_parts(
    topo: NcclTopo, rank: int, *, pid: int, tid: int, seed: int, connect_tid: int | None = None
) -> dict[str, list[str]]:
    """One rank's NCCL_DEBUG=INFO lines of its first communicator, by part of INIT_PARTS.

    `pid` is the process, `tid` NCCL's init thread; `connect_tid` the thread of the connections made at the
    first collective (by default a few thread ids after `tid`: NCCL's proxy threads start in between).
    """
    if not 0 <= rank < topo.world:
        raise ValueError(f"rank {rank} outside 0..{topo.world - 1}")
    stack = topo.stack
    amd = stack.vendor == "amd"
    forms = NCCL_FORMS[stack.format.name]
    p = topo.nproc_per_node
    node, local = divmod(rank, p)
    host = topo.hosts[node]
    ip = _node_ip(seed, node, host)
    n = topo.world
    nch = coll_channels(topo)
    # Thread ids are system-wide: other processes' threads start in between, so the gaps vary.
    gaps = rand.hash64(seed, "nccl-thread-gaps", rank)
    proxy_tid = tid + 1 + gaps % 11
    uds_tid = proxy_tid + 1 + (gaps >> 8) % 4
    if connect_tid is None:
        connect_tid = uds_tid + 1 + (gaps >> 16) % 7

    def bus(r: int) -> str:
        return bus_id(r % p, topo.bus_ids)

    main = f"{host}:{pid}:{pid} [{local}] NCCL INFO "
    init = f"{host}:{pid}:{tid} [{local}] NCCL INFO "
    conn = f"{host}:{pid}:{connect_tid} [{local}] NCCL INFO "
    # The proxy threads print before they set their device, so their prefix shows device 0 (2.29.3 logs).
    proxy = f"{host}:{pid}:{{tid}} [0] NCCL INFO "

    parts: dict[str, list[str]] = {name: [] for name in INIT_PARTS}
    lines = parts["bootstrap"]
    if forms["env_plugin"]:
        lines.append(main + forms["env_plugin"])
    lines.append(main + forms["bootstrap"].format(oob=topo.oob_if, ip=ip))
    if amd:
        # RCCL's version block: one INFO message of five lines (src/init.cc showVersion in RCCL).
        lines += (
            f"{main}{stack.nccl_version_line}\nHIP version  : {stack.nccl_build_cuda}\n"
            f"ROCm version : {stack.rocm}.0-43-{stack.nccl_build_cuda.rpartition('-')[2]}\n"
            f"Hostname     : {host}\nLibrccl path : /opt/rocm-{stack.rocm}/lib/librccl.so.1"
        ).split("\n")
    else:
        lines.append(f"{main}cudaDriverVersion {stack.cuda_driver_version}")  # misc/cudawrap.cc:274
        lines.append(main + stack.nccl_version_line)  # init.cc:648-655
        lines.append(main + forms["git"].format(git=stack.nccl_git))
    lines.append(f"{main}Comm config Blocking set to 1")  # init.cc:1756: torch sets config.blocking
    lines += [main + x for x in _collnet_env_lines(topo)]

    # The init thread: network plugin, then ncclCommInitRankFunc.
    lines = parts["init"]
    if topo.transport == "efa":
        lines += [init + x for x in _efa_plugin_lines(topo, seed, rank, ip)]
    elif topo.collnet_plugin:
        lines += [init + x for x in _sharp_plugin_lines(topo, ip)]
    else:
        plugin = "librccl-net.so libnccl-net.so" if amd else "libnccl-net.so"
        lines.append(f"{init}NET/Plugin: Could not find: {plugin}")
        if topo.transport == "roce":
            lines.append(
                f"{init}NCCL_IB_GID_INDEX set by environment to {topo.gid_index}."
            )  # misc/param.cc:129
        ro = "[RO]" if not amd else ""
        lines += [
            f"{init}NET/IB : Using{_nic_list(topo)} {ro}; OOB {topo.oob_if}:{ip}<0>",  # net_ib/init.cc:385
            f"{init}Initialized NET plugin IB",  # plugin/net.cc:172
            f"{init}Assigned NET plugin IB to comm",  # plugin/net.cc:211
        ]
        if not amd:
            lines += [
                f"{init}Assigned GIN plugin GIN_IB_GDAKI to comm",
                f"{init}Assigned RMA plugin GIN_IB_PROXY to comm",
            ]
        lines.append(f"{init}Using network IB")  # init.cc:457
    comm = _comm_ptr(seed, rank)
    commid = _comm_id(seed)
    fields = {"comm": comm, "rank": rank, "n": n, "dev": local, "bus": bus(rank), "commid": commid}
    if not amd:
        lines.append(f"{init}DMA-BUF is available on GPU device {local}")  # init.cc:394
    lines.append(init + forms["start"].format(**fields))
    lines.append(f"{init}RAS client listening socket at 127.0.0.1<{_RAS_PORT}>")  # ras/client_support.cc:184
    timings = init_timings(seed, rank, topo.nnodes)
    lines = parts["topology"]
    lines.append(  # bootstrap.cc:865
        f"{init}Bootstrap timings total {timings.boot:.6f} (create {timings.create:.6f}, send "
        f"{timings.send:.6f}, recv {timings.recv:.6f}, ring {timings.ring:.6f}, delay 0.000000)"
    )
    if not amd and topo.nvls:
        # Fabric-managed NVSwitch systems report their fabric state (init.cc:717); NVL72 with its UUID.
        uuid = f"{rand.hash64(seed, 'nccl-fabric') >> 1:x}.{rand.hash64(seed, 'nccl-fabric', 1) >> 1:x}"
        clique = rand.hash64(seed, "nccl-clique", rank // max(1, topo.mnnvl_domain)) % 0x7FFF + 1
        shown = f"{uuid} cliqueId 0x{clique:x}" if topo.mnnvl_domain else "0.0 cliqueId 0x0"
        lines.append(f"{init}MNNVL busId 0x{bus(rank)} fabric UUID {shown} state 3 healthMask 0x0")
    efa = topo.transport == "efa"
    if efa:
        # The plugin's topology file, read as the topology is detected (graph/topo.cc:1455).
        lines.append(f"{init}NCCL_TOPO_FILE set by environment to /proc/self/fd/{_topo_fd(seed, rank)}")
    socket_cpus = _socket_cpus(topo, local)
    all_cpus = range(topo.cpu_cores * topo.threads_per_core)
    lines.append(init + forms["affinity"].format(dev=local, gpu=_ranges(socket_cpus), cpu=_ranges(all_cpus)))
    if topo.mnnvl:
        clique_size = min(topo.world, topo.mnnvl_domain)
        clique = rand.hash64(seed, "nccl-clique", rank // topo.mnnvl_domain) % 0x7FFF + 1
        clique_rank = rank % topo.mnnvl_domain
        lines.append(f"{init}MNNVL 1 cliqueId {clique:x} cliqueSize {clique_size} cliqueRank {clique_rank}")
    nvls_ch = 0
    if not amd:
        if topo.nvls:
            nvls_ch = 16 if not topo.blackwell else (24 if topo.single_domain else 32)
        avail = "" if topo.nvls else "not "
        lines.append(
            f"{init}NVLS multicast support is {avail}available on dev {local} (NVLS_NCHANNELS {nvls_ch})"
        )
    mnnvl_flag = 1 if topo.mnnvl else 0
    local_ranks = p
    lines.append(
        f"{init}comm {comm} rank {rank} nRanks {n} nNodes {topo.nnodes} localRanks {local_ranks} "
        f"localRank {local} MNNVL {mnnvl_flag}"  # init.cc:1252
    )
    if topo.collnet_plugin and not topo.collnet:
        lines.append(  # init.cc:1286
            f"{init}Communicator has {topo.collnet_nodes} nodes which is less than CollNet node threshold "
            f"{COLLNET_NODE_THRESHOLD}, disabling CollNet"
        )
    lines = parts["channels"]
    if rank == 0:
        lines += [init + _ring_line(topo, c, nch) for c in range(nch)]
    lines.append(init + tree_line(topo, rank))
    chunk = 524288 if topo.single_domain and topo.nvlinks else 131072  # init.cc:778, P2P_NVL vs NET chunk
    if efa:
        # computeBuffSizes reads NCCL_BUFFSIZE always, the NET chunk size only across nodes (init.cc:756-776).
        lines.append(f"{init}NCCL_BUFFSIZE set by environment to 8388608.")
        if topo.nnodes > 1:
            lines.append(f"{init}NCCL_P2P_NET_CHUNKSIZE set by environment to 524288.")
            chunk = 524288
    lines.append(f"{init}P2P Chunksize set to {chunk}")  # init.cc:793
    lines.append(init + forms["profiler"])
    lines.append(init + forms["p2p_type"])
    cores = [c for c in socket_cpus]
    core = cores[rand.hash64(seed, "nccl-proxy-core", rank) % len(cores)]
    core_uds = cores[rand.hash64(seed, "nccl-proxy-core", rank, 1) % len(cores)]
    lines.append(
        proxy.format(tid=proxy_tid) + f"[Proxy Service] Device {local} CPU core {core}"
    )  # proxy.cc:1623
    lines.append(proxy.format(tid=uds_tid) + f"[Proxy Service UDS] Device {local} CPU core {core_uds}")
    if topo.collnet:
        sharp_proxy = f"{host}:{pid}:{proxy_tid} [{local}] NCCL INFO "
        lines += _collnet_setup_lines(topo, rank, init, sharp_proxy, nch)
    if efa:
        # aws-ofi-nccl is also NCCL's tuner (it set NCCL_TUNER_PLUGIN), loaded here as in real 2.29.2 logs.
        lines += [
            f"{init}NCCL_TUNER_PLUGIN set by environment to libnccl-net.so",
            f"{init}TUNER/Plugin: Using nccl_ofi_tuner (v3)",  # plugin/tuner/tuner_v3.cc:39
            f"{init}Successfully loaded external tuner plugin {_OFI_LIB}",  # plugin/tuner.cc:87
            f"{init}NET/OFI Tuner selected platform: AWS",
        ]
    lines.append(f"{init}threadThresholds 8/8/64 | {8 * n}/8/64 | 512 | 512")  # graph/tuning.cc:567
    p2p_channels = 1 << (min(nch, MAX_CHANNELS) - 1).bit_length()  # graph/paths.cc:899 pow2Up
    per_peer = p2p_channels
    if topo.nnodes > 1:
        while per_peer * -(-n // 8) > p2p_channels and per_peer > 1:  # paths.cc:903-904
            per_peer //= 2
    lines.append(
        # init.cc:1451 prints the coll channel count twice (as "collnet channels" too).
        f"{init}{nch} coll channels, {nch} collnet channels, {nvls_ch} nvls channels, "
        f"{p2p_channels} p2p channels, {per_peer} p2p channels per peer"
    )
    if rank == 0:
        lines.append(f"{init}CC Off, workFifoBytes 1048576")  # init.cc:592
    if not efa:
        lines.append(init + forms["tuner"])
    lines = parts["complete"]
    lines.append(init + forms["complete"].format(**fields))
    t = timings
    lines.append(
        f"{init}Init timings - ncclCommInitRankConfig: rank {rank} nranks {n} total {t.total:.2f} (kernels "
        f"{t.kernels:.2f}, alloc {t.alloc:.2f}, bootstrap {t.boot:.2f}, allgathers 0.00, topo {t.topo:.2f}, "
        f"graphs {t.graphs:.2f}, connections {t.connections:.2f}, rest {t.rest:.2f})"  # init.cc:1733
    )
    if n > 1:
        parts["connect"] = _first_collective(topo, rank, conn, forms, nvls_ch, comm)
    return parts


def _first_collective(
    topo: NcclTopo, rank: int, conn: str, forms: dict[str, str], nvls_ch: int, comm: str
) -> list[str]:
    """The connections the first collective makes (runtime connect): ring, then trees across nodes."""
    p = topo.nproc_per_node
    local = rank % p
    nch = coll_channels(topo)
    p2p = "P2P/MNNVL" if topo.mnnvl and forms["p2p"] == "P2P/CUMEM" else forms["p2p"]
    read = "/read" if topo.ampere else ""
    net = "Libfabric" if topo.transport == "efa" else "IB"
    gdr = "/GDRDMA"

    def dev(r: int) -> int:
        return r % p

    def same_fabric(a: int, b: int) -> bool:
        return a // topo.domain_ranks == b // topo.domain_ranks

    def link(c: int, a: int, b: int) -> list[str]:
        """What `a` prints for its connection to `b`, or `b` for `a`'s: P2P by the sender, NET by both."""
        head = f"Channel {c:02d}/0 : {a}[{dev(a)}] -> {b}[{dev(b)}]"
        if same_fabric(a, b):
            return [f"{conn}{head} via {p2p}{read}"] if a == rank else []
        nic = _nic(topo, dev(rank))
        role = "[send]" if a == rank else "[receive]"
        return [f"{conn}{head} {role} via NET/{net}/{nic}{gdr}"]

    out: list[str] = []
    for c in range(nch):
        order = ring_order(topo, c)
        pos = order.index(rank)
        prev, nxt = order[pos - 1], order[(pos + 1) % len(order)]
        if not same_fabric(prev, rank):
            out += link(c, prev, rank)
        out += link(c, rank, nxt)
    out.append(f"{conn}Connected all rings, use ring PXN 0 GDR 1")  # transport/generic.cc:40
    if not topo.single_domain:
        for c in range(nch):
            (d0, d1, d2), parent = tree_links(topo, rank, c)
            for child in (d0, d1, d2):
                if child >= 0 and not same_fabric(child, rank):
                    out += link(c, child, rank)
            if parent >= 0 and not same_fabric(parent, rank):
                out += link(c, rank, parent)
        out.append(f"{conn}Connected all trees")  # transport/generic.cc:59
    if nvls_ch:
        heads = nvls_heads(topo)
        head_rank = local if local < heads else -1
        chunk = _NVLS_CHUNK
        if topo.transport == "efa":
            out.append(f"{conn}NCCL_NVLS_CHUNKSIZE set by environment to {_OFI_NVLS_CHUNK}.")  # nvls.cc:154
            chunk = _OFI_NVLS_CHUNK
        buff = chunk * _NCCL_STEPS
        per_rank = nvls_ch * 2 * buff
        out.append(
            f"{conn}NVLS comm {comm} headRank {head_rank} nHeads {heads} nvlsRanks {p} buffSize {buff} "
            f"nvlsPerRankSize {per_rank} nvlsTotalSize {per_rank * heads}"  # transport/nvls.cc:337
        )
        if not topo.single_domain:
            out.append(f"{conn}Connected NVLS tree")  # transport/nvls.cc:216
    return out


def nccl_topo_for(
    cluster: ClusterSpec,
    nnodes: int,
    nproc_per_node: int,
    hosts: Sequence[str],
    *,
    collnet_enable: str | None = None,
) -> NcclTopo:
    """The NcclTopo of a job on `nnodes` nodes of a cluster preset, `nproc_per_node` ranks each.

    `collnet_enable` is NCCL_COLLNET_ENABLE from the job's environment (None when unset).
    """
    name = cluster.nic_name
    # Device names: mlx5_0, mlx5_1 ... but bnxt_re0, bnxt_re1 ...: a separator only after a digit or word.
    prefix = name + "_" if name[-1:].isdigit() or name.endswith("_bond") else name
    gpu = cluster.gpu
    return NcclTopo(
        nnodes=nnodes,
        nproc_per_node=nproc_per_node,
        hosts=tuple(hosts),
        nics_per_node=cluster.nics_per_node,
        nic_prefix=prefix,
        gpu_vendor=gpu.vendor,
        stack=stack_for(cluster),
        transport=cluster.transport,
        oob_if=cluster.oob_if,
        cpu_cores=cluster.cpu_cores,
        threads_per_core=cluster.threads_per_core,
        cpu_sockets=cluster.cpu_sockets,
        bus_ids=cluster.bus_ids,
        nvlinks=gpu.nvlinks,
        ampere=gpu.architecture == "Ampere",
        blackwell=gpu.architecture == "Blackwell",
        nvls=cluster.nvls and gpu.vendor == "nvidia",
        sharp=cluster.sharp,
        collnet_enable=collnet_enable,
        mnnvl_domain=cluster.mnnvl_domain,
        gid_index=cluster.ib_gid_index,
    )


def nic_device(topo: NcclTopo, local_rank: int) -> str:
    """The name of the NIC a GPU's traffic leaves by (`mlx5_3`)."""
    return f"{topo.nic_prefix}{_nic(topo, local_rank)}"


def node_ip(seed: int, node: int, host: str = "") -> str:
    """A node's address as NCCL's sockets name it."""
    return _node_ip(seed, node, host)
