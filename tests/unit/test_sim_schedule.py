"""Learning rate: linear warmup, then cosine (or linear, constant) down to min_lr."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from fakerun import presets
from fakerun.sim.job import make_job
from fakerun.sim.schedule import lr, lr_at

KW: dict[str, Any] = {"peak": 3e-4, "min_lr": 3e-5, "warmup": 2000, "total": 102_000}


class TestCosine:
    @pytest.mark.parametrize(
        ("step", "expected"),
        [
            (0, 0.0),
            (1, 1.5e-7),  # Megatron's first logged lr: peak / warmup
            (1000, 1.5e-4),
            (2000, 3e-4),  # lr(warmup) = peak
            (52_000, 1.65e-4),  # half way: (peak + min) / 2
            (102_000, 3e-5),  # lr(total) = min
            (500_000, 3e-5),
        ],
    )
    def test_known_points(self, step: int, expected: float) -> None:
        """Warmup is linear from 0 and the cosine meets (peak + min)/2 half way and min at the end."""
        assert lr_at(step, **KW) == pytest.approx(expected, abs=1e-12)

    def test_quarter_point(self) -> None:
        """A quarter of the way: min + (peak - min)(1 + cos(pi/4))/2."""
        assert lr_at(27_000, **KW) == pytest.approx(3e-5 + 2.7e-4 * (1 + 2**-0.5) / 2)

    def test_monotone_after_warmup(self) -> None:
        """The decay never goes back up."""
        values = [lr_at(s, **KW) for s in range(2000, 102_001, 500)]
        assert all(a >= b for a, b in itertools.pairwise(values))


class TestOtherSchedules:
    def test_linear(self) -> None:
        """HF's default: linear from peak to min after warmup."""
        assert lr_at(52_000, kind="linear", **KW) == pytest.approx((3e-4 + 3e-5) / 2)

    def test_constant(self) -> None:
        """Constant keeps the peak after warmup."""
        assert lr_at(90_000, kind="constant", **KW) == 3e-4

    def test_job_schedule(self) -> None:
        """A job's lr uses its preset's peak and 10% floor."""
        b = presets.resolve("llama3.2-1b")
        j = make_job(b.model, b.cluster, b.storage, total_steps=10_000, warmup_steps=100)
        assert lr(j, 100) == pytest.approx(3e-4)
        assert lr(j, 10_000) == pytest.approx(3e-5)
