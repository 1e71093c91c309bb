"""NCCL INFO init lines: line format, rings and trees that hold together across ranks, bounded output."""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakerun import presets
from fakerun.render.nccl import (
    NcclTopo,
    bus_id,
    nccl_init_lines,
    nccl_topo_for,
    pci_bus_id,
    ring_order,
    tree_line,
)

PREFIX = re.compile(r"^([\w.-]+):(\d+):(\d+) \[(\d+)\] NCCL INFO (.*)$")
VERSION = re.compile(r"^[RN]CCL version \d+\.\d+\.\d+\+(cuda|hip)[\d.]+$")
TREE_PART = re.compile(r"\[(\d+)\] (-?\d+)/(-?\d+)/(-?\d+)->(\d+)->(-?\d+)")
CONN = re.compile(r"^Channel (\d\d) : (\d+)\[([0-9a-f]+)\] -> (\d+)\[([0-9a-f]+)\] (.*)$")


def topo(nnodes: int, nproc: int, **kw: Any) -> NcclTopo:
    """A DGX-like topology with host names node-a000, node-a001, ..."""
    hosts = tuple(f"node-a{i:03d}" for i in range(nnodes))
    return NcclTopo(nnodes, nproc, hosts, 8, "mlx5_", "nvidia", **kw)


def messages(lines: list[str]) -> list[str]:
    """The messages of the prefixed lines."""
    return [m.group(5) for m in map(PREFIX.match, lines) if m]


def trees(t: NcclTopo) -> dict[int, dict[int, tuple[list[int], int]]]:
    """channel -> rank -> (children, parent), parsed from every rank's Trees line."""
    out: dict[int, dict[int, tuple[list[int], int]]] = defaultdict(dict)
    for rank in range(t.world):
        line = tree_line(t, rank)
        assert line.startswith("Trees ")
        parts = TREE_PART.findall(line)
        assert [int(p[0]) for p in parts] == list(range(t.channels))
        for c, d0, d1, d2, me, parent in parts:
            assert int(me) == rank
            out[int(c)][rank] = ([int(d) for d in (d0, d1, d2) if int(d) >= 0], int(parent))
    return out


class TestBusIds:
    def test_dgx_h100_layout(self) -> None:
        """Without a table the bus ids are a DGX H100's eight, in NCCL's short form."""
        assert [bus_id(i) for i in range(8)] == [
            "18000",
            "2a000",
            "3a000",
            "5d000",
            "9a000",
            "ab000",
            "ba000",
            "db000",
        ]

    @pytest.mark.parametrize("table", [(), ("07", "0F", "47", "4E", "87", "90", "B7", "BD"), ("05", "15")])
    def test_short_and_full_forms_agree(self, table: tuple[str, ...]) -> None:
        """The short form is the full PCI address (domain, bus, device, function) read as one hex number."""
        seen = set()
        for local in range(20):
            full = pci_bus_id(local, table)
            assert re.fullmatch(r"[0-9A-F]{8}:[0-9A-F]{2}:00\.0", full)
            assert int(bus_id(local, table), 16) == int(re.sub(r"[:.]", "", full), 16) >> 4 << 4
            seen.add(full)
        assert len(seen) == 20


class TestRing:
    @settings(max_examples=200, deadline=None)
    @given(st.integers(1, 128), st.integers(1, 8), st.integers(0, 3))
    def test_ring_is_a_chain_of_nodes(self, nnodes: int, nproc: int, channel: int) -> None:
        """A ring visits every rank once, from rank 0, each node's ranks together and nodes in order."""
        t = topo(nnodes, nproc)
        order = ring_order(t, channel)
        assert sorted(order) == list(range(t.world))
        assert order[0] == 0
        nodes = [r // nproc for r in order]
        assert nodes == sorted(nodes)


class TestTrees:
    def test_matches_real_nccl(self) -> None:
        """On 4 nodes x 8 GPUs the trees of ranks 0-2 are what NCCL printed in a real 32-rank run."""
        t = topo(4, 8)
        assert tree_line(t, 0) == "Trees [0] 1/16/-1->0->-1 [1] 1/-1/-1->0->8"
        assert tree_line(t, 1) == "Trees [0] 2/-1/-1->1->0 [1] 2/-1/-1->1->0"
        assert tree_line(t, 2) == "Trees [0] 3/-1/-1->2->1 [1] 3/-1/-1->2->1"

    @settings(max_examples=120, deadline=None)
    @given(st.integers(1, 64), st.integers(1, 8), st.integers(1, 4))
    def test_parent_child_consistency(self, nnodes: int, nproc: int, channels: int) -> None:
        """In each channel's tree a is b's parent iff b is among a's children; one root, no cycle."""
        t = topo(nnodes, nproc, channels=channels)
        for tree in trees(t).values():
            for rank, (children, parent) in tree.items():
                assert len(children) == len(set(children)) <= 3
                if parent >= 0:
                    assert rank in tree[parent][0]
                for child in children:
                    assert tree[child][1] == rank
            roots = [r for r, (_, parent) in tree.items() if parent < 0]
            assert len(roots) == 1
            for rank in tree:  # every rank reaches the root within world steps
                steps, r = 0, rank
                while tree[r][1] >= 0:
                    r, steps = tree[r][1], steps + 1
                    assert steps <= t.world
                assert r == roots[0]

    @settings(max_examples=60, deadline=None)
    @given(st.integers(1, 64), st.integers(1, 8))
    def test_chains_inside_nodes(self, nnodes: int, nproc: int) -> None:
        """Only a node's first rank links to other nodes; the other ranks hang in a chain inside the node."""
        for tree in trees(topo(nnodes, nproc)).values():
            for rank, (children, parent) in tree.items():
                links = [*children, parent] if parent >= 0 else children
                remote = [r for r in links if r // nproc != rank // nproc]
                if rank % nproc:
                    assert not remote and parent == rank - 1
                else:
                    assert all(r % nproc == 0 for r in remote)

    @pytest.mark.parametrize("nnodes", [2, 3, 4, 7, 16])
    def test_double_tree(self, nnodes: int) -> None:
        """With several nodes the two trees have different roots, as in a double binary tree."""
        tr = trees(topo(nnodes, 8))
        roots = {c: next(r for r, (_, p) in tr[c].items() if p < 0) for c in (0, 1)}
        assert roots[0] == 0 and roots[1] != 0


class TestLineFormat:
    @pytest.mark.parametrize(("nnodes", "nproc"), [(1, 1), (1, 8), (2, 8), (4, 4), (16, 8)])
    def test_every_line_is_prefixed_but_the_version(self, nnodes: int, nproc: int) -> None:
        """Each line has the `host:pid:tid [dev] NCCL INFO` prefix; rank 0 alone adds a bare version line."""
        t = topo(nnodes, nproc)
        for rank in {0, 1 % t.world, t.world - 1, t.world // 2}:
            lines = nccl_init_lines(t, rank, pid=1000 + rank, tid=2000 + rank, seed=5)
            bare = [ln for ln in lines if not PREFIX.match(ln)]
            if rank == 0:
                assert len(bare) == 1 and VERSION.match(bare[0])
            else:
                assert bare == []
            for ln in lines:
                m = PREFIX.match(ln)
                if m:
                    assert m.group(1) == t.hosts[rank // nproc] and int(m.group(4)) == rank % nproc

    def test_threads(self) -> None:
        """The network probe runs on the main thread (tid == pid), everything after on the init thread."""
        lines = nccl_init_lines(topo(2, 8), 9, pid=4242, tid=4300, seed=1)
        tids = [int(m.group(3)) for m in map(PREFIX.match, lines) if m]
        assert tids[:4] == [4242] * 4 and set(tids[4:]) == {4300}
        assert all(int(m.group(2)) == 4242 for m in map(PREFIX.match, lines) if m)

    @pytest.mark.parametrize("rank", [0, 5, 8, 15])
    def test_order_and_last_line(self, rank: int) -> None:
        """Bootstrap, plugin, NET/IB and network first; rings then trees connected; `Init COMPLETE` last."""
        t = topo(2, 8)
        msgs = messages(nccl_init_lines(t, rank, pid=10, tid=11, seed=3))
        assert msgs[0].startswith("Bootstrap : Using ib0:")
        assert msgs[1].startswith("NET/Plugin")
        assert msgs[2].startswith("NET/IB : Using [0]mlx5_0:1/IB")
        assert msgs[3] == "Using network IB"
        assert msgs.index("Connected all rings") < msgs.index("Connected all trees")
        assert re.fullmatch(r"threadThresholds \d+/\d+/\d+ \| \d+/\d+/\d+ \| \d+ \| \d+", msgs[-3])
        assert msgs[-2] == "2 coll channels, 2 p2p channels, 1 p2p channels per peer"
        local = rank % 8
        assert re.fullmatch(
            rf"comm 0x[0-9a-f]{{12}} rank {rank} nranks 16 cudaDev {local} busId {bus_id(local)}"
            r" - Init COMPLETE",
            msgs[-1],
        )

    def test_nic_list(self) -> None:
        """NET/IB lists every HCA of the node with its port and link layer, then the OOB interface."""
        msg = messages(nccl_init_lines(topo(2, 8), 3, pid=1, tid=2, seed=0))[2]
        devices = re.findall(r"\[(\d+)\](mlx5_\d+):1/IB", msg)
        assert devices == [(str(i), f"mlx5_{i}") for i in range(8)]
        assert re.search(r" ; OOB ib0:[\d.]+<0>$", msg)

    def test_affinity_masks(self) -> None:
        """Each GPU is pinned to one CPU socket: GPUs 0-3 share a mask, 4-7 another, with no CPU in common."""
        t = topo(1, 8, cpu_cores=112)
        masks = []
        for rank in range(8):
            msg = next(m for m in messages(nccl_init_lines(t, rank, pid=1, tid=2, seed=0)) if "affinity" in m)
            m = re.fullmatch(rf"Setting affinity for GPU {rank} to ([0-9a-f,]+)", msg)
            assert m
            masks.append(int(m.group(1).replace(",", ""), 16))
        assert len(set(masks[:4])) == len(set(masks[4:])) == 1
        assert masks[0] & masks[4] == 0
        assert bin(masks[0]).count("1") == bin(masks[4]).count("1") == 112  # 56 cores x 2 threads


class TestRankZeroOnly:
    @pytest.mark.parametrize(("nnodes", "nproc"), [(1, 8), (2, 8), (128, 8)])
    def test_ring_lines(self, nnodes: int, nproc: int) -> None:
        """Only rank 0 prints the rings, one line per channel listing the ring from rank 0, width-3 ranks."""
        t = topo(nnodes, nproc)
        msgs = messages(nccl_init_lines(t, 0, pid=1, tid=2, seed=0))
        rings = [m for m in msgs if re.match(r"Channel \d\d/\d\d :", m)]
        assert len(rings) == 2
        for c, line in enumerate(rings):
            head, _, ranks = line.partition(" : ")
            assert head == f"Channel {c:02d}/02"
            listed = [int(x) for x in ranks.split()]
            # As in real logs: at most the first 20 ranks, each right-aligned in 3 columns after a space.
            assert listed == ring_order(t, c)[: min(t.world, 20)]
            assert ranks == "".join(f" {r:>3}" for r in listed)
        for rank in range(1, min(t.world, 40)):
            others = messages(nccl_init_lines(t, rank, pid=1, tid=2, seed=0))
            assert not any(re.match(r"Channel \d\d/\d\d :", m) for m in others)


class TestConnections:
    @pytest.mark.parametrize(("nnodes", "nproc"), [(1, 8), (2, 8), (4, 4), (5, 2), (3, 1)])
    def test_send_and_receive_pair_up(self, nnodes: int, nproc: int) -> None:
        """Each `[send]` a -> b is printed by b as `[receive]`; P2P stays inside a node, NET crosses."""
        t = topo(nnodes, nproc)
        sends, receives = set(), set()
        for rank in range(t.world):
            for msg in messages(nccl_init_lines(t, rank, pid=1, tid=2, seed=0)):
                m = CONN.match(msg)
                if not m:
                    continue
                c, a, bus_a, b, bus_b, how = m.groups()
                a_i, b_i = int(a), int(b)
                assert bus_a == bus_id(a_i % nproc) and bus_b == bus_id(b_i % nproc)
                same_node = a_i // nproc == b_i // nproc
                if how == "via P2P/IPC/read":
                    assert same_node and a_i == rank
                elif how.startswith("[send] via NET/IB/"):
                    assert not same_node and a_i == rank
                    sends.add((c, a_i, b_i))
                else:
                    assert re.fullmatch(r"\[receive\] via NET/IB/\d", how) and not same_node and b_i == rank
                    receives.add((c, a_i, b_i))
        assert sends == receives
        assert bool(sends) == (nnodes > 1)

    def test_ring_neighbours(self) -> None:
        """Before `Connected all rings`, each rank connects channel c to its successor in ring c."""
        t = topo(2, 8)
        for rank in range(t.world):
            msgs = messages(nccl_init_lines(t, rank, pid=1, tid=2, seed=0))
            ring_part = msgs[: msgs.index("Connected all rings")]
            links = {(m.group(1), int(m.group(2)), int(m.group(4))) for m in map(CONN.match, ring_part) if m}
            for c in (0, 1):
                order = ring_order(t, c)
                nxt = order[(order.index(rank) + 1) % t.world]
                assert (f"{c:02d}", rank, nxt) in links


class TestScaleAndDeterminism:
    def test_bounded_at_1024_ranks(self) -> None:
        """At 128 x 8 ranks every rank prints a short list of short-enough lines."""
        t = topo(128, 8)
        for rank in range(t.world):
            lines = nccl_init_lines(t, rank, pid=100 + rank, tid=9000 + rank, seed=2)
            assert len(lines) <= 25
            assert max(len(ln) for ln in lines) <= 250

    @settings(max_examples=40, deadline=None)
    @given(st.integers(1, 32), st.integers(1, 8), st.integers(0, 2**63), st.data())
    def test_deterministic_per_seed(self, nnodes: int, nproc: int, seed: int, data: st.DataObject) -> None:
        """The same topology, rank, ids and seed give the same lines."""
        t = topo(nnodes, nproc)
        rank = data.draw(st.integers(0, t.world - 1))
        first = nccl_init_lines(t, rank, pid=7, tid=8, seed=seed)
        assert first == nccl_init_lines(t, rank, pid=7, tid=8, seed=seed)

    def test_seed_changes_addresses(self) -> None:
        """Other seeds give other IPs and comm pointers; the line structure stays the same."""
        t = topo(2, 8)
        runs = [nccl_init_lines(t, 3, pid=7, tid=8, seed=s) for s in range(8)]
        assert len({r[0] for r in runs}) > 1 and len({r[-1] for r in runs}) > 1
        assert len({len(r) for r in runs}) == 1

    @pytest.mark.parametrize("seed", [0, 1, 99, 2**40])
    def test_bootstrap_ips(self, seed: int) -> None:
        """Each node has one private 10.x address, used for both bootstrap and OOB, distinct across nodes."""
        t = topo(128, 1)
        ips = []
        for rank in range(t.world):
            msgs = messages(nccl_init_lines(t, rank, pid=1, tid=2, seed=seed))
            boot = re.fullmatch(r"Bootstrap : Using ib0:([\d.]+)<0>", msgs[0])
            assert boot
            assert msgs[2].endswith(f"OOB ib0:{boot.group(1)}<0>")
            ip = ipaddress.IPv4Address(boot.group(1))
            assert ip in ipaddress.IPv4Network("10.0.0.0/8")
            ips.append(ip)
        assert len(set(ips)) == t.world


class TestFromPresets:
    @pytest.mark.parametrize("name", presets.list_presets()["clusters"])
    def test_cluster_presets(self, name: str) -> None:
        """Each cluster preset gives lines that name its NICs, its GPUs' bus ids and its runtime."""
        cluster = presets.load_cluster(name)
        hosts = [presets.host_name(cluster, i) for i in range(2)]
        t = nccl_topo_for(cluster, 2, cluster.gpus_per_node, hosts)
        assert t.world == 2 * cluster.gpus_per_node and t.nics_per_node == cluster.nics_per_node
        lines = nccl_init_lines(t, 0, pid=1, tid=2, seed=0)
        assert all(PREFIX.match(ln) or VERSION.match(ln) for ln in lines)
        version = next(ln for ln in lines if VERSION.match(ln))
        assert ("+hip" in version) == (cluster.gpu.vendor == "amd")
        nic_line = messages(lines)[2]
        assert nic_line.count(cluster.nic_name) == cluster.nics_per_node
        first_bus = int(cluster.bus_ids[0], 16) if cluster.bus_ids else 0x18
        assert lines[-1].split("busId ")[1].startswith(f"{first_bus << 12:x} ")

    def test_bad_topologies(self) -> None:
        """A host list that does not match the node count, or a rank outside the job, is refused."""
        with pytest.raises(ValueError):
            NcclTopo(2, 8, ("only-one",), 8, "mlx5_", "nvidia")
        with pytest.raises(ValueError):
            nccl_init_lines(topo(1, 8), 8, pid=1, tid=2, seed=0)
