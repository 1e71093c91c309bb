"""fakerun-smi's choice among running jobs, and `--serve`'s dcgm-exporter endpoint scraped and parsed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fakerun.tools
from fakerun.tools.smi import UsageError, choose_job, main, node_snapshots, running_jobs

# dcgm-exporter's etc/default-counters.csv and dcp-metrics-included.csv: name -> Prometheus type.
DCGM_TYPES = {
    "DCGM_FI_DEV_SM_CLOCK": "gauge",
    "DCGM_FI_DEV_MEM_CLOCK": "gauge",
    "DCGM_FI_DEV_MEMORY_TEMP": "gauge",
    "DCGM_FI_DEV_GPU_TEMP": "gauge",
    "DCGM_FI_DEV_POWER_USAGE": "gauge",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": "counter",
    "DCGM_FI_DEV_GPU_UTIL": "gauge",
    "DCGM_FI_DEV_MEM_COPY_UTIL": "gauge",
    "DCGM_FI_DEV_XID_ERRORS": "gauge",
    "DCGM_FI_DEV_FB_FREE": "gauge",
    "DCGM_FI_DEV_FB_USED": "gauge",
    "DCGM_FI_DEV_FB_RESERVED": "gauge",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": "gauge",
}
# The labels of every sample in dcgm-exporter 3.3+ scrapes.
DCGM_LABELS = {"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION"}

# node, local rank, util, mem util, temp, power, SM MHz, used MiB
GPU_VALUES = [
    (0, 0, 97, 44, 66, 655, 1980, 61_234),
    (0, 1, 95, 43, 71, 640, 1980, 60_111),
    (1, 0, 12, 3, 44, 150, 1500, 59_876),
    (1, 1, 0, 0, 40, 120, 1500, 1_000),
]


def job_state(launcher: int, worker: int, run_id: str, **over: Any) -> dict[str, Any]:
    """A state document in the shape the launcher's publish_state writes: 2 nodes x 2 H100s."""
    gpus = [
        {
            "rank": rank,
            "node": node,
            "local_rank": local,
            "host": f"gpu-node-{node + 1:03d}",
            "pid": worker,
            "util": util,
            "mem_util": mem_util,
            "temp": temp,
            "power": power,
            "sm_clock": sm,
            "mem_used_mib": used,
            "mem_total_mib": 81559,
            "power_cap": 700,
            "phase": "train",
        }
        for rank, (node, local, util, mem_util, temp, power, sm, used) in enumerate(GPU_VALUES)
    ]
    doc: dict[str, Any] = {
        "version": 1,
        "run_id": run_id,
        "launcher_pid": launcher,
        "model": "llama3-8b",
        "gpu": "h100",
        "gpu_display_name": "NVIDIA H100 80GB HBM3",
        "cluster": "dgx-h100",
        "driver_version": "580.95.05",
        "cuda_version": "13.0",
        "world_size": 4,
        "nnodes": 2,
        "nproc_per_node": 2,
        "updated": time.time(),
        "gpus": gpus,
    }
    doc.update(over)
    return doc


@pytest.fixture
def younger() -> Iterator[int]:
    """A live process started after this one: a second launcher."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def write(directory: Path, doc: dict[str, Any]) -> None:
    """Writes a job state file as the launcher names it."""
    (directory / f"job-{doc['launcher_pid']}.json").write_text(json.dumps(doc), encoding="utf-8")


class TestChoice:
    """Several jobs: the last started is shown (not the last to rewrite its file), or --run-id's."""

    def test_last_started_wins_over_last_written(self, tmp_path: Path, younger: int) -> None:
        me = os.getpid()
        write(tmp_path, job_state(younger, me, "young", updated=time.time() - 2))
        write(tmp_path, job_state(me, me, "old", updated=time.time()))
        jobs, note = choose_job(running_jobs(str(tmp_path), time.time()), None)
        assert [j["run_id"] for j in jobs] == ["young"]
        assert f"young (pid {younger})" in note and "--run-id" in note

    def test_run_id_or_pid_picks(self, tmp_path: Path, younger: int) -> None:
        me = os.getpid()
        write(tmp_path, job_state(younger, me, "young"))
        write(tmp_path, job_state(me, me, "old"))
        jobs = running_jobs(str(tmp_path), time.time())
        assert [j["run_id"] for j in choose_job(jobs, "old")[0]] == ["old"]
        assert [j["run_id"] for j in choose_job(jobs, str(younger))[0]] == ["young"]
        assert choose_job(jobs, "old")[1] == ""
        with pytest.raises(UsageError, match="no running fakerun job has run id nope"):
            choose_job(jobs, "nope")

    def test_agents_of_one_job_stay_together(self, tmp_path: Path, younger: int) -> None:
        # One launcher per node on the same host: the same run id, both kept, no note.
        me = os.getpid()
        write(tmp_path, job_state(younger, me, "multi"))
        write(tmp_path, job_state(me, me, "multi"))
        jobs, note = choose_job(running_jobs(str(tmp_path), time.time()), None)
        assert len(jobs) == 2 and note == ""


prometheus_client = pytest.importorskip("prometheus_client")


# A sample line of a dcgm-exporter 3.3 scrape (an H100, public capture): its labels in this order.
SAMPLE_LINE = re.compile(
    r'^DCGM_FI_DEV_SM_CLOCK\{gpu="\d+",UUID="GPU-[0-9a-f-]{36}",pci_bus_id="0{8}:[0-9A-F]{2}:00\.0",'
    r'device="nvidia\d+",modelName="NVIDIA H100 80GB HBM3",Hostname="[^"]+",'
    r'DCGM_FI_DRIVER_VERSION="[\d.]+"\} \d+$'
)


def scrape(url: str) -> dict[str, Any]:
    """The families of a scrape, parsed by prometheus_client's own parser, by name."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    lines = text.splitlines()
    assert lines[:2] == [
        "# HELP DCGM_FI_DEV_SM_CLOCK SM clock frequency (in MHz).",
        "# TYPE DCGM_FI_DEV_SM_CLOCK gauge",
    ]
    assert SAMPLE_LINE.match(lines[2]), lines[2]
    return {f.name: f for f in text_string_to_metric_families(text)}


class TestServe:
    """The endpoint serves every GPU of the job with dcgm-exporter's names, types and labels."""

    def test_scrape_parses_into_dcgm_families(self, tmp_path: Path) -> None:
        from fakerun.tools import dcgm

        me = os.getpid()
        write(tmp_path, job_state(me, me, "served"))
        server = dcgm.start("127.0.0.1", 0, lambda: node_snapshots(time.time(), "elsewhere", str(tmp_path)))
        try:
            families = scrape(f"http://127.0.0.1:{server.server_port}/metrics")
        finally:
            server.shutdown()
            server.server_close()
        for name, kind in DCGM_TYPES.items():
            assert families[name].type == kind, name
            assert families[name].documentation
        assert not [n for n in families if not n.startswith("DCGM_FI_")]  # no process/python metrics

        def by_gpu(name: str) -> dict[tuple[str, str], float]:
            samples = families[name].samples
            assert all(set(s.labels) == DCGM_LABELS for s in samples)
            return {(s.labels["Hostname"], s.labels["gpu"]): s.value for s in samples}

        keys = {(f"gpu-node-{n + 1:03d}", str(local)) for n, local, *_ in GPU_VALUES}
        util, used, free = (
            by_gpu("DCGM_FI_DEV_GPU_UTIL"),
            by_gpu("DCGM_FI_DEV_FB_USED"),
            by_gpu("DCGM_FI_DEV_FB_FREE"),
        )
        reserved = by_gpu("DCGM_FI_DEV_FB_RESERVED")
        assert set(util) == keys
        for node, local, u, _, _, _, sm, mib in GPU_VALUES:
            key = (f"gpu-node-{node + 1:03d}", str(local))
            assert util[key] == u and used[key] == mib
            assert free[key] + used[key] + reserved[key] == 81559
            assert by_gpu("DCGM_FI_DEV_SM_CLOCK")[key] == sm
            assert 0 <= by_gpu("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE")[key] <= u / 100
        sample = families["DCGM_FI_DEV_GPU_TEMP"].samples[0]
        assert sample.labels["DCGM_FI_DRIVER_VERSION"] == "580.95.05"
        assert sample.labels["device"] == f"nvidia{sample.labels['gpu']}"
        assert sample.labels["modelName"] == "NVIDIA H100 80GB HBM3"

    def test_cli_serves_until_sigterm(self, tmp_path: Path) -> None:
        env = {**os.environ, "FAKERUN_STATE_DIR": str(tmp_path)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "fakerun.tools.smi", "--serve", "127.0.0.1:0"],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            url = line.split(" on ", 1)[1].strip()
            families = scrape(url)  # no job: this host's idle GPUs
            assert len(families["DCGM_FI_DEV_GPU_UTIL"].samples) == 8
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            proc.kill()
            proc.wait()

    def test_without_the_extra(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setitem(sys.modules, "prometheus_client", None)
        monkeypatch.delitem(sys.modules, "fakerun.tools.dcgm", raising=False)
        monkeypatch.delattr(fakerun.tools, "dcgm", raising=False)
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            assert main(["--serve"], prog="fakerun-smi") == 2
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pip install 'fakerun[serve]'" in err[0]
