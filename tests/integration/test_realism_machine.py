"""One simulated 2-node job read as an expert reads a log: time adds up, order looks like a network,
pids and thread ids look drawn by each host's kernel, and torchrun's INFO lines take the time they take."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import statistics
import uuid
from typing import Any, ClassVar

import pytest

from tests.conftest import Result, Runner

SPEED = 20.0
JOB = [
    "--nnodes",
    "2",
    "--nproc-per-node",
    "2",
    "--fake-max-steps",
    "8",
    "--fake-speed",
    str(SPEED),
    "--fake-seed",
    "0",
    "--fake-log-format",
    "json",
    "train.py",
    "--log-interval",
    "1",
]
GLOG = re.compile(r"^([IWE])(\d{4}) (\d\d:\d\d:\d\d\.\d{6}) (\d+) (\S+)\] (.*)$")
NCCL_ID = re.compile(r"^(\S+):(\d+):(\d+) \[(\d+)\] NCCL INFO ")


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Result:
    """The job, run once for every test of this module (TZ=UTC: glog's local time compares with json's)."""
    runner = Runner(uuid.uuid4().hex, tmp_path_factory.mktemp("realism"))
    res = runner.run(JOB, timeout=120, LOGLEVEL="INFO", NCCL_DEBUG="INFO", TZ="UTC")
    assert res.code == 0, res.stderr[-2000:]
    return res


def events(res: Result) -> list[dict[str, Any]]:
    """Every stdout line as JSON: under --fake-log-format json each one is an event, NCCL's included."""
    return [json.loads(line) for line in res.stdout.splitlines()]


def nccl_lines(res: Result) -> list[str]:
    """NCCL_DEBUG's lines, as the json format carries them (in `nccl` events, text intact)."""
    return [e["line"] for e in events(res) if e["event"] == "nccl"]


def stamp(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def glog_times(res: Result, message: str) -> list[float]:
    """Seconds of the day at which the launcher logged lines starting with `message`."""
    out = []
    for line in res.stderr.splitlines():
        m = GLOG.match(line)
        if m and m[6].startswith(message):
            h, mi, s = m[3].split(":")
            out.append(int(h) * 3600 + int(mi) * 60 + float(s))
    return out


def day_seconds(t: float) -> float:
    return t % 86400


class TestTime:
    """Every timestamp, elapsed time and throughput of the run agree."""

    def test_timestamps_monotonic_per_rank(self, job: Result) -> None:
        by_rank: dict[int, list[float]] = {}
        for e in events(job):
            by_rank.setdefault(e["rank"], []).append(stamp(e))
        assert sorted(by_rank) == [0, 1, 2, 3]
        for times in by_rank.values():
            assert times == sorted(times)

    def test_step_times_equal_timestamp_differences(self, job: Result) -> None:
        """Between two consecutive steps' lines the clock moved by the later step's printed time.

        A loaded machine can only deliver a step late, never early (a release is never in the past): so no
        gap is shorter than its step, and most gaps, hence their median, equal it.
        """
        train = [e for e in events(job) if e["event"] == "train"]
        assert [e["step"] for e in train] == list(range(1, 9))
        gaps = [stamp(b) - stamp(a) - b["step_time_s"] for a, b in itertools.pairwise(train)]
        assert min(gaps) >= -0.01, gaps
        assert statistics.median(gaps) == pytest.approx(0.0, abs=0.01), gaps

    def test_throughput_follows_the_printed_time(self, job: Result) -> None:
        """tokens/s x step time = the tokens of a step, iteration 1 (with its warm-up) included."""
        evs = events(job)
        tokens = next(e["tokens_per_step"] for e in evs if e["event"] == "parallelism")
        train = [e for e in evs if e["event"] == "train"]
        for e in train:
            assert e["tokens_per_s"] * e["step_time_s"] == pytest.approx(tokens, rel=0.01)
        assert train[0]["step_time_s"] > 2 * max(e["step_time_s"] for e in train[1:])

    def test_startup_takes_a_real_nodes_time(self, job: Result) -> None:
        """Nothing from a worker before torch could be imported; the rendezvous takes time and shows it."""
        (begun,) = glog_times(job, "[default] Rendezvous'ing worker group")
        (done,) = glog_times(job, "[default] Rendezvous complete for workers")
        assert done - begun >= 0.1
        evs = events(job)
        first = min(stamp(e) for e in evs)
        assert day_seconds(first) - done >= 3.0  # `import torch` on a GPU node: 3 s at the very least
        started = {e["rank"]: stamp(e) for e in evs if e["event"] == "worker started"}
        initialized = {e["rank"]: stamp(e) for e in evs if e["event"] == "process group initialized"}
        for rank, t in started.items():
            assert initialized[rank] - t >= 1.0  # the CUDA context, then NCCL's set-up


class TestOrder:
    """Ranks reach each point at their own times, so lines arrive as from a network."""

    def test_ranks_not_in_rank_order(self, job: Result) -> None:
        order = [e["rank"] for e in events(job) if e["event"] == "worker started"]
        assert sorted(order) == [0, 1, 2, 3] and order != sorted(order)

    def test_same_event_not_evenly_spaced(self, job: Result) -> None:
        times = sorted(stamp(e) for e in events(job) if e["event"] == "worker started")
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
        assert len(set(gaps)) == len(gaps)

    def test_nccl_init_interleaves_across_ranks(self, job: Result) -> None:
        """Each rank's NCCL set-up prints part by part as it gets there, not as one block per rank."""
        pids = [int(m[2]) for m in map(NCCL_ID.match, nccl_lines(job)) if m]
        runs = 1 + sum(a != b for a, b in itertools.pairwise(pids))
        assert len(set(pids)) == 4 and runs > 2 * 4  # one block per rank would be 4 runs


class TestIdentities:
    """pids per host: node 1's do not continue node 0's; NCCL's thread ids are no formula of the pid."""

    def test_pids_and_tids(self, job: Result) -> None:
        pids = {e["rank"]: e["pid"] for e in events(job) if e["event"] == "worker started"}
        node0, node1 = [pids[0], pids[1]], [pids[2], pids[3]]
        assert min(node1) - max(node0) not in range(1, 20) and min(node0) - max(node1) not in range(1, 20)
        tids: dict[int, set[int]] = {}
        for line in nccl_lines(job):
            m = NCCL_ID.match(line)
            if m:
                pid, tid = int(m[2]), int(m[3])
                assert pid in pids.values()
                if tid != pid:
                    tids.setdefault(pid, set()).add(tid)
        assert sorted(tids) == sorted(pids.values())
        offsets = [next(iter(t)) - pid for pid, t in tids.items()]
        assert len(set(offsets)) == len(offsets)
        assert all(40 < off < 1000 for off in offsets)


class TestLaunchConfig:
    """A single launcher playing two static nodes is node 0: `'rank': 0` in its rdzv_configs."""

    STATIC_RANK: ClassVar[str] = "rdzv_configs             : {'rank': 0, 'timeout': 900}"

    def test_static_rank_key(self, job: Result) -> None:
        assert any(line.endswith(self.STATIC_RANK) for line in job.stderr.splitlines()), job.stderr[:3000]
