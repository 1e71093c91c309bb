"""How this agent meets the other nodes of a multi-node job (static or c10d), in torchrun's terms."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

from fakerun.launcher import report
from fakerun.launcher.elastic import JOIN_TIMEOUT_S, MeetError, RoundRules, conf_seconds, round_rules
from fakerun.launcher.outfile import notice
from fakerun.launcher.peers import Gate, Peer
from fakerun.launcher.plan import LaunchPlan, NodePlan
from fakerun.launcher.rendezvous import (
    Assignment,
    Join,
    RendezvousTimeout,
    StoreUnreachable,
    close_all,
    host_rendezvous,
    join_rendezvous,
    listen,
    resolve,
    try_listen,
)
from fakerun.launcher.wire import WireError, job_secret
from fakerun.presets import host_name

if TYPE_CHECKING:
    from fakerun.sim.job import JobSpec

C10D_DEFAULT_PORT = 29400  # torch's default when --rdzv-endpoint names no port
STATIC_TIMEOUT_S = 900.0  # torch's static rendezvous (TCPStore) timeout
C10D_READ_TIMEOUT_S = 60.0  # torch's c10d read_timeout: its TCPStore client's timeout
RENDEZVOUS_CONNECTION_ERROR = (
    "torch.distributed.elastic.rendezvous.api.RendezvousConnectionError: "
    "The connection to the C10d store has failed. See inner exception for details."
)


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while waiting for the other nodes."""


@dataclass
class Links:
    """The connections the rendezvous left open, for the run (see cluster.py)."""

    assignment: Assignment
    peers: dict[int, Peer]
    listener: Gate | None  # the host's port, refusing late agents and strangers during the run
    me: Join | None = None  # this agent's join, which an agent joining the running job must match
    renamed: bool = False  # the nodes took the cluster's host names (agents sharing one machine)

    def close(self) -> None:
        """Closes everything (when the run never took them over)."""
        close_all(self.peers)
        self.peers.clear()
        if self.listener is not None:
            self.listener.close()
            self.listener = None


def _check_host(host: str, option: str) -> None:
    """A name the resolver can take (labels of 1-63 characters): else one line, not a UnicodeError later."""
    try:
        host.encode("idna")
    except UnicodeError as exc:
        why = str(exc).rpartition("(UnicodeError: ")[2].rstrip(")") or "not a host name"
        raise MeetError(f"fakerun: error: {option}: {host!r} is not a valid host name ({why})\n") from None


def _loopback(host: str) -> str | None:
    """The loopback address `host` names (IPv4 first), if it names nothing else: we then listen there only."""
    try:
        addrs = {str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return None
    if not addrs or not all(ipaddress.ip_address(a).is_loopback for a in addrs):
        return None
    v4 = sorted(a for a in addrs if "." in a)
    return v4[0] if v4 else sorted(addrs)[0]


def job_identity(job: JobSpec | None) -> tuple[str, str]:
    """The simulated job in a few words and a digest of all of it, which every agent of a job must share."""
    if job is None:
        return "the script itself (--fake-exec)", ""
    return f"{job.model.name} on {job.gpu.name}", hashlib.sha256(repr(job).encode()).hexdigest()[:32]


def _secret_warning(
    environ: dict[str, str] | os._Environ[str], host: str, port: int, run_id: str
) -> str | None:
    """The warning for a job whose default secret anyone can derive, reachable beyond this machine."""
    if environ.get("FAKERUN_SECRET") or _loopback(host) is not None:
        return None
    return (
        f"FAKERUN_SECRET is not set, so this job's secret follows from its run id "
        f"{run_id!r}: anyone who can reach {host}:{port} can join the job or feed it steps; "
        "set the same FAKERUN_SECRET on every node"
    )


def _is_this_machine(host: str) -> bool:
    """Whether `host` names this machine (loopback or one of our interfaces), as c10d checks for is_host."""
    try:
        addrs = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return False
    if any(a.startswith("127.") or a == "::1" for a in addrs):
        return True
    import psutil  # only multi-node c10d agents need the interface list

    local = {a.address for nic in psutil.net_if_addrs().values() for a in nic}
    return bool(addrs & local)


def _endpoint(text: str) -> tuple[str, int]:
    """--rdzv-endpoint's host and port, split as torch splits it (`[v6]:port`), with its hostname check."""
    endpoint = text.strip()
    if not endpoint:
        return "localhost", C10D_DEFAULT_PORT
    if (endpoint[0] == "[" and endpoint[-1] == "]") or ":" not in endpoint:
        host, port_text = endpoint, None
    else:
        host, port_text = endpoint.rsplit(":", 1)
    if len(host) > 1 and host[0] == "[" and host[-1] == "]":
        host = host[1:-1]
    port = C10D_DEFAULT_PORT
    if port_text is not None:
        try:
            port = int(port_text)
        except ValueError:
            raise MeetError(
                f"ValueError: The port number of the rendezvous endpoint '{endpoint}' must be an integer.\n"
            ) from None
    if not re.match(r"^[\w\.:-]+$", host):
        raise MeetError(
            f"ValueError: The hostname of the rendezvous endpoint '{endpoint}' must be a dot-separated "
            "list of labels, an IPv4 address, or an IPv6 address.\n"
        )
    return host, port


@contextmanager
def _interruptible() -> Iterator[None]:
    """SIGINT/SIGTERM end the wait with Interrupted, so the caller can clean up before exiting."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    saved = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def meet(
    plan: LaunchPlan,
    argv0: str,
    site_packages: str,
    warn: Callable[[str], None],
    job: JobSpec | None = None,
    started: float | None = None,
) -> tuple[LaunchPlan, Links]:
    """Runs the rendezvous for this node; returns the plan with its group rank and master address.

    `job` is the simulated job (None with --fake-exec): agents simulating different jobs cannot form one.
    `started` is this agent's monotonic start: the assignment says how long ago the first agent started.
    """
    args = plan.args
    rdzv = plan.rdzv
    host = plan.nodes[0].host
    secret = job_secret(os.environ, rdzv.run_id)
    static = rdzv.form == "static"
    what, digest = job_identity(job)
    me = Join(
        args.node_rank if static else None, host, plan.nproc_per_node, rdzv.run_id, what, digest, started
    )
    port = rdzv.master_port if static else _endpoint(rdzv.endpoint)[1]
    option = "--master-port" if static else "--rdzv-endpoint"
    if not 0 < port < 65536:
        raise MeetError(f"fakerun: error: {option}: {port} is not a TCP port (1-65535)\n")
    dial = (args.master_addr, rdzv.master_port) if static else _endpoint(rdzv.endpoint)
    _check_host(dial[0], "--master-addr" if static else "--rdzv-endpoint")
    if static:
        timeout = store_timeout = conf_seconds(rdzv.conf, "timeout", STATIC_TIMEOUT_S)
    else:
        timeout = conf_seconds(rdzv.conf, "join_timeout", JOIN_TIMEOUT_S)
        store_timeout = conf_seconds(rdzv.conf, "read_timeout", C10D_READ_TIMEOUT_S)
    # The first round's last call waits for agents started by people or schedulers: real seconds, as the
    # join timeout. A fixed-size job waits for all its nodes.
    rules = round_rules(plan, 1.0) or RoundRules(plan.max_nodes, plan.max_nodes, join_timeout_s=timeout)

    def on_gai_error(host: str, port: int, code: int, reason: str) -> None:
        from fakerun.render import c10  # c10's prefixes are the dialects': loaded only on this error path

        warn(c10.gai_warning(host, port, code, reason, time.time()).rstrip("\n"))

    warning = _secret_warning(os.environ, dial[0], dial[1], rdzv.run_id)
    if warning is not None:
        warn(notice(warning))
    # A job addressed on loopback is not offered to the network.
    bind = _loopback(dial[0]) or ""
    listener: socket.socket | None = None
    gate: Gate | None = None
    try:
        with _interruptible():
            # Who hosts: static node 0 on the master port; under c10d, the first agent on the endpoint's
            # machine to bind its port. Everyone else dials the host.
            if static and args.node_rank == 0:
                # The store's host is its own first client: it connects to --master-addr like the others.
                resolve(dial[0], dial[1], store_timeout, on_gai_error=on_gai_error)
            if static:
                listener = _listen_static(rdzv.master_port, bind) if args.node_rank == 0 else None
            else:
                listener = try_listen(dial[1], bind) if _is_this_machine(dial[0]) else None
            if listener is not None:
                gate = Gate(listener, secret, warn)
                assignment, peers = host_rendezvous(
                    gate,
                    me,
                    rules=rules,
                    master_addr=rdzv.master_addr,
                    master_port=rdzv.master_port,
                )
            else:
                assignment, peer = join_rendezvous(
                    *dial,
                    me,
                    nnodes=plan.max_nodes,
                    secret=secret,
                    timeout_s=timeout,
                    min_nodes=None if static else plan.min_nodes,
                    store_timeout_s=store_timeout,
                    on_gai_error=on_gai_error,
                )
                peers = {0: peer}
    except RendezvousTimeout as exc:
        _close(gate, listener)
        kind: report.TracebackKind = "static_store_timeout" if static else "c10d_join_timeout"
        trace = report.launcher_traceback(kind, argv0, site_packages)
        if static and args.node_rank == 0:
            line = report.dist_store_timeout_line(int(timeout) + 1, exc.joined, exc.expected)
        elif static:
            line = (
                "torch.distributed.DistNetworkError: The client socket has timed out after "
                f"{int(timeout * 1000)}ms while trying to connect to "
                f"({args.master_addr}, {rdzv.master_port}).\n"
            )
        else:
            line = report.rendezvous_timeout_line()
        raise MeetError(trace + line) from None
    except StoreUnreachable as exc:
        _close(gate, listener)
        raise MeetError(_unreachable_text(exc, static, argv0, site_packages)) from None
    except WireError as exc:
        _close(gate, listener)
        raise MeetError(f"fakerun: error: the rendezvous failed: {exc}\n") from None
    except BaseException:
        _close(gate, listener)
        raise
    renamed = job is not None and len(set(assignment.hosts)) < len(assignment.hosts)
    if renamed:
        assert job is not None
        # Agents on one machine play different nodes: they take the cluster's names for them, as distinct
        # hosts would show distinct names (in the grid, NCCL's lines, the failure report, a lost node's line).
        hosts = tuple(host_name(job.cluster, i) for i in range(len(assignment.hosts)))
        assignment = dataclasses.replace(assignment, hosts=hosts)
        for group_rank, peer in peers.items():
            peer.host = hosts[group_rank]
    # Ours as the host named us (one joining a running job may take another name than its own).
    host = assignment.hosts[assignment.group_rank]
    node = NodePlan(assignment.group_rank, host)
    new_rdzv = dataclasses.replace(
        rdzv, master_addr=assignment.master_addr, master_port=assignment.master_port
    )
    links = Links(assignment, peers, gate, me, renamed)
    return dataclasses.replace(plan, nodes=(node,), rdzv=new_rdzv), links


def _unreachable_text(exc: StoreUnreachable, static: bool, argv0: str, site_packages: str) -> str:
    """What torchrun prints when its TCPStore client timed out on a host name that never resolved: the
    client's error lines, then the launcher's traceback (c10d: the store's error, re-raised)."""
    from fakerun.render import c10  # c10's prefixes are the dialects': loaded only on this error path

    process = c10.Process(os.getpid(), 0, 0, site_packages)
    logged, message = c10.store_connect_timeout(
        exc.host, exc.port, int(exc.timeout_s * 1000), process, time.time()
    )
    error = f"torch.distributed.DistNetworkError: {message}\n"
    if static:
        return logged + report.launcher_traceback("static_store_timeout", argv0, site_packages) + error
    return logged + report.exception_text(
        RENDEZVOUS_CONNECTION_ERROR,
        "c10d_store_connect",
        argv0,
        site_packages,
        ("c10d_tcp_store", error[:-1]),
    )


def _close(gate: Gate | None, listener: socket.socket | None) -> None:
    if gate is not None:
        gate.close()
    elif listener is not None:
        listener.close()


def _listen_static(port: int, host: str) -> socket.socket:
    """Node 0's store port, as torch's TCPStore binds it (on loopback only for a loopback master address)."""
    try:
        return listen(port, host)
    except OSError as exc:
        raise MeetError(
            "torch.distributed.DistNetworkError: The server socket has failed to listen on any local network "
            f"address. port: {port}, useIpv6: false, code: -98, name: EADDRINUSE, message: "
            f"{(exc.strerror or 'address already in use').lower()}\n"
        ) from None
