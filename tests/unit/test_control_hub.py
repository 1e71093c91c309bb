"""ControlHub on the root agent: reports from other nodes that arrive before its own attempt starts count."""

from __future__ import annotations

import selectors
from collections.abc import Iterable
from typing import Any

from fakerun.coordinator import Output
from fakerun.launcher.control import ControlHub


class RecordingCoordinator:
    """Stands in for the coordinator: remembers every report it is given."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, dict[str, Any]]] = []

    def on_message(self, rank: int, msg: dict[str, Any], mono: float, wall: float) -> Output:
        self.seen.append((rank, msg))
        return Output()


def hub_with(coordinators: list[RecordingCoordinator]) -> ControlHub:
    def make(attempt: int, ranks: Iterable[int]) -> Any:
        coordinators.append(RecordingCoordinator())
        return coordinators[-1]

    return ControlHub(selectors.DefaultSelector(), make, ("h0", "h1"), 2, warn=lambda line: None)


class TestEarlyReports:
    def test_a_batch_before_the_attempt_reaches_its_coordinator(self) -> None:
        """Node 1's ready reports, received while node 0 still forks, are handed over when it starts."""
        made: list[RecordingCoordinator] = []
        hub = hub_with(made)
        ready = [(2, {"k": "ready", "pid": 11}), (3, {"k": "ready", "pid": 12})]
        hub._remote_batch(1, ready)
        assert made == []  # nothing to give them to yet, and nothing lost
        hub.new_attempt(0, [0, 1])
        assert made[0].seen == ready

    def test_later_batches_go_straight_through(self) -> None:
        """Once the attempt runs, a batch reaches the coordinator at once, and is not replayed again."""
        made: list[RecordingCoordinator] = []
        hub = hub_with(made)
        hub.new_attempt(0, [0, 1])
        hub._remote_batch(1, [(2, {"k": "step", "step": 1})])
        hub.new_attempt(1, [0, 1])
        assert len(made[0].seen) == 1 and made[1].seen == []


def test_a_save_counts_once_it_is_complete() -> None:
    """A restart resumes from the newest save that had finished: one still being written is not there yet."""
    import time

    from fakerun.launcher.control import SavedStep

    saved = SavedStep()
    now = time.monotonic()
    saved.saving(100, now - 1.0)
    saved.saving(200, now + 3600.0)
    assert saved.step == 100
    saved.pending[-1] = (now - 0.5, 200)
    assert saved.step == 200 and not saved.pending
