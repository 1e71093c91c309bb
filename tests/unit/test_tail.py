"""fakerun-tail's pure parts: job choice, ranks of a node, splitting rank output, tail -n, the display."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakerun.tools.tail import (
    Display,
    Job,
    TailError,
    Unit,
    build_parser,
    choose_job,
    format_ranges,
    node_ranks,
    parse_meta,
    select_ranks,
    split_units,
    tail_start,
)

BAR1 = b"Epoch 1/1:   0%|          | 1/19073 [00:03<18:27:14,  3.48s/it, loss=11.0917, tok/s=2.13M]"
BAR2 = b"Epoch 1/1:   0%|          | 2/19073 [00:03<13:18:50,  2.51s/it, loss=11.2164, tok/s=2.1M]"
LOADING = b"Loading dataset shards: 100%|##########| 16/16 [00:03<00:00,  4.90it/s]"


def meta(**over: Any) -> dict[str, Any]:
    """A meta.json as the launcher writes it: 2 nodes x 4 ranks."""
    base: dict[str, Any] = {
        "run_id": "none",
        "script": "train.py",
        "nnodes": 2,
        "nproc_per_node": 4,
        "nodes": {"0": "gpu-node-001", "1": "gpu-node-002"},
        "ranks": list(range(8)),
        "launcher_pid": 100,
        "started": 1000.0,
    }
    return {**base, **over}


def job(**over: Any) -> Job:
    """A parsed job."""
    parsed = parse_meta(meta(**over), "/state/job-100")
    assert parsed is not None
    return parsed


# ---------------------------------------------------------------------------------------------- meta, jobs


def test_parse_meta_reads_the_launchers_file() -> None:
    j = job()
    assert (j.run_id, j.launcher_pid, j.nproc_per_node, j.ranks) == ("none", 100, 4, tuple(range(8)))
    assert j.nodes == {0: "gpu-node-001", 1: "gpu-node-002"}
    assert j.directory == "/state/job-100"


@pytest.mark.parametrize(
    "raw",
    [None, [], "x", meta(ranks=None), meta(nproc_per_node="auto"), meta(nproc_per_node=0), meta(nodes=[1])],
)
def test_parse_meta_rejects_what_it_does_not_understand(raw: object) -> None:
    assert parse_meta(raw) is None


def test_parse_meta_derives_nodes_when_missing() -> None:
    assert job(nodes=None).nodes == {0: "", 1: ""}


def test_choose_job_takes_the_only_one() -> None:
    assert choose_job([job()], None).launcher_pid == 100


def test_choose_job_none_running() -> None:
    with pytest.raises(TailError, match="no fakerun job is running") as err:
        choose_job([], None)
    assert err.value.code == 1


def test_choose_job_several_lists_them_on_one_line() -> None:
    jobs = [job(run_id="a", launcher_pid=1), job(run_id="b", launcher_pid=2)]
    with pytest.raises(TailError) as err:
        choose_job(jobs, None)
    message = str(err.value)
    assert "\n" not in message and "a (pid 1)" in message and "b (pid 2)" in message and "--run-id" in message
    assert err.value.code == 1


def test_choose_job_by_run_id_or_pid() -> None:
    jobs = [job(run_id="a", launcher_pid=1), job(run_id="b", launcher_pid=2)]
    assert choose_job(jobs, "b").launcher_pid == 2
    assert choose_job(jobs, "1").run_id == "a"
    with pytest.raises(TailError, match="no running fakerun job has run id c"):
        choose_job(jobs, "c")


def test_choose_job_same_run_id_asks_for_the_pid() -> None:
    jobs = [job(launcher_pid=1), job(launcher_pid=2)]
    with pytest.raises(TailError, match="--run-id 1, 2"):
        choose_job(jobs, "none")
    assert choose_job(jobs, "2").launcher_pid == 2


def test_choose_job_agents_of_one_job_by_node() -> None:
    # One launcher per node on this host: each agent's meta lists its own node's ranks.
    agents = [
        job(launcher_pid=1, nodes={"0": "a"}, ranks=[0, 1, 2, 3]),
        job(launcher_pid=2, nodes={"1": "b"}, ranks=[4, 5, 6, 7]),
    ]
    assert choose_job(agents, "none", node=1).launcher_pid == 2
    assert choose_job(agents, "none", node=0).launcher_pid == 1
    assert choose_job(agents, "none", rank=6).launcher_pid == 2
    assert choose_job(agents, None).launcher_pid == 1  # rank 0 by default, as select_ranks
    with pytest.raises(TailError, match="--run-id 1, 2"):
        choose_job(agents, "none", node=3)


@pytest.mark.parametrize(
    ("values", "text"),
    [([0, 1, 2, 3], "0-3"), ([5], "5"), ([8, 9, 0, 1], "0-1, 8-9"), ([0, 2, 3], "0, 2-3"), ([], "")],
)
def test_format_ranges(values: list[int], text: str) -> None:
    assert format_ranges(values) == text


def test_node_ranks() -> None:
    assert node_ranks(job(), 0) == [0, 1, 2, 3]
    assert node_ranks(job(), 1) == [4, 5, 6, 7]
    # one fakerun playing node 1 of 2 only (--node-rank 1)
    assert node_ranks(job(nodes={"1": "h"}, ranks=[4, 5, 6, 7]), 1) == [4, 5, 6, 7]


def test_select_ranks_defaults_to_rank_zero() -> None:
    assert select_ranks(job(), None, None) == [0]
    assert select_ranks(job(), 6, None) == [6]
    assert select_ranks(job(), None, 1) == [4, 5, 6, 7]


def test_select_ranks_bad_values_are_usage_errors_with_the_valid_range() -> None:
    with pytest.raises(TailError, match=r"--rank: 8 .*valid: 0-7") as err:
        select_ranks(job(), 8, None)
    assert err.value.code == 2
    with pytest.raises(TailError, match=r"--node: 2 .*valid: 0-1") as err:
        select_ranks(job(), None, 2)
    assert err.value.code == 2
    with pytest.raises(TailError, match=r"valid: 1\)"):
        select_ranks(job(nodes={"1": "h"}, ranks=[4, 5, 6, 7]), None, 0)


def test_parser_rank_and_node_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--rank", "1", "--node", "0"])
    assert exc.value.code == 2
    args = build_parser().parse_args(["-f", "-n", "5", "--run-id", "x", "--wait", "2.5"])
    assert (args.follow, args.lines, args.run_id, args.wait, args.rank, args.node) == (
        True,
        5,
        "x",
        2.5,
        None,
        None,
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["-n", "-1"])


# ------------------------------------------------------------------------------------------ splitting output


def test_split_whole_lines_and_keeps_a_partial_one() -> None:
    units, rest = split_units(b"a\nbc\nde")
    assert units == [Unit("line", b"a"), Unit("line", b"bc")]
    assert rest == b"de"
    units, rest = split_units(rest + b"f\n")
    assert units == [Unit("line", b"def")]
    assert rest == b""


def test_split_partial_line_is_given_up_only_at_the_end() -> None:
    assert split_units(b"abc", flush=True) == ([], b"abc")
    assert split_units(b"abc", final=True) == ([Unit("line", b"abc", newline=False)], b"")


def test_split_bar_refreshes() -> None:
    units, rest = split_units(b"\r" + BAR1 + b"\r" + BAR2)
    # the last refresh looks like a whole tqdm meter: shown now, not at the next poll
    assert units == [Unit("bar", BAR1, newline=False), Unit("bar", BAR2, newline=False)]
    assert rest == b""


def test_split_bar_closed_by_a_newline() -> None:
    units, _ = split_units(b"\r" + LOADING + b"\nnext\n")
    assert units == [Unit("bar", LOADING, newline=True), Unit("line", b"next")]


def test_split_line_glued_to_a_bar_is_cut_at_the_meter_end() -> None:
    data = b"\r" + BAR1 + b"GPUs @ step 1 \xc2\xb7 4 GPUs\n[rank0]:[W1122 08:49:16.543] x\n"
    units, rest = split_units(data)
    assert units == [
        Unit("bar", BAR1, newline=False),
        Unit("line", b"GPUs @ step 1 \xc2\xb7 4 GPUs"),
        Unit("line", b"[rank0]:[W1122 08:49:16.543] x"),
    ]
    assert rest == b""


def test_split_unknown_bar_waits_for_a_quiet_poll() -> None:
    assert split_units(b"\r50% done") == ([], b"\r50% done")
    assert split_units(b"\r50% done", flush=True) == ([Unit("bar", b"50% done", newline=False)], b"")
    # a lone `\r` may be the start of the next refresh or of a `\r\n`
    assert split_units(b"x\n\r", flush=True) == ([Unit("line", b"x")], b"\r")


def test_split_crlf_stays_in_the_line() -> None:
    assert split_units(b"a\r\nb\n")[0] == [Unit("line", b"a\r"), Unit("line", b"b")]


def test_split_line_cut_by_a_refresh() -> None:
    units, _ = split_units(b"step \r" + BAR1 + b"\n")
    assert units == [Unit("line", b"step ", newline=False), Unit("bar", BAR1, newline=True)]


def test_split_meter_without_total() -> None:
    bar = b"Loading: 3it [00:01,  2.00it/s]"
    assert split_units(b"\r" + bar + b"done\n")[0] == [Unit("bar", bar, newline=False), Unit("line", b"done")]


@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=6))
def test_split_is_lossless_however_the_bytes_arrive(data: bytes, cuts: list[int]) -> None:
    """Fed in any pieces, the units and the rest give back exactly the bytes (a raw pipe's guarantee)."""
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    out, rest = b"", b""
    for a, b in itertools.pairwise(bounds):
        units, rest = split_units(rest + data[a:b])
        out += b"".join(u.encode() for u in units)
    units, rest = split_units(rest, final=True)
    out += b"".join(u.encode() for u in units)
    assert rest == b""
    assert out == data


@given(
    st.lists(st.sampled_from([b"line one\n", b"\r" + BAR1, b"\r" + BAR2, b"x\n", b"\r" + LOADING + b"\n"]))
)
def test_split_whole_writes_come_back_as_written(writes: list[bytes]) -> None:
    """Workers write whole lines and whole refreshes; the units are exactly those writes."""
    units, rest = split_units(b"".join(writes))
    assert rest == b""
    assert [u.encode() for u in units] == writes


# ------------------------------------------------------------------------------------------------- tail -n


@pytest.mark.parametrize(
    ("data", "k", "start"),
    [
        (b"a\nb\nc\n", 1, 4),
        (b"a\nb\nc\n", 2, 2),
        (b"a\nb\nc\n", 3, 0),
        (b"a\nb\nc\n", 9, 0),
        (b"a\nb\nc", 1, 4),
        (b"a\nb\n\rbar", 1, 4),
        (b"a\nb\n", 0, 4),
        (b"", 3, 0),
    ],
)
def test_tail_start_counts_like_tail(data: bytes, k: int, start: int) -> None:
    assert tail_start(data, k, at_file_start=True) == start


def test_tail_start_asks_for_more_of_the_file() -> None:
    assert tail_start(b"b\nc\n", 3, at_file_start=False) is None
    assert tail_start(b"x\nb\nc\n", 2, at_file_start=False) == 2


# ------------------------------------------------------------------------------------------------- display


def bar(text: bytes, newline: bool = False) -> Unit:
    """A bar refresh."""
    return Unit("bar", text, newline=newline)


def line(text: bytes) -> Unit:
    """A whole line."""
    return Unit("line", text)


def test_raw_pipe_passes_bytes_through() -> None:
    d = Display(tty=False)
    units = [line(b"a"), bar(BAR1), bar(BAR2), line(b"glued")]
    assert d.render(units) == b"a\n\r" + BAR1 + b"\r" + BAR2 + b"glued\n"
    assert d.finish() == b""


def test_terminal_draws_only_the_latest_refresh_in_place() -> None:
    d = Display(tty=True, columns=lambda: 200)
    assert d.render([bar(BAR1), bar(BAR2)]) == b"\r" + BAR2 + b"\x1b[K"
    # a line after the bar starts on a new line; the bar stays above it as tqdm leaves it
    assert d.render([line(b"x")]) == b"\nx\n"
    assert d.render([bar(BAR1)]) == b"\r" + BAR1 + b"\x1b[K"
    assert d.finish() == b"\n"
    assert d.finish() == b""


def test_terminal_keeps_the_bar_when_it_is_closed() -> None:
    d = Display(tty=True, columns=lambda: 200)
    assert d.render([bar(BAR1), bar(BAR2, newline=True), line(b"x")]) == b"\r" + BAR2 + b"\x1b[K\nx\n"
    # `\r\n` after a bar ends its line without erasing it
    assert d.render([bar(BAR1), bar(b"", newline=True)]) == b"\r" + BAR1 + b"\x1b[K\n"
    assert d.finish() == b""


def test_terminal_cuts_the_bar_to_the_width() -> None:
    # the last column is left free: writing there would make the terminal wrap
    d = Display(tty=True, columns=lambda: 11)
    assert d.render([bar("Epoch ██████████".encode())]) == "\rEpoch ████\x1b[K".encode()


def test_chop_cuts_lines_at_the_width_read_each_time_on_a_terminal_only() -> None:
    width = [12]
    d = Display(tty=True, columns=lambda: width[0], chop=True)
    text = "é step: 1 loss 10.5".encode()  # cut by characters, not bytes
    assert d.render([line(text), line(b"short")]) == "é step: 1 lo\nshort\n".encode()
    width[0] = 14  # the pane was resized
    assert d.render([line(text)], b"[r]") == "[r]é step: 1 l\n".encode()
    # into a pipe, and on a terminal without -S, lines stay whole
    for display in (Display(tty=False, chop=True), Display(tty=True, columns=lambda: 12)):
        assert display.render([line(b"step: 1 loss 10.5")]) == b"step: 1 loss 10.5\n"


def test_node_mode_prefixes_and_keeps_lines_whole_in_a_pipe() -> None:
    d = Display(tty=False, node_mode=True)
    out = d.render([line(b"a"), bar(BAR1)], b"[rank0]: ")
    assert out == b"[rank0]: a\n\r[rank0]: " + BAR1
    assert d.render([line(b"b")], b"[rank1]: ") == b"\n[rank1]: b\n"
    assert d.render([bar(BAR2)], b"[rank0]: ") == b"\r[rank0]: " + BAR2
    assert d.finish() == b"\n"
