"""GPU telemetry as nvidia-smi would show it: per-board constants, phase loads, per-sample noise, thermal lag.

Pure: a sample is a function of (job, seed, rank, step, phase) and, for the temperature, of the previous
die temperature and the simulated seconds since it, which the caller carries (the worker, and fakerun-smi
between two reports). Each physical GPU has constants of its own (the silicon lottery: leakage, thermal
contact, the slot's airflow, the node's inlet air) keyed by the cluster preset, the host and the GPU index,
so the same simulated GPU runs hot or cool in every job on that cluster.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from fakerun.sim import compute, rand
from fakerun.sim.memory import memory_breakdown

if TYPE_CHECKING:
    from fakerun.presets import GpuSpec
    from fakerun.sim.job import JobSpec

# init: the process holds its context and weights before step one; idle: the job is done (or not started).
Phase = Literal["init", "train", "eval", "checkpoint", "stall", "idle"]
PHASES: tuple[Phase, ...] = ("init", "train", "eval", "checkpoint", "stall", "idle")

# First-order response of the die temperature to a power step. An SXM heat sink under forced air settles
# within a few minutes; 30 s is the time constant used here (assumption: no capture of a step response in
# reference/; fast enough that a checkpoint of tens of seconds visibly cools the GPUs, slow enough that no
# sample jumps more than ~2 C per second).
THERMAL_TAU_S = 30.0
# Graphics clocks move in 15 MHz bins on Ampere and later (1980, 1965, ... MHz on an H100).
CLOCK_STEP_MHZ = 15
# Die temperature over power: T = idle + (load - idle) * frac ** 1.2, frac the share of the idle-to-TDP span.
# Fitted to the captures in PHYSICS.md 1: H100 at ~255 W (frac 0.29) 34-36 C, at ~195 W 37-38 C (a 580
# capture), at ~140 W 32-39 C, and "70-75 C is an excellent range" near the cap.
TEMP_EXPONENT = 1.2


@dataclass(frozen=True)
class Board:
    """One physical GPU's constants: leakage, thermal contact, inlet air and where the clocks cap."""

    power_scale: float  # watts drawn for the same work, relative to the typical board (+-3%)
    idle_offset_w: float  # its idle draw against the preset's (excerpt 41: 68-71 W on one node)
    temp_offset_c: float  # node inlet + slot airflow + contact: the same power runs this much hotter
    rth_scale: float  # thermal resistance relative to the typical board (paste, heat-sink seating)


def board_seed(cluster: str, host: str, index: int) -> int:
    """The seed of one physical GPU: cluster preset, host and index (stable across jobs and processes)."""
    return zlib.crc32(f"{cluster}\0{host}\0{index}".encode())


def board(cluster: str, host: str, index: int, gpus_per_node: int = 8) -> Board:
    """The constants of GPU `index` of `host` in a cluster of that preset."""
    key = board_seed(cluster, host, index)
    node_key = zlib.crc32(f"{cluster}\0{host}".encode())
    # Slot airflow (assumption, no capture): in an 8-GPU baseboard the GPUs in the middle of the tray get
    # air pre-warmed by their neighbours and run 1-3 C hotter than the edge slots; a per-cluster pattern.
    middle = 1.0 - abs(2.0 * index / max(gpus_per_node - 1, 1) - 1.0)
    slot = 2.5 * middle * (0.6 + 0.8 * rand.uniform(zlib.crc32(cluster.encode()), "tele-slot"))
    inlet = 1.5 * rand.normal(node_key, "tele-inlet")  # rack position: cold-aisle temperature differs
    return Board(
        power_scale=1.0 + 0.03 * _clamped(rand.normal(key, "tele-leak")),
        idle_offset_w=0.02 * _clamped(rand.normal(key, "tele-idle")),
        temp_offset_c=inlet + slot - 1.0 + 1.5 * _clamped(rand.normal(key, "tele-contact")),
        rth_scale=1.0 + 0.05 * _clamped(rand.normal(key, "tele-rth")),
    )


def _clamped(z: float, limit: float = 2.5) -> float:
    """A normal draw cut at +-limit sigma: bands stay bands."""
    return max(-limit, min(limit, z))


@dataclass(frozen=True)
class GpuTelemetry:
    """One GPU sample, and the die temperature behind its rounded figure."""

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
    die_temp_c: float = math.nan  # the thermal state: the next sample starts from it


def _load(job: JobSpec, phase: Phase) -> tuple[float, float]:
    """(utilisation 0-1, power intensity 0-1 of the idle-to-TDP span) a phase drives the GPU to."""
    # Thin per-GPU GEMMs leave the GPU waiting on kernel launches: a 1B model at TP=8 shows ~25% util and
    # ~250 W of 700 (excerpt 40); full-size layers keep it at ~100%.
    width = job.model.hidden / job.tp
    util = min(1.0, max(0.25, width / 1024.0))
    busy = compute.utilisation_center(job)  # attention kernels heat the GPU as much as the GEMMs of 6N
    # Well-fed H100s draw 500-700 W in pretraining (PHYSICS.md 1): more utilisation, more power.
    intensity = min(0.97, 0.70 + 0.9 * (busy - 0.30)) * util**0.8
    if phase == "train":
        return util, intensity
    if phase == "eval":
        return util * 0.85, intensity * 0.7  # forward only
    if phase == "checkpoint":
        return 0.03, 0.11  # memory resident, copies to host: 140-145 W on an H100 (excerpt 41)
    if phase == "stall":
        return 0.01, 0.11
    if phase == "init":
        return 0.0, 0.07  # context and weights resident, nothing running: ~110 W (PHYSICS.md 1: 68-120 W)
    return 0.0, 0.10  # done: the process still holds its memory until it exits (excerpt 41: 140 W)


def steady_temp(gpu: GpuSpec, b: Board, power_w: float) -> float:
    """The temperature this board settles at when drawing `power_w` for long enough."""
    span = max(gpu.tdp_w - gpu.idle_power_w, 1)
    frac = min(1.2, max(0.0, (power_w - gpu.idle_power_w) / span))
    rise = (gpu.load_temp_c - gpu.idle_temp_c) * b.rth_scale * float(frac**TEMP_EXPONENT)
    return gpu.idle_temp_c + b.temp_offset_c + rise


def settle(temp_c: float, target_c: float, seconds: float, tau_s: float = THERMAL_TAU_S) -> float:
    """First-order thermal lag: the temperature `seconds` after the target changed to `target_c`."""
    if not math.isfinite(temp_c) or seconds == math.inf:
        return target_c
    return target_c + (temp_c - target_c) * math.exp(-max(seconds, 0.0) / tau_s)


def idle_power(gpu: GpuSpec, b: Board) -> float:
    """This board's draw with nothing resident (P0, persistence mode on)."""
    return gpu.idle_power_w * (1.0 + b.idle_offset_w)


def _clock(gpu: GpuSpec, mhz: float) -> int:
    """A graphics clock snapped down to its 15 MHz bin, never above the maximum."""
    return int(min(float(gpu.sm_clock_max_mhz), mhz) // CLOCK_STEP_MHZ * CLOCK_STEP_MHZ)


def _thermal_slowdown(job: JobSpec, rank: int, step: int, phase: str) -> float | None:
    """How far `rank`'s clocks fall at `step` (a training step) when its GPU throttles on heat: a thermal
    straggler's slowdown, or its slow node's; None when it does not throttle."""
    if phase != "train":
        return None
    strag = compute.straggler(job, step)
    if strag is not None and strag.rank == rank and strag.cause == "thermal":
        return strag.slowdown
    slow = compute.slow_node(job, rank // job.nproc_per_node, step)
    if slow is not None and slow.cause == "thermal":
        return compute.slow_factor(job, rank, step)
    return None


def _slow_wait(job: JobSpec, rank: int, step: int, phase: str) -> float:
    """The share of a training step `rank` spends waiting because a node is slow: a healthy GPU waits for
    the slowest one; a GPU behind degraded NVLink waits on its own transfers; a throttled one does not."""
    if phase != "train" or not job.slow_nodes:
        return 0.0
    slow = compute.slow_node(job, rank // job.nproc_per_node, step)
    if slow is not None and slow.cause == "nvlink":
        return 1.0 - 1.0 / compute.slow_factor(job, rank, step)
    own = compute.slow_factor(job, rank, step)
    return 1.0 - own / compute.slowest_factor(job, step)


def job_board(job: JobSpec, rank: int, host: str | None = None) -> Board:
    """The board rank `rank` runs on (host: the cluster preset's name for its node unless given)."""
    from fakerun.presets import host_name  # presets imports sim modules: a late import avoids a cycle

    node, index = divmod(rank, job.nproc_per_node)
    return board(job.cluster.name, host or host_name(job.cluster, node), index, job.nproc_per_node)


def target_temp(job: JobSpec, b: Board, rank: int, step: int, phase: str, power_w: float) -> float:
    """Where rank `rank`'s die temperature heads while it draws `power_w` in `phase` at `step`."""
    target = steady_temp(job.gpu, b, power_w)
    if _thermal_slowdown(job, rank, step, phase) is not None:
        target = max(target, job.gpu.max_temp_c + 1.0)
    return target


def sensor_noise(job: JobSpec, rank: int, step: int) -> float:
    """The temperature sensor's reading noise for one sample (C)."""
    return 0.3 * rand.normal(job.seed, "tele-tnoise", rank, step)


def telemetry(
    job: JobSpec,
    rank: int,
    step: int,
    phase: Phase,
    *,
    prev_temp_c: float | None = None,
    elapsed_s: float = math.inf,
    wait_frac: float = 0.0,
    host: str | None = None,
) -> GpuTelemetry:
    """Rank `rank`'s GPU at `step` in `phase`, `elapsed_s` simulated seconds after a sample at `prev_temp_c`.

    Without a previous temperature the GPU was idle before (its idle equilibrium); `wait_frac` is the share
    of the step this rank spends waiting in collectives (NCCL's spinning kernels keep GPU-Util up but draw
    less than GEMMs); `host` defaults to the cluster preset's name for the rank's node.
    """
    gpu = job.gpu
    seed = job.seed
    b = job_board(job, rank, host)
    if phase == "idle" and step <= job.start_step:
        phase = "init"  # a worker's ready sample: weights loaded, no step run yet
    util, intensity = _load(job, phase)
    idle_w = idle_power(gpu, b)
    span = gpu.tdp_w - gpu.idle_power_w
    if phase == "train":
        wait_frac = max(wait_frac, _slow_wait(job, rank, step, phase))
        intensity *= 1.0 - 0.5 * min(max(wait_frac, 0.0), 1.0)
    # Slow drift (data mix, sequence packing, clocks settling: minutes) and per-sample noise.
    drift = 1.0 + 0.02 * rand.value_noise(rand.hash64(seed, "tele-drift", rank), "tele-drift", step / 40.0)
    noise = 1.0 + 0.025 * _clamped(rand.normal(seed, "tele-pnoise", rank, step))
    if phase in ("train", "eval"):
        demand = idle_w + span * intensity * b.power_scale * drift * noise
    else:
        low = 1.0 + 0.02 * _clamped(rand.normal(seed, "tele-lo", rank, step))
        demand = idle_w + span * intensity * b.power_scale * low
    cap = float(gpu.tdp_w)
    sm = float(gpu.sm_clock_max_mhz)
    throttle = ""
    power = demand
    if demand > 0.98 * cap:
        # Power capping: dynamic power goes roughly with f^3 (f x V^2, V following f), so the clock
        # gives way by the cube root of the excess and the draw sits just under the cap.
        power = 0.98 * cap - 4.0 * rand.uniform(seed, "tele-cap", rank, step)
        sm *= ((power - idle_w) / (demand - idle_w)) ** (1.0 / 3.0)
        throttle = "SW Power Cap"
    if phase not in ("train", "eval"):
        sm = float(gpu.sm_clock_idle_mhz)  # nothing running: the clocks fall back to idle within a second

    slowdown = _thermal_slowdown(job, rank, step, phase)
    if slowdown is not None:
        # A thermal straggler (or a throttling node) is a GPU whose cooling is failing: it heats towards its
        # slowdown limit with the same lag as any other change, and its clocks drop by the slowdown. Its
        # dynamic power falls with them, about as f^2 (the voltage cannot follow the clock all the way down).
        sm = gpu.sm_clock_max_mhz / slowdown
        power = idle_w + (power - idle_w) / slowdown**2
        throttle = "HW Thermal Slowdown"
    target = steady_temp(gpu, b, power)
    if slowdown is not None:
        target = max(target, gpu.max_temp_c + 1.0)
    start = steady_temp(gpu, b, idle_w) if prev_temp_c is None else prev_temp_c
    die = settle(start, target, elapsed_s)

    if phase == "train" and util >= 1.0:
        util_pct = 100.0 - abs(1.5 * rand.normal(seed, "tele-util", rank, step))
    elif util > 0.0:
        util_pct = 100.0 * util + 3.0 * rand.normal(seed, "tele-util", rank, step)
    else:
        util_pct = 0.0
    mem_util = (
        100.0 * intensity * 0.55 + 2.0 * rand.normal(seed, "tele-mu", rank, step) if util > 0.0 else 0.0
    )
    # The caching allocator keeps what a step reserved: nvidia-smi's figure only grows from init to train.
    mem_used = memory_breakdown(job, rank, 0 if phase == "init" else max(step, 1)).used_mib
    sensor = sensor_noise(job, rank, step)
    return GpuTelemetry(
        util_pct=round(min(100.0, max(0.0, util_pct))),
        mem_util_pct=round(min(100.0, max(0.0, mem_util))),
        temp_c=round(die + sensor),
        power_w=round(min(cap, max(0.9 * gpu.idle_power_w, power))),
        power_cap_w=gpu.tdp_w,
        sm_clock_mhz=_clock(gpu, sm),
        mem_clock_mhz=gpu.mem_clock_max_mhz,
        mem_used_mib=int(mem_used),
        mem_total_mib=gpu.memory_mib,
        pstate="P0",
        throttle=throttle,
        die_temp_c=die,
    )


def idle_telemetry(gpu: GpuSpec, b: Board, seed: int = 0, sample: int = 0) -> GpuTelemetry:
    """A GPU with no job (fakerun-smi when nothing runs): ~70 W, 24-30 C on an H100 (excerpt 41)."""
    power = idle_power(gpu, b) * (1.0 + 0.015 * rand.normal(seed, "idle-p", sample))
    temp = steady_temp(gpu, b, power) + 0.3 * rand.normal(seed, "idle-tn", sample)
    return GpuTelemetry(
        util_pct=0,
        mem_util_pct=0,
        temp_c=round(temp),
        power_w=round(min(float(gpu.tdp_w), power)),
        power_cap_w=gpu.tdp_w,
        sm_clock_mhz=gpu.sm_clock_idle_mhz,
        mem_clock_mhz=gpu.mem_clock_max_mhz,
        mem_used_mib=0,
        mem_total_mib=gpu.memory_mib,
        pstate="P0",
        throttle="",
        die_temp_c=temp,
    )
