"""scripts/slurm/fake_srun.sh under hostile conditions: Ctrl-C, hangups, SIGTERM, SIGKILL, dead pipes, -N 16.

Each job runs in its own session, as a command typed in a terminal runs in its own process group: a
Ctrl-C or a hangup of the terminal is a signal to that whole group (fake_srun.sh, the batch script, srun),
which the srun tasks, each in a session of its own, never see directly. The `runner` fixture then checks
that no process of the test (its marker in the environment, or its directory as the working directory)
is left: no launcher, no worker, no srun.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.conftest import Runner, fakerun_exe, marked_processes
from tests.integration.test_multinode import free_port

FAKE_SRUN = Path(__file__).resolve().parents[2] / "scripts" / "slurm" / "fake_srun.sh"
JOBID = "4242"
# A task that outlives a broken pipe (SIGPIPE ignored, failed writes ignored): only srun can end it.
STUBBORN = "trap '' PIPE; while :; do echo \"tick $SLURM_PROCID\" 2>/dev/null || :; sleep 0.1; done"


def batch(runner: Runner, body: str, nodes: int = 2, name: str = "job.sbatch") -> Path:
    """Writes a batch script for NODES nodes that runs BODY."""
    path = runner.tmp / name
    path.write_text(f"#!/bin/bash\n#SBATCH --nodes={nodes}\nset -euo pipefail\n{body}\n")
    return path


def fakerun_batch(runner: Runner, nodes: int, nproc: int, *fake: str) -> Path:
    """A batch script whose one step is a fakerun agent per node, meeting at a c10d rendezvous here."""
    fake_args = " ".join(fake)
    return batch(
        runner,
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)\n'
        f'srun fakerun --nnodes "$SLURM_NNODES" --nproc-per-node {nproc} --rdzv-backend c10d '
        f'--rdzv-endpoint 127.0.0.1:{free_port()} --rdzv-id "$SLURM_JOB_ID" {fake_args} train.py',
        nodes,
    )


def env(runner: Runner) -> dict[str, str]:
    """The runner's environment with the `fakerun` command on PATH and TMPDIR in the test's directory."""
    tmp = runner.tmp / "tmp"
    tmp.mkdir(exist_ok=True)
    return runner.env(
        PATH=f"{Path(fakerun_exe()).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}", TMPDIR=str(tmp)
    )


def start(runner: Runner, script: Path, stdout: int, stderr: int, *args: str) -> subprocess.Popen[bytes]:
    """Starts `fake_srun.sh ARGS SCRIPT` in a session of its own, as a shell starts a foreground job."""
    return subprocess.Popen(
        ["bash", str(FAKE_SRUN), "--jobid", JOBID, *args, str(script)],
        stdout=stdout,
        stderr=stderr,
        env=env(runner),
        cwd=runner.tmp,
        start_new_session=True,
    )


def start_to_files(runner: Runner, script: Path, *args: str) -> subprocess.Popen[bytes]:
    """Starts fake_srun.sh with its stdout and stderr in out.txt and err.txt."""
    with open(runner.tmp / "out.txt", "wb") as out, open(runner.tmp / "err.txt", "wb") as err:
        return start(runner, script, out.fileno(), err.fileno(), *args)


def read_until(fd: int, marker: bytes, timeout: float = 60) -> bytes:
    """Reads the pipe FD until MARKER has come (the job is running), or fails."""
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        left = deadline - time.monotonic()
        assert left > 0, f"{marker!r} never came: {data[-2000:]!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"the output ended before {marker!r}: {data[-2000:]!r}"
            data += chunk
    return data


def wait_for_text(path: Path, marker: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Waits until the file PATH holds MARKER (the job is running), or fails."""
    deadline = time.monotonic() + timeout
    while marker not in path.read_text(errors="replace"):
        assert proc.poll() is None, f"fake_srun.sh ended ({proc.returncode}) before {marker!r}"
        assert time.monotonic() < deadline, f"{marker!r} never came in {path.name}"
        time.sleep(0.05)


def end(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """fake_srun.sh's exit status; a hang is a failure (and is killed)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"fake_srun.sh still running after {timeout} s")


def nothing_left(runner: Runner, timeout: float = 15) -> None:
    """No process of the test is left (a launcher's workers follow it within a second), nor the shims."""
    assert not list((runner.tmp / "tmp").glob("fake_srun.*"))
    deadline = time.monotonic() + timeout
    left = marked_processes(runner.mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = marked_processes(runner.mark)
    described = []
    for p in left:
        try:
            described.append((p.pid, " ".join(p.cmdline())[:100]))
        except psutil.Error:
            continue
    assert not described, f"left behind: {described}"


def srun_lines(text: str) -> list[str]:
    """srun's and slurmstepd's lines, also those that follow a progress bar's last update on its line."""
    return re.findall(r"(?:srun|slurmstepd): [^\r\n]*", text)


def srun_pid(runner: Runner) -> int:
    """The pid of the srun shim (`bash .../srun CMD...`) of the test's job."""
    for p in marked_processes(runner.mark):
        try:
            if any(arg.endswith("/srun") for arg in p.cmdline()[:3]):
                return int(p.pid)
        except psutil.Error:
            continue
    pytest.fail("no srun is running")


class TestCtrlC:
    """srun's Ctrl-C: one reports the tasks' states, a second within a second ends the step."""

    def test_once_reports_and_the_job_runs_on(self, runner: Runner) -> None:
        """A single Ctrl-C: srun's two status lines, the tasks never see it, the job completes, exit 0."""
        script = fakerun_batch(runner, 2, 2, "--fake-max-steps", "300", "--fake-speed", "20")
        proc = start_to_files(runner, script)
        wait_for_text(runner.tmp / "out.txt", "memory after first step", proc)
        os.killpg(proc.pid, signal.SIGINT)
        assert end(proc) == 0, (runner.tmp / "err.txt").read_text()[-2000:]
        err = (runner.tmp / "err.txt").read_text()
        assert srun_lines(err) == [
            "srun: interrupt (one more within 1 sec to abort)",
            f"srun: StepId={JOBID}.0 tasks 0-1: running",
        ], err[-3000:]
        assert "Training summary" in (runner.tmp / "out.txt").read_text()
        nothing_left(runner)

    def test_twice_within_a_second_ends_the_step(self, runner: Runner) -> None:
        """Two Ctrl-Cs: srun's status, then Ctrl-C and SIGKILL to the step and srun's abort lines."""
        script = fakerun_batch(runner, 2, 2, "--fake-speed", "20")
        proc = start_to_files(runner, script)
        wait_for_text(runner.tmp / "out.txt", "memory after first step", proc)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        assert end(proc) != 0
        nothing_left(runner)
        err = (runner.tmp / "err.txt").read_text()
        lines = srun_lines(err)
        assert lines[:6] == [
            "srun: interrupt (one more within 1 sec to abort)",
            f"srun: StepId={JOBID}.0 tasks 0-1: running",
            f"srun: sending Ctrl-C to StepId={JOBID}.0",
            "srun: forcing job termination",
            "srun: Job step aborted: Waiting up to 32 seconds for job step to finish.",
            lines[5],
        ], err[-3000:]
        assert re.fullmatch(
            rf"slurmstepd: error: \*\*\* STEP {JOBID}\.0 ON gpu-node-001 CANCELLED AT "
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d DUE to SIGNAL Killed \*\*\*",
            lines[5],
        )

    def test_with_the_reader_of_its_output_gone(self, runner: Runner) -> None:
        """`fake_srun.sh ... 2>&1 | tee log`, Ctrl-C twice (tee dies of the first): nothing survives."""
        script = fakerun_batch(runner, 2, 2, "--fake-speed", "20")
        r, w = os.pipe()
        try:
            proc = start(runner, script, w, w)
        finally:
            os.close(w)
        try:
            read_until(r, b"memory after first step")
        finally:
            os.close(r)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        end(proc)
        nothing_left(runner)


class TestEndOfOutput:
    """srun gets SIGPIPE when the reader of its output goes away, and ends the step (signals.c)."""

    def test_tasks_that_ignore_the_broken_pipe_are_ended(self, runner: Runner) -> None:
        """`fake_srun.sh ... | head`: tasks ignoring SIGPIPE and EPIPE still end, without a signal."""
        (runner.tmp / "task.sh").write_text(STUBBORN + "\n")
        script = batch(runner, "srun bash task.sh")
        r, w = os.pipe()
        try:
            proc = start(runner, script, w, subprocess.DEVNULL)
        finally:
            os.close(w)
        try:
            read_until(r, b"tick 1\n")
        finally:
            os.close(r)
        assert end(proc) == 128 + signal.SIGKILL
        nothing_left(runner)


class TestTermination:
    """Signals that end a job: a hangup of the terminal, `kill` of fake_srun.sh or of srun, SIGKILL."""

    @pytest.mark.parametrize(
        ("target", "sig"),
        [
            ("group", signal.SIGHUP),
            ("fake_srun", signal.SIGTERM),
            ("srun", signal.SIGTERM),
            ("srun", signal.SIGKILL),
        ],
        ids=["hangup", "sigterm-fake_srun", "sigterm-srun", "sigkill-srun"],
    )
    def test_ends_everything(self, runner: Runner, target: str, sig: signal.Signals) -> None:
        """Every launcher and worker is gone, and fake_srun.sh has ended."""
        script = fakerun_batch(runner, 2, 2, "--fake-speed", "20")
        proc = start_to_files(runner, script)
        wait_for_text(runner.tmp / "out.txt", "memory after first step", proc)
        if target == "group":
            os.killpg(proc.pid, sig)
        elif target == "fake_srun":
            proc.send_signal(sig)
        else:
            os.kill(srun_pid(runner), sig)
        end(proc)
        nothing_left(runner)
        err = (runner.tmp / "err.txt").read_text()
        if sig != signal.SIGKILL:
            lines = srun_lines(err)
            assert lines.count("srun: forcing job termination") == 1, err[-3000:]
            assert "srun: Job step aborted: Waiting up to 32 seconds for job step to finish." in lines


class TestSteps:
    """srun's reports and exit codes, and jobs of many nodes."""

    def test_failed_and_killed_tasks(self, runner: Runner) -> None:
        """Exit codes and signals as srun reports them; srun's code is the highest (128+N for a signal)."""
        script = batch(
            runner,
            "rc=0; srun bash -c 'exit $SLURM_PROCID' || rc=$?; echo \"first $rc\"\n"
            "rc=0; srun -l bash -c 'echo hi; [[ $SLURM_PROCID != 1 ]] || kill -9 $$' || rc=$?; "
            'echo "second $rc"',
            nodes=3,
        )
        res = subprocess.run(
            ["bash", str(FAKE_SRUN), "--jobid", JOBID, str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env(runner),
            cwd=runner.tmp,
        )
        assert res.returncode == 0, res.stderr
        assert "first 2\n" in res.stdout and "second 137\n" in res.stdout
        assert sorted(line for line in res.stdout.splitlines() if line.endswith(": hi")) == [
            "0: hi",
            "1: hi",
            "2: hi",
        ]
        lines = srun_lines(res.stderr)
        assert sorted(lines[:2]) == [
            "srun: error: gpu-node-002: task 1: Exited with exit code 1",
            "srun: error: gpu-node-003: task 2: Exited with exit code 2",
        ]
        assert lines[2:] == [
            "srun: error: gpu-node-002: task 1: Killed",
            f"srun: Force Terminated StepId={JOBID}.1",
        ]

    def test_sixteen_nodes(self, runner: Runner) -> None:
        """-N 16 exits 0 every time: no SIGPIPE from `| head -n1` under pipefail (fake_srun.sh, script)."""
        noop = batch(runner, 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1', 16, "noop.sbatch")
        for _ in range(40):
            res = subprocess.run(
                ["bash", str(FAKE_SRUN), str(noop)],
                capture_output=True,
                text=True,
                timeout=30,
                env=env(runner),
                cwd=runner.tmp,
            )
            assert (res.returncode, res.stdout) == (0, "gpu-node-001\n"), res.stderr
        for _ in range(3):
            script = fakerun_batch(runner, 16, 1, "--fake-max-steps", "1", "--fake-speed", "1000")
            res = subprocess.run(
                ["bash", str(FAKE_SRUN), str(script)],
                capture_output=True,
                text=True,
                timeout=60,
                env=env(runner),
                cwd=runner.tmp,
            )
            assert res.returncode == 0, res.stderr[-2000:]
            assert "16 GPUs on 16 nodes" in res.stdout and "Training summary" in res.stdout
        assert not list((runner.tmp / "tmp").glob("fake_srun.*"))


SLURM_DIR = FAKE_SRUN.parent
SCRIPTS = sorted(SLURM_DIR.glob("*.sbatch"))
# The nodes each script is run on here: the 70B job's TP 8 x PP 4 needs a multiple of 4 nodes.
NODES = {"train_llama3_8b.sbatch": 2, "train_llama3_70b.sbatch": 4}


@dataclass
class SbatchRun:
    """One sbatch script run through fake_srun.sh with `-o %x-%j.out`: the terminal's output and the .out."""

    code: int
    terminal: str
    errors: str
    out_name: str
    out: str


@pytest.fixture(scope="module")
def sbatch_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SbatchRun]]:
    """Each script of scripts/slurm run once, a few fast steps, shared by the tests that read its output."""
    tmp = tmp_path_factory.mktemp("sbatch")
    runner = Runner(uuid.uuid4().hex, tmp)
    runs: dict[str, SbatchRun] = {}
    for i, script in enumerate(SCRIPTS):
        jobid = str(7100 + i)
        sbatch = ["bash", str(FAKE_SRUN), "-N", str(NODES.get(script.name, 2)), "--jobid", jobid]
        res = subprocess.run(
            [*sbatch, "-o", "%x-%j.out", str(script)],
            capture_output=True,
            text=True,
            timeout=240,
            env={
                **env(runner),
                "FAKERUN_SPEED": "1000",
                "FAKERUN_MAX_STEPS": "2",
                "MASTER_PORT": str(free_port()),
            },
            cwd=tmp,
        )
        outs = list(tmp.glob(f"*-{jobid}.out"))
        name = outs[0].name if len(outs) == 1 else ""
        text = outs[0].read_text(errors="replace") if len(outs) == 1 else ""
        runs[script.name] = SbatchRun(res.returncode, res.stdout, res.stderr, name, text)
    yield runs
    left = marked_processes(runner.mark)
    for proc in left:
        proc.kill()
    assert not left, "processes left behind"


def job_name(script: Path) -> str:
    """The script's `#SBATCH --job-name`."""
    m = re.search(r"^#SBATCH --job-name=(\S+)$", script.read_text(), re.M)
    assert m is not None
    return m.group(1)


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
class TestSbatchScripts:
    """scripts/slurm's job scripts: written as teams write them, and run here under their own strict mode."""

    def test_syntax(self, script: Path) -> None:
        """`bash -n` passes, and shellcheck where it is installed."""
        res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stderr
        if shutil.which("shellcheck"):
            res = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, check=False)
            assert res.returncode == 0, res.stdout

    def test_terse_and_strict(self, script: Path) -> None:
        """#SBATCH header with the usual options, then `set -euo pipefail`; no explanatory comments."""
        lines = script.read_text().splitlines()
        assert lines[0] == "#!/bin/bash"
        header = [line for line in lines[1:] if line.startswith("#SBATCH ")]
        options = {line.split()[1].split("=")[0] for line in header}
        assert {
            "--job-name",
            "--nodes",
            "--ntasks-per-node",
            "--gpus-per-node",
            "--cpus-per-task",
            "--time",
            "--output",
            "--exclusive",
        } <= options
        assert "#SBATCH --ntasks-per-node=1" in header and "#SBATCH --output=%x-%j.out" in header
        code = [line for line in lines[1:] if line.strip() and not line.startswith("#SBATCH ")]
        assert code[0] == "set -euo pipefail"
        assert [line for line in code if line.lstrip().startswith("#")] == []
        text = script.read_text()
        assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1' in text
        assert re.search(r"^srun ", text, re.M) and re.search(r"\btorchrun \\$", text, re.M)
        # c10d at the head node's address, or static with each task's own node rank.
        assert '--rdzv_endpoint "$head_node_ip:' in text or "--node_rank \\$SLURM_PROCID" in text
        # The preset's NICs (dgx-h100: eight mlx5 HCAs, IPoIB bootstrap) and the agents' shared secret.
        assert "export NCCL_IB_HCA=" + ",".join(f"mlx5_{i}" for i in range(8)) in lines
        assert "export NCCL_SOCKET_IFNAME=ibp26s0" in lines
        assert any(line.startswith("export FAKERUN_SECRET=") for line in lines)
        assert "fakerun" not in text.replace("FAKERUN_SECRET", "")

    def test_runs_under_fake_srun(self, script: Path, sbatch_runs: dict[str, SbatchRun]) -> None:
        """The job completes; sbatch's line on the terminal, the job's output in %x-%j.out only."""
        run = sbatch_runs[script.name]
        assert run.code == 0, (run.errors + run.out)[-3000:]
        jobid = re.fullmatch(r"Submitted batch job (\d+)\n", run.terminal)
        assert jobid is not None, run.terminal
        assert run.out_name == f"{job_name(script)}-{jobid.group(1)}.out"
        assert run.errors == ""
        assert "Setting OMP_NUM_THREADS environment variable" in run.out
        assert re.search(r"(iteration +2/|\| 2/\d+ \[)", run.out), run.out[-3000:]

    def test_out_looks_like_a_cluster_job(self, script: Path, sbatch_runs: dict[str, SbatchRun]) -> None:
        """No tool names, no `fake-` hosts, no secret warning, no srun noise that was not asked for."""
        out = sbatch_runs[script.name].out
        assert out
        assert not re.search(r"fake-|fake_srun|fakerun", out, re.I)
        assert "FAKERUN_SECRET" not in out
        assert "PMIX" not in out and "srun: lua:" not in out
        assert not re.search(r"^(srun|slurmstepd): ", out, re.M)
        # The nodes go by the cluster preset's names where the job shows them.
        hosts = set(re.findall(r"\bgpu-node-\d{3}\b", out))
        assert hosts <= {"gpu-node-001", "gpu-node-002", "gpu-node-003", "gpu-node-004"}
        if script.name == "train_llama3_8b.sbatch":
            assert re.search(r"^nodes: gpu-node-\[001-002\] rdzv: ", out, re.M)
            assert re.search(r"master_addr=gpu-node-00[12]$", out, re.M)


class TestSrunNoise:
    """srun's own lines where srun prints them: labels with -l, PMIx with --mpi=pmix, a site's lua filter."""

    def test_label_pmix_and_lua(self, runner: Runner) -> None:
        """`srun -l --mpi=pmix` on 2 nodes: every task line labelled, one PMIx line per task, lua per srun."""
        script = batch(
            runner,
            "srun -l --mpi=pmix fakerun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d "
            f'--rdzv-endpoint 127.0.0.1:{free_port()} --rdzv-id "$SLURM_JOB_ID" '
            "--fake-max-steps 2 --fake-speed 1000 train.py\n"
            "srun -l bash -c 'echo plain on $SLURMD_NODENAME $(hostname) $HOSTNAME $(hostname -s)'\n"
            "echo batch on $(hostname) $HOSTNAME at $(hostname --ip-address)",
        )
        res = subprocess.run(
            ["bash", str(FAKE_SRUN), "--jobid", JOBID, "--site-lua", str(script)],
            capture_output=True,
            timeout=120,
            env=env(runner),
            cwd=runner.tmp,
        )
        # As bytes: a progress bar's carriage returns stay inside its line (srun labels whole lines).
        stdout, stderr = res.stdout.decode(errors="replace"), res.stderr.decode(errors="replace")
        assert res.returncode == 0, stderr[-3000:]
        out = [line for line in stdout.split("\n") if line]
        err = [line for line in stderr.split("\n") if line]
        out = [line for line in out if not line.startswith("batch on")]
        assert len(out) > 20
        assert all(re.match(r"[01]: ", line) for line in out), [x for x in out if not re.match(r"[01]: ", x)]
        assert {line[:2] for line in out} == {"0:", "1:"}
        # A task names its simulated node, in every way a script asks; addresses stay this machine's.
        assert sorted(line for line in out if "plain on" in line) == [
            "0: plain on" + " gpu-node-001" * 4,
            "1: plain on" + " gpu-node-002" * 4,
        ]
        ip = subprocess.run(["hostname", "--ip-address"], capture_output=True, text=True).stdout.strip()
        assert f"batch on gpu-node-001 gpu-node-001 at {ip}" in stdout
        lua = [line for line in err if line.startswith("srun: lua: ")]
        assert lua == [f"srun: lua: Submitted job {JOBID}"] * 2
        labelled = [line for line in err if not line.startswith("srun: ")]
        assert all(re.match(r"[01]: ", line) for line in labelled), [x for x in labelled if x[1:3] != ": "]
        pmix = [line for line in labelled if "PMIX ERROR" in line]
        assert len(pmix) == 2, pmix
        for line in pmix:
            m = re.fullmatch(
                r"([01]): \[(gpu-node-00[12]):(\d+)\] PMIX ERROR: ERROR in file \S+\.c at line \d+", line
            )
            assert m is not None, line
            assert m.group(2) == f"gpu-node-00{int(m.group(1)) + 1}"
        assert not re.search(r"fake-|fake_srun|fakerun:", stdout + stderr)
