"""What a new user trips on: --fake-version, their state directory, misspelled FAKERUN_* variables, the
summary's node count, --fake-start-step errors, the preset listing and --fake-storage."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from fakerun import listing, presets
from fakerun.cli import misspelled_env, parse_command_line
from fakerun.dialects import events as ev
from fakerun.dialects.fakerun import summary_rows
from fakerun.jobconfig import JobConfigError, build_run
from fakerun.launcher.ranklogs import RankLogs
from fakerun.main import main
from fakerun.paths import release_state_dir
from fakerun.sim.stack import stack_for
from tests.unit.test_dialects import sample_events


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """fakerun's main in this process: exit code, stdout, stderr."""
    try:
        code = main(["fakerun", *argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


class TestVersion:
    """--fake-version prints fakerun's version and the stack it simulates; --version stays torchrun's."""

    @pytest.mark.parametrize("cluster", presets.list_presets()["clusters"])
    def test_names_the_clusters_stack(self, cluster: str, capsys: pytest.CaptureFixture[str]) -> None:
        """Without a script: the torch build, NCCL (RCCL) release and driver a job on that cluster logs."""
        code, out, err = run_main(["--fake-version", "--fake-cluster", cluster], capsys)
        stack = stack_for(presets.load_cluster(cluster))
        first, second = out.splitlines()
        assert code == 0 and err == ""
        assert re.fullmatch(r"fakerun \S+", first)
        words = second.replace(",", " ").split()
        for version in (stack.torch, stack.nccl, stack.driver):
            assert version in words

    def test_dash_dash_version_is_torchruns_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """torchrun has no --version: argparse's usage error, exit code 2, as the reference records."""
        code, out, err = run_main(["--version"], capsys)
        assert code == 2 and out == ""
        assert err.splitlines()[-1].startswith("fakerun: error: the following arguments are required")


class TestStateDir:
    """The state directory a job used is removed when empty, unless the user named it."""

    def test_users_directory_stays(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """FAKERUN_STATE_DIR=DIR: DIR is still there, empty, after the job's entry is gone."""
        mine = tmp_path / "state"
        monkeypatch.setenv("FAKERUN_STATE_DIR", str(mine))
        logs = RankLogs(str(mine / "job-1"), {"run_id": "r"}, lambda line: None)
        assert (mine / "job-1" / "meta.json").is_file()
        logs.close()
        assert mine.is_dir() and list(mine.iterdir()) == []

    def test_default_directory_goes_when_empty(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without the variable, fakerun's own directory is removed once empty, kept while not."""
        monkeypatch.delenv("FAKERUN_STATE_DIR", raising=False)
        default = tmp_path / "fakerun-0"
        (default / "job-2").mkdir(parents=True)
        release_state_dir(str(default))
        assert default.is_dir()  # another job's entry is in it
        (default / "job-2").rmdir()
        release_state_dir(str(default))
        assert not default.exists()


class TestMisspelledEnv:
    """A FAKERUN_* variable fakerun does not read but that looks like one it does gets one warning."""

    @pytest.mark.parametrize(
        ("typo", "meant"),
        [
            ("FAKERUN_SPED", "FAKERUN_SPEED"),
            ("FAKERUN_MAXSTEPS", "FAKERUN_MAX_STEPS"),
            ("FAKERUN_STATEDIR", "FAKERUN_STATE_DIR"),
            ("FAKERUN_SECRETS", "FAKERUN_SECRET"),
            ("FAKERUN_MODLE", "FAKERUN_MODEL"),
        ],
    )
    def test_names_the_close_match(self, typo: str, meant: str) -> None:
        """One line naming the variable and the one it was meant to be."""
        (line,) = misspelled_env({typo: "1", "PATH": "/bin"})
        assert typo in line and line.endswith(f"did you mean {meant}?")

    def test_known_and_unrelated_names_are_quiet(self) -> None:
        """Variables fakerun reads, and FAKERUN_* ones like none of them (a test's mark), give nothing."""
        environ = {"FAKERUN_SPEED": "2", "FAKERUN_SECRET": "x", "FAKERUN_TEST_MARK": "m", "SPED": "1"}
        assert misspelled_env(environ) == []

    def test_once_per_run(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        """The launcher prints it once, in its notice format, on stderr."""
        monkeypatch.setenv("FAKERUN_SPED", "3")
        code, _, err = run_main(["--fake-version"], capsys)
        assert code == 0
        lines = [line for line in err.splitlines() if "FAKERUN_SPED" in line]
        assert len(lines) == 1
        assert re.match(r"W\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ fakerun/\S+\.py:\d+\] FAKERUN_SPED ", lines[0])


@pytest.mark.parametrize(("nnodes", "words"), [(1, "1 node x 8"), (2, "2 nodes x 8")])
def test_summary_counts_nodes_in_english(nnodes: int, words: str) -> None:
    """The summary's GPUs row: "1 node", "2 nodes"."""
    (summary,) = [e for e in sample_events() if isinstance(e, ev.RunSummary)]
    summary = dataclasses.replace(summary, nnodes=nnodes, nproc_per_node=8, world_size=8 * nnodes)
    assert f"({words})" in dict(summary_rows(summary))["GPUs"]


def build(argv: list[str], environ: dict[str, str] | None = None, nproc: int = 8) -> None:
    """build_run for a one-node command line, as main does."""
    cmd = parse_command_line(argv, environ or {})
    bundle = presets.resolve(cmd.fake.model or "llama3-8b", cmd.fake.gpu, cmd.fake.cluster)
    build_run(cmd, bundle, nnodes=1, nproc_per_node=nproc, model_given=cmd.fake.model is not None)


class TestStartStep:
    """--fake-start-step past the run's end: one line naming the model the user asked for."""

    def test_preset_model(self) -> None:
        """--fake-model llama3-70b: its display name and its preset's step count."""
        model = presets.load_model("llama3-70b")
        with pytest.raises(JobConfigError) as info:
            build(["--fake-model", "llama3-70b", "--fake-start-step", str(model.total_steps), "train.py"])
        message = str(info.value)
        assert message.startswith("argument --fake-start-step: ")
        assert model.display_name in message and f"{model.total_steps:,} steps" in message

    def test_model_of_the_scripts_arguments(self) -> None:
        """An HF script's --model_name_or_path names Llama 3 70B and --max_steps 50: that run, no default."""
        hf = ["run_clm.py", "--model_name_or_path", "meta-llama/Meta-Llama-3-70B", "--max_steps", "50"]
        with pytest.raises(JobConfigError) as info:
            build(hf, {"FAKERUN_START_STEP": "60"})
        message = str(info.value)
        assert presets.load_model("llama3-70b").display_name in message
        assert message.endswith("trains 50 steps here (from FAKERUN_START_STEP)")

    def test_default_model_ignores_the_start_step(self) -> None:
        """The model simulated by default is the same with and without a start step inside its run."""
        cmd = parse_command_line(["train.py"], {})
        bundle = presets.resolve("llama3-8b")
        plain, _ = build_run(cmd, bundle, nnodes=1, nproc_per_node=1, model_given=False)
        resumed_cmd = parse_command_line(
            ["--fake-start-step", str(plain.job.total_steps - 1), "train.py"], {}
        )
        resumed, _ = build_run(resumed_cmd, bundle, nnodes=1, nproc_per_node=1, model_given=False)
        assert resumed.job.model.name == plain.job.model.name
        assert resumed.job.start_step == plain.job.total_steps - 1


class TestPresetListing:
    """--fake-list-presets: every preset under its kind, with its key figures."""

    def test_every_preset_under_its_option(self) -> None:
        """A heading naming the selecting option per kind, then one line per shipped preset."""
        lines = listing.preset_lines()
        headings = [i for i, line in enumerate(lines) if not line.startswith(" ")]
        options = ["--fake-model", "--fake-gpu", "--fake-cluster", "--fake-storage"]
        assert [lines[i] for i in headings] == [
            f"{kind} ({option}):" for kind, option in zip(presets.KINDS, options, strict=True)
        ]
        for (start, end), kind in zip(
            zip(headings, [*headings[1:], len(lines)], strict=True), presets.KINDS, strict=True
        ):
            names = [line.split()[0] for line in lines[start + 1 : end]]
            assert names == presets.list_presets()[kind]

    def test_key_figures(self) -> None:
        """Models' parameters (in billions), GPUs' memory in GiB, clusters' GPUs and NICs."""
        rows = {line.split()[0]: line for line in listing.preset_lines() if line.startswith("  ")}
        model = presets.load_model("llama3-70b")
        assert f"{model.params / 1e9:.2f}B params" in rows["llama3-70b"]
        mixtral = presets.load_model("mixtral-8x7b")
        assert f"({mixtral.active_params / 1e9:.2f}B active)" in rows["mixtral-8x7b"]
        assert f" {presets.load_gpu('a100-80gb').memory_mib // 1024} GiB " in rows["a100-80gb"]
        cluster = presets.load_cluster("dgx-h100")
        assert f"{cluster.gpus_per_node} x {cluster.gpu.name} " in rows["dgx-h100"]
        assert f"{cluster.nics_per_node} x {cluster.nic_gbps:g} Gb/s" in rows["dgx-h100"]
        assert "node-local" in rows["local-nvme"] and "shared" in rows["lustre"]

    @pytest.mark.parametrize("storage", presets.list_presets()["storage"])
    def test_fake_storage_selects_the_job_storage(self, storage: str) -> None:
        """--fake-storage NAME is the job's storage, whatever the cluster's default."""
        from fakerun.main import _load_presets

        cmd = parse_command_line(["--fake-storage", storage, "train.py"], {})
        assert _load_presets(cmd).storage == presets.load_storage(storage)

    def test_fake_storage_unknown(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown storage name: one line listing the shipped ones, exit code 2."""
        code, out, err = run_main(["--fake-storage", "tape", "--fake-list-presets"], capsys)
        assert code == 2 and out == ""
        names = ", ".join(presets.list_presets()["storage"])
        assert err == f"fakerun: error: unknown storage 'tape' (choose from: {names})\n"


def test_version_and_listing_skip_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The listings publish no job state: nothing appears in the state directory."""
    monkeypatch.setenv("FAKERUN_STATE_DIR", str(tmp_path))
    for flag in ("--fake-version", "--fake-list-presets"):
        assert main(["fakerun", flag]) == 0
    assert os.listdir(tmp_path) == []
