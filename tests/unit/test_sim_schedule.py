"""Learning rate: linear warmup, then cosine (or linear, constant) down to min_lr."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakerun import presets
from fakerun.sim.job import make_job
from fakerun.sim.schedule import lr, lr_area_at, lr_at

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


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 400),
    st.floats(0.0, 1.0),
    st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    st.sampled_from(["cosine", "linear", "constant"]),
    st.integers(0, 500),
)
def test_lr_area_is_the_sum_of_the_lr(
    total: int, warm_frac: float, ratio: float, kind: str, step: int
) -> None:
    """S1 sums lr/peak over steps 1..s; S2 sums 1 - lr/peak after the warm-up (Tissue et al. 2024)."""
    warmup = round(warm_frac * total)
    low = 1e-3 * ratio
    lrs = [
        lr_at(i, peak=1e-3, min_lr=low, warmup=warmup, total=total, kind=kind) / 1e-3
        for i in range(1, step + 1)
    ]
    s1, s2 = lr_area_at(step, peak=1e-3, min_lr=low, warmup=warmup, total=total, kind=kind)
    assert math.isclose(s1, sum(lrs), rel_tol=1e-9, abs_tol=1e-9)
    post = [1 - x for i, x in enumerate(lrs, start=1) if i >= max(warmup, 1)]
    assert math.isclose(s2, sum(post), rel_tol=1e-9, abs_tol=1e-9)
