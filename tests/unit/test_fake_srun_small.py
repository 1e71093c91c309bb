"""fake_srun.sh's hostlists (fakerun's one expansion) and sbatch's output files, with jobs that only echo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fakerun.launcher.slurm import expand_nodelist

REPO = Path(__file__).resolve().parents[2]
FAKE_SRUN = REPO / "scripts" / "slurm" / "fake_srun.sh"


def environ(tmp_path: Path, with_fakerun: bool = True) -> dict[str, str]:
    """A plain environment: this interpreter's bin first (its fakerun) or not at all, TMPDIR in tmp_path."""
    path = "/usr/bin:/bin"
    if with_fakerun:
        path = f"{Path(sys.executable).parent}:{path}"
    return {"PATH": path, "HOME": str(tmp_path), "TMPDIR": str(tmp_path), "USER": "alice"}


@pytest.mark.parametrize("with_fakerun", [True, False])
@pytest.mark.parametrize("hostlist", ["r[1-2]c[1-2]n[1-2]", "gpu-[001-003],login1", "dgx[08-10] a7"])
def test_scontrol_expands_as_fakerun(tmp_path: Path, hostlist: str, with_fakerun: bool) -> None:
    """`scontrol show hostnames` prints what fakerun's expand_nodelist gives, with or without fakerun."""
    (tmp_path / "scontrol").symlink_to(FAKE_SRUN)
    res = subprocess.run(
        [str(tmp_path / "scontrol"), "show", "hostnames", hostlist],
        env=environ(tmp_path, with_fakerun),
        capture_output=True,
        text=True,
        check=False,
    )
    assert (res.returncode, res.stderr) == (0, "")
    assert res.stdout.splitlines() == expand_nodelist(hostlist)


def test_scontrol_refuses_a_bad_list(tmp_path: Path) -> None:
    """A malformed list: scontrol's error line, exit code 1."""
    (tmp_path / "scontrol").symlink_to(FAKE_SRUN)
    res = subprocess.run(
        [str(tmp_path / "scontrol"), "show", "hostnames", "gpu-[001-"],
        env=environ(tmp_path),
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 1
    assert res.stderr.splitlines()[-1] == "scontrol: error: Invalid hostlist: gpu-[001-"


def sbatch(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess[str]:
    """fake_srun.sh ARGS job.sbatch, in tmp_path, with job id 4242."""
    script = tmp_path / "job.sbatch"
    script.write_text("#!/bin/bash\n" + body)
    return subprocess.run(
        ["bash", str(FAKE_SRUN), "--jobid", "4242", *args, str(script)],
        cwd=tmp_path,
        env=environ(tmp_path),
        capture_output=True,
        text=True,
        check=False,
    )


ECHO = "echo to-out\necho to-err >&2\n"


class TestOutputFiles:
    """--sbatch-output writes the files sbatch would; -o/-e name them; without either, the terminal."""

    def test_default_is_slurm_jobid_out(self, tmp_path: Path) -> None:
        """No -o and no #SBATCH --output: slurm-<id>.out with both streams; sbatch's line on the terminal."""
        res = sbatch(tmp_path, ECHO, "--sbatch-output")
        assert (res.returncode, res.stdout, res.stderr) == (0, "Submitted batch job 4242\n", "")
        assert sorted((tmp_path / "slurm-4242.out").read_text().splitlines()) == ["to-err", "to-out"]

    def test_scripts_output_and_error_lines(self, tmp_path: Path) -> None:
        """#SBATCH --output=%x-%j.out and -e %x-%j.err: the job name and id, one stream each."""
        header = "#SBATCH --job-name=tiny\n#SBATCH --output=%x-%j.out\n#SBATCH -e %x-%j.err\n"
        res = sbatch(tmp_path, header + ECHO, "--sbatch-output")
        assert res.returncode == 0
        assert (tmp_path / "tiny-4242.out").read_text() == "to-out\n"
        assert (tmp_path / "tiny-4242.err").read_text() == "to-err\n"

    def test_command_line_beats_the_script(self, tmp_path: Path) -> None:
        """-o on the command line wins over #SBATCH --output; %u, %a and %% expand as sbatch's do."""
        header = "#SBATCH --output=ignored.out\n"
        res = sbatch(tmp_path, header + ECHO, "--sbatch-output", "-o", "%u-%a-%%.log")
        assert res.returncode == 0
        assert not (tmp_path / "ignored.out").exists()
        assert (tmp_path / "alice-4294967294-%.log").read_text().count("to-") == 2

    def test_without_the_option_the_terminal(self, tmp_path: Path) -> None:
        """The script's #SBATCH --output is ignored unless asked: the demo's output stays on the terminal."""
        res = sbatch(tmp_path, "#SBATCH --output=%x-%j.out\n" + ECHO)
        assert (res.stdout, res.stderr) == ("to-out\n", "to-err\n")
        assert not [p for p in os.listdir(tmp_path) if p.endswith(".out")]
