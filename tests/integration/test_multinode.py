"""Several fakerun agents forming one job over TCP on loopback, as torchrun agents do (static and c10d)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fakerun import presets
from fakerun.main import DEFAULT_MODEL
from tests.conftest import SCRIPTS, Runner, fakerun_exe

PROBE = str(SCRIPTS / "probe.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent(runner: Runner, args: list[str], name: str, **env: str) -> subprocess.Popen[str]:
    """Starts one agent with its output in files named after it."""
    return launch(runner, args, name, env)


def launch(
    runner: Runner, args: list[str], name: str, env: dict[str, str], fd_limit: int | None = None
) -> subprocess.Popen[str]:
    """Starts one agent with `env` added, its output in files named after it; `fd_limit` caps its fds."""

    def limit() -> None:
        if fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    out = open(runner.tmp / f"{name}.out", "w")  # noqa: SIM115
    err = open(runner.tmp / f"{name}.err", "w")  # noqa: SIM115
    return subprocess.Popen(
        [fakerun_exe(), *args],
        stdout=out,
        stderr=err,
        text=True,
        env=runner.env(**env),
        cwd=runner.tmp,
        preexec_fn=limit,
    )


def finish(procs: list[subprocess.Popen[str]], timeout: float = 90) -> list[int]:
    """Waits for every agent; kills the rest if one hangs."""
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=timeout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return codes


def text(runner: Runner, name: str) -> str:
    return (runner.tmp / name).read_text()


def messages(err: str) -> list[str]:
    """The messages of the launcher's glog lines (prefix cut), in order."""
    return [line.split("] ", 1)[1] if "] " in line else "" for line in err.splitlines() if line[:1] in "IWE"]


def probe_envs(runner: Runner) -> dict[int, dict[str, str]]:
    """The environments the probe script dumped, by RANK."""
    envs = {}
    for path in runner.tmp.glob("proc_rank*_attempt*.json"):
        env = json.loads(path.read_text())["env"]
        envs[int(env["RANK"])] = env
    return envs


class TestStatic:
    """`--nnodes 2 --node-rank R --master-addr A --master-port P` on two agents."""

    def test_two_agents_form_one_simulated_job(self, runner: Runner) -> None:
        """Node 0 runs the coordinator for all 8 ranks; both agents exit 0; one bar, one 8-GPU grid."""
        port = str(free_port())
        common = [
            "--nnodes",
            "2",
            "--nproc-per-node",
            "4",
            "--master-port",
            port,
            "--fake-max-steps",
            "6",
            "--fake-speed",
            "50",
        ]
        n0 = agent(
            runner,
            [*common, "--node-rank", "0", "--fake-metrics", "m.jsonl", "train.py"],
            "n0",
            LOGLEVEL="INFO",
        )
        # Node 1 starts later, as agents do: its clock must still read node 0's (one synchronised job clock).
        time.sleep(0.5)
        n1 = agent(runner, [*common, "--node-rank", "1", "train.py"], "n1", LOGLEVEL="INFO")
        assert finish([n0, n1]) == [0, 0], text(runner, "n0.err")[-1500:] + text(runner, "n1.err")[-1500:]
        finished = {
            int(m[2]): dt.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for name in ("n0.out", "n1.out")
            for m in re.finditer(
                r"^(\S+ \S+) \[info\s*\] training finished\s+rank=(\d+)", text(runner, name), re.M
            )
        }
        assert sorted(finished) == list(range(8))
        # The last step ends together on every rank; 0.5 s late at --fake-speed 50 would be 25 s apart.
        assert max(finished.values()) - min(finished.values()) < 5.0
        # Each agent's INFO lines as torch's: its node rank in a static rdzv_configs, its own group's ranks.
        for node, name in enumerate(("n0", "n1")):
            err = messages(text(runner, f"{name}.err"))
            assert f"  rdzv_configs             : {{'rank': {node}, 'timeout': 900}}" in err
            ranks = [node * 4 + lr for lr in range(4)]
            block = err[err.index("[default] Rendezvous complete for workers. Result:") :][:13]
            assert f"  group_rank={node}" in block and "  group_world_size=2" in block
            assert "  local_ranks=[0, 1, 2, 3]" in block
            assert f"  role_ranks={ranks}" in block and f"  global_ranks={ranks}" in block
            assert "  global_world_sizes=[8, 8, 8, 8]" in block
        steps = [json.loads(line) for line in text(runner, "m.jsonl").splitlines()]
        assert steps[0]["n_gpus"] == 8
        assert [s["step"] for s in steps if s["event"] == "step"] == list(range(1, 7))
        assert "8 GPUs on 2 nodes" in text(runner, "n0.out")
        assert "Epoch 1/1" in text(runner, "n0.err") and "Epoch 1/1" not in text(runner, "n1.err")
        assert "rank=5" in text(runner, "n1.out") and "rank=5" not in text(runner, "n0.out")

    def test_environment_matches_torchrun(self, runner: Runner) -> None:
        """With --fake-exec, node 1's ranks get RANK 2,3, GROUP_RANK 1 and node 0's master address."""
        port = str(free_port())
        common = [
            "--nnodes",
            "2",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            port,
            "--fake-exec",
        ]
        n0 = agent(runner, [*common, "--node-rank", "0", PROBE], "n0")
        n1 = agent(runner, [*common, "--node-rank", "1", PROBE], "n1")
        assert finish([n0, n1]) == [0, 0]
        envs = probe_envs(runner)
        assert sorted(envs) == [0, 1, 2, 3]
        for rank, env in envs.items():
            assert env["GROUP_RANK"] == str(rank // 2) and env["LOCAL_RANK"] == str(rank % 2)
            assert (env["WORLD_SIZE"], env["GROUP_WORLD_SIZE"]) == ("4", "2")
            assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("127.0.0.1", port)
            assert env["TORCHELASTIC_RUN_ID"] == "none"

    def test_timeout_when_a_node_never_comes(self, runner: Runner) -> None:
        """Node 0 alone with --rdzv-conf timeout=2: torch's DistStoreError, exit 1, nothing started."""
        port = str(free_port())
        n0 = agent(
            runner,
            [
                "--nnodes",
                "2",
                "--nproc-per-node",
                "2",
                "--node-rank",
                "0",
                "--master-port",
                port,
                "--rdzv-conf",
                "timeout=2",
                "train.py",
            ],
            "n0",
        )
        assert finish([n0]) == [1]
        err = text(runner, "n0.err")
        assert err.rstrip().endswith(
            "torch.distributed.DistStoreError: Timed out after 3 seconds waiting for clients. "
            "1/2 clients joined."
        )
        assert "static_tcp_rendezvous.py" in err and "worker started" not in text(runner, "n0.out")

    def test_killed_node_ends_the_job_everywhere(self, runner: Runner) -> None:
        """SIGKILL node 1's agent mid-run: node 0's workers die as NCCL makes them, report, exit 1."""
        port = str(free_port())
        common = ["--nnodes", "2", "--nproc-per-node", "2", "--master-port", port, "--fake-speed", "5"]
        n0 = agent(
            runner, [*common, "--node-rank", "0", "train.py"], "n0", FAKERUN_STATE_DIR=str(runner.tmp / "s")
        )
        n1 = agent(runner, [*common, "--node-rank", "1", "train.py"], "n1")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "memory after first step" not in text(runner, "n0.out"):
            time.sleep(0.1)
        n1.send_signal(signal.SIGKILL)
        assert finish([n0, n1], timeout=30) == [1, -9]
        err = text(runner, "n0.err")
        assert re.search(r"(?m)^W\d{4} [\d:.]+ \d+ fakerun/\S+\] lost node 1", err), err[-2000:]
        assert "ncclRemoteError" in err and "exitcode: -6" in err and "ChildFailedError" in err
        # torch's watchdog names the NCCL release of the job's stack, the one its NCCL INFO lines print.
        assert re.search(r"network error, NCCL version 2\.29\.\d+\n", err), err[-2000:]
        # Each surviving rank: the lost node's host (by the cluster's names: both agents run here) and port
        # as the closed peer, the exception's backtrace in the log line and again after std::terminate.
        # (A rank slower to notice than the agent's reaction to the first abort is ended by SIGTERM first.)
        aborted = [rank for rank in (0, 1) if f"[rank{rank}]:[E" in err]
        assert aborted, err[-2000:]
        for rank in aborted:
            block = err[err.index(f"[rank{rank}]:[E") :]
            peer = re.search(r"Connection closed by remote peer (\S+)<(\d+)>\n", block)
            assert peer is not None and peer[1] == "gpu-node-002" and 32768 <= int(peer[2]) < 61000
            assert block.index("Exception raised from checkForNCCLErrorsInternal at /pytorch/") < block.index(
                "terminate called after throwing an instance of 'c10::DistBackendError'"
            )
            assert re.search(
                r"\nframe #0: c10::Error::Error\(c10::SourceLocation, std::string\) \+ 0x", block
            )

    def test_a_crash_restarts_every_agent_from_the_last_complete_save(self, runner: Runner) -> None:
        """--max-restarts 1 and a crash of rank 1 (node 0) at step 5: both agents stop their workers, go
        through torchrun's restart lines and a new rendezvous round, and every rank resumes after the save
        of step 3 (--save-interval 3; Megatron's save blocks, so it finished before step 4 began)."""
        port = str(free_port())
        common = ["--nnodes", "2", "--nproc-per-node", "2", "--master-port", port, "--fake-speed", "200"]
        common += ["--fake-max-steps", "12", "--max-restarts", "1", "--fake-fail", "crash@5:1"]
        script = ["train.py", "--save-interval", "3", "--save", "ckpt"]
        n0 = agent(
            runner, [*common, "--node-rank", "0", "--fake-metrics", "m.jsonl", *script], "n0", LOGLEVEL="INFO"
        )
        n1 = agent(runner, [*common, "--node-rank", "1", *script], "n1", LOGLEVEL="INFO")
        assert finish([n0, n1]) == [0, 0], text(runner, "n0.err")[-2000:] + text(runner, "n1.err")[-2000:]
        records = [json.loads(line) for line in text(runner, "m.jsonl").splitlines()]
        assert [(r["attempt"], r["first_step"]) for r in records if r["event"] == "run"] == [(0, 1), (1, 4)]
        assert [r["step"] for r in records if r["event"] == "checkpoint"] == [3, 6, 9, 12]
        # Node 0 records the failure, wherever it struck.
        assert [(r["kind"], r["attempt"]) for r in records if r["event"] == "failure"] == [("crash", 0)]
        # torchrun's restart lines (the reference's 1/1 for --max-restarts 1) on both agents, in order.
        restart = [
            "[default] Worker group FAILED. 1/1 attempts left; will restart worker group",
            "[default] Stopping worker group",
            "[default] Rendezvous'ing worker group",
            "[default] Rendezvous complete for workers. Result:",
            "  restart_count=1",
        ]
        for name in ("n0.err", "n1.err"):
            said = messages(text(runner, name))
            start = said.index(restart[0])
            assert said[start : start + len(restart)] == restart, said[start - 5 : start + 10]
            # A fixed-size job's round is the whole job again: no node is left out.
            assert "  group_world_size=2" in said[start + len(restart) : start + len(restart) + 5]
        # Node 1's last rank (Megatron's printer) resumed from the same step: attempt 0 saved step 3 and
        # attempt 1 saved 6, 9 and 12 (one from step 0 would have saved 3 again).
        assert text(runner, "n1.out").count("save-checkpoint ...") == 4


class TestC10d:
    """`--rdzv-backend c10d --rdzv-endpoint host:port --rdzv-id ID` on three agents (join order)."""

    def test_three_agents_join_order(self, runner: Runner) -> None:
        """Group ranks by join order; the first to bind the endpoint hosts and is group rank 0."""
        port = str(free_port())
        common = [
            "--nnodes",
            "3",
            "--nproc-per-node",
            "2",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--rdzv-id",
            "job7",
            "--fake-exec",
        ]
        procs = []
        for i in range(3):
            procs.append(agent(runner, [*common, PROBE], f"n{i}"))
            time.sleep(0.3)  # a deterministic join order
        assert finish(procs) == [0, 0, 0]
        envs = probe_envs(runner)
        assert sorted(envs) == list(range(6))
        assert {e["TORCHELASTIC_RUN_ID"] for e in envs.values()} == {"job7"}
        masters = {(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs.values()}
        assert len(masters) == 1 and next(iter(masters))[1] != port  # a free port of node 0, not the endpoint
        assert {e["GROUP_WORLD_SIZE"] for e in envs.values()} == {"3"}

    def test_join_timeout(self, runner: Runner) -> None:
        """One of two c10d agents with join_timeout=2: RendezvousTimeoutError, exit 1."""
        port = str(free_port())
        n0 = agent(
            runner,
            [
                "--nnodes",
                "2",
                "--nproc-per-node",
                "2",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-conf",
                "join_timeout=2",
                "train.py",
            ],
            "n0",
        )
        assert finish([n0]) == [1]
        assert (
            text(runner, "n0.err")
            .rstrip()
            .endswith("torch.distributed.elastic.rendezvous.api.RendezvousTimeoutError")
        )

    def test_an_elastic_job_starts_at_min_nodes_grows_and_shrinks(self, runner: Runner) -> None:
        """--nnodes 1:2: node 0's agent alone completes the first round after its last call (1 s here) and
        runs at one node. Node 1's agent started then joins the running job: node 0 restarts its workers for
        it without counting a restart, and the job goes on at two nodes from its last complete save, the
        nodes under the cluster's names (they share this machine). Node 1's agent SIGKILLed after a save:
        node 0's workers fail, its agent restarts, and after torch's last call the round completes without
        node 1: the job carries on at one node's size from its last complete save, with the same model."""
        port = str(free_port())
        common = ["--nnodes", "1:2", "--nproc-per-node", "2", "--rdzv-backend", "c10d"]
        common += ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "el1", "--fake-speed", "20"]
        common += ["--fake-max-steps", "24", "--max-restarts", "1", "--rdzv-conf", "last_call_timeout=1"]
        script = ["train.py", "--save-interval", "3", "--save", "ckpt"]
        n0 = agent(runner, [*common, "--fake-metrics", "m.jsonl", *script], "n0", LOGLEVEL="INFO")
        rounds = "[default] Rendezvous complete for workers. Result:"
        deadline = time.monotonic() + 60

        def runs() -> list[dict[str, object]]:
            records = [json.loads(line) for line in text(runner, "m.jsonl").splitlines()]
            return [r for r in records if r["event"] == "run"]

        def wait_for(done: Callable[[], bool]) -> None:
            while time.monotonic() < deadline and not done():
                time.sleep(0.1)

        wait_for(lambda: (runner.tmp / "m.jsonl").exists() and len(runs()) == 1)
        n1 = agent(runner, [*common, *script], "n1", LOGLEVEL="INFO")
        # Node 1 dies once the two-node job has completely saved. A checkpoint record is written when its
        # save begins, and a save is complete only once its pause is over; the steps after it, and so the
        # next save's record, come after that pause.
        wait_for(
            lambda: (
                len(runs()) == 2
                and text(runner, "m.jsonl").split('"event": "run"')[2].count('"event": "checkpoint"') >= 2
            )
        )
        n1.send_signal(signal.SIGKILL)
        assert finish([n0, n1]) == [0, -9], text(runner, "n0.err")[-3000:]
        said = messages(text(runner, "n0.err"))
        blocks = [i for i, m in enumerate(said) if m == rounds]
        assert len(blocks) == 3
        alone = said[blocks[0] + 1 : blocks[0] + 11]
        assert "  restart_count=0" in alone and "  group_world_size=1" in alone
        grown = said[blocks[1] + 1 : blocks[1] + 11]
        # A membership change is no restart: the count stays, and node 0 keeps group rank 0.
        assert "  restart_count=0" in grown and "  group_world_size=2" in grown and "  group_rank=0" in grown
        assert "[default] Detected 1 new nodes from group_rank=0; will restart worker group" in said
        after = said[blocks[2] + 1 : blocks[2] + 11]
        assert "  restart_count=1" in after and "  group_world_size=1" in after
        assert "  global_world_sizes=[2, 2]" in after, after  # one node of --nproc-per-node 2
        joined = messages(text(runner, "n1.err"))
        mine = joined[joined.index(rounds) + 1 : joined.index(rounds) + 11]
        assert "  restart_count=0" in mine and "  group_rank=1" in mine and "  group_world_size=2" in mine
        records = [json.loads(line) for line in text(runner, "m.jsonl").splitlines()]
        started = runs()
        assert [(r["attempt"], r["nnodes"], r["n_gpus"]) for r in started] == [
            (0, 1, 2),
            (0, 2, 4),
            (1, 1, 2),
        ]
        assert started[0]["model"] == started[1]["model"] == started[2]["model"]
        second = records.index(started[1])
        saved = [r["step"] for r in records[:second] if r["event"] == "checkpoint"]
        assert started[1]["first_step"] - 1 in [0, *saved]  # the start or a save before the newcomer's round
        failed = next(i for i, r in enumerate(records) if r["event"] == "failure")
        saved = [r["step"] for r in records[:failed] if r["event"] == "checkpoint"]
        assert started[2]["first_step"] - 1 in saved  # one of the saves made before the loss
        assert "using world size: 2," in text(runner, "n0.out")
        # Both agents run here: the nodes took the cluster's names, node 1 the second.
        cluster = presets.resolve(DEFAULT_MODEL, None, None).cluster
        assert f"lost node 1 ({presets.host_name(cluster, 1)}): its agent closed the connection" in said


class TestSecurity:
    """Strangers are refused with one line and the job carries on."""

    def test_wrong_secret_is_refused(self, runner: Runner) -> None:
        """A node with another FAKERUN_SECRET cannot join; node 0 logs it, waits on, then times out."""
        port = str(free_port())
        common = ["--nnodes", "2", "--nproc-per-node", "1", "--master-port", port, "--rdzv-conf", "timeout=4"]
        n0 = agent(runner, [*common, "--node-rank", "0", "train.py"], "n0", FAKERUN_SECRET="right")
        time.sleep(0.5)
        n1 = agent(runner, [*common, "--node-rank", "1", "train.py"], "n1", FAKERUN_SECRET="wrong")
        codes = finish([n0, n1])
        assert codes == [1, 1]
        assert "wrong secret" in text(runner, "n0.err")
        assert "fakerun: error: the rendezvous failed:" in text(runner, "n1.err")

    def test_garbage_during_the_run_is_refused(self, runner: Runner) -> None:
        """Random bytes sent to node 0's port mid-run: one line, connection closed, the job completes."""
        port = int(free_port())
        common = [
            "--nnodes",
            "2",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(port),
            "--fake-max-steps",
            "40",
            "--fake-speed",
            "20",
        ]
        n0 = agent(runner, [*common, "--node-rank", "0", "train.py"], "n0")
        n1 = agent(runner, [*common, "--node-rank", "1", "train.py"], "n1")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "memory after first step" not in text(runner, "n0.out"):
            time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(os.urandom(64) + b"\xff\xff\xff\xff")
            # Node 0 answers with its challenge, then closes on us: read until EOF (or a reset).
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:
                pass
        assert finish([n0, n1]) == [0, 0]
        assert re.search(r"\] refused a connection from 127\.0\.0\.1:", text(runner, "n0.err"))


class TestSlurm:
    """Under srun, SLURM's variables fill the rendezvous options and name the nodes."""

    def test_sbatch_script_under_fake_srun(self, runner: Runner) -> None:
        """scripts/slurm's 8B job on 2 simulated SLURM nodes: one 16-GPU job on gpu-node-001 and -002."""
        root = Path(__file__).resolve().parents[2]
        env = runner.env(
            FAKERUN_SPEED="100",
            FAKERUN_MAX_STEPS="4",
            # The HF Trainer's log has no GPU grid of its own: fakerun's, to see the nodes' names.
            FAKERUN_GRID="1",
            MASTER_PORT=str(free_port()),
            PATH=f"{Path(fakerun_exe()).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        )
        res = subprocess.run(
            [
                "bash",
                str(root / "scripts/slurm/fake_srun.sh"),
                "-N",
                "2",
                str(root / "scripts/slurm/train_llama3_8b.sbatch"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=runner.tmp,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        # Named as the default cluster preset (dgx-h100) names its hosts.
        grid = [
            line for line in res.stdout.splitlines() if line.startswith(("gpu-node-001 ", "gpu-node-002 "))
        ]
        assert {line.split()[0] for line in grid} == {"gpu-node-001", "gpu-node-002"}
        assert "16 GPUs on 2 nodes" in res.stdout

    def test_static_form_from_slurm_variables(self, runner: Runner) -> None:
        """Without --node-rank/--nnodes, SLURM_NODEID and SLURM_NNODES make two agents one static job."""
        port = str(free_port())
        procs = []
        for node in (0, 1):
            slurm = {
                "SLURM_JOB_ID": "4242",
                "SLURM_NNODES": "2",
                "SLURM_JOB_NODELIST": "localhost,localhost",
                "SLURM_NODEID": str(node),
                "SLURM_PROCID": str(node),
                "SLURM_NTASKS": "2",
                "SLURM_TASKS_PER_NODE": "1(x2)",
            }
            args = ["--nproc-per-node", "2", "--master-port", port, "--fake-exec", PROBE]
            procs.append(agent(runner, args, f"n{node}", **slurm))
        assert finish(procs) == [0, 0], text(runner, "n1.err")[-1500:]
        envs = probe_envs(runner)
        assert sorted(envs) == [0, 1, 2, 3]
        assert {e["GROUP_RANK"] for e in envs.values()} == {"0", "1"}
        assert {(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs.values()} == {("localhost", port)}


class TestBadInput:
    """Impossible rendezvous addresses: one line, exit 1, nothing left behind."""

    @pytest.mark.parametrize(
        "args",
        [
            ["--node-rank", "0", "--master-port", "99999"],
            ["--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:70000"],
        ],
    )
    def test_port_out_of_range(self, runner: Runner, args: list[str]) -> None:
        """A port above 65535 is refused before anything starts."""
        tmp = runner.tmp / "tmp"
        tmp.mkdir()
        res = runner.run(["--nnodes", "2", "--nproc-per-node", "2", *args, "train.py"], TMPDIR=str(tmp))
        assert res.code == 1
        assert res.stderr.splitlines()[-1].startswith("fakerun: error: ")
        assert "Traceback" not in res.stderr and list(tmp.iterdir()) == []
