"""The simulated training job end to end: every rank's events, the metrics file, the bar, the grid, seeds."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fakerun import presets
from tests.conftest import Result, Runner, fakerun_exe

JOB_2X4 = ["--nnodes", "2", "--nproc-per-node", "4", "--fake-max-steps", "30", "--fake-speed", "50"]
RUN_KEYS = {
    "model",
    "params",
    "n_gpus",
    "gpu",
    "peak_tflops",
    "seq_len",
    "global_batch_tokens",
    "vocab_size",
    "law",
}
STEP_KEYS = {
    "step",
    "tokens",
    "loss",
    "lr",
    "grad_norm",
    "step_time_s",
    "tokens_per_s",
    "tflops_per_gpu",
    "mfu",
    "allreduce_ms",
    "mem_gib",
    "time",
}
# Wall-clock fields: the only ones allowed to differ between two runs with the same seed.
CLOCK_FIELDS = {"time", "timestamp", "pid", "run_id", "seconds"}


def json_events(text: str) -> list[dict[str, Any]]:
    """The structlog JSON events of an output (lines not starting with `{` skipped)."""
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def metrics(path: Path) -> list[dict[str, Any]]:
    """The complete records of a --fake-metrics file (a line still being written is left out)."""
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]]


def strip_clock(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records without their wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in CLOCK_FIELDS} for r in records]


@pytest.fixture(scope="module")
def json_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, list[dict[str, Any]]]:
    """The issue's acceptance command, run once for the tests of this module."""
    tmp = tmp_path_factory.mktemp("sim")
    runner = Runner(uuid.uuid4().hex, tmp)
    result = runner.run(
        [*JOB_2X4, "--fake-log-format", "json", "--fake-metrics", "m.jsonl", "train.py"], timeout=120
    )
    return result, metrics(tmp / "m.jsonl")


class TestAcceptance:
    """`fakerun --nnodes 2 --nproc-per-node 4 --fake-max-steps 30 --fake-speed 50 --fake-log-format json`."""

    def test_exit_zero_and_every_rank_speaks(self, json_run: tuple[Result, list[dict[str, Any]]]) -> None:
        """Exit 0; all 8 ranks log their start, first-step memory and end."""
        result, _ = json_run
        assert result.code == 0, result.stderr[-2000:]
        events = json_events(result.stdout)
        for name in (
            "worker started",
            "process group initialized",
            "memory after first step",
            "training finished",
        ):
            assert {e["rank"] for e in events if e["event"] == name} == set(range(8)), name

    def test_every_stdout_line_is_a_typed_json_event(
        self, json_run: tuple[Result, list[dict[str, Any]]]
    ) -> None:
        """`| jq .` never fails: every stdout line is one JSON object (no NaN), figures are numbers that agree
        with the metrics file, and the grid and the summary are events carrying their per-GPU and per-node
        data; no debug event at the default level."""
        result, recs = json_run

        def strict(constant: str) -> None:
            raise ValueError(f"not JSON: {constant}")

        lines = result.stdout.splitlines()
        events = [json.loads(line, parse_constant=strict) for line in lines]
        assert events and all(isinstance(e, dict) for e in events)
        assert all(e["level"] != "debug" for e in events)
        steps = {r["step"]: r for r in recs if r["event"] == "step"}
        trains = [e for e in events if e["event"] == "train"]
        assert trains
        for e in trains:
            assert isinstance(e["mfu"], float) and isinstance(e["lr"], float)
            assert e["lr"] == pytest.approx(steps[e["step"]]["lr"])
            if e["step"] > 1:  # the printed step 1 includes its warm-up, the metrics record does not
                assert e["mfu"] == pytest.approx(steps[e["step"]]["mfu"], abs=1e-4)
        saved = [e for e in events if e["event"] == "checkpoint saved"]
        assert saved and all(isinstance(e["size_bytes"], int) and e["size_bytes"] > 0 for e in saved)

        grids = [e for e in events if e["event"] == "gpu grid"]
        assert grids
        for grid in grids:
            step = grid["step"]
            gpus = [e for e in events if e["event"] == "gpu" and e["step"] == step]
            nodes = [e for e in events if e["event"] == "gpu node" and e["step"] == step]
            assert sorted(g["gpu_rank"] for g in gpus) == list(range(8))
            assert grid["gpus"] == 8 and grid["nodes"] == 2 and len(nodes) == 2
            assert grid["power_w"] == sum(g["power_w"] for g in gpus)
            assert sum(grid[level] for level in ("ok", "busy", "warn", "crit", "dead")) == 8
            for node in nodes:
                mine = [g for g in gpus if g["node"] == node["node"]]
                assert len(mine) == node["gpus"] == 4 and {g["host"] for g in mine} == {node["host"]}
                assert node["power_w"] == sum(g["power_w"] for g in mine)
                assert node["max_temp_c"] == max(g["temp_c"] for g in mine)
                assert node["max_mem_used_bytes"] == max(g["mem_used_bytes"] for g in mine)
                assert node["util_pct"] == round(sum(g["util_pct"] for g in mine) / len(mine))
            for g in gpus:
                # Bytes of whole MiB, as the GPU reports its memory.
                assert g["mem_used_bytes"] % 2**20 == 0 and 0 < g["mem_used_bytes"] < g["mem_total_bytes"]
                assert isinstance(g["util_pct"], int) and isinstance(g["temp_c"], int)
        (summary,) = [e for e in events if e["event"] == "training summary"]
        run = recs[0]
        assert summary["gpus"] == run["n_gpus"] == 8 and summary["nnodes"] == 2
        assert summary["params"] == run["params"] and summary["last_step"] == 30
        assert summary["tokens"] == 30 * run["global_batch_tokens"]
        assert isinstance(summary["mfu"], float) and 0 < summary["mfu"] < 1

    def test_json_events_carry_required_keys(self, json_run: tuple[Result, list[dict[str, Any]]]) -> None:
        """Every JSON line has timestamp, level, event and rank."""
        events = json_events(json_run[0].stdout)
        assert events
        for e in events:
            assert {"timestamp", "level", "event", "rank"} <= e.keys()

    def test_metrics_file_is_consistent(self, json_run: tuple[Result, list[dict[str, Any]]]) -> None:
        """A run header, steps 1-30 with the physics' identities, then the final eval and checkpoint."""
        _, recs = json_run
        run = recs[0]
        assert run["event"] == "run" and run.keys() >= RUN_KEYS
        assert run["n_gpus"] == 8
        model = presets.load_model(run["model"])
        assert run["params"] == model.params and run["vocab_size"] == model.vocab
        assert set(run["law"]) >= {"E", "A", "B", "alpha", "beta"}
        steps = [r for r in recs if r["event"] == "step"]
        assert [s["step"] for s in steps] == list(range(1, 31))
        gpu = presets.load_gpu(run["gpu"])
        for s in steps:
            assert s.keys() >= STEP_KEYS
            assert s["tokens"] == s["step"] * run["global_batch_tokens"]
            mfu = 6 * model.active_params * s["tokens_per_s"] / (run["n_gpus"] * gpu.peak_flops)
            assert s["mfu"] == pytest.approx(mfu, rel=0.02)
            assert 0.25 <= s["mfu"] <= 0.60
            assert s["tokens_per_s"] == pytest.approx(run["global_batch_tokens"] / s["step_time_s"], rel=1e-4)
            assert 0 < s["mem_gib"] <= gpu.memory_mib / 1024
            assert math.isfinite(s["loss"]) and 0 < s["loss"] < 1.2 * math.log(model.vocab)
        times = [s["time"] for s in steps]
        assert times == sorted(times)
        tail = [r["event"] for r in recs if r["event"] in ("eval", "checkpoint")]
        assert tail[-2:] == ["eval", "checkpoint"]
        assert recs[-1]["step"] == 30

    def test_record_times_follow_the_printed_clock(
        self, json_run: tuple[Result, list[dict[str, Any]]]
    ) -> None:
        """A step record's time is the job clock's, the time rank 0's line for that step carries."""
        result, recs = json_run
        printed = {
            e["step"]: dt.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
            for e in json_events(result.stdout)
            if e["event"] == "train" and e["rank"] == 0
        }
        recorded = {r["step"]: r["time"] for r in recs if r["event"] == "step"}
        assert printed and printed.keys() <= recorded.keys()
        for step, at in printed.items():
            assert recorded[step] == pytest.approx(at, abs=0.05), step

    def test_same_seed_same_numbers(
        self, json_run: tuple[Result, list[dict[str, Any]]], runner: Runner
    ) -> None:
        """A run's recorded seed replays it, wall clock aside; a run given no seed draws another one."""
        _, first = json_run
        seed = str(first[0]["seed"])
        again = runner.run(
            [*JOB_2X4, "--fake-seed", seed, "--fake-metrics", "a.jsonl", "train.py"], timeout=120
        )
        assert again.code == 0
        assert strip_clock(metrics(runner.tmp / "a.jsonl")) == strip_clock(first)
        fresh = runner.run([*JOB_2X4, "--fake-metrics", "c.jsonl", "train.py"], timeout=120)
        assert fresh.code == 0
        assert metrics(runner.tmp / "c.jsonl")[0]["seed"] != first[0]["seed"]
        other = runner.run(
            [*JOB_2X4, "--fake-seed", "7", "--fake-metrics", "b.jsonl", "train.py"], timeout=120
        )
        assert other.code == 0
        assert strip_clock(metrics(runner.tmp / "b.jsonl")) != strip_clock(first)


@pytest.fixture(scope="module")
def console_run(tmp_path_factory: pytest.TempPathFactory) -> Result:
    """The 2x4 job in console format with NCCL_DEBUG=INFO; output kept as bytes, so `\\r` survives."""
    tmp = tmp_path_factory.mktemp("console")
    runner = Runner(uuid.uuid4().hex, tmp)
    proc = subprocess.run(
        [fakerun_exe(), *JOB_2X4, "train.py"],
        capture_output=True,
        timeout=120,
        env=runner.env(NCCL_DEBUG="INFO"),
        cwd=tmp,
    )
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode(), 0.0)


class TestConsoleOutput:
    """What a person watching sees (not a terminal here: the bar is tqdm into a file)."""

    def test_bar_refreshes_into_file_like_tqdm(self, console_run: Result) -> None:
        """Rank 0's stderr carries `\\r`-separated tqdm refreshes up to step 30 of the job's total, then
        close()'s display of the final state (tqdm shows it again before its newline)."""
        assert console_run.code == 0, console_run.stderr[-2000:]
        refreshes = re.findall(r"\r(Epoch 1/1:\s+\d+%\|[^|]*\| (\d+)/(\d+) \[[^\]]*\])", console_run.stderr)
        assert refreshes
        assert [int(n) for _, n, _ in refreshes] == [*range(1, 31), 30]
        assert "Loading dataset shards: 100%" in console_run.stderr

    def test_grid_shows_every_gpu(self, console_run: Result) -> None:
        """Each GPU grid counts 8 GPUs on 2 nodes and draws one cell per GPU on its node's line."""
        cluster = presets.load_cluster("dgx-h100")
        hosts = [presets.host_name(cluster, i) for i in range(2)]
        out = console_run.stdout.splitlines()
        headers = [i for i, line in enumerate(out) if line.startswith("GPUs @ step ")]
        assert headers
        for i in headers:
            assert " 8 GPUs on 2 nodes " in out[i]
            node_lines = out[i + 1 : i + 3]
            assert [line.split()[0] for line in node_lines] == hosts
            cells = sum(1 for line in node_lines for ch in line.split()[1] if ch in "▁▂▃▄▅▆▇█!Xx")
            assert cells == 8

    def test_nccl_init_complete_per_rank(self, console_run: Result) -> None:
        """With NCCL_DEBUG=INFO every rank prints NCCL 2.29's `Init COMPLETE` line once, and its version."""
        done = re.findall(
            r"NCCL INFO ncclCommInitRankConfig comm 0x[0-9a-f]+ rank (\d+) nranks 8 .* - Init COMPLETE",
            console_run.stdout,
        )
        assert sorted(int(r) for r in done) == list(range(8))
        assert len(re.findall(r" NCCL INFO NCCL version 2\.29\.\d+\+cuda", console_run.stdout)) == 8

    def test_summary_table(self, console_run: Result) -> None:
        """Rank 0 ends with a summary table naming the steps run."""
        assert "Training summary" in console_run.stdout
        assert re.search(r"\| steps\s+\| 1-30 of ", console_run.stdout)

    def test_no_nccl_lines_without_nccl_debug(self, runner: Runner) -> None:
        """Without NCCL_DEBUG, NCCL stays silent."""
        result = runner.run(
            ["--nproc-per-node", "2", "--fake-max-steps", "2", "--fake-speed", "100", "train.py"]
        )
        assert result.code == 0 and "NCCL INFO" not in result.stdout


class TestScenarios:
    """Resuming, hints, limits and loops."""

    def test_resume_from_start_step(self, runner: Runner) -> None:
        """--fake-start-step S resumes at S+1 with a checkpoint load line and step S's loss."""
        result = runner.run(
            [
                "--nproc-per-node",
                "2",
                "--fake-start-step",
                "1000",
                "--fake-max-steps",
                "3",
                "--fake-speed",
                "100",
                "--fake-log-format",
                "json",
                "--fake-metrics",
                "m.jsonl",
                "train.py",
            ]
        )
        assert result.code == 0, result.stderr[-2000:]
        events = json_events(result.stdout)
        resumed = [e for e in events if e["event"] == "resumed from checkpoint"]
        assert resumed and resumed[0]["step"] == 1000
        steps = [r["step"] for r in metrics(runner.tmp / "m.jsonl") if r["event"] == "step"]
        assert steps == [1001, 1002, 1003]

    def test_script_hints_pick_model_and_batch(self, runner: Runner) -> None:
        """HF-style script arguments select the preset and the batch."""
        result = runner.run(
            [
                "--nproc-per-node",
                "8",
                "--fake-max-steps",
                "2",
                "--fake-speed",
                "100",
                "--fake-metrics",
                "m.jsonl",
                "train.py",
                "--model_name_or_path",
                "meta-llama/Llama-3.2-1B",
                "--per_device_train_batch_size",
                "2",
                "--gradient_accumulation_steps",
                "4",
                "--unknown_flag",
                "x",
            ]
        )
        assert result.code == 0, result.stderr[-2000:]
        run = metrics(runner.tmp / "m.jsonl")[0]
        assert run["model"] == "llama3.2-1b"
        assert run["micro_batch"] == 2 and run["grad_accum"] == 4 and run["global_batch"] == 2 * 4 * 8

    def test_bad_hint_is_one_line(self, runner: Runner) -> None:
        """A bad value of a known script argument: one line, exit 2, nothing started."""
        result = runner.run(["--nproc-per-node", "2", "train.py", "--learning_rate", "fast"])
        assert result.code == 2
        assert result.stderr.count("\n") == 1 and "--learning_rate" in result.stderr

    def test_model_too_big_is_checked_not_refused(self, runner: Runner) -> None:
        """A model that cannot fit the GPUs is not refused (it starts and OOMs); --fake-check: exit 1."""
        result = runner.run(
            ["--nproc-per-node", "2", "--fake-model", "llama3-405b", "--fake-check", "train.py"]
        )
        assert result.code == 1
        assert result.stdout.count("\n") == 1 and "does not fit" in result.stdout

    def test_max_time_stops_cleanly(self, runner: Runner) -> None:
        """--fake-max-time ends the run with exit 0 after the simulated time."""
        result = runner.run(
            [
                "--nproc-per-node",
                "2",
                "--fake-max-time",
                "3m",
                "--fake-speed",
                "200",
                "--fake-metrics",
                "m.jsonl",
                "train.py",
            ]
        )
        assert result.code == 0, result.stderr[-2000:]
        steps = [r for r in metrics(runner.tmp / "m.jsonl") if r["event"] == "step"]
        total = sum(s["step_time_s"] for s in steps)
        assert total >= 180 and total - steps[-1]["step_time_s"] < 180

    def test_loop_runs_job_after_job(self, runner: Runner) -> None:
        """--fake-loop starts the next run (a new run record) when one ends; SIGTERM then ends it."""
        import signal
        import time

        proc = runner.start(
            [
                "--nproc-per-node",
                "2",
                "--fake-loop",
                "--fake-max-steps",
                "2",
                "--fake-speed",
                "500",
                "--fake-metrics",
                "m.jsonl",
                "train.py",
            ]
        )
        path = runner.tmp / "m.jsonl"
        deadline = time.monotonic() + 60
        runs = 0
        while time.monotonic() < deadline and runs < 2:
            time.sleep(0.2)
            runs = sum(1 for r in metrics(path) if r["event"] == "run") if path.exists() else 0
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert runs >= 2


class TestTrainerStyles:
    """Script arguments that look like a known trainer get that trainer's metric lines on the console."""

    FAST: ClassVar[list[str]] = ["--nproc-per-node", "4", "--fake-max-steps", "3", "--fake-speed", "200"]

    def test_megatron_lines_from_last_rank(self, runner: Runner) -> None:
        """Megatron arguments: iteration lines, per-rank memory reports, the validation block."""
        result = runner.run(
            [
                *self.FAST,
                "pretrain_gpt.py",
                "--num-layers",
                "16",
                "--hidden-size",
                "2048",
                "--num-attention-heads",
                "32",
                "--micro-batch-size",
                "1",
                "--global-batch-size",
                "32",
                "--train-iters",
                "500",
                "--log-interval",
                "1",
                "--tensor-model-parallel-size",
                "2",
            ]
        )
        assert result.code == 0, result.stderr[-2000:]
        iterations = re.findall(r"^ \[[\d\-: ]+\] iteration +(\d+)/ +500 \|", result.stdout, re.M)
        assert iterations[:1] == ["1"] and "3" in iterations
        # report_memory prints on the ranks of data-parallel rank 0: with TP 2 on 4 GPUs, ranks 0 and 1.
        memory = re.findall(r"^\[Rank (\d+)\] \(after 1 iterations\) memory \(MB\) \|", result.stdout, re.M)
        assert sorted(int(r) for r in memory) == [0, 1]
        assert " validation loss at iteration 3 on validation set | lm loss value: " in result.stdout
        # fakerun's GPU grid is not part of a Megatron log.
        assert not re.search(r"^GPUs @ step ", result.stdout, re.M)

    def test_hf_dict_lines(self, runner: Runner) -> None:
        """HF Trainer arguments: dict lines with loss, grad_norm, learning_rate and epoch."""
        result = runner.run(
            [
                *self.FAST,
                "run_clm.py",
                "--model_name_or_path",
                "gpt2",
                "--per_device_train_batch_size",
                "8",
                "--num_train_epochs",
                "3",
                "--bf16",
                # HF logs every logging_steps and evaluates only when asked (no first-step log).
                *("--logging_steps", "1", "--eval_strategy", "steps", "--eval_steps", "2"),
            ]
        )
        assert result.code == 0, result.stderr[-2000:]
        dicts = re.findall(
            r"^\{'loss': [\d.]+, 'grad_norm': [\d.e-]+, 'learning_rate': [\d.e-]+, 'epoch': [\d.]+\}$",
            result.stdout,
            re.M,
        )
        assert dicts
        assert re.search(r"^\{'eval_loss': ", result.stdout, re.M)
        # HF's own bar: tqdm without a description, counting optimizer steps (not fakerun's `Epoch 1/3`).
        assert (
            re.search(r"^ +\d+%\|[^|]*\| \d+/\d+ \[", result.stderr, re.M)
            and "Epoch 1/3" not in result.stderr
        )

    def test_titan_lines_on_every_rank(self, runner: Runner) -> None:
        """torchtitan arguments: every rank logs the step line with the same loss."""
        result = runner.run(
            [
                *self.FAST,
                "torchtitan/train.py",
                "--model.name",
                "llama3",
                "--model.flavor",
                "8B",
                "--training.steps",
                "1000",
            ]
        )
        assert result.code == 0, result.stderr[-2000:]
        steps = re.findall(r"^\[titan\] .* - step:  1  loss: +([\d.]+)", result.stdout, re.M)
        assert len(steps) == 4 and len(set(steps)) == 1

    def test_explicit_trainer_with_the_grid(self, runner: Runner) -> None:
        """--fake-trainer picks the dialect whatever the script is; --fake-grid adds fakerun's grid."""
        fast = ["--nproc-per-node", "2", "--fake-max-steps", "2", "--fake-speed", "500"]
        result = runner.run([*fast, "--fake-trainer", "titan", "--fake-grid", "train.py"])
        assert result.code == 0, result.stderr[-2000:]
        assert len(re.findall(r"^\[titan\] .* - step:  1  loss: ", result.stdout, re.M)) == 2
        assert re.search(r"^GPUs @ step 1 ", result.stdout, re.M)


class TestProcessHygiene:
    """The state file exists while a job runs and is gone after; Ctrl-C prints no traceback."""

    def test_state_file_lives_with_the_job(self, runner: Runner) -> None:
        """$FAKERUN_STATE_DIR holds job-<pid>.json with every GPU while running, nothing after."""
        import signal
        import time

        state_dir = runner.tmp / "state"
        proc = runner.start(
            ["--nproc-per-node", "4", "--fake-speed", "20", "train.py"], FAKERUN_STATE_DIR=str(state_dir)
        )
        path = state_dir / f"job-{proc.pid}.json"
        deadline = time.monotonic() + 60
        state = None
        while time.monotonic() < deadline:
            if path.exists():
                state = json.loads(path.read_text())
                if state["step"] >= 1:
                    break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert state is not None and [g["rank"] for g in state["gpus"]] == [0, 1, 2, 3]
        assert all(g["pid"] > 0 and g["mem_used_mib"] > 0 for g in state["gpus"])
        assert not state_dir.exists() or not any(state_dir.iterdir())

    def test_sigint_without_traceback(self, runner: Runner) -> None:
        """Ctrl-C (SIGINT to the launcher) ends the job with torchrun's exit code and no Python traceback."""
        import signal
        import time

        proc = runner.start(
            ["--nproc-per-node", "2", "--fake-speed", "20", "--fake-log-format", "json", "train.py"]
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if '"training"' in line or '"starting training"' in line or "memory after first step" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode != 0
        assert "Traceback" not in err.replace('Traceback (most recent call last):\n  File "', "")
        assert "fakerun/worker" not in err


class TestRestart:
    """A rank that dies makes torchrun's agent restart the group, which resumes from the newest checkpoint."""

    def test_killed_rank_restart_resumes_from_checkpoint(self, runner: Runner) -> None:
        """SIGKILL one worker after a save: attempt 1 starts right after the saved step, then exit 0."""
        import os
        import signal
        import time

        proc = runner.start(
            [
                "--nproc-per-node",
                "2",
                "--max-restarts",
                "1",
                "--fake-max-steps",
                "40",
                "--fake-speed",
                "20",
                "--fake-log-format",
                "json",
                "--fake-metrics",
                "m.jsonl",
                "pretrain_gpt.py",
                "--save",
                "ckpt",
                "--save-interval",
                "4",
            ],
            FAKERUN_STATE_DIR=str(runner.tmp / "state"),
        )
        path = runner.tmp / "m.jsonl"
        deadline = time.monotonic() + 60
        saved = 0
        while time.monotonic() < deadline and not saved:
            time.sleep(0.1)
            recs = metrics(path) if path.exists() else []
            saved = max((r["step"] for r in recs if r["event"] == "checkpoint"), default=0)
        assert saved
        victim = 0
        while time.monotonic() < deadline and victim <= 0:
            # The state file is refreshed about once a second: wait until it names rank 1's pid.
            state = json.loads((runner.tmp / "state" / f"job-{proc.pid}.json").read_text())
            victim = int(state["gpus"][1]["pid"])
            time.sleep(0.1)
        assert victim > 0  # never os.kill(0, ...): that would be our own process group
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        runs = [r for r in metrics(path) if r["event"] == "run"]
        assert [r["attempt"] for r in runs] == [0, 1]
        assert runs[1]["first_step"] > saved and runs[1]["first_step"] - 1 in {
            r["step"] for r in metrics(path) if r["event"] == "checkpoint"
        }
        assert "failed (exitcode: -9) local_rank: 1" in err or "exitcode: -9" in err
        resumed = [e for e in json_events(out) if e["event"] == "resumed from checkpoint"]
        assert resumed and resumed[0]["step"] == runs[1]["first_step"] - 1
