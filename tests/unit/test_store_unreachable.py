"""An unresolvable rendezvous host: torch's TCPStore client retries the lookup, warns, then times out."""

from __future__ import annotations

import random
import socket

import pytest

from fakerun.launcher.meet import _unreachable_text
from fakerun.launcher.rendezvous import Backoff, Join, StoreUnreachable, join_rendezvous, resolve

HOST = "no-such-host.invalid"  # RFC 6761: never resolves


def test_backoff_is_c10ds_exponential_backoff_with_jitter() -> None:
    """Backoff.hpp's defaults: 500 ms, x1.5 per retry, capped at 60 s, each delay within +-50%."""
    backoff = Backoff(random.Random(7))
    for k in range(30):
        interval = min(0.5 * 1.5**k, 60.0)
        assert 0.5 * interval <= backoff.next() <= 1.5 * interval


def test_lookups_are_retried_with_warnings_until_the_store_timeout() -> None:
    """Each failed lookup is reported with getaddrinfo's own code and text; the client gives up after the
    store's timeout (c10d's read_timeout here), not the join timeout."""
    with pytest.raises(socket.gaierror) as real:
        socket.getaddrinfo(HOST, 29400)
    failures: list[tuple[str, int, int, str]] = []
    me = Join(None, "node1", 1, "job")
    with pytest.raises(StoreUnreachable) as gave_up:
        join_rendezvous(
            HOST,
            29400,
            me,
            nnodes=2,
            secret=b"s",
            timeout_s=600,
            store_timeout_s=1.5,
            on_gai_error=lambda *failure: failures.append(failure),
        )
    assert (gave_up.value.host, gave_up.value.port, gave_up.value.timeout_s) == (HOST, 29400, 1.5)
    # At least the first lookup and one retry (the first delays are at most 0.75 s and 1.125 s).
    assert len(failures) >= 2
    assert set(failures) == {(HOST, 29400, real.value.errno, real.value.strerror)}


@pytest.mark.parametrize("static", [True, False])
def test_what_torchrun_prints_when_it_gives_up(static: bool) -> None:
    """socket.cpp's and TCPStore.cpp's error lines, then the launcher's traceback: DistNetworkError for the
    static rendezvous, re-raised as RendezvousConnectionError by the c10d backend."""
    text = _unreachable_text(StoreUnreachable(HOST, 29500, 900.0), static, "/v/bin/torchrun", "/v/site")
    timed_out = f"The client socket has timed out after 900000ms while trying to connect to ({HOST}, 29500)."
    lines = text.splitlines()
    assert lines[0].startswith("[E") and lines[0].endswith(f"] [c10d] {timed_out}")
    assert lines[1].endswith(
        f"] [c10d] TCP client failed to connect/validate to host {HOST}:29500 - timed out "
        f"(try=0, timeout=900000ms): {timed_out}"
    )
    assert lines[2].startswith("Exception raised from throwTimeoutError at ")
    error = f"torch.distributed.DistNetworkError: {timed_out}"
    if static:
        assert lines[-1] == error
        assert lines[-4].endswith('static_tcp_rendezvous.py", line 67, in next_rendezvous')
    else:
        assert lines[-1] == (
            "torch.distributed.elastic.rendezvous.api.RendezvousConnectionError: "
            "The connection to the C10d store has failed. See inner exception for details."
        )
        cause = lines.index(error)
        assert lines[cause + 1 : cause + 4] == [
            "",
            "The above exception was the direct cause of the following exception:",
            "",
        ]


def test_the_store_host_looks_its_master_address_up_too() -> None:
    """Static node 0 hosts the store and is its own first client: an unresolvable --master-addr fails there
    as on the other nodes (warnings, then the store's timeout), a resolvable one returns at once."""
    failures: list[tuple[str, int, int, str]] = []
    with pytest.raises(StoreUnreachable):
        resolve(HOST, 29500, 1.5, on_gai_error=lambda *f: failures.append(f))
    assert failures and all(f[:2] == (HOST, 29500) for f in failures)
    resolve("localhost", 29500, 1.5)
