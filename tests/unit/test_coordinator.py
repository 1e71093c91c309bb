"""The coordinator: barrier semantics, pacing, collective timing, metric records, loops, bad messages."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest

from fakerun import presets
from fakerun.coordinator import Coordinator, ProtocolError
from fakerun.launcher.procs import encode_message
from fakerun.sim import checkpoint, compute
from fakerun.sim.collectives import bucket_allreduces, comm_seconds
from fakerun.sim.job import JobSpec, make_job
from fakerun.sim.run import RunPlan, make_run
from fakerun.sim.step import step_numbers

TEL = [97, 40, 70, 650, 1980, 60000, "train"]


@functools.cache
def job(nnodes: int = 2, npn: int = 4, seed: int = 0) -> JobSpec:
    b = presets.resolve("llama3.2-1b")
    return make_job(b.model, b.cluster, b.storage, nnodes=nnodes, nproc_per_node=npn, seed=seed)


def coordinator(run: RunPlan, speed: float = 1.0) -> Coordinator:
    return Coordinator(run, ranks=range(run.job.world_size), speed=speed, run_id="r1", attempt=0)


def start(c: Coordinator, now: float = 100.0) -> None:
    for r in range(c.job.world_size):
        c.on_message(r, {"k": "ready", "pid": 1000 + r, "tel": [*TEL[:-1], "idle"]}, now, now + 1e9)


def report_all(c: Coordinator, step: int, now: float) -> tuple[list[Any], list[dict[str, Any]]]:
    replies: list[Any] = []
    records: list[dict[str, Any]] = []
    for r in range(c.job.world_size):
        n = step_numbers(c.job, r, step)
        out = c.on_message(r, {"k": "step", "s": step, "c": n.compute_s, "tel": TEL}, now, now + 1e9)
        replies += out.replies
        records += out.records
    return replies, records


class TestBarrier:
    """Nobody moves on before everyone has reported."""

    def test_go_only_when_all_ready(self) -> None:
        """The start answer goes to every rank at once, after the last ready."""
        c = coordinator(make_run(job(), max_steps=5))
        outs = [c.on_message(r, {"k": "ready", "pid": 1}, 5.0, 0.0) for r in range(8)]
        assert all(not o.replies for o in outs[:-1])
        assert sorted(r for r, _ in outs[-1].replies) == list(range(8))
        assert {m["k"] for _, m in outs[-1].replies} == {"go"}
        assert outs[-1].records[0]["event"] == "run"

    def test_a_run_of_no_step_ends_at_go(self) -> None:
        """nanoGPT's eval_only: no step round follows the go; the next run of a loop gathers its own ready."""
        c = coordinator(make_run(job(), eval_only=True))
        start(c)
        assert c.loops == 1 and not c.started and c.run.steps == 0
        outs = [c.on_message(r, {"k": "ready", "pid": 1}, 5.0, 0.0) for r in range(8)]
        assert {m["k"] for _, m in outs[-1].replies} == {"go"}

    def test_step_answer_waits_for_slowest(self) -> None:
        """The step is answered only by the last report, to every rank, with the same release time."""
        c = coordinator(make_run(job(), max_steps=5))
        start(c)
        replies, _ = report_all(c, 1, 101.0)
        assert sorted(r for r, _ in replies) == list(range(8))
        assert len({m["rel"] for _, m in replies}) == 1

    def test_wrong_step_is_a_protocol_error(self) -> None:
        """A report for another step than the one gathered is refused."""
        c = coordinator(make_run(job(), max_steps=5))
        start(c)
        with pytest.raises(ProtocolError):
            c.on_message(0, {"k": "step", "s": 7, "c": 1.0}, 0.0, 0.0)

    @pytest.mark.parametrize(
        "msg",
        [
            {"k": "nope"},
            {"k": "step", "s": 1, "c": "fast"},
            {"k": "step", "s": 1, "c": math.inf},
            {"k": "phase", "tel": [1, 2]},
            {"k": "ready", "pid": None},
        ],
    )
    def test_malformed_messages_raise(self, msg: dict[str, Any]) -> None:
        """Malformed messages raise ProtocolError, never something else."""
        c = coordinator(make_run(job(), max_steps=5))
        with pytest.raises(ProtocolError):
            c.on_message(0, msg, 0.0, 0.0)

    def test_unknown_rank_refused(self) -> None:
        """A rank outside the attempt is refused."""
        c = coordinator(make_run(job(), max_steps=5))
        with pytest.raises(ProtocolError):
            c.on_message(99, {"k": "phase"}, 0.0, 0.0)


class TestPacing:
    """The release time follows the simulated step time, scaled by the speed."""

    @pytest.mark.parametrize("speed", [1.0, 10.0, 250.0])
    def test_release_is_start_plus_step_time(self, speed: float) -> None:
        """Step 2 ends (step 2 time)/speed after step 1's release plus its pauses."""
        run = make_run(job(), max_steps=5, eval_interval=0, save_interval=0)
        c = coordinator(run, speed)
        start(c, now=0.0)
        (_, first), *_ = report_all(c, 1, 0.0)[0]
        expected_1 = (
            step_numbers(run.job, 0, 1).step_time_s + compute.first_step_overhead_s(run.job)
        ) / speed
        assert first["rel"] == pytest.approx(expected_1)
        (_, second), *_ = report_all(c, 2, first["rel"])[0]
        assert second["rel"] - first["rel"] == pytest.approx(step_numbers(run.job, 0, 2).step_time_s / speed)

    def test_late_reports_release_at_once(self) -> None:
        """When the ranks are late (overloaded machine), the release is now, never in the past."""
        c = coordinator(make_run(job(), max_steps=5, eval_interval=0, save_interval=0))
        start(c, now=0.0)
        report_all(c, 1, 0.0)
        (_, reply), *_ = report_all(c, 2, 1e6)[0]
        assert reply["rel"] == 1e6

    def test_first_step_starts_when_the_slowest_rank_reports(self) -> None:
        """Ranks end their start-up at their own times: step 1 runs from the last report, not from the go."""
        run = make_run(job(), max_steps=5)
        c = coordinator(run)
        start(c, now=0.0)
        late = 37.5
        (_, reply), *_ = report_all(c, 1, late)[0]
        wall = step_numbers(run.job, 0, 1).step_time_s + compute.first_step_overhead_s(run.job)
        assert reply["rel"] == pytest.approx(late + wall)

    def test_collective_time_from_the_model(self) -> None:
        """The answer carries the step's collective time and the bucket AllReduce total from sim/."""
        run = make_run(job(), max_steps=5)
        c = coordinator(run)
        start(c)
        (_, reply), *_ = report_all(c, 1, 0.0)[0]
        assert reply["comm"] == comm_seconds(run.job, 1)
        assert reply["ar_ms"] == pytest.approx(1000 * sum(b.seconds for b in bucket_allreduces(run.job, 1)))


class TestStopAndRecords:
    """Where the run ends and what the metrics file gets."""

    def test_stop_at_last_step_with_final_eval_and_checkpoint(self) -> None:
        """The last step says stop; its records include the final evaluation and checkpoint."""
        run = make_run(job(), max_steps=3, eval_interval=0, save_interval=0)
        c = coordinator(run)
        start(c)
        stops, events = [], []
        for s in (1, 2, 3):
            replies, records = report_all(c, s, 0.0)
            stops.append(replies[0][1]["stop"])
            events += [r["event"] for r in records]
        assert stops == [False, False, True]
        assert events == ["step", "step", "step", "eval", "checkpoint"]

    def test_max_time_stops_on_simulated_time(self) -> None:
        """--fake-max-time counts simulated seconds: a budget of 2.5 steps stops after step 3."""
        j = job()
        t = compute.expected_step_time(j)
        run = make_run(j, max_time_s=2.5 * t, eval_interval=0, save_interval=0)
        c = coordinator(run)
        start(c)
        stops = [report_all(c, s, 0.0)[0][0][1]["stop"] for s in (1, 2, 3)]
        assert stops == [False, False, True]

    def test_step_record_matches_the_physics(self) -> None:
        """A step record's tokens, loss and MFU are rank 0's step numbers; memory is the largest report."""
        run = make_run(job(), max_steps=3)
        c = coordinator(run)
        start(c)
        _, records = report_all(c, 1, 0.0)
        rec = next(r for r in records if r["event"] == "step")
        n = step_numbers(run.job, 0, 1)
        assert rec["tokens"] == run.job.tokens_per_step
        assert rec["loss"] == pytest.approx(n.loss, rel=1e-6)
        assert rec["mfu"] == pytest.approx(n.mfu, rel=1e-5)
        assert rec["mem_gib"] == pytest.approx(TEL[5] / 1024, rel=1e-3)

    def test_checkpoint_record_sizes(self) -> None:
        """Periodic checkpoints are recorded with the model's checkpoint size."""
        run = make_run(job(), max_steps=10, eval_interval=0, save_interval=2)
        c = coordinator(run)
        start(c)
        _, records = report_all(c, 1, 0.0)
        _, records = report_all(c, 2, 0.0)
        ck = [r for r in records if r["event"] == "checkpoint"]
        assert len(ck) == 1 and ck[0]["bytes"] == checkpoint.checkpoint_bytes(run.job.model)

    def test_grid_goes_to_rank_zero_only(self) -> None:
        """The first step's answer to rank 0 carries one grid row per rank; other ranks get none."""
        c = coordinator(make_run(job(), max_steps=3))
        start(c)
        replies, _ = report_all(c, 1, 0.0)
        by_rank = dict(replies)
        assert len(by_rank[0]["grid"]) == 8
        assert all("grid" not in by_rank[r] for r in range(1, 8))

    def test_loop_restarts_barrier_with_next_seed(self) -> None:
        """After the last step, the next ready round starts the next run at step 1 with seed + 1."""
        run = make_run(job(), max_steps=1)
        c = coordinator(run)
        start(c)
        report_all(c, 1, 0.0)
        assert c.job.seed == run.job.seed + 1 and c.step == 1
        start(c)
        replies, _ = report_all(c, 1, 0.0)
        assert replies and replies[0][1]["s"] == 1


class TestState:
    """The job-state document other tools read."""

    def test_every_gpu_listed_with_pid_and_telemetry(self) -> None:
        """Each rank appears once with its pid, host and last telemetry."""
        c = coordinator(make_run(job(), max_steps=3))
        start(c)
        report_all(c, 1, 0.0)
        hosts = ("node-a", "node-b")
        state = c.state(hosts, 4, 42, 0.0)
        assert [g["rank"] for g in state["gpus"]] == list(range(8))
        assert {g["host"] for g in state["gpus"]} == set(hosts)
        assert state["gpus"][5]["pid"] == 1005 and state["gpus"][5]["util"] == TEL[0]
        assert state["step"] == 1

    def test_gone_rank_shows_dead(self) -> None:
        """A closed channel marks the rank's GPU dead."""
        c = coordinator(make_run(job(), max_steps=3))
        c.on_gone(3)
        assert c.state((), 4, 1, 0.0)["gpus"][3]["phase"] == "dead"


class TestStepMessageBytes:
    """A regression guard on what a step costs the wire, which every rank pays each step: the answer is
    one object shared by every rank but rank 0 (whose answer may carry the grid), so the hub encodes it
    once, and its encoding stays within a budget."""

    # Bytes of one step answer as the hub sends it (newline included): today's carry the release time, the
    # communication figures, the stop flags and the next step's compute timing, about 200 bytes.
    BUDGET = 256

    def test_one_shared_answer_within_budget(self) -> None:
        c = coordinator(make_run(job(8, 8), max_steps=12))
        start(c)
        for step in range(1, 13):
            replies, _ = report_all(c, step, 100.0 + step)
            others = [m for r, m in replies if r != 0]
            assert len(others) == 63 and len({id(m) for m in others}) == 1
            assert len(encode_message(others[0])) <= self.BUDGET
