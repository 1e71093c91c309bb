"""Learning rate: linear warmup, then cosine (or linear, constant) down to min_lr."""

from __future__ import annotations

import itertools
import math
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakerun import presets
from fakerun.sim.job import make_job
from fakerun.sim.schedule import Shape, lr, lr_area_at, lr_at, warmup_stable_decay

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


class TestTorchtitanWsd:
    """torchtitan's linear_warmup_stable_decay (components/lr_scheduler.py) as a "wsd" schedule: optimizer
    step s runs at LambdaLR's index c = s - 1; factor (c + 1) / warmup while c < warmup, 1 while c < warmup +
    stable, then the decay at progress (c + 1 - warmup - stable) / decay, scaled to [min_lr_factor, 1];
    stable = total + 1 - warmup - decay (a virtual last step), decay = round(total x decay_ratio), or all
    after the warmup."""

    STYLES: ClassVar[dict[str, str]] = {"linear": "linear", "sqrt": "minus_sqrt", "cosine": "cosine"}

    def titan_lr(self, step: int, decay: str, ratio: float | None, min_lr: float = 1e-4) -> float:
        """100 steps, 10 warmup, peak 1e-3, through warmup_stable_decay as hints.py builds the job."""
        warm, end, steps = warmup_stable_decay(10, 100, ratio)
        shape = Shape(wsd_steps=steps, wsd_style=self.STYLES[decay])
        return lr_at(step, peak=1e-3, min_lr=min_lr, warmup=warm, total=end, kind="wsd", shape=shape)

    @pytest.mark.parametrize(
        ("decay", "step", "factor"),
        [
            ("linear", 1, 1 / 10),
            ("linear", 10, 1.0),
            ("linear", 81, 1.0),  # c = 80: the last stable index (decay_ratio 0.2: 20 decay steps)
            ("linear", 82, 0.1 + 0.9 * (1 - 1 / 20)),
            ("linear", 91, 0.1 + 0.9 * (1 - 10 / 20)),
            ("linear", 100, 0.1 + 0.9 * (1 - 19 / 20)),  # the last step stays above the floor
            ("sqrt", 86, 0.1 + 0.9 * (1 - math.sqrt(5 / 20))),
            ("cosine", 91, 0.1 + 0.9 * 0.5),
            ("cosine", 86, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),
        ],
    )
    def test_points(self, decay: str, step: int, factor: float) -> None:
        """The lr at chosen steps, from the source's formula."""
        assert self.titan_lr(step, decay, 0.2) == pytest.approx(1e-3 * factor)

    def test_no_ratio_decays_after_one_stable_step(self) -> None:
        """decay_ratio None: decay = total - warmup = 90, stable 1 (c = 10), then linear to 0 at c = 100."""
        assert self.titan_lr(11, "linear", None, 0.0) == pytest.approx(1e-3)
        assert self.titan_lr(12, "linear", None, 0.0) == pytest.approx(1e-3 * (1 - 1 / 90))
        assert self.titan_lr(100, "linear", None, 0.0) == pytest.approx(1e-3 * (1 - 89 / 90))

    def test_decay_cut_to_what_the_warmup_leaves(self) -> None:
        """Warmup 10 + decay round(100 x 0.95) = 95 > 100: decay 90 steps, as with no ratio."""
        for step in (11, 50, 100):
            assert self.titan_lr(step, "cosine", 0.95) == pytest.approx(self.titan_lr(step, "cosine", None))

    def test_a_warmup_longer_than_the_run_is_cut_to_it(self) -> None:
        assert warmup_stable_decay(500, 100, None) == (100, 101, 0)


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
