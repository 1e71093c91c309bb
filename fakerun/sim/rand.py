"""Deterministic randomness keyed by (seed, stream, keys...): O(1) splitmix64 hash draws.

Every draw is a pure function of the seed, a stream name and integer keys (rank, step...), so any step of
any rank can be computed alone, in any process, in any order. numpy Generators were used here at first;
importing numpy before the workers fork cost ~120 ms of the 250 ms first-line budget on the reference
machine (docs/PERFORMANCE.md), for one uniform draw per step.
"""

from __future__ import annotations

import math
import zlib

_MASK = (1 << 64) - 1
_INV64 = 1.0 / 18446744073709551616.0  # 2**-64
_INV32 = 1.0 / 4294967296.0


_STREAMS: dict[str, int] = {}
_PREFIX: dict[tuple[int, str], int] = {}


def stream_id(name: str) -> int:
    """A stable integer for a stream name (crc32: the same in every process, unlike hash())."""
    sid = _STREAMS.get(name)
    if sid is None:
        sid = _STREAMS[name] = zlib.crc32(name.encode("utf-8"))
    return sid


def _mix(x: int) -> int:
    # splitmix64 finaliser (Steele et al. 2014): a cheap, well-mixed 64-bit bijection.
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def hash64(seed: int, stream: str, *keys: int) -> int:
    """A 64-bit hash of (seed, stream, keys); the basis of every O(1) draw."""
    key = (seed, stream)
    x = _PREFIX.get(key)
    if x is None:
        if len(_PREFIX) > 4096:  # a memo, not a store: bounded whatever the caller does
            _PREFIX.clear()
        x = _PREFIX[key] = _mix((seed & _MASK) ^ stream_id(stream))
    for k in keys:
        x = _mix(x ^ (k & _MASK))
    return x


def uniform(seed: int, stream: str, *keys: int) -> float:
    """A uniform draw in [0, 1) for (seed, stream, keys)."""
    return hash64(seed, stream, *keys) * _INV64


def normal(seed: int, stream: str, *keys: int) -> float:
    """A standard normal draw for (seed, stream, keys) (Box-Muller on the two 32-bit halves of one hash)."""
    h = hash64(seed, stream, *keys)
    u1 = ((h >> 32) + 1) * _INV32  # (0, 1]: log is finite
    u2 = (h & 0xFFFFFFFF) * _INV32
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def value_noise(seed: int, stream: str, x: float) -> float:
    """Smooth noise in [-1, 1]: seeded values at integer knots, smoothstep between; O(1) at any x."""
    i = math.floor(x)
    t = x - i
    a = uniform(seed, stream, i) * 2.0 - 1.0
    b = uniform(seed, stream, i + 1) * 2.0 - 1.0
    t = t * t * (3.0 - 2.0 * t)
    return a + (b - a) * t
