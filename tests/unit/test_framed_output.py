"""A simulated worker's output as frames on its control socket: written by the worker, taken apart by the
launcher's control hub, in any cut of the byte stream."""

from __future__ import annotations

import json
import selectors
import socket
import threading
from collections.abc import Iterable
from typing import Any

import pytest

from fakerun.coordinator import Output
from fakerun.launcher.control import ControlHub
from fakerun.launcher.procs import MAX_FRAME
from fakerun.worker.channel import CoordinatorLink, FramedStream


class Recorder:
    """Stands in for a route (what reached it) and for the coordinator (what it was told)."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.closed = False
        self.cut_off = False
        self.messages: list[dict[str, Any]] = []

    def feed(self, data: bytes) -> None:
        self.data.append(data)

    def close(self) -> None:
        self.closed = True

    def on_message(self, rank: int, msg: dict[str, Any], mono: float, wall: float) -> Output:
        self.messages.append(msg)
        return Output()

    def on_gone(self, rank: int) -> None:
        """A channel closed (the test's end)."""


def hub(coordinator: Recorder, warnings: list[str]) -> ControlHub:
    def make(attempt: int, ranks: Iterable[int]) -> Any:
        return coordinator

    h = ControlHub(selectors.DefaultSelector(), make, ("h0",), 2, warn=warnings.append)
    h.new_attempt(0, [0])
    return h


def worker_bytes() -> bytes:
    """What a worker writes: stdout and stderr (a bar refresh, a multibyte character) and two reports."""
    ours, theirs = socket.socketpair()
    link = CoordinatorLink(theirs.detach())
    out, err = FramedStream(link, 1), FramedStream(link, 2)
    out.write("step 1 loss 2.5\n")
    link.send({"k": "step", "s": 1, "c": 0.5})
    err.write("\rEpoch 1: 10%|█ | 1/10")
    out.write("é\n")
    link.send({"k": "phase", "tel": [1, 2, 3, 4, 5, 6, "eval"]})
    ours.setblocking(False)
    got = ours.recv(1 << 16)
    ours.close()
    return got


@pytest.mark.parametrize("cut", [1, 3, 5, 7, 1000])
def test_frames_and_messages_come_apart_in_order_whatever_the_cuts(cut: int) -> None:
    stdout, stderr, coordinator, warnings = Recorder(), Recorder(), Recorder(), []
    h = hub(coordinator, warnings)
    ours, theirs = socket.socketpair()
    h.adopt(0, ours, {1: stdout, 2: stderr})  # type: ignore[dict-item]
    data = worker_bytes()
    channel = h.by_rank[0]
    for at in range(0, len(data), cut):
        channel.buffer = h._take(channel, channel.buffer + data[at : at + cut])
    assert channel.buffer == b""
    assert b"".join(stdout.data) == "step 1 loss 2.5\né\n".encode()
    assert b"".join(stderr.data) == "\rEpoch 1: 10%|█ | 1/10".encode()
    assert [m["k"] for m in coordinator.messages] == ["step", "phase"]
    assert warnings == []
    h.close()
    assert stdout.closed and stderr.closed
    theirs.close()


def test_an_unframed_write_is_dropped_with_one_notice() -> None:
    coordinator, warnings = Recorder(), []
    h = hub(coordinator, warnings)
    ours, theirs = socket.socketpair()
    stdout = Recorder()
    h.adopt(0, ours, {1: stdout})  # type: ignore[dict-item]
    channel = h.by_rank[0]
    # A raw write beginning with byte 1: its "length" is far beyond any frame.
    rest = h._take(channel, b"\x01" + (MAX_FRAME + 1).to_bytes(4, "big") + b"garbage")
    assert rest == b"" and stdout.data == []
    assert len(warnings) == 1 and "unframed output from rank 0" in warnings[0]
    h.close()
    theirs.close()


def test_a_gone_stream_fails_the_workers_next_write_there_only() -> None:
    ours, theirs = socket.socketpair()
    link = CoordinatorLink(theirs.detach())
    ours.sendall(json.dumps({"k": "epipe", "stream": 1}).encode() + b"\n" + b'{"k":"go","t0":1.0}\n')
    assert link.receive() == {"k": "go", "t0": 1.0}  # the notice is applied, the answer returned
    with pytest.raises(BrokenPipeError):
        FramedStream(link, 1).write("x\n")
    FramedStream(link, 2).write("y\n")
    assert ours.recv(100) == b"\x02\x00\x00\x00\x02y\n"
    ours.close()


def test_a_write_larger_than_a_frame_goes_in_several() -> None:
    ours, theirs = socket.socketpair()
    link = CoordinatorLink(theirs.detach())
    coordinator, warnings, stdout = Recorder(), [], Recorder()
    h = hub(coordinator, warnings)
    h.adopt(0, ours, {1: stdout})  # type: ignore[dict-item]
    text = "x" * (MAX_FRAME + 10)
    ours.setblocking(False)
    channel = h.by_rank[0]
    writer = threading.Thread(target=FramedStream(link, 1).write, args=(text,))
    writer.start()
    got = b""
    while len(b"".join(stdout.data)) < len(text):
        try:
            got = ours.recv(1 << 16)
        except BlockingIOError:
            continue
        channel.buffer = h._take(channel, channel.buffer + got)
    writer.join()
    assert b"".join(stdout.data) == text.encode() and len(stdout.data) >= 2
    assert warnings == []
    h.close()
