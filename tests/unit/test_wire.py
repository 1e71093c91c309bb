"""The agents' wire protocol and its checks: whatever arrives is a message or one WireError, never a crash.

Hypothesis feeds the decoder random bytes, random and deeply nested JSON and huge announced lengths; the
handshake and every check of a message from another agent get random JSON values. The gate is driven with
real loopback sockets and an explicit clock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import re
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakerun.launcher import cluster, rendezvous
from fakerun.launcher.elastic import MeetError, RoundRules, conf_seconds
from fakerun.launcher.meet import _check_host, _loopback, _secret_warning
from fakerun.launcher.peers import EVICT_AFTER_S, HANDSHAKE_TIMEOUT_S, Gate, Peer, Pending, Refusals
from fakerun.launcher.wire import (
    MAX_DEPTH,
    MAX_FRAME,
    MAX_HANDSHAKE_FRAME,
    FrameDecoder,
    WireError,
    answer,
    challenge,
    decode,
    encode,
    shown,
    verify_answer,
    verify_welcome,
)

# Any JSON value, nested a few levels: what a peer could send inside a well-formed frame.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)
# Message-like objects: a "k" and random fields, some with the names our messages use.
FIELDS = ["k", "s", "c", "tel", "pid", "items", "now", "rel", "comm", "ar_ms", "stop", "t0", "reason"]
messages = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), json_values, max_size=8)


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def feed_all(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[dict[str, Any]]:
    """Feeds `data` in pieces cut at `cuts`; returns the messages, or raises the decoder's error."""
    out: list[dict[str, Any]] = []
    start = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        out += decoder.feed(data[start:cut])
        start = max(start, cut)
    return out


class TestDecoderFuzz:
    """FrameDecoder and decode(): a message or WireError, for any input."""

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=4))
    def test_random_bytes(self, data: bytes, cuts: list[int]) -> None:
        """Random bytes, fed in random pieces."""
        try:
            out = feed_all(FrameDecoder(), data, cuts)
        except WireError:
            return
        assert all(isinstance(m, dict) and isinstance(m["k"], str) for m in out)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=2000))
    def test_random_frame_bodies(self, body: bytes) -> None:
        """Any body in a well-formed frame, before and after authentication."""
        for limit in (MAX_HANDSHAKE_FRAME, MAX_FRAME):
            try:
                out = FrameDecoder(limit).feed(frame(body))
            except WireError:
                continue
            assert len(out) == 1 and isinstance(out[0]["k"], str)

    @settings(max_examples=300, deadline=None)
    @given(json_values)
    def test_random_json(self, value: object) -> None:
        """Any JSON value: accepted exactly when it is an object with a string "k"."""
        body = json.dumps(value).encode()
        try:
            out = FrameDecoder(MAX_FRAME).feed(frame(body))
        except WireError:
            assert not (isinstance(value, dict) and isinstance(value.get("k"), str))
            return
        assert out == [value]

    @settings(max_examples=200, deadline=None)
    @given(
        st.integers(1, 20_000),
        st.sampled_from(["[", "{"]),
        st.booleans(),
        st.sampled_from([MAX_HANDSHAKE_FRAME, MAX_FRAME]),
    )
    def test_nested(self, levels: int, opener: str, closed: bool, limit: int) -> None:
        """Nesting of any depth, closed or not, inside a message object: refused past MAX_DEPTH."""
        inner = opener * levels
        if closed:
            inner += ("]" if opener == "[" else "}") * levels
        if opener == "{":
            inner = inner.replace("{", '{"a":')
            inner = inner.replace(":}", ":0}", 1) if closed else inner
        body = ('{"k":"x","v":' + inner + "}").encode()
        try:
            out = FrameDecoder(limit).feed(frame(body))
        except WireError:
            return
        assert depth(out[0]) <= MAX_DEPTH

    @pytest.mark.parametrize("levels", [MAX_DEPTH - 1, MAX_DEPTH, 999, 5000, 100_000])
    def test_depth_limit(self, levels: int) -> None:
        """MAX_DEPTH levels pass; one more, or enough to exhaust the parser's recursion, is refused."""
        body = ('{"k":"x","v":' + "[" * (levels - 1) + "]" * (levels - 1) + "}").encode()
        if levels <= MAX_DEPTH:
            assert depth(decode(body)) == levels
        else:
            with pytest.raises(WireError, match="nests deeper"):
                decode(body)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(0, 2**32 - 1), st.binary(max_size=64))
    def test_announced_lengths(self, size: int, tail: bytes) -> None:
        """Any announced length: over the limit is refused at once, without waiting for the body."""
        decoder = FrameDecoder()
        data = struct.pack(">I", size) + tail
        if size > MAX_HANDSHAKE_FRAME:
            with pytest.raises(WireError, match=f"frame of {size} bytes announced"):
                decoder.feed(data)
            return
        with contextlib.suppress(WireError):
            decoder.feed(data)

    def test_limit_rises_after_authentication(self) -> None:
        """A 10 kB frame: refused during the handshake, accepted once the peer has proved the secret."""
        body = json.dumps({"k": "x", "pad": "a" * 10_000}).encode()
        with pytest.raises(WireError):
            FrameDecoder().feed(frame(body))
        assert FrameDecoder(MAX_FRAME).feed(frame(body))[0]["k"] == "x"

    @pytest.mark.parametrize(
        "body",
        [
            b'{"k":NaN}',
            b'{"k":"x","v":Infinity}',
            b'{"k":"x","v":-Infinity}',
            b'{"k":"x","v":' + b"9" * 5000 + b"}",
        ],
    )
    def test_non_json_numbers(self, body: bytes) -> None:
        """NaN, infinities and integers beyond Python's digit limit are not JSON here."""
        with pytest.raises(WireError, match="not JSON"):
            decode(body)

    def test_encode_refuses_what_the_peer_would(self) -> None:
        """Our own messages are finite and bounded: a NaN or an oversize message is a WireError."""
        with pytest.raises(WireError):
            encode({"k": "x", "v": float("nan")})
        with pytest.raises(WireError):
            encode({"k": "x", "v": "a" * MAX_FRAME})
        assert decode(encode({"k": "x", "v": [1, 2.5, "é"]})[4:]) == {"k": "x", "v": [1, 2.5, "é"]}


class TestHandshake:
    """The HMAC handshake: any reply to any message is a proof or a WireError."""

    @settings(max_examples=300, deadline=None)
    @given(messages)
    def test_any_message_at_any_step(self, message: dict[str, Any]) -> None:
        secret = b"s"
        sent = challenge()
        for step in (
            lambda: answer(secret, message),
            lambda: verify_answer(secret, sent, message),
            lambda: verify_welcome(secret, sent, message),
        ):
            with contextlib.suppress(WireError):
                step()

    @pytest.mark.parametrize(
        "field",
        [{"mac": "é" * 64}, {"nonce": "\ud800" * 32}, {"mac": "A" * 64}, {"nonce": 12}, {"mac": None}],
    )
    def test_non_hex_fields(self, field: dict[str, Any]) -> None:
        """Fields hmac.compare_digest or the MAC cannot take (non-ASCII, surrogates) are refused first."""
        sent = challenge()
        reply = {**answer(b"s", sent), **field}
        with pytest.raises(WireError, match="expected an authentication answer"):
            verify_answer(b"s", sent, reply)

    def test_round_trip_and_wrong_secret(self) -> None:
        sent = challenge()
        reply = answer(b"right", sent)
        verify_welcome(b"right", reply, verify_answer(b"right", sent, reply))
        with pytest.raises(WireError, match="wrong secret"):
            verify_answer(b"wrong", sent, reply)


class TestMessageChecks:
    """Every field another agent sends is checked: random content gives a clean message or a WireError."""

    @settings(max_examples=300, deadline=None)
    @given(messages, st.integers(0, 3))
    def test_batches(self, message: dict[str, Any], node: int) -> None:
        try:
            items = cluster._batch_items(message, node, 2)
        except WireError:
            return
        for rank, report in items:
            assert node * 2 <= rank < node * 2 + 2
            assert report["k"] in ("ready", "step")

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(json_values, messages), max_size=3), json_values)
    def test_batch_items(self, items: list[tuple[object, dict[str, Any]]], now: object) -> None:
        """Random items inside otherwise well-formed batches and replies."""
        with_items = [[rank, msg] for rank, msg in items]
        for check in (
            lambda: cluster._batch_items({"k": "batch", "items": with_items}, 0, 4),
            lambda: cluster._reply_items(
                {"k": "replies", "now": now, "items": with_items}, frozenset({0, 1}), 5.0
            ),
        ):
            with contextlib.suppress(WireError):
                check()

    @settings(max_examples=300, deadline=None)
    @given(messages)
    def test_reports(self, report: dict[str, Any]) -> None:
        try:
            clean = cluster._report(report)
        except WireError:
            return
        assert set(clean) <= {"k", "pid", "s", "c", "tel"}
        if "tel" in clean:
            assert all(isinstance(v, float) for v in clean["tel"][:-1])

    @pytest.mark.parametrize(
        "report",
        [
            {"k": "step", "s": 10**400, "c": 0.1},
            {"k": "step", "s": 1, "c": 10**400},
            {"k": "step", "s": 1, "c": -1.0},
            {"k": "step", "s": True, "c": 0.1},
            {"k": "ready", "pid": 0},
            {"k": "ready", "pid": 7, "tel": [1, 2, 3, 4, 5, 6, "boiling"]},
            {"k": "ready", "pid": 7, "tel": [101, 2, 3, 4, 5, 6, "train"]},
            {"k": "ready", "pid": 7, "tel": [[], 2, 3, 4, 5, 6, "train"]},
            {"k": "ready", "pid": 7, "tel": [1, 2, 3, 4, 5, 6, ["train"]]},
            {"k": "phase"},
        ],
    )
    def test_bad_reports(self, report: dict[str, Any]) -> None:
        with pytest.raises(WireError):
            cluster._report(report)

    def test_reply_timing_passes_checked(self) -> None:
        """The next step's compute timing reaches a remote rank as floats, or the reply is refused."""
        reply = {"k": "step", "s": 3, "rel": 1.0, "comm": 0.1, "ar_ms": 1.0, "stop": False}
        [(_, out)] = cluster._reply_items(
            {"now": 1.0, "items": [[1, {**reply, "next": [5, 2, 1.5, 0.25]}]]}, frozenset({1}), 1.0
        )
        assert out["next"] == [5, 2.0, 1.5, 0.25] and all(isinstance(v, float) for v in out["next"][1:])
        for bad in ([5, 2.0, 1.5], [-1, 2.0, 1.5, 0.2], [5, 2.0, float("nan"), 0.2], [5, "2", 1.5, 0.2], {}):
            with pytest.raises(WireError):
                cluster._reply_items(
                    {"now": 1.0, "items": [[1, {**reply, "next": bad}]]}, frozenset({1}), 1.0
                )

    def test_reply_release_moves_to_our_clock(self) -> None:
        """A release 2 s ahead of the sender's clock is 2 s ahead of ours; a day and more is refused."""
        reply = {"k": "step", "s": 3, "rel": 1002.0, "comm": 0.1, "ar_ms": 1.0, "stop": False, "x": 1}
        out = cluster._reply_items({"now": 1000.0, "items": [[1, reply]]}, frozenset({1}), 50.0)
        want = {"k": "step", "s": 3, "rel": 52.0, "comm": 0.1, "ar_ms": 1.0, "stop": False, "exit": False}
        assert out == [(1, want)]
        # Only a real True exits (Megatron's --exit-interval), and an abort keeps its checked fields only.
        abort = {"k": "abort", "why": "timeout", "s": 7, "culprit": 2, "node": 1, "reason": "x\n", "y": 0}
        ((_, got),) = cluster._reply_items({"now": 0.0, "items": [[1, abort]]}, frozenset({1}), 0.0)
        assert got == {"k": "abort", "why": "timeout", "s": 7, "culprit": 2, "node": 1, "reason": "x\\n"}
        for bad in ({"why": "boom"}, {"s": -1}, {"culprit": "2"}, {"node": 1 << 20}):
            with pytest.raises(WireError):
                cluster._reply_items({"now": 0.0, "items": [[1, {**abort, **bad}]]}, frozenset({1}), 0.0)
        with pytest.raises(WireError, match="'rel' is out of range"):
            cluster._reply_items({"now": 0.0, "items": [[1, {**reply, "rel": 1e9}]]}, frozenset({1}), 0.0)
        with pytest.raises(WireError, match="not on this node"):
            cluster._reply_items({"now": 0.0, "items": [[[1], reply]]}, frozenset({1}), 0.0)

    @settings(max_examples=300, deadline=None)
    @given(messages, st.sampled_from([None, 1, 2]))
    def test_assignments(self, message: dict[str, Any], node_rank: int | None) -> None:
        me = rendezvous.Join(node_rank, "h", 1, "none")
        try:
            got = rendezvous._parse_assign(message, me, 3)
        except WireError:
            return
        assert 1 <= got.group_rank < 3 and len(got.hosts) == 3 and 0 < got.master_port < 65536

    @settings(max_examples=300, deadline=None)
    @given(messages)
    def test_joins(self, message: dict[str, Any]) -> None:
        me = rendezvous.Join(0, "h", 1, "none", "gpt2-124m on h100", "d")
        try:
            join = rendezvous.check_join({**message, "k": "join"}, me, [(me, None)], 2)
        except WireError:
            return
        assert join.node_rank in (None, 1) and join.host.isprintable()

    def test_shown_is_one_printable_line(self) -> None:
        assert shown("a\nb\x1b[31m\ud800") == "a\\nb\\x1b[31m\\ud800"
        assert len(shown("x" * 1000)) == 200


class TestRefusals:
    """Refusal lines: one per kind per window, at most a few, and a count of the rest."""

    def test_repeats_are_counted(self) -> None:
        lines: list[str] = []
        log = Refusals(lines.append, window_s=30.0, burst=2)
        for i in range(10):
            log.refuse(f"10.0.0.1:{4000 + i}", "wrong secret", now=float(i))
        log.refuse("10.0.0.2:1", "garbage", now=10.0)
        log.refuse("10.0.0.3:1", "garbage", now=11.0)  # a third kind: over the window's lines
        assert messages_of(lines) == [
            "refused a connection from 10.0.0.1:4000: wrong secret",
            "refused a connection from 10.0.0.2:1: garbage",
        ]
        assert re.match(r"W\d{4} [\d:.]+ \d+ fakerun/launcher/peers\.py:\d+\] refused", lines[0]), lines[0]
        assert log.deadline() == 30.0
        log.flush(29.0)
        assert len(lines) == 2
        log.flush(30.0)
        assert messages_of(lines)[2] == (
            "refused 10 more connections in the last 30 s (most from 10.0.0.1: wrong secret)"
        )
        log.refuse("10.0.0.1:5000", "wrong secret", now=31.0)  # a new window: shown again
        assert lines[3].endswith("10.0.0.1:5000: wrong secret") and log.deadline() is None

    def test_final_flush(self) -> None:
        lines: list[str] = []
        log = Refusals(lines.append)
        log.refuse("h:1", "x", now=0.0)
        log.refuse("h:2", "x", now=2.5)
        log.flush(4.0, final=True)
        assert messages_of(lines)[-1] == "refused 1 more connection in the last 4 s (most from h: x)"


@pytest.fixture
def port_gate() -> Iterator[tuple[Gate, selectors.BaseSelector, int, list[str]]]:
    """A gate with a cap of 2 on a loopback port, attached to a selector; its lines."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    lines: list[str] = []
    gate = Gate(listener, b"secret", lines.append, cap=2)
    selector = selectors.DefaultSelector()
    gate.attach(selector)
    yield gate, selector, listener.getsockname()[1], lines
    gate.close()
    selector.close()


def messages_of(lines: list[str]) -> list[str]:
    """The messages of glog notice lines (`W1205 07:40:00.123000 PID fakerun/...py:N] message`)."""
    return [line.split("] ", 1)[1] for line in lines]


def ready(selector: selectors.BaseSelector) -> set[int]:
    return {int(key.fd) for key, _ in selector.select(0.5)}


class TestGate:
    """The port's gate with real sockets: cap, eviction, deadline, admission."""

    def test_cap_pauses_then_evicts_the_oldest(
        self, port_gate: tuple[Gate, selectors.BaseSelector, int, list[str]]
    ) -> None:
        gate, selector, port, lines = port_gate
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        try:
            assert gate.fileno() in ready(selector)
            gate.pump(gate.fileno(), now=100.0)
            assert len(gate.pending) == 2
            # Full of young connections: the port is not watched (else the loop would spin) until the
            # oldest has had EVICT_AFTER_S.
            assert gate.fileno() not in ready(selector)
            assert gate.deadline() == 100.0 + EVICT_AFTER_S
            gate.tick(100.0 + EVICT_AFTER_S)
            assert gate.fileno() in ready(selector)
            gate.pump(gate.fileno(), now=100.0 + EVICT_AFTER_S)
            assert len(gate.pending) == 2
            [line] = messages_of(lines)
            assert line.startswith("refused a connection from 127.0.0.1:")
            assert line.endswith(": too many connections waiting for a handshake")
        finally:
            for c in clients:
                c.close()

    def test_handshake_deadline(self, port_gate: tuple[Gate, selectors.BaseSelector, int, list[str]]) -> None:
        gate, selector, port, lines = port_gate
        with socket.create_connection(("127.0.0.1", port)) as client:
            ready(selector)
            gate.pump(gate.fileno(), now=0.0)
            assert len(gate.pending) == 1
            gate.tick(HANDSHAKE_TIMEOUT_S + 0.1)
            assert not gate.pending and lines[0].endswith(f"no handshake in {HANDSHAKE_TIMEOUT_S:.0f} s")
            client.settimeout(5)
            assert client.recv(4096)  # the challenge
            assert client.recv(4096) == b""  # then closed, without a reason: an agent would retry

    def test_admission_after_the_handshake(
        self, port_gate: tuple[Gate, selectors.BaseSelector, int, list[str]]
    ) -> None:
        gate, selector, port, lines = port_gate
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.settimeout(5)
            ready(selector)
            gate.pump(gate.fileno(), now=0.0)
            decoder = FrameDecoder()
            sent = answer(b"secret", decoder.feed(client.recv(4096))[0])
            client.sendall(encode(sent))
            fd = next(iter(gate.pending))
            ready(selector)
            assert gate.pump(fd, now=0.1) == []
            verify_welcome(b"secret", sent, decoder.feed(client.recv(4096))[0])
            client.sendall(encode({"k": "join", "pad": "a" * 8000}))  # past the handshake's frame limit
            ready(selector)
            [(p, message)] = gate.pump(fd, now=0.2)
            assert message["k"] == "join" and p.authed
            peer = gate.admit(p)
            assert not gate.pending and lines == []
            peer.close()

    def test_out_of_fds_pauses_accepting(self) -> None:
        """accept() failing with EMFILE: one line, the port unwatched for a while, no exception."""

        class NoFds:
            def __init__(self) -> None:
                self.sock = socket.create_server(("127.0.0.1", 0))

            def fileno(self) -> int:
                return self.sock.fileno()

            def accept(self) -> tuple[socket.socket, Any]:
                raise OSError(errno.EMFILE, "Too many open files")

            def close(self) -> None:
                self.sock.close()

        lines: list[str] = []
        listener = NoFds()
        gate = Gate(listener, b"s", lines.append)  # type: ignore[arg-type]
        selector = selectors.DefaultSelector()
        gate.attach(selector)
        try:
            gate.pump(gate.fileno(), now=0.0)
            gate.pump(gate.fileno(), now=0.1)
            assert messages_of(lines) == [
                "cannot accept connections: Too many open files; waiting connections are refused"
            ]
            assert not selector.get_map()  # the port is not watched during the pause
            gate.tick(5.0)
            assert gate.fileno() in selector.get_map()
        finally:
            gate.close()
            selector.close()


class TestAddresses:
    """The rendezvous options' values that pass the command line's checks."""

    @pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-5", "0"])
    def test_timeouts(self, value: str) -> None:
        with pytest.raises(MeetError, match=f"timeout={value} is not a number of seconds > 0"):
            conf_seconds({"timeout": value}, "timeout", 900.0)
        assert conf_seconds({}, "timeout", 900.0) == 900.0
        assert conf_seconds({"timeout": "2.5"}, "timeout", 1) == 2.5

    @pytest.mark.parametrize("host", ["a" * 64, "a..b", "x." + "b" * 70 + ".org"])
    def test_host_names(self, host: str) -> None:
        with pytest.raises(MeetError, match="is not a valid host name"):
            _check_host(host, "--master-addr")
        _check_host("a" * 63, "--master-addr")

    def test_loopback(self) -> None:
        assert _loopback("127.0.0.1") == "127.0.0.1" and _loopback("127.0.0.5") == "127.0.0.5"
        assert _loopback("192.0.2.1") is None and _loopback("a" * 64) is None

    def test_secret_warning(self) -> None:
        assert _secret_warning({}, "127.0.0.1", 29500, "none") is None
        assert _secret_warning({"FAKERUN_SECRET": "x"}, "10.0.0.1", 29500, "none") is None
        warning = _secret_warning({}, "10.0.0.1", 29500, "none")
        assert warning is not None and "\n" not in warning and "10.0.0.1:29500" in warning


class TestJobEpoch:
    """Agents agree on when the job started: an age on the wire, never a monotonic time (hosts differ)."""

    JOIN: ClassVar[dict[str, Any]] = {
        "k": "join",
        "node_rank": 1,
        "host": "b",
        "nproc": 2,
        "run_id": "r",
        "job": "",
        "job_digest": "",
    }
    ASSIGN: ClassVar[dict[str, Any]] = {
        "k": "assign",
        "group_rank": 1,
        "hosts": ["a", "b"],
        "master_addr": "127.0.0.1",
        "master_port": 29500,
    }

    def test_join_age_becomes_a_start_on_our_clock(self) -> None:
        before = time.monotonic()
        join = rendezvous._parse_join({**self.JOIN, "age": 30.0})
        assert join.started is not None and before - 30.0 <= join.started <= time.monotonic() - 30.0
        assert rendezvous.Join(None, "a", 1, "r", started=time.monotonic() - 5).message()["age"] >= 5.0

    @pytest.mark.parametrize("age", [-1.0, float("nan"), float("inf"), 1e12, "3", True, None])
    def test_bad_ages_are_refused(self, age: object) -> None:
        with pytest.raises(WireError, match=r"malformed join message \(age\)"):
            rendezvous._parse_join({**self.JOIN, "age": age})
        me = rendezvous.Join(1, "b", 2, "r")
        with pytest.raises(WireError, match=r"\(epoch\)"):
            rendezvous._parse_assign({**self.ASSIGN, "epoch_age": age}, me, 2)

    def test_the_first_agent_sets_the_epoch(self) -> None:
        """The host started 2 s ago, the other agent 10 s ago: the job's clock started 10 s ago."""
        now = time.monotonic()
        host = rendezvous.Join(0, "a", 2, "r", started=now - 2.0)
        other = rendezvous.Join(1, "b", 2, "r", started=now - 10.0)
        assignment, _ = rendezvous._assign([(host, None), (other, None)], "127.0.0.1", 29500)
        assert 10.0 <= assignment.epoch_age < 11.0


class VirtualTime:
    """rendezvous.py's clock and selector for a host waiting alone: a wait that no socket ends passes at
    once, the clock moving on by the time the host asked to wait."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def DefaultSelector(self) -> selectors.BaseSelector:  # the name selectors' has
        clock = self

        class Selector(selectors.DefaultSelector):
            def select(self, timeout: float | None = None) -> list[Any]:
                events = super().select(0)
                if not events and timeout:
                    clock.now += timeout
                return events

        return Selector()


class TestFirstRendezvous:
    """Node 0 hosts the job's first round by torch's rules: at once with MAX agents; an elastic job's with
    MIN once the last call after the latest join has passed; short of MIN, RendezvousTimeoutError."""

    ME = rendezvous.Join(None, "node0", 1, "el", "gpt2-124m on h100", "d")

    @pytest.fixture
    def gate(self) -> Iterator[Gate]:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        gate = Gate(listener, b"secret", lambda line: None)
        yield gate
        gate.close()

    def host(self, gate: Gate, rules: RoundRules) -> tuple[rendezvous.Assignment, dict[int, Peer]]:
        return rendezvous.host_rendezvous(gate, self.ME, rules=rules, master_addr="node0", master_port=29500)

    def test_alone_at_min_nodes_after_the_last_call(
        self, gate: Gate, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        clock = VirtualTime()
        monkeypatch.setattr(rendezvous, "time", clock)
        monkeypatch.setattr(rendezvous, "selectors", clock)
        assignment, peers = self.host(gate, RoundRules(1, 2, join_timeout_s=600.0, last_call_timeout_s=30.0))
        assert (assignment.group_rank, assignment.hosts, peers) == (0, ("node0",), {})
        assert clock.now == 1000.0 + 30.0  # torch's last call after the host's own join, not a moment less

    def test_short_of_min_nodes_it_times_out(self, gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
        clock = VirtualTime()
        monkeypatch.setattr(rendezvous, "time", clock)
        monkeypatch.setattr(rendezvous, "selectors", clock)
        with pytest.raises(rendezvous.RendezvousTimeout) as caught:
            self.host(gate, RoundRules(2, 3, join_timeout_s=60.0, last_call_timeout_s=30.0))
        assert (caught.value.joined, caught.value.expected) == (1, 3)
        assert clock.now == 1000.0 + 60.0

    def test_a_fixed_size_job_waits_for_every_node(self, gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
        clock = VirtualTime()
        monkeypatch.setattr(rendezvous, "time", clock)
        monkeypatch.setattr(rendezvous, "selectors", clock)
        with pytest.raises(rendezvous.RendezvousTimeout) as caught:
            self.host(gate, RoundRules(2, 2, join_timeout_s=900.0))
        assert (caught.value.joined, caught.value.expected) == (1, 2)
        assert clock.now == 1000.0 + 900.0

    def test_max_nodes_complete_it_at_once(self, gate: Gate) -> None:
        """A second agent of 1:2 joins: no last call (an hour here: the test would see one node)."""
        port = gate.listener.getsockname()[1]
        joined: list[rendezvous.Assignment] = []
        other = dataclasses.replace(self.ME, host="node1")

        def join() -> None:
            assignment, peer = rendezvous.join_rendezvous(
                "127.0.0.1", port, other, nnodes=2, secret=b"secret", timeout_s=60.0, min_nodes=1
            )
            joined.append(assignment)
            peer.close()

        thread = threading.Thread(target=join)
        thread.start()
        try:
            assignment, peers = self.host(
                gate, RoundRules(1, 2, join_timeout_s=3600.0, last_call_timeout_s=3600.0)
            )
        finally:
            thread.join(60)
        assert assignment.hosts == ("node0", "node1") and list(peers) == [1]
        assert [(a.group_rank, a.hosts) for a in joined] == [(1, ("node0", "node1"))]
        rendezvous.close_all(peers)


@contextlib.contextmanager
def linked(nnodes: int) -> Iterator[list[cluster.ClusterLink]]:
    """Node 0's link and each other node's, joined by socket pairs (a root and its spokes), started."""
    links = [
        cluster.ClusterLink(selectors.DefaultSelector(), g, frozenset({g}), 1, lambda line: None)
        for g in range(nnodes)
    ]
    for g in range(1, nnodes):
        ours, theirs = socket.socketpair()
        links[0].peers[g] = rendezvous_peer(ours, g)
        links[g].peers[0] = rendezvous_peer(theirs, 0)
    for link in links:
        link.hosts = tuple(f"node{g}" for g in range(nnodes))
        link.start()
    try:
        yield links
    finally:
        for link in links:
            link.close()
            link.selector.close()


def rendezvous_peer(sock: socket.socket, group_rank: int) -> Peer:
    sock.setblocking(False)
    peer = Peer(sock, f"node{group_rank}", group_rank=group_rank, host=f"node{group_rank}")
    peer.authenticated()
    return peer


def deliver(links: list[cluster.ClusterLink]) -> None:
    """Hands every link what the others sent it (socket pairs deliver at once)."""
    for link in links:
        for peer in list(link.peers.values()):
            link.pump(peer.fileno())


class TestRestartRound:
    """A restart is a round over the run's connections: it completes when every agent rejoined, and every
    node learns node 0's resume step; a malformed `rejoin` or `round` ends that connection (job lost)."""

    def test_every_agent_rejoins_then_all_resume_from_node_0s_step(self) -> None:
        resumed: dict[int, int | None] = {}

        def on_round(node: int) -> cluster.NewRound:
            def begin(step: int | None, members: cluster.Membership | None) -> int:
                assert members is None  # every node is in the round
                resumed[node] = step
                return 6 if step is None else step  # node 0's newest complete save: step 6

            return begin

        with linked(3) as links:
            for g, link in enumerate(links):
                link.new_round = on_round(g)
            links[0].report_lost_rank(0)
            deliver(links)
            assert all(link.lost is not None for link in links)
            links[1].rejoin()
            links[0].rejoin()
            deliver(links)
            # Node 2 has not stopped its workers yet: nobody may start attempt 1.
            assert not any(link.round_complete() for link in links[:2]) and resumed == {}
            links[2].rejoin()
            deliver(links)
            deliver(links)
            assert resumed == {0: None, 1: 6, 2: 6}
            assert all(link.round_complete() and link.lost is None for link in links)

    @pytest.mark.parametrize(
        "message",
        [
            {"k": "round", "round": 2, "resume": 3},  # not the round this node rejoined for
            {"k": "round", "round": True, "resume": 3},
            {"k": "round", "round": 0, "resume": 3},
            {"k": "round", "round": 1, "resume": -1},
            {"k": "round", "round": 1, "resume": 10**400},
            {"k": "round", "round": 1},
            {"k": "rejoin", "round": 1},  # only node 0 takes rejoins
            {"k": "broken", "node": None},
            {"k": "broken", "node": -1},
            {"k": "round", "round": 1, "resume": 3, "members": [0]},  # without this node
            {"k": "round", "round": 1, "resume": 3, "members": [1]},  # without the store's host
            {"k": "round", "round": 1, "resume": 3, "members": [0, 1, 1]},
            {"k": "round", "round": 1, "resume": 3, "members": [1, 0]},
            {"k": "round", "round": 1, "resume": 3, "members": [0, 1, 1 << 40]},
            {"k": "round", "round": 1, "resume": 3, "members": "0,1"},
            {"k": "timeout", "round": 2},  # not the round this node waits for
        ],
    )
    def test_a_bad_round_loses_the_job(self, message: dict[str, Any]) -> None:
        with linked(2) as links:
            links[1].new_round = lambda step, members: pytest.fail("a bad round was accepted")
            links[1].rejoin()
            links[0].peers[1].send(message)
            deliver(links[1:])
            assert links[1].peers == {} and links[1].lost is not None and links[1].round_complete()

    @pytest.mark.parametrize("round_no", [0, -1, 1.0, "1", None, [1], 2, 1 << 60])
    def test_a_bad_rejoin_loses_the_job(self, round_no: object) -> None:
        with linked(2) as links:
            links[0].rejoin()
            links[1].peers[0].send({"k": "rejoin", "round": round_no})
            deliver(links[:1])
            assert links[0].peers == {} and links[0].lost is not None and links[0].round_complete()

    def test_a_node_gone_cannot_rejoin(self) -> None:
        """The round of a job missing a node never happens: the attempt starts on a lost job at once."""
        with linked(3) as links:
            links[1].rejoin()
            links[0].rejoin()
            links[2].close()
            deliver(links[:2])
            assert 2 not in links[0].peers
            assert links[0].round_complete() and links[0].lost is not None
            deliver(links[1:2])  # node 0 told node 1 the job is lost
            assert links[1].lost is not None and links[1].round_complete()


class FakeClock:
    """The monotonic clock cluster.py reads, moved by the test; the peers' heartbeats keep up with it."""

    def __init__(self, links: list[cluster.ClusterLink]) -> None:
        self.links = links
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Time passes; every connected agent's heartbeat arrives, and each link looks at its round."""
        self.now += seconds
        for link in self.links:
            for peer in link.peers.values():
                peer.last_seen = self.now
            link.tick(self.now)
        deliver(self.links)


class TestElasticRound:
    """--nnodes MIN:MAX under c10d: node 0 holds a restart's round by torch's rules over the agents still
    connected; a lost node is left out once the last call after the latest join has passed, and the members
    close up behind node 0; short of MIN, the round ends in a timeout on every waiting agent."""

    def test_the_job_goes_on_without_a_lost_node(self, monkeypatch: pytest.MonkeyPatch) -> None:
        rounds: dict[int, tuple[int | None, cluster.Membership | None]] = {}

        def on_round(node: int) -> cluster.NewRound:
            def begin(step: int | None, members: cluster.Membership | None) -> int:
                rounds[node] = (step, members)
                return 9 if step is None else step

            return begin

        with linked(3) as links:
            clock = FakeClock(links)
            monkeypatch.setattr(cluster, "time", clock)
            links[0].rules = RoundRules(1, 3, join_timeout_s=600.0, last_call_timeout_s=30.0)
            for g, link in enumerate(links):
                link.new_round = on_round(g)
            links[1].close()  # node 1's agent dies: its connection closes
            deliver(links[::2])
            assert links[0].lost is not None and links[2].lost is not None
            links[0].rejoin()
            clock.advance(2.0)
            links[2].rejoin()
            deliver(links)
            # Each join restarts torch's last call (30 s): nobody starts before it has passed.
            clock.advance(29.0)
            assert not links[0].round_complete() and not links[2].round_complete() and rounds == {}
            clock.advance(1.0)
            smaller = cluster.Membership((0, 2), ("node0", "node2"))
            assert rounds == {0: (None, smaller), 2: (9, smaller)}
            assert links[0].round_complete() and links[2].round_complete()
            # Node 2 is group rank 1 of a two-node job now, with the ranks of that place.
            assert links[2].group_rank == 1 and links[2].local_ranks == frozenset({1})
            assert list(links[0].peers) == [1] and links[0].peers[1].group_rank == 1
            assert links[0].lost is None and links[2].lost is None

    def test_below_min_nodes_the_round_times_out(self, monkeypatch: pytest.MonkeyPatch) -> None:
        with linked(4) as links:
            clock = FakeClock(links)
            monkeypatch.setattr(cluster, "time", clock)
            links[0].rules = RoundRules(3, 4, join_timeout_s=60.0, last_call_timeout_s=30.0)
            links[0].new_round = links[1].new_round = lambda step, members: pytest.fail("a round completed")
            links[2].close()
            links[3].close()
            deliver(links[:2])
            links[0].rejoin()
            links[1].rejoin()
            deliver(links[:2])
            clock.advance(59.0)
            assert not links[0].round_complete() and not links[1].timed_out
            clock.advance(1.0)
            assert links[0].timed_out and links[1].timed_out
            assert links[0].round_complete() and links[1].round_complete()


class FakePort:
    """Node 0's rendezvous port as the run sees it: it hands over the joins of agents that proved the
    secret, and records whom it refused."""

    FD = -100

    def __init__(self) -> None:
        self.arrivals: list[tuple[Pending, dict[str, Any]]] = []
        self.refused: list[str] = []

    def attach(self, selector: selectors.BaseSelector) -> None:
        pass

    def owns(self, fd: int) -> bool:
        return fd == self.FD

    def pump(self, fd: int, now: float) -> list[tuple[Pending, dict[str, Any]]]:
        arrivals, self.arrivals = self.arrivals, []
        return arrivals

    def refuse(self, p: Pending, why: str, now: float) -> None:
        p.done = True
        self.refused.append(why)
        p.peer.close()

    def admit(self, p: Pending) -> Peer:
        p.done = True
        return p.peer

    def deadline(self) -> float | None:
        return None

    def tick(self, now: float) -> None:
        pass

    def close(self) -> None:
        pass


class TestNodesJoining:
    """An agent that dials node 0 while an elastic job runs short of MAX waits for the next round: every
    agent learns that it waits, and once all have rejoined the round takes it in as the last group rank,
    its join answered with the job's hosts, the round's number and the step to resume from."""

    ME = rendezvous.Join(None, "node0", 1, "el", "gpt2-124m on h100", "d")

    def arrive(self, port: FakePort, host: str) -> socket.socket:
        """A newcomer's connection, past its handshake, with its join; returns the newcomer's end."""
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        peer = Peer(ours, f"{host}:1")
        peer.authenticated()
        join = dataclasses.replace(self.ME, host=host).message()
        port.arrivals.append((Pending(peer, ours.fileno(), {}, time.monotonic(), authed=True), join))
        return theirs

    def test_a_newcomer_joins_the_next_round(self) -> None:
        rounds: dict[int, tuple[int | None, cluster.Membership | None]] = {}

        def on_round(node: int) -> cluster.NewRound:
            def begin(step: int | None, membership: cluster.Membership | None) -> int:
                rounds[node] = (step, membership)
                return 9 if step is None else step

            return begin

        port = FakePort()
        with linked(2) as links:
            root = links[0]
            root.rules = RoundRules(1, 3, join_timeout_s=600.0, last_call_timeout_s=30.0)
            root.me, root.listener, root.master, root.round_no = self.ME, port, ("node0", 29500), 0  # type: ignore[assignment]
            for g, link in enumerate(links):
                link.new_round = on_round(g)
            newcomer = Peer(self.arrive(port, "node7"), "node0:29400")
            root.pump(FakePort.FD)
            deliver(links)
            assert root.nodes_waiting == 1 and links[1].nodes_waiting == 1 and port.refused == []
            root.rejoin()
            links[1].rejoin()
            deliver(links)
            deliver(links)
            # Three agents in the round is MAX: it completes at once.
            grown = cluster.Membership((0, 1), ("node0", "node1", "node7"))
            assert rounds == {0: (None, grown), 1: (9, grown)}
            assert root.round_complete() and links[1].round_complete()
            assert sorted(root.peers) == [1, 2] and root.peers[2].host == "node7"
            assert root.nodes_waiting == 0 and links[1].nodes_waiting == 0
            assign = rendezvous._parse_assign(newcomer.receive_blocking(time.monotonic() + 5), self.ME, 3, 1)
            assert (assign.group_rank, assign.hosts) == (2, grown.hosts)
            assert (assign.round, assign.resume) == (1, 9) and (assign.master_addr, assign.master_port) == (
                "node0",
                29500,
            )
            newcomer.close()

    def test_a_round_that_renames_the_nodes_renames_every_link(self) -> None:
        """A newcomer on node 0's machine: every node takes the name node 0 gives it, on both ends of each
        connection (a lost node's line names it so)."""
        port = FakePort()
        with linked(2) as links:
            root = links[0]
            root.rules = RoundRules(1, 3, join_timeout_s=600.0, last_call_timeout_s=30.0)
            root.me, root.listener = self.ME, port  # type: ignore[assignment]
            root.name_hosts = lambda kept, arriving: ("c0", "c1", "c2")
            for link in links:
                link.new_round = lambda step, membership: 0
            newcomer = self.arrive(port, "node0")
            root.pump(FakePort.FD)
            root.rejoin()
            links[1].rejoin()
            deliver(links)
            deliver(links)
            assert [(g, p.host) for g, p in root.peers.items()] == [(1, "c1"), (2, "c2")]
            assert links[1].peers[0].host == "c0" and links[1].hosts == root.hosts == ("c0", "c1", "c2")
            newcomer.close()

    def test_a_job_at_max_nodes_refuses_a_newcomer(self) -> None:
        port = FakePort()
        with linked(2) as links:
            links[0].rules = RoundRules(1, 2)
            links[0].me, links[0].listener = self.ME, port  # type: ignore[assignment]
            self.arrive(port, "node7").close()
            links[0].pump(FakePort.FD)
            assert links[0].nodes_waiting == 0 and len(port.refused) == 1
            assert "have all joined" in port.refused[0]

    def test_a_newcomer_that_leaves_before_its_round_is_forgotten(self) -> None:
        port = FakePort()
        with linked(2) as links:
            links[0].rules = RoundRules(1, 3)
            links[0].me, links[0].listener = self.ME, port  # type: ignore[assignment]
            theirs = self.arrive(port, "node7")
            links[0].pump(FakePort.FD)
            assert links[0].nodes_waiting == 1
            fd = next(iter(links[0]._waiting)).peer.fileno()
            theirs.close()
            links[0].pump(fd)
            deliver(links)
            assert links[0].nodes_waiting == 0 and links[1].nodes_waiting == 0
