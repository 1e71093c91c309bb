"""The job's one clock, apart from the simulation: a --fake-exec launcher runs on it too (at speed 1)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobClock:
    """The job's one clock: simulated epoch time runs `speed` times faster than the launcher's monotonic time.

    Every timestamp a run prints (launcher lines, worker lines, metric lines) is read from it, so that the
    times between lines equal the elapsed times, step times and throughputs printed in them.
    """

    wall0: float  # epoch seconds when the launcher started
    mono0: float  # time.monotonic() at that moment
    speed: float

    def at(self, mono: float) -> float:
        """The job's epoch time at monotonic time `mono`."""
        return self.wall0 + (mono - self.mono0) * self.speed
