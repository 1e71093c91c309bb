"""--fake-fail: each scenario plays out through real processes, signals and exit codes on a 2 x 2 job, and
the launcher reports it as torchrun reports that process behaviour."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import Result, Runner

JOB = ["--nnodes", "2", "--nproc-per-node", "2", "--fake-speed", "200", "--fake-max-steps", "8"]
REPORT_ENTRY = re.compile(r"  rank      : (\d+) \(local_rank: \d+\)\n  exitcode  : (-?\d+) \(pid: \d+\)")


def exit_codes(err: str) -> dict[int, int]:
    """Each rank's exit code in torchrun's ChildFailedError report."""
    return {int(rank): int(code) for rank, code in REPORT_ENTRY.findall(err)}


def failure_records(res: Result, runner: Runner) -> list[dict[str, object]]:
    lines = (runner.tmp / "m.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "failure"]


def run(runner: Runner, scenario: str, **env: str) -> Result:
    res = runner.run(
        [*JOB, "--fake-fail", scenario, "--fake-metrics", "m.jsonl", "train.py"], timeout=120, **env
    )
    assert res.code == 1, res.stderr[-3000:]
    assert "torch.distributed.elastic.multiprocessing.errors.ChildFailedError" in res.stderr
    return res


# The struck rank's exit code as torchrun reports it, and what it prints first.
SCENARIOS = [
    ("crash@4:1", 1, 1, r"\[rank1\]: RuntimeError: DataLoader worker \(pid\(s\) \d+\) exited unexpectedly\n"),
    (
        "oom@4:2",
        2,
        1,
        r"\[rank2\]: torch\.OutOfMemoryError: CUDA out of memory\. Tried to allocate [\d.]+ [GM]iB\.",
    ),
    ("xid@4:0", 0, -6, r"CUDA error: an illegal memory access was encountered\n"),
    ("segfault@4:3", 3, -11, None),
    ("sigkill@4:3", 3, -9, None),
]


@pytest.mark.parametrize(("scenario", "rank", "code", "text"), SCENARIOS)
def test_a_rank_dies(runner: Runner, scenario: str, rank: int, code: int, text: str | None) -> None:
    """The struck rank dies as its scenario says; the other node's ranks, whose NCCL connections to it close,
    abort with the remote error (or the agent's SIGTERM reaches them first); report and metrics say so."""
    res = run(runner, scenario)
    codes = exit_codes(res.stderr)
    assert sorted(codes) == [0, 1, 2, 3] and codes[rank] == code
    assert all(c in (-6, -15) for r, c in codes.items() if r != rank)
    if text is not None:
        assert re.search(text, res.stderr), res.stderr[-3000:]
    other_node = [r for r in codes if r // 2 != rank // 2]
    for r in other_node:
        if codes[r] == -6:
            assert (
                f"[rank{r}]:[E" in res.stderr and "Connection closed by remote peer gpu-node-00" in res.stderr
            )
    (record,) = failure_records(res, runner)
    assert record["kind"] == scenario.split("@")[0] and record["rank"] == rank and record["step"] == 4


def test_node_loss(runner: Runner) -> None:
    """Node 1 vanishes: its ranks die of SIGKILL; node 0's see their peer on gpu-node-002 close and abort."""
    res = run(runner, "node-loss@4:2")
    codes = exit_codes(res.stderr)
    assert codes[2] == codes[3] == -9
    aborted = [r for r in (0, 1) if codes[r] == -6]
    assert aborted and all(codes[r] in (-6, -15) for r in (0, 1))
    for r in aborted:
        block = res.stderr[res.stderr.index(f"[rank{r}]:[E") :]
        assert re.match(r"[^\n]*NCCL error: remote process exited or there was a network error", block)
        assert re.search(r"Connection closed by remote peer gpu-node-002<\d+>", block)
    assert failure_records(res, runner)[0]["kind"] == "node-loss"


def test_hang_times_out_with_a_desync_report(runner: Runner) -> None:
    """Rank 1 stops answering: after the collective timeout every other rank's watchdog reports it (with
    TORCH_NCCL_DESYNC_DEBUG=1, naming rank 1) and aborts; the agent then ends rank 1 with SIGTERM."""
    res = run(runner, "hang@4:1", TORCH_NCCL_DESYNC_DEBUG="1")
    codes = exit_codes(res.stderr)
    assert codes[1] == -15 and -6 in codes.values()
    timed_out = [r for r in (0, 2, 3) if codes[r] == -6]
    for r in timed_out:
        line = next(
            x for x in res.stderr.splitlines() if x.startswith(f"[rank{r}]:[E") and "Watchdog caught" in x
        )
        m = re.search(r"Timeout\(ms\)=(\d+)\) ran for (\d+) milliseconds before timing out\.$", line)
        assert m is not None and int(m[1]) == 600_000 and 0 < int(m[2]) - int(m[1]) < 1000
        assert "     [1] finished collective #" in res.stderr
        assert "Exception raised from checkTimeout at /pytorch/" in res.stderr
    assert "[rank1]:[E" not in res.stderr
    (record,) = failure_records(res, runner)
    assert record["kind"] == "hang" and record["rank"] == 1 and record["step"] == 4


def test_list_failures(runner: Runner) -> None:
    """--fake-list-failures: one line per scenario, exit 0, no script needed."""
    res = runner.run(["--fake-list-failures"])
    assert res.code == 0
    names = [line.split()[0] for line in res.stdout.splitlines()[:-1]]
    assert {"oom", "hang", "node-loss", "random"} <= set(names) and len(names) == len(set(names))


def test_restart_resumes_from_the_last_complete_checkpoint(runner: Runner) -> None:
    """--max-restarts 1: the crash at step 7 ends attempt 0; attempt 1 resumes after the save of step 6 (the
    last one finished before the crash), meets no second crash, and the job ends 0. A node slowed from step
    3 on (slow-node strikes no process) stretches every step from there, in both attempts."""
    args = [*JOB[:-1], "12", "--max-restarts", "1", "--fake-fail", "crash@7:1", "--fake-metrics", "m.jsonl"]
    args += ["--fake-fail", "slow-node@3:2", "--fake-seed", "7"]  # fixed: the figures are then fixed
    res = runner.run([*args, "train.py", "--save-interval", "3", "--save", "ckpt"], timeout=120)
    assert res.code == 0, res.stderr[-3000:]
    records = [json.loads(line) for line in (runner.tmp / "m.jsonl").read_text().splitlines()]
    shown = [(r["event"], r.get("step", r.get("first_step")), r.get("attempt")) for r in records]
    runs = [(r["attempt"], r["first_step"]) for r in records if r["event"] == "run"]
    assert runs == [(0, 1), (1, 7)], shown
    saves = [r["step"] for r in records if r["event"] == "checkpoint"]
    assert saves == [3, 6, 9, 12]
    assert [(r["kind"], r["step"], r["attempt"]) for r in records if r["event"] == "failure"] == [
        ("crash", 7, 0)
    ]
    assert res.stderr.count("RuntimeError: DataLoader worker") == 1
    times = {r["step"]: r["step_time_s"] for r in records if r["event"] == "step"}
    # The slow node's factor is at least 1.3 (less its GPUs' 6% spread) on steps whose healthy times differ
    # by a few percent: every slowed step is longer than every healthy one after the warm-up step.
    assert min(times[s] for s in range(3, 13)) > 1.15 * times[2]


def test_megatron_nan_exits_16_and_resumes_from_the_step_before(runner: Runner) -> None:
    """A bf16 Megatron-core job meets a NaN at step 5: its rerun state machine reruns the step, saves after
    step 4 and every rank exits 16 (no peer aborts: the exit is the script's); torchrun reports exitcode 16
    and restarts; the attempt resumes from step 4, reruns step 5 on the same GPUs and exits 16 again."""
    args = ["--nnodes", "1", "--nproc-per-node", "2", "--fake-speed", "1000", "--fake-max-steps", "8"]
    args += ["--max-restarts", "1", "--fake-fail", "nan@5", "--fake-metrics", "m.jsonl", "pretrain_gpt.py"]
    res = runner.run([*args, "--bf16", "--save-interval", "3", "--save", "ckpt"], timeout=120)
    assert res.code == 1, res.stderr[-3000:]
    assert exit_codes(res.stderr) == {0: 16, 1: 16}
    assert res.stderr.count("error_file: <N/A>") == 2
    assert "]:[E" not in res.stderr and "Connection closed" not in res.stderr  # no rank's NCCL abort
    logger = "megatron.core.rerun_state_machine"
    for rank in (0, 1):
        assert (
            f"ERROR:{logger}:Unexpected result tensor(nan, device='cuda:{rank}', grad_fn=<SumBackward0>) on "
            f"rank {rank} at iteration #5 invokation #1 "
            "(message='found NaN in local forward loss calculation')"
        ) in res.stdout
    assert "saving checkpoint at iteration       4 to ckpt" in res.stdout
    assert " loading distributed checkpoint from ckpt at iteration 4" in res.stdout
    assert res.stdout.count("Got rescheduled on the same GPU") == 2
    assert " iteration        5/" not in res.stdout
    records = failure_records(res, runner)
    assert [(r["kind"], r["step"], r["attempt"]) for r in records] == [("nan", 5, 0), ("nan", 5, 1)]
    lines = (runner.tmp / "m.jsonl").read_text().splitlines()
    runs = [(r["attempt"], r["first_step"]) for r in map(json.loads, lines) if r["event"] == "run"]
    assert runs == [(0, 1), (1, 5)]
