"""Budgets in the forms users give them (FLOPs, GPU-hours, GPU-days, dollars), and the refusals."""

from __future__ import annotations

from typing import Any

import pytest

from fakerun import presets
from fakerun.plan.budget import DEFAULT_MFU, BudgetError, make_budget, train_seconds

H100_PEAK = 989.4e12  # dense BF16 FLOP/s, NVIDIA's datasheet


@pytest.fixture
def h100() -> presets.GpuSpec:
    return presets.load_gpu("h100")


def test_flops_as_given() -> None:
    """A budget in FLOPs is the number itself."""
    b = make_budget(flops=5.76e23)
    assert (b.flops, b.given, b.mfu) == (5.76e23, "flops", None)


def test_gpu_days(h100: presets.GpuSpec) -> None:
    """1024 H100 for 30 days at the default 40%: GPUs x seconds x MFU x peak."""
    b = make_budget(gpus=1024, days=30, gpu=h100)
    assert DEFAULT_MFU == 0.40
    assert b.flops == pytest.approx(1024 * 30 * 86_400 * 0.40 * H100_PEAK)
    assert (b.given, b.gpu_hours, b.mfu_source) == ("gpu-days", 1024 * 30 * 24, "default")
    assert train_seconds(b.flops, 1024, 0.40, h100) == pytest.approx(30 * 86_400)


def test_gpu_hours_at_a_given_mfu(h100: presets.GpuSpec) -> None:
    """1.2M GPU-hours at 35%."""
    b = make_budget(gpu_hours=1.2e6, gpu=h100, mfu=0.35)
    assert b.flops == pytest.approx(1.2e6 * 3600 * 0.35 * H100_PEAK)
    assert b.mfu_source == "given"


def test_dollars(h100: presets.GpuSpec) -> None:
    """$2M at $2.50 per GPU-hour is 800k GPU-hours."""
    b = make_budget(dollars=2e6, price_per_gpu_hour=2.5, gpu=h100)
    assert b.gpu_hours == pytest.approx(800_000)
    assert b.flops == pytest.approx(800_000 * 3600 * 0.40 * H100_PEAK)


def test_simulated_mfu_replaces_the_default(h100: presets.GpuSpec) -> None:
    """Once a design has an MFU, the same GPU time gives FLOPs at that MFU; a FLOP budget stays put."""
    b = make_budget(gpus=64, days=7, gpu=h100).with_mfu(0.5, "simulator")
    assert b.flops == pytest.approx(64 * 7 * 86_400 * 0.5 * H100_PEAK)
    assert b.mfu_source == "simulator"
    assert make_budget(flops=1e22).with_mfu(0.5, "simulator").flops == 1e22


def test_llama3_405b_days(h100: presets.GpuSpec) -> None:
    """Llama 3 405B: 6 x 405.9e9 x 15.6e12 = 3.8e25 FLOPs, ~54 days on 16k H100 at 41% MFU (reported: 54)."""
    days = train_seconds(6 * 405.9e9 * 15.6e12, 16_384, 0.41, h100) / 86_400
    assert 50 < days < 80


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({}, "no budget"),
        ({"flops": 1e23, "days": 3, "gpus": 8}, "--flops and --days contradict each other"),
        ({"flops": -1e20}, "--flops must be a positive number"),
        ({"flops": 1e31}, "not a plannable budget"),
        ({"flops": 1e10}, "too small to plan"),
        ({"days": 30}, "--days needs --gpus"),
        ({"dollars": 1e6}, "--dollars needs --price-per-gpu-hour"),
        ({"gpu_hours": 1e6}, "needs --gpu or --cluster"),
        ({"gpu_hours": 1e6, "mfu": 1.5, "gpu": "h100"}, "--mfu must be in (0, 1]"),
        ({"flops": 1e22, "mfu": 0.4}, "--mfu applies to budgets in GPU time"),
    ],
)
def test_refusals(kw: dict[str, Any], message: str) -> None:
    """Missing, contradictory, negative and absurd budgets are one-line BudgetErrors (ValueErrors)."""
    if kw.get("gpu") == "h100":
        kw["gpu"] = presets.load_gpu("h100")
    with pytest.raises(BudgetError) as err:
        make_budget(**kw)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)
