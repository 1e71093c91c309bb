"""`--fake-exec` probe scripts see torchrun's worker environment and process layout, per rendezvous form."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import SCRIPTS, Result, Runner, simulation_modules

VOLATILE = {"MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_ERROR_FILE"}
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def read_env_diff(path: Path) -> dict[int, dict[str, str]]:
    """Parses a reference env_diff.txt into {rank: {variable: value}} of what torchrun added or changed."""
    out: dict[int, dict[str, str]] = {}
    rank = -1
    for line in path.read_text().splitlines():
        if m := re.match(r"== env_rank(\d+)\.json", line):
            rank = int(m.group(1))
            out[rank] = {}
        elif m := re.match(r"\s+[+~] ([A-Z0-9_]+)=(.*)$", line):
            out[rank][m.group(1)] = m.group(2)
    return out


def probes(tmp: Path) -> dict[int, dict[str, object]]:
    """The probe dumps of attempt 0, by rank."""
    out = {}
    for f in tmp.glob("proc_rank*_attempt0.json"):
        info = json.loads(f.read_text())
        out[int(info["env"]["RANK"])] = info
    return out


def added_vars(runner: Runner, info: dict[str, object]) -> dict[str, str]:
    """Variables the launcher added to or changed in the worker's environment."""
    base = runner.env()
    env = info["env"]
    assert isinstance(env, dict)
    return {k: v for k, v in env.items() if base.get(k) != v}


def run_probe(runner: Runner, args: list[str], **extra: str) -> Result:
    res = runner.run([*args, "--fake-exec", str(SCRIPTS / "probe.py"), "--foo", "1"], **extra)
    assert res.code == 0, res.stderr
    return res


FORMS = {
    "standalone": (["--standalone", "--nproc-per-node", "4"], "02_env/standalone"),
    "auto_c10d": (["--nproc-per-node", "1"], "07_misc/nproc1"),
    "static_single_node": (
        ["--master-port", "29513", "--nproc-per-node", "2"],
        "07_misc/static_single_node_master_port",
    ),
}


class TestEnvironmentMatchesTorchrun:
    """The variables and values torchrun's workers get, compared with the recordings."""

    @pytest.mark.parametrize("form", sorted(FORMS))
    def test_single_node_forms(self, runner: Runner, reference: Path, form: str) -> None:
        """Same variables, same values (random ports, run ids and paths aside) as the recorded run."""
        args, case = FORMS[form]
        run_probe(runner, args)
        expected = read_env_diff(reference / case / "env_diff.txt")
        got = probes(runner.tmp)
        assert sorted(got) == sorted(expected)
        for rank, want in expected.items():
            have = added_vars(runner, got[rank])
            assert set(have) == set(want), rank
            assert {k: v for k, v in have.items() if k not in VOLATILE} == {
                k: v for k, v in want.items() if k not in VOLATILE
            }

    def test_local_two_nodes_match_two_static_agents(self, runner: Runner, reference: Path) -> None:
        """One fakerun playing 2 nodes gives each rank what two static torchrun agents gave theirs."""
        run_probe(runner, ["--nnodes", "2", "--nproc-per-node", "2", "--master-port", "29511"])
        got = probes(runner.tmp)
        for node in (0, 1):
            expected = read_env_diff(reference / "02_env/static_2nodes" / f"node{node}" / "env_diff.txt")
            for rank, want in expected.items():
                have = added_vars(runner, got[rank])
                assert {k: v for k, v in have.items() if k != "TORCHELASTIC_ERROR_FILE"} == {
                    k: v for k, v in want.items() if k != "TORCHELASTIC_ERROR_FILE"
                }

    def test_two_agents_match_recorded_static_nodes(self, runner: Runner, reference: Path) -> None:
        """Two agents of a static 2-node job (`--node-rank 0` and `1`): each matches the recorded agent."""
        args = [
            "--nnodes",
            "2",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            "29511",
        ]
        node0 = runner.start(
            [*args, "--node-rank", "0", "--fake-exec", str(SCRIPTS / "probe.py"), "--foo", "1"]
        )
        try:
            run_probe(runner, [*args, "--node-rank", "1"])
            node0.communicate(timeout=60)
        finally:
            if node0.poll() is None:
                node0.kill()
                node0.communicate()
        assert node0.returncode == 0
        got = probes(runner.tmp)
        expected = {
            **read_env_diff(reference / "02_env/static_2nodes/node0/env_diff.txt"),
            **read_env_diff(reference / "02_env/static_2nodes/node1/env_diff.txt"),
        }
        assert sorted(got) == sorted(expected) == [0, 1, 2, 3]
        for rank, want in expected.items():
            have = added_vars(runner, got[rank])
            assert {k: v for k, v in have.items() if k != "TORCHELASTIC_ERROR_FILE"} == {
                k: v for k, v in want.items() if k != "TORCHELASTIC_ERROR_FILE"
            }
            assert re.search(r"/none_[a-z0-9_]{8}/attempt_0/\d/error\.json$", have["TORCHELASTIC_ERROR_FILE"])


class TestEnvironmentValues:
    """Literal expectations from the torchrun contract, independent of the recordings."""

    def test_standalone_values(self, runner: Runner) -> None:
        """uuid run id, a shared random port other than 29500, error files per attempt and local rank."""
        run_probe(runner, ["--standalone", "--nproc-per-node", "3"])
        got = probes(runner.tmp)
        envs = [got[r]["env"] for r in range(3)]
        assert all(isinstance(e, dict) for e in envs)
        run_ids = {e["TORCHELASTIC_RUN_ID"] for e in envs}  # type: ignore[index]
        ports = {e["MASTER_PORT"] for e in envs}  # type: ignore[index]
        assert len(run_ids) == 1 and UUID_RE.match(run_ids.pop())
        assert len(ports) == 1
        for r, e in enumerate(envs):
            assert isinstance(e, dict)
            assert re.search(
                rf"/[0-9a-f-]{{36}}_[a-z0-9_]{{8}}/attempt_0/{r}/error\.json$", e["TORCHELASTIC_ERROR_FILE"]
            )
            assert (e["RANK"], e["LOCAL_RANK"], e["WORLD_SIZE"], e["OMP_NUM_THREADS"]) == (
                str(r),
                str(r),
                "3",
                "1",
            )

    def test_local_multi_node_numbering(self, runner: Runner) -> None:
        """`--nnodes 3 --nproc-per-node 2`: six processes numbered as a static 3-node job."""
        run_probe(runner, ["--nnodes", "3", "--nproc-per-node", "2"])
        got = probes(runner.tmp)
        assert sorted(got) == list(range(6))
        for r, info in got.items():
            env = info["env"]
            assert isinstance(env, dict)
            assert (env["GROUP_RANK"], env["LOCAL_RANK"], env["GROUP_WORLD_SIZE"]) == (
                str(r // 2),
                str(r % 2),
                "3",
            )
            assert (env["TORCHELASTIC_RUN_ID"], env["MASTER_ADDR"], env["MASTER_PORT"]) == (
                "none",
                "127.0.0.1",
                "29500",
            )

    def test_pet_variables_and_virtual_local_rank(self, runner: Runner) -> None:
        """PET_* defaults apply; --virtual-local-rank zeroes LOCAL_RANK and sets CUDA_VISIBLE_DEVICES."""
        run_probe(runner, ["--virtual-local-rank"], PET_NPROC_PER_NODE="2", PET_MAX_RESTARTS="1")
        got = probes(runner.tmp)
        assert sorted(got) == [0, 1]
        for r, info in got.items():
            env = info["env"]
            assert isinstance(env, dict)
            assert (env["LOCAL_RANK"], env["CUDA_VISIBLE_DEVICES"], env["TORCHELASTIC_MAX_RESTARTS"]) == (
                "0",
                str(r),
                "1",
            )


class TestProcesses:
    """Each worker is a direct child in its own session, with torchrun's command line."""

    def test_process_layout(self, runner: Runner) -> None:
        """pgid = sid = pid, the parent is the launcher, argv and orig_argv as under torchrun; no terminal."""
        run_probe(runner, ["--standalone", "--nproc-per-node", "2"])
        got = probes(runner.tmp)
        parents = {info["ppid"] for info in got.values()}
        assert len(parents) == 1
        script = str(SCRIPTS / "probe.py")
        for info in got.values():
            assert info["pgid"] == info["sid"] == info["pid"]
            assert info["argv"] == [script, "--foo", "1"]
            orig = info["orig_argv"]
            assert isinstance(orig, list)
            assert os.path.realpath(orig[0]) == os.path.realpath(sys.executable)
            assert orig[1:] == ["-u", script, "--foo", "1"]
            assert info["cwd"] == str(runner.tmp)
            assert info["name"] == "__main__"
            # Not under a terminal: torchrun's workers would write to the launcher's pipes here.
            assert info["stdout_isatty"] is False and info["stderr_isatty"] is False

    def test_module_and_no_python(self, runner: Runner) -> None:
        """`-m module` runs `python -u -m module`; `--no-python` runs the file directly."""
        mod_dir = runner.tmp / "mods"
        mod_dir.mkdir()
        (mod_dir / "probemod.py").write_text((SCRIPTS / "probe.py").read_text())
        res = runner.run(["--fake-exec", "-m", "probemod", "--foo", "1"], PYTHONPATH=str(mod_dir))
        assert res.code == 0, res.stderr
        info = probes(runner.tmp)[0]
        orig = info["orig_argv"]
        assert isinstance(orig, list)
        assert orig[1:] == ["-u", "-m", "probemod", "--foo", "1"]
        sh = runner.tmp / "dump.sh"
        sh.write_text('#!/bin/sh\necho "rank=$RANK args=$*"\n')
        os.chmod(sh, 0o755)
        res = runner.run(["--nproc-per-node", "2", "--fake-exec", "--no-python", str(sh), "--foo", "1"])
        assert res.code == 0, res.stderr
        assert sorted(res.stdout.splitlines()) == ["rank=0 args=--foo 1", "rank=1 args=--foo 1"]

    def test_script_args_that_look_like_flags_pass_through(self, runner: Runner) -> None:
        """Everything after the script reaches it untouched."""
        res = runner.run(["--fake-exec", str(SCRIPTS / "probe.py"), "--nproc-per-node", "5", "--help"])
        assert res.code == 0, res.stderr
        assert probes(runner.tmp)[0]["argv"] == [str(SCRIPTS / "probe.py"), "--nproc-per-node", "5", "--help"]


def test_run_path_runs_in_launcher_process_group(runner: Runner) -> None:
    """`--run-path` runs the script in a forked interpreter in the launcher's process group, which has loaded
    no module of the simulation (a --fake-exec launcher needs none)."""
    script = str(SCRIPTS / "probe.py")
    res = runner.run(["--nproc-per-node", "2", "--run-path", "--fake-exec", script, "--foo", "1"])
    assert res.code == 0, res.stderr
    got = probes(runner.tmp)
    assert sorted(got) == [0, 1]
    for info in got.values():
        assert info["argv"] == [script, "--foo", "1"]
        assert info["name"] == "__main__"
        assert info["pgid"] != info["pid"]
        assert info["sid"] != info["pid"]
        assert simulation_modules(info["modules"]) == []
