"""torch's C++ error output: backtraces whose addresses behave as a real process's do, and the watchdog's
remote-error block in torch's order."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakerun.render import c10

FRAME = re.compile(r"frame #(\d+): (.+) \+ (0x[0-9a-f]+) \((0x[0-9a-f]+) in (\S+)\)")


def parsed(text: str) -> list[tuple[int, str, int, int, str]]:
    out = []
    for m in FRAME.finditer(text):
        out.append((int(m[1]), m[2], int(m[3], 16), int(m[4], 16), m[5]))
    return out


@given(st.integers(0, 2**32), st.integers(0, 1023), st.integers(0, 3))
def test_addresses_behave_as_mapped_libraries(seed: int, rank: int, attempt: int) -> None:
    """Frames count from 0; an unknown function's address keeps its offset's page offset (it is the
    library's base plus that offset); all libraries sit in one 0x7f.. region of the process."""
    process = c10.Process(seed, rank, attempt, "/opt/venv/lib/python3.12/site-packages")
    frames = parsed(c10.raised_from("run", 1, process, c10._REMOTE_ERROR))
    assert [f[0] for f in frames] == list(range(len(frames))) and len(frames) == 8
    for _, name, offset, address, library in frames:
        assert 0x7F0000000000 <= address < 0x800000000000
        if name == "<unknown function>":
            assert (address - offset) % 0x1000 == 0
        assert library.startswith(
            ("/opt/venv/lib/python3.12/site-packages/torch/lib/", "/lib/x86_64-linux-gnu/")
        )
    assert max(f[3] for f in frames) - min(f[3] for f in frames) < 1 << 32


def test_same_build_other_process() -> None:
    """Another process maps its libraries elsewhere, but a function's place in its library is the build's."""
    one, two = (c10.Process(7, rank, 0, "/s") for rank in (0, 1))
    a = parsed(c10.raised_from("run", 1, one, c10._REMOTE_ERROR))
    b = parsed(c10.raised_from("run", 1, two, c10._REMOTE_ERROR))
    assert all(x[3] != y[3] for x, y in zip(a, b, strict=True))
    cuda = [
        (x[3] - x[2], y[3] - y[2]) for x, y in zip(a, b, strict=True) if x[4].endswith("libtorch_cuda.so")
    ]
    # Same distances between the functions of one library in both processes.
    assert len({p - q for p, q in cuda}) == 1


def test_remote_error_block() -> None:
    """The error line with its backtrace, then std::terminate's what() repeating it and the rethrow's."""
    process = c10.Process(3, 5, 0, "/s")
    text = c10.remote_error(process, "2.29.7", "gpu-node-003<41234>", 1_700_000_000.25)
    lines = text.splitlines()
    assert re.fullmatch(
        r"\[rank5\]:\[E\d{4} [\d:]{8}\.\d{9} ProcessGroupNCCL\.cpp:\d+\] \[PG ID 0 PG GUID 0\(default_pg\) "
        r"Rank 5\] Process group watchdog thread terminated with exception: NCCL error: remote process "
        r"exited or there was a network error, NCCL version 2\.29\.7",
        lines[0],
    )
    assert lines[3] == "socketProgress: Connection closed by remote peer gpu-node-003<41234>"
    assert text.count("Exception raised from checkForNCCLErrorsInternal at /pytorch/") == 2
    assert text.count("Exception raised from run at /pytorch/") == 1
    terminate = lines.index("terminate called after throwing an instance of 'c10::DistBackendError'")
    assert lines[terminate - 1] == "" and lines[terminate + 1].startswith("  what():  [PG ID 0 ")
    assert text.endswith("\n\n")


# NCCL 2.29.7's formats (transport/net_ib/p2p.cc:651 and :786, common.cc:134, debug.cc's WARN header) as
# regular expressions: `%s` a non-blank run, `%d`/`%u` digits; the completion's GIDs only on RoCE.
_WARN_HEAD = r"\n\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] (\S+):(\d+):(\d+) \[(\d+)\] (\S+:\d+) NCCL WARN "
_COMPLETION = (
    r"NET/IB: Got completion from peer (\S+) with status=(\w+)\((\d+)\) opcode=(\w+)\((\d+)\) "
    r"vendor_err=(\d+) "
    r"( localGid \S+ remoteGids\S+)? hca (\S+)"
)
_CQE = r"NET/IB: ncclIbTest: Got CQE with error \(devIndex=\d+, req=0x[0-9a-f]+, comm=0x[0-9a-f]+ \(send\), "
_CQE += r"wr_id=\d+, qp_num=\d+\)"


class TestIbErrors:
    at = c10.NcclThread("gpu-node-001", 4242, 4300, 3)

    def completion(self, roce: bool) -> c10.IbCompletion:
        gid = "::ffff:10.1.2.3" if roce else None
        remote = "::ffff:10.1.2.4" if roce else None
        return c10.IbCompletion("10.1.2.4<43210>", "mlx5_3", gid, remote, 0x7F00, 0x7F40, 7, 300)

    @pytest.mark.parametrize("roce", [False, True])
    def test_lines_parse_as_nccl_prints_them(self, roce: bool) -> None:
        """The CQE error and the completion parse by NCCL's format: status 12 is IBV_WC_RETRY_EXC_ERR (its
        place in enum ibv_wc_status), GIDs only on RoCE; INFO adds the `-> 6` (ncclRemoteError) trail."""
        text = c10.ib_error_lines(self.at, self.completion(roce), 1.8e9, info=True)
        head = re.findall(_WARN_HEAD + "(.*)", text)
        assert [h[:5] for h in head] == [
            ("gpu-node-001", "4242", "4300", "3", "transport/net_ib/p2p.cc:786"),
            ("gpu-node-001", "4242", "4300", "3", "transport/net_ib/p2p.cc:651"),
        ]
        assert re.fullmatch(_CQE, head[0][5])
        m = re.fullmatch(_COMPLETION, head[1][5])
        assert m is not None and m[1] == "10.1.2.4<43210>" and m[8] == "mlx5_3"
        assert (m[2], int(m[3]), int(m[6])) == ("IBV_WC_RETRY_EXC_ERR", 12, 129) and bool(m[7]) == roce
        statuses = [
            "SUCCESS",
            "LOC_LEN_ERR",
            "LOC_QP_OP_ERR",
            "LOC_EEC_OP_ERR",
            "LOC_PROT_ERR",
            "WR_FLUSH_ERR",
            "MW_BIND_ERR",
            "BAD_RESP_ERR",
            "LOC_ACCESS_ERR",
            "REM_INV_REQ_ERR",
            "REM_ACCESS_ERR",
            "REM_OP_ERR",
            "RETRY_EXC_ERR",
        ]
        assert "IBV_WC_" + statuses[int(m[3])] == m[2]
        assert text.endswith(
            "NCCL INFO transport/net.cc:1359 -> 6\ngpu-node-001:4242:4300 [3] NCCL INFO "
            "proxy.cc:977 -> 6 [Progress Thread]\n"
        )
        assert "NCCL INFO" not in c10.ib_error_lines(self.at, self.completion(roce), 1.8e9, info=False)

    def test_watchdog_names_the_ib_error_last(self) -> None:
        """The watchdog's ncclRemoteError carries NCCL's last WARN, the completion, as its `Last error:`."""
        process = c10.Process(1, 3, 0, "/venv/lib/python3.11/site-packages")
        message = c10.ib_completion_message(self.completion(False))
        text = c10.remote_error(process, "2.29.7", "", 1.8e9, last_error=message)
        assert f"exiting prematurely.\nLast error:\n{message}\n" in text

    def test_port_events(self) -> None:
        """The async thread's port error (10) and port active (9), as ibv_event_type_str names them."""
        down = c10.ib_port_event(self.at, "mlx5_3", "down", 1.8e9)
        up = c10.ib_port_event(self.at, "mlx5_3", "up", 1.8e9)
        for text, name, n in ((down, "port error", 10), (up, "port active", 9)):
            event = r"NET/IB : (\S+):1 Got non-fatal async event: ([a-z ]+)\((\d+)\)\n"
            m = re.fullmatch(_WARN_HEAD + event, text)
            assert m is not None and m[5] == "transport/net_ib/common.cc:134"
            assert (m[6], m[7], int(m[8])) == ("mlx5_3", name, n)
