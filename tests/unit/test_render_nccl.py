"""NCCL INFO lines: each release's forms, rings and trees that hold together, ids drawn like NCCL's."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections import defaultdict
from itertools import pairwise
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakerun import presets
from fakerun.render.nccl import (
    INIT_PARTS,
    NcclTopo,
    bus_id,
    coll_channels,
    init_schedule,
    init_timings,
    nccl_init_lines,
    nccl_init_parts,
    nccl_topo_for,
    pci_bus_id,
    ring_order,
    tree_line,
)
from fakerun.sim.stack import STACKS

PREFIX = re.compile(r"^([\w.-]+):(\d+):(\d+) \[(\d+)\] NCCL INFO (.*)$")
# RCCL's version block is one message of five lines; the four after the first carry no prefix.
RCCL_BLOCK = re.compile(r"^(HIP version  |ROCm version |Hostname     |Librccl path ): \S+$")
TREE_PART = re.compile(r"\[(\d+)\] (-?\d+)/(-?\d+)/(-?\d+)->(\d+)->(-?\d+)")
# transport/p2p.cc:413 and transport/net.cc:317,363 (2.29): peers as rank[nvmlDev], the connection index.
# aws-ofi-nccl's nccl_ofi_topo.cpp: one line per EFA device, grouped by the GPU it serves.
OFI_NIC = re.compile(r"NET/OFI NIC group (\d+) device #(\d+) 0000:([0-9a-f]{2}):00\.0")
CONN = re.compile(r"^Channel (\d\d)/(\d) : (\d+)\[(\d+)\] -> (\d+)\[(\d+)\] (.*)$")

# The forms of NCCL 2.29 (src/ at v2.29.7-1; values replaced by patterns).
FORMS_229 = {
    "start": re.compile(
        r"\[Rank (\d+)\] ncclCommInitRankConfig comm (0x[0-9a-f]+) rank (\d+) nranks (\d+) cudaDev (\d+) "
        r"nvmlDev (\d+) busId ([0-9a-f]+) commId (0x[0-9a-f]+) - Init START"
    ),
    "comm": re.compile(
        r"comm (0x[0-9a-f]+) rank (\d+) nRanks (\d+) nNodes (\d+) localRanks (\d+) localRank (\d+) "
        r"MNNVL ([01])"
    ),
    "complete": re.compile(
        r"ncclCommInitRankConfig comm (0x[0-9a-f]+) rank (\d+) nranks (\d+) cudaDev (\d+) nvmlDev (\d+) "
        r"busId ([0-9a-f]+) commId (0x[0-9a-f]+) - Init COMPLETE"
    ),
    "channels": re.compile(
        r"(\d+) coll channels, (\d+) collnet channels, (\d+) nvls channels, (\d+) p2p channels, "
        r"(\d+) p2p channels per peer"
    ),
    "timings": re.compile(
        r"Init timings - ncclCommInitRankConfig: rank \d+ nranks \d+ total \d+\.\d\d \(kernels \d+\.\d\d, "
        r"alloc \d+\.\d\d, bootstrap \d+\.\d\d, allgathers \d+\.\d\d, topo \d+\.\d\d, graphs \d+\.\d\d, "
        r"connections \d+\.\d\d, rest \d+\.\d\d\)"
    ),
    "affinity": re.compile(
        r"ncclTopoGetCpuAffinity: Affinity for GPU (\d+) is ([\d,-]+)\. \(GPU affinity = ([\d,-]+) ; "
        r"CPU affinity = ([\d,-]+)\)\."
    ),
    "ring": re.compile(r"Channel (\d\d)/(\d\d) :((?: +\d+)+|.*\.\.\.)$"),
    "version": re.compile(r"NCCL version 2\.29\.\d+\+cuda\d+\.\d+"),
    "git": re.compile(r"NCCL git version \w+ [0-9a-f]{7,9}"),
    "nvls": re.compile(r"NVLS multicast support is (not )?available on dev \d+ \(NVLS_NCHANNELS (\d+)\)"),
    "netib": re.compile(
        r"NET/IB : Using((?: \[\d+\][\w]+:1/(?:IB|RoCE))+) (\[RO\])?; OOB ([\w.-]+):([\d.]+)<0>"
    ),
    "rings_done": re.compile(r"Connected all rings, use ring PXN [01] GDR [01]"),
}
FORMS_RCCL = {
    "version": re.compile(r"RCCL version : 2\.27\.\d+-HEAD:[0-9a-f]{7}"),
    "affinity": re.compile(r"Setting affinity for GPU (\d+) to ([\d,-]+)"),
    "complete": FORMS_229["complete"],
}


def topo(nnodes: int, nproc: int, **kw: Any) -> NcclTopo:
    """A DGX H100-like topology with host names node-a000, node-a001, ..."""
    hosts = tuple(f"node-a{i:03d}" for i in range(nnodes))
    return NcclTopo(nnodes, nproc, hosts, 8, "mlx5_", "nvidia", **kw)


def messages(lines: list[str]) -> list[str]:
    """The messages of the prefixed lines."""
    return [m.group(5) for m in map(PREFIX.match, lines) if m]


def first(pattern: re.Pattern[str], msgs: list[str]) -> re.Match[str]:
    """The first message matching the whole pattern."""
    found = [m for m in map(pattern.fullmatch, msgs) if m]
    assert found, pattern.pattern
    return found[0]


def trees(t: NcclTopo) -> dict[int, dict[int, tuple[list[int], int]]]:
    """channel -> rank -> (children, parent), parsed from every rank's Trees line."""
    out: dict[int, dict[int, tuple[list[int], int]]] = defaultdict(dict)
    for rank in range(t.world):
        line = tree_line(t, rank)
        assert line.startswith("Trees [0] ")
        parts = TREE_PART.findall(line)
        assert [int(p[0]) for p in parts] == list(range(coll_channels(t)))
        for c, d0, d1, d2, me, parent in parts:
            assert int(me) == rank
            out[int(c)][rank] = ([int(d) for d in (d0, d1, d2) if int(d) >= 0], int(parent))
    return out


def cluster_topo(name: str, nnodes: int = 2) -> NcclTopo:
    cluster = presets.load_cluster(name)
    hosts = [presets.host_name(cluster, i) for i in range(nnodes)]
    return nccl_topo_for(cluster, nnodes, cluster.gpus_per_node, hosts)


CLUSTERS = presets.list_presets()["clusters"]


class TestBusIds:
    def test_dgx_h100_layout(self) -> None:
        """Without a table the bus ids are a DGX H100's eight, in NCCL's short form."""
        expected = ["18000", "2a000", "3a000", "5d000", "9a000", "ab000", "ba000", "db000"]
        assert [bus_id(i) for i in range(8)] == expected

    @pytest.mark.parametrize(
        "table", [(), ("07", "0F", "47", "4E", "87", "90", "B7", "BD"), ("05", "15"), ("0008:01", "0009:01")]
    )
    def test_short_and_full_forms_agree(self, table: tuple[str, ...]) -> None:
        """The short form is the full PCI address (domain, bus, device, function) read as one hex number."""
        seen = set()
        for local in range(20):
            full = pci_bus_id(local, table)
            assert re.fullmatch(r"[0-9A-F]{8}:[0-9A-F]{2}:00\.0", full)
            assert int(bus_id(local, table), 16) == int(re.sub(r"[:.]", "", full), 16) >> 4 << 4
            seen.add(full)
        assert len(seen) == 20

    def test_grace_domains(self) -> None:
        """A GB200 tray's GPUs sit in PCI domains 8, 9, 0x18, 0x19 (bus 1), as NCCL prints them."""
        table = ("0008:01", "0009:01", "0018:01", "0019:01")
        assert [bus_id(i, table) for i in range(4)] == ["801000", "901000", "1801000", "1901000"]


class TestRealLayouts:
    """The 2.29.3 log of a 2 x 8 Hopper job (16 channels) rank 0 printed; our rings and trees must agree."""

    REAL_RINGS: ClassVar[list[str]] = [
        "0 7 6 5 4 3 2 1 8 15 14 13 12 11 10 9",
        "0 7 6 5 4 3 2 9 8 15 14 13 12 11 10 1",
        "0 7 6 5 4 3 10 9 8 15 14 13 12 11 2 1",
        "0 15 14 13 12 11 10 9 8 7 6 5 4 3 2 1",
    ]
    REAL_TREES_RANK0 = (
        "Trees [0] 1/8/-1->0->-1 [1] 7/-1/-1->0->1 [2] 1/-1/-1->0->7 [3] 7/-1/-1->0->1 [4] 1/-1/-1->0->7 "
        "[5] 7/-1/-1->0->1 [6] 1/-1/-1->0->7 [7] -1/-1/-1->0->1 [8] 1/-1/-1->0->8 [9] 7/-1/-1->0->1 "
        "[10] 1/-1/-1->0->7 [11] 7/-1/-1->0->1 [12] 1/-1/-1->0->7 [13] 7/-1/-1->0->1 [14] 1/-1/-1->0->7 "
        "[15] -1/-1/-1->0->1"
    )

    def test_rings(self) -> None:
        """Channels 0, 1, 2 and 7 (and 8-15 repeating them) enter each node at another GPU."""
        t = topo(2, 8)
        assert coll_channels(t) == 16
        for c, real in zip((0, 1, 2, 7), self.REAL_RINGS, strict=True):
            assert ring_order(t, c) == [int(x) for x in real.split()]
            assert ring_order(t, c + 8) == ring_order(t, c)

    def test_trees(self) -> None:
        """Rank 0's Trees line is the real one, character for character."""
        assert tree_line(topo(2, 8), 0) == self.REAL_TREES_RANK0

    def test_single_node_rings_in_rank_order(self) -> None:
        """Inside one NVSwitch node every channel's ring is 0 1 2 ... and the tree a chain from 0."""
        t = topo(1, 4, nvlinks=12)
        assert coll_channels(t) == 24  # 4 x A100 on NVLink3: 24 coll channels (2.27.7 log)
        assert all(ring_order(t, c) == [0, 1, 2, 3] for c in range(24))
        assert tree_line(t, 2).startswith("Trees [0] 3/-1/-1->2->1 [1] 3/-1/-1->2->1")


class TestTrees:
    @settings(max_examples=120, deadline=None)
    @given(st.integers(1, 64), st.integers(1, 8), st.integers(1, 8))
    def test_parent_child_consistency(self, nnodes: int, nproc: int, nics: int) -> None:
        """In each channel's tree a is b's parent iff b is among a's children; one root, no cycle."""
        hosts = tuple(f"h{i}" for i in range(nnodes))
        t = NcclTopo(nnodes, nproc, hosts, nics, "mlx5_", "nvidia")
        for tree in trees(t).values():
            for rank, (children, parent) in tree.items():
                assert len(children) == len(set(children)) <= 3
                if parent >= 0:
                    assert rank in tree[parent][0]
                for child in children:
                    assert tree[child][1] == rank
            roots = [r for r, (_, parent) in tree.items() if parent < 0]
            assert len(roots) == 1
            for rank in tree:
                steps, r = 0, rank
                while tree[r][1] >= 0:
                    r, steps = tree[r][1], steps + 1
                    assert steps <= t.world
                assert r == roots[0]

    @settings(max_examples=60, deadline=None)
    @given(st.integers(2, 64), st.integers(1, 8))
    def test_one_head_per_node(self, nnodes: int, nproc: int) -> None:
        """Across nodes one GPU per node and channel links to other nodes: the same local GPU on each."""
        t = topo(nnodes, nproc)
        for tree in trees(t).values():
            heads = set()
            for rank, (children, parent) in tree.items():
                links = [*children, parent] if parent >= 0 else children
                if any(r // nproc != rank // nproc for r in links):
                    heads.add(rank % nproc)
            assert len(heads) == 1

    @pytest.mark.parametrize("nnodes", [2, 3, 4, 7, 16])
    def test_double_tree(self, nnodes: int) -> None:
        """The first and second half of the channels use the two trees: different root nodes."""
        t = topo(nnodes, 8)
        tr = trees(t)
        half = coll_channels(t) // 2
        root = {c: next(r for r, (_, p) in tr[c].items() if p < 0) // 8 for c in (0, half)}
        assert root[0] != root[half]


class TestRing:
    @settings(max_examples=200, deadline=None)
    @given(st.integers(1, 128), st.integers(1, 8), st.integers(0, 31))
    def test_ring_visits_each_node_once(self, nnodes: int, nproc: int, channel: int) -> None:
        """A ring visits every rank once from rank 0 and each node's ranks in one run (cyclically)."""
        t = topo(nnodes, nproc)
        order = ring_order(t, channel)
        assert sorted(order) == list(range(t.world)) and order[0] == 0
        changes = sum(order[i] // nproc != order[i - 1] // nproc for i in range(len(order)))
        assert changes == (nnodes if nnodes > 1 else 0)


def job_lines(t: NcclTopo, seed: int) -> dict[int, list[str]]:
    """Every rank's lines, with pids and tids drawn per rank as independent-looking numbers."""
    out = {}
    for r in range(t.world):
        pid = 1000 + (r * 7919) % 50000
        out[r] = nccl_init_lines(t, r, pid=pid, tid=pid + 200 + r % 3, seed=seed)
    return out


class TestPresets:
    @pytest.mark.parametrize("name", CLUSTERS)
    @pytest.mark.parametrize("seed", [0, 7, 2**40 + 3])
    def test_every_line_parses_and_follows_the_preset(self, name: str, seed: int) -> None:
        """Each rank's lines parse; NICs, transport, NVLS, channels and versions are the preset's."""
        t = cluster_topo(name)
        cluster = presets.load_cluster(name)
        amd = cluster.gpu.vendor == "amd"
        forms = FORMS_RCCL if amd else FORMS_229
        lines = job_lines(t, seed)
        commids, comms = set(), []
        for rank, ls in lines.items():
            for ln in ls:
                m = PREFIX.match(ln)
                assert m or (amd and RCCL_BLOCK.match(ln)), ln
                if m:
                    assert m.group(1) == t.hosts[rank // t.nproc_per_node]
            msgs = messages(ls)
            first(forms["version"], msgs)
            aff = first(forms["affinity"], msgs)
            assert int(aff.group(1)) == rank % t.nproc_per_node
            done = first(forms["complete"], msgs)
            assert int(done.group(2)) == rank and int(done.group(3)) == t.world
            assert done.group(6) == bus_id(rank % t.nproc_per_node, cluster.bus_ids)
            commids.add(done.group(7))
            comms.append(int(done.group(1), 16))
            if cluster.transport == "efa":
                assert "Using network Libfabric" in msgs and not any(x.startswith("NET/IB") for x in msgs)
                groups = [m for m in map(OFI_NIC.fullmatch, msgs) if m]
                assert len(groups) == cluster.nics_per_node
            else:
                nic_msg = next(x for x in msgs if x.startswith("NET/IB : Using"))
                devices = re.findall(r"\[(\d+)\]([\w]+):1/(IB|RoCE)", nic_msg)
                assert len(devices) == cluster.nics_per_node
                assert {d[2] for d in devices} == {"RoCE" if cluster.transport == "roce" else "IB"}
                assert nic_msg.endswith(f"OOB {cluster.oob_if}:{nic_msg.rsplit(':', 1)[1]}")
            gid = [x for x in msgs if x.startswith("NCCL_IB_GID_INDEX set by environment to ")]
            assert gid == (
                [f"NCCL_IB_GID_INDEX set by environment to {cluster.ib_gid_index}."]
                if cluster.transport == "roce"
                else []
            )
            if not amd:
                nvls = first(FORMS_229["nvls"], msgs)
                assert (nvls.group(1) is None) == cluster.nvls
                ch = first(FORMS_229["channels"], msgs)
                assert int(ch.group(1)) == int(ch.group(2)) == coll_channels(t)
                assert (int(ch.group(3)) > 0) == cluster.nvls
                assert any(x.startswith("NVLS comm ") for x in msgs) == cluster.nvls
                first(FORMS_229["timings"], msgs)
                first(FORMS_229["rings_done"], msgs)
                comm_line = first(FORMS_229["comm"], msgs)
                assert comm_line.group(7) == ("1" if cluster.mnnvl_domain else "0")
        assert len(commids) == 1  # one communicator: the same commId on every rank
        assert len(set(comms)) == len(comms)

    @pytest.mark.parametrize("name", CLUSTERS)
    def test_rank0_prints_every_ring(self, name: str) -> None:
        """Rank 0 prints one ring line per coll channel, each at most 127 characters (dumpLine)."""
        t = cluster_topo(name)
        for rank, ls in job_lines(t, 1).items():
            rings = [x for x in messages(ls) if FORMS_229["ring"].fullmatch(x)]
            if rank == 0:
                assert len(rings) == coll_channels(t)
                assert all(len(x) < 128 for x in rings)
            else:
                assert rings == []

    def test_presets_look_different(self) -> None:
        """No two cluster presets print the same NIC list, bus ids and versions."""
        seen = set()
        for name in CLUSTERS:
            t = cluster_topo(name)
            msgs = messages(nccl_init_lines(t, 1, pid=5, tid=6, seed=0))
            key = (
                next(x for x in msgs if x.startswith(("NET/IB", "Using network"))).split("; OOB")[0],
                tuple(bus_id(i, t.bus_ids) for i in range(t.nproc_per_node)),
                t.stack.name,
                t.oob_if,
            )
            seen.add(key)
        assert len(seen) == len(CLUSTERS)

    def test_mnnvl_rack(self) -> None:
        """On a GB200 NVL72, nodes of one rack share an NVLink domain: MNNVL 1, P2P/MNNVL, no network ring."""
        t = cluster_topo("gb200-nvl72", nnodes=4)
        msgs = messages(nccl_init_lines(t, 5, pid=5, tid=6, seed=0))
        assert first(FORMS_229["comm"], msgs).group(7) == "1"
        assert any(re.fullmatch(r"MNNVL 1 cliqueId [0-9a-f]+ cliqueSize 16 cliqueRank 5", x) for x in msgs)
        conns = [x for x in msgs if CONN.match(x)]
        assert conns and all("via P2P/MNNVL" in x for x in conns)

    def test_a100_stack(self) -> None:
        """The A100 cluster prints its pinned 2.29.3 build, driver 12.2, reads over NVLink and no NVLS."""
        msgs = messages(nccl_init_lines(cluster_topo("dgx-a100", 1), 1, pid=5, tid=6, seed=0))
        assert "NCCL version 2.29.3+cuda12.9" in msgs and "cudaDriverVersion 12020" in msgs
        assert any(x.endswith("via P2P/CUMEM/read") for x in msgs)
        assert "NVLS multicast support is not available on dev 1 (NVLS_NCHANNELS 0)" in msgs


class TestIdentifiers:
    @pytest.mark.parametrize("seed", [0, 1, 99])
    def test_comm_addresses_are_not_affine(self, seed: int) -> None:
        """comm pointers are heap addresses per process: no constant step from one rank to the next."""
        t = topo(2, 8)
        ptrs = [
            int(first(FORMS_229["complete"], messages(ls)).group(1), 16) for ls in job_lines(t, seed).values()
        ]
        steps = {b - a for a, b in pairwise(ptrs)}
        assert len(steps) > 1
        assert all(0x550000000000 <= p < 0x570000000000 and p % 16 == 0 for p in ptrs)

    def test_commid_per_job(self) -> None:
        """Other seeds give other commIds; all ranks of a job share theirs."""
        t = topo(2, 4)
        ids = {
            first(FORMS_229["start"], messages(nccl_init_lines(t, 3, pid=7, tid=8, seed=s))).group(8)
            for s in range(20)
        }
        assert len(ids) == 20

    def test_threads(self) -> None:
        """Version lines on the main thread, init on the given thread, connections on a later one."""
        lines = nccl_init_lines(topo(2, 8), 9, pid=4242, tid=4300, seed=1)
        tids = [int(m.group(3)) for m in map(PREFIX.match, lines) if m]
        assert all(int(m.group(2)) == 4242 for m in map(PREFIX.match, lines) if m)
        assert tids[0] == 4242 and 4300 in tids
        done = next(i for i, ln in enumerate(lines) if "Init COMPLETE" in ln)
        assert tids[done] == 4300 and all(t > 4301 for t in tids[done + 2 :])

    @pytest.mark.parametrize("seed", [0, 1, 99, 2**40])
    def test_bootstrap_ips(self, seed: int) -> None:
        """Each node has one private 10.x address, used for bootstrap and OOB, distinct across nodes."""
        t = topo(128, 1)
        ips = []
        for rank in range(t.world):
            msgs = messages(nccl_init_lines(t, rank, pid=1, tid=2, seed=seed))
            boot = first(re.compile(r"Bootstrap: Using ib0:([\d.]+)<0>"), msgs)
            assert first(FORMS_229["netib"], msgs).group(4) == boot.group(1)
            ip = ipaddress.IPv4Address(boot.group(1))
            assert ip in ipaddress.IPv4Network("10.0.0.0/8")
            ips.append(ip)
        assert len(set(ips)) == t.world


class TestConnections:
    @pytest.mark.parametrize(("nnodes", "nproc"), [(1, 8), (2, 8), (4, 4), (5, 2), (3, 1)])
    def test_send_and_receive_pair_up(self, nnodes: int, nproc: int) -> None:
        """Each NET `[send]` a -> b is printed by b as `[receive]`; P2P stays inside a node, NET crosses."""
        t = topo(nnodes, nproc)
        sends, receives = set(), set()
        for rank in range(t.world):
            for msg in messages(nccl_init_lines(t, rank, pid=1, tid=2, seed=0)):
                m = CONN.match(msg)
                if not m:
                    continue
                c, _, a, dev_a, b, dev_b, how = m.groups()
                a_i, b_i = int(a), int(b)
                assert int(dev_a) == a_i % nproc and int(dev_b) == b_i % nproc
                same_node = a_i // nproc == b_i // nproc
                if how == "via P2P/CUMEM":
                    assert same_node and a_i == rank
                elif how.startswith("[send] via NET/IB/"):
                    assert not same_node and a_i == rank
                    sends.add((c, a_i, b_i))
                else:
                    assert re.fullmatch(r"\[receive\] via NET/IB/\d/GDRDMA", how) and not same_node
                    assert b_i == rank
                    receives.add((c, a_i, b_i))
        assert sends == receives
        assert bool(sends) == (nnodes > 1)


class TestScaleAndDeterminism:
    def test_bounded_at_1024_ranks(self) -> None:
        """At 128 x 8 ranks every rank prints a bounded list of short-enough lines."""
        t = topo(128, 8)
        for rank in (0, 1, 517, 1023):
            lines = nccl_init_lines(t, rank, pid=100, tid=9000, seed=2)
            assert len(lines) <= 150
            assert max(len(ln) for ln in lines) <= 600

    @settings(max_examples=40, deadline=None)
    @given(st.integers(1, 32), st.integers(1, 8), st.integers(0, 2**63), st.data())
    def test_deterministic_per_seed(self, nnodes: int, nproc: int, seed: int, data: st.DataObject) -> None:
        """The same topology, rank, ids and seed give the same lines."""
        t = topo(nnodes, nproc)
        rank = data.draw(st.integers(0, t.world - 1))
        assert nccl_init_lines(t, rank, pid=7, tid=8, seed=seed) == nccl_init_lines(
            t, rank, pid=7, tid=8, seed=seed
        )

    def test_bad_topologies(self) -> None:
        """A host list that does not match the node count, or a rank outside the job, is refused."""
        with pytest.raises(ValueError):
            NcclTopo(2, 8, ("only-one",), 8, "mlx5_", "nvidia")
        with pytest.raises(ValueError):
            nccl_init_lines(topo(1, 8), 8, pid=1, tid=2, seed=0)


class TestVersions:
    @pytest.mark.parametrize("stack", list(STACKS))
    def test_each_stack_prints_its_version(self, stack: str) -> None:
        """The version line is the stack's, once per process, on the main thread."""
        s = STACKS[stack]
        vendor = s.vendor
        t = dataclasses.replace(topo(2, 8), stack=s, gpu_vendor=vendor)
        lines = nccl_init_lines(t, 3, pid=50, tid=60, seed=0)
        version = [ln for ln in lines if s.nccl_version_line in ln]
        assert len(version) == 1 and version[0].startswith("node-a000:50:50 [3] NCCL INFO ")


class TestInitSchedule:
    """Each part of a rank's init output prints when the rank gets there, at the pace its timings print."""

    @given(st.integers(0, 2**32), st.integers(0, 63), st.sampled_from([1, 2, 8]))
    def test_parts_in_order_and_timed_as_printed(self, seed: int, rank: int, nnodes: int) -> None:
        sched = init_schedule(seed, rank, nnodes)
        offsets = [sched.at(part) for part in INIT_PARTS]
        assert offsets == sorted(offsets) and offsets[-1] < sched.end
        t = init_timings(seed, rank, nnodes)
        # Init START to Init COMPLETE is the total the timings line prints; the bootstrap ring its part.
        assert sched.complete - sched.init == pytest.approx(t.total)
        assert sched.topology - sched.init == pytest.approx(t.boot)

    def test_parts_cover_the_lines(self) -> None:
        t = topo(2, 8)
        parts = nccl_init_parts(t, 9, pid=4242, tid=4300, seed=1)
        assert list(parts) == list(INIT_PARTS) and all(parts.values())
        assert [line for p in INIT_PARTS for line in parts[p]] == nccl_init_lines(
            t, 9, pid=4242, tid=4300, seed=1
        )
        assert "Init START" in parts["init"][-2] and "Init COMPLETE" in parts["complete"][0]
        assert "Bootstrap timings" in parts["topology"][0]
        printed = re.search(r"total (\d+\.\d+) \(", parts["complete"][1])
        assert printed and float(printed[1]) == round(init_timings(1, 9, 2).total, 2)


class TestEfa:
    """The AWS p5 preset: aws-ofi-nccl over 32 EFA devices instead of NET/IB, EC2 host names."""

    def test_plugin_lines_follow_the_p5(self) -> None:
        """Four EFA devices per GPU, each on a PCI bus just below its GPU's; 8 NCCL devices of 4 rails."""
        t = cluster_topo("p5-efa")
        msgs = messages(nccl_init_lines(t, 3, pid=5, tid=6, seed=0))
        groups: dict[int, list[int]] = defaultdict(list)
        for m in map(OFI_NIC.fullmatch, msgs):
            if m:
                groups[int(m.group(1))].append(int(m.group(3), 16))
        assert sorted(groups) == list(range(8))
        for g, buses in groups.items():
            gpu_bus = int(pci_bus_id(g, t.bus_ids).split(":")[1], 16)
            assert sorted(buses) == list(range(gpu_bus - 4, gpu_bus))
        assert msgs.count("NET/OFI Created device with 4 rails") == 8
        assert "NET/OFI Selected provider is efa, fabric is efa-direct (found 32 nics)" in msgs
        assert "NET/OFI Initializing aws-ofi-nccl 1.19.0" in msgs
        assert "NET/Plugin: Loaded net plugin Libfabric (v11)" in msgs

    def test_host_names_spell_the_bootstrap_ip(self) -> None:
        """ip-a-b-c-d host names: distinct, in one /16, the address NCCL bootstraps on and puts in GUIDs."""
        cluster = presets.load_cluster("p5-efa")
        names = [presets.host_name(cluster, i) for i in range(300)]
        assert len(set(names)) == 300
        nets = {ipaddress.ip_network(n[3:].replace("-", ".") + "/16", strict=False) for n in names}
        assert len(nets) == 1 and next(iter(nets)).subnet_of(ipaddress.ip_network("10.0.0.0/8"))
        t = cluster_topo("p5-efa", nnodes=3)
        for node in range(3):
            msgs = messages(nccl_init_lines(t, node * 8 + 2, pid=5, tid=6, seed=4))
            ip = t.hosts[node][3:].replace("-", ".")
            assert f"Bootstrap: Using {cluster.oob_if}:{ip}<0>" in msgs
            guid = first(re.compile(r"NET/OFI GUID for dev\[0\]: 0{16}([0-9a-f]{8})0{8}"), msgs)
            assert ipaddress.IPv4Address(int(guid.group(1), 16)) == ipaddress.IPv4Address(ip)

    def test_differs_from_the_ib_h100(self) -> None:
        """Same GPUs as the DGX H100, other bus ids, host names and network: no NET/IB, Libfabric channels."""
        efa, ib = cluster_topo("p5-efa"), cluster_topo("dgx-h100")
        assert {bus_id(i, efa.bus_ids) for i in range(8)}.isdisjoint(bus_id(i, ib.bus_ids) for i in range(8))
        assert all(re.fullmatch(r"ip-10-\d+-\d+-\d+", h) for h in efa.hosts)
        efa_msgs = messages(nccl_init_lines(efa, 8, pid=5, tid=6, seed=0))
        ib_msgs = messages(nccl_init_lines(ib, 8, pid=5, tid=6, seed=0))
        nets = {x.split(" via ")[1].split("/")[1] for x in efa_msgs if CONN.match(x) and "NET/" in x}
        assert nets == {"Libfabric"}
        assert not any("Libfabric" in x or "NET/OFI" in x for x in ib_msgs)

    def test_plugin_settings_reach_nccl(self) -> None:
        """What the plugin adds to the environment, NCCL reads back: chunk sizes across nodes, its tuner."""
        multi = messages(nccl_init_lines(cluster_topo("p5-efa", 2), 0, pid=5, tid=6, seed=0))
        single = messages(nccl_init_lines(cluster_topo("p5-efa", 1), 0, pid=5, tid=6, seed=0))
        for msgs in (multi, single):
            assert "NCCL_BUFFSIZE set by environment to 8388608." in msgs
            assert "TUNER/Plugin: Using nccl_ofi_tuner (v3)" in msgs
            assert not any(x.startswith("TUNER/Plugin: Could not find") for x in msgs)
            topo_file = first(re.compile(r"NET/OFI Adding NCCL_TOPO_FILE=(\S+) to environment"), msgs)
            assert f"NCCL_TOPO_FILE set by environment to {topo_file.group(1)}" in msgs
        assert "NCCL_P2P_NET_CHUNKSIZE set by environment to 524288." in multi
        assert not any(x.startswith("NCCL_P2P_NET_CHUNKSIZE") for x in single)
        assert "P2P Chunksize set to 524288" in multi


# CollNet/SHARP (NCCL 2.29.7: init.cc:1286, 1889-1892; transport/coll_net.cc:184/208; HPC-X's plugin).
COLLNET_CONN = re.compile(r"CollNet (\d\d)/([01]) : (\d+) \[(receive|send)\] via COLLNET/SHARP/(\d+)/GDRDMA")
SHARP_RANK = re.compile(r"SHARP rank (\d+)/(\d+) initialized on (mlx5_\d+):1")
THRESHOLD = re.compile(
    r"Communicator has (\d+) nodes which is less than CollNet node threshold (\d+), disabling CollNet"
)


def with_env(t: NcclTopo, value: str | None) -> NcclTopo:
    """The topology of the same job run with NCCL_COLLNET_ENABLE=value (None: unset)."""
    return dataclasses.replace(t, collnet_enable=value)


class TestCollNet:
    SHARP_CLUSTERS: ClassVar[list[str]] = [c for c in CLUSTERS if presets.load_cluster(c).sharp]

    def test_sharp_presets_are_the_ndr_infiniband_ones(self) -> None:
        """Quantum-2 (NDR) InfiniBand fabrics have SHARP; RoCE, EFA and HDR presets do not."""
        for name in CLUSTERS:
            cluster = presets.load_cluster(name)
            assert cluster.sharp == cluster.fabric.startswith("InfiniBand NDR"), name
        assert "dgx-h100" in self.SHARP_CLUSTERS

    @pytest.mark.parametrize("name", CLUSTERS)
    def test_unset_changes_nothing(self, name: str) -> None:
        """Without NCCL_COLLNET_ENABLE a SHARP cluster prints what a cluster without SHARP prints."""
        t = cluster_topo(name, 2)
        plain = dataclasses.replace(t, sharp=False)
        for rank in (0, t.world - 1):
            assert nccl_init_lines(t, rank, pid=7, tid=8, seed=3) == nccl_init_lines(
                plain, rank, pid=7, tid=8, seed=3
            )

    @pytest.mark.parametrize("name", ["dgx-a100", "h800-roce", "p5-efa"])
    def test_without_sharp_only_the_env_lines(self, name: str) -> None:
        """No SHARP fabric, no plugin: NCCL only reports the variable, on the main thread after its config."""
        t = cluster_topo(name, 2)
        for rank in (0, t.world - 1):
            before = nccl_init_lines(t, rank, pid=7, tid=8, seed=3)
            after = nccl_init_lines(with_env(t, "1"), rank, pid=7, tid=8, seed=3)
            added = [line for line in after if line not in before]
            assert messages(added) == [
                "Comm config collnetEnable reset to NCCL_COLLNET_ENABLE=1",
                "NCCL_COLLNET_ENABLE set by environment to 1.",
            ]
            assert [line for line in after if line not in added] == before
            at = after.index(added[0])
            assert messages([after[at - 1]]) == ["Comm config Blocking set to 1"]
            assert {PREFIX.match(line).group(3) for line in added} == {"7"}  # type: ignore[union-attr]

    @pytest.mark.parametrize("value", ["0", "2", "yes"])
    def test_not_one_loads_no_plugin(self, value: str) -> None:
        """Only NCCL_COLLNET_ENABLE=1 turns CollNet on; strtol reads a word as 0, 2 is refused."""
        t = with_env(cluster_topo("dgx-h100", 2), value)
        msgs = messages(nccl_init_lines(t, 0, pid=7, tid=8, seed=3))
        read = 0 if value == "yes" else int(value)
        assert f"NCCL_COLLNET_ENABLE set by environment to {read}." in msgs
        assert ("collnetEnable 2 is not a valid value 0/1, set it to 0" in msgs) == (read == 2)
        assert not any("SHARP" in m or COLLNET_CONN.fullmatch(m) for m in msgs)
        assert "Using network IB" in msgs

    @pytest.mark.parametrize("name", SHARP_CLUSTERS)
    def test_below_the_node_threshold(self, name: str) -> None:
        """One node (or one NVLink domain): the plugin loads, NCCL then turns CollNet off and says why."""
        cluster = presets.load_cluster(name)
        nnodes = max(1, cluster.mnnvl_domain // cluster.gpus_per_node)  # a whole NVL72 rack is one domain
        t = with_env(cluster_topo(name, nnodes), "1")
        parts = nccl_init_parts(t, t.world - 1, pid=7, tid=8, seed=3)
        msgs = messages([line for part in parts.values() for line in part])
        assert "NET/Plugin: Loaded collnet plugin SHARP (v11)" in msgs
        m = first(THRESHOLD, messages(parts["topology"]))
        assert (int(m.group(1)), int(m.group(2))) == (1, 2)  # NCCL_COLLNET_NODE_THRESHOLD's default
        assert not any(COLLNET_CONN.fullmatch(x) or SHARP_RANK.fullmatch(x) for x in msgs)

    @pytest.mark.parametrize(("name", "nnodes"), [("dgx-h100", 2), ("dgx-h100", 3), ("hgx-b200", 4)])
    def test_heads_connect_per_channel(self, name: str, nnodes: int) -> None:
        """Each GPU beside a NIC joins its rail's SHARP group on every channel, receiving and sending."""
        t = with_env(cluster_topo(name, nnodes), "1")
        p = t.nproc_per_node
        groups: dict[str, set[int]] = defaultdict(set)
        for rank in range(t.world):
            parts = nccl_init_parts(t, rank, pid=7, tid=8, seed=3)
            msgs = messages(parts["init"])
            assert msgs[:3] == [
                "NET/Plugin: Loaded net plugin NCCL RDMA Plugin v11 (v11)",
                "NET/Plugin: Loaded collnet plugin SHARP (v11)",
                "Successfully loaded external network plugin "
                "/opt/hpcx/nccl_rdma_sharp_plugin/lib/libnccl-net.so",
            ]
            nics = first(FORMS_229["netib"], [m.replace("/SHARP", "") for m in msgs]).group(1).split()
            assert len(nics) == t.nics_per_node and msgs.count("Using network IBext_v11") == 1
            assert all("/IB/SHARP" in m for m in msgs if m.startswith("NET/IB : Using"))
            chan = messages(parts["channels"])
            conns = [m for m in map(COLLNET_CONN.fullmatch, chan) if m]
            nch = int(first(FORMS_229["channels"], chan).group(1))
            local = rank % p
            # DGX H100/B200: one NIC per GPU, so every GPU heads its own rail (head index = GPU = NIC).
            assert [c.groups() for c in conns] == [
                (f"{local:02d}", str(i), str(rank), kind, str(local))
                for _ in range(nch)
                for i, kind in ((0, "receive"), (1, "send"))
            ]
            sharp = [m for m in map(SHARP_RANK.fullmatch, chan) if m]
            assert [s.groups() for s in sharp] == [(str(rank // p), str(nnodes), f"mlx5_{local}")]
            groups[f"mlx5_{local}"].add(rank // p)
            assert chan.index(sharp[0].group(0)) == chan.index(conns[0].group(0)) + 1
        assert groups == {f"mlx5_{g}": set(range(nnodes)) for g in range(p)}

    def test_fewer_nics_than_gpus(self) -> None:
        """With 4 NICs for 8 GPUs NVLS has 4 heads per node: only those GPUs print CollNet lines."""
        t = topo(2, 8, nvls=True, sharp=True, collnet_enable="1")
        t = dataclasses.replace(t, nics_per_node=4)
        heads = set()
        for rank in range(t.world):
            msgs = messages(nccl_init_parts(t, rank, pid=7, tid=8, seed=3)["channels"])
            conns = [m for m in map(COLLNET_CONN.fullmatch, msgs) if m]
            if conns:
                heads.add(rank % 8)
                assert {int(c.group(1)) for c in conns} == {rank % 8}
        assert len(heads) == t.nics_per_node
