"""torch's C++ errors as a rank prints them: c10::Error's `Exception raised from ...` frame dumps, the NCCL
watchdog's lines and std::terminate's block before the process aborts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fakerun.dialects.base import c10_prefix
from fakerun.sim import rand

# torch 2.13's wheels are built in /pytorch: c10::Error names its sources under that root.
SOURCE_ROOT = "/pytorch/torch/csrc/distributed/c10d"
# The host's system libraries (Ubuntu 22.04, the usual base of CUDA images), and the offsets of the frames
# every thread of it ends in: std::thread's trampoline, start_thread and clone3 (fixed per library build).
SYSTEM_LIBS = "/lib/x86_64-linux-gnu"
_THREAD_TAIL: tuple[tuple[str | None, int, str], ...] = (
    (None, 0xDC253, "libstdc++.so.6"),
    (None, 0x94AC3, "libc.so.6"),
    (None, 0x126850, "libc.so.6"),
)
_ERROR_CTOR = ("c10::Error::Error(c10::SourceLocation, std::string)", 0x98, "libc10.so")
# torch 2.13's ProcessGroupNCCL.cpp: where the watchdog logs and where its exceptions are raised.
WATCHDOG_LOG_LINE = 1895  # LOG(ERROR) "Process group watchdog thread terminated with exception"
_REMOTE_RAISE_LINE = 2412  # checkForNCCLErrorsInternal
_RETHROW_LINE = 1903  # Watchdog::run, rethrowing as c10::DistBackendError
_TORCH_LIBS = frozenset({"libc10.so", "libc10_cuda.so", "libtorch_cuda.so", "libtorch_cpu.so", "libtorch.so"})
# Where each library lands in its process's region (mapped in load order: torch's big CUDA library first).
_LAYOUT = {
    "libtorch_cuda.so": 0x1A000000,
    "libtorch_cpu.so": 0x4C000000,
    "libc10_cuda.so": 0x66E00000,
    "libstdc++.so.6": 0x67200000,
    "libc10.so": 0x67A00000,
    "libc.so.6": 0x68C00000,
}
# A frame: the function (None: `<unknown function>`, its offset from the library's base), the offset within
# it, the library.
Frame = tuple[str | None, int, str]
_REMOTE_ERROR: tuple[Frame, ...] = (
    _ERROR_CTOR,
    (
        "c10d::ProcessGroupNCCL::checkForNCCLErrorsInternal(std::shared_ptr<c10d::NCCLComm>&)",
        0x2A4,
        "libtorch_cuda.so",
    ),
    ("c10d::ProcessGroupNCCL::WorkNCCL::checkAndSetException()", 0x84, "libtorch_cuda.so"),
    ("c10d::ProcessGroupNCCL::Watchdog::runLoop()", 0x3C1, "libtorch_cuda.so"),
    ("c10d::ProcessGroupNCCL::Watchdog::run()", 0x10E, "libtorch_cuda.so"),
    *_THREAD_TAIL,
)
_RETHROW: tuple[Frame, ...] = (_ERROR_CTOR, (None, 0x11C2B6E, "libtorch_cuda.so"), *_THREAD_TAIL)


@dataclass(frozen=True)
class Process:
    """What a rank's frame addresses depend on: where its libraries were mapped (ASLR, per process)."""

    seed: int
    rank: int
    attempt: int
    site_packages: str  # torch's libraries are in its torch/lib

    def library(self, name: str) -> str:
        """The path a frame names for library `name`."""
        if name in _TORCH_LIBS:
            return f"{self.site_packages.rstrip('/')}/torch/lib/{name}"
        return f"{SYSTEM_LIBS}/{name}"

    def base(self, name: str) -> int:
        """Where `name` is mapped in this process: the loader places a process's libraries in one region
        (drawn per process by ASLR), in their load order, a few pages apart that vary from run to run."""
        region = 0x7F0000000000 + (
            (rand.hash64(self.seed, "c10-region", self.rank, self.attempt) % 0xFF) << 32
        )
        jitter = (
            rand.hash64(self.seed, "c10-lib-jitter", self.rank, self.attempt, rand.hash64(0, name)) % 0x400
        )
        return region + _LAYOUT.get(name, 0x60000000) + jitter * 0x1000


def _symbol_offset(symbol: str, library: str) -> int:
    """Where a function sits in its library, fixed by the build: a class's methods sit together."""
    unit = "::".join(symbol.split("(", 1)[0].split("::")[:2])
    start = (rand.hash64(213, "c10-unit", rand.hash64(0, library + unit)) % 0x8000) * 0x1000
    return start + (rand.hash64(213, "c10-symbol", rand.hash64(0, library + symbol)) % 0x800) * 0x10


def frames(process: Process, stack: Sequence[Frame]) -> list[str]:
    """`frame #N: fn + 0xoff (0xaddress in /path/lib.so)` lines, as c10's backtrace prints them."""
    out = []
    for n, (symbol, offset, library) in enumerate(stack):
        at = process.base(library) + offset + (0 if symbol is None else _symbol_offset(symbol, library))
        name = "<unknown function>" if symbol is None else symbol
        out.append(f"frame #{n}: {name} + {offset:#x} (0x{at:x} in {process.library(library)})")
    return out


def raised_from(function: str, line: int, process: Process, stack: Sequence[Frame]) -> str:
    """c10::Error's backtrace: `Exception raised from F at FILE:LINE (most recent call first):` and frames."""
    source = f"{SOURCE_ROOT}/ProcessGroupNCCL.cpp:{line}"
    head = f"Exception raised from {function} at {source} (most recent call first):"
    return "\n".join([head, *frames(process, stack)]) + "\n"


def socket_address(host: str, seed: int, rank: int) -> str:
    """How NCCL names a peer's socket (ncclSocketToString): `host<port>`, an ephemeral port."""
    return f"{host}<{32768 + rand.hash64(seed, 'nccl-peer-port', rank) % 28232}>"


def remote_error(process: Process, nccl_version: str, peer: str, at: float) -> str:
    """A rank's stderr when a peer's process or node is gone: the watchdog's error line, then std::terminate
    of the rethrown c10::DistBackendError, each with its backtrace (the process then aborts)."""
    rank = process.rank
    what = (
        f"[PG ID 0 PG GUID 0(default_pg) Rank {rank}] Process group watchdog thread terminated with "
        "exception: NCCL error: remote process exited or there was a network error, NCCL version "
        f"{nccl_version}\n"
        "ncclRemoteError: A call failed possibly due to a network error or a remote process exiting "
        f"prematurely.\nLast error:\nsocketProgress: Connection closed by remote peer {peer}\n"
        + raised_from("checkForNCCLErrorsInternal", _REMOTE_RAISE_LINE, process, _REMOTE_ERROR)
    )
    log = f"{c10_prefix(rank, 'E', f'ProcessGroupNCCL.cpp:{WATCHDOG_LOG_LINE}', at)} {what}"
    rethrow = raised_from("run", _RETHROW_LINE, process, _RETHROW)
    return (
        f"{log}\nterminate called after throwing an instance of 'c10::DistBackendError'\n"
        f"  what():  {what}\n{rethrow}\n"
    )


def nccl_warn(host: str, pid: int, tid: int, device: int, peer: str) -> str:
    """NCCL's own WARN line for the closed socket (printed under NCCL_DEBUG=WARN or INFO)."""
    return (
        f"{host}:{pid}:{tid} [{device}] misc/socket.cc:58 NCCL WARN socketProgress: Connection closed by "
        f"remote peer {peer}\n"
    )
