"""The run plan: steps covered, round cadences, pauses and start-up times."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakerun import presets
from fakerun.sim import checkpoint, compute
from fakerun.sim import run as run_mod
from fakerun.sim.job import JobSpec, make_job
from fakerun.sim.run import (
    GRID_EVERY_S,
    GRID_MIN_LOG_LINES,
    IMPORT_S,
    NICE_INTERVALS,
    eval_seconds,
    grid_interval,
    looped,
    make_run,
    nice_interval,
    pick_default_model,
    resumed,
    startup_times,
)


@functools.cache
def job(model: str = "llama3-8b", nnodes: int = 8, start_step: int = 0) -> JobSpec:
    b = presets.resolve(model)
    return make_job(b.model, b.cluster, b.storage, nnodes=nnodes, nproc_per_node=8, start_step=start_step)


class TestCadence:
    """Intervals are round numbers close to their wall-time targets."""

    @settings(max_examples=200, deadline=None)
    @given(st.floats(0.5, 3600.0), st.floats(0.01, 100.0))
    def test_nice_interval_is_round_and_close(self, target: float, step_s: float) -> None:
        """The interval is one of the round numbers and within a factor 2.5 of the target (unless clamped)."""
        n = nice_interval(target, step_s)
        assert n in NICE_INTERVALS
        want = target / step_s
        if NICE_INTERVALS[0] <= want <= NICE_INTERVALS[-1]:
            assert want / 2.5 <= n <= want * 2.5

    @settings(max_examples=200, deadline=None)
    @given(st.floats(0.01, 600.0), st.sampled_from(NICE_INTERVALS[:12]))
    def test_grid_on_a_time_cadence_never_every_metric_line(self, step_s: float, log_interval: int) -> None:
        """The grid comes after a metric line, with at least GRID_MIN_LOG_LINES of them between two grids,
        a round number of steps within a factor 2.5 of GRID_EVERY_S when that leaves room for them."""
        n = grid_interval(step_s, log_interval)
        assert n % log_interval == 0 and n >= GRID_MIN_LOG_LINES * log_interval
        want = GRID_EVERY_S / step_s
        if want >= 2.5 * GRID_MIN_LOG_LINES * log_interval and want <= NICE_INTERVALS[-1] / 2.5:
            assert want / 2.5 <= n <= want * 2.5

    def test_grid_of_slow_steps(self) -> None:
        """A minute per step: a metric line each step, the grid every 5 (not every step, as ~30 s gave)."""
        assert grid_interval(60.0, 1) == 5
        assert grid_interval(1.0, 7) == 35  # a script's unround log interval: its multiples

    def test_default_cadences_follow_step_time(self) -> None:
        """Slower steps mean fewer steps between metric lines and saves."""
        fast, slow = make_run(job("llama3.2-1b")), make_run(job("llama3-70b"))
        assert fast.log_interval >= slow.log_interval
        assert fast.save_interval >= slow.save_interval
        assert fast.eval_interval < fast.save_interval or fast.eval_interval == fast.save_interval


class TestSteps:
    """Which steps a run covers."""

    @pytest.mark.parametrize("start,max_steps", [(0, 30), (1000, 5), (0, None)])
    def test_first_and_last(self, start: int, max_steps: int | None) -> None:
        """A run goes from start+1 to start+max_steps, or to the job's total."""
        run = make_run(job(start_step=start), max_steps=max_steps)
        assert run.first_step == start + 1
        total = job().total_steps
        assert run.last_step == (total if max_steps is None else start + max_steps)

    def test_nothing_left_to_run(self) -> None:
        """Resuming at the last step leaves nothing to run: a one-line error."""
        j = job()
        import dataclasses

        with pytest.raises(ValueError, match="nothing to run"):
            make_run(dataclasses.replace(j, start_step=j.total_steps))

    def test_final_pauses_evaluate_then_save(self) -> None:
        """The end of a run evaluates, then saves, with the storage-derived save time."""
        run = make_run(job(), max_steps=3)
        pauses = run.pauses_after(3, final=True)
        assert [p for p, _ in pauses] == ["eval", "checkpoint"]
        assert pauses[1][1] == checkpoint.save_seconds(run.job, 3)

    def test_periodic_pauses(self) -> None:
        """Periodic evaluation and save happen on their multiples only."""
        run = make_run(job(), max_steps=100, eval_interval=10, save_interval=20)
        assert [p for p, _ in run.pauses_after(20)] == ["eval", "checkpoint"]
        assert [p for p, _ in run.pauses_after(10)] == ["eval"]
        assert run.pauses_after(11) == ()

    def test_epochs(self) -> None:
        """Steps map to 1-based epochs of equal length."""
        run = make_run(job(), epochs=3)
        spe = run.steps_per_epoch
        assert run.epoch_of(1) == 1 and run.epoch_of(spe) == 1 and run.epoch_of(spe + 1) == 2
        assert run.epoch_of(run.job.total_steps) == 3

    def test_loop_changes_seed_and_restarts(self) -> None:
        """The next run of a loop starts at step 1 with the next seed and keeps max steps."""
        run = make_run(job(start_step=500), max_steps=7)
        nxt = looped(run, 2)
        assert (nxt.first_step, nxt.last_step, nxt.job.seed) == (1, 7, run.job.seed + 2)


class TestDurations:
    """Evaluation and start-up take physically sensible time."""

    def test_eval_is_a_third_of_training_per_token(self) -> None:
        """Forward-only evaluation of one global batch costs about a third of a training step."""
        j = job()
        ratio = eval_seconds(j, 1, 10) / compute.expected_step_time(j)
        assert 0.25 < ratio < 0.45

    def test_startup_resume_loads_checkpoint(self) -> None:
        """Resuming adds the checkpoint read time; a fresh start does not."""
        assert startup_times(job(), 0, resume=False).load_s == 0
        assert startup_times(job(), 0, resume=True).load_s == checkpoint.load_seconds(job())

    def test_default_model_is_largest_fast_enough(self) -> None:
        """The ladder's first model under the step-time bound wins; else the fastest."""
        a, b, c = (presets.load_model(n) for n in ("llama3-70b", "llama3-8b", "llama3.2-1b"))
        assert pick_default_model([(a, 30.0), (b, 2.0), (c, 0.3)]) == b
        assert pick_default_model([(a, 30.0), (b, 9.0)]) == b


class TestResume:
    """A restarted attempt resumes after the newest checkpoint."""

    def test_resumed_run_starts_after_the_save(self) -> None:
        """Saved after step 40 of a 1-100 run: the next attempt runs 41-100 from start step 40."""
        run = make_run(job(), max_steps=100)
        again = resumed(run, 40)
        assert (again.first_step, again.last_step, again.job.start_step) == (41, 100, 40)

    def test_nothing_saved_starts_over(self) -> None:
        """Without a checkpoint the attempt starts from the run's own start."""
        run = make_run(job(start_step=500), max_steps=10)
        assert resumed(run, 0) == run

    def test_save_at_the_end_reruns_the_last_step(self) -> None:
        """A failure after the final save still leaves one step to run."""
        run = make_run(job(), max_steps=10)
        assert resumed(run, 10).first_step == 10


class TestCostedCadence:
    """Default evaluation and checkpoint cadences keep their pauses a small share of the wall time."""

    @pytest.mark.parametrize(
        ("model", "nnodes"), [("llama3-70b", None), ("gpt3-175b", None), ("llama3-8b", 1), ("llama3.2-1b", 1)]
    )
    def test_pauses_are_a_few_percent(self, model: str, nnodes: int | None) -> None:
        """Evaluation and checkpointing each take <= 5% of the wall time at the default cadence."""
        b = presets.resolve(model)
        j = make_job(b.model, b.cluster, b.storage, nnodes=nnodes)
        r = run_mod.make_run(j)
        step_s = compute.expected_step_time(j)
        ev = run_mod.eval_seconds(j, r.eval_iters, 0)
        sv = checkpoint.save_seconds(j, 0)
        assert ev / (ev + r.eval_interval * step_s) <= 0.05
        assert sv / (sv + r.save_interval * step_s) <= 0.05

    def test_a_large_checkpoint_is_not_written_every_few_minutes(self) -> None:
        """988 GB of Llama 3 70B training state: an hour or more apart (BLOOM: 2.3 TB every ~3 h)."""
        b = presets.resolve("llama3-70b")
        j = make_job(b.model, b.cluster, b.storage)
        r = run_mod.make_run(j)
        assert r.save_interval * compute.expected_step_time(j) >= 3600

    def test_arguments_win(self) -> None:
        """A cadence the script sets is kept, however costly."""
        b = presets.resolve("llama3-70b")
        j = make_job(b.model, b.cluster, b.storage)
        r = run_mod.make_run(j, eval_interval=5, save_interval=10)
        assert (r.eval_interval, r.save_interval) == (5, 10)


def test_start_up_durations_are_never_shared() -> None:
    """No two ranks of a job take the same time to import torch (their first lines would share a stamp)."""
    big = job(nnodes=64)
    imports = [startup_times(big, rank, resume=False).import_s for rank in range(big.world_size)]
    assert len({round(x, 6) for x in imports}) == len(imports)
    assert all(IMPORT_S[0] <= x <= IMPORT_S[1] for x in imports)


class TestTitanEnding:
    """torchtitan's train(): each step saves (interval or training.steps) and then validates (step 1 and the
    interval's multiples, only with validation.enable); nothing runs after the loop."""

    def titan(
        self, eval_interval: int, *, saves: bool = True, max_steps: int | None = None
    ) -> run_mod.RunPlan:
        b = presets.resolve("llama3.2-1b")
        j = make_job(b.model, b.cluster, b.storage, nnodes=1, nproc_per_node=8, total_steps=20)
        return make_run(
            j,
            ending=run_mod.ENDING_TITAN,
            eval_interval=eval_interval,
            save_interval=10,
            saves=saves,
            max_steps=max_steps,
        )

    def test_validation_off_adds_nothing_after_the_last_step(self) -> None:
        """validation.enable = false: the last step saves (checkpoint.enable) and that is all."""
        run = self.titan(0)
        assert [phase for phase, _ in run.pauses_after(20, final=True)] == ["checkpoint"]
        assert self.titan(0, saves=False).pauses_after(20, final=True) == ()
        assert run.pauses_after(1) == () and run.end_pauses(20) == ()

    def test_save_then_validate_at_step_one_and_the_interval(self) -> None:
        """Validator.should_validate: step == 1 or step % freq == 0, after CheckpointManager.save."""
        run = self.titan(5)
        assert [phase for phase, _ in run.pauses_after(1)] == ["eval"]
        assert [phase for phase, _ in run.pauses_after(10)] == ["checkpoint", "eval"]
        assert run.pauses_after(7) == ()
        assert [phase for phase, _ in run.pauses_after(20, final=True)] == ["checkpoint", "eval"]

    def test_a_run_cut_short_saves_only_at_the_interval(self) -> None:
        """--fake-max-steps 7 stops before training.steps: torchtitan's last-step save never comes."""
        assert self.titan(0, max_steps=7).pauses_after(7, final=True) == ()
        assert [p for p, _ in self.titan(0, max_steps=10).pauses_after(10, final=True)] == ["checkpoint"]
