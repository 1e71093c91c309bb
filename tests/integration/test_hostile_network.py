"""The rendezvous port is reachable by anyone: hostile bytes, floods and lying agents, with real sockets.

Each test runs real agents on loopback and plays the stranger (or an impostor agent that knows the job's
secret) with a raw socket. What must hold: the job either goes on or ends cleanly as torchrun's job would,
every refusal is one line, no traceback comes from fakerun's own code, and no process is left behind (the
`runner` fixture checks that).
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import fakerun
from fakerun.launcher.peers import LINES_PER_WINDOW
from fakerun.launcher.wire import (
    MAX_FRAME,
    FrameDecoder,
    answer,
    challenge,
    encode,
    verify_answer,
    verify_welcome,
)
from tests.conftest import Runner
from tests.integration.test_multinode import finish, free_port, launch, text

SECRET = "hostile-network-test"
OWN_CODE = str(Path(fakerun.__file__).resolve().parent)
FAST = ["--nproc-per-node", "1", "--fake-model", "gpt2-124m", "--fake-speed", "200"]


def agent(
    runner: Runner, args: list[str], name: str, *, fd_limit: int | None = None, **env: str
) -> subprocess.Popen[str]:
    """One agent with the job's secret, its output in files named after it; `fd_limit` caps its fds."""
    return launch(runner, args, name, {"FAKERUN_SECRET": SECRET, **env}, fd_limit)


def static(port: int, node_rank: int, *extra: str, nnodes: int = 2) -> list[str]:
    """A static job's command line on loopback."""
    return [
        "--nnodes",
        str(nnodes),
        "--node-rank",
        str(node_rank),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port),
        *FAST,
        *extra,
        "train.py",
    ]


def listening(port: int) -> bool:
    """Whether something listens on TCP `port` (read from /proc, so that no connection is made)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def wait_for(what: str, predicate: Callable[[], bool], procs: list[subprocess.Popen[str]]) -> None:
    """Polls `predicate` (60 s at most), failing at once if an agent has exited meanwhile."""
    deadline = time.monotonic() + 60
    while not predicate():
        for p in procs:
            assert p.poll() is None, f"an agent exited ({p.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def flood(port: int, count: int) -> list[socket.socket]:
    """`count` connections to the port, opened without waiting (the kernel queues what is not accepted)."""
    connections = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        connections.append(s)
    return connections


def training(runner: Runner, name: str) -> Callable[[], bool]:
    """Whether agent `name`'s ranks have finished a step."""
    return lambda: "memory after first step" in text(runner, f"{name}.out")


def clean(err: str) -> None:
    """No traceback of fakerun's own code, nor a Python exception it let escape."""
    assert OWN_CODE not in err, err[-3000:]
    for name in ("RecursionError", "TypeError", "IndexError", "OverflowError", "UnicodeError", "KeyError"):
        assert name not in err, err[-3000:]


def lines_with(err: str, needle: str) -> list[str]:
    return [line for line in err.splitlines() if needle in line]


def said(err: str) -> str:
    """The messages of fakerun's own notices (glog W lines naming a fakerun module), one per line."""
    return "\n".join(m[1] for m in re.finditer(r"(?m)^W\d{4} [\d:.]+ \d+ fakerun/\S+\] (.*)$", err))


class Wire:
    """The test's end of a connection, speaking fakerun's frames (a stranger or an impostor agent)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = FrameDecoder(MAX_FRAME)
        self.inbox: list[dict[str, Any]] = []

    @classmethod
    def dial(cls, port: int) -> Wire:
        return cls(socket.create_connection(("127.0.0.1", port), timeout=10))

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(encode(message))

    def send_body(self, body: bytes) -> None:
        """One frame of any bytes."""
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def recv(self, timeout: float = 20) -> dict[str, Any] | None:
        """The next message; None at EOF (or a reset)."""
        deadline = time.monotonic() + timeout
        while not self.inbox:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.inbox += self.decoder.feed(data)
        return self.inbox.pop(0)

    def until_closed(self, timeout: float = 20) -> list[dict[str, Any]]:
        """Every message until the other end closes."""
        out = []
        while (message := self.recv(timeout)) is not None:
            out.append(message)
        return out

    def authenticate(self, secret: str = SECRET) -> None:
        """The dialer's side of the handshake."""
        first = self.recv()
        assert first is not None
        sent = answer(secret.encode(), first)
        self.send(sent)
        welcome = self.recv()
        assert welcome is not None, "the host closed the connection instead of welcoming us"
        verify_welcome(secret.encode(), sent, welcome)

    def welcome(self, secret: str = SECRET) -> dict[str, Any]:
        """The listener's side of the handshake; returns the dialer's next message (its join)."""
        sent = challenge()
        self.send(sent)
        reply = self.recv()
        assert reply is not None
        self.send(verify_answer(secret.encode(), sent, reply))
        join = self.recv()
        assert join is not None
        return join

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def fake_host(port: int) -> Iterator[socket.socket]:
    """A listening socket on loopback, playing the rendezvous host."""
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(90)  # an agent starts in a second, but the machine may be busy
    try:
        yield server
    finally:
        server.close()


def accept(server: socket.socket) -> Wire:
    conn, _ = server.accept()
    return Wire(conn)


def captured_join(runner: Runner, port: int, *extra: str) -> dict[str, Any]:
    """The join message a real node 1 sends for this job (its model and digest), for an impostor to reuse."""
    with fake_host(port) as server:
        real = agent(runner, static(port, 1, *extra), "capture")
        try:
            conn = accept(server)
            join = conn.welcome()
            conn.send({"k": "reject", "reason": "captured"})
            conn.close()
        finally:
            finish([real])
    assert join["k"] == "join"
    return join


def impostor(port: int, join: dict[str, Any]) -> Wire:
    """Joins the real node 0 as node 1 with the secret and the job's own join; returns once assigned."""
    wire = Wire.dial(port)
    wire.authenticate()
    wire.send({**join, "host": "impostor-node"})
    assign = wire.recv()
    assert assign is not None and assign["k"] == "assign", assign
    return wire


class TestStrangers:
    """Unauthenticated connections to the port: garbage, deep nesting, huge lengths, floods."""

    @pytest.mark.parametrize(
        ("body", "why"),
        [
            (b"[" * 3000, "frame nests deeper than 16 levels"),  # within the handshake's frame limit
            (b"[" * 5000, "frame of 5000 bytes announced (limit 4096)"),
            (
                b'{"k": "auth", "mac": "\\u00e9\\u00e9", "nonce": "\\ud800"}',
                "expected an authentication answer",
            ),
            (b'{"k": NaN}', "frame is not JSON"),
            (b"\xff\xfe" * 10, "frame is not JSON"),
        ],
    )
    def test_bad_frame_before_the_handshake(self, runner: Runner, body: bytes, why: str) -> None:
        """Node 0 hosting the rendezvous: one refusal line, the stranger told why, then the job forms."""
        port = free_port()
        n0 = agent(runner, static(port, 0, "--fake-max-steps", "3"), "n0")
        wait_for("node 0 to listen", lambda: listening(port), [n0])
        stranger = Wire.dial(port)
        assert stranger.recv() is not None  # the challenge
        stranger.send_body(body)
        assert stranger.until_closed() == [{"k": "reject", "reason": why}]
        n1 = agent(runner, static(port, 1, "--fake-max-steps", "3"), "n1")
        assert finish([n0, n1]) == [0, 0], text(runner, "n0.err")[-2000:]
        err = text(runner, "n0.err")
        refused = lines_with(said(err), "refused a connection")
        assert len(refused) == 1 and refused[0].startswith("refused a connection from 127.0.0.1:")
        assert refused[0].endswith(why)
        clean(err)

    def test_bad_frames_during_the_run(self, runner: Runner) -> None:
        """Deep nesting and a 4 GiB length announced to node 0 mid-run: one line each, the job completes."""
        port = free_port()
        n0 = agent(runner, static(port, 0, "--fake-max-steps", "100", "--fake-speed", "20"), "n0")
        n1 = agent(runner, static(port, 1, "--fake-max-steps", "100", "--fake-speed", "20"), "n1")
        wait_for("training", training(runner, "n0"), [n0, n1])
        for body in (b"[" * 3000, b"{" * 4000):
            stranger = Wire.dial(port)
            stranger.recv()
            stranger.send_body(body)
            assert stranger.until_closed()[0]["k"] == "reject"
        stranger = Wire.dial(port)
        stranger.recv()
        stranger.sock.sendall(b"\xff\xff\xff\xff")
        assert stranger.until_closed() == [
            {"k": "reject", "reason": "frame of 4294967295 bytes announced (limit 4096)"}
        ]
        assert n0.poll() is None and n1.poll() is None  # refused mid-run
        assert finish([n0, n1]) == [0, 0], text(runner, "n0.err")[-2000:]
        err = text(runner, "n0.err")
        assert len(lines_with(said(err), "refused a connection from 127.0.0.1:")) == 3
        clean(err)

    def test_flood_before_the_rendezvous(self, runner: Runner) -> None:
        """Node 0 with 256 fds, 400 connections held open at its port: the real node 1 still joins."""
        port = free_port()
        n0 = agent(runner, static(port, 0, "--fake-max-steps", "3"), "n0", fd_limit=256)
        wait_for("node 0 to listen", lambda: listening(port), [n0])
        connections = flood(port, 400)
        try:
            n1 = agent(runner, static(port, 1, "--fake-max-steps", "3"), "n1")
            assert finish([n0, n1]) == [0, 0], text(runner, "n0.err")[-2000:]
        finally:
            for s in connections:
                s.close()
        err = text(runner, "n0.err")
        clean(err)
        # The cap was reached, and the refusals were rate-limited: a line per kind and a count, not 400.
        assert lines_with(err, "too many connections waiting for a handshake"), err[-3000:]
        assert len(lines_with(said(err), "refused")) <= LINES_PER_WINDOW + 2, err[-3000:]

    def test_flood_during_the_run(self, runner: Runner) -> None:
        """400 connections opened mid-run at node 0 with 256 fds, some closed at once: the job completes."""
        port = free_port()
        n0 = agent(
            runner, static(port, 0, "--fake-max-steps", "150", "--fake-speed", "20"), "n0", fd_limit=256
        )
        n1 = agent(runner, static(port, 1, "--fake-max-steps", "150", "--fake-speed", "20"), "n1")
        wait_for("training", training(runner, "n0"), [n0, n1])
        connections = flood(port, 400)
        try:
            for s in connections[::4]:
                s.close()  # some leave at once, the rest stay silent
            # The cap is reached while the job runs: older silent connections give way to newer ones.
            evicted = "too many connections waiting for a handshake"
            wait_for("an eviction", lambda: evicted in text(runner, "n0.err"), [n0, n1])
            assert finish([n0, n1]) == [0, 0], text(runner, "n0.err")[-2000:]
        finally:
            for s in connections:
                s.close()
        err = text(runner, "n0.err")
        clean(err)
        assert lines_with(err, "too many connections waiting for a handshake"), err[-3000:]
        assert len(lines_with(said(err), "refused")) <= LINES_PER_WINDOW + 2, err[-3000:]

    def test_repeats_are_rate_limited(self, runner: Runner) -> None:
        """The same stranger with a wrong secret 30 times: one line, not thirty; the job goes on."""
        port = free_port()
        n0 = agent(runner, static(port, 0, "--fake-max-steps", "3"), "n0")
        wait_for("node 0 to listen", lambda: listening(port), [n0])
        for _ in range(30):
            stranger = Wire.dial(port)
            first = stranger.recv()
            assert first is not None
            stranger.send(answer(b"not the secret", first))
            assert stranger.until_closed()[0]["reason"].startswith("wrong secret")
        n1 = agent(runner, static(port, 1, "--fake-max-steps", "3"), "n1")
        assert finish([n0, n1]) == [0, 0]
        refused = lines_with(said(text(runner, "n0.err")), "refused")
        assert refused[0].endswith(": wrong secret (check FAKERUN_SECRET on every node)")
        # Every refusal is accounted for, in a line or in a count of the ones held back; a line repeats
        # only once its 30 s window is over (a slow machine may need two windows).
        counted = [
            re.fullmatch(r"refused (\d+) more connections? in the last \d+ s \((.*)\)", r) for r in refused
        ]
        assert sum(int(m[1]) if m else 1 for m in counted) == 30, refused
        assert 2 <= len(refused) <= 4, refused
        assert all(
            m[2] == "most from 127.0.0.1: wrong secret (check FAKERUN_SECRET on every node)"
            for m in counted
            if m
        )


class TestImpostorAgent:
    """An agent that knows the secret but sends what no fakerun agent sends: the root ends its connection."""

    @pytest.mark.parametrize(
        ("messages", "why"),
        [
            (
                [
                    {
                        "k": "batch",
                        "items": [[1, {"k": "ready", "pid": 7, "tel": ["x", 0, 0, 0, 0, 0, "idle"]}]],
                    }
                ],
                "field '0' is not a number",
            ),
            (
                [{"k": "batch", "items": [[1, {"k": "ready", "pid": 7, "tel": [1, 2, 3]}]]}],
                "malformed telemetry",
            ),
            ([{"k": "batch", "items": [[0, {"k": "ready", "pid": 7}]]}], "which is not on node 1"),
            ([{"k": "batch", "items": [["1", {"k": "ready", "pid": 7}]]}], "which is not on node 1"),
            ([{"k": "batch", "items": {"1": 2}}], "malformed batch"),
            (
                [
                    {"k": "batch", "items": [[1, {"k": "ready", "pid": 7}]]},
                    {"k": "batch", "items": [[1, {"k": "step", "s": 10**400, "c": 0.1}]]},
                ],
                "field 's' is not a step number",
            ),
            (
                [
                    {"k": "batch", "items": [[1, {"k": "ready", "pid": 7}]]},
                    {"k": "batch", "items": [[1, {"k": "step", "s": 1, "c": 1e300}]]},
                ],
                "field 'c' is out of range",
            ),
            (
                [
                    {"k": "batch", "items": [[1, {"k": "ready", "pid": 7}]]},
                    {"k": "batch", "items": [[1, {"k": "step", "s": 99, "c": 0.1}]]},
                ],
                "a report for rank 1: rank 1 reported step 99 while step 1 is gathered",
            ),
            ([{"k": "replies", "now": 0, "items": []}], "unexpected message 'replies'"),
            ("[" * 5000, "frame nests deeper than 16 levels"),
            ('{"k": "hb", "x": ' + "[" * 500 + "]" * 500 + "}", "frame nests deeper than 16 levels"),
        ],
        ids=[
            "telemetry-type",
            "telemetry-length",
            "rank-of-node-0",
            "rank-not-int",
            "items-not-list",
            "huge-step",
            "huge-compute",
            "wrong-step",
            "unexpected-kind",
            "nested-5000",
            "nested-500",
        ],
    )
    def test_malformed_reports(self, runner: Runner, messages: list[dict[str, Any]] | str, why: str) -> None:
        """Node 0 drops the impostor with one line, loses the job as when a node breaks, exits 1 cleanly."""
        port = free_port()
        join = captured_join(runner, port, "--rdzv-conf", "timeout=60")
        n0 = agent(runner, static(port, 0, "--rdzv-conf", "timeout=60"), "n0")
        wait_for("node 0 to listen", lambda: listening(port), [n0])
        wire = impostor(port, join)
        try:
            if isinstance(messages, str):
                wire.send_body(messages.encode())
            else:
                for message in messages:
                    wire.send(message)
            assert finish([n0], timeout=60) == [1]
        finally:
            wire.close()
        err = text(runner, "n0.err")
        lost = lines_with(said(err), "lost node 1")
        assert lost == [f"lost node 1 (impostor-node): it {lost[0].split(': it ', 1)[1]}"], err[-3000:]
        assert why in lost[0], lost
        assert "ChildFailedError" in err  # torchrun's report of the workers NCCL would have killed
        clean(err)

    def test_malformed_replies_to_a_node(self, runner: Runner) -> None:
        """A root that sends node 1 a release a billion seconds away: node 1 drops it, aborts, exits 1."""
        port = free_port()
        with fake_host(port) as server:
            n1 = agent(runner, static(port, 1, "--rdzv-conf", "timeout=60"), "n1")
            conn = accept(server)
            join = conn.welcome()
            assert join["k"] == "join" and join["node_rank"] == 1
            hosts = ["fake-root", "node-b"]
            conn.send(
                {
                    "k": "assign",
                    "group_rank": 1,
                    "hosts": hosts,
                    "master_addr": "127.0.0.1",
                    "master_port": port,
                }
            )
            batch = conn.recv(timeout=60)
            assert batch is not None and batch["k"] == "batch", batch
            now = time.monotonic()
            conn.send({"k": "replies", "now": now, "items": [[1, {"k": "go", "t0": now}]]})
            step = conn.recv(timeout=60)
            while step is not None and step["k"] == "hb":
                step = conn.recv(timeout=60)
            assert step is not None and step["k"] == "batch", step
            reply = {"k": "step", "s": 1, "rel": now + 1e9, "comm": 0.1, "ar_ms": 1.0, "stop": False}
            conn.send({"k": "replies", "now": now, "items": [[1, reply]]})
            assert finish([n1], timeout=60) == [1]
            conn.close()
        err = text(runner, "n1.err")
        assert lines_with(said(err), "lost node") == [
            "lost node 0 (fake-root): it sent a malformed message (field 'rel' is out of range)"
        ]
        assert "ChildFailedError" in err
        clean(err)

    def test_abort_reason_is_one_line(self, runner: Runner) -> None:
        """An abort whose reason holds newlines and escapes is printed as one line."""
        port = free_port()
        with fake_host(port) as server:
            n1 = agent(runner, static(port, 1, "--rdzv-conf", "timeout=60"), "n1")
            conn = accept(server)
            conn.welcome()
            conn.send(
                {
                    "k": "assign",
                    "group_rank": 1,
                    "hosts": ["fake-root", "node-b"],
                    "master_addr": "127.0.0.1",
                    "master_port": port,
                }
            )
            assert conn.recv(timeout=60) is not None
            conn.send({"k": "abort", "reason": "boom\nE0000 forged line\x1b[31m\ud800"})
            assert finish([n1], timeout=60) == [1]
            conn.close()
        err = text(runner, "n1.err")
        assert "boom\\nE0000 forged line\\x1b[31m\\ud800" in said(err).splitlines()
        clean(err)

    @pytest.mark.parametrize(
        ("assign", "why"),
        [
            ({"group_rank": "1"}, "malformed assignment from the rendezvous host (group rank 1)"),
            ({"group_rank": 5}, "malformed assignment from the rendezvous host (group rank 5)"),
            ({"group_rank": 0}, "malformed assignment from the rendezvous host (group rank 0)"),
            ({"hosts": ["only-one"]}, "malformed assignment from the rendezvous host (host names)"),
            ({"hosts": ["a", "b\nc"]}, "malformed assignment from the rendezvous host (host names)"),
            ({"hosts": "ab"}, "malformed assignment from the rendezvous host (host names)"),
            ({"master_port": 70000}, "malformed assignment from the rendezvous host (master address)"),
            ({"master_port": True}, "malformed assignment from the rendezvous host (master address)"),
            ({"master_addr": ""}, "malformed assignment from the rendezvous host (master address)"),
            ({"k": "welcome"}, "expected an assignment from the rendezvous host, got 'welcome'"),
        ],
    )
    def test_malformed_assignment(self, runner: Runner, assign: dict[str, Any], why: str) -> None:
        """A rendezvous host that knows the secret but assigns nonsense: the agent exits 1 with one line."""
        port = free_port()
        with fake_host(port) as server:
            n1 = agent(runner, static(port, 1, "--rdzv-conf", "timeout=60"), "n1")
            conn = accept(server)
            conn.welcome()
            good = {
                "k": "assign",
                "group_rank": 1,
                "hosts": ["a", "b"],
                "master_addr": "127.0.0.1",
                "master_port": port,
            }
            conn.send({**good, **assign})
            assert finish([n1], timeout=60) == [1]
            conn.close()
        err = text(runner, "n1.err")
        assert err.splitlines()[-1] == f"fakerun: error: the rendezvous failed: {why}"
        clean(err)
        assert "worker started" not in text(runner, "n1.out")

    def test_host_without_the_secret(self, runner: Runner) -> None:
        """A 'host' whose challenge is not ours (a non-hex nonce): the agent exits 1 with one line."""
        port = free_port()
        with fake_host(port) as server:
            n1 = agent(runner, static(port, 1, "--rdzv-conf", "timeout=60"), "n1")
            conn = accept(server)
            conn.send({"k": "challenge", "proto": "fakerun/1", "nonce": "\u00e9" * 32})
            assert finish([n1], timeout=60) == [1]
            conn.close()
        err = text(runner, "n1.err")
        assert err.splitlines()[-1] == "fakerun: error: the rendezvous failed: malformed challenge"
        clean(err)


class TestAgents:
    """Real agents that do not belong: late ones, other jobs; and what a node says when the root is lost."""

    def test_late_agent_is_told_why(self, runner: Runner) -> None:
        """A third agent for a two-node job: refused with the reason, exits 1; the job completes."""
        port = free_port()
        steps = ["--fake-max-steps", "200", "--fake-speed", "20"]
        n0 = agent(runner, static(port, 0, *steps), "n0")
        n1 = agent(runner, static(port, 1, *steps), "n1")
        wait_for("training", training(runner, "n0"), [n0, n1])
        late = agent(runner, static(port, 1, *steps), "late")
        assert finish([late], timeout=60) == [1]
        assert n0.poll() is None and n1.poll() is None  # refused while the job runs
        assert text(runner, "late.err").splitlines()[-1] == (
            "fakerun: error: the rendezvous failed: the rendezvous host refused this agent: "
            "the job's 2 nodes have all joined and are running"
        )
        assert finish([n0, n1]) == [0, 0]
        refused = lines_with(text(runner, "n0.err"), "refused a connection")
        assert len(refused) == 1 and refused[0].endswith("the job's 2 nodes have all joined and are running")

    @pytest.mark.parametrize(
        ("first", "second", "why"),
        [
            (
                ["--fake-model", "llama3-8b", "train.py"],
                ["--fake-model", "gpt2", "train.py"],
                "runs gpt2-124m on h100, this job runs llama3-8b on h100",
            ),
            (
                ["train.py", "--model_name_or_path", "meta-llama/Meta-Llama-3-8B"],
                ["train.py", "--model_name_or_path", "gpt2"],
                "runs gpt2-124m on h100, this job runs llama3-8b on h100",
            ),
            (
                ["--fake-model", "gpt2", "train.py", "--per_device_train_batch_size", "4"],
                ["--fake-model", "gpt2", "train.py", "--per_device_train_batch_size", "8"],
                "runs gpt2-124m on h100 with other settings than this job",
            ),
            (
                ["--fake-model", "gpt2", "train.py"],
                ["--fake-exec", "train.py"],
                "runs the script itself (--fake-exec), this job runs gpt2-124m on h100: "
                "give --fake-exec to every agent or to none",
            ),
        ],
        ids=["fake-model", "script-hints", "batch-size", "fake-exec"],
    )
    def test_agents_of_different_jobs(
        self, runner: Runner, first: list[str], second: list[str], why: str
    ) -> None:
        """The second agent is refused saying why and exits 1; node 0 waits on and times out as torchrun."""
        port = free_port()
        common = ["--nnodes", "2", "--nproc-per-node", "1", "--master-port", str(port), "--fake-speed", "200"]
        n0 = agent(runner, [*common, "--node-rank", "0", "--rdzv-conf", "timeout=5", *first], "n0")
        wait_for("node 0 to listen", lambda: listening(port), [n0])
        n1 = agent(runner, [*common, "--node-rank", "1", *second], "n1")
        assert finish([n1], timeout=60) == [1]
        last = text(runner, "n1.err").splitlines()[-1]
        assert last.startswith(
            "fakerun: error: the rendezvous failed: the rendezvous host refused this agent: " + why
        ), last
        assert finish([n0], timeout=60) == [1]
        err = text(runner, "n0.err")
        assert len(lines_with(err, why)) == 1
        assert err.rstrip().endswith("1/2 clients joined.")
        clean(err)

    def test_lost_root_is_node_0(self, runner: Runner) -> None:
        """SIGKILL node 0's agent mid-run: node 1 says it lost node 0 and its host, not node -1."""
        port = free_port()
        steps = ["--fake-max-steps", "200", "--fake-speed", "10"]
        n0 = agent(runner, static(port, 0, *steps), "n0")
        n1 = agent(runner, static(port, 1, *steps), "n1")
        wait_for("training", training(runner, "n1"), [n0, n1])
        n0.kill()
        assert finish([n0, n1], timeout=60) == [-9, 1]
        lost = lines_with(said(text(runner, "n1.err")), "lost node")
        assert len(lost) == 1 and lost[0].startswith("lost node 0 ("), lost
        assert "-1" not in lost[0]


class TestAddresses:
    """Values that pass the command line's checks but cannot work, and where the port is offered."""

    @pytest.mark.parametrize("value", ["nan", "inf", "-5", "0"])
    @pytest.mark.parametrize("form", ["static", "c10d"])
    def test_timeout_not_a_duration(self, runner: Runner, form: str, value: str) -> None:
        """--rdzv-conf timeout=nan (inf, negative, 0): one line, exit 1, nothing started."""
        port = str(free_port())
        if form == "static":
            args = ["--node-rank", "0", "--master-port", port, "--rdzv-conf", f"timeout={value}"]
            key = "timeout"
        else:
            args = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}"]
            args += ["--rdzv-conf", f"join_timeout={value}"]
            key = "join_timeout"
        res = runner.run(["--nnodes", "2", *FAST, *args, "train.py"])
        assert res.code == 1
        assert res.stderr.splitlines()[-1] == (
            f"fakerun: error: --rdzv-conf: {key}={value} is not a number of seconds > 0"
        )
        clean(res.stderr)
        assert "worker started" not in res.stdout

    @pytest.mark.parametrize(
        "args",
        [
            ["--rdzv-backend", "c10d", "--rdzv-endpoint", "a" * 64 + ":29500"],
            ["--node-rank", "1", "--master-addr", "a" * 64, "--master-port", "29500"],
            ["--node-rank", "1", "--master-addr", "a..b", "--master-port", "29500"],
        ],
        ids=["c10d-label-64", "static-label-64", "empty-label"],
    )
    def test_host_name_not_resolvable(self, runner: Runner, args: list[str]) -> None:
        """A host label over 63 characters (or an empty one): one line, exit 1."""
        res = runner.run(["--nnodes", "2", *FAST, *args, "train.py"])
        assert res.code == 1
        last = res.stderr.splitlines()[-1]
        assert last.startswith("fakerun: error: --") and "is not a valid host name (label" in last, last
        clean(res.stderr)

    @pytest.mark.parametrize(
        ("addr", "bound"),
        [("127.0.0.1", "0100007F"), ("::1", "00000000000000000000000001000000"), ("local", "00000000")],
        ids=["loopback", "loopback-v6", "interface"],
    )
    def test_where_node_0_listens(self, runner: Runner, addr: str, bound: str) -> None:
        """A loopback master address: node 0's port is bound to loopback only; else to every interface."""
        if addr == "local":
            addr = own_address()
        port = free_port()
        args = ["--nnodes", "2", "--node-rank", "0", "--master-addr", addr, "--master-port", str(port)]
        n0 = agent(runner, [*args, *FAST, "--rdzv-conf", "timeout=30", "train.py"], "n0")
        try:
            wait_for("node 0 to listen", lambda: listening(port), [n0])
            assert bound_address(port) == bound  # as /proc/net/tcp{,6} write addresses
        finally:
            n0.terminate()
            finish([n0])

    def test_endpoint_host_torch_refuses(self, runner: Runner) -> None:
        """An endpoint whose host torch's parser refuses (a space): torch's ValueError line, exit 1."""
        args = [
            "--nnodes",
            "2",
            *FAST,
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            "gpu 1:29500",
            "train.py",
        ]
        res = runner.run(args)
        assert res.code == 1
        assert res.stderr.splitlines()[-1] == (
            "ValueError: The hostname of the rendezvous endpoint 'gpu 1:29500' must be a dot-separated list "
            "of labels, an IPv4 address, or an IPv6 address."
        )
        clean(res.stderr)

    def test_default_secret_beyond_loopback_warns(self, runner: Runner) -> None:
        """No FAKERUN_SECRET, a master address off this machine: one warning line; none with a secret."""
        port = str(free_port())
        args = ["--nnodes", "2", "--node-rank", "1", "--master-addr", "192.0.2.1", "--master-port", port]
        args += [*FAST, "--rdzv-conf", "timeout=1", "train.py"]
        res = runner.run(args)
        warning = lines_with(said(res.stderr), "FAKERUN_SECRET")
        assert warning == [
            "FAKERUN_SECRET is not set, so this job's secret follows from its run id "
            f"'none': anyone who can reach 192.0.2.1:{port} can join the job or feed it steps; "
            "set the same FAKERUN_SECRET on every node"
        ]
        assert res.code == 1
        with_secret = runner.run(args, FAKERUN_SECRET="s")
        assert "FAKERUN_SECRET" not in with_secret.stderr and with_secret.code == 1


def bound_address(port: int) -> str | None:
    """The address (hex, as in /proc/net/tcp and tcp6) a listening socket on `port` is bound to."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:
                    return address
    return None


def own_address() -> str:
    """An IPv4 address of this machine that is not loopback (the test is skipped without one)."""
    for nic in psutil.net_if_addrs().values():
        for a in nic:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return str(a.address)
    pytest.skip("this machine has no IPv4 address besides loopback")
