"""torch's C++ errors as a rank prints them: c10::Error's `Exception raised from ...` frame dumps, the NCCL
watchdog's lines and std::terminate's block before the process aborts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from fakerun.dialects.base import c10_log_prefix, c10_prefix
from fakerun.sim import rand
from fakerun.sim.failures import WatchdogNumbers

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
_TIMEOUT_LINE = 635  # WorkNCCL::checkTimeout: the "Watchdog caught collective operation timeout" line
_DETECTED_LINE = 2188  # Watchdog::runLoop: "Exception (either an error or timeout) detected by watchdog"
_TIMEOUT_AT_LINE = 2237  # "Timeout at NCCL work"
_CORRUPTED_LINE = 649  # WorkNCCL::handleException: "Some NCCL operations have failed or timed out"
_TAKEDOWN_LINE = 655  # "To avoid data inconsistency, we are taking the entire process down."
_DESYNC_LINE = 2212  # the desync report under TORCH_NCCL_DESYNC_DEBUG=1
_CUDA_CHECK_LINE = 42  # c10/cuda/CUDAException.cpp: c10_cuda_check_implementation
_TORCH_LIBS = frozenset(
    {
        "libc10.so",
        "libc10_cuda.so",
        "libtorch_cuda.so",
        "libtorch_cpu.so",
        "libtorch.so",
        "libtorch_python.so",
    }
)
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
_TIMEOUT: tuple[Frame, ...] = (
    _ERROR_CTOR,
    (
        "c10d::ProcessGroupNCCL::WorkNCCL::checkTimeout(std::optional<std::chrono::duration<long, "
        "std::ratio<1l, 1000l> > >)",
        0x2C4,
        "libtorch_cuda.so",
    ),
    ("c10d::ProcessGroupNCCL::Watchdog::runLoop()", 0x8A6, "libtorch_cuda.so"),
    ("c10d::ProcessGroupNCCL::Watchdog::run()", 0x10E, "libtorch_cuda.so"),
    *_THREAD_TAIL,
)
_CUDA_ERROR: tuple[Frame, ...] = (
    _ERROR_CTOR,
    (
        "c10::detail::torchCheckFail(char const*, char const*, unsigned int, std::string const&)",
        0x64,
        "libc10.so",
    ),
    (
        "c10::cuda::c10_cuda_check_implementation(int, char const*, char const*, int, bool)",
        0x11D,
        "libc10_cuda.so",
    ),
    ("c10d::ProcessGroupNCCL::WorkNCCL::finishedGPUExecutionInternal() const", 0x56, "libtorch_cuda.so"),
    ("c10d::ProcessGroupNCCL::WorkNCCL::isCompleted()", 0x64, "libtorch_cuda.so"),
    ("c10d::ProcessGroupNCCL::Watchdog::runLoop()", 0x5B1, "libtorch_cuda.so"),
    ("c10d::ProcessGroupNCCL::Watchdog::run()", 0x10E, "libtorch_cuda.so"),
    *_THREAD_TAIL,
)
# CUDA's error strings (cudaGetErrorString) for the GPU faults the failure scenarios play.
CUDA_ERRORS = {
    "xid": "an illegal memory access was encountered",
    "illegal-memory-access": "an illegal memory access was encountered",
    "ecc": "uncorrectable ECC error encountered",
}


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


def raised_from(
    function: str, line: int, process: Process, stack: Sequence[Frame], source_file: str = ""
) -> str:
    """c10::Error's backtrace: `Exception raised from F at FILE:LINE (most recent call first):` and frames."""
    source = f"{source_file or SOURCE_ROOT + '/ProcessGroupNCCL.cpp'}:{line}"
    head = f"Exception raised from {function} at {source} (most recent call first):"
    return "\n".join([head, *frames(process, stack)]) + "\n"


def socket_address(host: str, seed: int, rank: int) -> str:
    """How NCCL names a peer's socket (ncclSocketToString): `host<port>`, an ephemeral port."""
    return f"{host}<{32768 + rand.hash64(seed, 'nccl-peer-port', rank) % 28232}>"


def remote_error(
    process: Process, nccl_version: str, peer: str, at: float, *, last_error: str | None = None
) -> str:
    """A rank's stderr when a peer's process or node is gone (or the network to it: `last_error`, NCCL's
    last WARN): the watchdog's error line, then std::terminate of the rethrown c10::DistBackendError, each
    with its backtrace (the process then aborts)."""
    last = f"socketProgress: Connection closed by remote peer {peer}" if last_error is None else last_error
    exception = (
        f"NCCL error: remote process exited or there was a network error, NCCL version {nccl_version}\n"
        "ncclRemoteError: A call failed possibly due to a network error or a remote process exiting "
        f"prematurely.\nLast error:\n{last}\n"
        + raised_from("checkForNCCLErrorsInternal", _REMOTE_RAISE_LINE, process, _REMOTE_ERROR)
    )
    return _watchdog_terminated(process, exception, at)


def nccl_warn(host: str, pid: int, tid: int, device: int, peer: str) -> str:
    """NCCL's own WARN line for the closed socket (printed under NCCL_DEBUG=WARN or INFO)."""
    return (
        f"{host}:{pid}:{tid} [{device}] misc/socket.cc:58 NCCL WARN socketProgress: Connection closed by "
        f"remote peer {peer}\n"
    )


def _pg(rank: int) -> str:
    return f"[PG ID 0 PG GUID 0(default_pg) Rank {rank}]"


def _watchdog_terminated(process: Process, exception: str, at: float) -> str:
    """The watchdog's last words on `exception` (its text and backtrace): its error line, then
    std::terminate's block for the rethrown c10::DistBackendError, what() repeating it and the rethrow's
    own backtrace, a blank line (the process aborts after it)."""
    what = f"{_pg(process.rank)} Process group watchdog thread terminated with exception: {exception}"
    log = f"{c10_prefix(process.rank, 'E', f'ProcessGroupNCCL.cpp:{WATCHDOG_LOG_LINE}', at)} {what}"
    rethrow = raised_from("run", _RETHROW_LINE, process, _RETHROW)
    return (
        f"{log}\nterminate called after throwing an instance of 'c10::DistBackendError'\n"
        f"  what():  {what}\n{rethrow}\n"
    )


def watchdog_timeout(
    process: Process, numbers: WatchdogNumbers, at: float, *, desync_with: int | None = None
) -> str:
    """A rank's stderr when its collective timed out: the watchdog's lines (the desync report when asked
    for: `desync_with` is the rank that never joined), then std::terminate (the process then aborts)."""
    rank, n = process.rank, numbers
    work = (
        f"WorkNCCL(SeqNum={n.seq_num}, OpType={n.op_type}, NumelIn={n.numel_in}, NumelOut={n.numel_out}, "
        f"Timeout(ms)={n.timeout_ms}) ran for {n.ran_for_ms} milliseconds before timing out."
    )
    caught = f"[Rank {rank}] Watchdog caught collective operation timeout: {work}"
    works = (
        f"work: {n.seq_num}, last enqueued NCCL work: {n.last_enqueued}, last completed NCCL work: "
        f"{n.last_completed}."
    )

    def line(source_line: int, text: str, dt: float) -> str:
        return f"{c10_prefix(rank, 'E', f'ProcessGroupNCCL.cpp:{source_line}', at + dt)} {text}\n"

    out = line(_TIMEOUT_LINE, caught, 0.0)
    out += line(
        _DETECTED_LINE,
        f"{_pg(rank)} Exception (either an error or timeout) detected by watchdog at {works}",
        0.0003,
    )
    if desync_with is not None:
        out += line(
            _DESYNC_LINE,
            f"{_pg(rank)}  - [{rank}] Timeout at collective: {n.op_type}, #{n.seq_num}\n"
            " - To our best knowledge, the lagging/dead/mismatched ranks that caused the desync are:\n"
            f"     [{desync_with}] finished collective #{n.last_completed}, but didn't join collective "
            f"#{n.seq_num} (count from 1)",
            0.0009,
        )
    out += line(_TIMEOUT_AT_LINE, f"{_pg(rank)} Timeout at NCCL {works}", 0.0011)
    out += line(
        _CORRUPTED_LINE,
        f"[Rank {rank}] Some NCCL operations have failed or timed out. Due to the asynchronous nature of "
        "CUDA kernels, subsequent GPU operations might run on corrupted/incomplete data.",
        0.0012,
    )
    out += line(
        _TAKEDOWN_LINE,
        f"[Rank {rank}] To avoid data inconsistency, we are taking the entire process down.",
        0.0012,
    )
    exception = f"{caught}\n" + raised_from("checkTimeout", _TIMEOUT_LINE, process, _TIMEOUT)
    return out + _watchdog_terminated(process, exception, at + 0.0015)


def cuda_error(process: Process, kind: str, at: float) -> str:
    """A rank's stderr when its GPU faults: the watchdog finds the CUDA error first and terminates the
    process with c10::Error (the Python side never gets to raise it)."""
    message = (
        f"CUDA error: {CUDA_ERRORS[kind]}\nCUDA kernel errors might be asynchronously reported at some other "
        "API call, so the stacktrace below might be incorrect.\nFor debugging consider passing "
        "CUDA_LAUNCH_BLOCKING=1\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n\n"
    )
    trace = raised_from(
        "c10_cuda_check_implementation",
        _CUDA_CHECK_LINE,
        process,
        _CUDA_ERROR,
        source_file="/pytorch/c10/cuda/CUDAException.cpp",
    )
    return _watchdog_terminated(process, message + trace, at)


# NCCL 2.29.7's IB transport: ncclIbTest's WARN on a failed completion and its details
# (transport/net_ib/p2p.cc:786 and :651), the IB async thread's port events (transport/net_ib/common.cc:134),
# and, under NCCL_DEBUG=INFO, NCCLCHECK's trail up the proxy's progress thread (net.cc:1359, proxy.cc:977).
IB_CQE_SOURCE = "transport/net_ib/p2p.cc:786"
IB_COMPLETION_SOURCE = "transport/net_ib/p2p.cc:651"
IB_ASYNC_SOURCE = "transport/net_ib/common.cc:134"
_IB_TRAIL = ("transport/net.cc:1359 -> 6", "proxy.cc:977 -> 6 [Progress Thread]")
# ibv_event_type_str's names and numbers of the port events (libibverbs' enum ibv_event_type).
PORT_EVENTS = {"down": ("port error", 10), "up": ("port active", 9)}
IB_RETRY_EXC_ERR = 12  # enum ibv_wc_status: the peer never acknowledged, all retries spent
_VENDOR_ERR = 129  # the HCA's syndrome that comes with it (mlx5: 0x81)


@dataclass(frozen=True)
class NcclThread:
    """Where an NCCL line comes from: host, pid, the thread and the CUDA device it prints."""

    host: str
    pid: int
    tid: int
    device: int


def nccl_warn_line(at: NcclThread, source: str, message: str, when: float) -> str:
    """One NCCL WARN as debug.cc prints it: a blank line first, a `[%F %T] ` timestamp (NCCL's default for
    WARN since 2.23), `host:pid:tid [dev] file:line NCCL WARN message`."""
    stamp = time.strftime("[%Y-%m-%d %H:%M:%S] ", time.localtime(when))
    return f"\n{stamp}{at.host}:{at.pid}:{at.tid} [{at.device}] {source} NCCL WARN {message}\n"


def ib_port_event(at: NcclThread, hca: str, event: str, when: float) -> str:
    """The IB async thread's WARN for a port going down ("down") or coming back ("up")."""
    name, number = PORT_EVENTS[event]
    message = f"NET/IB : {hca}:1 Got non-fatal async event: {name}({number})"
    return nccl_warn_line(at, IB_ASYNC_SOURCE, message, when)


@dataclass(frozen=True)
class IbCompletion:
    """The figures of a failed IB completion: the peer's socket, the GIDs on RoCE, the queue pair."""

    peer: str  # ncclSocketToString: `10.1.2.3<port>`
    hca: str
    local_gid: str | None  # RoCE only (`::ffff:10.1.2.3`); IB prints no GIDs
    remote_gid: str | None
    req: int
    comm: int
    wr_id: int
    qp_num: int


def ib_completion_message(c: IbCompletion) -> str:
    """ncclIbLogCompletionWithError's message (also ncclGetLastError's, the watchdog's `Last error:`)."""
    gids = f" localGid {c.local_gid} remoteGids{c.remote_gid}" if c.local_gid and c.remote_gid else ""
    return (
        f"NET/IB: Got completion from peer {c.peer} with status=IBV_WC_RETRY_EXC_ERR({IB_RETRY_EXC_ERR}) "
        f"opcode=IBV_WC_RDMA_WRITE(1) vendor_err={_VENDOR_ERR} {gids} hca {c.hca}"
    )


def ib_error_lines(at: NcclThread, c: IbCompletion, when: float, *, info: bool) -> str:
    """What the proxy thread prints when its send never got through: the CQE error, its details, and under
    NCCL_DEBUG=INFO the `-> 6` (ncclRemoteError) trail."""
    cqe = (
        f"NET/IB: ncclIbTest: Got CQE with error (devIndex=0, req=0x{c.req:x}, comm=0x{c.comm:x} (send), "
        f"wr_id={c.wr_id}, qp_num={c.qp_num})"
    )
    out = nccl_warn_line(at, IB_CQE_SOURCE, cqe, when)
    out += nccl_warn_line(at, IB_COMPLETION_SOURCE, ib_completion_message(c), when)
    if info:
        out += "".join(f"{at.host}:{at.pid}:{at.tid} [{at.device}] NCCL INFO {t}\n" for t in _IB_TRAIL)
    return out


# The TCPStore client of a launcher whose rendezvous host does not resolve (c10d/socket.cpp, TCPStore.cpp).
# Placed from torch 2.8-2.10 logs (the warning at socket.cpp:755; the timeout logged at socket.cpp:1011 and
# raised at 1013; TCPStore.cpp:390): 2.13's own lines were not available to check.
SOCKET_WARNING_LINE = 755  # SocketConnectOp::recordError's C10D_WARNING
SOCKET_TIMEOUT_LINE = 1011  # SocketConnectOp::throwTimeoutError's C10D_ERROR
_SOCKET_RAISE_LINE = 1013  # ... and its C10D_THROW_ERROR
TCPSTORE_ERROR_LINE = 390  # TCPStore::TCPStore: "TCP client failed to connect/validate"
_STORE_CONNECT: tuple[Frame, ...] = (
    _ERROR_CTOR,
    (None, 0x5BA8BFE, "libtorch_cpu.so"),
    (None, 0x136920D, "libtorch_cpu.so"),
    (None, 0x5BAA2C4, "libtorch_cpu.so"),
    ("c10d::TCPStore::TCPStore(std::string, c10d::TCPStoreOptions const&)", 0x3B4, "libtorch_cpu.so"),
    (None, 0xE48B73, "libtorch_python.so"),
    (None, 0x51A21A, "libtorch_python.so"),
)


def gai_warning(host: str, port: int, code: int, reason: str, at: float) -> str:
    """The warning each failed name lookup of the TCPStore client logs (it asks for IPv6 addresses first)."""
    source = f"socket.cpp:{SOCKET_WARNING_LINE}"
    message = (
        f"The IPv6 network addresses of ({host}, {port}) cannot be retrieved (gai error: {code} - {reason})."
    )
    return f"{c10_log_prefix('W', source, at)} [c10d] {message}\n"


def store_connect_timeout(
    host: str, port: int, timeout_ms: int, process: Process, at: float
) -> tuple[str, str]:
    """(What the client logs when its connect timed out: the socket's and the store's E lines and the
    exception's backtrace; the exception's message, which Python shows without the backtrace.)"""
    message = (
        f"The client socket has timed out after {timeout_ms}ms while trying to connect to ({host}, {port})."
    )
    store = (
        f"TCP client failed to connect/validate to host {host}:{port} - timed out "
        f"(try=0, timeout={timeout_ms}ms): {message}"
    )
    text = (
        f"{c10_log_prefix('E', f'socket.cpp:{SOCKET_TIMEOUT_LINE}', at)} [c10d] {message}\n"
        f"{c10_log_prefix('E', f'TCPStore.cpp:{TCPSTORE_ERROR_LINE}', at)} [c10d] {store}\n"
        + raised_from(
            "throwTimeoutError", _SOCKET_RAISE_LINE, process, _STORE_CONNECT, f"{SOURCE_ROOT}/socket.cpp"
        )
        + "\n"
    )
    return text, message
