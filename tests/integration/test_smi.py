"""fakerun-smi as installed: idle GPUs, a hand-written job state, a live job; and the PATH shims."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from fakerun.presets import load_cluster
from fakerun.sim.stack import stack_for
from fakerun.sim.telemetry import settle
from fakerun.tools.shims import MARKER, install_shims
from tests.conftest import Result, Runner, fakerun_exe

STATUS = re.compile(
    r"^\| N/A +(?P<temp>\d+)C +P0 +(?P<power>\d+)W / +(?P<cap>\d+)W "
    r"\| +(?P<used>\d+)MiB / +(?P<total>\d+)MiB \| +(?P<util>\d+)% +Default \|$"
)
PROCESS = re.compile(r"^\| +(?P<gpu>\d+) +N/A +N/A +(?P<pid>\d+) +C +(?P<name>\S+) +(?P<used>\d+)MiB \|$")
GPU_HEAD = re.compile(r"^\| +(?P<index>\d+)  (?P<name>NVIDIA .+?) +On  \| +(?P<bus>[0-9A-F:.]+) Off \|")


def smi_exe() -> str:
    """The `fakerun-smi` console script installed next to the interpreter running the tests."""
    exe = Path(sys.executable).parent / "fakerun-smi"
    if not exe.exists():
        pytest.fail(f"fakerun-smi is not installed next to {sys.executable}; run pip install -e '.[test]'")
    return str(exe)


def smi(runner: Runner, state: Path, *args: str) -> Result:
    """Runs fakerun-smi to completion with a clean environment and the given state directory."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [smi_exe(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=runner.env(FAKERUN_STATE_DIR=str(state)),
        cwd=runner.tmp,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)


def statuses(text: str) -> list[dict[str, int]]:
    """Every GPU's status line of a table, parsed."""
    return [{k: int(v) for k, v in m.groupdict().items()} for m in map(STATUS.match, text.splitlines()) if m]


def processes(text: str) -> list[dict[str, str]]:
    """The rows of the Processes section."""
    return [m.groupdict() for m in map(PROCESS.match, text.splitlines()) if m]


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    """Polls until predicate() is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


GPU_VALUES = [
    # node, local rank, util, mem util, temp, power, SM MHz, used MiB
    (0, 0, 97, 44, 66, 655, 1980, 61_234),
    (0, 1, 95, 43, 71, 640, 1980, 60_111),
    (1, 0, 12, 3, 44, 150, 1500, 59_876),
    (1, 1, 0, 0, 40, 120, 1500, 1_000),
]


def job_state(pid: int, *, updated: float | None = None, dead_rank: int | None = None) -> dict[str, Any]:
    """A state document as the launcher writes it: 2 nodes x 2 H100s, every worker being `pid`."""
    gpus = []
    for rank, (node, local, util, mem_util, temp, power, sm, used) in enumerate(GPU_VALUES):
        gpus.append(
            {
                "rank": rank,
                "node": node,
                "local_rank": local,
                "host": f"gpu-node-{node + 1:03d}",
                "pid": pid,
                "util": util,
                "mem_util": mem_util,
                "temp": temp,
                "power": power,
                "sm_clock": sm,
                "mem_used_mib": used,
                "mem_total_mib": 81559,
                "power_cap": 700,
                "phase": "dead" if rank == dead_rank else "train",
            }
        )
    return {
        "version": 1,
        "run_id": "test-run",
        "launcher_pid": pid,
        "attempt": 0,
        "model": "llama3-8b",
        "gpu": "h100",
        "gpu_display_name": "NVIDIA H100 80GB HBM3",
        "world_size": 4,
        "nnodes": 2,
        "nproc_per_node": 2,
        "step": 10,
        "last_step": 100,
        "total_steps": 100,
        "updated": time.time() if updated is None else updated,
        "gpus": gpus,
    }


# A live launcher's state whose figures are not numbers.
NAN_STATE = (
    b'{"launcher_pid": %d, "updated": 1e300, "gpu": "h100", "gpus": [{"node": NaN, "local_rank": Infinity, '
    b'"pid": NaN, "temp": NaN, "power": "hot", "util": true}]}' % os.getpid()
)


@pytest.fixture
def state(runner: Runner) -> Path:
    """An empty state directory of the test's own."""
    path = runner.tmp / "state"
    path.mkdir()
    return path


def write_state(state: Path, doc: dict[str, Any], name: str = "job-1.json") -> None:
    """Writes a job state file."""
    (state / name).write_text(json.dumps(doc), encoding="utf-8")


class TestIdle:
    """Without a running job, fakerun-smi shows the eight idle H100s of a DGX H100."""

    def test_idle_table(self, runner: Runner, state: Path) -> None:
        """Eight GPUs at idle power and temperature, no processes, exit status 0."""
        res = smi(runner, state)
        assert res.code == 0, res.stderr
        assert res.stderr == ""
        rows = statuses(res.stdout)
        assert len(rows) == 8
        assert all(
            r["util"] == 0 and r["used"] < 16 and r["total"] == 81559 and r["cap"] == 700 for r in rows
        )
        assert all(55 <= r["power"] <= 85 and 15 <= r["temp"] <= 40 for r in rows)
        assert "|  No running processes found" in res.stdout
        # The default cluster runs the default stack: torch 2.13+cu130 on a 580-series driver.
        stack = stack_for(load_cluster("dgx-h100"))
        assert stack.driver.startswith("580.") and stack.driver_cuda == "13.0"
        assert f"NVIDIA-SMI {stack.driver}" in res.stdout and "CUDA Version: 13.0" in res.stdout
        assert res.stdout.splitlines()[3].startswith("+----")  # 580's rule under the version line

    def test_idle_list(self, runner: Runner, state: Path) -> None:
        """-L lists the eight GPUs with stable UUIDs."""
        first, again = smi(runner, state, "-L"), smi(runner, state, "--list-gpus")
        lines = first.stdout.splitlines()
        assert [line.split(":")[0] for line in lines] == [f"GPU {i}" for i in range(8)]
        assert all(
            re.search(r"\(UUID: GPU-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\)$", line) for line in lines
        )
        assert first.stdout == again.stdout

    def test_missing_state_directory(self, runner: Runner) -> None:
        """A state directory that does not exist means no job."""
        res = smi(runner, runner.tmp / "nowhere")
        assert res.code == 0 and len(statuses(res.stdout)) == 8


class TestStateFile:
    """A job state file's numbers come through to the table and the CSV."""

    def test_node_zero_numbers(self, runner: Runner, state: Path) -> None:
        """Node 0's GPUs show the state's temperature, power, memory and use, and its workers as processes."""
        write_state(state, job_state(os.getpid()))
        res = smi(runner, state)
        assert res.code == 0, res.stderr
        want = [(66, 655, 61_234, 97), (71, 640, 60_111, 95)]
        assert [(r["temp"], r["power"], r["used"], r["util"]) for r in statuses(res.stdout)] == want
        procs = processes(res.stdout)
        assert [(p["gpu"], p["pid"]) for p in procs] == [("0", str(os.getpid())), ("1", str(os.getpid()))]
        # A process holds its GPU's memory less what the driver keeps.
        assert [int(p["used"]) for p in procs] == [61_234 - 19, 60_111 - 19]

    def test_other_node(self, runner: Runner, state: Path) -> None:
        """--node 1 shows the second simulated node."""
        write_state(state, job_state(os.getpid()))
        res = smi(runner, state, "--node", "1")
        assert [(r["temp"], r["power"], r["util"]) for r in statuses(res.stdout)] == [
            (44, 150, 12),
            (40, 120, 0),
        ]

    def test_query_csv(self, runner: Runner, state: Path) -> None:
        """--query-gpu prints the same numbers as CSV, with and without header and units."""
        write_state(state, job_state(os.getpid()))
        fields = (
            "index,temperature.gpu,utilization.gpu,utilization.memory,memory.used,memory.total,clocks.sm,"
            "power.limit"
        )
        res = smi(runner, state, f"--query-gpu={fields}", "--format=csv")
        assert res.stdout.splitlines() == [
            "index, temperature.gpu, utilization.gpu [%], utilization.memory [%], memory.used [MiB], "
            "memory.total [MiB], clocks.current.sm [MHz], power.limit [W]",
            "0, 66, 97 %, 44 %, 61234 MiB, 81559 MiB, 1980 MHz, 700.00 W",
            "1, 71, 95 %, 43 %, 60111 MiB, 81559 MiB, 1980 MHz, 700.00 W",
        ]
        bare = smi(runner, state, "--query-gpu", "power.draw", "--format", "csv,noheader,nounits", "-i", "1")
        assert abs(float(bare.stdout) - 640) < 0.5

    def test_compute_apps(self, runner: Runner, state: Path) -> None:
        """--query-compute-apps lists the node's workers."""
        write_state(state, job_state(os.getpid()))
        res = smi(runner, state, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
        assert res.stdout.splitlines() == [f"{os.getpid()}, {61_234 - 19}", f"{os.getpid()}, {60_111 - 19}"]

    def test_select_gpus(self, runner: Runner, state: Path) -> None:
        """-i keeps the named GPUs and their processes."""
        write_state(state, job_state(os.getpid()))
        res = smi(runner, state, "-i", "1")
        assert [r["temp"] for r in statuses(res.stdout)] == [71]
        assert [p["gpu"] for p in processes(res.stdout)] == ["1"]

    def test_dead_worker_has_no_process(self, runner: Runner, state: Path) -> None:
        """A rank whose worker died shows an idle GPU and no process."""
        write_state(state, job_state(os.getpid(), dead_rank=1))
        res = smi(runner, state)
        rows = statuses(res.stdout)
        assert rows[0]["util"] == 97 and rows[1]["util"] == 0 and rows[1]["used"] < 16
        assert [p["gpu"] for p in processes(res.stdout)] == ["0"]

    @pytest.mark.parametrize(
        "content",
        [
            b"",
            b"{not json",
            b"\xff\xfe",
            b"[1, 2]",
            b'{"gpus": 3}',
            b'{"launcher_pid": "x", "gpus": []}',
        ],
    )
    def test_malformed_files_are_ignored(self, runner: Runner, state: Path, content: bytes) -> None:
        """Unreadable or malformed state files count as no job, without a traceback."""
        (state / "job-7.json").write_bytes(content)
        res = smi(runner, state)
        assert res.code == 0 and res.stderr == ""
        assert len(statuses(res.stdout)) == 8

    def test_figures_that_are_not_numbers(self, runner: Runner, state: Path) -> None:
        """NaN, infinities, strings and booleans in a live job's state read as defaults, never as a crash."""
        (state / "job-7.json").write_bytes(NAN_STATE)
        res = smi(runner, state)
        assert res.code == 0 and res.stderr == ""
        assert len(statuses(res.stdout)) == 1 and "No running processes found" in res.stdout

    def test_stale_and_orphaned_files_are_ignored(self, runner: Runner, state: Path) -> None:
        """A file not updated for over 10 s, or whose launcher is gone, is no running job."""
        write_state(state, job_state(os.getpid(), updated=time.time() - 60), "job-1.json")
        write_state(state, job_state(dead_pid()), "job-2.json")
        res = smi(runner, state)
        assert "No running processes found" in res.stdout and len(statuses(res.stdout)) == 8


class TestCommandLine:
    """Errors are one line and an exit status, never a traceback."""

    def test_unknown_field(self, runner: Runner, state: Path) -> None:
        """An unknown query field is nvidia-smi's message and exit status 2."""
        res = smi(runner, state, "--query-gpu=index,bogus", "--format=csv")
        assert (res.code, res.stdout) == (2, 'Field "bogus" is not a valid field to query.\n')

    def test_unknown_gpu(self, runner: Runner, state: Path) -> None:
        """-i with a GPU that is not there finds no devices."""
        res = smi(runner, state, "-i", "9")
        assert (res.code, res.stdout.strip()) == (6, "No devices were found")

    @pytest.mark.parametrize(
        "args",
        [
            ["--bogus"],
            ["-l", "zero"],
            ["-l", "-3"],
            ["--node", "x"],
            ["--query-gpu=index"],
            ["--format=csv"],
            ["--query-gpu=index", "--format=xml"],
        ],
    )
    def test_bad_arguments(self, runner: Runner, state: Path, args: list[str]) -> None:
        """A bad command line is one line of error and a non-zero status."""
        res = smi(runner, state, *args)
        assert res.code != 0
        assert len((res.stdout + res.stderr).strip().splitlines()) == 1
        assert "Traceback" not in res.stderr

    def test_missing_node(self, runner: Runner, state: Path) -> None:
        """--node beyond the running job's nodes is an error."""
        write_state(state, job_state(os.getpid()))
        res = smi(runner, state, "--node", "5")
        assert res.code == 2 and "no node 5" in res.stderr

    def test_help(self, runner: Runner, state: Path) -> None:
        """-h prints the options and exits 0."""
        res = smi(runner, state, "-h")
        assert res.code == 0 and "--query-gpu" in res.stdout and "--node" in res.stdout

    @pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
    def test_loop_until_signal(self, runner: Runner, state: Path, sig: signal.Signals) -> None:
        """-l prints the table again and again; SIGINT or SIGTERM ends it quietly with status 0."""
        out = runner.tmp / "loop.out"
        with out.open("w") as f:
            proc = subprocess.Popen(
                [smi_exe(), "-l", "1"],
                stdout=f,
                stderr=subprocess.PIPE,
                text=True,
                env=runner.env(FAKERUN_STATE_DIR=str(state)),
            )
        try:
            wait_for(lambda: out.read_text().count("| Processes:") >= 2)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == 0 and err == ""


class TestLiveJob:
    """fakerun-smi next to a running fakerun job."""

    def test_four_gpus_with_the_workers(self, runner: Runner, state: Path) -> None:
        """A 4-GPU job shows 4 busy GPUs whose processes are the job's workers."""
        log = (runner.tmp / "job.out").open("w")
        job = subprocess.Popen(
            [fakerun_exe(), "--nproc-per-node", "4", "--fake-speed", "20", "train.py"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=runner.env(FAKERUN_STATE_DIR=str(state)),
            cwd=runner.tmp,
        )
        try:
            seen: dict[str, Any] = {}

            def four_workers() -> bool:
                """Whether fakerun-smi lists four processes (keeps the last output)."""
                res = smi(runner, state)
                seen["res"] = res
                return len(processes(res.stdout)) == 4

            wait_for(four_workers)
            res = seen["res"]
            workers = {c.pid for c in psutil.Process(job.pid).children()}
            rows = processes(res.stdout)
            assert {int(p["pid"]) for p in rows} == workers
            assert [p["gpu"] for p in rows] == ["0", "1", "2", "3"]
            heads = [m.groupdict() for m in map(GPU_HEAD.match, res.stdout.splitlines()) if m]
            assert [h["index"] for h in heads] == ["0", "1", "2", "3"]
            assert all(h["name"] == "NVIDIA H100 80GB HBM3" for h in heads)
            assert len(statuses(res.stdout)) == 4
        finally:
            job.send_signal(signal.SIGTERM)
            try:
                job.wait(timeout=30)
            finally:
                job.kill()
                log.close()
        # The job removed its state file: the GPUs are idle again.
        after = smi(runner, state)
        assert len(statuses(after.stdout)) == 8 and "No running processes found" in after.stdout


class TestShims:
    """install_shims puts `torchrun`, `nvidia-smi` and `tune` on a PATH directory."""

    def test_install_and_run(self, runner: Runner) -> None:
        """The shims are executable scripts that run fakerun's tools with the given interpreter."""
        bin_dir = runner.tmp / "deep" / "bin"
        paths = install_shims(str(bin_dir), python=sys.executable)
        shims, stand_in = paths[:3], paths[3:]
        assert shims == [str(bin_dir / "torchrun"), str(bin_dir / "nvidia-smi"), str(bin_dir / "tune")]
        assert {Path(p).relative_to(bin_dir).as_posix() for p in stand_in} == {
            f"pylib/torch/{name}.py"
            for name in ("__init__", "distributed/__init__", "distributed/run", "distributed/launch")
        }
        for path in shims:
            assert os.access(path, os.X_OK)
            text = Path(path).read_text()
            assert text.startswith("#!/bin/sh\n") and MARKER in text and f'exec "{sys.executable}" -' in text
        env = runner.env(FAKERUN_STATE_DIR=str(runner.tmp / "state"), PATH=f"{bin_dir}:{os.environ['PATH']}")
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, env=env, timeout=60)
        assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 8
        bad = subprocess.run(["nvidia-smi", "--bogus"], capture_output=True, text=True, env=env, timeout=60)
        assert bad.returncode == 2 and bad.stderr.startswith("nvidia-smi: ")
        usage = subprocess.run(["torchrun", "--help"], capture_output=True, text=True, env=env, timeout=60)
        assert usage.returncode == 0 and "--nproc-per-node" in usage.stdout
        assert usage.stdout.startswith("usage: torchrun ")  # the shim's name, as torchrun's console script
        # tune's run.py refuses torchrun options for a single-device recipe, before launching anything.
        single = ["tune", "run", "--nproc_per_node", "2", "lora_finetune_single_device", "--config", "c"]
        refused = subprocess.run(single, capture_output=True, text=True, env=env, timeout=60)
        assert refused.returncode == 2 and refused.stderr.splitlines()[-1] == (
            "tune run: error: Recipe lora_finetune_single_device does not support distributed training."
            "Please run without torchrun commands."
        )

    def test_reinstall_overwrites_own_shims(self, runner: Runner) -> None:
        """Installing again replaces the shims, e.g. with another interpreter."""
        install_shims(str(runner.tmp), python="/old/python3")
        install_shims(str(runner.tmp), python=sys.executable)
        assert f'"{sys.executable}"' in (runner.tmp / "nvidia-smi").read_text()

    def test_refuses_foreign_files(self, runner: Runner) -> None:
        """A file the shims did not write is never overwritten, and nothing else is written either."""
        foreign = runner.tmp / "nvidia-smi"
        foreign.write_text("#!/bin/sh\necho real\n")
        with pytest.raises(ValueError, match="not a fakerun shim") as err:
            install_shims(str(runner.tmp), python=sys.executable)
        assert "\n" not in str(err.value)
        assert foreign.read_text() == "#!/bin/sh\necho real\n"
        assert not (runner.tmp / "torchrun").exists()

    def test_interpreter_path_is_quoted(self, runner: Runner) -> None:
        """An interpreter path with blanks and shell characters still runs."""
        odd = runner.tmp / 'a b$c"d`e'
        odd.mkdir()
        python = odd / "python"
        # A wrapper rather than a symlink: a symlinked venv interpreter would not find its venv.
        python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        python.chmod(0o755)
        bin_dir = runner.tmp / "bin"
        install_shims(str(bin_dir), python=str(python))
        env = runner.env(FAKERUN_STATE_DIR=str(runner.tmp / "state"))
        res = subprocess.run(
            [str(bin_dir / "nvidia-smi"), "-L"], capture_output=True, text=True, env=env, timeout=60
        )
        assert res.returncode == 0 and len(res.stdout.splitlines()) == 8


class TestJobStack:
    """The table follows the job's driver, and temperatures move on between two samples."""

    def test_pinned_535_stack_keeps_the_535_layout(self, runner: Runner, state: Path) -> None:
        """A job on a 535 driver (CUDA 12.2) shows the 89-column table."""
        doc = job_state(os.getpid())
        doc.update(driver_version="535.183.01", cuda_version="12.2")
        write_state(state, doc)
        lines = smi(runner, state).stdout.splitlines()
        assert "Driver Version: 535.183.01   CUDA Version: 12.2" in lines[2]
        assert {len(line) for line in lines[1:] if line.strip()} == {89}

    def test_temperature_follows_the_target_between_samples(self, runner: Runner, state: Path) -> None:
        """A GPU sampled hot 20 s ago, heading for a checkpoint's cool target, reads cooler, not cold."""
        doc = job_state(os.getpid())
        doc["speed"] = 1.0
        for g in doc["gpus"]:
            g.update(die_temp=float(g["temp"]), temp_target=30.0, sampled=time.time() - 20.0)
        write_state(state, doc)
        temps = [r["temp"] for r in statuses(smi(runner, state).stdout)]
        for (_, _, _, _, before, *_), now in zip(GPU_VALUES[:2], temps, strict=True):
            lo = settle(before, 30.0, 25.0)  # the run may take a few seconds more
            assert round(lo) - 1 <= now <= round(settle(before, 30.0, 20.0)) + 1 < before


def test_smi_and_the_grid_agree(tmp_path: Path) -> None:
    """The same GPU at the same moment: the coordinator's grid rows and fakerun-smi show the same figures."""
    from fakerun.coordinator import Coordinator
    from fakerun.presets import resolve
    from fakerun.sim.job import make_job
    from fakerun.sim.run import make_run
    from fakerun.sim.telemetry import telemetry
    from fakerun.tools.smi import snapshot

    b = resolve("llama3-8b")
    job = make_job(b.model, b.cluster, b.storage, nnodes=1, nproc_per_node=8)
    coord = Coordinator(make_run(job), ranks=range(8), speed=1.0, run_id="agree", attempt=0)
    wall = time.time()
    for r in range(8):
        t = telemetry(job, r, 1, "idle")
        tel = [t.util_pct, t.mem_util_pct, t.temp_c, t.power_w, t.sm_clock_mhz, t.mem_used_mib, "idle"]
        coord.on_message(r, {"k": "ready", "pid": os.getpid(), "tel": tel}, 0.0, wall)
    for r in range(8):
        t = telemetry(job, r, 1, "train")
        tel = [t.util_pct, t.mem_util_pct, t.temp_c, t.power_w, t.sm_clock_mhz, t.mem_used_mib, "train"]
        coord.on_message(r, {"k": "step", "s": 1, "c": 1.0, "tel": tel}, 1.0, wall)
    doc = coord.state(["gpu-node-001"], 8, os.getpid(), wall)
    (tmp_path / "job-1.json").write_text(json.dumps(doc), encoding="utf-8")
    snap = snapshot(None, wall, "gpu-node-001", str(tmp_path))
    rows = coord.grid_rows()
    assert [g.temp_c for g in snap.gpus] == [row[2] for row in rows]
    assert [g.util_pct for g in snap.gpus] == [row[0] for row in rows]
    assert all(abs(g.power_w - row[3]) < 0.5 for g, row in zip(snap.gpus, rows, strict=True))
    assert [g.mem_used_mib for g in snap.gpus] == [row[5] for row in rows]
    assert len({row[3] for row in rows}) > 1 and len({row[2] for row in rows}) > 1  # not all the same GPU
    assert snap.driver_version == doc["driver_version"] and snap.cuda_version == "13.0"
