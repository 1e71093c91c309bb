"""Unit tests of SLURM support: hostlist expansion, the job step's environment, and apply_slurm's rules."""

from __future__ import annotations

import dataclasses
import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakerun import presets
from fakerun.cli import parse_command_line
from fakerun.launcher import slurm
from fakerun.launcher.slurm import (
    MAX_RANGE,
    SlurmJob,
    apply_slurm,
    compress_hostlist,
    expand_nodelist,
    preset_nodelist,
    simulated_hosts,
    slurm_job,
)
from fakerun.options import TorchrunArgs

# What a task of `srun` inside a 4-node sbatch job with --ntasks-per-node=1 sees on its third node.
STEP_ENV = {
    "SLURM_JOB_ID": "812345",
    "SLURM_JOB_NAME": "llama3-8b",
    "SLURM_NNODES": "4",
    "SLURM_JOB_NUM_NODES": "4",
    "SLURM_JOB_NODELIST": "gpu-[001-004]",
    "SLURM_NODELIST": "gpu-[001-004]",
    "SLURM_NODEID": "2",
    "SLURM_PROCID": "2",
    "SLURM_LOCALID": "0",
    "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_TASKS_PER_NODE": "1(x4)",
    "SLURM_GPUS_ON_NODE": "8",
    "SLURM_CPUS_PER_TASK": "96",
    "SLURMD_NODENAME": "gpu-003",
}


def job_for(**kw: object) -> SlurmJob:
    """A 4-node job on gpu-[001-004], seen from node 2, with fields overridden by `kw`."""
    base = SlurmJob(
        job_id="812345",
        nnodes=4,
        node_id=2,
        proc_id=2,
        ntasks=4,
        nodelist=("gpu-001", "gpu-002", "gpu-003", "gpu-004"),
        ntasks_per_node=1,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def args_for(**kw: object) -> TorchrunArgs:
    """TorchrunArgs for train.py with `kw` set."""
    return TorchrunArgs(training_script="train.py", **kw)  # type: ignore[arg-type]


class TestExpandNodelist:
    """SLURM hostlist expressions expand as `scontrol show hostnames` prints them."""

    @pytest.mark.parametrize(
        ("text", "hosts"),
        [
            ("gpu-[001-004]", ["gpu-001", "gpu-002", "gpu-003", "gpu-004"]),
            ("node[1,3,5-7]", ["node1", "node3", "node5", "node6", "node7"]),
            ("a-[01-02]-b[1-2]", ["a-01-b1", "a-01-b2", "a-02-b1", "a-02-b2"]),
            ("gpu-[001-002],login1", ["gpu-001", "gpu-002", "login1"]),
            ("login1", ["login1"]),
            ("node007", ["node007"]),
            ("n[8-10]", ["n8", "n9", "n10"]),
            ("n[08-10]", ["n08", "n09", "n10"]),
            ("n[001-10]", ["n001", "n002", "n003", "n004", "n005", "n006", "n007", "n008", "n009", "n010"]),
            ("n[7-007]", ["n7"]),
            ("[1-3]", ["1", "2", "3"]),
            ("n[5]", ["n5"]),
            ("n[2,1,2]", ["n2", "n1", "n2"]),
            ("a1 b2\tc3", ["a1", "b2", "c3"]),
            (",a1,,b2,", ["a1", "b2"]),
            ("", []),
            ("  ", []),
            ("rack[1-2]-gpu[01-02],x", ["rack1-gpu01", "rack1-gpu02", "rack2-gpu01", "rack2-gpu02", "x"]),
            ("dgx-h100.cluster.local", ["dgx-h100.cluster.local"]),
        ],
    )
    def test_examples(self, text: str, hosts: list[str]) -> None:
        """Ranges, lists, zero padding from the low end, separators and plain names."""
        assert expand_nodelist(text) == hosts

    def test_three_brackets_follow_slurms_loop_order(self) -> None:
        """With three brackets the middle one is the outer loop, as hostlist.c's recursion does it."""
        assert expand_nodelist("r[1-2]c[1-2]n[1-2]") == [
            "r1c1n1", "r1c1n2", "r2c1n1", "r2c1n2", "r1c2n1", "r1c2n2", "r2c2n1", "r2c2n2",
        ]  # fmt: skip

    def test_largest_range(self) -> None:
        """A range of exactly MAX_RANGE hosts is fine."""
        assert len(expand_nodelist(f"n[1-{MAX_RANGE}]")) == MAX_RANGE


class TestMalformedNodelist:
    """A malformed hostlist raises ValueError with one line that quotes it."""

    @pytest.mark.parametrize(
        "text",
        [
            "node[1-2",
            "node]",
            "node1]",
            "n[[1-2]]",
            "n[1-[2]]",
            "n[]",
            "n[2-1]",
            "n[1-2]-ib",
            "n[1-2]x[3]y",
            "n[a]",
            "n[1-b]",
            "n[1,,2]",
            "n[,1]",
            "n[1-]",
            "n[-1]",
            "n[1--2]",
            "n[1 2]",
            "n[+1]",
            "n[0x10]",
            "n[1-2-3]",
            "n[１]",  # a full-width digit: not ASCII
            f"n[0-{MAX_RANGE}]",
            "a[0-1023]b[0-1023]c[0-3]",
            "n[1-2]\n[3]",
            "gpu-001\ngpu-002",
            "n\x00[1]",
        ],
    )
    def test_raises_one_line(self, text: str) -> None:
        """Unbalanced or nested brackets, bad ranges, a suffix after the last bracket, too many hosts."""
        with pytest.raises(ValueError, match="bad SLURM hostlist") as info:
            expand_nodelist(text)
        assert "\n" not in str(info.value)


# --- round trip: random hostlists against an independent expansion ----------------------------------------

_NAME_CHARS = st.sampled_from("abcxyz-._0123456789")
_literal = st.text(_NAME_CHARS, max_size=4)


@st.composite
def _range(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A bracket element as written (`007-012`) and the names it stands for."""
    lo = draw(st.integers(0, 999))
    count = draw(st.integers(1, 12))
    width = draw(st.integers(len(str(lo)), 5))
    hi = lo + count - 1
    hi_pad = draw(st.integers(0, 5))  # the high end's padding means nothing to SLURM
    lo_text = f"{lo:0{width}d}"
    text = lo_text if count == 1 else f"{lo_text}-{hi:0{hi_pad}d}"
    return text, [f"{n:0{width}d}" for n in range(lo, hi + 1)]


@st.composite
def _group(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A bracket `[...]` of one to three elements, and its names in order."""
    parts = draw(st.lists(_range(), min_size=1, max_size=3))
    return "[" + ",".join(t for t, _ in parts) + "]", [n for _, names in parts for n in names]


@st.composite
def _token(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A plain host name or `lit[..]lit[..]`, with the hosts an independent expansion gives."""
    n_groups = draw(st.integers(0, 3))
    if n_groups == 0:
        name = draw(st.text(_NAME_CHARS, min_size=1, max_size=8))
        return name, [name]
    literals = [draw(_literal) for _ in range(n_groups)]
    groups = [draw(_group()) for _ in range(n_groups)]
    text = "".join(lit + g for lit, (g, _) in zip(literals, groups, strict=True))
    # SLURM's loop order, outermost first: the brackets before the last from right to left, then the last.
    order = [*range(n_groups - 2, -1, -1), n_groups - 1]
    hosts = []
    for combo in itertools.product(*(groups[i][1] for i in order)):
        value = dict(zip(order, combo, strict=True))
        hosts.append("".join(literals[i] + value[i] for i in range(n_groups)))
    return text, hosts


class TestRoundTrip:
    """Random hostlists expand to what an independent cartesian expansion says."""

    @settings(max_examples=300, deadline=None)
    @given(st.lists(_token(), min_size=1, max_size=4), st.sampled_from([",", " ", ",,", "\t"]))
    def test_formatted_ranges_expand_back(self, tokens: list[tuple[str, list[str]]], sep: str) -> None:
        """Formatting random ranges as a hostlist and expanding them gives every host, in order."""
        text = sep.join(t for t, _ in tokens)
        assert expand_nodelist(text) == [h for _, hosts in tokens for h in hosts]

    @given(st.lists(st.text(_NAME_CHARS, min_size=1, max_size=10), max_size=6))
    def test_plain_names_are_kept(self, names: list[str]) -> None:
        """A comma-separated list of plain names expands to itself."""
        assert expand_nodelist(",".join(names)) == names

    @given(st.integers(0, 99_999), st.integers(1, 300), st.integers(1, 6))
    def test_count_and_padding(self, lo: int, count: int, width: int) -> None:
        """`p[lo-hi]` gives hi-lo+1 hosts, each padded to the low end's width."""
        hosts = expand_nodelist(f"p[{lo:0{width}d}-{lo + count - 1}]")
        assert len(hosts) == count
        assert all(len(h) - 1 >= width for h in hosts)
        assert [int(h[1:]) for h in hosts] == list(range(lo, lo + count))


class TestSlurmJob:
    """slurm_job reads a job step's task environment, and is None outside one."""

    def test_full_step(self) -> None:
        """Every field of a typical torchrun-style step (one task per node)."""
        job = slurm_job(STEP_ENV)
        assert job == SlurmJob(
            job_id="812345",
            nnodes=4,
            node_id=2,
            proc_id=2,
            ntasks=4,
            nodelist=("gpu-001", "gpu-002", "gpu-003", "gpu-004"),
            ntasks_per_node=1,
            gpus_on_node=8,
            local_id=0,
            job_name="llama3-8b",
            node_name="gpu-003",
            cpus_per_task=96,
        )
        assert job.head_node == "gpu-001"

    @pytest.mark.parametrize(
        "environ",
        [
            {},
            {"PATH": "/usr/bin", "HOME": "/root"},
            {"SLURM_JOB_ID": "812345"},
            # An salloc shell: the job's nodes, but no task of them (no SLURM_NODEID / SLURM_PROCID).
            {
                "SLURM_JOB_ID": "812345",
                "SLURM_NNODES": "4",
                "SLURM_JOB_NUM_NODES": "4",
                "SLURM_JOB_NODELIST": "gpu-[001-004]",
                "SLURM_NODELIST": "gpu-[001-004]",
            },
            {k: v for k, v in STEP_ENV.items() if k not in ("SLURM_NNODES", "SLURM_JOB_NUM_NODES")},
            {k: v for k, v in STEP_ENV.items() if k not in ("SLURM_JOB_NODELIST", "SLURM_NODELIST")},
            {k: v for k, v in STEP_ENV.items() if k != "SLURM_JOB_ID"},
            {**STEP_ENV, "SLURM_JOB_ID": "  "},
        ],
    )
    def test_none_outside_a_step(self, environ: dict[str, str]) -> None:
        """No SLURM_JOB_ID, or no node count, node list, node id or task id: not a SLURM task."""
        assert slurm_job(environ) is None

    def test_minimal_step(self) -> None:
        """Job id, node count, node list, node id and task id suffice; the rest defaults."""
        job = slurm_job(
            {
                "SLURM_JOBID": "7",
                "SLURM_JOB_NUM_NODES": "2",
                "SLURM_JOB_NODELIST": "n[1-2]",
                "SLURM_NODEID": "1",
                "SLURM_PROCID": "1",
            }
        )
        assert job is not None
        assert (job.job_id, job.nnodes, job.nodelist, job.ntasks, job.ntasks_per_node) == (
            "7",
            2,
            ("n1", "n2"),
            2,
            None,
        )
        assert (job.gpus_on_node, job.job_name, job.node_name, job.local_id) == (None, None, None, 0)

    def test_step_variables_win(self) -> None:
        """`srun -N1` inside a 4-node job: the step's node count and list, not the job's."""
        env = {
            **STEP_ENV,
            "SLURM_STEP_NUM_NODES": "1",
            "SLURM_STEP_NODELIST": "gpu-004",
            "SLURM_STEP_NUM_TASKS": "1",
            "SLURM_STEP_TASKS_PER_NODE": "1",
            "SLURM_NODEID": "0",
            "SLURM_PROCID": "0",
        }
        job = slurm_job(env)
        assert job is not None
        assert (job.nnodes, job.nodelist, job.ntasks, job.head_node) == (1, ("gpu-004",), 1, "gpu-004")

    @pytest.mark.parametrize(
        ("tasks_per_node", "node_id", "here", "total"),
        [("2(x3),1", 3, 1, 7), ("2(x3),1", 0, 2, 7), ("8(x4)", 2, 8, 32), ("1,2,3,4", 1, 2, 10)],
    )
    def test_tasks_per_node(self, tasks_per_node: str, node_id: int, here: int, total: int) -> None:
        """SLURM_TASKS_PER_NODE's `2(x3),1` form: this node's tasks, and the total without SLURM_NTASKS."""
        env = {k: v for k, v in STEP_ENV.items() if k not in ("SLURM_NTASKS", "SLURM_NTASKS_PER_NODE")}
        env.update(SLURM_TASKS_PER_NODE=tasks_per_node, SLURM_NODEID=str(node_id), SLURM_PROCID="0")
        job = slurm_job(env)
        assert job is not None
        assert (job.ntasks_per_node, job.ntasks) == (here, total)

    @pytest.mark.parametrize(
        ("override", "needle"),
        [
            ({"SLURM_NNODES": "four"}, "SLURM_NNODES='four'"),
            ({"SLURM_NNODES": "-1"}, "SLURM_NNODES"),
            ({"SLURM_NNODES": "0", "SLURM_NODELIST": "", "SLURM_JOB_NODELIST": "x"}, "at least one node"),
            ({"SLURM_NNODES": "3"}, "names 4 hosts"),
            ({"SLURM_NODELIST": "gpu-[001-004"}, "bad SLURM hostlist"),
            ({"SLURM_NODEID": "4"}, "SLURM_NODEID=4"),
            ({"SLURM_NODEID": "x"}, "SLURM_NODEID"),
            ({"SLURM_PROCID": "4"}, "SLURM_PROCID=4"),
            ({"SLURM_GPUS_ON_NODE": "eight"}, "SLURM_GPUS_ON_NODE"),
            ({"SLURM_TASKS_PER_NODE": "1(x3"}, "SLURM_TASKS_PER_NODE"),
            ({"SLURM_TASKS_PER_NODE": "1(x3)"}, "describes 3 nodes"),
        ],
    )
    def test_garbled_values_raise(self, override: dict[str, str], needle: str) -> None:
        """A SLURM variable with a value SLURM never writes is a one-line ValueError naming it."""
        with pytest.raises(ValueError) as info:
            slurm_job({**STEP_ENV, **override})
        assert needle in str(info.value)
        assert "\n" not in str(info.value)

    def test_simulated_hosts(self) -> None:
        """The simulated nodes take the node list's names, in node-id order."""
        job = slurm_job({**STEP_ENV, "SLURM_NODELIST": "dgx-[07-08],dgx-[01-02]"})
        assert job is not None
        assert simulated_hosts(job) == ["dgx-07", "dgx-08", "dgx-01", "dgx-02"]


class TestApplySlurm:
    """apply_slurm fills what the command line left out, and never what the user gave."""

    def test_static_fills_nnodes_node_rank_master(self) -> None:
        """Bare `fakerun train.py` on node 2 of 4: nnodes 4, node rank 2, master the first host."""
        out = apply_slurm(args_for(), job_for(), frozenset())
        assert (out.nnodes, out.node_rank, out.master_addr, out.rdzv_id) == ("4", 2, "gpu-001", "none")
        assert out.explicit == {"nnodes", "node_rank", "master_addr"}

    def test_c10d_fills_rdzv_id_only(self) -> None:
        """c10d with an endpoint: the job id becomes the run id; node rank and master stay untouched."""
        args = args_for(rdzv_backend="c10d", rdzv_endpoint="10.0.0.1:29500")
        out = apply_slurm(args, job_for(), frozenset({"rdzv_backend", "rdzv_endpoint"}))
        assert (out.nnodes, out.rdzv_id, out.node_rank, out.master_addr) == ("4", "812345", 0, "127.0.0.1")
        assert out.explicit == {"nnodes", "rdzv_id"}

    def test_static_endpoint_keeps_master(self) -> None:
        """Static with --rdzv-endpoint: the endpoint is the master; only nnodes and node rank are filled."""
        args = args_for(rdzv_endpoint="head:29400")
        out = apply_slurm(args, job_for(), frozenset({"rdzv_endpoint"}))
        assert (out.nnodes, out.node_rank, out.master_addr) == ("4", 2, "127.0.0.1")

    def test_standalone_is_left_alone(self) -> None:
        """--standalone is one node by definition: nothing is filled."""
        args = args_for(standalone=True)
        assert apply_slurm(args, job_for(), frozenset({"standalone"})) is args

    @pytest.mark.parametrize(
        ("field", "value"),
        [("nnodes", "2:4"), ("node_rank", 0), ("master_addr", "10.1.2.3"), ("rdzv_id", "none")],
    )
    def test_explicit_wins(self, field: str, value: object) -> None:
        """A value the user gave (even the default) is kept as given."""
        backend = "c10d" if field == "rdzv_id" else "static"
        args = args_for(rdzv_backend=backend, **{field: value})
        out = apply_slurm(args, job_for(), frozenset({field}))
        assert getattr(out, field) == value

    @settings(max_examples=200, deadline=None)
    @given(
        st.sets(st.sampled_from(["nnodes", "node_rank", "master_addr", "rdzv_id", "rdzv_endpoint"])),
        st.sampled_from(["static", "c10d", "etcd-v2"]),
        st.booleans(),
    )
    def test_never_overrides(self, explicit: set[str], backend: str, endpoint: bool) -> None:
        """Whatever the form, every explicit field keeps its value and the rest of args is unchanged."""
        args = args_for(
            nnodes="3",
            node_rank=1,
            master_addr="10.9.9.9",
            rdzv_id="mine",
            rdzv_backend=backend,
            rdzv_endpoint="h:1" if endpoint else "",
        )
        out = apply_slurm(args, job_for(), frozenset(explicit))
        static = backend == "static"
        expected: dict[str, object] = {}  # the rules, restated
        if "nnodes" not in explicit:
            expected["nnodes"] = "4"
        if static and "node_rank" not in explicit:
            expected["node_rank"] = 2
        if static and not endpoint and "master_addr" not in explicit:
            expected["master_addr"] = "gpu-001"
        if not static and "rdzv_id" not in explicit:
            expected["rdzv_id"] = "812345"
        assert out == dataclasses.replace(args, **expected)  # type: ignore[arg-type]
        assert out.explicit == set(expected)
        assert not explicit & set(expected)

    def test_several_tasks_per_node_refuse_node_rank(self) -> None:
        """Eight tasks per node cannot all be node SLURM_NODEID of a static job: a one-line error."""
        with pytest.raises(ValueError, match="8 tasks on gpu-003") as info:
            apply_slurm(args_for(), job_for(ntasks_per_node=8, ntasks=32), frozenset())
        assert "\n" not in str(info.value)

    def test_several_tasks_per_node_fine_with_given_rank(self) -> None:
        """With --node-rank given, several tasks per node are the user's business."""
        out = apply_slurm(args_for(node_rank=1), job_for(ntasks_per_node=8), frozenset({"node_rank"}))
        assert out.node_rank == 1

    def test_single_node_job(self) -> None:
        """A one-node allocation gives --nnodes 1 and node rank 0."""
        job = job_for(nnodes=1, node_id=0, proc_id=0, ntasks=1, nodelist=("gpu-001",))
        out = apply_slurm(args_for(), job, frozenset())
        assert (out.nnodes, out.node_rank, out.master_addr) == ("1", 0, "gpu-001")

    def test_with_the_parsed_command_line(self) -> None:
        """Options from the command line and PET_* count as explicit, the others come from SLURM."""
        cmd = parse_command_line(
            [
                "--nproc-per-node",
                "8",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                "gpu-001:29500",
                "train.py",
            ],
            {"PET_NNODES": "2:4"},
        )
        job = slurm_job(STEP_ENV)
        assert job is not None
        out = apply_slurm(cmd.torchrun, job, cmd.torchrun.explicit)
        assert (out.nnodes, out.rdzv_id, out.rdzv_endpoint, out.node_rank) == (
            "2:4",
            "812345",
            "gpu-001:29500",
            0,
        )


class TestCompressHostlist:
    """compress_hostlist writes a host list in SLURM's ranged form, which expands back to it."""

    @pytest.mark.parametrize(
        ("hosts", "text"),
        [
            (["gpu-node-001"], "gpu-node-001"),
            (["gpu-node-001", "gpu-node-002"], "gpu-node-[001-002]"),
            (["dgx01", "dgx02", "dgx03", "dgx07", "login"], "dgx[01-03,07],login"),
            (["n8", "n9", "n10"], "n[8-9],n10"),
            (["b200-0001", "h200-000", "h200-001"], "b200-0001,h200-[000-001]"),
            (["a3", "a1", "a2"], "a[3,1-2]"),
            (["r1c1", "r1c2", "r2c1"], "r1c[1-2],r2c1"),
            ([], ""),
        ],
    )
    def test_examples(self, hosts: list[str], text: str) -> None:
        """Neighbours of one prefix and number width share a bracket; order is kept."""
        assert compress_hostlist(hosts) == text
        assert expand_nodelist(text) == hosts

    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["gpu-node-", "dgx", "a100-st-p4d-24xlarge-", "x"]),
                st.integers(0, 120),
                st.integers(1, 4),
            ),
            max_size=12,
        )
    )
    def test_round_trip(self, parts: list[tuple[str, int, int]]) -> None:
        """Any list of numbered names expands back from its ranged form, in the same order."""
        hosts = [f"{prefix}{n:0{width}d}" for prefix, n, width in parts]
        assert expand_nodelist(compress_hostlist(hosts)) == hosts


class TestPresetNodelist:
    """The node list fake_srun.sh gives a job: the cluster preset's host names, never `fake-`."""

    @pytest.mark.parametrize("name", presets.list_presets()["clusters"])
    def test_every_cluster_names_its_nodes(self, name: str) -> None:
        """Each shipped preset's list expands to its host names; no tool name in them."""
        cluster = presets.load_cluster(name)
        text = preset_nodelist(cluster, 4)
        hosts = [presets.host_name(cluster, i) for i in range(4)]
        assert expand_nodelist(text) == hosts and "fake" not in text
        # Numbered nodes compress to a range; EC2's address-named hosts (ip-10-1-2-3) share no prefix.
        if len({re.sub(r"\d+$", "", h) for h in hosts}) == 1:
            assert "[" in text

    def test_presets_are_told_apart(self) -> None:
        """No two shipped cluster presets name their first node alike."""
        names = presets.list_presets()["clusters"]
        firsts = {presets.host_name(presets.load_cluster(n), 0) for n in names}
        assert len(firsts) == len(names)

    def test_default_cluster(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`python -m fakerun.launcher.slurm 2`: the default model's cluster (dgx-h100) names the nodes."""
        from fakerun.main import DEFAULT_MODEL

        assert slurm.DEFAULT_MODEL == DEFAULT_MODEL
        assert slurm.main(["2"]) == 0
        assert capsys.readouterr().out == "gpu-node-[001-002]\n"
        assert slurm.main(["1", "dgx-a100"]) == 0
        assert capsys.readouterr().out == "dgx01\n"

    @pytest.mark.parametrize("argv", [[], ["0"], ["two"], ["2", "no-such-cluster"], ["1", "2", "3"]])
    def test_bad_arguments(self, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        """Usage or the preset error on stderr, exit 2, nothing on stdout."""
        assert slurm.main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.strip()

    def test_no_nodes(self) -> None:
        """A job has at least one node."""
        with pytest.raises(ValueError):
            preset_nodelist(presets.load_cluster("dgx-h100"), 0)
