"""torch's C++ error output: backtraces whose addresses behave as a real process's do, and the watchdog's
remote-error block in torch's order."""

from __future__ import annotations

import re

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
