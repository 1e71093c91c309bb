"""GPU telemetry as nvidia-smi would show it: utilisation, temperature, power, clocks, memory, by phase."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from fakerun.sim import compute, rand
from fakerun.sim.memory import memory_breakdown

if TYPE_CHECKING:
    from fakerun.presets import GpuSpec
    from fakerun.sim.job import JobSpec

Phase = Literal["train", "eval", "checkpoint", "stall", "idle"]
PHASES: tuple[Phase, ...] = ("train", "eval", "checkpoint", "stall", "idle")

# Heat-sink time constant: temperatures approach a new phase's level over ~a minute, not instantly.
THERMAL_TAU_S = 45.0


@dataclass(frozen=True)
class GpuTelemetry:
    """One GPU sample."""

    util_pct: int  # "GPU-Util": share of time a kernel was running
    mem_util_pct: int  # utilization.memory: share of time the memory controller was busy
    temp_c: int
    power_w: int
    power_cap_w: int
    sm_clock_mhz: int
    mem_clock_mhz: int
    mem_used_mib: int
    mem_total_mib: int
    pstate: str
    throttle: str  # "" or the clocks_throttle_reasons nvidia-smi -q would name


def _load(job: JobSpec, phase: Phase) -> tuple[float, float]:
    """(utilisation 0-1, power intensity 0-1) a phase drives the GPU to."""
    # Thin per-GPU GEMMs leave the GPU waiting on kernel launches: a 1B model at TP=8 shows ~25% util and
    # ~250 W of 700 (excerpt 40); full-size layers keep it at ~100%.
    width = job.model.hidden / job.tp
    util = min(1.0, max(0.25, width / 1024.0))
    mfu = compute.mfu_center(job)
    # Well-fed H100s draw 500-700 W in pretraining (PHYSICS.md 1): more MFU, more power.
    intensity = min(0.97, 0.70 + 0.9 * (mfu - 0.30)) * util**0.8
    if phase == "train":
        return util, intensity
    if phase == "eval":
        return util * 0.85, intensity * 0.7  # forward only
    if phase == "checkpoint":
        return 0.05, 0.12  # memory resident, copies to host: 140-145 W on an H100 (excerpt 41)
    if phase == "stall":
        return 0.02, 0.11
    return 0.0, 0.0


def _target_temp(gpu: GpuSpec, power: float) -> float:
    frac = max(0.0, (power - gpu.idle_power_w) / (gpu.tdp_w - gpu.idle_power_w))
    return gpu.idle_temp_c + (gpu.load_temp_c - gpu.idle_temp_c) * float(frac**1.2)


def telemetry(
    job: JobSpec,
    rank: int,
    step: int,
    phase: Phase,
    *,
    phase_age_s: float = math.inf,
    prev_phase: Phase = "train",
) -> GpuTelemetry:
    """Rank `rank`'s GPU at `step` in `phase`, `phase_age_s` seconds after leaving `prev_phase`."""
    gpu = job.gpu
    seed = job.seed
    util, intensity = _load(job, phase)
    span = gpu.tdp_w - gpu.idle_power_w
    # Per-GPU constants (silicon lottery, slot airflow) and per-sample noise, all seeded.
    power_bias = 1.0 + 0.03 * rand.normal(seed, "tele-pbias", rank)
    temp_bias = 3.0 * rand.normal(seed, "tele-tbias", rank)
    p_noise = 1.0 + 0.03 * rand.normal(seed, "tele-pnoise", rank, step)
    power = gpu.idle_power_w + span * intensity * power_bias * p_noise
    if phase == "idle":
        power = gpu.idle_power_w * (1.0 + 0.03 * rand.normal(seed, "tele-idle", rank, step))
    power = min(float(gpu.tdp_w), max(gpu.idle_power_w * 0.9, power))

    _, prev_intensity = _load(job, prev_phase)
    prev_power = gpu.idle_power_w + span * prev_intensity * power_bias
    target = _target_temp(gpu, power)
    if math.isfinite(phase_age_s):
        w = math.exp(-max(phase_age_s, 0.0) / THERMAL_TAU_S)
        target = target + (_target_temp(gpu, prev_power) - target) * w
    temp = target + temp_bias + 0.6 * rand.normal(seed, "tele-tnoise", rank, step)

    sm = float(gpu.sm_clock_max_mhz)
    throttle = ""
    if power > 0.97 * gpu.tdp_w:
        sm *= 0.93
        throttle = "SW Power Cap"
    strag = compute.straggler(job, step)
    if phase == "train" and strag is not None and strag.rank == rank and strag.cause == "thermal":
        # A straggler episode is a GPU throttling near its limit: hot, slow clocks (throttling at 84-90 C).
        temp = gpu.max_temp_c - 2.0 + rand.uniform(seed, "tele-hot", rank, step) * 2.0
        sm = gpu.sm_clock_max_mhz / strag.slowdown
        throttle = "HW Thermal Slowdown"
    if phase == "idle":
        sm = float(gpu.sm_clock_idle_mhz)
    util_pct = 100.0 * util
    if phase == "idle":
        util_pct = 0.0
    elif util_pct < 100.0 or phase != "train":
        util_pct += 3.0 * rand.normal(seed, "tele-util", rank, step)
    elif phase == "train":
        util_pct = 100.0 - abs(1.5 * rand.normal(seed, "tele-util", rank, step))
    mem_used = 0 if phase == "idle" else memory_breakdown(job, rank, step).used_mib
    if phase == "idle":
        mem_used = int(4 * rand.uniform(seed, "tele-idlemem", rank) + 0.5) * 2
    mem_util = (
        0.0 if phase == "idle" else 100.0 * intensity * 0.55 + 2.0 * rand.normal(seed, "tele-mu", rank, step)
    )
    return GpuTelemetry(
        util_pct=round(min(100.0, max(0.0, util_pct))),
        mem_util_pct=round(min(100.0, max(0.0, mem_util))),
        temp_c=round(min(float(gpu.max_temp_c + 3), max(gpu.idle_temp_c - 4.0, temp))),
        power_w=round(power),
        power_cap_w=gpu.tdp_w,
        sm_clock_mhz=round(sm),
        mem_clock_mhz=gpu.mem_clock_max_mhz,
        mem_used_mib=int(mem_used),
        mem_total_mib=gpu.memory_mib,
        pstate="P0",
        throttle=throttle,
    )


def idle_telemetry(gpu: GpuSpec, index: int, seed: int = 0, sample: int = 0) -> GpuTelemetry:
    """An idle GPU with no job (fakerun-smi when nothing runs): ~70 W, 24-30 C on an H100 (excerpt 41)."""
    power = gpu.idle_power_w * (1.0 + 0.03 * rand.normal(seed, "idle-p", index, sample))
    temp = (
        gpu.idle_temp_c
        + 2.0 * rand.normal(seed, "idle-t", index)
        + 0.4 * rand.normal(seed, "idle-tn", index, sample)
    )
    return GpuTelemetry(
        util_pct=0,
        mem_util_pct=0,
        temp_c=round(temp),
        power_w=round(min(float(gpu.tdp_w), power)),
        power_cap_w=gpu.tdp_w,
        sm_clock_mhz=gpu.sm_clock_idle_mhz,
        mem_clock_mhz=gpu.mem_clock_max_mhz,
        mem_used_mib=int(4 * rand.uniform(seed, "idle-mem", index) + 0.5) * 2,
        mem_total_mib=gpu.memory_mib,
        pstate="P0",
        throttle="",
    )
