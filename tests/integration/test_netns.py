"""Two agents on two "hosts": network namespaces joined by a veth pair, each agent with its own address.

Needs root and `ip netns`; skipped with the reason otherwise. The namespaces and links are removed
whatever happens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import SCRIPTS, Runner, fakerun_exe
from tests.integration.test_multinode import finish, probe_envs

ADDR = ("10.231.0.1", "10.231.0.2")


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


def _why_not() -> str | None:
    if shutil.which("ip") is None:
        return "the `ip` command is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"fkprobe{uuid.uuid4().hex[:6]}"
    res = _ip("netns", "add", probe)
    if res.returncode != 0:
        return f"`ip netns add` failed: {res.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


@pytest.fixture
def hosts() -> Iterator[tuple[str, str]]:
    """Two namespaces with 10.231.0.1 and .2 on a veth pair; yields their names."""
    why = _why_not()
    if why is not None:
        pytest.skip(why)
    tag = uuid.uuid4().hex[:6]
    a, b = f"fka{tag}", f"fkb{tag}"
    va, vb = f"va{tag}", f"vb{tag}"
    try:
        for cmd in (
            ["netns", "add", a],
            ["netns", "add", b],
            ["link", "add", va, "type", "veth", "peer", "name", vb],
            ["link", "set", va, "netns", a],
            ["link", "set", vb, "netns", b],
            ["-n", a, "addr", "add", f"{ADDR[0]}/24", "dev", va],
            ["-n", b, "addr", "add", f"{ADDR[1]}/24", "dev", vb],
            ["-n", a, "link", "set", va, "up"],
            ["-n", b, "link", "set", vb, "up"],
            ["-n", a, "link", "set", "lo", "up"],
            ["-n", b, "link", "set", "lo", "up"],
        ):
            res = _ip(*cmd)
            if res.returncode != 0:
                pytest.skip(f"cannot build the test network (ip {' '.join(cmd)}): {res.stderr.strip()}")
        yield a, b
    finally:
        _ip("netns", "del", a)
        _ip("netns", "del", b)


def in_ns(runner: Runner, ns: str, args: list[str], name: str) -> subprocess.Popen[str]:
    out = open(runner.tmp / f"{name}.out", "w")  # noqa: SIM115
    err = open(runner.tmp / f"{name}.err", "w")  # noqa: SIM115
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, fakerun_exe(), *args],
        stdout=out,
        stderr=err,
        text=True,
        env=runner.env(),
        cwd=runner.tmp,
    )


def test_static_job_across_namespaces(hosts: tuple[str, str], runner: Runner) -> None:
    """Node 0 in one namespace, node 1 in the other: the job forms over the veth link, environments right."""
    a, b = hosts
    common = ["--nnodes", "2", "--nproc-per-node", "2", "--master-addr", ADDR[0], "--master-port", "29533"]
    probe = ["--fake-exec", str(SCRIPTS / "probe.py")]
    n0 = in_ns(runner, a, [*common, "--node-rank", "0", *probe], "n0")
    n1 = in_ns(runner, b, [*common, "--node-rank", "1", *probe], "n1")
    assert finish([n0, n1]) == [0, 0], (runner.tmp / "n1.err").read_text()[-1500:]
    envs = probe_envs(runner)
    assert sorted(envs) == [0, 1, 2, 3]
    assert {(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs.values()} == {(ADDR[0], "29533")}


def test_silent_link_is_detected_by_heartbeats(hosts: tuple[str, str], runner: Runner) -> None:
    """Cutting the link mid-run (no FIN, no RST): both agents notice within seconds and exit 1."""
    a, b = hosts
    common = [
        "--nnodes",
        "2",
        "--nproc-per-node",
        "2",
        "--master-addr",
        ADDR[0],
        "--master-port",
        "29534",
        "--fake-speed",
        "5",
    ]
    n0 = in_ns(runner, a, [*common, "--node-rank", "0", "train.py"], "n0")
    n1 = in_ns(runner, b, [*common, "--node-rank", "1", "train.py"], "n1")
    deadline = time.monotonic() + 60
    while (
        time.monotonic() < deadline and "memory after first step" not in (runner.tmp / "n0.out").read_text()
    ):
        time.sleep(0.1)
    links = _ip("-n", b, "-o", "link", "show", "type", "veth").stdout.split(":")
    veth = links[1].strip().split("@")[0]
    _ip("-n", b, "link", "set", veth, "down")
    codes = finish([n0, n1], timeout=40)
    assert codes == [1, 1]
    for name in ("n0.err", "n1.err"):
        err = (runner.tmp / name).read_text()
        assert "no heartbeat" in err and "ChildFailedError" in err
