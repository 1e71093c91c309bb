"""Infeasible jobs start and run out of memory like real ones; --fake-check; a fresh seed per run."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakerun import presets
from fakerun.cli import parse_command_line
from fakerun.jobconfig import build_run, check_report, draw_seed
from fakerun.sim import memory
from fakerun.sim.job import make_job


def run_of(argv: list[str], nproc: int, fresh_seed: int | None = None) -> object:
    """The job build_run makes for a one-node command line, as main does."""
    cmd = parse_command_line([*argv, "train.py"], {})
    bundle = presets.resolve(cmd.fake.model or "llama3-8b", cmd.fake.gpu, cmd.fake.cluster)
    run, _ = build_run(cmd, bundle, nnodes=1, nproc_per_node=nproc, model_given=True, fresh_seed=fresh_seed)
    return run.job


class TestOutOfMemory:
    def test_an_infeasible_job_starts_marked(self) -> None:
        """llama3-8b on one H100 is built (not refused) and runs out of memory at its first step."""
        job = run_of(["--fake-model", "llama3-8b"], 1)
        assert getattr(job, "oom_at_step", None) == 1

    def test_a_feasible_job_is_not_marked(self) -> None:
        """llama3.2-1b on 8 H100s fits: no OOM step."""
        job = run_of(["--fake-model", "llama3.2-1b"], 8)
        assert getattr(job, "oom_at_step", 0) is None

    def test_make_job_still_refuses_by_default(self) -> None:
        """Without allow_oom, make_job keeps raising for the callers that probe what fits."""
        b = presets.resolve("llama3-8b")
        with pytest.raises(ValueError, match="would not fit"):
            make_job(b.model, b.cluster, b.storage, nnodes=1, nproc_per_node=1)

    @pytest.mark.parametrize(("model", "nproc"), [("llama3-8b", 1), ("llama3-70b", 8), ("llama3-405b", 8)])
    def test_oom_figures_add_up(self, model: str, nproc: int) -> None:
        """torch's message: the device nearly full, free + in use = capacity, and the request exceeds free."""
        b = presets.resolve(model)
        job = make_job(b.model, b.cluster, b.storage, nnodes=1, nproc_per_node=nproc, allow_oom=True)
        f = memory.oom_figures(job)
        assert f.capacity == pytest.approx(b.gpu.memory_mib * 2**20)
        assert f.free + f.in_use == pytest.approx(f.capacity)
        assert 0 < f.free < 0.02 * f.capacity
        assert f.tried_to_allocate > f.free
        assert f.allocated + f.reserved_unallocated <= f.in_use
        assert f.allocated > f.reserved_unallocated > 0


class TestCheck:
    @pytest.mark.parametrize(
        ("model", "nproc", "code"), [("llama3-8b", 1, 1), ("llama3.2-1b", 8, 0), ("llama3-405b", 2, 1)]
    )
    def test_verdict(self, model: str, nproc: int, code: int) -> None:
        """Exit 0 when the fullest GPU's need is under its capacity, 1 otherwise, with both in GiB."""
        job = run_of(["--fake-model", model], nproc)
        got, line = check_report(job)  # type: ignore[arg-type]
        assert got == code
        assert ("does not fit" in line) == (code == 1)
        assert "GiB per GPU needed" in line and "79.6 GiB" in line

    def test_option_parsed(self) -> None:
        """--fake-check is a flag of the --fake-* table (FAKERUN_CHECK too)."""
        assert parse_command_line(["--fake-check", "train.py"], {}).fake.check
        assert parse_command_line(["train.py"], {"FAKERUN_CHECK": "1"}).fake.check


class TestSeed:
    def test_fresh_seeds_differ(self) -> None:
        """Without --fake-seed each run draws its own seed (os.urandom)."""
        assert len({draw_seed() for _ in range(8)}) == 8

    def test_a_shared_key_gives_one_seed(self) -> None:
        """Agents of one job on several machines derive the same seed from what they share."""
        assert draw_seed("job-1|host:29500") == draw_seed("job-1|host:29500") != draw_seed("job-2|host:29500")

    @settings(max_examples=10, deadline=None)
    @given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
    def test_fake_seed_wins_and_replays(self, given_seed: int, fresh: int) -> None:
        """--fake-seed N gives seed N whatever the launcher drew; without it the drawn seed is used."""
        job = run_of(["--fake-model", "llama3.2-1b", "--fake-seed", str(given_seed)], 8, fresh_seed=fresh)
        assert getattr(job, "seed", None) == given_seed
        job = run_of(["--fake-model", "llama3.2-1b"], 8, fresh_seed=fresh)
        assert getattr(job, "seed", None) == fresh
