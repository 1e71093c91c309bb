"""Unit tests of the launch plan (rendezvous selection, topology) and of the worker environment."""

from __future__ import annotations

import signal
import uuid

import pytest

from fakerun.launcher.envs import worker_argv, worker_env, worker_slots
from fakerun.launcher.plan import LaunchError, NodePlan, make_plan, parse_std, random_uuid
from fakerun.options import TorchrunArgs

UUID = "97f2a5c4-832e-4665-9d8b-a0de9c567226"
TORCHRUN_KEYS = {
    "GROUP_RANK", "GROUP_WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "RANK", "ROLE_NAME", "ROLE_RANK", "ROLE_WORLD_SIZE", "TORCHELASTIC_ERROR_FILE",
    "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_SIGNALS_TO_HANDLE", "TORCHELASTIC_USE_AGENT_STORE", "TORCH_NCCL_ASYNC_ERROR_HANDLING",
    "WORLD_SIZE",
}  # fmt: skip


def plan_for(environ: dict[str, str] | None = None, **kw: object):  # type: ignore[no-untyped-def]
    args = TorchrunArgs(training_script="train.py", **kw)  # type: ignore[arg-type]
    return make_plan(args, environ or {}, fqdn="localhost", free_port=39165, cpu_count=2, run_uuid=UUID)


class TestRendezvousSelection:
    """torchrun's rules for standalone, automatic c10d and static."""

    def test_random_uuid_is_a_version_4_uuid(self) -> None:
        """A standalone run id parses, in the uuid module, as a random UUID spelled as it spells one."""
        ids = {random_uuid() for _ in range(200)}
        assert len(ids) == 200
        for text in ids:
            parsed = uuid.UUID(text)
            assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)

    def test_standalone(self) -> None:
        """--standalone: c10d on localhost:0, a uuid run id, the fqdn and a random port."""
        p = plan_for(standalone=True, nproc_per_node="4", rdzv_id="ignored", rdzv_backend="static")
        assert (p.rdzv.backend, p.rdzv.endpoint, p.rdzv.run_id) == ("c10d", "localhost:0", UUID)
        assert (p.rdzv.master_addr, p.rdzv.master_port) == ("localhost", 39165)

    def test_bare_single_node_switches_to_c10d(self) -> None:
        """No rendezvous flags on one node: torchrun switches to c10d itself."""
        p = plan_for(nproc_per_node="2")
        assert (p.rdzv.form, p.rdzv.run_id, p.rdzv.master_addr) == ("c10d", UUID, "localhost")

    def test_master_port_keeps_static(self) -> None:
        """--master-port on one node keeps static: run id `none`, 127.0.0.1 and that port."""
        p = plan_for(master_port=29513, nproc_per_node="2")
        assert (p.rdzv.form, p.rdzv.run_id, p.rdzv.master_addr, p.rdzv.master_port) == (
            "static",
            "none",
            "127.0.0.1",
            29513,
        )

    def test_static_multi_node_default_port(self) -> None:
        """--nnodes 2 without a port is static on 29500."""
        p = plan_for(nnodes="2", nproc_per_node="2")
        assert (p.rdzv.form, p.rdzv.master_port) == ("static", 29500)

    def test_local_addr_overrides_c10d_master(self) -> None:
        """--local-addr sets the MASTER_ADDR workers see under c10d."""
        assert plan_for(standalone=True, local_addr="127.0.0.1").rdzv.master_addr == "127.0.0.1"


class TestTopology:
    """One fakerun plays every node of a static N-node job."""

    def test_ranks_and_hosts_of_local_multi_node(self) -> None:
        """Node n's local rank l gets rank n*nproc+l and its own host name."""
        p = plan_for(nnodes="2", nproc_per_node="2")
        slots = worker_slots(p)
        assert [(s.node_index, s.local_rank, s.rank) for s in slots] == [
            (0, 0, 0),
            (0, 1, 1),
            (1, 0, 2),
            (1, 1, 3),
        ]
        assert len({s.host for s in slots}) == 2
        assert p.world_size == 4

    @pytest.mark.parametrize(("value", "expected"), [("3", 3), ("cpu", 2), ("gpu", 8), ("auto", 8)])
    def test_nproc_values(self, value: str, expected: int) -> None:
        """int, cpu (CPU count), gpu and auto (the simulated GPUs per node)."""
        assert plan_for(nproc_per_node=value).nproc_per_node == expected

    def test_nproc_on_a_host_without_gpus(self) -> None:
        """The real scripts' host without CUDA: torch's `gpu` raises, `auto` falls back to the CPU count."""
        args = TorchrunArgs(training_script="train.py", nproc_per_node="gpu")
        with pytest.raises(LaunchError) as err:
            make_plan(args, {}, fqdn="localhost", free_port=1, cpu_count=2, gpus_per_node=0)
        assert err.value.exc_line == "ValueError: Cuda is not available."
        # Raised `from` the int() that failed first, as torch's determine_local_world_size does.
        assert err.value.cause == ("nproc_int", "ValueError: invalid literal for int() with base 10: 'gpu'")
        args = TorchrunArgs(training_script="train.py", nproc_per_node="auto")
        plan = make_plan(args, {}, fqdn="localhost", free_port=1, cpu_count=2, gpus_per_node=0)
        assert plan.nproc_per_node == 2

    def test_min_max_nnodes_plays_max(self) -> None:
        """`--nnodes 1:2` is accepted; the local cluster has the maximum node count."""
        p = plan_for(nnodes="1:2", nproc_per_node="1")
        assert (p.min_nodes, p.max_nodes, p.group_world_size) == (1, 2, 2)

    def test_standalone_min_max_nnodes_plays_min(self) -> None:
        """`--standalone --nnodes 1:2`: torchrun's one agent completes its round alone after the last call
        (min_nodes 1, no second agent can find localhost:0): one node, the real host."""
        p = plan_for(nnodes="1:2", nproc_per_node="1", standalone=True)
        assert (p.min_nodes, p.max_nodes, p.group_world_size, p.nodes) == (
            1,
            2,
            1,
            (NodePlan(0, "localhost"),),
        )
        assert not p.multi_node

    @pytest.mark.parametrize(
        ("kw", "line", "frames"),
        [
            (
                {"nproc_per_node": "foo"},
                "ValueError: Unsupported nproc_per_node value: foo",
                "nproc_unsupported",
            ),
            ({"nproc_per_node": "xpu"}, "ValueError: Xpu is not available.", "nproc_no_xpu"),
            (
                {"nnodes": "3:2"},
                "AssertionError: min_nodes must be > 0 and <= max_nodes, got min_nodes=3, max_nodes=2",
                "nnodes_range",
            ),
            (
                {"nnodes": "0"},
                "AssertionError: min_nodes must be > 0 and <= max_nodes, got min_nodes=0, max_nodes=0",
                "nnodes_range",
            ),
            (
                {"nnodes": "2:1"},
                "AssertionError: min_nodes must be > 0 and <= max_nodes, got min_nodes=2, max_nodes=1",
                "nnodes_range",
            ),
            ({"nnodes": "x"}, "ValueError: invalid literal for int() with base 10: 'x'", "nnodes_int"),
            ({"nnodes": "a:b"}, "ValueError: invalid literal for int() with base 10: 'a'", "nnodes_min_int"),
            ({"nnodes": "1:b"}, "ValueError: invalid literal for int() with base 10: 'b'", "nnodes_max_int"),
            ({"nnodes": "1:2:3"}, 'RuntimeError: nnodes=1:2:3 is not in "MIN:MAX" format', "nnodes_format"),
            # torch checks the nodes before the restarts, and both before the workers per node.
            (
                {"nnodes": "3:2", "max_restarts": -1, "nproc_per_node": "foo"},
                "AssertionError: min_nodes must be > 0 and <= max_nodes, got min_nodes=3, max_nodes=2",
                "nnodes_range",
            ),
            (
                {"max_restarts": -1, "nproc_per_node": "foo"},
                "AssertionError: max_restarts must be >= 0",
                "max_restarts",
            ),
            (
                {"redirects": "5"},
                r"ValueError: 5 does not match: <^[0-3]$> or <^(\d:[0-3],)*(\d:[0-3])$>",
                None,
            ),
        ],
    )
    def test_value_errors(self, kw: dict[str, object], line: str, frames: str | None) -> None:
        """Bad values raise the exception line torchrun ends with, from torch's frames, exit code 1."""
        with pytest.raises(LaunchError) as err:
            plan_for(**kw)
        assert err.value.exc_line == line
        assert err.value.traceback == frames
        assert err.value.exit_code == 1


class TestStreams:
    """--redirects/--tee parsing."""

    def test_mapping(self) -> None:
        """`0:1,1:2` maps per local rank; unlisted ranks get 0."""
        assert parse_std("0:1,1:2", 3) == {0: 1, 1: 2, 2: 0}

    def test_value(self) -> None:
        """A single digit applies to every local rank."""
        assert parse_std("3", 2) == {0: 3, 1: 3}


class TestWorkerEnv:
    """The variables torchrun adds, per rank."""

    def test_standalone_keys_and_values(self) -> None:
        """Exactly torchrun's added variables, with its values for rank 1 of 4."""
        p = plan_for(standalone=True, nproc_per_node="4")
        base = {"PATH": "/usr/bin", "HOME": "/root"}
        env = worker_env(
            base, p, worker_slots(p)[1], restart_count=0, error_file="/tmp/e/attempt_0/1/error.json"
        )
        added = {k: v for k, v in env.items() if k not in base}
        assert set(added) == TORCHRUN_KEYS | {"OMP_NUM_THREADS"}
        assert added["RANK"] == "1" and added["LOCAL_RANK"] == "1" and added["WORLD_SIZE"] == "4"
        assert added["TORCHELASTIC_RUN_ID"] == UUID and added["TORCHELASTIC_USE_AGENT_STORE"] == "True"
        assert added["OMP_NUM_THREADS"] == "1" and added["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
        assert added["TORCHELASTIC_SIGNALS_TO_HANDLE"] == "SIGTERM,SIGINT,SIGHUP,SIGQUIT"

    def test_preset_variables_are_kept(self) -> None:
        """A preset OMP_NUM_THREADS or TORCH_NCCL_ASYNC_ERROR_HANDLING passes through unchanged."""
        base = {"OMP_NUM_THREADS": "4", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "0"}
        p = plan_for(base, nproc_per_node="2")
        env = worker_env(base, p, worker_slots(p)[0], restart_count=0, error_file="e")
        assert (env["OMP_NUM_THREADS"], env["TORCH_NCCL_ASYNC_ERROR_HANDLING"]) == ("4", "0")
        assert not p.set_omp_threads

    def test_single_process_sets_no_omp(self) -> None:
        """With one worker per node OMP_NUM_THREADS is not added."""
        p = plan_for(nproc_per_node="1")
        assert "OMP_NUM_THREADS" not in worker_env({}, p, worker_slots(p)[0], restart_count=0, error_file="e")

    def test_static_second_node(self) -> None:
        """Node 1 of a static 2x2 job: GROUP_RANK 1, ranks 2 and 3, run id none."""
        p = plan_for(nnodes="2", nproc_per_node="2", master_port=29511)
        env = worker_env({}, p, worker_slots(p)[3], restart_count=2, error_file="e")
        assert (env["GROUP_RANK"], env["RANK"], env["LOCAL_RANK"], env["GROUP_WORLD_SIZE"]) == (
            "1",
            "3",
            "1",
            "2",
        )
        assert (env["TORCHELASTIC_RUN_ID"], env["MASTER_PORT"], env["TORCHELASTIC_RESTART_COUNT"]) == (
            "none",
            "29511",
            "2",
        )

    def test_virtual_local_rank(self) -> None:
        """--virtual-local-rank: LOCAL_RANK 0 and CUDA_VISIBLE_DEVICES = the local rank."""
        p = plan_for(nproc_per_node="2", virtual_local_rank=True)
        env = worker_env({}, p, worker_slots(p)[1], restart_count=0, error_file="e")
        assert (env["LOCAL_RANK"], env["CUDA_VISIBLE_DEVICES"], env["RANK"]) == ("0", "1", "1")


class TestWorkerArgv:
    """The worker command line."""

    @pytest.mark.parametrize(
        ("kw", "argv"),
        [
            ({}, ["/py", "-u", "train.py", "--foo", "1"]),
            ({"module": True}, ["/py", "-u", "-m", "train.py", "--foo", "1"]),
            ({"no_python": True}, ["train.py", "--foo", "1"]),
        ],
    )
    def test_forms(self, kw: dict[str, bool], argv: list[str]) -> None:
        """`python -u script args`, `-m`, and `--no-python`."""
        args = TorchrunArgs(training_script="train.py", training_script_args=["--foo", "1"], **kw)
        p = make_plan(args, {}, fqdn="h", free_port=1, cpu_count=1, run_uuid=UUID)
        assert worker_argv(p, "/py", 1) == argv

    @pytest.mark.parametrize(
        ("kw", "argv"),
        [
            ({}, ["/py", "-u", "train.py", "--local-rank=1", "--foo", "1"]),
            ({"module": True}, ["/py", "-u", "-m", "train.py", "--local-rank=1", "--foo", "1"]),
            ({"no_python": True, "use_env": True}, ["train.py", "--foo", "1"]),
            ({"use_env": True}, ["/py", "-u", "train.py", "--foo", "1"]),
        ],
    )
    def test_launch_forms(self, kw: dict[str, bool], argv: list[str]) -> None:
        """torch.distributed.launch: `--local-rank=N` (the worker's local rank) before the script's own
        arguments, as torch 2.13's config_from_args appends it, unless --use-env."""
        kw = {"use_env": False, **kw}
        args = TorchrunArgs(training_script="train.py", training_script_args=["--foo", "1"], **kw)
        p = make_plan(args, {}, fqdn="h", free_port=1, cpu_count=1, run_uuid=UUID)
        assert worker_argv(p, "/py", 1) == argv

    def test_module_and_no_python_conflict(self) -> None:
        """-m with --no-python is a value error."""
        with pytest.raises(LaunchError):
            plan_for(module=True, no_python=True)


def test_signals_parsing() -> None:
    """Unknown names and uncatchable signals are set aside."""
    p = plan_for(signals_to_handle="SIGTERM,SIGUSR1,SIGFOO,SIGKILL")
    assert p.signals_to_handle == (signal.SIGTERM, signal.SIGUSR1)
    assert p.unknown_signals == ("SIGFOO", "SIGKILL")


class TestOneNodeOfStaticJob:
    """`--node-rank R` (R > 0): this host is node R of a static job."""

    def test_only_own_ranks(self) -> None:
        """Node 1 of 2 starts ranks 2 and 3 on the real host name, as the recorded node1 agent."""
        p = plan_for(nnodes="2", nproc_per_node="2", node_rank=1, master_port=29511)
        assert [(s.node_index, s.local_rank, s.rank, s.host) for s in worker_slots(p)] == [
            (1, 0, 2, "localhost"),
            (1, 1, 3, "localhost"),
        ]
        assert p.world_size == 4

    def test_node_rank_out_of_range(self) -> None:
        """A node rank not below the node count is a value error."""
        with pytest.raises(LaunchError):
            plan_for(nnodes="2", node_rank=2)
